"""Arguments several verbs share, and options built from the stage config classes.

A stage verb's options come from its config class (:func:`add_config_options`): one ``--field-name`` per
field, with the field's type, description and default, so a default lives only in the config class.
Options left out stay unset and the config class supplies its default (:func:`config_from_args`).
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

if typing.TYPE_CHECKING:
    from inpars_ray.io.stage import StageResult

#: argparse dest prefix of config options (dotted field paths follow it)
_DEST = "cfg:"


def add_dataset(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--dataset", required=required,
                        help="collection: a BEIR-layout folder, beir/<name>, irds:<ir_datasets id> (e.g. "
                        "irds:beir/scifact/test), bundled/tiny-science or gs://bucket/prefix")
    parser.add_argument("--cache-dir", default=None, help="where beir/<name> downloads and the files written for "
                        "irds:<id> go (default ~/.cache/inpars-ray)")
    parser.add_argument("--skip-bad-rows", action="store_true",
                        help="report malformed rows and go on without them instead of failing")


def add_ray(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ray-address", default=None,
                        help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray started for this run)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray (default: all)")
    parser.add_argument("--shared-fs", action="store_true",
                        help="local paths are on a disk every Ray node mounts at the same place (NFS, Filestore): "
                             "allow them on a cluster of several nodes (otherwise use gs://bucket/prefix)")


def _fields(cls: type) -> Mapping[str, Any]:
    return cls.__pydantic_fields__  # type: ignore[attr-defined]


def _scalar(annotation: Any) -> type | None:
    """int/float/str/bool for ``T`` or ``T | None`` (a ``Literal`` of one of them counts as it); None for
    anything else (tuples, nested configs)."""
    choices = _choices(annotation)
    if choices:
        return type(choices[0])
    inner = _unless_none(annotation)
    return inner if inner in (int, float, str, bool) else None


def _unless_none(annotation: Any) -> Any:
    """``T`` for ``T | None``; an annotation that is not such a union as it is; None for other unions."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else None
    return annotation


def _choices(annotation: Any) -> tuple[Any, ...] | None:
    """The values of a ``Literal[...]`` (or ``Literal[...] | None``) field, for argparse's ``choices``."""
    annotation = _unless_none(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        values = typing.get_args(annotation)
        return values if len({type(v) for v in values}) == 1 else None
    return None


def _nested(annotation: Any) -> type | None:
    """The config class of a nested config field (``C`` or ``C | None``), else None."""
    annotation = _unless_none(annotation)
    return annotation if isinstance(annotation, type) and hasattr(annotation, "__pydantic_fields__") else None


def add_config_options(parser: argparse.ArgumentParser, cls: type, *, skip: Collection[str] = (),
                       required: Collection[str] = (), aliases: Mapping[str, Sequence[str]] | None = None,
                       prefixed: Collection[str] = (), title: str | None = None, _path: str = "",
                       _group: Any = None, _defaults: Any = None) -> None:
    """Add one option per field of the stage config ``cls`` (recursing into nested configs).

    ``skip``/``required``/``aliases`` take dotted field paths (``bm25.threads``); a nested config's fields
    are named after themselves, or ``--<nested>-<field>`` when the nested field is in ``prefixed``.
    """
    aliases = aliases or {}
    group = _group or parser.add_argument_group(title or f"{_what(cls)} (unset options keep their default)")
    for name, info in _fields(cls).items():
        path = f"{_path}{name}"
        if path in skip:
            continue
        sub = _nested(info.annotation)
        if sub is not None and path in prefixed:
            add_config_options(parser, sub, skip=skip, required=required, aliases=aliases, prefixed=prefixed,
                               _path=f"{path}.", _group=group, _defaults=_default(info, _defaults, name))
            continue
        if sub is not None:
            # a required field of an optional nested config (filter's ranker.model) is not a required option
            _add_flat(sub, path, skip, required, aliases, group, _default(info, _defaults, name),
                      needed=info.is_required())
            continue
        _add_option(group, path, path.replace(".", "-"), info, required, aliases, _default(info, _defaults, name))


def _what(cls: type) -> str:
    """An option group's title in a user's words: the first sentence of the config's docstring."""
    doc = (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
    first = doc.split(". ")[0].rstrip(".")
    return first[:1].lower() + first[1:] if first else "settings"


def _default(info: Any, defaults: Any, name: str) -> Any:
    # a nested config's defaults are those of its parent's default instance (e.g. MineConfig's BM25Config
    # keeps query-id hits), not the nested class's own
    return getattr(defaults, name) if defaults is not None else info.get_default()


def _add_flat(sub: type, path: str, skip: Collection[str], required: Collection[str],
              aliases: Mapping[str, Sequence[str]], group: Any, defaults: Any, needed: bool = True) -> None:
    # a nested config whose fields are offered under their own names (e.g. generation.max_new_tokens
    # as --max-new-tokens); the dest keeps the full path. Without a default instance (a required or an
    # optional nested config) each field shows its own default
    for name, info in _fields(sub).items():
        full = f"{path}.{name}"
        if full in skip or _nested(info.annotation) is not None:
            continue
        default = getattr(defaults, name) if isinstance(defaults, sub) else info.get_default()
        _add_option(group, full, name, info, required, aliases, default, needed=needed)


def _add_option(group: Any, path: str, flag_name: str, info: Any, required: Collection[str],
                aliases: Mapping[str, Sequence[str]], default_value: Any, needed: bool = True) -> None:
    kind = _scalar(info.annotation)
    if kind is None:
        return  # tuples and mappings are set through a verb's own option (or a YAML config)
    flags = [f"--{flag_name.replace('_', '-').replace('.', '-')}", *aliases.get(path, ())]
    description = (info.description or "").replace("%", "%%")
    must = path in required or (needed and info.is_required())
    default = "" if must or info.is_required() else f" (default: {default_value})"
    kwargs: dict[str, Any] = {"dest": _DEST + path, "default": None, "help": f"{description}{default}"}
    if kind is bool:
        group.add_argument(*flags, action=argparse.BooleanOptionalAction, **kwargs)
    else:
        group.add_argument(*flags, type=kind, required=must, metavar=path.split(".")[-1].upper(),
                           choices=_choices(info.annotation), **kwargs)


def given(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted field path -> value, for every config option the user gave."""
    return {k[len(_DEST):]: v for k, v in vars(args).items() if k.startswith(_DEST) and v is not None}


def config_from_args(cls: type, args: argparse.Namespace, base: Any = None, **fixed: Any) -> Any:
    """``cls`` built from the options the user gave (and ``fixed`` values), over ``base`` or the defaults."""
    values = given(args)
    return _build(cls, values, "", base, fixed)


def _build(cls: type, values: Mapping[str, Any], path: str, base: Any, fixed: Mapping[str, Any]) -> Any:
    kwargs: dict[str, Any] = {}
    for name, info in _fields(cls).items():
        full = f"{path}{name}"
        sub = _nested(info.annotation)
        if sub is not None and any(k.startswith(f"{full}.") for k in values):
            inner_base = getattr(base, name) if base is not None else info.get_default()
            inner_base = inner_base if isinstance(inner_base, sub) else None  # required or None: no base
            kwargs[name] = _build(sub, values, f"{full}.", inner_base, {})
        elif full in values:
            kwargs[name] = values[full]
    kwargs.update(fixed)
    if base is not None:
        return dataclasses.replace(base, **kwargs)
    if not kwargs and not any(i.is_required() for i in _fields(cls).values()):
        return cls()
    return cls(**kwargs)


def log_beside(out: str) -> None:
    """Send this command's log (and Ray's output) to ``logs/inpars-ray.log`` beside its output ``out``
    (in a run root, every stage's folder or file sits in the root: one log per run)."""
    from inpars_ray.io import storage
    from inpars_ray.runtime import progress

    progress.attach_log(progress.log_file(storage.location(out).parent))


def run_stage(args: argparse.Namespace, stage: str, out: str, call: Callable[[Any, Any], StageResult]) -> StageResult:
    """What every stage verb does around its stage: resolve ``--dataset``, send the log beside ``out``, start
    or join Ray, then run ``call(collection, load_config)`` under the stage's progress line. Returns the
    stage's result (its ``counts`` are what the verb prints)."""
    from inpars_ray.io import catalog
    from inpars_ray.io.load import LoadConfig
    from inpars_ray.runtime import progress
    from inpars_ray.runtime.raykit import ensure_ray

    collection = catalog.resolve(args.dataset, args.cache_dir)
    log_beside(out)
    ensure_ray(args.ray_address, args.num_cpus)
    with progress.stage(stage):
        return call(collection, LoadConfig(skip_bad_rows=args.skip_bad_rows))

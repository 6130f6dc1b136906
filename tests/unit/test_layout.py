"""The package layout holds its layering (docs/architecture.md, "Layout"): a folder names a module's kind.

``stages`` may use ``io``, ``models`` and ``runtime``; those three never import a stage, the pipeline, the
config that composes the stages, or the command line. Every import counts, lazy ones inside functions and
``TYPE_CHECKING`` blocks included, so a cycle cannot hide behind a deferred import.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "inpars_ray"
#: modules that may live at the top of the package: the contracts every layer shares, and what composes them
TOP_LEVEL = {"__init__", "__main__", "config", "schema", "errors", "stageconfig", "pipeline", "report",
             "report_stats", "report_plots"}
KINDS = {"io", "models", "runtime", "stages", "cli", "testing", "data", "integrations"}
LOWER = ("io", "models", "runtime")
#: what a lower layer may never import
ABOVE = ("inpars_ray.stages", "inpars_ray.pipeline", "inpars_ray.cli", "inpars_ray.config", "inpars_ray.report",
         "inpars_ray.report_stats", "inpars_ray.report_plots")
MAX_LINES = 450


def _modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "data" not in p.relative_to(PKG).parts)


def _imports(path: Path) -> set[str]:
    """Every inpars_ray module ``path`` imports, at any depth of its code."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("inpars_ray")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("inpars_ray"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # ``from inpars_ray import stages``
    return found


def _is_under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_every_module_lives_in_a_folder_that_names_its_kind() -> None:
    stray = []
    for path in _modules():
        parts = path.relative_to(PKG).parts
        if len(parts) == 1 and path.stem not in TOP_LEVEL:
            stray.append(parts[0])
        elif len(parts) > 1 and parts[0] not in KINDS:
            stray.append("/".join(parts))
    assert not stray, f"modules outside the layout's folders: {stray}"


@pytest.mark.parametrize("layer", LOWER)
def test_lower_layers_never_import_stages_pipeline_or_cli(layer: str) -> None:
    offences = []
    for path in sorted((PKG / layer).rglob("*.py")):
        for module in sorted(_imports(path)):
            if any(_is_under(module, above) for above in ABOVE):
                offences.append(f"{path.relative_to(PKG)} imports {module}")
    assert not offences, "\n".join(offences)


def test_integrations_use_the_lower_layers_only() -> None:
    """``integrations`` (ir_datasets, PyTerrier, the Hub, MLflow) sit beside the stages: they may use ``io``,
    ``models``, ``runtime`` and the contracts, never a stage, the pipeline, the composing config or the CLI."""
    offences = [f"{path.relative_to(PKG)} imports {module}"
                for path in sorted((PKG / "integrations").rglob("*.py")) for module in sorted(_imports(path))
                if any(_is_under(module, above) for above in ABOVE)]
    assert not offences, "\n".join(offences)


def test_lower_layers_never_import_integrations() -> None:
    offences = [f"{path.relative_to(PKG)} imports {module}"
                for layer in LOWER for path in sorted((PKG / layer).rglob("*.py"))
                for module in sorted(_imports(path)) if _is_under(module, "inpars_ray.integrations")]
    assert not offences, "\n".join(offences)


def test_stages_never_import_pipeline_or_cli() -> None:
    offences = [f"{path.relative_to(PKG)} imports {module}"
                for path in sorted((PKG / "stages").rglob("*.py")) for module in sorted(_imports(path))
                if any(_is_under(module, above) for above in ("inpars_ray.pipeline", "inpars_ray.cli"))]
    assert not offences, "\n".join(offences)


def test_no_module_is_over_the_size_a_reader_takes_in() -> None:
    long = {str(p.relative_to(PKG)): n for p in _modules()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them along their jobs): {long}"


def test_the_layering_check_sees_a_lazy_import(tmp_path: Path) -> None:
    """The checker itself: an import inside a function is found, so the rule cannot be dodged by deferring."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from inpars_ray.stages.index import build_index\n    return build_index\n")
    assert "inpars_ray.stages.index" in _imports(source)

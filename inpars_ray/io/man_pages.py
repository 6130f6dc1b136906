"""A real collection of another kind, built at run time from the system's manual pages.

A command's manual page has a NAME line (``ls \\- list directory contents``): its authors' one-line statement of
what the command does, the *query*; the DESCRIPTION section explains it, the *document*, titled ``ls(1)``. The
troff sources are rendered in Python (gzip or plain files; man(7) and mdoc(7) macros and troff escapes by simple
rules): no ``man`` or ``groff`` runs, and the result depends only on the files.

Rules (the constants below; ``BUILDER_VERSION`` changes whenever they do):

* pages: ``man1`` and ``man8`` (commands) of the manual folder in sorted order, then sections 2 to 7 when those
  give fewer than ``MIN_COMMAND_DOCS`` documents; not the translations (``de/man1``). Names starting with one of
  ``SKIP_PREFIXES`` are left out: the Google Cloud CLI's ~16,000 generated pages (alpha, beta and GA copies of
  each subcommand, a word apart) would make it a gcloud collection;
* a page is kept once: a symbolic link, or a page that is only a ``.so`` line, is an alias of the page it leads
  to (followed to the end; that page names the title); a ``.so`` line inside a page is replaced by its file;
* document: the DESCRIPTION section as plain text, whitespace collapsed, at least ``MIN_DOC_WORDS`` words, cut
  after ``MAX_DOC_WORDS``; bodies identical after lower-casing are kept once (the first; the page left out goes
  with its description);
* query: the NAME line's description (after the first `` - ``), kept when it has ``MIN_QUERY_WORDS`` ..
  ``MAX_QUERY_WORDS`` words, does not occur verbatim (whole words, any case) in its document, and no other kept
  document has the same description (an ambiguous query is dropped, its documents stay);
* splits: by a hash of the query id, ``TEST_QUERIES`` test (the smallest), ``DEV_QUERIES`` dev, the rest train.

The installed packages decide the pages: the collection is built locally, never redistributed, and is a snapshot
(:func:`ensure` builds it once per builder version; delete the folder to rebuild). ``manifest.json`` and
``PROVENANCE.md`` record the folder, the sections, the counts and a digest of the pages read.
"""
from __future__ import annotations

import collections
import gzip
import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any

from inpars_ray.errors import CollectionError, ConfigError
from inpars_ray.io.beir_writer import split_counts, write_single_judged

logger = logging.getLogger(__name__)

SPEC = "builtin/man-pages"
BUILDER_VERSION = 1
MAN_ROOT = Path("/usr/share/man")
COMMAND_SECTIONS = ("1", "8")
OTHER_SECTIONS = ("2", "3", "4", "5", "6", "7")
MIN_COMMAND_DOCS = 2000
SKIP_PREFIXES = ("gcloud_", "gcloud.")
MIN_DOC_WORDS = 20
MAX_DOC_WORDS = 1000
MIN_QUERY_WORDS = 2
MAX_QUERY_WORDS = 32
TEST_QUERIES = 400
DEV_QUERIES = 100
LICENCE = ("mixed: manual pages carry many licences, their packages' (GPL, LGPL, BSD, MIT, GFDL, Apache-2.0, the Linux "
           "man-pages licences and others; see /usr/share/doc/<package>/copyright). Built locally from the pages "
           "installed on this machine, never redistributed")
Row = dict[str, str]
_MAX_DEPTH = 4  # links and .so includes followed


class ManPagesMissingError(ConfigError, CollectionError):
    """The manual folder, or every section folder in it, is missing."""


_CHARS = {"em": "\u2014", "en": "\u2013", "hy": "-", "mi": "-", "aq": "'", "dq": '"', "lq": '"', "rq": '"', "oq": "'",
          "cq": "'", "co": "\u00a9", "rg": "\u00ae", "tm": "\u2122", "mu": "\u00d7", "ti": "~", "ha": "^", "rs": "\\",
          "sl": "/", "ba": "|", "br": "|", "at": "@", "sh": "#", "Do": "$", "de": "\u00b0", "+-": "\u00b1", "<=": "<=",
          ">=": ">=", "->": "->", "<-": "<-", "eq": "=", "pl": "+", "ul": "_", "ga": "`", "aa": "'", "lB": "[",
          "rB": "]"}
#: strings pod2man and DocBook define inside conditionals (which are not evaluated)
_STRINGS = {"C`": '"', "C'": '"', 'L"': '"', 'R"': '"', "--": "-", "Aq": "'", "lq": '"', "rq": '"',
            "R": "(R)", "Tm": "(TM)", "PI": "pi"}
_ONE = {"-": "-", "e": "\\", "E": "\\", "\\": "\\", " ": " ", "~": " ", "0": " ", "t": " ", "'": "'",
        "`": "`", ".": ".", "_": "_", "[": "[", "]": "]"}
_ESC = re.compile(r"""\\(?:
    [fF](?:\[[^\]]*\]|\(..|.) | s[+-]?(?:\[[^\]]*\]|\(..|'[^']*'|\d\d?)  # font, size
  | [hvwlLoXDZbxNRCBAS]'[^']*' | [nkgmMYOV$][+-]?(?:\[[^\]]*\]|\(..|.)  # quoted argument; registers, colours...
  | \*(?P<s>\[[^\]]*\]|\(..|.) | \((?P<c>..) | \[(?P<b>[^\]]*)\]  # a defined string; a special character
  | (?P<o>.)  # a one-character escape
)""", re.X | re.S)
_REQUEST = re.compile(r"[.']\s*(\S*)\s*(.*)", re.S)
_ARG = re.compile(r'"((?:[^"]|"")*)(?:"|$)|((?:\\.|\S)+)', re.S)
_DEFINE = re.compile(r"[.']\s*ds1?\s+(\S+)\s?(.*)", re.S)
_SEPARATOR = re.compile(r"(?:^|\s)(?:-{1,2}|\u2013|\u2014)\s")
_COMMENT = re.compile(r'(?:^|(?<=[^\\]))(?:\\\\)*\\["#]')
_MDOC = frozenset(
    "%A %B %C %D %I %J %N %O %P %Q %R %T %U %V Ac Ad An Ao Ap Aq Ar At Bc Bd Bf Bk Bl Bo Bq Brc Bro Brq Bsx Bt "
    "Bx Cd Cm D1 Db Dc Dd Dl Do Dq Dt Dv Dx Ec Ed Ef Ek El Em En Eo Er Es Ev Ex Fa Fc Fd Fl Fn Fo Fr Ft Fx Hf "
    "Ic In It Lb Li Lk Lp Ms Mt Nd Nm No Ns Nx Oc Oo Op Os Ot Ox Pa Pc Pf Po Pp Pq Qc Ql Qo Qq Re Rs Rv Sc Sh "
    "Sm So Sq Ss St Sx Sy Ta Tg Tn Ud Ux Va Vt Xc Xo Xr".split())
_MDOC_DROPPED = frozenset("Bl El Bd Ed Pp Lp Bk Ek Dd Dt Os Sm Rs Re Bf Ef Tg Sh St Ex Rv Db".split())
_MDOC_WORDS = {"Ux": "UNIX", "Bx": "BSD", "At": "AT&T UNIX", "Nx": "NetBSD", "Fx": "FreeBSD", "Ox": "OpenBSD"}
_JOINED = {**dict.fromkeys("B I SM SB SS SY".split(), " "), **dict.fromkeys("BR BI IB IR RB RI".split(), "")}
_CLOSE = frozenset(", . ; : ) ] ? !".split())


def _escape(match: re.Match[str], strings: dict[str, str], depth: int = 0) -> str:
    if match.group("s") is not None:  # a string's value holds escapes too
        value = strings.get(match.group("s").strip("[]").removeprefix("("), "")
        return _ESC.sub(lambda m: _escape(m, strings, depth + 1), value) if depth < 3 else ""
    if (name := match.group("c") or match.group("b")) is not None:
        uni = re.fullmatch(r"u([0-9A-Fa-f]{4,6})(_.*)?", name)
        return chr(int(uni.group(1), 16)) if uni else _CHARS.get(name, "")
    one = match.group("o")
    return "" if one is None else _ONE.get(one, "" if one in "&%|^c:/,){}!pruadz\"#\n" else one)


def to_text(troff: str, strings: dict[str, str] | None = None) -> str:
    """Rendered text of troff text lines: escapes replaced or dropped, whitespace collapsed."""
    table = {**_STRINGS, **(strings or {})}
    return " ".join(_ESC.sub(lambda m: _escape(m, table), re.sub(r"\\c\s*\n", "", troff)).split())


def _request(line: str) -> tuple[str, list[str]] | None:
    """(name, arguments) of a request line (``.B "a b" c``: quotes group; ``'br``); None for a text line."""
    m = _REQUEST.match(line)
    if m is None:
        return None
    return m.group(1), [a.group(1).replace('""', '"') if a.group(1) is not None else a.group(2)
                        for a in _ARG.finditer(m.group(2))]


def _mdoc(name: str, args: list[str], page: str) -> str:
    """One mdoc(7) line as text: macro names dropped, ``Fl x`` as ``-x``, ``Xr ls 1`` as ``ls(1)``."""
    if name in _MDOC_DROPPED or name == "Nd":
        return "" if name != "Nd" else "- " + " ".join(args)
    words: list[str] = []
    tokens, glue, dash, i = [name, *args], False, False, 0
    while i < len(tokens):
        t, word = tokens[i], None
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if t == "Fl":
            dash = nxt is not None and nxt not in _MDOC
            word = None if dash else "-"
        elif t == "Xr" and nxt is not None and i + 2 < len(tokens):
            word, i = f"{nxt}({tokens[i + 2]})", i + 2
        elif t == "Nm":  # the page's name, unless one follows
            word = None if nxt is not None and nxt not in _MDOC and nxt not in _CLOSE else page
        elif t in ("Ns", "Ap"):
            glue = True
        elif t not in _MDOC or t in _MDOC_WORDS:
            word, dash = _MDOC_WORDS.get(t, ("-" if dash else "") + t), False
        if word is not None:
            if words and (glue or word in _CLOSE or words[-1] in ("(", "[")):
                words[-1] += word
            else:
                words.append(word)
            glue = False
        i += 1
    return " ".join(words)


def render(lines: list[str], page: str) -> str:
    """The troff text of a section's lines: text lines kept, text-bearing macros turned into their text
    (``.B``, ``.BR``, an ``.IP`` tag, mdoc lines); layout requests and other macros dropped."""
    out = []
    for line in lines:
        req = _request(line)
        name, args = req if req else ("", [])
        if req is None:
            out.append(line)
        elif name in _JOINED:
            out.append(_JOINED[name].join(args))
        elif name in ("IP", "TQ") and args:
            out.append(args[0])
        elif name == "OP":
            out.append("[" + " ".join(args) + "]")
        elif name in _MDOC:
            out.append(_mdoc(name, args, page))
    return "\n".join(out)


def _read(path: Path) -> str | None:
    """A manual file's text (UTF-8, else Latin-1); None, with a warning, when it cannot be read."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as exc:
        logger.warning("man-pages: skipping %s (%s)", path, exc)
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def page_name(filename: str) -> tuple[str, str] | None:
    """(name, section) of a manual file name (``ls.1.gz`` -> ``("ls", "1")``); None if it is not one."""
    name, dot, section = filename.removesuffix(".gz").rpartition(".")
    return (name, section) if dot and name and section[:1].isdigit() else None


def _include(root: Path, target: str) -> Path | None:
    """The file a ``.so`` line names (relative to the manual folder), compressed or not."""
    base = Path(target) if target.startswith("/") else root / target
    return next((c for c in (base, base.with_name(base.name + ".gz")) if c.is_file()), None)


def _redirect(text: str) -> str | None:
    """The target of a page that is only a ``.so`` line (comments aside), else None."""
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln.strip(".'") and not _COMMENT.match(ln[1:] if ln[0] in ".'" else ln)]
    return lines[0][3:].strip() if len(lines) == 1 and lines[0].startswith(".so") else None


def canonical(path: Path, root: Path, known: set[Path] | frozenset[Path] = frozenset()) -> tuple[Path, str] | None:
    """(the page a manual file leads to, its text), following links and whole-page ``.so`` lines; None when
    broken. A page in ``known`` is not read again (its text is '')."""
    seen: set[Path] = set()
    current: Path | None = path
    while current is not None and len(seen) <= _MAX_DEPTH:
        real = Path(os.path.realpath(current))
        if real in known:
            return real, ""
        if real in seen or not real.is_file() or (text := _read(real)) is None:
            return None
        seen.add(real)
        if (target := _redirect(text)) is None:
            return real, text
        current = _include(root, target)
    return None


def parse(text: str, root: Path, depth: int = 0) -> tuple[list[str], dict[str, str], set[str]]:
    """(lines, defined strings, macros the page defines) of a page's source: comments, macro definitions and
    conditionals left out, continued lines joined, ``.so`` lines replaced by their file, tables by their cells."""
    lines: list[str] = []
    strings: dict[str, str] = {}
    macros: set[str] = set()
    skip_until: str | None = None
    braces, table, sep = 0, None, "\t"
    for line in re.sub(r"(?<!\\)\\\n", "", text).splitlines():
        if m := _COMMENT.search(line):
            if line.startswith((".", "'")) and not line[1:m.start()].strip():
                continue  # a comment line
            line = line[:m.start()]
        if skip_until is not None:
            skip_until = None if line.strip() == skip_until else skip_until
            continue
        if braces:  # inside a conditional's block
            braces += line.count("\\{") - line.count("\\}")
            continue
        req = _request(line)
        name, args = req if req else ("", [])
        if table is not None:  # tbl: options and format lines (up to one ending in '.'), then data rows
            if name in ("TE", "T&"):
                table = None if name == "TE" else "format"
            elif table == "format":
                sep = t.group(1) if (t := re.search(r"tab\s*\((.)\)", line)) else sep
                table = "data" if line.rstrip().endswith(".") else "format"
            elif req is None and line.strip() not in ("_", "="):
                lines.append(line.replace("T{", " ").replace("T}", " ").replace(sep, " "))
            continue
        if name in ("de", "de1", "am", "ig", "ami", "dei"):
            skip_until = "." + args[0] if name == "ig" and args else ".."
            macros |= set(args[:1]) if name != "ig" else set()
        elif name in ("if", "ie", "el", "while"):
            braces = max(0, line.count("\\{") - line.count("\\}"))
        elif name == "TS":
            table, sep = "format", "\t"
        elif name in ("EQ", "PS"):  # an equation or a picture: left out
            skip_until = ".EN" if name == "EQ" else ".PE"
        elif name in ("ds", "ds1") and (d := _DEFINE.match(line)):
            value = d.group(2)[1:] if d.group(2).startswith('"') else d.group(2)
            strings[d.group(1)] = value.replace("\\\\", "\\")  # read in copy mode: an escaped backslash is one
        elif name == "so" and args:
            inc = _include(root, args[0]) if depth < _MAX_DEPTH else None
            if inc is not None and (included := _read(inc)) is not None:
                more, more_strings, more_macros = parse(included, root, depth + 1)
                lines, macros = lines + more, macros | more_macros
                strings.update(more_strings)
        else:
            lines.append(line)
    return lines, strings, macros


def read_page(text: str, root: Path, name: str) -> tuple[str, str]:
    """(the NAME line's description, the DESCRIPTION section's text) of a page's source; '' when missing. Sections
    start at ``.SH`` (or mdoc's ``.Sh``) and are named by their upper-cased heading; the first of a name wins."""
    lines, strings, macros = parse(text, root)
    parts: dict[str, list[str]] = {}
    current: list[str] | None = None
    for i, line in enumerate(lines):
        req = _request(line)
        if req and (req[0] == "SH" or (req[0] == "Sh" and "Sh" not in macros)):
            heading = to_text(" ".join(req[1]) if req[1] else (lines[i + 1] if i + 1 < len(lines) else "")).upper()
            current = [] if heading in parts else parts.setdefault(heading, [])
        elif current is not None:
            current.append(line)
    name_line = to_text(render(parts.get("NAME", []), name), strings)
    head = _SEPARATOR.search(name_line)
    description = name_line[head.end():] if head else ""
    if more := _SEPARATOR.search(description):  # "a - does x b, c - do y": the first entry's description
        description = re.sub(r"(?:\s+\S+,)*\s+\S+$", "", description[:more.start()])
    return description.strip().rstrip(".").strip(), to_text(render(parts.get("DESCRIPTION", []), name), strings)


def _norm(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def collect(root: Path, section_names: tuple[str, ...]) -> tuple[list[Row], list[Row], dict[str, Any]]:
    """Documents and queries (``{"_id", "title", "text"}`` / ``{"_id", "text", "doc"}``) of ``section_names``,
    the fate of every file (each one accounted for) and a digest of the pages read."""
    counts: dict[str, Any] = dict.fromkeys((
        "files skipped broken aliases pages no_description short_body duplicate_body documents bad_description "
        "leaked_description ambiguous_description queries").split(), 0)
    docs: list[Row] = []
    candidates: list[tuple[str, str]] = []  # (description, doc id)
    seen_pages: set[Path] = set()
    used_ids: dict[str, int] = {}
    seen_bodies, digest = set(), hashlib.sha256()  # bodies, ids given (a name in two folders)
    for section in section_names:
        folder = root / f"man{section}"
        for filename in sorted(f for f in os.listdir(folder) if page_name(f)) if folder.is_dir() else []:
            counts["files"] += 1
            if filename.startswith(SKIP_PREFIXES):
                counts["skipped"] += 1
                continue
            found = canonical(folder / filename, root, seen_pages)
            if found is None or found[0] in seen_pages:
                counts["broken" if found is None else "aliases"] += 1
                continue
            path, text = found
            seen_pages.add(path)
            counts["pages"] += 1
            digest.update(f"man{section}/{filename}\0{path.name}\0{text}\0".encode("utf-8", "replace"))
            name, sec = page_name(path.name) or page_name(filename)  # type: ignore[misc]
            description, body = read_page(text, root, name)
            words = body.split()
            if len(words) < MIN_DOC_WORDS:
                counts["no_description" if not words else "short_body"] += 1
                continue
            body = " ".join(words[:MAX_DOC_WORDS])
            key = _norm(body)
            if key in seen_bodies:
                counts["duplicate_body"] += 1
                continue
            seen_bodies.add(key)
            used_ids[f"{name}.{sec}"] = n = used_ids.get(f"{name}.{sec}", 0) + 1
            doc_id = f"{name}.{sec}" if n == 1 else f"{name}.{sec}#{n}"
            docs.append({"_id": doc_id, "title": f"{name}({sec})", "text": body})
            if not MIN_QUERY_WORDS <= len(description.split()) <= MAX_QUERY_WORDS or not re.search("[A-Za-z]{2}",
                                                                                                     description):
                counts["bad_description"] += 1
            elif f" {_norm(description)} " in f" {key} ":
                counts["leaked_description"] += 1
            else:
                candidates.append((description, doc_id))
    by_text = collections.Counter(_norm(description) for description, _ in candidates)
    queries = [{"_id": f"q-{doc_id}", "text": description, "doc": doc_id}
               for description, doc_id in candidates if by_text[_norm(description)] == 1]
    counts.update(documents=len(docs), ambiguous_description=len(candidates) - len(queries), queries=len(queries))
    return docs, queries, {**counts, "source_sha256": digest.hexdigest()}


def assign_splits(queries: list[Row], test: int = TEST_QUERIES, dev: int = DEV_QUERIES) -> dict[str, str]:
    """Query id -> split, by the hash of the id (stable whatever else changes in the collection)."""
    order = sorted(queries, key=lambda q: hashlib.sha256(f"man-pages:{q['_id']}".encode()).hexdigest())
    return {q["_id"]: ("test" if i < test else "dev" if i < test + dev else "train") for i, q in enumerate(order)}


def build(out_dir: str | os.PathLike[str], root: str | os.PathLike[str] | None = None,
          test_queries: int = TEST_QUERIES, dev_queries: int = DEV_QUERIES) -> dict[str, Any]:
    """Write the collection in BEIR layout into ``out_dir`` (a temporary folder, then renamed: created whole) and
    return its manifest (also ``out_dir/manifest.json``)."""
    src = Path(root) if root else MAN_ROOT
    if not src.is_dir():
        raise ManPagesMissingError(f"man-pages: the manual folder {src} does not exist (install the manual pages; "
                                   "slim container images leave them out)")
    if not any((src / f"man{s}").is_dir() for s in COMMAND_SECTIONS + OTHER_SECTIONS):
        raise ManPagesMissingError(f"man-pages: the manual folder {src} holds no man1 .. man8 folder")
    used: tuple[str, ...] = COMMAND_SECTIONS
    docs, queries, counts = collect(src, used)
    if counts["documents"] < MIN_COMMAND_DOCS:
        used = COMMAND_SECTIONS + OTHER_SECTIONS
        docs, queries, counts = collect(src, used)
    if len(queries) < test_queries + dev_queries + 1:
        raise CollectionError(f"man-pages: only {len(queries)} usable queries under {src} (sections "
                              f"{', '.join(used)}), fewer than the {test_queries} test + {dev_queries} dev asked for")
    splits = assign_splits(queries, test_queries, dev_queries)
    counted = split_counts(splits)
    manifest = {
        "spec": SPEC, "builder_version": BUILDER_VERSION, "man_folder": str(src), "sections": list(used),
        "source_sha256": counts.pop("source_sha256"), "licence": LICENCE, "counts": counts, "qrels": counted,
        "rules": {"min_doc_words": MIN_DOC_WORDS, "max_doc_words": MAX_DOC_WORDS, "min_query_words":
                  MIN_QUERY_WORDS, "max_query_words": MAX_QUERY_WORDS, "min_command_docs": MIN_COMMAND_DOCS,
                  "skip_prefixes": list(SKIP_PREFIXES)},
    }
    write_single_judged(out_dir, docs, queries, splits, manifest, _provenance(manifest))
    logger.info("man-pages: %d documents, %d queries (%s) in %s", counts["documents"], len(queries), counted, out_dir)
    return manifest


def _provenance(m: dict[str, Any]) -> str:
    c, r = m["counts"], m["rules"]
    return (
        f"# man-pages: provenance\n\nBuilt by inpars-ray (`inpars_ray/io/man_pages.py`, builder version "
        f"{m['builder_version']}) from the manual pages in `{m['man_folder']}`, sections {', '.join(m['sections'])}, "
        f"rendered in Python (sha256 of the pages read: `{m['source_sha256']}`).\n\nLicence: {LICENCE}. Do not publish "
        "these files. Queries: the pages' own NAME-line descriptions, written by their authors; documents: their "
        f"DESCRIPTION sections, titled `name(section)`.\n\nCounts: {c['files']} files, of which {c['skipped']} skipped "
        f"({', '.join(r['skip_prefixes'])}), {c['broken']} unreadable or leading nowhere, {c['aliases']} aliases: "
        f"{c['pages']} pages; {c['no_description']} without DESCRIPTION, {c['short_body']} under {r['min_doc_words']} "
        f"words, {c['duplicate_body']} duplicates: {c['documents']} documents. Descriptions: {c['bad_description']} "
        f"unusable, {c['leaked_description']} verbatim in their document, {c['ambiguous_description']} shared: "
        f"{c['queries']} queries, split {m['qrels']} by a hash of the query id; one relevant document each.\n"
    )


def cache_folder(cache_dir: str | os.PathLike[str]) -> Path:
    """Where the collection lives in the cache (one per builder version: a snapshot of the installed pages)."""
    return Path(cache_dir) / f"man-pages-v{BUILDER_VERSION}"


def ensure(cache_dir: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> Path:
    """The collection's folder in ``cache_dir``, built on first use."""
    folder = cache_folder(cache_dir)
    if not (folder / "manifest.json").exists():
        build(folder, root=root)
    return folder

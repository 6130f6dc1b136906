"""The man-pages collection: its rules on a small fake manual folder of gzipped troff pages, and the real build."""
from __future__ import annotations

import gzip
import json
import os
import re
from pathlib import Path

import pytest

from inpars_ray import schema as S
from inpars_ray.errors import CollectionError, ConfigError
from inpars_ray.io import catalog, man_pages
from inpars_ray.io.load import iter_lines, parse_corpus_lines, read_qrels, read_queries

BODY = "It reads every file named on the command line, keeps the order of the lines and writes them out for the caller."
WORDS = ["apple", "birch", "cedar", "dune", "elm", "fjord", "grove", "heath", "isle", "jetty"]


def _page(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(text.lstrip("\n").encode(), mtime=0))


def _link(root: Path, rel: str, target: str) -> None:
    os.symlink(target, root / rel)


def _simple(name: str, description: str, body: str, section: str = "1") -> str:
    return f".TH {name.upper()} {section}\n.SH NAME\n{name} \\- {description}\n.SH DESCRIPTION\n{body}\n"


ALPHA = r"""
.\" a comment line
.de XX
.B this macro body is never text
..
.TH ALPHA 1
.SH NAME
alpha \- paint the alpha channel of images
.SH SYNOPSIS
.B alpha
[\fIOPTION\fR]...
.SH "DESCRIPTION"
.B alpha
reads \fBevery\fR image \(em one at a time \- and \*(lqpaints\*(rq it. \" a trailing comment
.ie n \{\
.ds XY conditional text is never rendered
.\}
.el \{\
.sp -1
.\}
""" + BODY + r"""
.TP
.BR \-a ", " \-\-all
keep all layers
.TS
tab(:);
l l.
left cell:right cell
.TE
.SH OPTIONS
Options are not part of the document.
"""

BETA = r"""
.Dd January 1, 2024
.Dt BETA 1
.Os
.Sh NAME
.Nm beta
.Nd sort the lines of beta files
.Sh DESCRIPTION
The
.Nm
utility sorts lines; with
.Fl v
it prints them, see
.Xr ls 1 .
""" + BODY + "\n.Sh SEE ALSO\n.Xr sort 1\n"


@pytest.fixture()
def fake_man(tmp_path: Path) -> Path:
    root = tmp_path / "man"
    _page(root, "man1/alpha.1.gz", ALPHA)
    _page(root, "man1/beta.1.gz", BETA)
    _link(root, "man1/gamma.1.gz", "alpha.1.gz")  # a symbolic link: an alias of alpha
    _page(root, "man1/delta.1.gz", '.\\" an alias page\n.so man1/beta.1\n')  # a .so page: an alias of beta
    _link(root, "man1/aa.1.gz", "multi.1.gz")  # an alias met before its page: the page's name is the title
    _page(root, "man1/inc.1.gz", _simple("inc", "print labels on a terminal", f"{BODY} Then:\n.so include/shared.man"))
    (root / "include").mkdir()
    (root / "include" / "shared.man").write_text("Shared words that come from an included file.\n")
    _page(root, "man1/leak.1.gz", _simple("leak", "count the words", f"This tool will count the words. {BODY}"))
    _page(root, "man1/twin1.1.gz", _simple("twin1", "open the file and read it", f"{BODY} Twin one."))
    _page(root, "man1/twin2.1.gz", _simple("twin2", "open the file and read it", f"{BODY} Twin two."))
    _page(root, "man1/zcopy.1.gz", _simple("zcopy", "make another thing entirely", f"{BODY} One."))
    _page(root, "man1/short.1.gz", _simple("short", "do a short thing", "Too short."))
    _page(root, "man1/nodesc.1.gz", ".TH NODESC 1\n.SH NAME\nnodesc \\- have no description\n.SH SYNOPSIS\nnodesc\n")
    _page(root, "man1/one.1.gz", _simple("one", "thing", f"{BODY} One."))
    _page(root, "man1/gcloud_compute.1.gz", _simple("gcloud compute", "manage the compute things", BODY))
    _page(root, "man1/multi.1.gz", ".TH MULTI 1\n.SH NAME\nmulti \\- show the first thing here\n.br\nother, more \\- "
                                   f"show the second thing\n.SH DESCRIPTION\n{BODY} Multi.\n")
    (root / "man8").mkdir()
    _link(root, "man8/broken.8.gz", "missing.8.gz")  # a link leading nowhere
    for word in WORDS:
        page = _simple(f"gen-{word}", f"tune the {word} engine", f"{BODY} Variant {word}.", "8")
        _page(root, f"man8/gen-{word}.8.gz", page)
    _page(root, "man3/libf.3.gz", _simple("libf", "allocate frobnicator memory", f"{BODY} Library.", "3"))
    _page(root, "de/man1/alpha.1.gz", _simple("alpha", "malt den Alphakanal", f"{BODY} Deutsch."))  # not read
    return root


def _rows(path: Path) -> dict[str, dict[str, str]]:
    return {(row := json.loads(line))["_id"]: row for line in path.read_text().splitlines()}


def test_rules_on_a_small_manual_folder(fake_man: Path, tmp_path: Path):
    out = tmp_path / "coll"
    manifest = man_pages.build(out, root=fake_man, test_queries=5, dev_queries=2)
    c = manifest["counts"]
    docs, queries = _rows(out / "corpus.jsonl"), _rows(out / "queries.jsonl")
    # every file accounted for
    assert c["files"] == 27 and c["files"] == c["skipped"] + c["broken"] + c["aliases"] + c["pages"]
    assert (c["skipped"], c["broken"], c["aliases"]) == (1, 1, 3)
    assert c["pages"] == c["no_description"] + c["short_body"] + c["duplicate_body"] + c["documents"]
    assert (c["no_description"], c["short_body"], c["duplicate_body"]) == (1, 1, 1)
    assert c["documents"] == c["bad_description"] + c["leaked_description"] + c["ambiguous_description"] + c["queries"]
    assert (c["bad_description"], c["leaked_description"], c["ambiguous_description"]) == (1, 1, 2)
    # fewer than MIN_COMMAND_DOCS documents in man1 + man8: the other sections are walked too
    assert manifest["sections"] == ["1", "8", "2", "3", "4", "5", "6", "7"] and "libf.3" in docs
    # aliases are kept once, under their page's name; skipped, broken, translated and duplicate pages are out
    assert not {"gamma.1", "delta.1", "aa.1", "gcloud_compute.1", "broken.8", "zcopy.1"} & set(docs)
    assert docs["multi.1"]["title"] == "multi(1)" and docs["alpha.1"]["title"] == "alpha(1)"
    assert not any("Deutsch" in d["text"] for d in docs.values())
    # man(7): text macros, escapes, strings and tables rendered; comments, definitions, conditionals, NAME left out
    alpha = docs["alpha.1"]["text"]
    assert alpha.startswith('alpha reads every image \u2014 one at a time - and "paints" it. It reads every file')
    assert alpha.endswith("-a, --all keep all layers left cell right cell")
    assert "\\" not in alpha and "never" not in alpha and "comment" not in alpha and "paint the alpha" not in alpha
    # mdoc(7): Nm, Fl and Xr
    assert docs["beta.1"]["text"].startswith("The beta utility sorts lines; with -v it prints them, see ls(1). It")
    assert "sort(1)" not in docs["beta.1"]["text"]
    assert docs["inc.1"]["text"].endswith("Then: Shared words that come from an included file.")
    # queries: the NAME line's description (the first entry's), no leak, no ambiguity, enough words
    assert queries["q-alpha.1"]["text"] == "paint the alpha channel of images"
    assert queries["q-beta.1"]["text"] == "sort the lines of beta files"
    assert queries["q-multi.1"]["text"] == "show the first thing here"
    assert "q-leak.1" not in queries and "leak.1" in docs
    assert "q-twin1.1" not in queries and "q-twin2.1" not in queries and {"twin1.1", "twin2.1"} <= set(docs)
    assert "q-one.1" not in queries and "one.1" in docs
    assert manifest["qrels"] == {"train": c["queries"] - 7, "dev": 2, "test": 5}
    provenance = (out / "PROVENANCE.md").read_text()
    assert "many licences" in provenance and "never redistributed" in provenance
    # readable by the engine's loaders, and every test query's document is in the corpus
    coll = catalog.resolve(str(out))
    q, _ = read_queries(coll)
    qrels, _ = read_qrels(coll, "test", q)
    assert qrels.num_rows == 5 and set(qrels.column(S.DOC_ID).to_pylist()) <= set(docs)


def test_command_sections_alone_when_they_are_enough(fake_man: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(man_pages, "MIN_COMMAND_DOCS", 5)
    manifest = man_pages.build(tmp_path / "coll", root=fake_man, test_queries=5, dev_queries=2)
    assert manifest["sections"] == ["1", "8"] and "libf.3" not in _rows(tmp_path / "coll" / "corpus.jsonl")


def test_build_is_deterministic_and_fails_clearly(fake_man: Path, tmp_path: Path):
    man_pages.build(tmp_path / "a", root=fake_man, test_queries=5, dev_queries=2)
    man_pages.build(tmp_path / "b", root=fake_man, test_queries=5, dev_queries=2)
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv", "qrels/train.tsv", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    with pytest.raises(CollectionError, match="usable queries"):
        man_pages.build(tmp_path / "c", root=fake_man, test_queries=50)
    assert not (tmp_path / "c").exists()
    for root in (tmp_path / "nowhere", tmp_path / "a"):  # missing, or without man1 .. man8
        with pytest.raises(man_pages.ManPagesMissingError, match=str(root)) as caught:
            man_pages.build(tmp_path / "d", root=root)
        assert isinstance(caught.value, ConfigError) and isinstance(caught.value, CollectionError)


def test_builtin_spec_names_the_missing_manual_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(man_pages, "MAN_ROOT", tmp_path / "no-man")
    with pytest.raises(ConfigError, match="no-man"):
        catalog.resolve(man_pages.SPEC, cache_dir=tmp_path / "cache")
    assert not man_pages.cache_folder(tmp_path / "cache").exists()


def test_troff_escapes():
    text = man_pages.to_text(r"\fBls\fR \- list \(em \[u00E9] \*(C`x\*(C' a\ b \e \&.")
    assert text == 'ls - list \u2014 \u00e9 "x" a b \\ .'
    plus = r"C\v'-.1v'\h'-1p'\s-2+\h'-1p'+\s0\v'.1v'\h'-1p'"
    assert man_pages.to_text(r"The \*(C+ compiler", {"C+": plus}) == "The C++ compiler"
    assert man_pages.page_name("CA.pl.1ssl.gz") == ("CA.pl", "1ssl") and man_pages.page_name("README") is None


def _words(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def _real_pages() -> int:
    folders = [man_pages.MAN_ROOT / f"man{s}" for s in ("1", "8")]
    return sum(len(os.listdir(f)) for f in folders if f.is_dir())


@pytest.mark.skipif(_real_pages() < 1500, reason="this machine has too few manual pages in /usr/share/man")
def test_builtin_spec_builds_the_real_collection_once(tmp_path: Path):
    coll = catalog.resolve(man_pages.SPEC, cache_dir=tmp_path)
    manifest = json.loads(Path(coll.path("manifest.json")).read_text())
    assert manifest["counts"]["documents"] > 1000 and manifest["counts"]["queries"] > 1000
    assert manifest["qrels"]["test"] == man_pages.TEST_QUERIES
    corpus, bad = parse_corpus_lines(iter_lines(coll, coll.corpus_path()), coll.corpus_path(), 1)
    assert not bad.rows
    assert corpus.num_rows == manifest["counts"]["documents"]
    docs = dict(zip(corpus.column(S.DOC_ID).to_pylist(), corpus.column(S.TEXT).to_pylist()))
    queries, _ = read_queries(coll)
    qrels, _ = read_qrels(coll, "test", queries)
    text = dict(zip(queries.column(S.QUERY_ID).to_pylist(), queries.column(S.QUERY).to_pylist()))
    for qid, did in zip(qrels.column(S.QUERY_ID).to_pylist(), qrels.column(S.DOC_ID).to_pylist()):
        # no verbatim leak of the query's words into its document ("activates" is not in "deactivates")
        assert f" {_words(text[qid])} " not in f" {_words(docs[did])} "
    stamp = Path(coll.path("manifest.json")).stat().st_mtime_ns
    assert catalog.resolve(man_pages.SPEC, cache_dir=tmp_path).root == coll.root
    assert Path(coll.path("manifest.json")).stat().st_mtime_ns == stamp  # built once, then reused

"""The python-docstrings collection: its rules on a small hand-made library, and the real build."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from inpars_ray import schema as S
from inpars_ray.errors import CollectionError
from inpars_ray.io import catalog, stdlib_docs
from inpars_ray.io.load import read_qrels, read_queries

BODY = "It walks the whole tree, keeps the order of the children and returns a list that the caller owns."


def _write(root: Path, rel: str, source: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source), encoding="utf-8")


@pytest.fixture()
def fake_lib(tmp_path: Path) -> Path:
    root = tmp_path / "lib"
    funcs = "\n".join(
        f'def f{i}():\n    """Compute the number {i} of a thing carefully.\n\n    {BODY} Variant {i} of it.\n    """\n'
        for i in range(12))
    _write(root, "many.py", funcs)
    _write(root, "rules.py", f'''
        """Module summary with enough words here.

        {BODY} This module is the rules module.
        """

        def short():
            """Return a short thing for the caller.

            Too short a body.
            """

        def sig():
            """sig(a, b) -> int

            {BODY} The signature line is no query.
            """

        def leak():
            """Parse the header line quickly.

            {BODY} We parse the header line quickly, as said.
            """

        def twin_a():
            """Open the file and read it.

            {BODY} Twin A differs here.
            """

        def twin_b():
            """Open the file and read it.

            {BODY} Twin B differs there.
            """

        def copy_one():
            """Copy the body that repeats exactly.

            {BODY} Same words.
            """

        class Box:
            """A box that holds many things inside. It has a second sentence.
            And the first paragraph wraps.

            {BODY}
            """
        ''')
    _write(root, "test/test_x.py", f'def t():\n    """Test something useful today.\n\n    {BODY} Skipped.\n    """\n')
    _write(root, "this.py", f'"""The zen of it, rot13 encoded.\n\n{BODY} Skipped too.\n"""\n')
    _write(root, "broken.py", "def (:\n")
    return root


def test_rules_on_a_small_library(fake_lib: Path, tmp_path: Path):
    out = tmp_path / "coll"
    manifest = stdlib_docs.build(out, root=fake_lib, test_queries=5, dev_queries=2)
    c = manifest["counts"]
    docs = {json.loads(line)["_id"]: json.loads(line) for line in (out / "corpus.jsonl").read_text().splitlines()}
    queries = {json.loads(line)["_id"]: json.loads(line)["text"] for line in (out / "queries.jsonl").read_text().splitlines()}
    # every docstring accounted for
    assert c["docstrings"] == c["short_body"] + c["duplicate_body"] + c["documents"]
    assert c["documents"] == c["bad_summary"] + c["leaked_summary"] + c["ambiguous_summary"] + c["queries"]
    assert c["short_body"] == 1 and "rules.short" not in docs
    assert c["duplicate_body"] == 0 or "rules.copy_one" in docs
    assert not any(d.startswith(("test.", "this")) for d in docs)  # skipped folder and file
    assert "q-rules.sig" not in queries and "rules.sig" in docs  # a signature line is no query, its body stays
    assert "q-rules.leak" not in queries and c["leaked_summary"] == 1
    assert "q-rules.twin_a" not in queries and "q-rules.twin_b" not in queries and c["ambiguous_summary"] == 2
    # the summary is the first sentence; the rest of the first paragraph goes to the document
    assert queries["q-rules.Box"] == "A box that holds many things inside."
    assert docs["rules.Box"]["text"].startswith("It has a second sentence. And the first paragraph wraps.")
    assert docs["rules.Box"]["title"] == "rules.Box"
    assert manifest["qrels"] == {"train": c["queries"] - 7, "dev": 2, "test": 5}
    assert (out / "PROVENANCE.md").read_text().count("PSF") == 1
    # readable by the engine's loaders, and every test query's document is in the corpus
    coll = catalog.resolve(str(out))
    q, _ = read_queries(coll)
    qrels, _ = read_qrels(coll, "test", q)
    assert qrels.num_rows == 5 and set(qrels.column(S.DOC_ID).to_pylist()) <= set(docs)


def test_build_is_deterministic_and_fails_clearly_when_too_small(fake_lib: Path, tmp_path: Path):
    stdlib_docs.build(tmp_path / "a", root=fake_lib, test_queries=5, dev_queries=2)
    stdlib_docs.build(tmp_path / "b", root=fake_lib, test_queries=5, dev_queries=2)
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv", "qrels/train.tsv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    with pytest.raises(CollectionError, match="usable queries"):
        stdlib_docs.build(tmp_path / "c", root=fake_lib, test_queries=50)
    assert not (tmp_path / "c").exists()


def test_builtin_spec_builds_the_real_collection_once(tmp_path: Path):
    coll = catalog.resolve(stdlib_docs.SPEC, cache_dir=tmp_path)
    manifest = json.loads(Path(coll.path("manifest.json")).read_text())
    assert manifest["counts"]["documents"] > 2000 and manifest["qrels"]["test"] == stdlib_docs.TEST_QUERIES
    docs = {json.loads(line)["_id"]: json.loads(line)["text"] for line in Path(coll.corpus_path()).read_text().splitlines()}
    queries, _ = read_queries(coll)
    qrels, _ = read_qrels(coll, "test", queries)
    text = dict(zip(queries.column(S.QUERY_ID).to_pylist(), queries.column(S.QUERY).to_pylist()))
    for qid, did in zip(qrels.column(S.QUERY_ID).to_pylist(), qrels.column(S.DOC_ID).to_pylist()):
        assert text[qid].lower() not in docs[did].lower()  # no verbatim leak of the query into its document
    stamp = Path(coll.path("manifest.json")).stat().st_mtime_ns
    assert catalog.resolve(stdlib_docs.SPEC, cache_dir=tmp_path).root == coll.root
    assert Path(coll.path("manifest.json")).stat().st_mtime_ns == stamp  # built once, then reused

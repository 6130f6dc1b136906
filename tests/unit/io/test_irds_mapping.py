"""irds: specs: how ir_datasets' record types become corpus and query rows, the split a qrels file is named
after, repeated judgements, and the cache folder (pure functions; ir_datasets' own record types)."""
from __future__ import annotations

from typing import NamedTuple

import pytest

from inpars_ray.errors import CollectionError
from inpars_ray.io import irds

formats = pytest.importorskip("ir_datasets.formats")
beir = pytest.importorskip("ir_datasets.datasets.beir")
msmarco_document = pytest.importorskip("ir_datasets.datasets.msmarco_document")


class AbstractDoc(NamedTuple):  # a type with neither text nor body: its own rendering is used
    doc_id: str
    title: str
    abstract: str

    def default_text(self) -> str:
        return f"{self.title} {self.abstract}"


class BareDoc(NamedTuple):  # no text field and no default_text(): its string fields, one per line
    doc_id: str
    headline: str
    lead: str
    year: int


def test_documents_keep_title_and_text_whatever_the_record_type():
    cases = [
        (beir.BeirTitleDoc("d1", "the text", "A title"), {"_id": "d1", "title": "A title", "text": "the text"}),
        (formats.GenericDoc("d2", "only text"), {"_id": "d2", "title": "", "text": "only text"}),
        (msmarco_document.MsMarcoDocument("d3", "http://x", "T", "the body"), {"_id": "d3", "title": "T", "text": "the body"}),
        (AbstractDoc("d4", "T4", "an abstract"), {"_id": "d4", "title": "", "text": "T4 an abstract"}),
        (BareDoc("d5", "Headline", "The lead.", 1999), {"_id": "d5", "title": "", "text": "Headline\nThe lead."}),
        (beir.BeirTitleDoc(7, None, None), {"_id": "7", "title": "", "text": ""}),
    ]
    for doc, row in cases:
        assert irds.doc_row(doc, irds.doc_mapping(type(doc))) == row, type(doc).__name__


def test_queries_use_the_dataset_s_own_text():
    topic = formats.TrecQuery("301", "international organized crime", "a description", "a narrative")
    assert irds.query_row(topic, irds.query_mapping(formats.TrecQuery)) == {"_id": "301", "text": "international organized crime"}
    query = formats.GenericQuery("q1", "what is it")
    assert irds.query_row(query, irds.query_mapping(formats.GenericQuery)) == {"_id": "q1", "text": "what is it"}


def test_the_split_is_what_the_id_adds_below_its_documents():
    assert irds.split_name("beir/scifact/test", "beir/scifact") == "test"
    assert irds.split_name("msmarco-passage/dev/small", "msmarco-passage") == "dev-small"
    assert irds.split_name("beir/arguana", "beir/arguana") == "test"
    assert irds.split_name("beir/scifactual/x", "beir/scifact") == "test"  # a prefix of the name is not a parent


def test_a_repeated_judgement_keeps_the_first_and_is_counted():
    qrels = [formats.TrecQrel("q1", "d1", 2, "0"), formats.TrecQrel("q1", "d2", 0, "0"),
             formats.TrecQrel("q1", "d1", 1, "1"), formats.TrecQrel("q2", "d1", 1, "0")]
    dropped = [0]
    assert list(irds.first_judgements(qrels, dropped)) == [("q1", "d1", 2), ("q1", "d2", 0), ("q2", "d1", 1)]
    assert dropped == [1]


def test_spec_and_cache_folder():
    assert irds.dataset_id("irds:beir/scifact/test") == "beir/scifact/test"
    with pytest.raises(CollectionError, match="names no ir_datasets id"):
        irds.dataset_id("irds:")
    folder = irds.cache_folder("/cache", "beir/cqadupstack/android", "0.6.3")
    assert folder.parent.as_posix() == "/cache/irds"
    assert folder.name == f"beir__cqadupstack__android-irds0.6.3-v{irds.WRITER_VERSION}"

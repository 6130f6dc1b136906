"""The text of a document that every model reads: the generator's prompt, the rankers and the trainer.

One definition, so the document a query was generated from is the document it is filtered, mined, taught
and trained against. Title and body are joined on one line (BEIR "flat" indexes join them too) with runs of
whitespace collapsed to one space: a newline inside the document would break the prompt's one-line answer
format, and the rankers' tokenizers split on whitespace anyway (BERT-style WordPiece of MiniLM and MPNet;
T5's SentencePiece normaliser removes extra whitespace), so their input tokens are the same either way
(``tests/unit/io/test_text.py`` checks the scores of the packaged MiniLM).
"""
from __future__ import annotations

import pyarrow as pa


def document_text(title: str | None, text: str | None) -> str:
    """Title and body on one line, whitespace runs collapsed (empty parts left out)."""
    return " ".join(f"{title or ''} {text or ''}".split())


def normalise(text: str) -> str:
    """Case-folded text with runs of whitespace collapsed to one space (for copy and duplicate checks)."""
    return " ".join(text.casefold().split())


def copies_document(query: str, document: str) -> bool:
    """Whether ``query`` is a verbatim span of ``document`` (its :func:`document_text`; case and whitespace
    aside): the filter drops such a query, and the generator's ``untitled_retry`` asks once more for it."""
    return normalise(query) in normalise(document)


def document_texts(title: pa.Array | pa.ChunkedArray, text: pa.Array | pa.ChunkedArray) -> pa.Array:
    """:func:`document_text` of each row; a row whose title and text are both null stays null (an unknown
    document), one with only empty parts is the empty string."""
    return pa.array([None if t is None and x is None else document_text(t, x)
                     for t, x in zip(title.to_pylist(), text.to_pylist())], pa.string())

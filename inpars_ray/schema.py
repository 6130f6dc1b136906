"""Column names and Arrow schemas: the data contract between stages, defined once.

Every stage states the columns it reads with :func:`require_columns` and writes tables that match one of
the schemas below. BEIR's own field names (``_id``, ``query-id``...) appear only in :mod:`inpars_ray.io.load`,
which maps them to these names.
"""
from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa

from inpars_ray.errors import SchemaError

# --- column names -----------------------------------------------------------------------------------
DOC_ID = "doc_id"
TITLE = "title"
TEXT = "text"
QUERY_ID = "query_id"
QUERY = "query"
RELEVANCE = "relevance"
RANK = "rank"
SCORE = "score"
# provenance of a row read from a file, kept so errors and quarantines can name file and line
SOURCE_FILE = "source_file"
SOURCE_LINE = "source_line"

# generation
TOKEN_LOGPROBS = "token_logprobs"
MEAN_LOGPROB = "mean_logprob"
NUM_TOKENS = "num_tokens"
PROMPT_NAME = "prompt_name"
MODEL = "model"
BACKEND = "backend"
FEWSHOT_IDS = "fewshot_ids"
ERROR = "error"

# filtering / mining / training
FILTER_SCORE = "filter_score"
POS_DOC_ID = "pos_doc_id"
POS_TEXT = "pos_text"
NEG_DOC_ID = "neg_doc_id"
NEG_TEXT = "neg_text"
NEG_RANK = "neg_rank"

# --- schemas ----------------------------------------------------------------------------------------
CORPUS = pa.schema(
    [
        pa.field(DOC_ID, pa.string(), nullable=False),
        pa.field(TITLE, pa.string(), nullable=False),
        pa.field(TEXT, pa.string(), nullable=False),
        pa.field(SOURCE_FILE, pa.string(), nullable=False),
        pa.field(SOURCE_LINE, pa.int64(), nullable=False),
    ]
)
QUERIES = pa.schema(
    [pa.field(QUERY_ID, pa.string(), nullable=False), pa.field(QUERY, pa.string(), nullable=False)]
)
QRELS = pa.schema(
    [
        pa.field(QUERY_ID, pa.string(), nullable=False),
        pa.field(DOC_ID, pa.string(), nullable=False),
        pa.field(RELEVANCE, pa.int64(), nullable=False),
    ]
)
RUN = pa.schema(
    [
        pa.field(QUERY_ID, pa.string(), nullable=False),
        pa.field(DOC_ID, pa.string(), nullable=False),
        pa.field(RANK, pa.int64(), nullable=False),
        pa.field(SCORE, pa.float64(), nullable=False),
    ]
)
#: one row per (document, generated query); rows with a non-null ``error`` carry no query.
GENERATED = pa.schema(
    [
        pa.field(DOC_ID, pa.string(), nullable=False),
        pa.field(QUERY_ID, pa.string(), nullable=False),
        pa.field(QUERY, pa.string()),
        pa.field(TOKEN_LOGPROBS, pa.list_(pa.float64())),
        pa.field(MEAN_LOGPROB, pa.float64()),
        pa.field(NUM_TOKENS, pa.int64()),
        pa.field(PROMPT_NAME, pa.string(), nullable=False),
        pa.field(MODEL, pa.string(), nullable=False),
        pa.field(BACKEND, pa.string(), nullable=False),
        pa.field(FEWSHOT_IDS, pa.list_(pa.string())),
        pa.field(ERROR, pa.string()),
    ]
)
TRIPLES = pa.schema(
    [
        pa.field(QUERY_ID, pa.string(), nullable=False),
        pa.field(QUERY, pa.string(), nullable=False),
        pa.field(POS_DOC_ID, pa.string(), nullable=False),
        pa.field(POS_TEXT, pa.string(), nullable=False),
        pa.field(NEG_DOC_ID, pa.string(), nullable=False),
        pa.field(NEG_TEXT, pa.string(), nullable=False),
        pa.field(NEG_RANK, pa.int64(), nullable=False),
        pa.field(FILTER_SCORE, pa.float64()),
    ]
)


def require_columns(columns: Iterable[str], needed: Iterable[str], stage: str) -> None:
    """Raise :class:`SchemaError` naming every column of ``needed`` missing from ``columns``."""
    have = set(columns)
    missing = [c for c in needed if c not in have]
    if missing:
        raise SchemaError(f"{stage}: input lacks column(s) {missing}; it has {sorted(have)}")


# --- filter / mine outputs ----------------------------------------------------------------------------
#: why a row was left out by a stage (null for kept rows)
DROP_REASON = "reason"
#: the filter's kept queries: the generated row plus the score that selected it
FILTERED = GENERATED.append(pa.field(FILTER_SCORE, pa.float64(), nullable=False))
#: the folders of a filter's output (the filter's and the consistency filter's): kept rows (:data:`FILTERED`),
#: and dropped ones (:data:`FILTER_DROPPED`)
KEPT_DIR, DROPPED_DIR = "kept", "dropped"
#: the filter's report of every row it left out, with the reason
FILTER_DROPPED = pa.schema(
    [
        pa.field(QUERY_ID, pa.string()),
        pa.field(DOC_ID, pa.string()),
        pa.field(QUERY, pa.string()),
        pa.field(DROP_REASON, pa.string(), nullable=False),
        pa.field(FILTER_SCORE, pa.float64()),
    ]
)
NUM_HITS = "num_hits"
NUM_ELIGIBLE = "num_eligible"
POS_RANK = "pos_rank"
#: the miner's report of queries that got fewer negatives than asked for
MINE_SHORT = pa.schema(
    [
        pa.field(QUERY_ID, pa.string(), nullable=False),
        pa.field(POS_DOC_ID, pa.string(), nullable=False),
        pa.field(NUM_HITS, pa.int64(), nullable=False),
        pa.field(NUM_ELIGIBLE, pa.int64(), nullable=False),
        pa.field(POS_RANK, pa.int64()),
        pa.field(DROP_REASON, pa.string(), nullable=False),
    ]
)

"""inpars-ray: turn a document collection into a domain-tuned monoT5 reranker, on Ray (InPars v1/v2)."""
from __future__ import annotations

__version__ = "0.1.0"

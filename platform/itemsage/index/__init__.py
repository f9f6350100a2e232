"""Item retrieval index: FAISS (CPU/GPU) or exact torch search, chosen by a recall/QPS sweep.

``build_index`` / ``load_index`` give an ``ItemIndex`` keyed by string item ids; ``sweep`` picks
the fastest spec that reaches a recall target; ``log_index`` / ``download_index`` version an index
with the registered model version whose embeddings it holds.
"""

from itemsage.index.base import (
    IndexMismatchError,
    ItemIndex,
    NonFiniteError,
    UnsupportedOperationError,
)
from itemsage.index.faiss_index import FaissIndex, build_index, default_nlist, load_index, resolve_spec
from itemsage.index.idmap import DuplicateIdError, IdMap, UnknownIdError
from itemsage.index.storage import CorruptIndexError, IndexWriteError, read_metadata
from itemsage.index.sweep import SweepResult, SweepRow, recall_at_k, sweep
from itemsage.index.torch_exact import TorchExactIndex
from itemsage.index.versioning import download_index, log_index

__all__ = [
    "CorruptIndexError",
    "DuplicateIdError",
    "FaissIndex",
    "IdMap",
    "IndexMismatchError",
    "IndexWriteError",
    "ItemIndex",
    "NonFiniteError",
    "SweepResult",
    "SweepRow",
    "TorchExactIndex",
    "UnknownIdError",
    "UnsupportedOperationError",
    "build_index",
    "default_nlist",
    "download_index",
    "load_index",
    "log_index",
    "read_metadata",
    "recall_at_k",
    "resolve_spec",
    "sweep",
]

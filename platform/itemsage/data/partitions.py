"""Hash partitions of a Ray Dataset by a string key: the shuffle behind every "all rows with the
same key meet in one place" step of preprocessing (duplicate ids, label groups, link targets,
token counts).

``by_key`` tags each row with ``hash(key) % n`` and runs ``fn`` once per partition through
``groupby(...).map_groups``, so ``fn`` sees every row of its keys together and nothing else: exact
per-key logic with vectorised pandas/pyarrow code, while each partition (about 1/n of the rows)
is what one worker holds. More partitions, smaller pieces.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

PART = "_part"


def partition_of(keys: pa.Array | pa.ChunkedArray | list[str], n: int) -> np.ndarray:
    """``hash(key) % n`` for each key; the same on every process (pandas' fixed-key SipHash,
    never Python's salted ``hash``)."""
    values = keys.to_numpy(zero_copy_only=False) if isinstance(keys, (pa.Array, pa.ChunkedArray)) else keys
    hashed = pd.util.hash_array(np.asarray(values, dtype=object), categorize=False)
    return (hashed % np.uint64(n)).astype(np.int64)


def _tag(batch: pa.Table, key: str, n: int) -> pa.Table:
    return batch.append_column(PART, pa.array(partition_of(batch.column(key), n), type=pa.int64()))


def _untag(batch: pa.Table, fn: Callable[..., pa.Table], **kwargs: Any) -> pa.Table:
    return fn(batch.drop_columns([PART]), **kwargs)


def by_key(ds: Any, key: str, n: int, fn: Callable[..., pa.Table], **fn_kwargs: Any) -> Any:
    """``fn(table of one partition, **fn_kwargs) -> table`` over the ``n`` hash partitions of
    ``ds`` by string column ``key``; a Dataset of the concatenated outputs."""
    tagged = ds.map_batches(_tag, fn_kwargs={"key": key, "n": n}, batch_format="pyarrow", zero_copy_batch=True)
    return tagged.groupby(PART, num_partitions=n).map_groups(
        _untag, fn_args=(fn,), fn_kwargs=fn_kwargs, batch_format="pyarrow"
    )

"""Write a feature directory to a local path or a URI, all or nothing.

Every file goes into a staging directory beside the target (``itemsage.files.staging_dir``); only a
finished run swaps it in. A crash (or Ctrl-C) therefore leaves the previous feature directory
untouched and at most a stray ``.<name>.tmp-*`` sibling, never a half-written ``<name>``.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# resolve is re-exported: the features directory's readers import it from here.
from itemsage.files import StagingDir, staging_dir
from itemsage.files import resolve as resolve

# Rows per Parquet row group of the tables in a features directory.
ROW_GROUP_ROWS = 2048


class StagedDir(StagingDir):
    """A staging directory for a features directory, with writers for its tables and files."""

    def write_parquet(self, name: str, table: pa.Table) -> None:
        full = self.path(name)
        self.fs.create_dir(posixpath.dirname(full), recursive=True)
        # Row groups of a few thousand rows: Ray Data splits a file into blocks by row group, so a
        # one-group items.parquet would reach only one actor of a batch-embedding pool.
        pq.write_table(table, full, filesystem=self.fs, row_group_size=ROW_GROUP_ROWS)

    def write_text(self, name: str, text: str) -> None:
        with self.fs.open_output_stream(self.path(name)) as f:
            f.write(text.encode("utf-8"))

    def write_json(self, name: str, obj: Any) -> None:
        self.write_text(name, json.dumps(obj, indent=2, sort_keys=False) + "\n")

    def write_jsonl(self, name: str, rows: Iterable[dict[str, Any]]) -> None:
        self.write_text(name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


@contextmanager
def staged_output(target: str) -> Iterator[StagedDir]:
    """Write into the yielded staging dir; it replaces ``target`` only if the block succeeds."""
    with staging_dir(target, StagedDir) as out:
        yield out


def fixed_list_array(matrix: np.ndarray, dtype: pa.DataType) -> pa.ListArray:
    """[N, D] -> ``list<dtype>`` with D values per row (the feature format's list columns)."""
    n, d = matrix.shape
    offsets = pa.array((np.arange(n + 1, dtype=np.int64) * d).astype(np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1), type=dtype))

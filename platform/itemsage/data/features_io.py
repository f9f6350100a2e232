"""Write a feature directory to a local path or a URI, all or nothing.

Every file goes into a staging directory beside the target; only a finished run swaps it in. A crash
(or Ctrl-C) therefore leaves the previous feature directory untouched and at most a stray
``<name>.tmp-*`` sibling, never a half-written ``<name>``.
"""

from __future__ import annotations

import json
import posixpath
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

# Rows per Parquet row group of the tables in a features directory.
ROW_GROUP_ROWS = 2048


def resolve(target: str) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for a local path or an ``s3://``/``gs://``/``file://`` style URI."""
    if "://" in target:
        fs, path = pafs.FileSystem.from_uri(target)
        return fs, path.rstrip("/")
    # Local paths are made absolute so the swap does not depend on the worker's cwd.
    return pafs.LocalFileSystem(), str(Path(target).expanduser().resolve())


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


@dataclass
class StagedDir:
    """A staging directory that becomes ``final`` on :meth:`commit` and vanishes on :meth:`discard`."""

    fs: pafs.FileSystem
    final: str
    staging: str

    @classmethod
    def create(cls, target: str) -> "StagedDir":
        fs, final = resolve(target)
        parent = posixpath.dirname(final)
        if parent:
            fs.create_dir(parent, recursive=True)
        staging = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
        fs.create_dir(staging, recursive=True)
        return cls(fs, final, staging)

    def path(self, name: str) -> str:
        return posixpath.join(self.staging, name)

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

    def commit(self) -> None:
        """Swap the staging dir in for ``final``, replacing any previous run's output."""
        old = None
        if _exists(self.fs, self.final):
            old = f"{self.final}.old-{uuid.uuid4().hex[:8]}"
            _move(self.fs, self.final, old)
        _move(self.fs, self.staging, self.final)
        if old is not None:
            self.fs.delete_dir(old)

    def discard(self) -> None:
        if _exists(self.fs, self.staging):
            self.fs.delete_dir(self.staging)


def _move(fs: pafs.FileSystem, src: str, dst: str) -> None:
    """Rename a directory; object stores that cannot rename directories get copy + delete."""
    try:
        fs.move(src, dst)
    except (OSError, NotImplementedError):
        # S3/GCS have no directory rename. Copying is not atomic, but the swap still only starts
        # once every file of the new run exists, which is the property readers depend on.
        pafs.copy_files(src, dst, source_filesystem=fs, destination_filesystem=fs)
        fs.delete_dir(src)


@contextmanager
def staged_output(target: str) -> Iterator[StagedDir]:
    """Write into the yielded staging dir; it replaces ``target`` only if the block succeeds."""
    out = StagedDir.create(target)
    try:
        yield out
    except BaseException:
        out.discard()
        raise
    out.commit()


def fixed_list_array(matrix: np.ndarray, dtype: pa.DataType) -> pa.ListArray:
    """[N, D] -> ``list<dtype>`` with D values per row (the feature format's list columns)."""
    n, d = matrix.shape
    offsets = pa.array((np.arange(n + 1, dtype=np.int64) * d).astype(np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1), type=dtype))

"""Ray Data read tasks over catalog files: one task per file, streaming blocks of its lines.

A read task opens its file, reads it front to back and hands Ray Data a block every
``lines_per_block`` lines, so no process ever holds a whole file: memory per task is one block,
whatever the file size. Files are not split further (gzip streams cannot be entered mid-way, and
CSV records may span lines); the parsing that follows (``map_batches``) runs in parallel over the
blocks. Lines are raw bytes: decoding, and reporting bytes that are not UTF-8, is the parser's job.

Every row carries ``order`` = ``file_index << FILE_SHIFT | position``: sorting by it gives the
catalog's file-then-line order, which decides which of two rows with one id is kept and the
``item_idx`` of the items.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pyarrow as pa
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

# 2^40 positions (lines or records) per file, 2^23 files: far beyond any catalog.
FILE_SHIFT = 40
GZIP_MAGIC = b"\x1f\x8b"
# ``error``: null, except on the one row that stands for a stream that broke after line ``line_no``.
LINES_SCHEMA = pa.schema(
    [("order", pa.int64()), ("line_no", pa.int64()), ("line", pa.binary()), ("error", pa.string())]
)

# (file index, path) -> blocks; must be a picklable module-level function (it runs in a Ray task).
FileReader = Callable[[int, str], Iterator[pa.Table]]


def order_key(file_index: int, position: int) -> int:
    return (file_index << FILE_SHIFT) | position


def open_maybe_gzip(path: str):  # noqa: ANN201 - a binary file object, gzip or plain
    """The file as a binary stream, decompressed when it starts with gzip's magic bytes (names
    lie: McAuley files are ``.json.gz``, but a user may have gunzipped one and kept the name)."""
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == GZIP_MAGIC
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def iter_raw_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """``(line number from 1, line with its newline)``; a last line without a newline counts, an
    empty piece after the final newline does not. Same numbering as ``text.split("\n")``. The
    newline is kept because parsers see it: a JSON string cut short by the end of its line reads as
    "invalid control character" with it, "unterminated string" without."""
    with open_maybe_gzip(path) as fh:
        yield from enumerate(fh, start=1)


def strip_newline(line: bytes) -> bytes:
    return line[:-1] if line.endswith(b"\n") else line


def line_blocks(file_index: int, path: str, lines_per_block: int) -> Iterator[pa.Table]:
    """Blocks of ``LINES_SCHEMA`` (lines with their newline) for one file. A stream that breaks mid-file (a gzip file cut
    short or corrupt) ends with one row whose ``error`` says why: the lines before the damage are
    kept, and the parser reports the rest as one reject instead of failing the whole read."""
    orders: list[int] = []
    numbers: list[int] = []
    lines: list[bytes] = []
    errors: list[str | None] = []
    n = 0
    try:
        for n, line in iter_raw_lines(path):
            orders.append(order_key(file_index, n))
            numbers.append(n)
            lines.append(line)
            errors.append(None)
            if len(lines) >= lines_per_block:
                yield pa.table([orders, numbers, lines, errors], schema=LINES_SCHEMA)
                orders, numbers, lines, errors = [], [], [], []
    except (OSError, EOFError, zlib.error) as e:
        orders.append(order_key(file_index, n + 1))
        numbers.append(n)
        lines.append(b"")
        errors.append(str(e))
    if lines:
        yield pa.table([orders, numbers, lines, errors], schema=LINES_SCHEMA)


class FileBlocksDatasource(Datasource):
    """One ``ReadTask`` per file; ``reader(file_index, path)`` yields that file's blocks.
    ``indices``: each file's index in the catalog's file order (default: its position here)."""

    def __init__(self, files: list[Path], reader: FileReader, name: str, indices: list[int] | None = None) -> None:
        super().__init__()
        self._files = [str(f) for f in files]
        self._indices = list(range(len(files))) if indices is None else list(indices)
        self._reader = reader
        self._name = name

    def get_name(self) -> str:
        return self._name

    def estimate_inmemory_data_size(self) -> int | None:
        # Compressed files expand about 4-8x; the estimate only sizes Ray Data's first blocks.
        return sum(os.path.getsize(f) for f in self._files)

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None) -> list:  # noqa: ANN001
        tasks = []
        for i, path in zip(self._indices, self._files):
            meta = BlockMetadata(num_rows=None, size_bytes=os.path.getsize(path), exec_stats=None, input_files=(path,))
            tasks.append(ReadTask(partial(_read_file, self._reader, i, path), meta))
        return tasks


def _read_file(reader: FileReader, file_index: int, path: str) -> Iterator[pa.Table]:
    yield from reader(file_index, path)


def read_file_blocks(files: list[Path], reader: FileReader, name: str, indices: list[int] | None = None):  # noqa: ANN201 - ray.data.Dataset
    import ray.data

    return ray.data.read_datasource(FileBlocksDatasource(files, reader, name, indices))

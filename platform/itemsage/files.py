"""Atomic writes: a reader sees the previous file (or directory) or the new one, never a half-written one.

Two operations, for local paths and pyarrow-filesystem URIs (``s3://``, ``gs://``, ``file://``):

- **Files** (:func:`write_atomic`, :func:`staged_files`): each file is written to a temp file in its
  own directory, flushed and fsynced, and ``os.replace``-d over the old one only once it (and, for
  :func:`staged_files`, every other file of the group) is complete; the directory is then fsynced
  so the renames survive a crash. On failure the temp files are removed and the old files stay.
  URIs are written with one output stream: object stores publish an object only when the stream
  is closed.
- **Directories** (:class:`StagingDir`, :func:`staging_dir`, :func:`publish_dir`): the content is
  written into a staging directory beside the target (``.<name>.tmp-*``), which then replaces the
  target: an existing target is renamed aside (``.<name>.old-*``), the staging directory renamed
  in, the old one deleted; if the second rename fails the old one is put back. POSIX cannot
  exchange two directories atomically, so a reader may briefly find no directory between the two
  renames, but never a half-written one. Object stores cannot rename directories: there the
  "rename" is a copy + delete, which still only starts once every new file exists.

Everything else in the package that publishes files goes through here (vocabularies, training
checkpoints, feature directories, saved indexes). Lowest layer: stdlib and pyarrow only.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

import pyarrow.fs as pafs

Writer = Callable[[IO[bytes]], object]


def is_uri(path: str | os.PathLike[str]) -> bool:
    return "://" in str(path)


def resolve(target: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for a local path or an ``s3://``/``gs://``/``file://`` style URI."""
    if is_uri(target):
        fs, path = pafs.FileSystem.from_uri(str(target))
        return fs, path.rstrip("/")
    # Local paths are made absolute so a later rename does not depend on the worker's cwd.
    return pafs.LocalFileSystem(), str(Path(target).expanduser().resolve())


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a written file to disk, so a crash after its rename cannot leave it empty."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory's entries (new names, renames) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------ files


@dataclass
class FileStage:
    """Files written into temp files in ``directory``; see :func:`staged_files`."""

    directory: Path
    staged: list[tuple[Path, Path]] = field(default_factory=list)

    def write(self, name: str, write: Writer) -> None:
        """``write`` (given a binary file) into a temp file beside ``directory/name``, fsynced."""
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{name}.", suffix=".tmp")
        self.staged.append((Path(tmp), self.directory / name))
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())

    def _publish(self) -> None:
        # Every file is complete and on disk before the first one replaces its old version.
        for tmp, final in self.staged:
            os.replace(tmp, final)
        fsync_dir(self.directory)

    def _discard(self) -> None:
        for tmp, _ in self.staged:
            tmp.unlink(missing_ok=True)


@contextmanager
def staged_files(directory: str | os.PathLike[str]) -> Iterator[FileStage]:
    """Write several files of ``directory`` (a local path, created if needed) as one group:
    ``stage.write(name, writer)`` for each; they replace the old files only when the block succeeds
    (one ``os.replace`` each, then the directory is fsynced). On any error no temp file is left and
    the old files are unchanged; only a failure between two of the renames could mix old and new.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    stage = FileStage(d)
    try:
        yield stage
        stage._publish()
    except BaseException:
        stage._discard()
        raise


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write ``data`` (``str``: UTF-8) to ``path``, a local path or a URI, atomically."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if is_uri(path):
        fs, inner = pafs.FileSystem.from_uri(str(path))
        if "/" in inner:
            fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(inner) as out:
            out.write(raw)
        return
    target = Path(path)
    with staged_files(target.parent) as stage:
        stage.write(target.name, lambda f: f.write(raw))


# ------------------------------------------------------------------------------ directories


def _move(fs: pafs.FileSystem, src: str, dst: str) -> None:
    """Rename a directory; object stores that cannot rename directories get copy + delete."""
    if isinstance(fs, pafs.LocalFileSystem):
        os.rename(src, dst)
        return
    try:
        fs.move(src, dst)
    except (OSError, NotImplementedError):
        # S3/GCS have no directory rename. Copying is not atomic, but the swap still only starts
        # once every file of the new content exists, which is the property readers depend on.
        pafs.copy_files(src, dst, source_filesystem=fs, destination_filesystem=fs)
        fs.delete_dir(src)


def _delete_dir(fs: pafs.FileSystem, path: str) -> None:
    if isinstance(fs, pafs.LocalFileSystem):
        shutil.rmtree(path, ignore_errors=True)
    elif _exists(fs, path):
        fs.delete_dir(path)


def _sibling(path: str, tag: str) -> str:
    parent, name = posixpath.split(path.rstrip("/"))
    return posixpath.join(parent, f".{name}.{tag}-{uuid.uuid4().hex[:8]}")


def publish_dir(
    staging: str | os.PathLike[str], final: str | os.PathLike[str], fs: pafs.FileSystem | None = None
) -> None:
    """Replace directory ``final`` (if any) by the finished directory ``staging``, both on ``fs``
    (default: the local file system); see the module docstring for the guarantees."""
    fs = fs or pafs.LocalFileSystem()
    staging, final = str(staging), str(final)
    old = None
    if _exists(fs, final):
        old = _sibling(final, "old")
        _move(fs, final, old)
    try:
        _move(fs, staging, final)
    except BaseException:
        if old is not None:
            _move(fs, old, final)
        raise
    if isinstance(fs, pafs.LocalFileSystem):
        fsync_dir(os.path.dirname(final))
    if old is not None:
        _delete_dir(fs, old)


S = TypeVar("S", bound="StagingDir")


@dataclass
class StagingDir:
    """A staging directory beside ``final`` that replaces it on :meth:`commit` and vanishes on
    :meth:`discard`. ``uri`` is the staging directory in the form the target was given (a URI, or
    an absolute local path), for code that writes into it by name."""

    fs: pafs.FileSystem
    final: str
    staging: str
    uri: str

    @classmethod
    def beside(cls: type[S], target: str | os.PathLike[str]) -> S:
        """Create a fresh staging directory next to ``target`` (its parent is created if needed)."""
        fs, final = resolve(target)
        parent = posixpath.dirname(final)
        if isinstance(fs, pafs.LocalFileSystem):
            os.makedirs(parent, exist_ok=True)
            staging = tempfile.mkdtemp(prefix=f".{posixpath.basename(final)}.tmp-", dir=parent)
            return cls(fs, final, staging, staging)
        if parent:
            fs.create_dir(parent, recursive=True)
        uri = _sibling(str(target).rstrip("/"), "tmp")
        _, staging = resolve(uri)
        fs.create_dir(staging, recursive=True)
        return cls(fs, final, staging, uri)

    def path(self, name: str) -> str:
        """Path of ``name`` inside the staging directory, on :attr:`fs`."""
        return posixpath.join(self.staging, name)

    def commit(self) -> None:
        publish_dir(self.staging, self.final, self.fs)

    def discard(self) -> None:
        _delete_dir(self.fs, self.staging)


@contextmanager
def staging_dir(target: str | os.PathLike[str], kind: type[S] = StagingDir) -> Iterator[S]:  # type: ignore[assignment]
    """Write into the yielded staging directory; it replaces ``target`` only if the block succeeds
    (``kind``: a :class:`StagingDir` subclass with writers of its own)."""
    stage = kind.beside(target)
    try:
        yield stage
    except BaseException:
        stage.discard()
        raise
    try:
        stage.commit()
    except BaseException:
        stage.discard()
        raise

"""Materializing a version on disk: `download` into a folder, `get` a cached read-only copy.

Every file is written to a temp name beside its target and renamed only when all its bytes are
there, with its mode and mtime from the manifest; so a killed download never leaves a truncated
file that looks complete, and a rerun skips files whose size and mtime already match (no re-hashing:
`verify` is the command that hashes). Chunks come through the node's chunk reader (dsfs.node.chunks):
from the node cache when present, otherwise from coalesced ranged GETs, each delivered to its files
as it arrives; a chunk used by several files is fetched once (in a download, once per window: it walks
the version WINDOW_FILES files at a time, so that its memory is bounded by the window and not by the
version's file count). The files are the copy: fetched chunks are not also put in the node cache.

Paths are validated when the manifest is decoded (no '..', no absolute paths); here, before anything
is written, every folder on the way to a target is checked not to be a symlink, so a link planted
inside the target folder cannot redirect a write outside it.

`get` materializes each distinct file content once into a digest-addressed file store under the
cache (`files/<ab>/<digest>`), then builds `copies/<id>/` from hardlinks to it and renames it into
place: files shared by several cached versions are stored once, and a second `get` stats each file
of the copy against what was laid out (dsfs.node.copies), repairing what a write through a link changed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import json
import os
import shutil
import stat as stat_mod
import threading
from dataclasses import dataclass, field, replace

import blake3

from dsfs import paths
from dsfs.errors import (
    AccessDenied,
    CorruptData,
    DiskFull,
    InvalidPath,
    LocalFileNotFound,
    StaleLink,
    StoreUnavailable,
    UsageError,
)
from dsfs.fsutil import NO_SPACE, atomic_write, space_for, temp_name
from dsfs.lineage.viewindex import Inode, ViewIndex, checks_space
from dsfs.model import ChunkRef
from dsfs.node import copies, links
from dsfs.node.cache import Cache
from dsfs.node.chunks import ChunkReader
from dsfs.progress import Tracker
from dsfs.store.layout import Store

PARTIAL_MARKER = ".dsfs-partial"
WINDOW_FILES = 20_000  # a download lists, checks and writes so many files at a time (~40 MB of their records)
LINK_PIECE = 8 << 20
FICLONE = 0x40049409


@dataclass
class _Job:
    label: str  # dataset path, for messages
    target: str
    node: Inode
    remaining: int = 0
    tmp: str = ""
    created: bool = False
    failed: Exception | None = None
    offsets: list = field(default_factory=list)


@dataclass
class Result:
    written: int = 0
    skipped: int = 0
    bytes: int = 0
    failed: list = field(default_factory=list)


def _complete(target: str, node: Inode) -> bool:
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return False
    return st.st_size == node.size and st.st_mtime_ns == node.mtime_ns and not os.path.islink(target)


def _write_files(store: Store, cache: Cache, jobs: list[_Job], writer: _Writer, max_workers: int, suffix: str,
                 is_complete) -> list[_Job]:
    """Write each job's file (download's and get's windows), counted in `writer`; chunks from the
    cache or the store, external files from their URL. Returns the jobs that failed (their temp files
    removed; the rest are complete; `_raise_failed` names them). Raises what stops everything (a full
    disk: DiskFull...). `is_complete(target, node)`: a job to skip. `suffix` of the temp files:
    per process where other processes may write the same targets (the file store); otherwise fixed,
    so that a rerun reuses the slot of a killed run.

    Fetched chunks are written by the threads that fetched them, so writing overlaps the network; a
    file's temp file is created when its first chunk arrives (not all up front, which would keep the
    network idle while thousands of files are created)."""
    progress = writer.progress
    users: dict[bytes, list[tuple[_Job, int]]] = {}
    refs: dict[bytes, ChunkRef] = {}
    todo = []
    for job in jobs:
        if is_complete(job.target, job.node):
            writer.result.skipped += 1
            progress.advance(job.node.size, files=1)
            continue
        job.tmp = temp_name(job.target, suffix)
        todo.append(job)
        if job.node.url:
            continue  # external: streamed from its URL below
        offset = 0
        for ref in job.node.chunks:
            users.setdefault(ref.digest, []).append((job, offset))
            refs.setdefault(ref.digest, ref)
            offset += ref.raw
        job.remaining = len(job.node.chunks)
    try:
        for job in todo:
            if not job.node.chunks and not job.node.url:
                _create(job.tmp)
                writer.finish(job)
        reader = ChunkReader(store, cache, max_workers)
        try:
            reader.each(refs.values(), lambda ref, data, error: writer.deliver(users[ref.digest], ref, data, error),
                        lambda ref: users[ref.digest][0][0].label)  # names the file in errors
        finally:
            reader.close()
        for job in todo:
            if job.node.url:
                _copy_link(job, writer)
    except OSError as exc:
        _cleanup(todo)
        if exc.errno in NO_SPACE:
            raise DiskFull(f"no space left on the device of {os.path.dirname(todo[0].target) if todo else '?'}; "
                           f"free some space and run the same command again (complete files are kept)") from None
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise UsageError(f"cannot write {exc.filename or ''}: {os.strerror(exc.errno)}") from None
        raise
    except BaseException:
        _cleanup(todo)
        raise
    failed = [job for job in todo if job.failed is not None]
    _cleanup(failed)
    return failed


def _raise_failed(failed: list[_Job]) -> None:
    """Raise the first failure's type naming the files that could not be written, if any."""
    if failed:
        first = failed[0].failed
        assert first is not None, "failed holds the jobs that failed"
        names = ", ".join(j.label for j in failed[:5]) + (" ..." if len(failed) > 5 else "")
        raise type(first)(f"{len(failed)} file(s) could not be read ({first}): {names}; "
                          f"all other files are complete")


class _Writer:
    """Writes delivered chunks into their files, from any thread. A one-chunk file (most small
    files) is written in one go: open, write, fchmod, futimens, close, rename."""

    def __init__(self, result: Result, progress: Tracker):
        self.result = result
        self.progress = progress
        self.lock = threading.Lock()

    def deliver(self, users, ref, data: bytes | None, error: Exception | None) -> None:
        for job, offset in users:
            if job.failed is not None:
                continue
            if error is not None:
                job.failed = error
                self.progress.advance(ref.raw)
                continue
            assert data is not None, "a chunk delivered without an error has its bytes"
            if len(job.node.chunks) == 1:
                fd = os.open(job.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
                try:
                    _write_all(fd, data, 0)
                    os.fchmod(fd, job.node.mode)
                    os.utime(fd, ns=(job.node.mtime_ns, job.node.mtime_ns))
                finally:
                    os.close(fd)
                os.replace(job.tmp, job.target)
                self._done(job, len(data))
                continue
            with self.lock:  # the first chunk to arrive creates the file; the others wait for it
                if not job.created:
                    _create(job.tmp)
                    job.created = True
            fd = os.open(job.tmp, os.O_WRONLY | os.O_NOFOLLOW)
            try:
                _write_all(fd, data, offset)
            finally:
                os.close(fd)
            self.progress.advance(len(data))
            with self.lock:
                job.remaining -= 1
                last = job.remaining == 0
            if last:
                self.finish(job)

    def finish(self, job: _Job) -> None:
        os.chmod(job.tmp, job.node.mode)
        os.utime(job.tmp, ns=(job.node.mtime_ns, job.node.mtime_ns))
        os.replace(job.tmp, job.target)
        self._done(job, 0)

    def _done(self, job: _Job, nbytes: int) -> None:
        with self.lock:
            self.result.written += 1
            self.result.bytes += job.node.size
        self.progress.advance(nbytes, files=1)


def _write_all(fd: int, data, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _copy_link(job: _Job, writer: _Writer) -> None:
    """Stream an external file into place, checking its tag before and after."""
    node = job.node
    try:
        fs, path = links.checked(node.url, node.etag, node.size, job.label)
        fd = os.open(job.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            for start in range(0, node.size, LINK_PIECE):
                data = links.read_range(fs, path, start, min(start + LINK_PIECE, node.size), node.url)
                _write_all(fd, data, start)
                writer.progress.advance(len(data))
        finally:
            os.close(fd)
        links.checked(node.url, node.etag, node.size, job.label)
    except (StaleLink, StoreUnavailable, AccessDenied, LocalFileNotFound, links.LinkRefused, CorruptData) as exc:
        job.failed = exc  # this file only: the others are still written
        return
    writer.finish(job)


def _create(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.close(fd)


def _cleanup(jobs) -> None:
    for job in jobs:
        if job.tmp:
            try:
                os.unlink(job.tmp)
            except FileNotFoundError:
                pass


# -- download ------------------------------------------------------------------------------------

def select(view: ViewIndex, include=None, exclude=None, shard: tuple[int, int] | None = None):
    """(path, Inode) of the view's files matching include globs (all if none) and no exclude glob.
    shard (part, parts): only the part-th of `parts` runs of those files in path order, as even as
    counts allow (part 0 first): the same files for the same version and parts on every node, so
    data-parallel workers each get their own share and together all of it."""
    if shard is not None:
        part, parts = shard
        if not 0 <= part < parts:
            raise UsageError(f"part {part} of {parts}: a part is 0 to {parts - 1}")
        total = sum(1 for _ in select(view, include, exclude))
        yield from itertools.islice(select(view, include, exclude), total * part // parts,
                                    total * (part + 1) // parts)
        return
    for path, node in view.walk_files():
        if include and not paths.matches(path, include):
            continue
        if exclude and paths.matches(path, exclude):
            continue
        yield path, node


def check_targets(root: str, rel_paths) -> None:
    """Refuse, before writing anything, a target whose folders are symlinks or files. Only folders
    are remembered (each once checked), not the files: `rel_paths` may stream millions of them."""
    checked = set()
    for rel in rel_paths:
        paths.validate(rel)
        parts = rel.split("/")
        current = root
        for i, part in enumerate(parts):
            current = os.path.join(current, part)
            if current in checked:
                continue
            last = i == len(parts) - 1
            try:
                st = os.lstat(current)
            except FileNotFoundError:
                st = None
            if st is not None and stat_mod.S_ISLNK(st.st_mode):
                raise InvalidPath(f"refusing to write through symlink {current} (it could point outside {root})")
            if st is not None and not last and not stat_mod.S_ISDIR(st.st_mode):
                raise InvalidPath(f"cannot write {rel}: {current} exists and is not a folder")
            if st is not None and last and stat_mod.S_ISDIR(st.st_mode):
                raise InvalidPath(f"cannot write {rel}: {current} is a folder")
            if not last:
                checked.add(current)


def download(store: Store, cache: Cache, view: ViewIndex, target: str, include=None, exclude=None,
             max_workers: int = 8, overwrite: bool = False, progress=None,
             shard: tuple[int, int] | None = None) -> Result:
    target = os.path.abspath(os.path.expanduser(target))
    marker = os.path.join(target, PARTIAL_MARKER)
    if os.path.isdir(target) and os.listdir(target) and not overwrite and not _is_partial_of(marker, view.dataset_id):
        done = Result()
        for path, node in select(view, include, exclude, shard):
            if not _complete(os.path.join(target, path), node):
                raise UsageError(f"{target} is not empty; pass --overwrite to write into it")
            done.skipped += 1
            done.bytes += node.size
        return done  # a finished download of these files, run again: nothing to do
    count = total = 0

    def counted_paths():
        nonlocal count, total
        for path, node in select(view, include, exclude, shard):
            count += 1
            total += node.size
            yield path

    check_targets(target, counted_paths())  # every path, before anything is written
    if not count:
        raise UsageError(f"no files of dataset {view.dataset_id} match the include/exclude filters")
    with _writing(target):
        os.makedirs(target, exist_ok=True)
        # whole or not at all: an empty marker would make the rerun refuse a "not empty" target
        atomic_write(marker, json.dumps({"id": view.dataset_id}).encode(), mode=0o644)
    progress = progress or Tracker()
    progress.set_total(total, count)
    writer = _Writer(Result(), progress)
    failed: list[_Job] = []
    files = select(view, include, exclude, shard)
    while window := list(itertools.islice(files, WINDOW_FILES)):  # memory bounded by the window, not the version
        with _writing(target):
            for folder in sorted({os.path.dirname(p) for p, _ in window}):
                if folder:
                    os.makedirs(os.path.join(target, folder), exist_ok=True)
        jobs = [_Job(p, os.path.join(target, p), node) for p, node in window]
        failed += _write_files(store, cache, jobs, writer, max_workers, ".dsfs-tmp", _complete)
    _raise_failed(failed)
    os.unlink(marker)
    return writer.result


@contextlib.contextmanager
def _writing(target: str):
    """Around making a download's folders: a full disk is DiskFull, another failure a UsageError."""
    try:
        with space_for(target):
            yield
    except OSError as exc:
        raise UsageError(f"cannot write to {target}: {exc.strerror}") from None


def _is_partial_of(marker: str, dataset_id: str) -> bool:
    try:
        with open(marker) as f:
            return json.load(f).get("id") == dataset_id
    except (OSError, ValueError):
        return False


# -- get -----------------------------------------------------------------------------------------

def copy_path(cache: Cache, dataset_id: str) -> str:
    return os.path.join(cache.root, "copies", dataset_id)


def get_part(store: Store, cache: Cache, view: ViewIndex, part: int, parts: int, max_workers: int = 8,
             progress=None) -> str:
    """The path of a cached copy of one shard of a version's files (select's `shard`): a download
    under the copies folder (`cache clear` removes it), completed or checked again on each call
    (files whose size and mtime are as recorded are kept)."""
    target = os.path.join(cache.root, "copies", f"{view.dataset_id}.part-{part}-of-{parts}")
    with copies.building(cache, f"{view.dataset_id}.part-{part}-of-{parts}"):
        download(store, cache, view, target, max_workers=max_workers, overwrite=True, progress=progress,
                 shard=(part, parts))
    return target


@checks_space
def get_copy(store: Store, cache: Cache, view: ViewIndex, max_workers: int = 8, progress=None) -> str:
    """The path of the read-only cached copy of a version: reused while every file in it stats as
    laid out, otherwise (first use, or a file written, removed or added since) laid out again from
    content files that are as they were written, materializing those that are not."""
    final = copy_path(cache, view.dataset_id)
    if copies.intact(final):
        return final
    with copies.building(cache, view.dataset_id):
        if copies.intact(final):  # another `get` laid it out while this one waited
            return final
        count = total = 0
        for _, node in view.walk_files():  # a first pass for the progress totals (~0.75 s per 100,000)
            count += 1
            total += node.size
        progress = progress or Tracker()
        progress.set_total(total, count)
        copies.lay_out(cache, final, _content_files(store, cache, view, max_workers, _Writer(Result(), progress)))
    return final


def _content_files(store: Store, cache: Cache, view: ViewIndex, max_workers: int, writer: _Writer):
    """(path, content file, its stat) of each file of the view, in path order, its content file
    written first if it is not as recorded; WINDOW_FILES files at a time, so memory is bounded by
    the window, not the version."""
    contents = copies.ContentFiles(cache)
    files = view.walk_files()
    while window := list(itertools.islice(files, WINDOW_FILES)):
        keys = [content_key(node) for _, node in window]
        jobs: dict[str, _Job] = {}
        for (path, node), key in zip(window, keys, strict=True):
            if key not in jobs:  # read-only: shared by every copy, nobody may write through a link
                # labelled with the first path of that content: errors name files as the dataset does
                jobs[key] = _Job(path, contents.path(key), replace(node, mode=node.mode & 0o555))
        for folder in {os.path.dirname(job.target) for job in jobs.values()}:
            os.makedirs(folder, exist_ok=True)
        stats = contents.trusted(jobs)
        trusted = set(stats)
        _raise_failed(_write_files(store, cache, list(jobs.values()), writer, max_workers, f".{os.getpid()}.dsfs-tmp",
                                   lambda target, _node, trusted=trusted: os.path.basename(target) in trusted))
        stats.update(contents.record(key for key in jobs if key not in stats))
        for (path, _), key in zip(window, keys, strict=True):
            yield path, contents.path(key), stats[key]


def content_key(node: Inode) -> str:
    """The file store name of a file's content: its digest (or, for an external file, its URL and
    tag), plus the exec bit, which hardlinks share."""
    digest = node.digest if not node.url else blake3.blake3(f"{node.url}\0{node.etag}".encode()).digest()
    return digest.hex() + (".x" if node.mode & 0o111 else "")


def copy_tree(source: str, target: str, overwrite: bool = False) -> None:
    """A mutable copy of a cached copy: reflinks where the filesystem can, plain copies otherwise."""
    target = os.path.abspath(os.path.expanduser(target))
    if os.path.isdir(target) and os.listdir(target) and not overwrite:
        raise UsageError(f"{target} is not empty; pass --overwrite to write into it")

    def rels():  # walked twice (checked, then copied) rather than held: a copy may have millions
        for folder, _, names in os.walk(source):
            for name in names:
                yield os.path.relpath(os.path.join(folder, name), source).replace(os.sep, "/")

    check_targets(target, rels())
    with space_for(target, "free some space and run the same command again with --overwrite"):
        for rel in rels():
            src, dest = os.path.join(source, rel), os.path.join(target, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            tmp = temp_name(dest, ".dsfs-tmp")
            _clone_or_copy(src, tmp)
            st = os.stat(src)
            os.chmod(tmp, (st.st_mode & 0o777) | 0o200)
            os.utime(tmp, ns=(st.st_mtime_ns, st.st_mtime_ns))
            os.replace(tmp, dest)
        os.makedirs(target, exist_ok=True)


def _clone_or_copy(src: str, dest: str) -> None:
    """Copy src to dest, leaving no dest if that fails (a full disk)."""
    try:
        with open(src, "rb") as fin, open(dest, "wb") as fout:
            try:
                fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
                return
            except OSError:
                pass
            shutil.copyfileobj(fin, fout, 8 << 20)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(dest)
        raise

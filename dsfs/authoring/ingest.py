"""Upload: read a draft's local files, cut them into chunks, send only new chunks, in packs.

One thread reads, chunks and hashes files in path order (FastCDC and blake3 run at several GB/s, so
a core keeps up with a disk). A pack is closed as soon as it is full, even in the middle of a large
file, and written by a pool of `max_workers` threads, with at most `max_workers + 1` packs in memory.
A file's entry is recorded in the draft only once every pack holding its new chunks is in the store:
that is what makes a killed upload resumable without sending recorded bytes again. The draft is
saved every couple of seconds and at the end, so a crash re-sends at most a few seconds of work.

A chunk already stored by any ancestor, by an earlier upload of this draft, or earlier in this run
is referenced, not sent: renames, moves and copies cost nothing.

Every pack is announced to the writer session (dsfs.store.sessions) before it is looked for in the store
or written, so a gc running meanwhile keeps it. A pack found already present (the same bytes
uploaded by an unrelated version: pack ids are content hashes) is relied on but not counted as
sent: the draft's `written` packs and `new_bytes` are what this draft really added.

An upload on an executor (dsfs.authoring.distributed) runs this same code in each task on a worker,
with no writer session and recording into the task's result (a Ledger) instead of the draft: its
driver announces the task's packs and looks for them again before it records anything.

A file is read once. Its size and mtime are checked before and after the read; if they differ, or
the bytes read are not the size announced, the file changed while it was read and the upload fails
with FileChanged naming it (its half-read content is never recorded). A remote source (`dsfs add
--files s3://...`) is streamed through fsspec and checked the same way by its size and tag
(dsfs.authoring.sources). A file that is no longer a
regular file (replaced by a FIFO, a socket, a folder or a symlink since it was added) is refused
before any byte is read, never waited on (`open_regular`).
"""

from __future__ import annotations

import errno
import logging
import os
import stat as stat_mod
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Protocol

import blake3

from dsfs.authoring import sources
from dsfs.errors import LocalFileNotFound
from dsfs.model import ChunkRef, Entry, clamp_mtime
from dsfs.progress import Tracker
from dsfs.store.layout import Store
from dsfs.store.packs import MIN_CHUNK, Pack, PackBuilder, PendingRef, chunker, digest
from dsfs.store.sessions import WriterSession

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 4
SAVE_INTERVAL = 2.0


def open_regular(local_path: str, dataset_path: str) -> tuple[int, os.stat_result]:
    """Open a file added to a draft for reading, if it is still a regular file: its descriptor and
    its fstat (the caller closes the descriptor). The file was one when it was added, but may have
    been replaced since: a FIFO would block the upload for ever
    (open non-blocking, then check the type before reading), a symlink could now lead anywhere (the
    draft records a symlink's target, so the last component is never followed)."""
    again = f"add it again or `dsfs remove --files {dataset_path}`"
    try:
        fd = os.open(local_path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise LocalFileNotFound(f"{local_path} (added as {dataset_path}) no longer exists; {again}") from None
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise LocalFileNotFound(f"{local_path} (added as {dataset_path}) was replaced by a symlink; {again}") from None
    st = os.fstat(fd)
    mode = st.st_mode
    if not stat_mod.S_ISREG(mode):
        os.close(fd)
        kind = {stat_mod.S_IFIFO: "a FIFO", stat_mod.S_IFSOCK: "a socket", stat_mod.S_IFDIR: "a folder"}.get(
            stat_mod.S_IFMT(mode), "a device")
        raise LocalFileNotFound(f"{local_path} (added as {dataset_path}) is now {kind}, not a regular file; {again}")
    return fd, st


class Ledger(Protocol):
    """Where an upload records what reached the store: a DraftState, or the result of one task of
    an upload on an executor (dsfs.authoring.distributed.TaskLedger)."""

    def chunk(self, digest: bytes) -> ChunkRef | None: ...

    def record_pack(self, pack_id: bytes, written: bool, size: int, chunks: Iterable[ChunkRef]) -> None: ...

    def record_uploaded(self, files: Iterable[tuple[Entry, str]]) -> None: ...

    def save(self) -> None: ...


class Uploader:
    """Reads `pending` files (run), packs their new chunks and writes the packs, recording into a
    Ledger. `session` is None only on a worker of an upload on an executor (module docstring)."""

    def __init__(self, store: Store, draft: Ledger, known: Callable[[bytes], ChunkRef | None],
                 session: WriterSession | None, max_workers: int | None = None, progress: Tracker | None = None,
                 locate: Callable[[str], tuple[str, dict]] | None = None):
        self.store = store
        self.locate = locate or sources.Locator()  # a remote source's credentials (dsfs.authoring.sources)
        self.writer = session
        self.draft = draft
        self.known = known
        self.max_workers = max(1, max_workers or DEFAULT_WORKERS)
        self.progress = progress or Tracker()
        self.builder = PackBuilder()
        self.session: dict[bytes, PendingRef] = {}
        self.inflight: dict[Future, Pack] = {}
        self.done_seqs: set[int] = set()
        self.durable_upto = -1  # every pack with seq <= this is in the store
        self.waiting: list[tuple[Entry, str, int]] = []  # entries, their local file, the last pack seq they need
        self.sent_packs = 0
        self.skipped_packs = 0
        self._failed: BaseException | None = None
        self._saved_at = time.monotonic()

    def run(self, pending: Iterable[tuple[str, str]]) -> None:
        """Upload (dataset path, local file) pairs, in path order (a draft's `adds()`)."""
        with ThreadPoolExecutor(self.max_workers, thread_name_prefix="dsfs-upload") as pool:
            self.pool = pool
            try:
                for dataset_path, local_path in pending:
                    entry, last_seq = self._read_file(dataset_path, local_path)
                    self.waiting.append((entry, local_path, last_seq))
                    self._collect(block=False)
                last = self.builder.take()
                if last is not None:
                    self._submit(last)
            finally:
                # Whatever happened, record what reached the store before raising.
                while self.inflight:
                    self._collect(block=True, raise_errors=False)
                self._commit_entries()
                self._save(force=True)
            self._raise_failed()

    # -- reading -------------------------------------------------------------------------------

    def _read_file(self, dataset_path: str, local_path: str) -> tuple[Entry, int]:
        with sources.open_source(local_path, dataset_path, open_regular, self.locate) as source:
            refs: list = []
            whole = None
            total = 0
            pieces: Iterable[bytes | memoryview]
            if source.size <= MIN_CHUNK:
                small = source.read_all()
                # an empty file has no chunk (a pack of only empty chunks is never written)
                pieces = [small] if small else []
            else:
                pieces = (c.data for c in chunker().cut_stream(source.stream))
                whole = blake3.blake3()
            last_seq = -1
            for data in pieces:
                total += len(data)
                chunk_digest = digest(data)
                if whole is not None:
                    whole.update(data)
                ref: ChunkRef | PendingRef | None = self.known(chunk_digest) or self.draft.chunk(chunk_digest)
                if ref is None:
                    pending = self.session.get(chunk_digest)
                    if pending is None:
                        pending = self.session[chunk_digest] = self.builder.add(chunk_digest, data)
                        if self.builder.full():  # per chunk: a large file spans several packs
                            full = self.builder.take()
                            assert full is not None, "a full pack is not empty"
                            self._submit(full)
                    last_seq = max(last_seq, pending.pack.seq)
                    ref = pending
                refs.append(ref)
                self.progress.advance(len(data))
            file_digest = whole.digest() if whole is not None else (refs[0].digest if refs else digest(b""))
            source.check(total)
        self.progress.advance(files=1)
        entry = Entry(path=dataset_path, size=total, executable=source.executable,
                      mtime_ns=clamp_mtime(source.mtime_ns), digest=file_digest, chunks=refs)
        return entry, last_seq

    # -- writing packs -------------------------------------------------------------------------

    def _submit(self, pack: Pack) -> None:
        while len(self.inflight) > self.max_workers:
            self._collect(block=True)
        self.inflight[self.pool.submit(self._write_pack, pack)] = pack

    def _write_pack(self, pack: Pack) -> bool:
        """Put the pack in the store; False if it was there already (then it is relied on, not sent)."""
        pack_id = pack.sealed_id
        if self.writer is not None:
            self.writer.announce([pack_id])  # before looking: see dsfs.store.sessions
        present = self.store.has_pack(pack_id)
        if not present:
            self.store.write_pack(pack_id, pack.pieces)
        else:
            log.debug("pack %s is in %s already: not sent", pack_id.hex(), self.store.display_url)
        if self.writer is not None:
            self.writer.seen(pack_id)
        return not present

    def _collect(self, block: bool, raise_errors: bool = True) -> None:
        if not self.inflight:
            return
        done, _ = wait(list(self.inflight), timeout=None if block else 0, return_when=FIRST_COMPLETED)
        for future in done:
            pack = self.inflight.pop(future)
            if future.exception() is not None:
                self._failed = self._failed or future.exception()
                continue
            written = future.result()
            if written:
                self.sent_packs += 1
            else:
                self.skipped_packs += 1
            self.done_seqs.add(pack.seq)
            self.draft.record_pack(pack.sealed_id, written, pack.size, [ref.resolve() for ref in pack.chunks])
            for ref in pack.chunks:
                # the draft has it now: this run's own map holds only chunks of packs in flight
                self.session.pop(ref.digest, None)
            pack.release()  # free the memory; refs keep only the id
        while self.durable_upto + 1 in self.done_seqs:
            self.durable_upto += 1
        if done:
            self._commit_entries()
            self._save(force=False)
        if raise_errors:
            self._raise_failed()

    def _save(self, force: bool) -> None:
        """Save the draft at most every SAVE_INTERVAL seconds (each commit is an fsync); a crash
        re-sends at most that much work."""
        now = time.monotonic()
        if force or now - self._saved_at >= SAVE_INTERVAL:
            self.draft.save()
            self._saved_at = now

    def _raise_failed(self) -> None:
        if self._failed is not None:
            raise self._failed

    def _commit_entries(self) -> None:
        still, done = [], []
        for entry, local_path, last_seq in self.waiting:
            if last_seq <= self.durable_upto:
                entry.chunks = [r.resolve() if isinstance(r, PendingRef) else r for r in entry.chunks]
                done.append((entry, local_path))
            else:
                still.append((entry, local_path, last_seq))
        self.draft.record_uploaded(done)
        self.waiting = still

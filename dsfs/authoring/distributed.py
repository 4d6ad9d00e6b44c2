"""Upload on an executor: a draft's pending files chunked, hashed and packed by tasks on any
`concurrent.futures.Executor`, a local process pool (every core) or a Dask cluster (many machines).

The driver, the process holding the draft, cuts the pending files in path order into partitions of
about PARTITION_BYTES or PARTITION_FILES (so packs keep a folder's files together) and submits a
task for each. A task (`ingest_partition`, a top-level function: executors pickle it by name) opens
the store from its URL and options (never a Store object: the worker may be another machine), runs
the serial upload's own code on its files (ingest.Uploader, recording into a TaskLedger instead of
a draft), writes its packs straight to the store and returns its packs and entries. Dedupe: every
task gets the digests of the chunks the parents and the draft store already, once per task (a
sorted blob, 32 bytes a chunk; scattered once to every worker of a Dask cluster), and refers to
those chunks instead of packing them; the driver fills in where they live. A new chunk met by two
partitions of one run is stored by both (a duplicate, never a wrong reference).

Durability and gc: the serial rule holds in the driver. A task holds no writer session (one per task
would be one more object to write and remove per partition, and its packs would still be unprotected
between the task's end and the driver's use of them). The driver holds the draft's session and, for
each task that returns, announces the task's packs, *then* looks for each of them in the store
(dsfs.store.sessions: of the announcement and a gc's reading of the sessions, the later sees the
earlier), and only then records the packs and the task's entries in the draft (saved every couple of
seconds, at the end, and on Ctrl-C or a failure, as serially). A pack a gc removed between the
worker's write and the announcement (only a grace period shorter than a task allows that) is found
missing and the task is run again. So the draft records an entry only once its packs are in the
store and protected until close, as serially; a driver killed midway leaves unreferenced packs,
which the rerun finds present (the same files pack the same way) and gc removes if nothing uses them.

Failures: a task that fails for a reason that may pass (a worker died, the store did not answer) is
run again, up to TASK_TRIES times; one that fails for its input's sake (a file changed or is gone)
fails the upload at once, naming the file, as serially. Ctrl-C cancels the tasks not started; what
finished is recorded, so the rerun uploads only the rest. Progress advances as tasks finish.

The workers must read the draft's local files at the paths it recorded (a shared filesystem): on a
Dask cluster every worker stats a sample of them before any task is submitted (`check_visible`); a
local process pool is this machine. Any other executor (a Ray or Spark adapter) is trusted: a
worker that cannot read a file fails its task naming it.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import time
import uuid
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any

from dsfs.authoring.drafts import DraftState
from dsfs.authoring.ingest import SAVE_INTERVAL, Uploader
from dsfs.authoring.localfiles import local_size
from dsfs.errors import DsfsError, ExecutorUnavailable, LocalFileNotFound, StoreUnavailable, UsageError
from dsfs.lineage.filetable import FileTable
from dsfs.model import ChunkRef, Entry
from dsfs.progress import Tracker
from dsfs.store import datastores
from dsfs.store.backends import redact_url
from dsfs.store.layout import Store
from dsfs.store.sessions import WriterSession

log = logging.getLogger(__name__)

PARTITION_BYTES = 256 << 20  # a task's share: four full packs, about a second of a core's work
PARTITION_FILES = 2000       # ... or this many files (small files: the driver's per-task cost)
TASK_TRIES = 3               # a task that fails for a passing reason runs at most this many times
TASK_WRITERS = 2             # pack writes in flight per task: a worker holds at most ~4 packs (256 MiB)
SCHEDULER_TIMEOUT = 10.0     # seconds to reach a Dask scheduler before giving up
VISIBLE_SAMPLE = 32          # local files each Dask worker stats before the upload starts
KNOWN = b""                  # the pack of a chunk ref a task found known: the driver fills it in


# -- the worker's side --------------------------------------------------------------------------------


class Digests:
    """Membership in a sorted blob of 32-byte digests: 32 bytes a chunk, searched in place."""

    def __init__(self, blob: bytes):
        self.blob = blob

    def __len__(self) -> int:
        return len(self.blob) // 32

    def __getitem__(self, i: int) -> bytes:
        return self.blob[32 * i:32 * i + 32]

    def __contains__(self, digest: object) -> bool:
        i = bisect_left(self, digest)  # type: ignore[call-overload]  # a sequence of bytes
        return i < len(self) and self[i] == digest


@dataclass(frozen=True)
class PartitionTask:
    """One partition to upload, as a worker gets it. `options` open the store as the driver opened it
    (secrets included: they travel as given to the store) and are left out of the repr, which Dask
    writes to its logs when a task fails."""

    url: str
    options: dict = field(repr=False)
    files: list[tuple[str, str]] = field(repr=False)  # (dataset path, local file), in path order
    size: int
    writers: int
    run: str       # one id per upload: a Dask task's key is unique even if its arguments repeat
    attempt: int = 0

    def __repr__(self) -> str:
        return (f"PartitionTask({redact_url(self.url)}, {len(self.files)} files from {self.files[0][0]!r}, "
                f"attempt {self.attempt + 1})")


class TaskLedger:
    """What a task's Uploader records (ingest.Ledger): the packs it put in the store and the
    entries of its files, returned to the driver instead of saved in a draft."""

    def __init__(self) -> None:
        self.packs: list[tuple[bytes, bool, int, list[ChunkRef]]] = []
        self.files: list[tuple[Entry, str]] = []
        self._chunks: dict[bytes, ChunkRef] = {}

    def chunk(self, digest: bytes) -> ChunkRef | None:
        return self._chunks.get(digest)

    def record_pack(self, pack_id: bytes, written: bool, size: int, chunks: Iterable[ChunkRef]) -> None:
        chunks = list(chunks)
        self.packs.append((pack_id, written, size, chunks))
        self._chunks.update((ref.digest, ref) for ref in chunks)

    def record_uploaded(self, files: Iterable[tuple[Entry, str]]) -> None:
        self.files.extend(files)

    def save(self) -> None:
        """Nothing to save: the result goes back to the driver when the task ends."""


def ingest_partition(task: PartitionTask, known: bytes) -> tuple[list, list]:
    """Run on a worker: upload one partition. Returns (packs, files): packs as (id, written, size,
    chunk refs), files as (entry, local file), the known chunks among an entry's with pack KNOWN."""
    store = Store.open(task.url, **task.options)
    digests = Digests(known)
    ledger = TaskLedger()

    def known_ref(digest: bytes) -> ChunkRef | None:
        return ChunkRef(digest, KNOWN, 0, 0, 0) if digest in digests else None

    uploader = Uploader(store, ledger, known_ref, None, task.writers)
    uploader.run(task.files)
    return ledger.packs, ledger.files


def missing_path(local_paths: list[str]) -> str | None:
    """Run on each Dask worker: the first of these files it cannot stat, or None."""
    for path in local_paths:
        try:
            os.stat(path)
        except OSError:
            return path
    return None


# -- the driver's side --------------------------------------------------------------------------------


def store_address(store: Store) -> tuple[str, dict]:
    """The URL and options that open `store` again, on another process or machine: a datastore's,
    with its `env:` options read here (the workers need not have them set)."""
    if store.ref.startswith(datastores.PREFIX):
        datastore = datastores.get(store.ref[len(datastores.PREFIX):])
        return datastore.url, datastore.resolved_options()
    return store.url, {}


def known_digests(table: FileTable, draft: DraftState) -> bytes:
    """The digests of every chunk the parents' lineage and the draft store, sorted, as one blob."""
    blob = bytes(table.chunk_digests)
    known = {blob[i:i + 32] for i in range(0, len(blob), 32)}
    known.update(draft.chunk_digests())
    return b"".join(sorted(known))


def partitions(pending: Iterable[tuple[str, str]]) -> Iterator[tuple[list[tuple[str, str]], int]]:
    """(files, their bytes) of consecutive runs of `pending` (in path order) of about PARTITION_BYTES
    or PARTITION_FILES each."""
    files: list[tuple[str, str]] = []
    size = 0
    for path, local in pending:
        files.append((path, local))
        size += local_size(local)
        if size >= PARTITION_BYTES or len(files) >= PARTITION_FILES:
            yield files, size
            files, size = [], 0
    if files:
        yield files, size


def dask_client(executor: Executor):
    """The distributed.Client behind a Dask executor (`client.get_executor()`), else None."""
    try:
        from distributed.cfexecutor import ClientExecutor
    except ImportError:
        return None
    return executor._client if isinstance(executor, ClientExecutor) else None


def check_visible(client, draft: DraftState) -> None:
    """Every worker of a Dask cluster can stat a sample of the draft's local files (the first, the
    last and some between), or LocalFileNotFound names a worker and a file it cannot see."""
    count = draft.adds_count
    step = max(1, count // VISIBLE_SAMPLE)
    sample: dict[str, str] = {}
    for i, (path, local) in enumerate(draft.adds()):
        if i % step == 0 or i == count - 1:
            sample[local] = path
    for worker, missing in sorted(client.run(missing_path, list(sample)).items()):
        if missing is not None:
            raise LocalFileNotFound(f"Dask worker {worker} cannot read {missing} (added as {sample[missing]}): every "
                                    f"worker must see the draft's files at the same paths (a shared filesystem); "
                                    f"nothing was uploaded")


class ExecutorUploader:
    """The driver of an upload on an executor (module docstring); `run` as Uploader's."""

    def __init__(self, executor: Executor, store: Store, draft: DraftState, table: FileTable,
                 session: WriterSession, max_workers: int | None = None, progress: Tracker | None = None):
        if store.protocol == "memory" and not isinstance(executor, ThreadPoolExecutor):
            raise UsageError(f"{store.display_url} lives in this process only: workers cannot write to it; "
                             f"upload to a file:// or cloud store")
        self.executor = executor
        self.store = store
        self.draft = draft
        self.table = table
        self.session = session
        self.writers = max_workers or TASK_WRITERS
        self.progress = progress or Tracker()
        self.client = dask_client(executor)
        self.known: Any = None  # what tasks get as the known digests: set by run
        self.inflight: dict[Future, PartitionTask] = {}
        self.slots = 2 * _workers(executor, self.client)  # tasks queued: every worker busy, one more waiting
        self.sent_packs = 0
        self.skipped_packs = 0
        self._saved_at = time.monotonic()
        self._recording = False  # between a task's first and last row: the draft must not be saved

    def run(self, pending: Iterable[tuple[str, str]]) -> None:
        """Upload (dataset path, local file) pairs, in path order (the draft's `adds()`)."""
        url, options = store_address(self.store)
        self.known = known_digests(self.table, self.draft)
        if self.client is not None:
            check_visible(self.client, self.draft)
            self.known = self.client.scatter(self.known, broadcast=True, hash=False)  # once to each worker
        run = uuid.uuid4().hex
        try:
            for files, size in partitions(pending):
                while len(self.inflight) >= self.slots:
                    self._collect(block=True)
                self._submit(PartitionTask(url, options, files, size, self.writers, run))
                self._collect(block=False)
            while self.inflight:
                self._collect(block=True)
        except BaseException:
            # Ctrl-C, or a task failed for good: what finished stays recorded; tasks not started are
            # dropped, those running finish on their own and their packs stay unreferenced
            for future in self.inflight:
                future.cancel()
            self.inflight.clear()
            if not self._recording:
                self.draft.save()
            raise
        self.draft.save()

    def _submit(self, task: PartitionTask) -> None:
        try:
            future = self.executor.submit(ingest_partition, task, self.known)
        except RuntimeError as exc:  # a broken or shut down pool (BrokenExecutor is a RuntimeError)
            raise ExecutorUnavailable(f"the executor takes no more tasks ({exc}); what was uploaded is "
                                      f"recorded: run the upload again") from exc
        self.inflight[future] = task

    def _collect(self, block: bool) -> None:
        if not self.inflight:
            return
        done, _ = wait(list(self.inflight), timeout=None if block else 0, return_when=FIRST_COMPLETED)
        for future in done:
            task = self.inflight.pop(future)
            error = future.exception()
            if error is None and self._record(task, *future.result()):
                continue
            if error is not None and isinstance(error, DsfsError) and not isinstance(error, StoreUnavailable):
                raise error  # the same input would fail again: a file changed or is gone, the store refuses
            if task.attempt + 1 >= TASK_TRIES:
                if isinstance(error, DsfsError):
                    raise error
                why = f"{type(error).__name__}: {error}" if error is not None else "its packs went missing"
                raise ExecutorUnavailable(f"a task failed {TASK_TRIES} times ({why}), for files from "
                                          f"{task.files[0][0]}; what was uploaded is recorded: run the upload "
                                          f"again") from error
            log.info("task for files from %s failed (%s); running it again", task.files[0][0],
                     error or "its packs went missing")
            self._submit(replace(task, attempt=task.attempt + 1))

    def _record(self, task: PartitionTask, packs: list, files: list) -> bool:
        """Record a task's result in the draft once its packs are announced and seen in the store;
        False (nothing recorded) if one is missing."""
        ids = [pack_id for pack_id, *_ in packs]
        self.session.announce(ids)  # before looking: see the module docstring
        if not all(self.store.has_pack(pack_id) for pack_id in ids):
            return False
        self._recording = True
        for pack_id, written, size, chunks in packs:
            self.session.seen(pack_id)
            self.draft.record_pack(pack_id, written, size, chunks)
            if written:
                self.sent_packs += 1
            else:
                self.skipped_packs += 1
        self.draft.record_uploaded((self._resolved(entry), local) for entry, local in files)
        self._recording = False
        if time.monotonic() - self._saved_at >= SAVE_INTERVAL:  # each save is an fsync, as serially
            self.draft.save()
            self._saved_at = time.monotonic()
        self.progress.advance(task.size, files=len(files))
        return True

    def _resolved(self, entry: Entry) -> Entry:
        """The entry with its known chunks' refs filled in (the parents' or the draft's)."""
        if any(ref.pack == KNOWN for ref in entry.chunks):
            entry.chunks = [self._known(ref.digest) if ref.pack == KNOWN else ref for ref in entry.chunks]
        return entry

    def _known(self, digest: bytes) -> ChunkRef:
        ref = self.table.known_chunk(digest) or self.draft.chunk(digest)
        assert ref is not None, "a digest shipped as known is the parents' or the draft's"
        return ref


def _workers(executor: Executor, client) -> int:
    """How many tasks the executor runs at once (a guess for executors that do not say)."""
    if client is not None:
        return max(1, sum(client.nthreads().values()))
    return max(1, getattr(executor, "_max_workers", 0) or os.cpu_count() or 1)


# -- executors the command line makes ---------------------------------------------------------------


def _ignore_interrupts() -> None:
    """In a pool's worker: Ctrl-C reaches every process of the terminal's group, and is the driver's
    to handle (it cancels what has not started; a worker ends the partition it is on)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def process_pool(workers: int) -> Iterator[Executor]:
    """`--workers N`: N processes on this machine (spawned: a fork of a process with threads and
    open stores could inherit their locks held)."""
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_ignore_interrupts)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def dask_executor(address: str) -> Iterator[Executor]:
    """`--dask ADDRESS`: the executor of a Dask cluster's scheduler at ADDRESS (tcp://host:8786)."""
    try:
        from distributed import Client
        from distributed.comm.addressing import parse_address, parse_host_port
    except ImportError:
        raise UsageError("--dask needs the distributed library, which is not installed: "
                         "pip install 'dsfs[dask]'") from None
    try:  # checked first: a Client given a malformed address hangs in its finalizer
        scheme, location = parse_address(address)
        if scheme in ("tcp", "tls"):
            parse_host_port(location)
    except ValueError as exc:
        raise UsageError(f"malformed Dask scheduler address {address!r} ({exc}); e.g. tcp://scheduler:8786") from None
    try:
        client = Client(address, timeout=SCHEDULER_TIMEOUT, set_as_default=False)
    except OSError:  # refused or silent: distributed tries again until the timeout either way
        raise ExecutorUnavailable(f"cannot reach the Dask scheduler at {address} within {SCHEDULER_TIMEOUT:g} s; "
                                  f"is it running, and is the address right?") from None
    try:
        yield client.get_executor()
    finally:
        client.close()

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

The merge: a task returns its entries already encoded as the draft stores them (except those that
refer to known chunks, which the driver fills in and encodes) and each pack's chunk refs as one
blob, which the draft records in bulk (DraftState.record_task): 1,000,000 entries merge in 8.9-10 s
on this 2-core machine, where row-by-row inserts took 32 s (bench/bench_merge.py).

Failures and Ctrl-C are dsfs.store.executors.run_tasks's: a task that fails for a reason that may
pass (a worker died, the store did not answer) is run again, up to TASK_TRIES times; one that fails
for its input's sake (a file changed or is gone) fails the upload at once, naming the file, as
serially. Ctrl-C cancels the tasks not started; what finished is recorded, so the rerun uploads only
the rest. Progress advances as tasks finish, by each task's bytes and files.

Remote sources (`dsfs add --files s3://...`, dsfs.authoring.sources) are read by the workers
through fsspec; each task carries the options of the datastores its objects lie in (read by the
driver), never a secret in the draft. The workers must read the draft's local files at the paths it
recorded (a shared filesystem): on a Dask cluster every worker stats a sample of them before any
task is submitted (`check_visible`); a local process pool is this machine. Any other executor (a Ray
or Spark adapter) is trusted: a worker that cannot read a file fails its task naming it.
"""

from __future__ import annotations

import logging
import time
import uuid
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from dsfs.authoring import sources
from dsfs.authoring.drafts import DraftState, entry_blob, local_bytes, pack_refs
from dsfs.authoring.ingest import SAVE_INTERVAL, Uploader
from dsfs.authoring.localfiles import local_size
from dsfs.errors import LocalFileNotFound
from dsfs.lineage.filetable import FileTable
from dsfs.model import ChunkRef, Entry
from dsfs.progress import Tracker
from dsfs.store.backends import redact_url
from dsfs.store.executors import TaskRun, missing_on_workers, refuse_memory, run_tasks, shared, store_address
from dsfs.store.layout import Store
from dsfs.store.sessions import WriterSession

log = logging.getLogger(__name__)

PARTITION_BYTES = 256 << 20  # a task's share: four full packs, about a second of a core's work
PARTITION_FILES = 2000       # ... or this many files (small files: the driver's per-task cost)
TASK_WRITERS = 2             # pack writes in flight per task: a worker holds at most ~4 packs (256 MiB)
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
class PartitionTask(TaskRun):
    """One partition to upload, as a worker gets it. `options` open the store as the driver opened it
    and `sources` reach the remote objects among its files (secrets included: they travel as given to
    the store) and are left out of the repr, which Dask writes to its logs when a task fails."""

    url: str
    options: dict = field(repr=False)
    files: list[tuple[str, str]] = field(repr=False)  # (dataset path, recorded source), in path order
    size: int
    writers: int
    sources: dict = field(default_factory=dict, repr=False)  # {datastore URL: options} of its remote files

    @property
    def label(self) -> str:
        return f"files from {self.files[0][0]}"

    def __repr__(self) -> str:
        return (f"PartitionTask({redact_url(self.url)}, {len(self.files)} files from {self.files[0][0]!r}, "
                f"attempt {self.attempt + 1})")


class TaskLedger:
    """What a task's Uploader records (ingest.Ledger): the packs it put in the store and the
    entries of its files, returned to the driver instead of saved in a draft, encoded as the draft
    stores them (DraftState.record_task), so that the driver's merge builds no row: `packs` as (id,
    written, size, pack_refs), `files` as (path, entry_blob, local_bytes), except the entries that
    refer to known chunks, whose blob is None and whose Entry is in `known` by path (the driver fills
    in where those chunks live)."""

    def __init__(self) -> None:
        self.packs: list[tuple[bytes, bool, int, bytes]] = []
        self.files: list[tuple[str, bytes | None, bytes]] = []
        self.known: dict[str, Entry] = {}
        self._chunks: dict[bytes, ChunkRef] = {}

    def chunk(self, digest: bytes) -> ChunkRef | None:
        return self._chunks.get(digest)

    def record_pack(self, pack_id: bytes, written: bool, size: int, chunks: Iterable[ChunkRef]) -> None:
        chunks = list(chunks)
        self.packs.append((pack_id, written, size, pack_refs(chunks)))
        self._chunks.update((ref.digest, ref) for ref in chunks)

    def record_uploaded(self, files: Iterable[tuple[Entry, str]]) -> None:
        for entry, local in files:
            if any(ref.pack == KNOWN for ref in entry.chunks):
                self.known[entry.path] = entry
                self.files.append((entry.path, None, local_bytes(local)))
            else:
                self.files.append((entry.path, entry_blob(entry), local_bytes(local)))

    def save(self) -> None:
        """Nothing to save: the result goes back to the driver when the task ends."""


def ingest_partition(task: PartitionTask, known: bytes) -> tuple[list, list, dict]:
    """Run on a worker: upload one partition. Returns a TaskLedger's packs, files (in path order)
    and known entries; the known chunks among those entries' refs have pack KNOWN."""
    store = Store.open(task.url, **task.options)
    digests = Digests(known)
    ledger = TaskLedger()

    def known_ref(digest: bytes) -> ChunkRef | None:
        return ChunkRef(digest, KNOWN, 0, 0, 0) if digest in digests else None

    uploader = Uploader(store, ledger, known_ref, None, task.writers, locate=sources.fixed(task.sources))
    uploader.run(task.files)
    ledger.files.sort(key=lambda row: row[0])  # recorded as packs completed: put back in path order
    return ledger.packs, ledger.files, ledger.known


# -- the driver's side --------------------------------------------------------------------------------


def known_digests(table: FileTable, draft: DraftState) -> bytes:
    """The digests of every chunk the parents' lineage and the draft store, sorted, as one blob."""
    blob = bytes(table.chunk_digests)
    known = {blob[i:i + 32] for i in range(0, len(blob), 32)}
    known.update(draft.chunk_digests())
    return b"".join(sorted(known))


def partitions(pending: Iterable[tuple[str, str]],
               locate: sources.Locator) -> Iterator[tuple[list[tuple[str, str]], int, dict]]:
    """(files, their bytes, {datastore URL: options} of their remote objects) of consecutive runs of
    `pending` (in path order) of about PARTITION_BYTES or PARTITION_FILES each."""
    files: list[tuple[str, str]] = []
    size = 0
    roots: dict[str, dict] = {}
    for path, local in pending:
        files.append((path, local))
        size += local_size(local)
        remote = sources.parse(local)
        if remote is not None:
            root, options = locate(remote[0])
            if root:
                roots[root] = options
        if size >= PARTITION_BYTES or len(files) >= PARTITION_FILES:
            yield files, size, roots
            files, size, roots = [], 0, {}
    if files:
        yield files, size, roots


def check_visible(executor: Executor, draft: DraftState) -> None:
    """Every worker of a Dask cluster can stat a sample of the draft's local files (the first, the
    last and some between; remote sources are read through fsspec, not sampled), or
    LocalFileNotFound names a worker and a file it cannot see."""
    local_files = (local for _, local in draft.adds() if sources.parse(local) is None)
    found = missing_on_workers(executor, local_files, draft.adds_count)
    if found is not None:
        worker, missing = found
        added = next(path for path, local in draft.adds() if local == missing)
        raise LocalFileNotFound(f"Dask worker {worker} cannot read {missing} (added as {added}): every "
                                f"worker must see the draft's files at the same paths (a shared filesystem); "
                                f"nothing was uploaded")


class ExecutorUploader:
    """The driver of an upload on an executor (module docstring); `run` as Uploader's."""

    def __init__(self, executor: Executor, store: Store, draft: DraftState, table: FileTable,
                 session: WriterSession, max_workers: int | None = None, progress: Tracker | None = None):
        refuse_memory(store, executor)
        self.executor = executor
        self.store = store
        self.draft = draft
        self.table = table
        self.session = session
        self.writers = max_workers or TASK_WRITERS
        self.progress = progress or Tracker()
        self.sent_packs = 0
        self.skipped_packs = 0
        self._saved_at = time.monotonic()
        self._recording = False  # between a task's first and last row: the draft must not be saved

    def run(self, pending: Iterable[tuple[str, str]]) -> None:
        """Upload (dataset path, recorded source) pairs, in path order (the draft's `adds()`)."""
        url, options = store_address(self.store)
        check_visible(self.executor, self.draft)
        known: Any = shared(self.executor, known_digests(self.table, self.draft))  # once to each Dask worker
        run = uuid.uuid4().hex
        tasks = (PartitionTask(url, options, files, size, self.writers, roots, run=run)
                 for files, size, roots in partitions(pending, sources.Locator()))
        try:
            run_tasks(self.executor, ingest_partition, tasks, self._record, known, what="the upload")
        except BaseException:
            # what finished stays recorded; tasks running finish on their own, their packs unreferenced
            if not self._recording:
                self.draft.save()
            raise
        self.draft.save()

    def _record(self, task: PartitionTask, result: tuple[list, list, dict]) -> bool:
        """Record a task's result in the draft once its packs are announced and seen in the store;
        False (nothing recorded) if one is missing."""
        packs, files, known = result
        ids = [pack_id for pack_id, *_ in packs]
        self.session.announce(ids)  # before looking: see the module docstring
        if not all(self.store.has_pack(pack_id) for pack_id in ids):
            return False
        self._recording = True
        for pack_id, written, _, _ in packs:
            self.session.seen(pack_id)
            if written:
                self.sent_packs += 1
            else:
                self.skipped_packs += 1
        if known:
            files = [(path, entry_blob(self._resolved(known[path])) if blob is None else blob, local)
                     for path, blob, local in files]
        self.draft.record_task(packs, files)
        self._recording = False
        if time.monotonic() - self._saved_at >= SAVE_INTERVAL:  # each save is an fsync, as serially
            self.draft.save()
            self._saved_at = time.monotonic()
        self.progress.advance(task.size, files=len(files))
        return True

    def _resolved(self, entry: Entry) -> Entry:
        """The entry with its known chunks' refs filled in (the parents' or the draft's)."""
        entry.chunks = [self._known(ref.digest) if ref.pack == KNOWN else ref for ref in entry.chunks]
        return entry

    def _known(self, digest: bytes) -> ChunkRef:
        ref = self.table.known_chunk(digest) or self.draft.chunk(digest)
        assert ref is not None, "a digest shipped as known is the parents' or the draft's"
        return ref

"""`dsfs check`: prove that every final version of a store can be read (restic's `check`).

What is checked, in the readers' order (dsfs.store.layout: records before what they name):

1. every version record parses; a corrupt one is reported, never skipped as `Store.list_versions`
   does. Drafts are parsed and counted: they have no change-set yet;
2. every final version's parents and squash sources exist and are final;
3. every final version's change-set is present, has the size and blake3 digest its record names, and
   decodes;
4. every chunk ref of those change-sets lies inside an existing pack (offset + stored length <= the
   pack's size), against one listing of the packs taken after the records were read: a version that
   was final when its record was read had written its packs before, so the listing holds them even
   while others upload;
5. with `read_data`, the chunks are fetched by the download's coalesced, parallel ranged reads
   (dsfs.store.fetch) and re-hashed, each (pack, chunk) once however many versions use it.

Records and change-sets are read by a pool of `WORKERS` threads: on an object store the check is
bound by two listings and these parallel reads, not by one request at a time. Only a version with a
problem is decoded a second time, to name its damaged files.

With an `executor` (`--workers N`, `--dask ADDRESS`; dsfs.store.executors), point 5 runs in tasks:
the chunks to read, in (pack, offset) order, are cut at pack boundaries into partitions of about
PARTITION_BYTES stored bytes; each task opens the store again, fetches and re-hashes its partition by
the same coalesced ranged reads and returns the (pack, chunk) pairs that do not match. The report is
the serial one: the same chunks are read, and the problems are named here from the same set of bad
chunks. Progress advances as tasks finish.

`read_data` may name a subset, chosen by pack id (blake3 hashes, so evenly spread): the packs whose
id, read as a fraction of the id space, lies in [lo, hi). "10%" is [0, 0.1): the same packs on every
run, and a larger percentage checks a superset of a smaller one. "n/t" is the n-th of t equal slices,
so t runs with n = 1..t read every pack exactly once (restic's `--read-data-subset n/t`).

A version deleted while the check runs is not reported: its change-set goes with it, and gc may
then take its packs. Every problem is confirmed by reading the version's record once more.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from fractions import Fraction

from dsfs.errors import CorruptChunk, CorruptData, DatasetNotFound, UsageError
from dsfs.lineage.merge import changes_match
from dsfs.model import ChunkRef, VersionInfo, decode_changeset
from dsfs.progress import transfer
from dsfs.store.executors import TaskRun, refuse_memory, run_tasks, store_address
from dsfs.store.fetch import fetch_each
from dsfs.store.layout import PackStat, Store

log = logging.getLogger(__name__)

WORKERS = 16
DATA_WORKERS = 8  # the download's default; ranges in flight (2 per worker, 8 MiB each) bound memory
PARTITION_BYTES = 256 << 20  # stored bytes a task of check --read-data on an executor reads (whole packs)

# what is wrong, as `Problem.kind`
CORRUPT_RECORD = "corrupt-record"
MISSING_PARENT = "missing-parent"
MISSING_CHANGE_SET = "missing-change-set"
CORRUPT_CHANGE_SET = "corrupt-change-set"
MISSING_PACK = "missing-pack"
BEYOND_PACK_END = "beyond-pack-end"
CORRUPT_CHUNK = "corrupt-chunk"

_SPACE = 1 << 64  # pack ids are placed in the id space by their first 8 bytes
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
_SLICE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Problem:
    """One thing that makes a version (or one of its files) unreadable."""

    kind: str
    version: str  # the damaged version's id
    ref: str  # its project/name@version; "" when its record does not parse
    path: str  # the damaged file inside the version; "" when the version itself is damaged
    message: str


@dataclass
class Report:
    versions: int = 0  # records listed and read (final, draft, corrupt)
    final: int = 0
    drafts: int = 0
    files: int = 0  # files of the final change-sets whose bytes are in the store (not external links)
    chunk_refs: int = 0  # chunk refs checked against the pack listing
    packs: int = 0
    pack_bytes: int = 0
    unreferenced_packs: int = 0  # no final version refers to them (gc's to reclaim, or uploads in progress)
    unreferenced_bytes: int = 0
    subset: tuple[float, float] | None = None  # with read_data: the slice of the pack-id space read
    data_packs: int = 0
    data_chunks: int = 0
    data_bytes: int = 0  # stored bytes fetched and re-hashed
    problems: list[Problem] = field(default_factory=list)
    # {id: project/name@version} of final versions without a problem of their own that descend from a
    # damaged one: the files they inherit from it cannot be read either
    affected: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def damaged(self) -> list[str]:
        """Ids of the versions with a problem."""
        return sorted({p.version for p in self.problems})

    def as_dict(self) -> dict:
        summary = {k: v for k, v in asdict(self).items() if k not in ("problems", "affected")}
        return {"ok": self.ok, "summary": summary, "damaged": self.damaged,
                "problems": [asdict(p) for p in self.problems], "affected": self.affected}


def parse_subset(spec: str | float | bool) -> tuple[Fraction, Fraction] | None:
    """read_data -> the slice [lo, hi) of the pack-id space to read: False none, True all, a float
    that fraction from the start, "N%" the same, "n/t" the n-th of t slices."""
    if spec is False or spec is None:
        return None
    if spec is True:
        return Fraction(0), Fraction(1)
    if isinstance(spec, (int, float)):
        if not 0 < spec <= 1:
            raise UsageError(f"read_data={spec!r}: a fraction must be in (0, 1]")
        return Fraction(0), Fraction(spec)
    percent, part = _PERCENT.match(str(spec)), _SLICE.match(str(spec))
    if percent and 0 < float(percent.group(1)) <= 100:
        return Fraction(0), Fraction(percent.group(1)) / 100
    if part and 1 <= int(part.group(1)) <= int(part.group(2)):
        n, t = int(part.group(1)), int(part.group(2))
        return Fraction(n - 1, t), Fraction(n, t)
    raise UsageError(f"invalid subset {spec!r}: use N% (0 < N <= 100) or n/t (1 <= n <= t), e.g. 10% or 2/5")


@dataclass
class _Scan:
    """One final version's change-set, read and decoded: the furthest byte it needs in each pack,
    and the chunk refs to read (with read_data)."""

    info: VersionInfo
    problem: Problem | None = None
    extent: dict[bytes, int] = field(default_factory=dict)
    refs: dict[tuple[bytes, bytes], ChunkRef] = field(default_factory=dict)
    files: int = 0
    chunk_refs: int = 0


def check_store(store: Store, read_data: bool | float | str = False, progress: bool | None = None,
                workers: int = WORKERS, executor: Executor | None = None) -> Report:
    """Check `store` (see the module docstring) and return what was checked and what is wrong.
    progress: show bars on stderr (None: when it is a terminal). executor: read_data's fetching and
    hashing runs in tasks there (a process pool, a Dask cluster's executor). A store that cannot be
    read raises its usual errors (StoreUnavailable...); damage is reported, not raised."""
    if executor is not None:
        refuse_memory(store, executor)
    bounds = parse_subset(read_data)
    report = Report(subset=None if bounds is None else (float(bounds[0]), float(bounds[1])))
    chosen = _chooser(bounds)
    with ThreadPoolExecutor(workers, thread_name_prefix="dsfs-check") as pool:
        try:
            with transfer(f"check {store.display_url}", 0, progress, unit="versions") as bar:
                records = _read_records(store, pool, report, bar)
                finals = [info for info in records.values() if info is not None and info.is_final]
                bar.set_total(sum(int(info.changes.get("size") or 0) for info in finals), len(records))
                # listed only now that every record is read: see point 4 of the module docstring
                listing = pool.submit(store.list_packs)
                _check_ancestry(store, finals, records, report)
                scans = []
                for future in as_completed([pool.submit(_scan, store, info, chosen) for info in finals]):
                    scan = future.result()
                    scans.append(scan)
                    bar.advance(int(scan.info.changes.get("size") or 0), files=1)
                packs = listing.result()
            bad_chunks = _read_data(store, scans, packs, report, progress, executor) if bounds is not None else set()
            _tally(scans, packs, report)
            bad_packs = {pack for pack, _ in bad_chunks}
            suspects = [scan.info for scan in scans if scan.problem is None and any(
                pack not in packs or end > packs[pack].size or pack in bad_packs for pack, end in scan.extent.items())]
            for problems in pool.map(lambda info: _damaged_files(store, info, packs, bad_chunks), suspects):
                report.problems.extend(problems)
            report.problems.extend(scan.problem for scan in scans if scan.problem is not None)
            _drop_deleted(store, pool, report)
            report.affected = _descendants(finals, set(report.damaged))
        except BaseException:  # a store gone away or ^C: do not wait for every queued read to fail too
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    report.problems.sort(key=lambda p: (p.ref, p.version, p.path, p.kind))
    log.info("check %s: %d version(s) read, %d problem(s)", store.display_url, len(records), len(report.problems))
    return report


def _chooser(bounds: tuple[Fraction, Fraction] | None):
    """pack id -> whether read_data reads it."""
    if bounds is None:
        return lambda pack: False
    lo, hi = (math.ceil(b * _SPACE) for b in bounds)
    return lambda pack: lo <= int.from_bytes(pack[:8], "big") < hi


def _read_records(store: Store, pool: ThreadPoolExecutor, report: Report, bar) -> dict[str, VersionInfo | None]:
    """{id: record, or None if it does not parse} of every version listed. A folder whose record is
    gone (a delete in progress or interrupted after its first step) is no version."""
    def read(dataset_id: str):
        try:
            return dataset_id, store.read_version(dataset_id), None
        except DatasetNotFound:
            return dataset_id, None, None
        except CorruptData as exc:
            return dataset_id, None, Problem(CORRUPT_RECORD, dataset_id, "", "", str(exc))

    ids = store.list_version_ids()
    bar.set_total(0, len(ids))
    records: dict[str, VersionInfo | None] = {}
    for future in as_completed([pool.submit(read, i) for i in ids]):
        dataset_id, info, problem = future.result()
        if info is None and problem is None:
            continue
        records[dataset_id] = info
        report.versions += 1
        if problem is not None:
            report.problems.append(problem)
        elif info.is_final:
            report.final += 1
        else:
            report.drafts += 1
        if info is None or not info.is_final:
            bar.advance(files=1)
    return records


def _check_ancestry(store: Store, finals: list[VersionInfo], records: dict, report: Report) -> None:
    """Every parent and squash source of a final version exists and is final."""
    verdicts: dict[str, str] = {}  # many children may share a missing parent: look it up once

    def verdict(dataset_id: str) -> str:
        if dataset_id in records:
            found = records[dataset_id]
        else:  # created after the listing began (a parent precedes its child), or really gone
            try:
                found = store.read_version(dataset_id)
            except DatasetNotFound:
                return "is missing"
            except CorruptData:
                found = None
        if found is None:
            return "has a corrupt record"
        return "" if found.is_final else "is a draft"

    for dataset_id in _on_cycles(records):
        info = records[dataset_id]
        report.problems.append(Problem(MISSING_PARENT, info.id, info.ref, "",
                                       "its parents lead back to itself: the version cannot be read"))
    for info in finals:
        for role, other in [("parent", p) for p in info.parents] + [("squash source", s) for s in info.sources]:
            if other not in verdicts:
                verdicts[other] = verdict(other)
            why = verdicts[other]
            if why:
                report.problems.append(Problem(MISSING_PARENT, info.id, info.ref, "",
                                               f"its {role} {other} {why}: the version cannot be read"))


def _on_cycles(records: dict) -> list[str]:
    """Ids of the versions whose parents lead back to them (a store dsfs never writes), found with
    an iterative depth-first search: lineages may be 10,000 deep."""
    parents = {i: [p for p in info.parents if isinstance(records.get(p), VersionInfo)]
               for i, info in records.items() if isinstance(info, VersionInfo)}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cyclic: set[str] = set()
    for start in parents:
        if start in state:
            continue
        path, stack = [start], [iter(parents[start])]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                cyclic.update(path[path.index(nxt):])
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(parents[nxt]))
    return sorted(cyclic)


def _changes(store: Store, info: VersionInfo) -> tuple[bytes | None, Problem | None]:
    """A final version's change-set bytes, or the problem that keeps them from being trusted."""
    try:
        data = store.read_changes(info.id, info.changes.get("size"))  # never more than its record says
    except CorruptData as exc:  # the only CorruptData read_changes raises: the object is missing
        return None, Problem(MISSING_CHANGE_SET, info.id, info.ref, "", str(exc))
    if not changes_match(info, data):
        return None, Problem(CORRUPT_CHANGE_SET, info.id, info.ref, "",
                             f"change-set of dataset {info.id} has {len(data)} bytes or a digest other than "
                             f"its record names ({info.changes.get('size')} bytes, blake3 "
                             f"{str(info.changes.get('digest'))[:16]}...)")
    return data, None


def _scan(store: Store, info: VersionInfo, chosen) -> _Scan:
    """Read, check and decode one final version's change-set (in a pool thread)."""
    scan = _Scan(info)
    data, scan.problem = _changes(store, info)
    if data is None:
        return scan
    try:
        for entry in decode_changeset(data, f"change-set of dataset {info.id}"):
            if entry.removed or entry.url:  # an external file's bytes are not in the store
                continue
            scan.files += 1
            scan.chunk_refs += len(entry.chunks)
            for ref in entry.chunks:
                end = ref.offset + ref.stored
                if scan.extent.get(ref.pack, -1) < end:
                    scan.extent[ref.pack] = end
                if chosen(ref.pack):
                    scan.refs[ref.pack, ref.digest] = ref
    except CorruptData as exc:
        return _Scan(info, Problem(CORRUPT_CHANGE_SET, info.id, info.ref, "", str(exc)))
    return scan


def _read_data(store: Store, scans: list[_Scan], packs: dict[bytes, PackStat], report: Report,
               progress: bool | None, executor: Executor | None = None) -> set[tuple[bytes, bytes]]:
    """Fetch and re-hash the chosen chunks that lie inside their packs (the others are reported from
    the listing), here or in tasks on `executor`; (pack, digest) of each chunk whose bytes do not match."""
    wanted: dict[tuple[bytes, bytes], ChunkRef] = {}
    for scan in scans:
        wanted.update(scan.refs)
    refs = [ref for ref in wanted.values()
            if ref.pack in packs and ref.offset + ref.stored <= packs[ref.pack].size]
    report.data_packs = len({ref.pack for ref in refs})
    report.data_chunks = len(refs)
    report.data_bytes = sum(ref.stored for ref in refs)
    bad: set[tuple[bytes, bytes]] = set()
    lock = threading.Lock()

    def on_range(rng, good: dict, errors: dict[bytes, CorruptChunk]) -> None:
        with lock:
            bad.update((rng.pack, digest) for digest in errors)
        bar.advance(sum(ref.stored for ref in rng.refs), files=len(rng.refs))

    with transfer(f"check data in {store.display_url}", report.data_bytes, progress, unit="chunks") as bar:
        bar.set_total(report.data_bytes, len(refs))
        if executor is None:
            fetch_each(store, refs, on_range, DATA_WORKERS, every_copy=True)
            return bad
        url, options = store_address(store)
        run = uuid.uuid4().hex

        def accept(task: PacksTask, found: list[tuple[bytes, bytes]]) -> bool:
            bad.update(found)
            bar.advance(task.size, files=len(task.refs))
            return True

        tasks = (PacksTask(url, options, part, sum(ref.stored for ref in part), run=run) for part in _partitions(refs))
        run_tasks(executor, read_packs, tasks, accept, what="the check")
    return bad


@dataclass(frozen=True)
class PacksTask(TaskRun):
    """Chunks of whole packs to fetch and re-hash on a worker (`options` open the store as the driver
    opened it, secrets included, and stay out of the repr, which Dask logs when a task fails)."""

    url: str
    options: dict = field(repr=False)
    refs: list[ChunkRef] = field(repr=False)
    size: int

    @property
    def label(self) -> str:
        return f"packs from {self.refs[0].pack.hex()}"


def read_packs(task: PacksTask) -> list[tuple[bytes, bytes]]:
    """Run on a worker: fetch and re-hash a partition's chunks; (pack, digest) of each that does not
    match its digest."""
    store = Store.open(task.url, **task.options)
    bad: list[tuple[bytes, bytes]] = []
    lock = threading.Lock()

    def on_range(rng, good: dict, errors: dict) -> None:
        with lock:
            bad.extend((rng.pack, digest) for digest in errors)

    fetch_each(store, task.refs, on_range, DATA_WORKERS, every_copy=True)
    return bad


def _partitions(refs: list[ChunkRef]) -> Iterator[list[ChunkRef]]:
    """The refs in (pack, offset) order, cut at pack boundaries every PARTITION_BYTES stored bytes."""
    part: list[ChunkRef] = []
    size = 0
    for ref in sorted(refs, key=lambda r: (r.pack, r.offset)):
        if part and size >= PARTITION_BYTES and ref.pack != part[-1].pack:
            yield part
            part, size = [], 0
        part.append(ref)
        size += ref.stored
    if part:
        yield part


def _tally(scans: list[_Scan], packs: dict[bytes, PackStat], report: Report) -> None:
    referenced: set[bytes] = set()
    for scan in scans:
        referenced.update(scan.extent)
        report.files += scan.files
        report.chunk_refs += scan.chunk_refs
    report.packs = len(packs)
    report.pack_bytes = sum(stat.size for stat in packs.values())
    unreferenced = [stat.size for pack, stat in packs.items() if pack not in referenced]
    report.unreferenced_packs, report.unreferenced_bytes = len(unreferenced), sum(unreferenced)


def _damaged_files(store: Store, info: VersionInfo, packs: dict[bytes, PackStat], bad_chunks: set) -> list[Problem]:
    """Decode a suspect version's change-set again and name each file it cannot read."""
    data, problem = _changes(store, info)
    if data is None:
        assert problem is not None, "_changes returns the bytes or the problem"
        return [problem]
    found = []
    for entry in decode_changeset(data, f"change-set of dataset {info.id}"):
        for ref in entry.chunks:
            kind, what = _chunk_fault(ref, packs, bad_chunks)
            if kind:
                found.append(Problem(kind, info.id, info.ref, entry.path, what))
                break  # one problem per file: the first chunk that cannot be read
    return found


def _chunk_fault(ref: ChunkRef, packs: dict[bytes, PackStat], bad_chunks: set) -> tuple[str, str]:
    pack = ref.pack.hex()
    stat = packs.get(ref.pack)
    if stat is None:
        return MISSING_PACK, f"pack {pack} is missing"
    if ref.offset + ref.stored > stat.size:
        return BEYOND_PACK_END, (f"chunk {ref.digest.hex()[:16]} at bytes {ref.offset}-{ref.offset + ref.stored} "
                                 f"lies beyond the end of pack {pack} ({stat.size} bytes)")
    if (ref.pack, ref.digest) in bad_chunks:
        return CORRUPT_CHUNK, f"chunk {ref.digest.hex()[:16]} in pack {pack} does not match its digest"
    return "", ""


def _drop_deleted(store: Store, pool: ThreadPoolExecutor, report: Report) -> None:
    """Forget the problems of versions deleted while the check ran (their record is gone now)."""
    def gone(dataset_id: str) -> bool:
        try:
            store.read_version(dataset_id)
        except DatasetNotFound:
            return True
        except CorruptData:  # still there, still damaged
            pass
        return False

    damaged = report.damaged
    deleted = {i for i, is_gone in zip(damaged, pool.map(gone, damaged), strict=True) if is_gone}
    report.problems = [p for p in report.problems if p.version not in deleted]


def _descendants(finals: list[VersionInfo], damaged: set[str]) -> dict[str, str]:
    """{id: ref} of the final versions, not damaged themselves, with a damaged version among their
    ancestors (through parents: a squashed version's own refs were checked directly)."""
    children: dict[str, list[VersionInfo]] = {}
    for info in finals:
        for parent in info.parents:
            children.setdefault(parent, []).append(info)
    seen, todo, found = set(damaged), list(damaged), {}
    while todo:  # not recursion: a lineage may be thousands of versions long
        for child in children.get(todo.pop(), []):
            if child.id not in seen:
                seen.add(child.id)
                todo.append(child.id)
                found[child.id] = child.ref
    return found

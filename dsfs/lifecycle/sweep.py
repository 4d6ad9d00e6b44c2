"""`dsfs gc`: reclaim the space of packs no final version references (mark and sweep).

Packs are content-addressed and shared by unrelated versions, so `delete` removes records only and
space comes back here, in the style of restic's prune and kopia's maintenance, on a store that many
machines write at once with no server:

1. take the gc lease (dsfs.store.sessions: one gc at a time; a second one is told who holds it);
2. read the live writer sessions: the packs uploads, closes and pushes in progress rely on;
3. mark: every pack referenced by any final version's change-set (squash borrows included: a
   squashed version's chunk refs name its sources' packs). Records and change-sets are read in
   parallel. A record that does not parse, or a final version whose change-set is missing or does
   not match its record, stops gc before it deletes anything: what it would reference is unknown;
4. list the packs (one LIST page per 1,000);
5. sweep: delete every pack that is not marked, not named by a live session, and older than the
   grace period (default 24 h, by the store's clock), checking before each batch that the lease is
   still held. Packs that are only partly referenced are kept whole (chunk refs in final change-sets
   are immutable: no repacking) and their unreferenced bytes reported.

Steps 2 and 3 happen after 1, and 3 after 2: a writer whose session ended before step 2 wrote its
final record before that, so step 3 marks its packs. Killed at any point, gc leaves a store whose
referenced packs are all present; a rerun marks again and finishes the sweep (a rerun on the same
host takes over the dead process's lease at once).
"""

from __future__ import annotations

import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from dsfs.errors import Conflict, CorruptData, UsageError
from dsfs.lineage.merge import read_changes_checked
from dsfs.model import decode_changeset
from dsfs.progress import transfer
from dsfs.store import datastores
from dsfs.store.layout import Store
from dsfs.store.sessions import TIMING, GcLease, Timing, read_sessions, session_packs

log = logging.getLogger(__name__)

DEFAULT_GRACE = 24 * 3600.0
WORKERS = 16
BATCH = 64  # deletes between two checks of the lease
TEMP_AGE = 3600.0  # a pack temp file this old belongs to no live write (a write keeps touching it)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """'24h', '30m', '7d', '90s', '0' -> seconds."""
    match = _DURATION.match(str(text))
    if not match:
        raise UsageError(f"invalid duration {text!r}: use a number with s, m, h, d or w (e.g. 24h)")
    return float(match.group(1)) * _UNIT[match.group(2)]


@dataclass
class GcReport:
    dry_run: bool
    grace_seconds: float
    versions: int = 0                    # final versions marked from
    drafts: int = 0
    packs: int = 0                       # packs in the store before the sweep
    pack_bytes: int = 0
    referenced_packs: int = 0
    deleted_packs: int = 0               # or, with dry_run, that would be deleted
    deleted_bytes: int = 0
    kept_young_packs: int = 0            # unreferenced, younger than the grace period
    kept_young_bytes: int = 0
    kept_session_packs: int = 0          # unreferenced, named by a live writer session
    live_sessions: int = 0
    stale_sessions_removed: int = 0
    partly_referenced_packs: int = 0
    unreferenced_bytes_in_kept_packs: int = 0
    temp_files_removed: int = 0          # left by pack writes killed midway (file:// stores)
    temp_bytes_removed: int = 0
    deleted: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def _mark(store: Store, progress) -> tuple[dict[bytes, int], int, int]:
    """{pack id: bytes referenced in it} over every final version, and the counts of final
    versions and drafts. Raises CorruptData for any record or change-set it cannot trust."""
    # The catalog's exact listing: listed now (after the lease and the sessions), each record read
    # or taken from the node's record cache at the validator just listed (dsfs.store.records). A
    # record's state can go from draft to final only by a rewrite, which changes its size and so its
    # validator on every backend; a final record's change-set never changes.
    unreadable: dict[str, str] = {}
    infos = store.list_versions(unreadable, exact=True)
    if unreadable:
        raise CorruptData(f"{sorted(unreadable.values())[0]}; gc deleted nothing (run `dsfs check`, then repair "
                          f"or delete that version)")
    progress.set_total(0, len(infos))

    def load(info):
        chunks: set[tuple[bytes, int, int]] = set()
        if info.is_final:
            try:
                data = read_changes_checked(store, info)
                for entry in decode_changeset(data, f"change-set of dataset {info.id}"):
                    chunks.update((ref.pack, ref.offset, ref.stored) for ref in entry.chunks)
            except CorruptData as exc:
                raise CorruptData(f"{exc}; gc deleted nothing (run `dsfs check`)") from None
        progress.advance(files=1)
        return info, chunks

    referenced: dict[bytes, int] = {}
    finals = drafts = 0
    with ThreadPoolExecutor(WORKERS, thread_name_prefix="dsfs-gc-mark") as pool:
        for info, chunks in pool.map(load, infos):
            if not info.is_final:
                drafts += 1
                continue
            finals += 1
            for pack, _, stored in chunks:
                referenced[pack] = referenced.get(pack, 0) + stored
    return referenced, finals, drafts


def gc(store: Store | str | None = None, grace: float = DEFAULT_GRACE, dry_run: bool = False,
       show_progress: bool | None = None, timing: Timing | None = None) -> GcReport:
    """Delete the packs no final version references (see the module docstring). With dry_run,
    take no lease, delete nothing, and report what would be deleted. `store`: a Store, a URL,
    `datastore:NAME`, or None for the default store."""
    if not isinstance(store, Store):
        store = datastores.open_store(store)
    timing = timing or TIMING
    report = GcReport(dry_run=dry_run, grace_seconds=grace)
    lease = None if dry_run else GcLease.acquire(store, "gc", timing)
    try:
        sessions, stale = read_sessions(store, timing)
        report.live_sessions = len(sessions)
        protected = set().union(*map(session_packs, sessions.values()))
        with transfer(f"gc {store.display_url}: marking", None, show_progress) as progress:
            referenced, report.versions, report.drafts = _mark(store, progress)
        packs, temp_files = store.scan_packs()
        now = time.time()
        report.packs = len(packs)
        report.pack_bytes = sum(s.size for s in packs.values())
        doomed = []
        for pack_id, stat in sorted(packs.items()):
            if pack_id in referenced:
                report.referenced_packs += 1
                unused = max(0, stat.size - referenced[pack_id])
                if unused:
                    report.partly_referenced_packs += 1
                    report.unreferenced_bytes_in_kept_packs += unused
            elif pack_id in protected:
                report.kept_session_packs += 1
            elif not stat.modified or stat.modified > now - grace:
                report.kept_young_packs += 1
                report.kept_young_bytes += stat.size
            else:
                doomed.append((pack_id, stat.size))
        log.info("gc %s: %d pack(s), %d referenced, %d kept for writers, %d too young, %d to delete%s",
                 store.display_url, report.packs, report.referenced_packs, report.kept_session_packs,
                 report.kept_young_packs, len(doomed), " (dry run)" if dry_run else "")
        if dry_run:
            report.deleted_packs = len(doomed)
            report.deleted_bytes = sum(size for _, size in doomed)
            report.deleted = [p.hex() for p, _ in doomed]
            return report
        for session_id in stale:
            log.debug("gc %s: removing stale session %s", store.display_url, session_id)
            store.delete_session(session_id)
            report.stale_sessions_removed += 1
        assert lease is not None, "taken unless dry_run"
        _sweep(store, lease, doomed, report, show_progress)
        _sweep_temp_files(store, temp_files, max(grace, TEMP_AGE), report)
        return report
    finally:
        if lease is not None:
            lease.release()


def _sweep(store: Store, lease: GcLease, doomed: list[tuple[bytes, int]], report: GcReport, show_progress) -> None:
    with transfer(f"gc {store.display_url}: deleting", sum(s for _, s in doomed), show_progress) as progress, \
            ThreadPoolExecutor(WORKERS, thread_name_prefix="dsfs-gc-sweep") as pool:
        for start in range(0, len(doomed), BATCH):
            if not lease.still_held():
                raise Conflict(
                    f"gc lost its lease on {store.display_url} (it ran past its expiry or another gc "
                    f"took over); it stopped after deleting {report.deleted_packs} pack(s). Run it again")
            batch = doomed[start:start + BATCH]
            list(pool.map(lambda item: store.delete_pack(item[0]), batch))
            for pack_id, size in batch:
                report.deleted_packs += 1
                report.deleted_bytes += size
                report.deleted.append(pack_id.hex())
                progress.advance(size)


def _sweep_temp_files(store: Store, temp_files: dict, older_than: float, report: GcReport) -> None:
    """Remove what pack writes killed midway left (file:// only): never younger than an hour, so a
    write in progress, which keeps its temp file's time moving, is never touched."""
    now = time.time()
    for key, stat in temp_files.items():
        if stat.modified and stat.modified < now - older_than:
            log.debug("gc %s: removing %s, left by a killed write", store.display_url, key)
            store.delete_temp_file(key)
            report.temp_files_removed += 1
            report.temp_bytes_removed += stat.size

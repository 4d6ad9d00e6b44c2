"""Writer sessions and the gc lease: how writers and gc share a store that has no server.

A **writer session** (`WriterSession`) is one object, `sessions/<id>.json`, that an upload, a close,
a push or a squash keeps in the store while it runs. It lists every pack the writer relies on that
no final version may reference yet: the packs it writes, the packs it finds already present and
reuses, the packs an earlier run of the same draft wrote. A thread rewrites it every `refresh`
seconds; a session not rewritten for `session_ttl` seconds is stale, and gc ignores (and removes) it.

The **gc lease** (`GcLease`) is the sequence of objects `locks/gc/<n>`: the one with the highest n is
the current lease, live until it is released or expires. A gc takes the lease by creating the next n
exclusively (of two gcs, exactly one creates it), rewrites it to extend it while it runs, and before
every batch of deletes checks that it still holds it. A released or expired lease stays in place (so
no sequence number is ever reused, and a paused gc cannot mistake a newer lease for its own) until
the next holder removes it.

The argument that ties them (also in dsfs.store.layout's docstring) is two writes each followed by a read:
a writer announces a pack (rewrites its session) and *then* reads the lease; gc takes the lease and
*then* reads the sessions. Whichever comes second sees the other. If gc reads the sessions after the
announcement, it keeps the pack. If not, the writer's read of the lease comes after gc took it: the
writer waits until that gc has finished, and only then looks whether the pack exists (and writes it
if not). So a pack a writer has looked at and found present is never deleted before that writer's
version is final (and then the version's change-set references it).

Clocks: expiry times are written by one machine and judged by another, so every judgement leans the
safe way by `clock_margin`: writers wait, and gc keeps a session's packs, `clock_margin` longer than
the expiry says; gc stops deleting `clock_margin` before its own lease runs out. A lease or session of
a process of this node (this boot of this machine, this pid namespace) that no longer runs is stale at
once, so a killed gc can be rerun right away.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeGuard

from dsfs.errors import AccessDenied, Conflict, StoreReadOnly, StoreUnavailable
from dsfs.model import utc_iso
from dsfs.store.layout import Store, pack_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timing:
    """How long sessions and leases live, in seconds. Tests use short ones."""

    session_ttl: float = 900.0   # a writer session not refreshed for this long is stale
    refresh: float = 60.0        # how often a live session rewrites its object
    lease_ttl: float = 300.0     # a gc lease not extended for this long has expired
    lease_refresh: float = 30.0  # how often gc extends its lease
    clock_margin: float = 120.0  # allowed disagreement between machines' clocks
    wait_limit: float = 1800.0   # how long a writer waits for a running gc before giving up
    poll: float = 0.25           # how often a waiting writer looks at the lease again


TIMING = Timing()


def _process_start(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (None if it is not running):
    with the pid, it names one process even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _node() -> str:
    """Where a pid means one process: this boot of this machine, this pid namespace. A host name
    alone is not enough (two containers, or two machines, may share one), and a gc that took
    another node's pid for a dead one would run beside it."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    boot = _read("/proc/sys/kernel/random/boot_id")
    return f"{socket.gethostname()}/{boot}/{namespace}" if boot and namespace else ""


def _owner() -> dict:
    """Who holds a session or lease: host and process (shown to other users), and the node."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_start": _process_start(pid), "node": _node()}


def _dead_here(record: dict) -> bool:
    """True if the record names a process of this node that no longer runs."""
    node = _node()
    if not node or record.get("node") != node or not isinstance(record.get("pid"), int):
        return False
    start = _process_start(record["pid"])
    return start is None or start != record.get("pid_start")


def _holder(record: dict) -> str:
    return f"{record.get('what', 'gc')} on {record.get('host', '?')} (pid {record.get('pid', '?')})"


def _parse(data: bytes | None) -> dict | None:
    try:
        record = json.loads(data) if data is not None else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


# -- the gc lease ---------------------------------------------------------------------------------


def lease_live(record: dict | None, now: float, timing: Timing) -> TypeGuard[dict]:
    """Whether a lease record still holds the store, judged from another machine (safe side: live
    until clock_margin after its expiry). dsfs writes leases whole (one atomic PUT), so a record
    that does not parse or has no expiry was not written by a gc: it holds nothing."""
    if record is None or record.get("released") or _dead_here(record):
        return False
    expires = record.get("expires")
    return isinstance(expires, (int, float)) and now <= expires + timing.clock_margin


def current_lease(store: Store) -> tuple[int, dict | None]:
    """(highest sequence, its record), or (0, None) when no gc ever ran here; the record is None
    when it does not parse."""
    sequences = store.lease_sequences()
    if not sequences:
        return 0, None
    top = sequences[-1]
    data = store.read_lease(top)
    if data is None:  # removed between listing and reading: only a newer holder removes leases
        return current_lease(store) if store.lease_sequences() != sequences else (top, None)
    return top, _parse(data)


class GcLease:
    """The exclusive right to delete packs from one store, held by one gc at a time."""

    def __init__(self, store: Store, sequence: int, record: dict, timing: Timing):
        self.store = store
        self.sequence = sequence
        self.record = record
        self.timing = timing

    @classmethod
    def acquire(cls, store: Store, what: str = "gc", timing: Timing | None = None) -> GcLease:
        """Take the lease, or raise Conflict naming the gc that holds it."""
        timing = timing or TIMING
        top, record = current_lease(store)
        now = time.time()
        if lease_live(record, now, timing):
            since = utc_iso(record.get("started", now))
            raise Conflict(f"another gc holds {store.display_url}: {_holder(record)} since {since}; "
                           f"wait for it to finish (its lease expires unless it is renewed)")
        record = {"format": 1, "what": what, **_owner(), "started": now, "expires": now + timing.lease_ttl}
        if not store.create_lease(top + 1, json.dumps(record).encode()):
            top, record = current_lease(store)
            raise Conflict(f"another gc took {store.display_url} at the same moment: "
                           f"{_holder(record or {})}; try again later")
        lease = cls(store, top + 1, record, timing)
        for old in store.lease_sequences():  # older leases are released or expired: tidy them
            if old < lease.sequence:
                store.delete_lease(old)
        return lease

    def extend(self) -> None:
        self.record["expires"] = time.time() + self.timing.lease_ttl
        self.store.write_lease(self.sequence, json.dumps(self.record).encode())

    def still_held(self) -> bool:
        """Whether deleting may go on: no newer lease exists, and ours has clock_margin left (by our
        own clock). Extends the lease when half of it is used."""
        if self.store.lease_sequences()[-1:] != [self.sequence]:
            return False
        now = time.time()
        if now >= self.record["expires"] - self.timing.clock_margin:
            return False
        if now >= self.record["expires"] - self.timing.lease_ttl / 2:
            self.extend()
        return True

    def release(self) -> None:
        self.record["released"] = time.time()
        if self.store.lease_sequences()[-1:] == [self.sequence]:
            self.store.write_lease(self.sequence, json.dumps(self.record).encode())


def wait_for_gc(store: Store, timing: Timing | None = None, notify=None) -> None:
    """Return once no gc holds the store (at once, usually). `notify(message)` is called once if
    this has to wait. Raises StoreUnavailable after timing.wait_limit seconds."""
    timing = timing or TIMING
    deadline = time.monotonic() + timing.wait_limit
    told = False
    while True:
        _, record = current_lease(store)
        if not lease_live(record, time.time(), timing):
            return
        if time.monotonic() >= deadline:
            raise StoreUnavailable(f"{_holder(record)} has held {store.display_url} for more than "
                                   f"{timing.wait_limit:.0f} s; try again when it has finished")
        if not told:
            log.debug("waiting for %s to finish on %s", _holder(record), store.display_url)
            if notify is not None:
                notify(f"waiting for {_holder(record)} to finish on {store.display_url}")
            told = True
        time.sleep(timing.poll)


# -- writer sessions ------------------------------------------------------------------------------


def session_live(record: dict | None, now: float, timing: Timing) -> TypeGuard[dict]:
    """Whether gc must keep a session's packs (safe side: clock_margin beyond its expiry). dsfs
    writes sessions whole, so one that does not parse or names no refresh time is not a writer's."""
    if record is None or _dead_here(record):
        return False
    refreshed = record.get("refreshed")
    return isinstance(refreshed, (int, float)) and now <= refreshed + timing.session_ttl + timing.clock_margin


def session_packs(record: dict) -> set[bytes]:
    """The pack ids a session record names (anything else in its list is ignored)."""
    packs = record.get("packs")
    if not isinstance(packs, list):
        return set()
    return {pack for pack in map(pack_id, packs) if pack is not None}


def read_sessions(store: Store, timing: Timing | None = None) -> tuple[dict[str, dict], list[str]]:
    """({id: record} of live sessions, [ids of stale ones, to remove])."""
    timing = timing or TIMING
    now = time.time()
    live: dict[str, dict] = {}
    stale: list[str] = []
    for session_id, data in store.read_sessions().items():
        record = _parse(data)
        if session_live(record, now, timing):
            live[session_id] = record
        else:
            stale.append(session_id)
    return live, stale


class WriterSession:
    """A writer's announcement to gc: use as a context manager around everything that writes or
    reuses packs, up to and including writing the final version record.

        with WriterSession(store, "upload vision/cats@1.0.1") as session:
            session.announce([pack_id])      # before looking for the pack or writing it
            ...
            missing = session.confirm()      # right before the final record: [] or lost packs
    """

    def __init__(self, store: Store, what: str, timing: Timing | None = None, notify=None):
        self.store = store
        self.what = what
        self.timing = timing or TIMING
        self.notify = notify
        self.id = uuid.uuid4().hex
        self.packs: set[bytes] = set()
        self.unverified: set[bytes] = set()  # announced, never seen in the store since
        self._lock = threading.Lock()
        self._written_at = 0.0  # monotonic time of the last successful rewrite
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._record = {"format": 1, "what": what, **_owner(), "started": time.time()}

    def __enter__(self) -> WriterSession:
        self._write()
        try:
            wait_for_gc(self.store, self.timing, self.notify)
        except BaseException:
            self.store.delete_session(self.id)
            raise
        self._thread = threading.Thread(target=self._refresh_loop, name="dsfs-session", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.store.delete_session(self.id)
        except (StoreUnavailable, StoreReadOnly, AccessDenied) as error:
            if exc[0] is None:
                raise
            # a failing writer keeps its own error; the stale session expires by itself
            log.debug("session %s left in %s: %s", self.id, self.store.display_url, error)

    def _write(self) -> None:
        with self._lock:
            if time.monotonic() - self._written_at > self.timing.session_ttl and self._written_at:
                # the object may have gone stale and gc may have ignored it: trust nothing seen so far
                self.unverified |= self.packs
            self._record["refreshed"] = time.time()
            self._record["packs"] = sorted(p.hex() for p in self.packs)
            data = json.dumps(self._record).encode()
            self.store.write_session(self.id, data)
            self._written_at = time.monotonic()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.timing.refresh):
            try:
                self._write()
            except Exception as error:  # a failed refresh is caught up by the next, and by confirm()
                log.debug("refresh of session %s failed: %s", self.id, error)
                continue

    def announce(self, pack_ids, verified: bool = True) -> None:
        """Tell gc that this writer relies on `pack_ids`, then wait out any gc that may not have
        seen it. After this returns, a pack found in the store stays there until this session
        ends. `verified=False` for packs this writer has not looked at since (an earlier run's)."""
        new = set(pack_ids) - self.packs
        if not new:
            return
        with self._lock:
            self.packs |= new
            if not verified:
                self.unverified |= new
        self._write()
        wait_for_gc(self.store, self.timing, self.notify)

    def seen(self, pack_id: bytes) -> None:
        """The writer found or wrote this announced pack in the store."""
        self.unverified.discard(pack_id)

    def confirm(self, packs=None, workers: int = 16) -> list[bytes]:
        """Right before a final record: renew the session, wait out any gc, then look for every
        announced pack (of `packs`, if given: those the record will reference) not seen since.
        Returns the ones that are gone (gc took them while this session was stale or before it
        adopted them); the caller must not reference them."""
        self._write()
        wait_for_gc(self.store, self.timing, self.notify)
        check = sorted(self.unverified if packs is None else self.unverified & set(packs))
        with ThreadPoolExecutor(max(1, min(workers, len(check) or 1)), thread_name_prefix="dsfs-confirm") as pool:
            present = list(pool.map(self.store.has_pack, check))
        missing = [p for p, ok in zip(check, present, strict=True) if not ok]
        for pack in check:
            if pack not in missing:
                self.seen(pack)
        return missing

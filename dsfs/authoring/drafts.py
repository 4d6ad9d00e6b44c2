"""Local authoring state: the current dataset, and what a draft has added, removed and uploaded.

Like clearml-data, authoring is stateful: `dsfs add` records local files against a draft, and
`dsfs upload` / `dsfs close` send them. That record lives on the authoring machine under
`$XDG_STATE_HOME/dsfs/` (the store only learns of a draft's files when it is closed):

    current.json           {"store": url, "id": id} of the last created/used dataset
    drafts/<id>.msgpack    DraftState below

    drafts/<id>.lock       held (flock) by the one command changing that draft: DraftLock

Every save writes a temp file, fsyncs and renames, so a killed command leaves the previous state,
never a torn one. Entries and chunks are recorded only after the packs they live in are in the
store: a resumed upload trusts exactly what is recorded, and re-chunking is deterministic, so it
re-sends nothing that was recorded.

A command that changes a draft (add, remove, upload, close, sync) loads its state, works and saves
it, possibly for minutes (an upload saves every couple of seconds). Two such commands at once would
each save their own copy and the last save would silently drop the other's changes, so each holds
the draft's lock for its whole duration: a second one waits up to LOCK_WAIT seconds, then refuses
naming the holder. The lock is an flock: the kernel releases it when its holder dies, however.

Local paths are kept as the operating system gave them: a name that is not UTF-8 is stored with
Python's surrogate escapes and read back to the same bytes (dataset paths are always UTF-8).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass, field

import msgpack

from dsfs import settings
from dsfs.errors import Conflict, CorruptData
from dsfs.fsutil import atomic_write
from dsfs.model import ChunkRef, Entry

LOCK_WAIT = 10.0  # seconds a command waits for another one changing the same draft


def get_current() -> dict | None:
    try:
        with open(os.path.join(settings.state_dir(), "current.json")) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def set_current(store_url: str, dataset_id: str) -> None:
    atomic_write(os.path.join(settings.state_dir(), "current.json"),
                 json.dumps({"store": store_url, "id": dataset_id}).encode())


@dataclass
class DraftState:
    """What a draft holds locally. `adds` maps dataset path -> local file path (not yet uploaded);
    `uploaded` maps dataset path -> Entry, and `origins` the local file each was read from (to send
    it again if gc removed its pack while the draft sat idle); `removals` are dataset paths to remove
    from the parents; `chunks` are the chunks in packs this draft relies on (for dedupe on resume),
    `packs` those packs' ids, `written` the ones it sent itself (the others were present already),
    and `new_bytes` their size."""

    id: str
    store: str
    adds: dict[str, str] = field(default_factory=dict)
    uploaded: dict[str, Entry] = field(default_factory=dict)
    removals: set[str] = field(default_factory=set)
    chunks: dict[bytes, ChunkRef] = field(default_factory=dict)
    packs: list[bytes] = field(default_factory=list)
    written: list[bytes] = field(default_factory=list)
    origins: dict[str, str] = field(default_factory=dict)
    new_bytes: int = 0

    @staticmethod
    def path_for(dataset_id: str) -> str:
        return os.path.join(settings.state_dir(), "drafts", f"{dataset_id}.msgpack")

    @classmethod
    def load(cls, dataset_id: str, store_url: str) -> DraftState:
        path = cls.path_for(dataset_id)
        try:
            with open(path, "rb") as f:
                raw = msgpack.unpackb(f.read(), raw=False, strict_map_key=False, unicode_errors="surrogateescape")
        except FileNotFoundError:
            return cls(id=dataset_id, store=store_url)
        except (ValueError, msgpack.UnpackException):
            raise CorruptData(f"local draft state {path} is corrupt; delete the draft and create it again") from None
        return cls(
            id=raw["id"], store=raw["store"], adds=raw["adds"],
            uploaded={e["p"]: Entry.from_wire(e) for e in raw["uploaded"]},
            removals=set(raw["removals"]),
            chunks={c[0]: ChunkRef.from_wire(c) for c in raw["chunks"]},
            packs=raw["packs"], written=raw.get("written", raw["packs"]), origins=raw.get("origins", {}),
            new_bytes=raw.get("new_bytes", 0),
        )

    def save(self) -> None:
        data = msgpack.packb({
            "id": self.id, "store": self.store, "adds": self.adds,
            "uploaded": [e.to_wire() for e in self.uploaded.values()],
            "removals": sorted(self.removals),
            "chunks": [c.to_wire() for c in self.chunks.values()],
            "packs": self.packs, "written": self.written, "origins": self.origins,
            "new_bytes": self.new_bytes,
        }, use_bin_type=True, unicode_errors="surrogateescape")
        atomic_write(self.path_for(self.id), data)

    # A dataset path is in at most one of adds, uploaded and removals: these keep it so.

    def stage_local(self, path: str, local: str) -> None:
        """`path` will be the local file `local` (read at upload)."""
        self.uploaded.pop(path, None)
        self.origins.pop(path, None)
        self.removals.discard(path)
        self.adds[path] = local

    def stage_entry(self, entry: Entry) -> None:
        """`entry.path` is this entry, nothing to upload (an external file)."""
        self.adds.pop(entry.path, None)
        self.origins.pop(entry.path, None)
        self.removals.discard(entry.path)
        self.uploaded[entry.path] = entry

    def stage_removal(self, path: str) -> None:
        self.adds.pop(path, None)
        self.uploaded.pop(path, None)
        self.origins.pop(path, None)
        self.removals.add(path)

    def forget_packs(self, lost: set[bytes]) -> list[str]:
        """Packs this draft relied on are gone (gc removed them while the draft sat idle longer than
        its grace period): forget them and their chunks, and put every uploaded file that used them
        back to be sent again. Returns the paths whose local file is no longer known (added before
        dsfs recorded origins): those must be added again."""
        self.packs = [p for p in self.packs if p not in lost]
        self.written = [p for p in self.written if p not in lost]
        self.chunks = {d: r for d, r in self.chunks.items() if r.pack not in lost}
        unknown = []
        for path, entry in list(self.uploaded.items()):
            if any(ref.pack in lost for ref in entry.chunks):
                del self.uploaded[path]
                local = self.origins.pop(path, None)
                if local is None:
                    unknown.append(path)
                else:
                    self.adds[path] = local
        return unknown

    def discard(self) -> None:
        """Forget the draft (closed or deleted): its state, and its lock file (DraftLock: a command
        still holding or waiting for the removed file notices)."""
        for path in (self.path_for(self.id), DraftLock.path_for(self.id)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


class DraftLock:
    """The exclusive right to change one draft's local state, for one command (module docstring).

    `with DraftLock(id, "upload vision/cats@1.0.1"):` waits up to `wait` seconds for another holder,
    then raises Conflict naming it (pid, host, command, since when). The lock file records its
    holder for that message; it goes with the draft's state (DraftState.discard), and a waiter that
    locked a file removed meanwhile locks the new one instead."""

    @staticmethod
    def path_for(dataset_id: str) -> str:
        return os.path.join(settings.state_dir(), "drafts", f"{dataset_id}.lock")

    def __init__(self, dataset_id: str, what: str, wait: float | None = None):
        self.path = self.path_for(dataset_id)
        self.id = dataset_id
        self.what = what
        self.wait = LOCK_WAIT if wait is None else wait
        self.fd: int | None = None

    def __enter__(self) -> DraftLock:
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        deadline = time.monotonic() + self.wait
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                if time.monotonic() >= deadline:
                    raise Conflict(f"draft {self.id} is being changed by another dsfs command ({holder}); "
                                   f"wait for it to finish, or stop it, then run this again") from None
                time.sleep(0.05)
                continue
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # removed by its last holder while we waited: lock the current file
        self.fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": self.what,
                                  "since": time.strftime("%H:%M:%S")}).encode(), 0)
        return self

    def __exit__(self, *exc) -> None:
        assert self.fd is not None, "__enter__ took the lock"
        os.close(self.fd)  # releases the flock
        self.fd = None


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']}: {info['command']}, since {info['since']}"
    except (ValueError, KeyError, TypeError, OSError):
        return "its pid is not recorded yet"

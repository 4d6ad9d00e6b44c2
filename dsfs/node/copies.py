"""The cached copies `dsfs get` hands out: what keeps them true, the links into them, their space.

Layout under the cache (the copies themselves are laid out by dsfs.node.materialize.get_copy):

    files/<ab>/<key>       one read-only file per distinct content (dsfs.node.materialize.content_key)
    copies/<id>/           a version's tree of hardlinks into files/
    copies/<id>.manifest   the copy's files as laid out, in path order: path, inode, size, mtime, mode
                           (a msgpack header, then a row per file: read and written as streams)
    links                  the symlinks `get --link` made (JSON list of paths)

and the LMDB table `files`: key -> inode, size, mtime and mode of files/<key> when it was written.

Copies share inodes, so a write into one copy's file (root ignores the 0444 mode; its owner can chmod
first) changes that content for every version whose copy links it, and moves the inode's mtime (and
often its size) for all of them. So a copy is trusted only while every file in it stats as recorded:
reusing one walks it and compares inode, size, mtime and mode with its manifest, and a file that
differs, is missing or was added sends `get` to lay it out again. The check never hashes: re-hashing
every file on every use is ClearML's most complained-about cost, and `dsfs verify` is the command that
hashes. What it cannot see is a write that also puts size and mtime back (`touch -r`).

A repair trusts no inode it cannot vouch for: a content file whose stat does not match its record is
materialized again, to a new inode renamed over its name (the altered inode is left to the copies that
still link it; they see its changed mtime at their next `get`), and each wrong entry of the copy is
relinked by an atomic rename, so a job reading the copy never finds a file missing.

Locks: laying out a copy holds its version's lock and `tmp/copies.lock` shared; `prune` and `clear`
hold `copies.lock` exclusively, so they never delete a content file that a build is about to link, and
anything half-built they find was left by a killed process.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import shutil
import stat as stat_mod
import struct
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import msgpack

from dsfs.errors import InvalidState
from dsfs.fsutil import atomic_write, temp_name
from dsfs.node.cache import Cache, open_db

MANIFEST_SUFFIX = ".manifest"
MANIFEST_FORMAT = 2  # 1 (no header): one msgpack array of every row, read whole
_RECORD = struct.Struct(">QQqI")  # inode, size, mtime_ns, mode


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode


def _copies_root(cache: Cache) -> str:
    return os.path.join(cache.root, "copies")


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# -- checking a copy -----------------------------------------------------------------------------

def intact(final: str) -> bool:
    """Whether the copy at `final` is as it was laid out: every file stats as its manifest records,
    none is missing and none was added (one lstat per file, no hashing). Marks the copy as used: the
    manifest's mtime is the copy's last use, which `prune` removes copies by. The manifest and a walk
    of the copy are read side by side in path order, so memory stays flat whatever the file count."""
    manifest = final + MANIFEST_SUFFIX
    try:
        with open(manifest, "rb") as f:
            rows = msgpack.Unpacker(f, use_list=False, read_size=1 << 20)
            if next(rows, None) != {"manifest": MANIFEST_FORMAT}:
                return False  # a manifest of an older dsfs: the copy is laid out again
            if not stat_mod.S_ISDIR(os.lstat(final).st_mode):
                return False
            for row, (rel, st) in itertools.zip_longest(rows, _walk(final)):
                if row is None or rel is None or row[0] != rel or tuple(row[1:]) != _signature(st):
                    return False
    except (OSError, ValueError, TypeError, IndexError, msgpack.UnpackException):
        return False  # no copy, no manifest (a copy from before manifests, a killed build), or a damaged one
    with contextlib.suppress(OSError):
        os.utime(manifest)
    return True


def _walk(root: str) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry under root that is not a folder (symlinks included, never followed) with its lstat,
    in path order (the order of a version's files and of a manifest's rows): depth first, a folder's
    entries sorted with a '/' after each subfolder's name, which is where the paths below it sort."""
    stack = [("", iter(_sorted_entries(root)))]
    while stack:
        rel_dir, entries = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
        try:
            if entry.is_dir(follow_symlinks=False):
                stack.append((rel, iter(_sorted_entries(entry.path))))
            else:
                yield rel, entry.stat(follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            continue  # gone or no longer a folder since its folder was listed (a repair's doing)


def _sorted_entries(folder: str) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted(it, key=lambda e: e.name + "/" if e.is_dir(follow_symlinks=False) else e.name)


def _scan(root: str) -> tuple[dict[str, os.stat_result], list[str]]:
    """Every entry under root that is not a folder (symlinks included, never followed), with its
    lstat, and every folder; paths relative to root, '/'-separated."""
    files, folders = {}, []
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        with os.scandir(os.path.join(root, rel_dir)) as it:
            for entry in it:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                if entry.is_dir(follow_symlinks=False):
                    folders.append(rel)
                    pending.append(rel)
                else:
                    files[rel] = entry.stat(follow_symlinks=False)
    return files, folders


# -- the content files ---------------------------------------------------------------------------

class ContentFiles:
    """The shared content files under files/ and the LMDB records that vouch for them. A record is
    the file's stat when this cache wrote it; a file whose stat differs (written through a copy's
    link, replaced, chmod-ed) or that has no record (left by a killed build, or by a dsfs from before
    the records) is not used until it has been written again."""

    def __init__(self, cache: Cache):
        self.cache = cache
        self.db = open_db(cache.env, b"files")

    def path(self, key: str) -> str:
        return os.path.join(self.cache.root, "files", key[:2], key)

    def trusted(self, keys) -> dict[str, os.stat_result]:
        """key -> stat of each of `keys` whose file is as recorded."""
        with self.cache.env.begin(db=self.db) as txn:
            records = {key: txn.get(key.encode()) for key in keys}
        out = {}
        for key, record in records.items():
            if record is None:
                continue
            try:
                st = os.lstat(self.path(key))
            except FileNotFoundError:
                continue
            if stat_mod.S_ISREG(st.st_mode) and _RECORD.unpack(record) == _signature(st):
                out[key] = st
        return out

    def record(self, keys) -> dict[str, os.stat_result]:
        """Record the files of `keys` as they are now (just written); returns key -> stat."""
        stats = {key: os.lstat(self.path(key)) for key in keys}
        if stats:
            with self.cache.env.begin(write=True, db=self.db) as txn:
                for key, st in stats.items():
                    txn.put(key.encode(), _RECORD.pack(*_signature(st)))
        return stats

    def forget(self, keys=None) -> None:
        """Drop the records of `keys` (all records when None)."""
        with self.cache.env.begin(write=True, db=self.db) as txn:
            if keys is None:
                txn.drop(self.db, delete=False)
            for key in keys or ():
                txn.delete(key.encode())


# -- laying out a copy ---------------------------------------------------------------------------

@contextlib.contextmanager
def building(cache: Cache, dataset_id: str):
    """Held while a version's copy is built or repaired: its own lock (a second `get` of the version
    waits, then reuses the copy) and the copies lock, shared (prune and clear wait for it)."""
    tmp = os.path.join(cache.root, "tmp")
    with open(os.path.join(tmp, f"copy-{dataset_id}.lock"), "w") as one, \
            open(os.path.join(tmp, "copies.lock"), "w") as every:
        fcntl.flock(one, fcntl.LOCK_EX)
        fcntl.flock(every, fcntl.LOCK_SH)
        yield


@contextlib.contextmanager
def _exclusive(cache: Cache):
    with open(os.path.join(cache.root, "tmp", "copies.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def lay_out(cache: Cache, final: str, entries: Iterable[tuple[str, str, os.stat_result]]) -> None:
    """Make the copy at `final` hold exactly `entries` (path in the copy, content file, that file's
    stat; in path order) as hardlinks, then write its manifest. A new copy is built beside, from
    the entries as a stream, and renamed into place; an existing one is repaired in place: what it
    should not hold is removed, and each entry that is not the content file's inode is relinked by a
    rename over it (both as streams: _repaired)."""
    os.makedirs(os.path.dirname(final), exist_ok=True)
    if os.path.islink(final) or (os.path.lexists(final) and not os.path.isdir(final)):
        os.unlink(final)
    if not os.path.isdir(final):
        tmp = f"{final}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)

        def linked():  # each file linked into the new copy as its manifest row is written
            made = ""
            for rel, source, _ in entries:
                folder = rel.rsplit("/", 1)[0] if "/" in rel else ""
                if folder != made:  # files come a folder at a time
                    os.makedirs(os.path.join(tmp, folder), exist_ok=True)
                    made = folder
                yield rel, _link(source, os.path.join(tmp, rel))

        try:
            os.makedirs(tmp)  # an empty version still gets a folder
            _write_manifest(cache, final, linked())
            os.rename(tmp, final)
        except BaseException:  # a full disk, say: no half-built copy left behind
            shutil.rmtree(tmp, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(final + MANIFEST_SUFFIX)
            raise
        return
    _write_manifest(cache, final, _repaired(final, entries))


def _repaired(final: str, entries: Iterable[tuple[str, str, os.stat_result]]
              ) -> Iterator[tuple[str, os.stat_result]]:
    """Repair the copy at `final` in place as `entries` (in path order) come, yielding each (path,
    stat) as it is right: a walk of the copy in path order is merged with them side by side, so
    memory stays flat whatever the file count. What the copy holds below the next entry is not the
    version's and is removed (a symlink where a folder belongs sorts before that folder's files, so
    it is gone before anything is linked under its name); an entry whose file is missing or is
    another inode is relinked by a rename over it. Folders left empty are removed."""
    found = _walk(final)
    have = next(found, None)
    emptied: set[str] = set()

    def remove_extras_below(rel: str | None) -> None:  # in the copy, not in the version (None: all left)
        nonlocal have
        while have is not None and (rel is None or have[0] < rel):
            _unlink(os.path.join(final, have[0]))
            emptied.add(os.path.dirname(have[0]))
            have = next(found, None)

    for rel, source, st in entries:
        remove_extras_below(rel)
        if have is not None and have[0] == rel:
            right = (have[1].st_dev, have[1].st_ino) == (st.st_dev, st.st_ino)
            have = next(found, None)
            if right:
                yield rel, st
                continue
        target = os.path.join(final, rel)
        if os.path.isdir(target) and not os.path.islink(target):  # a folder where the file belongs
            shutil.rmtree(target)  # (the walk passes over its files, gone, as vanished)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = temp_name(target, ".dsfs-tmp")
        _unlink(tmp)
        linked = _link(source, tmp)
        os.replace(tmp, target)
        _unlink(tmp)  # rename() between two links of one inode does nothing, leaving tmp
        yield rel, linked
    remove_extras_below(None)
    for folder in sorted(emptied, key=len, reverse=True):  # deepest first, then up while empty
        while folder:
            try:
                os.rmdir(os.path.join(final, folder))
            except OSError:  # not empty (or gone)
                break
            folder = os.path.dirname(folder)


def _link(source: str, dest: str) -> os.stat_result:
    """Hardlink the content file `source` at `dest`; returns the stat of what was linked, which the
    manifest records. Another `get` may be writing the same content file at that moment (versions
    share content), renaming its own inode over the name: Linux's link(2) then fails with ENOENT
    when it resolved the inode the rename just unlinked (4 in 20,000 links here, racing renames),
    and a stat taken before the link can be of the other inode. So a link that finds no file is
    tried again while the name exists, and the stat is of the link made."""
    for attempt in itertools.count(1):
        try:
            os.link(source, dest)
            break
        except FileNotFoundError:
            if attempt == _LINK_TRIES or not os.path.lexists(source):
                raise
    return os.lstat(dest)


_LINK_TRIES = 5


def _write_manifest(cache: Cache, final: str, files: Iterable[tuple[str, os.stat_result]]) -> None:
    """The copy's manifest, written as `files` (path in the copy, stat; in path order) come: a
    header, then a row per file (path, inode, size, mtime, mode). atomic_write's: a killed build
    leaves the old manifest or none."""
    pack = msgpack.Packer().pack
    rows = (pack([rel, *_signature(st)]) for rel, st in files)
    atomic_write(final + MANIFEST_SUFFIX, itertools.chain([pack({"manifest": MANIFEST_FORMAT})], rows),
                 tmp_dir=os.path.join(cache.root, "tmp"))


# -- links made by `get --link` ------------------------------------------------------------------

def register_link(cache: Cache, link: str) -> None:
    """Remember a symlink `get --link` made into a copy, so that `cache clear` and `cache prune` know
    a job may depend on it. Registered links that no longer point into the copies are dropped here."""
    link = os.path.abspath(link)
    with cache.space_checked(), open(os.path.join(cache.root, "tmp", "links.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        kept = [p for p in _registered(cache) if p != link and _linked_copy(cache, p)]
        atomic_write(os.path.join(cache.root, "links"), json.dumps(kept + [link]).encode(),
                     tmp_dir=os.path.join(cache.root, "tmp"))


def links_in(cache: Cache) -> dict[str, str]:
    """Registered links that point into an existing copy: link -> the copy's version id. A link
    already dangling stays registered (a later `get` of its version mends it) but is not listed."""
    out = {}
    for link in _registered(cache):
        copy_id = _linked_copy(cache, link)
        if copy_id and os.path.isdir(os.path.join(_copies_root(cache), copy_id)):
            out[link] = copy_id
    return out


def _registered(cache: Cache) -> list[str]:
    try:
        with open(os.path.join(cache.root, "links"), "rb") as f:
            return [p for p in json.load(f) if isinstance(p, str)]
    except (OSError, ValueError, TypeError):
        return []


def _linked_copy(cache: Cache, link: str) -> str | None:
    """The id of the copy `link` points into, or None when it is no symlink into the copies."""
    if not os.path.islink(link):
        return None
    rel = os.path.relpath(os.path.realpath(link), os.path.realpath(_copies_root(cache)))
    if rel == os.curdir or rel == os.pardir or rel.startswith(os.pardir + os.sep):
        return None
    return rel.split(os.sep)[0]


# -- space ---------------------------------------------------------------------------------------

@dataclass
class Usage:
    copies: int = 0
    bytes: int = 0


@dataclass
class Pruned:
    freed: int = 0
    kept: dict[str, str] = field(default_factory=dict)  # link -> copy id, of copies kept over target


def usage(cache: Cache) -> Usage:
    """The copies and the bytes they hold on disk: every inode under files/ and copies/ counted once
    (copies share content files; a file replaced in one copy is an inode of its own)."""
    sizes = {}
    for sub in ("files", "copies"):
        for folder, _, names in os.walk(os.path.join(cache.root, sub)):
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    st = os.lstat(os.path.join(folder, name))
                    sizes[(st.st_dev, st.st_ino)] = st.st_size
    return Usage(len(_copy_ids(cache)), sum(sizes.values()))


def _copy_ids(cache: Cache) -> list[str]:
    root = _copies_root(cache)
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    return [n for n in names if "." not in n and os.path.isdir(os.path.join(root, n))]


def prune(cache: Cache, target: int) -> Pruned:
    """Bring chunks and copies together down to `target` bytes. Chunks go first (they rebuild a copy
    without the network, and removing a copy takes away a path a job may have been handed); then what
    killed builds and removed copies left; then whole copies, least recently used by `get` first. A
    copy that a registered `get --link` symlink points to is never removed here, whatever the target:
    a size trim must not break a job's path (`cache clear --force` does, and says so); `kept` names
    those links when the cache stays over target."""
    with _exclusive(cache):
        held = usage(cache).bytes
        freed = cache.evict(max(target - held, 0), keep_recent=False)
        over = cache.used_bytes() + held - target
        if over <= 0:
            return Pruned(freed)
        removed = _sweep_leftovers(cache)
        freed, over = freed + removed, over - removed
        linked = links_in(cache)
        held_by_links = set(linked.values())
        content = {inode: path for inode, (path, _, _) in _content_inodes(cache).items()}
        for copy_id in _by_last_use(cache):
            if over <= 0:
                break
            if copy_id not in held_by_links:
                removed = _remove_copy(cache, copy_id, content)
                freed, over = freed + removed, over - removed
        return Pruned(freed, linked if over > 0 else {})


def _by_last_use(cache: Cache) -> list[str]:
    """Copy ids, least recently used first (a copy without a manifest counts as never used)."""
    root = _copies_root(cache)
    used = []
    for copy_id in _copy_ids(cache):
        try:
            used.append((os.stat(os.path.join(root, copy_id + MANIFEST_SUFFIX)).st_mtime_ns, copy_id))
        except FileNotFoundError:
            used.append((0, copy_id))
    return [copy_id for _, copy_id in sorted(used)]


def _content_inodes(cache: Cache) -> dict[tuple[int, int], tuple[str, int, int]]:
    """(dev, inode) -> (path, links, size) of every content file."""
    out = {}
    for folder, _, names in os.walk(os.path.join(cache.root, "files")):
        for name in names:
            path = os.path.join(folder, name)
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(path)
                out[(st.st_dev, st.st_ino)] = (path, st.st_nlink, st.st_size)
    return out


def _sweep_leftovers(cache: Cache) -> int:
    """Remove, under the exclusive lock (no build runs), copies a killed build left half-made, manifests
    without a copy, and content files that no copy links (one link: their own name). Returns bytes freed."""
    root = _copies_root(cache)
    freed = 0
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(root):
            path = os.path.join(root, name)
            if ".tmp-" in name:
                shutil.rmtree(path, ignore_errors=True)
            elif name.endswith(MANIFEST_SUFFIX) and not os.path.isdir(path[:-len(MANIFEST_SUFFIX)]):
                freed += os.lstat(path).st_size
                _unlink(path)
    orphans = [(path, size) for path, links, size in _content_inodes(cache).values() if links == 1]
    for path, size in orphans:
        _unlink(path)
        freed += size
    ContentFiles(cache).forget([os.path.basename(p) for p, _ in orphans])
    return freed


def _remove_copy(cache: Cache, copy_id: str, content: dict[tuple[int, int], str]) -> int:
    """Remove one copy, and the content files (`content`: (dev, inode) -> path) only it linked.
    Returns bytes freed."""
    final = os.path.join(_copies_root(cache), copy_id)
    files, _ = _scan(final)
    links = Counter((st.st_dev, st.st_ino) for st in files.values())
    inodes = {(st.st_dev, st.st_ino): st for st in files.values()}
    shutil.rmtree(final, ignore_errors=True)
    freed = 0
    with contextlib.suppress(FileNotFoundError):
        freed += os.lstat(final + MANIFEST_SUFFIX).st_size
        os.unlink(final + MANIFEST_SUFFIX)
    unused = []
    for inode, count in links.items():
        left = inodes[inode].st_nlink - count
        if left <= 0:  # an inode of this copy alone (a file replaced in it)
            freed += inodes[inode].st_size
        elif left == 1 and inode in content:  # its content file, which no other copy links
            unused.append(content[inode])
            freed += inodes[inode].st_size
    for path in unused:
        _unlink(path)
    ContentFiles(cache).forget([os.path.basename(p) for p in unused])
    return freed


def clear(cache: Cache, force: bool = False) -> tuple[int, dict[str, str]]:
    """Remove every copy and content file; returns the bytes freed and the links left dangling
    (link -> copy id). While registered `get --link` symlinks point into a copy this refuses with
    InvalidState, removing nothing, unless `force`."""
    with _exclusive(cache):
        linked = links_in(cache)
        if linked and not force:
            names = ", ".join(sorted(linked)[:5]) + (" ..." if len(linked) > 5 else "")
            raise InvalidState(f"{len(linked)} symlink(s) made by `dsfs get --link` point into the cached copies "
                               f"({names}); remove them, or pass --force to clear anyway and leave them dangling")
        freed = usage(cache).bytes
        for sub in ("copies", "files"):
            shutil.rmtree(os.path.join(cache.root, sub), ignore_errors=True)
        ContentFiles(cache).forget()
    return freed, linked

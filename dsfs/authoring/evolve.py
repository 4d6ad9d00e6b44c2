"""Dataset evolution: what changed in a folder (sync), between two versions (compare), and the
flattened merge of several versions (squash), all without moving chunk bytes that already exist.

- Sync merges a scan of a local folder with the parents' file table (dsfs.lineage.filetable), both in
  path order: size and mtime first (cheap), and a content hash only where size matches but mtime does
  not, to tell a touched file from a changed one. Upload then sends only new chunks, so
  a 1%-changed folder costs about 1% to sync.
- Compare merge-joins two merged views streamed in path order (dsfs.lineage.viewindex), so two versions of
  any size, related or not, are compared in flat memory.
- Squash writes one change-set holding every entry of the merged view: the chunk refs point into the
  packs that already hold the bytes, so no file data is downloaded or uploaded. The versions whose
  packs it borrows are recorded as its `sources` and cannot be deleted while it exists.
"""

from __future__ import annotations

import errno
import os
import stat as stat_mod
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from dsfs import paths
from dsfs.errors import Conflict, LocalFileNotFound
from dsfs.lineage.filetable import EXECUTABLE, FileTable, TableBuilder
from dsfs.lineage.viewindex import NodeDb, merged_entries
from dsfs.model import changeset_written
from dsfs.store.layout import Store
from dsfs.store.packs import file_digest


@dataclass
class FolderChanges:
    """What a sync found, counted: the paths themselves go from the folder's scan straight into the
    draft (a sync of millions of files holds none of them; the draft lists them)."""
    added: int = 0
    modified: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[str] = field(default_factory=list)  # why each skipped local file was skipped

    @property
    def empty(self) -> bool:
        return not (self.added or self.modified or self.removed)


def folder_diff(base: FileTable, folder: str, changes: FolderChanges, dataset_path: str | None = "",
                follow_symlinks: bool = False, warn: Callable[[str], None] | None = None,
                wildcards: list[str] | None = None) -> Iterator[tuple[str, str | None]]:
    """How `folder` (mapped under dataset_path) differs from `base`, the parents' file table, as a
    stream in path order: (dataset path, local path) of each file to add or replace, (dataset path,
    None) of each to remove; each counted into `changes`. Files of `base` outside dataset_path are
    not considered (a sync of a subfolder). What the scan skipped (scan_folder's rules) is told to
    `warn` as it is found, and listed in `changes.skipped`. wildcards: only files matching them
    (paths.matches, relative to the folder) are compared, on both sides: others are left as they are.

    The scan and the table are both in path order, so they are merged side by side: a table path
    that the scan passes without meeting is removed. Memory stays flat whatever the file count."""
    if not os.path.isdir(folder):
        raise LocalFileNotFound(f"no such folder: {folder}")
    root = paths.folder(dataset_path)
    prefix = root + "/" if root else ""
    sizes, mtimes, flags = base.sizes, base.mtimes, base.flags
    row = base.seek(prefix.encode())
    here = base.path(row) if row < base.n else None  # the path of `row`, decoded once

    def step() -> None:
        nonlocal row, here
        row += 1
        here = base.path(row) if row < base.n else None

    def skipped(message: str) -> None:
        changes.skipped.append(message)
        if warn is not None:
            warn(message)

    def chosen(path: str) -> bool:
        return not wildcards or paths.matches(path[len(prefix):], wildcards)

    def removed_below(path: str | None) -> Iterator[tuple[str, None]]:
        while here is not None and here.startswith(prefix) and (path is None or here < path):
            if chosen(here):
                changes.removed += 1
                yield here, None
            step()

    last = ""
    for rel, local, st in scan_folder(folder, prefix, follow_symlinks, skipped):
        if not chosen(rel):
            continue
        if rel <= last:  # the merge is only right in path order: never guess a removal
            raise AssertionError(f"the scan of {printable(folder)} gave {rel!r} after {last!r}")
        last = rel
        yield from removed_below(rel)
        if here != rel:
            changes.added += 1
            yield rel, local
            continue
        same_mode = bool(st.st_mode & 0o111) == bool(flags[row] & EXECUTABLE)
        if st.st_size == sizes[row] and st.st_mtime_ns == mtimes[row] and same_mode:
            changes.unchanged += 1
        elif st.st_size == sizes[row] and same_mode and file_digest(local) == base.digest(row):
            changes.unchanged += 1  # touched, not changed
        else:
            changes.modified += 1
            yield rel, local
        step()
    yield from removed_below(None)


def scan_folder(folder: str, rel_folder: str = "", follow_symlinks: bool = False,
                warn: Callable[[str], None] = lambda message: None, recursive: bool = True):
    """(dataset path, local path, stat) of every regular file under `folder`, in path order, read by
    the input rules that `add` and `sync` share (docs/decisions.md, "Authoring input"):

    - a name that is not UTF-8 is skipped (dataset paths are UTF-8), and `warn` is told;
    - names are stored NFC; two names of one folder that differ only in their Unicode form would
      become one dataset path: Conflict naming both, nothing is added;
    - a symlink is followed if its target is inside `folder` (the local path is then the target's),
      skipped with a warning if outside unless follow_symlinks; broken links and loops are skipped
      with a warning; anything but regular files and folders (FIFOs, sockets, devices) too.

    Not recursive: the files directly in `folder` only. One stat per file, from scandir. Names from
    a listing are never '', '.' or '..' and hold no '/' or NUL: only their encoding and Unicode form
    need checking, once per folder for a clean one (NFC never composes across a NUL, so the joined
    names are NFC iff each one is)."""
    top = os.path.abspath(folder)
    root = os.path.realpath(top)
    yield from _scan(top, root, rel_folder, root, follow_symlinks, warn, frozenset([root]) if recursive else None)


def _scan(folder: str, real: str, rel_folder: str, root: str, follow: bool, warn, ancestors: frozenset | None):
    """scan_folder in `folder`, whose real path is `real`; `ancestors` are the real paths of the
    folders above (None: do not descend)."""
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: _path_key(e, e.name))
    joined = "\0".join(e.name for e in entries)
    if joined.isascii() or (is_utf8(joined) and unicodedata.is_normalized("NFC", joined)):
        named = [(e, e.name) for e in entries]
    else:
        named = sorted(_usable(entries, warn), key=lambda pair: _path_key(*pair))
    for entry, name in named:
        rel = rel_folder + name
        if entry.is_symlink():
            try:
                local = os.path.realpath(entry.path, strict=True)
                st = os.stat(local)
            except OSError as exc:
                warn(f"skipped {printable(entry.path)}: " + ("a symlink loop" if exc.errno == errno.ELOOP
                                                          else "a broken symlink"))
                continue
            if not (follow or local == root or local.startswith(root + "/")):
                warn(f"skipped {printable(entry.path)}: a symlink to {printable(local)}, outside {printable(root)} "
                     f"(--follow-symlinks follows it)")
                continue
            is_dir, target = stat_mod.S_ISDIR(st.st_mode), local
        elif entry.is_dir(follow_symlinks=False):
            is_dir, target, st = True, f"{real}/{entry.name}", None
        else:
            st = entry.stat(follow_symlinks=False)
            is_dir, target = False, entry.path
        if is_dir:
            if ancestors is None:
                continue
            if target in ancestors:
                warn(f"skipped {printable(entry.path)}: a symlink loop (it leads back to {printable(target)})")
                continue
            yield from _scan(entry.path if st is None else target, target, rel + "/", root, follow, warn,
                             ancestors | {target})
        else:
            assert st is not None, "stat'ed unless a folder"
            if stat_mod.S_ISREG(st.st_mode):
                yield rel, target, st
            else:
                warn(f"skipped {printable(entry.path)}: not a regular file")


def _path_key(entry: os.DirEntry, name: str) -> str:
    """Where an entry's paths sort among its folder's: a folder (or a symlink to one) with a '/'
    after its name, so that files come in path order (the order of a version's file table, which
    sync merges them with): "a.txt" before "a/b", though the name "a" sorts before "a.txt"."""
    try:
        return name + "/" if entry.is_dir() else name
    except OSError:  # a symlink loop: skipped by the scan, wherever it sorts
        return name


def is_utf8(text: str) -> bool:
    try:
        text.encode()
        return True
    except UnicodeEncodeError:  # os.scandir gives undecodable bytes as surrogate escapes
        return False


def _usable(entries, warn) -> list:
    """(entry, NFC name) of the entries of one folder whose names can be dataset paths, with a
    warning for each other one; Conflict if two names differ only in their Unicode form."""
    seen: dict[str, os.DirEntry] = {}
    for entry in entries:
        if not is_utf8(entry.name):
            warn(f"skipped {printable(entry.path)}: its name is not valid UTF-8 (rename it to add it)")
            continue
        name = unicodedata.normalize("NFC", entry.name)
        if name in seen:
            raise Conflict(f"{printable(seen[name].path)} and {printable(entry.path)} differ only in their Unicode "
                           f"form (NFC/NFD) and would be one file {name!r} in the dataset; rename one of them")
        seen[name] = entry
    return [(entry, name) for name, entry in seen.items()]


def printable(local_path: str) -> str:
    """A local path for a message: undecodable bytes as \\xNN escapes, not as surrogates that
    cannot be printed."""
    return local_path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass
class Comparison:
    added: list[tuple[str, int]] = field(default_factory=list)
    removed: list[tuple[str, int]] = field(default_factory=list)
    modified: list[tuple[str, int, int]] = field(default_factory=list)
    unchanged: int = 0

    def summary(self) -> dict:
        return {"added": len(self.added), "removed": len(self.removed), "modified": len(self.modified),
                "unchanged": self.unchanged,
                "added_bytes": sum(s for _, s in self.added), "removed_bytes": sum(s for _, s in self.removed),
                "modified_bytes": sum(new for _, _, new in self.modified)}


def compare(store: Store, cache: NodeDb, source_id: str, target_id: str) -> Comparison:
    """What changes from source to target (both final; related or not), gathered in lists (the
    command line streams `differences` instead)."""
    result = Comparison()
    for change, path, old, new in differences(store, cache, source_id, target_id):
        if change == "added":
            result.added.append((path, new))
        elif change == "removed":
            result.removed.append((path, old))
        elif change == "modified":
            result.modified.append((path, old, new))
        else:
            result.unchanged += 1
    return result


def differences(store: Store, cache: NodeDb, source_id: str, target_id: str) -> Iterator[tuple[str, str, int, int]]:
    """(change, path, size in source, size in target) of every path of either version, in path
    order: change is added, removed, modified or unchanged (a size is 0 where that side has no such
    file). The two merged views are read side by side as streams, so memory stays flat."""
    src = merged_entries(store, cache, source_id, chunks=False)
    dst = merged_entries(store, cache, target_id, chunks=False)
    a, b = next(src, None), next(dst, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a.path < b.path):
            assert a is not None, "the loop runs while either is left"
            yield "removed", a.path, a.size, 0
            a = next(src, None)
        elif a is None or b.path < a.path:
            yield "added", b.path, 0, b.size
            b = next(dst, None)
        else:
            yield ("unchanged" if a.same_content(b) else "modified"), a.path, a.size, b.size
            a, b = next(src, None), next(dst, None)


def squash_parts(store: Store, cache: NodeDb, ids: list[str], where: str, out) -> TableBuilder:
    """The merged view of `ids` overlaid in order (a later version wins on a path), in one pass over
    the merged stream: its change-set written to `out` (a ChangeSpool) and its file table, being
    made (checked: no path is both a file and a folder; raises Conflict naming `where`; its
    `packs` are those its files' chunks are in)."""
    merged = ((entry, None) for entry in merged_entries(store, cache, *ids))
    return FileTable.empty().child(changeset_written(out, merged), where)

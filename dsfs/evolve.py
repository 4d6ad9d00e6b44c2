"""Dataset evolution: what changed in a folder (sync), between two versions (compare), and the
flattened merge of several versions (squash), all without moving chunk bytes that already exist.

- Sync compares a local folder with the parents' merged view, read from their file table
  (dsfs.filetable): size and mtime first (cheap), and a content hash only where size matches but
  mtime does not, to tell a touched file from a changed one. Upload then sends only new chunks, so
  a 1%-changed folder costs about 1% to sync.
- Compare merge-joins two merged views streamed in path order (dsfs.viewindex), so two versions of
  any size, related or not, are compared in flat memory.
- Squash writes one change-set holding every entry of the merged view: the chunk refs point into the
  packs that already hold the bytes, so no file data is downloaded or uploaded. The versions whose
  packs it borrows are recorded as its `sources` and cannot be deleted while it exists.
"""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass, field

from . import paths
from .cache import Cache
from .errors import LocalFileNotFound
from .filetable import EXECUTABLE, FileTable
from .model import Entry
from .packs import file_digest
from .store import Store
from .viewindex import merged_entries


@dataclass
class FolderChanges:
    added: dict[str, str] = field(default_factory=dict)  # dataset path -> local path
    modified: dict[str, str] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0

    @property
    def empty(self) -> bool:
        return not (self.added or self.modified or self.removed)


def folder_changes(base: FileTable, folder: str, dataset_path: str = "") -> FolderChanges:
    """How `folder` (mapped under dataset_path) differs from `base`, the parents' file table.
    Files of `base` outside dataset_path are not considered (a sync of a subfolder)."""
    if not os.path.isdir(folder):
        raise LocalFileNotFound(f"no such folder: {folder}")
    root = paths.folder(dataset_path)
    prefix = root + "/" if root else ""
    changes = FolderChanges()
    seen = set()
    sizes, mtimes, flags = base.sizes, base.mtimes, base.flags
    for rel, local, st in _walk_files(os.path.abspath(folder), prefix):
        seen.add(rel)
        row = base.find(rel)
        if row is None:
            changes.added[rel] = local
            continue
        same_mode = bool(st.st_mode & 0o111) == bool(flags[row] & EXECUTABLE)
        if st.st_size == sizes[row] and st.st_mtime_ns == mtimes[row] and same_mode:
            changes.unchanged += 1
        elif st.st_size == sizes[row] and same_mode and file_digest(local) == base.digest(row):
            changes.unchanged += 1  # touched, not changed
        else:
            changes.modified[rel] = local
    changes.removed = [path for path in base.paths if path not in seen and path.startswith(prefix)]
    return changes


def _walk_files(folder: str, rel_folder: str):
    """(dataset path, absolute path, stat) of every regular file under folder (symlinks to files
    followed, as add_files does); one stat per file, from scandir. Names from a listing are never '',
    '.' or '..' and hold no '/' or NUL: only their Unicode form may need normalizing, checked once per
    folder (NFC never composes across a NUL, so the joined names are NFC iff each one is)."""
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    nfc = unicodedata.is_normalized("NFC", "\0".join(e.name for e in entries))
    for entry in entries:
        rel = rel_folder + (entry.name if nfc else paths.normalize(entry.name))
        if entry.is_dir(follow_symlinks=False):
            yield from _walk_files(entry.path, rel + "/")
        elif entry.is_file():
            yield rel, entry.path, entry.stat()


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


def compare(store: Store, cache: Cache, source_id: str, target_id: str) -> Comparison:
    """What changes from source to target (both final; related or not)."""
    result = Comparison()
    src = merged_entries(store, cache, source_id)
    dst = merged_entries(store, cache, target_id)
    a, b = next(src, None), next(dst, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a.path < b.path):
            result.removed.append((a.path, a.size))
            a = next(src, None)
        elif a is None or b.path < a.path:
            result.added.append((b.path, b.size))
            b = next(dst, None)
        else:
            if a.same_content(b):
                result.unchanged += 1
            else:
                result.modified.append((a.path, a.size, b.size))
            a, b = next(src, None), next(dst, None)
    return result


def squash_entries(store: Store, cache: Cache, ids: list[str]) -> list[Entry]:
    """The merged view of `ids` overlaid in order (a later version wins on a path), as entries."""
    from .viewindex import overlay

    return list(overlay([merged_entries(store, cache, i) for i in ids]))

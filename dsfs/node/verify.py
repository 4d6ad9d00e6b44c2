"""Verify a folder against a version's manifest: every missing, extra or different file.

The folder is walked here; hashing its files, the long part, runs here too or, with an `executor`
(`--workers N`, `--dask ADDRESS`; dsfs.store.executors), in tasks: the files whose size matches,
in the walk's order, cut into partitions of about PARTITION_BYTES or PARTITION_FILES, each hashed by
a worker that returns which differ. The report is the serial one (the same files compared, listed
in the same order). The workers must see the folder at the same path (a shared filesystem): on a
Dask cluster each worker stats it before any task is submitted.
"""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field

from dsfs.errors import AccessDenied, LocalFileNotFound, StaleLink, StoreUnavailable
from dsfs.lineage.viewindex import ViewIndex
from dsfs.node import links
from dsfs.progress import Tracker
from dsfs.store.executors import TaskRun, missing_on_workers, run_tasks
from dsfs.store.packs import file_digest

PARTITION_BYTES = 256 << 20  # a hashing task's share of the folder's bytes...
PARTITION_FILES = 2000       # ... or of its files


@dataclass
class Report:
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    different: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)  # external objects changed at their source
    checked: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.different or self.stale)

    def as_dict(self) -> dict:
        return {"ok": self.ok, "checked": self.checked, "missing": self.missing, "extra": self.extra,
                "different": self.different, "stale": self.stale}


@dataclass(frozen=True)
class HashTask(TaskRun):
    """Files to hash on a worker: (local path, expected blake3 digest), in the walk's order."""

    files: list[tuple[str, bytes]] = field(repr=False)
    first: int  # the walk position of the first, so results go back in order
    size: int

    @property
    def label(self) -> str:
        return f"files from {self.files[0][0]}"


def hash_files(task: HashTask) -> list[int]:
    """Run on a worker: the positions (in `task.files`) of the files whose digest is not the expected one."""
    return [i for i, (path, expected) in enumerate(task.files) if file_digest(path) != expected]


def verify_folder(view: ViewIndex, folder: str, size_only: bool = False, executor: Executor | None = None,
                  progress: Tracker | None = None) -> Report:
    """Compare `folder` with the view. Content is compared by blake3 unless size_only, here or by
    tasks on `executor` (module docstring); `progress` advances by the bytes hashed.

    Neither side is held in memory (a version may have millions of files): the folder is walked and
    each file looked up in the view index, then the view is walked and each of its files looked for
    in the folder (missing: nothing there, or a folder; external files: their source checked)."""
    report = Report()
    progress = progress or Tracker()
    different: list[tuple[int, str]] = []  # (walk position, path): tasks answer out of order

    def walk() -> Iterator[tuple[int, str, str, bytes, int]]:
        """(walk position, path, local file, expected digest, size) of each file to hash; the rest is
        judged here."""
        position = 0
        for root, dirs, names in os.walk(folder):
            dirs.sort()
            at = os.path.relpath(root, folder).replace(os.sep, "/")
            parent = view.resolve("" if at == "." else at)  # once per folder; then one lookup per file
            for name in sorted(names):
                full = os.path.join(root, name)
                rel = name if at == "." else f"{at}/{name}"
                node = view.lookup(parent.ino, name) if parent is not None and parent.is_dir else None
                if node is None or node.is_dir:
                    report.extra.append(rel)
                    continue
                report.checked += 1
                position += 1
                if os.path.islink(full) or os.path.getsize(full) != node.size:
                    different.append((position, rel))
                elif not size_only and not node.url:
                    yield position, rel, full, node.digest, node.size

    if executor is None:
        for position, rel, full, expected, size in walk():
            if file_digest(full) != expected:
                different.append((position, rel))
            progress.advance(size, files=1)
    else:
        found = missing_on_workers(executor, [folder], 1)
        if found is not None:
            raise LocalFileNotFound(f"Dask worker {found[0]} cannot read {folder}: every worker must see the folder "
                                    f"at the same path (a shared filesystem); nothing was verified")
        positions: dict[tuple[str, int], list[tuple[int, str]]] = {}
        run = uuid.uuid4().hex

        def tasks() -> Iterator[HashTask]:
            files: list[tuple[int, str, str, bytes, int]] = []
            size = 0
            for item in walk():
                files.append(item)
                size += item[4]
                if size >= PARTITION_BYTES or len(files) >= PARTITION_FILES:
                    yield cut(files, size)
                    files, size = [], 0
            if files:
                yield cut(files, size)

        def cut(files: list[tuple[int, str, str, bytes, int]], size: int) -> HashTask:
            positions[run, files[0][0]] = [(position, rel) for position, rel, *_ in files]
            return HashTask([(full, expected) for _, _, full, expected, _ in files], files[0][0], size, run=run)

        def accept(task: HashTask, differ: list[int]) -> bool:
            names = positions.pop((task.run, task.first))
            different.extend(names[i] for i in differ)
            progress.advance(task.size, files=len(task.files))
            return True

        run_tasks(executor, hash_files, tasks(), accept, what="verify")
    report.different = [rel for _, rel in sorted(different)]
    for path, node in view.walk_files():
        full = os.path.join(folder, *path.split("/"))
        try:  # missing: what os.walk above did not list as a file (nothing, a folder, a link to one)
            kind = os.lstat(full).st_mode
            if stat.S_ISDIR(kind) or stat.S_ISLNK(kind) and os.path.isdir(full):
                report.missing.append(path)
        except (FileNotFoundError, NotADirectoryError):  # (a file where the path has a folder)
            report.missing.append(path)
        if node.url:  # no digest was taken of an external file: check its source instead
            try:
                links.checked(node.url, node.etag, node.size, path)
            except (StaleLink, StoreUnavailable, AccessDenied):
                report.stale.append(path)
    report.missing.sort()
    return report

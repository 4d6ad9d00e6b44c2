"""Verify a folder against a version's manifest: every missing, extra or different file."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from dsfs.errors import AccessDenied, StaleLink, StoreUnavailable
from dsfs.lineage.viewindex import ViewIndex
from dsfs.node import links
from dsfs.store.packs import file_digest


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


def verify_folder(view: ViewIndex, folder: str, size_only: bool = False) -> Report:
    """Compare `folder` with the view. Content is compared by blake3 unless size_only.

    Neither side is held in memory (a version may have millions of files): the folder is walked and
    each file looked up in the view index, then the view is walked and each of its files looked for
    in the folder (missing: nothing there, or a folder; external files: their source checked)."""
    report = Report()
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
            if os.path.islink(full) or os.path.getsize(full) != node.size:
                report.different.append(rel)
            elif not size_only and not node.url and file_digest(full) != node.digest:
                report.different.append(rel)
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

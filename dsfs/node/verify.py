"""Verify a folder against a version's manifest: every missing, extra or different file."""

from __future__ import annotations

import os
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
    """Compare `folder` with the view. Content is compared by blake3 unless size_only."""
    report = Report()
    expected = dict(view.walk_files())
    seen = set()
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            full = os.path.join(root, name)
            rel = os.path.relpath(full, folder).replace(os.sep, "/")
            node = expected.get(rel)
            if node is None:
                report.extra.append(rel)
                continue
            seen.add(rel)
            report.checked += 1
            if os.path.islink(full) or os.path.getsize(full) != node.size:
                report.different.append(rel)
            elif not size_only and not node.url and file_digest(full) != node.digest:
                report.different.append(rel)
    report.missing = sorted(p for p in expected if p not in seen)
    for path, node in expected.items():
        if node.url:  # no digest was taken of an external file: check its source instead
            try:
                links.checked(node.url, node.etag, node.size, path)
            except (StaleLink, StoreUnavailable, AccessDenied):
                report.stale.append(path)
    return report

"""Sizes as people read them: the one formatting every command and the web UI print bytes with."""

from __future__ import annotations


def human(n: float) -> str:
    """Bytes in IEC units: "512 B", "1.5 KiB", ... up to TiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)

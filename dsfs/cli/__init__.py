"""The dsfs command line: a thin click layer over the Python API in `dsfs` (the commands are in
dsfs.cli.main).

`main` is the `dsfs` entry point. It answers `dsfs --version` itself, before click and the commands
are imported: scripts probe an install with it, and on a 2-core node importing click alone takes
~85 ms of the ~110 ms the full command line needs to start (bench/bench_startup.py).
"""

from __future__ import annotations

import os
import sys


def installed_version() -> str:
    """dsfs's installed version: from the name of its dist-info folder (`dsfs-0.1.0.dist-info`), which
    is where importlib.metadata reads it; importing that (email, zipfile, csv) would cost ~40 ms, a
    third of `dsfs --version`. importlib.metadata answers when no such folder is on sys.path."""
    for folder in sys.path:
        try:
            names = os.listdir(folder or ".")
        except OSError:
            continue
        for name in names:
            if name.startswith("dsfs-") and name.endswith(".dist-info"):
                version = name.removeprefix("dsfs-").removesuffix(".dist-info")
                if version and "-" not in version:  # not another project's dsfs-other-1.0.dist-info
                    return version
    import importlib.metadata

    return importlib.metadata.version("dsfs")


def main(argv: list[str] | None = None) -> None:
    """Run the dsfs command line on argv (default: sys.argv[1:])."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--version"]:
        print(f"dsfs, version {installed_version()}")  # click.version_option's words, as `dsfs -v --version` says
        return
    try:
        from dsfs.cli.main import main as run
    except KeyboardInterrupt:  # Ctrl-C while the command line loads: as during a command
        print("dsfs: interrupted", file=sys.stderr)
        sys.exit(130)
    run(argv)

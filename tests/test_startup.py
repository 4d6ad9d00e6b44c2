"""Start-up stays light: `import dsfs`, `dsfs --version` and `dsfs --help` load no store, fsspec,
LMDB, trio, rich or importlib.metadata (issue 14). Structure only; bench/bench_startup.py has the timings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("fsspec", "lmdb", "trio", "rich", "dsfs.dataset", "dsfs.store", "dsfs.daemon", "dsfs.node",
         "importlib.metadata")

LOADED = """
import sys
{code}
print("LOADED", " ".join(sorted(m for m in sys.modules if m in {heavy!r} or m.startswith({prefixes!r}))))
"""

RUN_CLI = """
from dsfs.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
"""


def loaded(code: str, *args: str) -> list[str]:
    """The heavy modules in sys.modules after running `code` in a fresh interpreter."""
    script = LOADED.format(code=code, heavy=HEAVY, prefixes=tuple(m + "." for m in HEAVY))
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("LOADED")][-1]
    return line.split()[1:]


def test_import_dsfs_is_light():
    assert loaded("import dsfs") == []


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["datastore", "--help"], ["mount", "--help"]])
def test_cli_start_is_light(args):
    assert loaded(RUN_CLI, *args) == []


def test_cli_modules_do_not_import_each_other_in_a_circle():
    """cli.main registers the command modules; they share cli.output, never cli.main."""
    proc = subprocess.run([sys.executable, "-c", "import sys, dsfs.cli.datastore, dsfs.cli.mount, dsfs.cli.run; "
                           "print('dsfs.cli.main' in sys.modules)"], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr


def test_public_names_load_on_use():
    import dsfs
    from dsfs.dataset import Dataset
    from dsfs.lifecycle.check import check_store
    from dsfs.lifecycle.sweep import gc
    from dsfs.store.layout import Store

    assert (dsfs.Dataset, dsfs.Store, dsfs.gc, dsfs.check_store) == (Dataset, Store, gc, check_store)
    assert set(dsfs.__all__) <= set(dir(dsfs))
    assert all(getattr(dsfs, name) is not None for name in dsfs.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        dsfs.nothing  # noqa: B018


def test_python_m_dsfs():
    proc = subprocess.run([sys.executable, "-m", "dsfs", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("dsfs, version "), proc.stderr
    proc = subprocess.run([sys.executable, "-m", "dsfs", "no-such-command"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "No such command" in proc.stderr


def test_help_lists_every_command():
    from dsfs.cli.main import cli

    script = Path(sys.executable).parent / "dsfs"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "dsfs"]
    proc = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    listed = {line.split()[0] for line in proc.stdout.split("Commands:")[1].splitlines() if line.strip()}
    assert listed == {name for name, command in cli.commands.items() if not command.hidden}


def test_version_is_the_installed_distributions():
    """`dsfs --version` reads the dist-info folder's name rather than importing importlib.metadata."""
    import importlib.metadata

    from dsfs.cli import installed_version

    assert installed_version() == importlib.metadata.version("dsfs")
    proc = subprocess.run([sys.executable, "-m", "dsfs", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.stdout == f"dsfs, version {importlib.metadata.version('dsfs')}\n"


def test_version_is_answered_before_click_loads():
    """The entry point answers `dsfs --version` alone (scripts probe installs with it); any other
    argument list goes to the click command line."""
    code = ("import sys\nfrom dsfs.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print('click' in sys.modules, 'dsfs.cli.main' in sys.modules)")
    for args, loads in ((["--version"], "False False"), (["-v", "--version"], "True True")):
        proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and proc.stdout.startswith("dsfs, version "), proc.stderr
        assert proc.stdout.splitlines()[-1] == loads

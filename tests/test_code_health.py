"""The code's own contracts, checked on every test run: the layers of docs/architecture.md
(import-linter), ruff's rules and mypy's types on the package (pyproject.toml holds all three)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(tool: str, *args: str) -> subprocess.CompletedProcess:
    if not (BIN / tool).exists():
        pytest.fail(f"{tool} is not installed in {BIN}: run ./scripts/setup.sh")
    return subprocess.run([str(BIN / tool), *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_layers_hold():
    """A module imports only from layers below its own (pyproject.toml [tool.importlinter])."""
    proc = _run("lint-imports", "--no-cache")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "1 kept, 0 broken" in proc.stdout


def test_layer_contract_catches_an_upward_import(tmp_path):
    """The contract is not vacuous: a store module importing the node breaks it."""
    import shutil

    copy = tmp_path / "repo"
    shutil.copytree(REPO / "dsfs", copy / "dsfs", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    packs = copy / "dsfs" / "store" / "packs.py"
    packs.write_text(packs.read_text() + "\nfrom dsfs.node import cache  # noqa\n")
    proc = subprocess.run([str(BIN / "lint-imports"), "--no-cache"], cwd=copy, capture_output=True, text=True,
                          timeout=600, env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"})
    assert proc.returncode != 0 and "dsfs.store.packs -> dsfs.node.cache" in proc.stdout, proc.stdout[-3000:]


def test_ruff_passes():
    """ruff's rules (pyproject.toml [tool.ruff]) hold on the package."""
    proc = _run("ruff", "check", "--no-cache", "dsfs")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


def test_mypy_passes():
    """mypy's types hold on the package (pyproject.toml [tool.mypy] names the files)."""
    proc = _run("mypy")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]

"""Shared fixtures: an isolated home for every test, stores, and an in-process CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass

import pytest

from dsfs.cli.main import main
from servers import azurite, gcs_server, moto_server, no_cloud_credentials  # noqa: F401 (fixtures)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Every test gets its own XDG dirs, so state and the default store never leak between tests."""
    for var in ("XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_RUNTIME_DIR"):
        path = tmp_path / "home" / var.lower()
        path.mkdir(parents=True)
        monkeypatch.setenv(var, str(path))
    monkeypatch.delenv("DSFS_STORE", raising=False)
    return tmp_path / "home"


@pytest.fixture
def memory_store():
    """A fresh memory:// store URL (the memory filesystem is per process)."""
    return f"memory://dsfs-test-{uuid.uuid4().hex}"


@pytest.fixture
def file_store(tmp_path):
    return f"file://{tmp_path}/store"


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def dsfs(capfdbinary):
    """Run the CLI in-process: dsfs("list", "--json") -> Result(code, out, err)."""

    def run(*args) -> Result:
        capfdbinary.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capfdbinary.readouterr()
        return Result(code, captured.out.decode(errors="replace"), captured.err.decode(errors="replace"))

    return run


def run_cli(*args, env=None, **kwargs) -> subprocess.CompletedProcess:
    """Run the real console script in a subprocess (for exit codes, tracebacks and kill tests)."""
    return subprocess.run([sys.executable, "-m", "dsfs.cli.main", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, **kwargs)


def make_tree(root, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def final_version(store, folder, parents=None, name="n", project="p"):
    """A final version of project/name holding `folder`, read back from the store as a consumer
    would see it."""
    from dsfs import Dataset

    ds = Dataset.create(project, name, parents=parents, store=store)
    ds.add_files(str(folder))
    ds.finalize()
    return Dataset.get(ds.id, store=store)


def read_tree(root) -> dict[str, bytes]:
    """{relative path: bytes} of every file under `root` (make_tree's inverse)."""
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            out[os.path.relpath(path, root)] = open(path, "rb").read()
    return out

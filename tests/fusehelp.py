"""Helpers for tests that mount for real: a FUSE check that skips (fails under CI=true), and an
isolated "node" (its own XDG dirs, store and runtime dir) that authors datasets and runs `dsfs`
in subprocesses, so a module can share one mount across its tests."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import XDG_DIRS, make_tree, watch_logs


def require_fuse() -> None:
    missing = []
    if not os.path.exists("/dev/fuse"):
        missing.append("/dev/fuse")
    try:
        import pyfuse3  # noqa: F401
    except ImportError:
        missing.append("the pyfuse3 package")
    if not shutil.which("fusermount3"):
        missing.append("fusermount3 (Debian package fuse3)")
    if missing:
        reason = f"FUSE is not available here (missing {', '.join(missing)})"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; CI must run the mount tests")
        pytest.skip(reason)


class Node:
    """One simulated compute node under `base`."""

    def __init__(self, base):
        self.base = str(base)
        self.env = {k: v for k, v in os.environ.items()  # no DSFS_*/XDG_* but this node's own
                    if not k.startswith(("DSFS_", "XDG_")) and k != "NOTIFY_SOCKET"}
        for var in XDG_DIRS:
            path = os.path.join(self.base, "home", var.lower())
            os.makedirs(path, exist_ok=True)
            self.env[var] = path
        self.store = f"file://{self.base}/store"
        self.env.update({"DSFS_STORE": self.store, "DSFS_RETRY_DELAYS": "0.05,0.05"})
        watch_logs(self.runtime_dir)  # conftest checks its daemons' logs after each test

    @property
    def cache_dir(self) -> str:
        return os.path.join(self.env["XDG_CACHE_HOME"], "dsfs")

    @property
    def runtime_dir(self) -> str:
        return os.path.join(self.env["XDG_RUNTIME_DIR"], "dsfs")

    def cli(self, *args, check: bool = False, **kwargs) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "dsfs.cli.main", *map(str, args)], capture_output=True,
                              text=True, env={**self.env, **kwargs.pop("env", {})}, **kwargs)
        if check:
            assert proc.returncode == 0, f"dsfs {' '.join(map(str, args))}: {proc.stderr}"
        return proc

    def dataset(self, files: dict[str, bytes], name: str = "n", parents=(), modes=None, removals=()) -> str:
        """Author a final version (in process, with this node's environment); returns its id."""
        from dsfs import Dataset

        src = os.path.join(self.base, f"src-{name}-{len(os.listdir(self.base))}")
        make_tree(pathlib.Path(src), files)
        for rel, mode in (modes or {}).items():
            os.chmod(os.path.join(src, rel), mode)
        with pytest.MonkeyPatch.context() as mp:
            for key in ("XDG_STATE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
                mp.setenv(key, self.env[key])
            ds = Dataset.create("proj", name, parents=list(parents), store=self.store)
            if files:
                ds.add_files(src)
            for path in removals:
                ds.remove_files(path)
            ds.finalize()
        return ds.id

    def mountpoint(self, name: str = "mnt") -> str:
        path = os.path.join(self.base, name)
        os.makedirs(path, exist_ok=True)
        return path

    def mount(self, dataset: str, mountpoint: str, *extra) -> int:
        """`dsfs mount` (detached); returns the daemon's pid."""
        self.cli("mount", dataset, mountpoint, *extra, check=True)
        return self.record(mountpoint)["pid"]

    @contextlib.contextmanager
    def mounted(self, dataset: str, name: str, *extra):
        """`dsfs mount` at a folder named `name`; `dsfs unmount` (which must succeed) on the way out."""
        mountpoint = self.mountpoint(name)
        self.mount(dataset, mountpoint, *extra)
        try:
            yield mountpoint
        finally:
            self.cli("unmount", mountpoint, check=True)

    def record(self, mountpoint: str) -> dict:
        from dsfs.daemon import mounts

        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("XDG_RUNTIME_DIR", self.env["XDG_RUNTIME_DIR"])
            mp.delenv("DSFS_RUNTIME_DIR", raising=False)
            return mounts.read_record(mounts.canonical(mountpoint))

    def log(self, mountpoint: str) -> str:
        with open(self.record(mountpoint)["log"]) as f:
            return f.read()

    def cleanup(self) -> None:
        """Leave nothing mounted or running under `base`, whatever the test did."""
        from dsfs.daemon import mounts

        folder = os.path.join(self.runtime_dir, "mounts")
        for name in os.listdir(folder) if os.path.isdir(folder) else []:
            with open(os.path.join(folder, name)) as f:
                record = json.load(f)
            if mounts.is_alive(record):
                os.kill(record["pid"], signal.SIGKILL)
        for point in mounts.mount_table():
            if point.startswith(self.base + "/"):
                subprocess.run(["fusermount3", "-u", "-z", point], capture_output=True)


def node_fixture(prefix: str):
    """A module-scoped `node` fixture (FUSE required), cleaned up whatever its tests left."""

    @pytest.fixture(scope="module")
    def node(tmp_path_factory):
        require_fuse()
        node = Node(tmp_path_factory.mktemp(prefix))
        yield node
        node.cleanup()

    return node


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def pid_gone(pid: int) -> bool:
    from dsfs.daemon.mounts import process_start

    return process_start(pid) is None


def is_mounted(path: str) -> bool:
    from dsfs.daemon.mounts import mount_table

    return os.path.realpath(path) in mount_table()


def write_syscalls(root: str, a_file: str, a_folder: str) -> dict:
    """Every system call that would change the tree at `root`, by name."""
    f = f"{root}/{a_file}"
    return {
        "open O_WRONLY": lambda: os.open(f, os.O_WRONLY),
        "open O_RDWR": lambda: os.open(f, os.O_RDWR),
        "open O_CREAT": lambda: os.open(f"{root}/new", os.O_CREAT | os.O_WRONLY, 0o644),
        "open O_TRUNC": lambda: os.open(f, os.O_RDONLY | os.O_TRUNC),
        "truncate": lambda: os.truncate(f, 0),
        "mkdir": lambda: os.mkdir(f"{root}/d"),
        "rmdir": lambda: os.rmdir(f"{root}/{a_folder}"),
        "unlink": lambda: os.unlink(f),
        "rename": lambda: os.rename(f, f"{root}/other"),
        "link": lambda: os.link(f, f"{root}/hard"),
        "symlink": lambda: os.symlink(a_file, f"{root}/soft"),
        "mknod": lambda: os.mknod(f"{root}/fifo", 0o644 | 0o010000),
        "chmod": lambda: os.chmod(f, 0o600),
        "chown": lambda: os.chown(f, 1, 1),
        "utime": lambda: os.utime(f, (0, 0)),
        "setxattr": lambda: os.setxattr(f, "user.x", b"1"),
        "removexattr": lambda: os.removexattr(f, "user.dsfs.blake3"),
    }

"""Mounted data references: `dsfs run --input NAME=DATASET:mount`, `dsfs env`, and `as_mount()`."""

import os
import signal
import subprocess
import sys

import pytest
from fusehelp import is_mounted, node_fixture

node = node_fixture("refs")


def test_run_mounts_exports_and_unmounts(node):
    ds_id = node.dataset({"train/a.txt": b"alpha", "b.txt": b"beta"}, name="refs")
    script = ("import os,sys; p=os.environ['DSFS_DATAREFERENCE_train']; print(p); "
              "print(open(os.path.join(p,'train','a.txt')).read()); sys.exit(5)")
    proc = node.cli("run", "--input", f"train={ds_id}:mount", "--", sys.executable, "-c", script)
    assert proc.returncode == 5, proc.stderr
    path, content = proc.stdout.splitlines()
    assert content == "alpha"
    assert not is_mounted(path) and not os.path.exists(path)  # unmounted, temporary folder removed
    mountpoint = node.mountpoint("given")
    proc = node.cli("run", "--input", f"t={ds_id}:mount:{mountpoint}", "--", "cat", "$DSFS_DATAREFERENCE_t/b.txt")
    assert proc.returncode == 0 and proc.stdout == "beta", proc.stderr
    assert not is_mounted(mountpoint) and os.path.isdir(mountpoint)  # a given folder is kept


def test_run_sigterm_unmounts(node):
    ds_id = node.dataset({"f": b"x"}, name="sig")
    script = ("import os,signal,sys,time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(3)); "
              "print(os.environ['DSFS_DATAREFERENCE_t'], flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-m", "dsfs.cli.main", "run", "--input", f"t={ds_id}:mount", "--",
                             sys.executable, "-c", script], env=node.env, stdout=subprocess.PIPE, text=True)
    path = proc.stdout.readline().strip()
    assert is_mounted(path)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 3
    assert not is_mounted(path) and not os.path.exists(path)


def test_env_leaves_the_mount(node):
    ds_id = node.dataset({"f": b"kept"}, name="env")
    proc = node.cli("env", "--input", f"t={ds_id}:mount", check=True)
    exports = dict(line.removeprefix("export ").split("=", 1) for line in proc.stdout.splitlines())
    path = exports["DSFS_DATAREFERENCE_t"]
    try:
        assert open(os.path.join(path, "f")).read() == "kept"
    finally:
        node.cli("unmount", path, check=True)
    assert not os.path.exists(path)  # the temporary mountpoint env made goes with the mount
    given = node.mountpoint("env-given")
    node.cli("env", "--input", f"t={ds_id}:mount:{given}", check=True)
    node.cli("unmount", given, check=True)
    assert os.path.isdir(given)  # a folder the user named is kept


def test_python_as_mount(node, monkeypatch):
    from dsfs import Dataset

    ds_id = node.dataset({"f": b"py"}, name="api")
    for key in ("XDG_RUNTIME_DIR", "XDG_CACHE_HOME", "XDG_STATE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        monkeypatch.setenv(key, node.env[key])
    ref = Dataset.get(ds_id, store=node.store).as_mount(name="data")
    assert str(ref) == "$DSFS_DATAREFERENCE_data"
    with ref as path:
        assert is_mounted(path) and open(os.path.join(path, "f")).read() == "py"
    assert not is_mounted(path) and not os.path.exists(path)


def test_mount_errors_keep_their_class_message_and_code(node, monkeypatch):
    """A mounted input fails as `dsfs mount` does: the daemon's own error class, one line, its exit code."""
    from dsfs import Dataset
    from dsfs.errors import UsageError

    ds_id = node.dataset({"f": b"x"}, name="errs")
    full = node.mountpoint("full")
    open(os.path.join(full, "x"), "w").close()
    mount = node.cli("mount", ds_id, full)
    run = node.cli("run", "--input", f"t={ds_id}:mount:{full}", "--", "true")
    assert run.returncode == mount.returncode == UsageError.exit_code, run.stderr
    assert run.stderr.splitlines() == mount.stderr.splitlines() == [f"dsfs: error: mountpoint {full} is not empty; "
                                                                    f"mount on an empty folder"]
    for key in ("XDG_RUNTIME_DIR", "XDG_CACHE_HOME", "XDG_STATE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        monkeypatch.setenv(key, node.env[key])
    with pytest.raises(UsageError, match="is not empty; mount on an empty folder"):
        Dataset.get(ds_id, store=node.store).as_mount(path_on_compute=full).setup()
    assert os.listdir(full) == ["x"] and not is_mounted(full)  # a given folder is left as it was

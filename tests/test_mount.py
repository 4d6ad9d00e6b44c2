"""Real mounts (STYLE 9, the t4 tier): tools through the kernel, the daemon's lifecycle, bad input.

What a mount promises to readers is tested sentence by sentence in test_semantics.py; this file covers
the tools (ls, find, stat, cat, cmp, du, mmap), the daemon (detached and foreground, signals, a
killed daemon, `dsfs mounts`, configs, prefetch, readahead, the Python API) and every bad input.
Without FUSE these tests skip (fail with CI=true); the bad-input checks that need no mount always run.
"""

import errno
import json
import mmap
import os
import random
import signal
import socket
import subprocess
import sys

import pytest

from dsfs.daemon import mounts
from fusehelp import is_mounted, node_fixture, pid_gone, require_fuse, wait_for, write_syscalls

rng = random.Random(11)
FILES = {
    "README.md": b"# a dataset\n",
    "bin/run.sh": b"#!/bin/sh\necho ran\n",
    "images/large.bin": rng.randbytes(6 << 20),
    "images/small/a.jpg": rng.randbytes(40_000),
    "images/small/b.jpg": rng.randbytes(1),
    "labels/empty.txt": b"",
    "labels/train.csv": b"path,label\n" * 500,
}


node = node_fixture("node")


@pytest.fixture(scope="module")
def shared(node):
    """One dataset mounted for the read-only checks of this module."""
    with node.mounted(node.dataset(FILES, modes={"bin/run.sh": 0o755}), "shared") as mountpoint:
        yield mountpoint


def _src(node) -> str:
    return next(os.path.join(node.base, d) for d in sorted(os.listdir(node.base)) if d.startswith("src-n-"))


# -- tools ---------------------------------------------------------------------------------------

def test_ls_find_stat_cat_cmp(node, shared):
    ls = subprocess.run(["ls", "-la", shared], capture_output=True, text=True, check=True).stdout
    assert {line.split()[-1] for line in ls.splitlines()[1:]} == {".", "..", "README.md", "bin", "images", "labels"}
    found = subprocess.run(["find", shared, "-type", "f"], capture_output=True, text=True, check=True).stdout
    assert sorted(os.path.relpath(p, shared) for p in found.split()) == sorted(FILES)
    out = subprocess.run(["stat", "-c", "%s %a %h %F", f"{shared}/bin/run.sh", f"{shared}/images"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == [f"{len(FILES['bin/run.sh'])} 755 1 regular file", "0 755 3 directory"]
    cat = subprocess.run(["cat", f"{shared}/labels/train.csv"], capture_output=True, check=True).stdout
    assert cat == FILES["labels/train.csv"]
    for rel in FILES:
        assert subprocess.run(["cmp", f"{shared}/{rel}", f"{_src(node)}/{rel}"]).returncode == 0, rel
    assert subprocess.run([f"{shared}/bin/run.sh"], capture_output=True, text=True).stdout == "ran\n"


def test_du_adds_up_the_bytes(shared):
    apparent = subprocess.run(["du", "-sb", shared], capture_output=True, text=True, check=True).stdout.split()[0]
    assert int(apparent) == sum(map(len, FILES.values()))
    blocks = subprocess.run(["du", "-s", "-B1", shared], capture_output=True, text=True, check=True).stdout.split()[0]
    assert int(blocks) == sum((len(d) + 511) // 512 * 512 for d in FILES.values())


def test_mmap_reads(shared):
    data = FILES["images/large.bin"]
    with open(f"{shared}/images/large.bin", "rb") as f:
        with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as shared_map:
            for _ in range(50):
                start = rng.randrange(len(data))
                assert shared_map[start:start + 100_000] == data[start:start + 100_000]
            assert shared_map[:] == data
        with mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ) as private_map:
            assert private_map[-10:] == data[-10:]


def test_os_walk_equals_manifest(node, shared):
    listing = json.loads(node.cli("list", "--id", node.cli("search", "--json", check=True) and
                                  json.loads(node.cli("search", "--json").stdout)[0]["id"], "--json", check=True).stdout)
    manifest = {e["path"]: (e["size"], e["mode"]) for e in listing}
    walked = {}
    for folder, _, names in os.walk(shared):
        for name in names:
            st = os.stat(os.path.join(folder, name))
            walked[os.path.relpath(os.path.join(folder, name), shared)] = (st.st_size, st.st_mode & 0o777)
    assert walked == manifest
    src = _src(node)
    for rel in FILES:
        assert os.stat(f"{shared}/{rel}").st_mtime_ns == os.stat(f"{src}/{rel}").st_mtime_ns


def test_every_write_syscall_is_erofs(shared):
    for name, call in write_syscalls(shared, "README.md", "labels").items():
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == errno.EROFS, name
    assert sorted(os.listdir(shared)) == ["README.md", "bin", "images", "labels"]


# -- the daemon ----------------------------------------------------------------------------------

def _notify_socket(path_or_abstract: str):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + path_or_abstract[1:] if path_or_abstract.startswith("@") else path_or_abstract)
    sock.settimeout(30)
    return sock


def test_foreground_notifies_systemd_and_sigterm_unmounts_with_exit_0(node, tmp_path):
    dataset = node.dataset({"f": b"foreground"}, name="fg")
    mountpoint = node.mountpoint("fg")
    address = f"@dsfs-test-{os.getpid()}-{rng.random()}"
    with _notify_socket(address) as sock:
        proc = subprocess.Popen([sys.executable, "-m", "dsfs.cli.main", "mount", "--foreground", dataset, mountpoint],
                                env={**node.env, "NOTIFY_SOCKET": address}, stderr=subprocess.PIPE, text=True)
        try:
            ready = sock.recv(4096).decode()
            assert "READY=1" in ready.splitlines() and "STATUS=serving" in ready
            assert open(f"{mountpoint}/f", "rb").read() == b"foreground"
            proc.send_signal(signal.SIGTERM)
            assert sock.recv(4096).decode() == "STOPPING=1"
            assert proc.wait(timeout=20) == 0
        finally:
            proc.kill()
    assert not is_mounted(mountpoint) and node.record(mountpoint) is None
    err = proc.stderr.read()
    assert "serving proj/fg@" in err and "unmounted" in err and "Traceback" not in err


def test_notify_to_a_socket_path(tmp_path, monkeypatch):
    from dsfs.daemon.notify import notify

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False
    path = str(tmp_path / "notify.sock")
    with _notify_socket(path) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert notify("READY=1", "STATUS=x") is True
        assert sock.recv(100) == b"READY=1\nSTATUS=x"


def test_detached_daemon_sigterm_and_sigint(node):
    dataset = node.dataset({"f": b"x"}, name="sig")
    mountpoint = node.mountpoint("sig")
    for sig in (signal.SIGTERM, signal.SIGINT):
        pid = node.mount(dataset, mountpoint)
        assert os.getsid(pid) != os.getsid(0)  # detached: its own session
        os.kill(pid, sig)
        wait_for(lambda: pid_gone(pid), what="daemon exit")
        assert not is_mounted(mountpoint) and node.record(mountpoint) is None
        assert f"{signal.Signals(sig).name}: unmounting" in open(_log_file(node, mountpoint)).read()


def test_a_big_log_is_moved_aside_when_a_mount_starts(node):
    from dsfs.daemon import LOG_KEEP

    dataset = node.dataset({"f": b"x"}, name="logs")
    with node.mounted(dataset, "logs") as mountpoint:
        log = _log_file(node, mountpoint)
    with open(log, "ab") as f:  # as after months of mounts on the same path
        f.write(b"old line\n" * (LOG_KEEP // 9))
    with node.mounted(dataset, "logs"):
        pass
    assert os.path.getsize(log) < 64 << 10 and "mount" in open(log).read()
    old = open(log + ".1", "rb").read()
    assert len(old) > LOG_KEEP and old.endswith(b"old line\n")
    with node.mounted(dataset, "logs"):  # a small log is kept and appended to
        pass
    assert open(log).read().count("--- ") == 2 and os.path.getsize(log + ".1") == len(old)


def _log_file(node, mountpoint) -> str:
    logs = os.path.join(node.runtime_dir, "logs")
    return os.path.join(logs, next(n for n in os.listdir(logs) if os.path.basename(mountpoint) in n))


def test_killed_daemon_is_cleared_by_unmount_mounts_and_mount(node):
    dataset = node.dataset({"f": b"alive"}, name="kill")
    mountpoint = node.mountpoint("kill")

    def kill9():
        pid = node.record(mountpoint)["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: pid_gone(pid), what="daemon death")
        assert mounts.is_dead(mountpoint)

    node.mount(dataset, mountpoint)
    kill9()
    proc = node.cli("unmount", mountpoint)
    assert proc.returncode == 0 and "daemon had died" in proc.stdout
    assert not is_mounted(mountpoint) and os.listdir(mountpoint) == []

    node.mount(dataset, mountpoint)
    kill9()
    node.mount(dataset, mountpoint)  # mounting again clears the dead mount first
    assert open(f"{mountpoint}/f", "rb").read() == b"alive"

    kill9()
    proc = node.cli("mounts")
    assert proc.returncode == 0 and "removed stale entry: proj/kill@" in proc.stderr
    assert not is_mounted(mountpoint) and node.record(mountpoint) is None


def test_mounts_listing(node):
    first = node.dataset({"a": b"1" * 1000}, name="list")
    second = node.dataset({"a": b"2" * 1000}, name="list")
    one, two = node.mountpoint("list1"), node.mountpoint("list2")
    pid1, pid2 = node.mount(first, one, "--cache-size", "3G"), node.mount(second, two)
    open(f"{one}/a", "rb").read()
    listed = json.loads(node.cli("mounts", "--json", check=True).stdout)
    by_point = {m["mountpoint"]: m for m in listed}
    assert set(by_point) >= {one, two}
    assert by_point[one]["pid"] == pid1 and by_point[two]["pid"] == pid2
    assert (by_point[one]["dataset"], by_point[one]["version"]) == ("proj/list", "1.0.0")
    assert by_point[two]["version"] == "1.0.1" and by_point[two]["dataset_id"] == second
    assert by_point[one]["cache_bytes"] >= 1000 and by_point[one]["cache_dir"] == node.cache_dir
    assert by_point[one]["cache_budget"] == 3 << 30 and by_point[two]["cache_budget"] != 3 << 30  # each its own
    table = node.cli("mounts", check=True).stdout
    assert "mountpoint" in table and one in table and str(pid2) in table
    node.cli("unmount", one, check=True)
    node.cli("unmount", two, check=True)
    assert {m["mountpoint"] for m in json.loads(node.cli("mounts", "--json").stdout)}.isdisjoint({one, two})
    assert pid_gone(pid1) and pid_gone(pid2)


def test_unmount_busy_then_force(node):
    dataset = node.dataset({"f": b"busy"}, name="busy")
    mountpoint = node.mountpoint("busy")
    pid = node.mount(dataset, mountpoint)
    holder = subprocess.Popen(["sleep", "60"], cwd=mountpoint)
    try:
        proc = node.cli("unmount", mountpoint)
        assert proc.returncode == 5 and "busy" in proc.stderr and is_mounted(mountpoint)
        proc = node.cli("unmount", "--force", mountpoint)
        assert proc.returncode == 0 and "lazily" in proc.stdout, proc.stderr
        assert not is_mounted(mountpoint) and node.record(mountpoint) is None
        assert not pid_gone(pid)  # still serving the open folder
    finally:
        holder.kill()
        holder.wait()
    wait_for(lambda: pid_gone(pid), what="daemon exit once the last user is gone")
    proc = node.cli("unmount", mountpoint)
    assert proc.returncode == 2 and "not mounted" in proc.stderr


def test_config_file(node, tmp_path):
    dataset = node.dataset({"c": b"configured"}, name="conf")
    mountpoint = node.mountpoint("conf")
    config = tmp_path / "conf.conf"
    config.write_text(f"# a mount\nDSFS_DATASET={dataset}\nDSFS_MOUNTPOINT=\"{mountpoint}\"\n"
                      f"DSFS_STORE={node.store}\nDSFS_READ_AHEAD=1024\nAWS_REGION=ignored\n")
    env = {k: v for k, v in node.env.items() if k != "DSFS_STORE"}
    proc = subprocess.run([sys.executable, "-m", "dsfs.cli.main", "mount", "--config", config], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert open(f"{mountpoint}/c", "rb").read() == b"configured"
    _assert_read_ahead(node, mountpoint, 1024)
    assert node.cli("unmount", "--config", config).returncode == 0
    config.write_text(f"DSFS_DATASET={dataset}\nDSFS_MOUNTPIONT={mountpoint}\n")
    proc = node.cli("mount", "--config", config)
    assert proc.returncode == 2 and "unknown key DSFS_MOUNTPIONT" in proc.stderr


def _assert_read_ahead(node, mountpoint, kib):
    """The mount's readahead is `kib`; or, where /sys is not writable (not root), the kernel's default,
    and the daemon's log says why."""
    dev = os.stat(mountpoint).st_dev
    path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
    if os.access(path, os.W_OK):
        assert int(open(path).read()) == kib
    else:
        assert "readahead left at the kernel default" in node.log(mountpoint)


def test_read_ahead_raised_and_allow_other(node):
    dataset = node.dataset({"r": b"r"}, name="ra")
    with node.mounted(dataset, "ra", "--allow-other") as mountpoint:
        _assert_read_ahead(node, mountpoint, 4096)
        options = next(line for line in open("/proc/self/mounts") if f" {mountpoint} " in line).split()[3]
        assert {"ro", "nosuid", "nodev", "allow_other", "default_permissions"} <= set(options.split(","))


def test_prefetch_warms_the_cache_in_the_background(node):
    files = {"train/a": rng.randbytes(500_000), "train/b": rng.randbytes(2 << 20), "val/c": rng.randbytes(300_000)}
    dataset = node.dataset(files, name="pre")
    cache_dir = f"{node.base}/pre-cache"
    with node.mounted(dataset, "pre", "--prefetch", "--include", "train", "--cache-dir", cache_dir) as mountpoint:
        wait_for(lambda: "prefetch done" in node.log(mountpoint), what="prefetch")
        from dsfs.node.cache import Cache

        cache = Cache(cache_dir)
        assert cache.used_bytes() == 500_000 + (2 << 20)  # train only, fetched without a reader
        assert "prefetch done: 2 files" in node.log(mountpoint)
        assert open(f"{mountpoint}/val/c", "rb").read() == files["val/c"]


def test_files_read_in_order_are_pushed_to_the_page_cache_and_read_right(node):
    sizes = [rng.choice([1, 3_000, 40_000, 300_000]) for _ in range(300)]
    files = {f"d{i // 100}/f{i:03d}": rng.randbytes(size) for i, size in enumerate(sizes)}
    files["d1/big"] = rng.randbytes(3 << 20)  # over the push limit: read the usual way
    files["d1/empty"] = b""
    dataset = node.dataset(files, name="push")
    cache_dir = f"{node.base}/push-cache"
    with node.mounted(dataset, "push", "--prefetch", "--cache-dir", cache_dir) as mountpoint:
        wait_for(lambda: "prefetch done" in node.log(mountpoint), what="prefetch")
    # a fresh mount (empty page cache) over a warm node cache: `find | xargs cat` in path order
    with node.mounted(dataset, "push", "--cache-dir", cache_dir) as mountpoint:
        listing = subprocess.run(["find", mountpoint, "-type", "f"], capture_output=True, text=True,
                                 check=True).stdout.split()
        for path in sorted(listing):
            with open(path, "rb") as f:
                assert f.read() == files[os.path.relpath(path, mountpoint)], path
        log_path = node.record(mountpoint)["log"]
    with open(log_path) as f:
        pushed = [line for line in f if "page cache push:" in line][-1]
    assert 250 <= int(pushed.split("push: ")[1].split()[0]) <= 300  # all but the first few small files


def test_python_api(node, monkeypatch):
    from dsfs import daemon

    dataset = node.dataset({"api": b"from python"}, name="api")
    mountpoint = node.mountpoint("api")
    for key in ("XDG_RUNTIME_DIR", "XDG_CACHE_HOME", "XDG_STATE_HOME", "DSFS_RETRY_DELAYS"):
        monkeypatch.setenv(key, node.env[key])
    with daemon.mount(dataset, mountpoint, store=node.store, cache_size="1G") as handle:
        assert handle.ref == "proj/api@1.0.0" and handle.dataset_id == dataset
        assert open(f"{mountpoint}/api", "rb").read() == b"from python"
        assert mountpoint in [m["mountpoint"] for m in daemon.list_mounts()[0]]
    assert not is_mounted(mountpoint) and pid_gone(handle.pid)
    handle = daemon.mount(dataset, mountpoint, store=node.store)
    assert "unmounted proj/api@1.0.0" in daemon.unmount(mountpoint)


# -- bad input -----------------------------------------------------------------------------------

def _fails(result, code: int, *words):
    assert result.code == code, (result.code, result.err)
    line = result.err.strip()
    assert "\n" not in line and "Traceback" not in line and line.startswith("dsfs: error: "), line
    for word in words:
        assert word in line, line


@pytest.fixture
def final_id(tmp_path, file_store, monkeypatch):
    from dsfs import Dataset
    from conftest import make_tree

    make_tree(tmp_path / "d", {"f": b"f"})
    ds = Dataset.create("p", "n", store=file_store)
    ds.add_files(str(tmp_path / "d"))
    ds.finalize()
    monkeypatch.setenv("DSFS_STORE", file_store)
    return ds.id


def test_mountpoint_missing_not_a_folder_not_empty(dsfs, final_id, tmp_path):
    require_fuse()
    _fails(dsfs("mount", final_id, tmp_path / "nope"), 2, "does not exist", "mkdir -p")
    (tmp_path / "file").write_text("x")
    _fails(dsfs("mount", final_id, tmp_path / "file"), 2, "not a directory")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    _fails(dsfs("mount", final_id, tmp_path / "full"), 2, "not empty")


def test_mountpoint_already_a_mount(dsfs, final_id, shared):
    _fails(dsfs("mount", final_id, shared), 5, "already a mount")
    _fails(dsfs("mount", final_id, "/proc"), 5, "already a mount", "proc")


def test_unknown_dataset_and_draft(dsfs, final_id, tmp_path, file_store):
    require_fuse()
    (tmp_path / "m").mkdir()
    _fails(dsfs("mount", "0" * 32, tmp_path / "m"), 3, "no dataset")
    _fails(dsfs("mount", "p/missing", tmp_path / "m"), 3, "no final dataset p/missing")
    from dsfs import Dataset

    draft = Dataset.create("p", "draft", store=file_store)
    _fails(dsfs("mount", draft.id, tmp_path / "m"), 4, "draft")


def test_store_unreachable_at_mount_time(tmp_path):
    require_fuse()
    from conftest import run_cli

    (tmp_path / "m").mkdir()
    env = {"FSSPEC_S3_ENDPOINT_URL": "http://127.0.0.1:9", "FSSPEC_S3_KEY": "k", "FSSPEC_S3_SECRET": "s",
           "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"}
    proc = run_cli("--store", "s3://bucket/prefix", "mount", "p/n", tmp_path / "m", env=env)
    assert proc.returncode == 7 and "Traceback" not in proc.stderr
    assert "unreachable" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not is_mounted(str(tmp_path / "m"))


@pytest.mark.expect_log(r"ERROR dsfs\S*: change-set of dataset \w+ is corrupt or truncated")
def test_daemon_error_is_reported_and_leaves_nothing(node):
    dataset = node.dataset({"f": b"f"}, name="broken")
    changes = f"{node.base}/store/datasets/{dataset}/changes.msgpack.zst"
    with open(changes, "r+b") as f:
        f.seek(5)
        f.write(b"\xff\xff")
    mountpoint = node.mountpoint("broken")
    proc = node.cli("mount", dataset, mountpoint)
    assert proc.returncode == 8 and proc.stderr.strip().splitlines() == [
        f"dsfs: error: change-set of dataset {dataset} is corrupt or truncated in {node.store} "
        f"(size or digest differs from its version record); refusing to use it"]
    assert not is_mounted(mountpoint) and node.record(mountpoint) is None
    others = {str(r["pid"]) for r in _records(node)}  # the module's shared mount, if running
    assert not [p for p in os.listdir("/proc") if p.isdigit() and p not in others and _daemon_of(p, node)]


def _records(node) -> list:
    folder = os.path.join(node.runtime_dir, "mounts")
    return [json.load(open(os.path.join(folder, n))) for n in os.listdir(folder) if n.endswith(".json")]


def _daemon_of(pid: str, node) -> bool:
    try:
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
        environ = open(f"/proc/{pid}/environ", "rb").read()
    except OSError:
        return False
    return b"dsfs.daemon" in cmdline and node.env["XDG_RUNTIME_DIR"].encode() in environ


def test_fuse_not_available(dsfs, final_id, tmp_path, monkeypatch):
    (tmp_path / "m").mkdir()
    monkeypatch.setattr(mounts, "FUSE_DEVICE", str(tmp_path / "no-fuse"))
    _fails(dsfs("mount", final_id, tmp_path / "m"), 11, "FUSE is not available", "no-fuse is missing",
           "apt-get install fuse3")
    monkeypatch.setattr(mounts, "FUSE_DEVICE", "/dev/null")  # present, whatever this machine has
    monkeypatch.setitem(sys.modules, "pyfuse3", None)  # import pyfuse3 -> ImportError
    _fails(dsfs("mount", final_id, tmp_path / "m"), 11, "pyfuse3 cannot be imported", "pip install 'dsfs[fuse]'")

"""docs/SEMANTICS.md, promise by promise, through real mounts (STYLE 10).

Every `**[id]**` on that page has one test here named `test_<id>`; the first test checks that the
page and this module name the same ids, so a promise cannot be added or dropped on one side only.
"""

import errno
import os
import random
import re
import signal
import stat
import subprocess
import time
import unicodedata

import blake3
import pytest

from dsfs import Dataset, paths
from dsfs.node.cache import Cache
from dsfs.daemon import mounts
from dsfs.errors import InvalidPath
from conftest import read_tree
from fusehelp import is_mounted, node_fixture, pid_gone, wait_for, write_syscalls

PAGE = os.path.join(os.path.dirname(__file__), "..", "docs", "SEMANTICS.md")
rng = random.Random(5)
CAFE = unicodedata.normalize("NFC", "café.txt")
FILES = {
    CAFE: b"nfc", "Upper.txt": b"U", "a.b": b"dot", "a/x": b"x", "a/deep/y": b"y",
    "tool.sh": b"#!/bin/sh\n", "big.bin": rng.randbytes(5 << 20), "empty": b"",
}


node = node_fixture("semantics")


@pytest.fixture(scope="module")
def shared(node):
    dataset = node.dataset(FILES, name="shared", modes={"tool.sh": 0o755})
    with node.mounted(dataset, "shared") as mountpoint:
        yield dataset, mountpoint


def _errno_of(call) -> int:
    with pytest.raises(OSError) as info:
        call()
    return info.value.errno


def test_page_and_tests_name_the_same_ids():
    promised = set(re.findall(r"\*\*\[([a-z-]+)\]\*\*", open(PAGE).read()))
    tested = {name[len("test_"):].replace("_", "-") for name in globals()
              if name.startswith("test_") and name != "test_page_and_tests_name_the_same_ids"}
    assert promised and promised == tested


def test_same_bytes(node):
    a = node.dataset({"shared": b"from a", "only_a": b"a", "gone": b"g", "d/x": b"ax"}, name="a")
    b = node.dataset({"shared": b"from b", "only_b": b"b"}, name="b")
    child = node.dataset({"d/x": b"child", "new": b"new"}, name="child", parents=[a, b], removals=["gone"])
    with node.mounted(child, "lineage") as mountpoint:
        assert read_tree(mountpoint) == {"shared": b"from b", "only_a": b"a", "only_b": b"b", "d/x": b"child",
                                         "new": b"new"}
        assert os.stat(f"{mountpoint}/d/x").st_size == 5


@pytest.mark.expect_log(r"ERROR dsfs\S*: read /bad: corrupt chunk")
def test_verified(node):
    files = {"good": rng.randbytes(30_000), "bad": rng.randbytes(40_000), "also_good": rng.randbytes(50_000)}
    dataset = node.dataset(files, name="verified")
    ref = next(e for e in Dataset.get(dataset, store=node.store).file_entries() if e.path == "bad").chunks[0]
    pack = f"{node.base}/store/packs/{ref.pack.hex()[:2]}/{ref.pack.hex()}"
    raw = bytearray(open(pack, "rb").read())
    raw[ref.offset + 100] ^= 0x01
    open(pack, "wb").write(bytes(raw))
    with node.mounted(dataset, "verified") as mountpoint:
        for _ in range(3):
            assert _errno_of(lambda: open(f"{mountpoint}/bad", "rb").read()) == errno.EIO
        assert open(f"{mountpoint}/good", "rb").read() == files["good"]
        assert open(f"{mountpoint}/also_good", "rb").read() == files["also_good"]
        digest = os.getxattr(f"{mountpoint}/good", "user.dsfs.blake3")
        assert digest == blake3.blake3(files["good"]).hexdigest().encode()
        assert os.listxattr(f"{mountpoint}/good") == []
        failures = [line for line in node.log(mountpoint).splitlines() if "ERROR" in line]
        assert len(failures) == 1 and "bad of dataset" in failures[0] and "corrupt" in failures[0]


def test_lazy(node):
    files = {"big": rng.randbytes(16 << 20), "dir/small": b"s" * 1000}
    dataset = node.dataset(files, name="lazy")
    cache_dir = f"{node.base}/lazy-cache"
    with node.mounted(dataset, "lazy", "--cache-dir", cache_dir) as mountpoint:
        cache = Cache(cache_dir)
        for folder, _, names in os.walk(mountpoint):
            for name in names:
                os.stat(os.path.join(folder, name))
                os.close(os.open(os.path.join(folder, name), os.O_RDONLY))
        assert cache.chunk_count() == 0  # listing, stat and open fetched nothing
        with open(f"{mountpoint}/big", "rb") as f:
            assert f.read(1) == files["big"][:1]
        chunks = len(Dataset.get(dataset, store=node.store).file_entries()[0].chunks)
        assert 1 <= _recorded(cache, 1) < chunks // 2  # the start, and a small read-ahead window
        assert open(f"{mountpoint}/big", "rb").read() == files["big"]
        assert _recorded(cache, chunks) == chunks


def _recorded(cache, at_least: int) -> int:
    """The chunks the node cache records, waiting up to 10 s for `at_least`: a mount's daemon records
    the chunks it stored in groups, a few milliseconds after their reads."""
    deadline = time.monotonic() + 10
    while (count := cache.chunk_count()) < at_least and time.monotonic() < deadline:
        time.sleep(0.02)
    return count


def test_mmap(shared):
    import mmap

    _, mountpoint = shared
    path = f"{mountpoint}/big.bin"
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mapped:
        assert mapped[:] == FILES["big.bin"]
    resident = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", path],
                              capture_output=True, text=True, check=True).stdout.strip()
    assert int(resident) == len(FILES["big.bin"])  # still in the page cache after close and reopen


def test_immutable(node, shared):
    dataset, mountpoint = shared

    def inodes(root):
        out = {}
        for folder, dirs, names in os.walk(root):
            for name in dirs + names:
                st = os.stat(os.path.join(folder, name))
                out[os.path.relpath(os.path.join(folder, name), root)] = (st.st_ino, st.st_size, st.st_mode,
                                                                        st.st_mtime_ns)
        return out

    first = inodes(mountpoint)
    assert inodes(mountpoint) == first
    with node.mounted(dataset, "immutable", "--cache-dir", f"{node.base}/other-cache") as other:  # another node
        assert inodes(other) == first


def test_attributes(node, shared):
    dataset, mountpoint = shared
    info = Dataset.get(dataset, store=node.store).info
    src = next(os.path.join(node.base, d) for d in os.listdir(node.base) if d.startswith("src-shared"))
    for folder, dirs, names in os.walk(mountpoint):
        for name in dirs + names:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            assert stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)
            assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
            assert st.st_atime_ns == st.st_ctime_ns == st.st_mtime_ns
            if stat.S_ISDIR(st.st_mode):
                assert stat.S_IMODE(st.st_mode) == 0o755 and st.st_nlink == 2 + len(next(os.walk(path))[1])
                import datetime

                assert st.st_mtime_ns // 10**9 == int(datetime.datetime.fromisoformat(info.finalized).timestamp())
            else:
                rel = os.path.relpath(path, mountpoint)
                assert stat.S_IMODE(st.st_mode) == (0o755 if rel == "tool.sh" else 0o644) and st.st_nlink == 1
                assert st.st_mtime_ns == os.stat(os.path.join(src, rel)).st_mtime_ns
                assert st.st_blocks == (st.st_size + 511) // 512


def test_names(shared):
    _, mountpoint = shared
    assert CAFE in os.listdir(mountpoint)
    assert open(os.path.join(mountpoint, CAFE), "rb").read() == b"nfc"
    nfd = unicodedata.normalize("NFD", CAFE)
    assert nfd != CAFE
    for other in (nfd, "upper.txt", "UPPER.TXT"):
        assert _errno_of(lambda: os.stat(os.path.join(mountpoint, other))) == errno.ENOENT
    assert _errno_of(lambda: os.stat(os.path.join(mountpoint.encode(), b"caf\xe9.txt"))) == errno.ENOENT
    for bad in ("", "a/../b", "./a", "a//b", "/abs", "a\0b", nfd):
        with pytest.raises(InvalidPath):
            paths.validate(bad)


def test_dots(shared):
    _, mountpoint = shared
    listing = subprocess.run(["ls", "-fai1", mountpoint], capture_output=True, text=True, check=True).stdout
    entries = [line.split(maxsplit=1) for line in listing.splitlines()]
    assert entries[0] == [str(os.stat(mountpoint).st_ino), "."] and entries[1][1] == ".."
    assert [name for _, name in entries[2:]] == ["Upper.txt", "a.b", "a", "big.bin", CAFE, "empty", "tool.sh"]
    sub = subprocess.run(["ls", "-fai1", f"{mountpoint}/a/deep"], capture_output=True, text=True, check=True).stdout
    sub_entries = [line.split(maxsplit=1) for line in sub.splitlines()]
    assert sub_entries[0] == [str(os.stat(f"{mountpoint}/a/deep").st_ino), "."]
    assert sub_entries[1] == [str(os.stat(f"{mountpoint}/a").st_ino), ".."]


def test_read_only(shared):
    _, mountpoint = shared
    for name, call in write_syscalls(mountpoint, "empty", "a").items():
        assert _errno_of(call) == errno.EROFS, name
    options = next(line for line in open("/proc/self/mounts") if f" {mountpoint} " in line).split()[3]
    assert {"ro", "nosuid", "nodev"} <= set(options.split(","))


@pytest.mark.expect_log(r"ERROR dsfs\S*: read /b: store \S+ unreachable")
def test_store_errors(node):
    from moto.server import ThreadedMotoServer
    import s3fs

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        s3fs.S3FileSystem(endpoint_url=endpoint, key="k", secret="s").mkdir("bucket")
        from dsfs.store.layout import Store

        store = Store.open("s3://bucket/dsfs", create=True, endpoint_url=endpoint, key="k", secret="s")
        # a big file between them in path (= pack) order: reading "a" must not bring "b" ([lazy])
        files = {"a": rng.randbytes(50_000), "b": rng.randbytes(60_000), "ab": rng.randbytes((4 << 20) + 1)}
        src = os.path.join(node.base, "s3-src")
        os.makedirs(src)
        for name, data in files.items():
            open(os.path.join(src, name), "wb").write(data)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("XDG_STATE_HOME", node.env["XDG_STATE_HOME"])
            ds = Dataset.create("proj", "s3", store=store)
            ds.add_files(src)
            ds.finalize()
        env = {"DSFS_STORE": "s3://bucket/dsfs", "FSSPEC_S3_ENDPOINT_URL": endpoint, "FSSPEC_S3_KEY": "k",
               "FSSPEC_S3_SECRET": "s", "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"}
        mountpoint = node.mountpoint("s3")
        assert node.cli("mount", ds.id, mountpoint, "--cache-dir", f"{node.base}/s3-cache", env=env).returncode == 0
        try:
            assert open(f"{mountpoint}/a", "rb").read() == files["a"]
            server.stop()
            assert _errno_of(lambda: open(f"{mountpoint}/b", "rb").read()) == errno.EIO
            assert sorted(os.listdir(mountpoint)) == ["a", "ab", "b"]  # still up
            with open(f"{mountpoint}/a", "rb") as f:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # not from the page cache
                assert f.read() == files["a"]
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
            server.start()
            assert open(f"{mountpoint}/b", "rb").read() == files["b"]
            assert "unreachable" in node.log(mountpoint)
        finally:
            node.cli("unmount", mountpoint, check=True)
    finally:
        server.stop()


@pytest.mark.expect_log(r"ERROR dsfs\S*: read /never: pack \w+ is missing")
def test_snapshot(node):
    files = {"kept": rng.randbytes(20_000), "uncached": rng.randbytes(20_000), "never": rng.randbytes(20_000)}
    # big files between them in path (= pack) order: a small file read out of order brings the small
    # files packed next to it ([lazy]), and these three must each be fetched on its own
    files |= {"l-spacer": rng.randbytes((4 << 20) + 1), "o-spacer": rng.randbytes((4 << 20) + 1)}
    dataset = node.dataset(files, name="snap")
    with node.mounted(dataset, "snap") as mountpoint:
        assert open(f"{mountpoint}/kept", "rb").read() == files["kept"]
        before = {n: os.stat(f"{mountpoint}/{n}") for n in os.listdir(mountpoint)}
        for args in (("metadata", "set", "k", "v", "--id", dataset), ("publish", "--id", dataset),
                     ("rename", "--project", "proj", "--name", "snap", "--new-name", "renamed")):
            node.cli(*args, check=True)
        assert {n: os.stat(f"{mountpoint}/{n}") for n in os.listdir(mountpoint)} == before
        node.cli("delete", "--id", dataset, "--force", check=True)
        with open(f"{mountpoint}/uncached", "rb") as f:  # records only: the packs are still there
            assert f.read() == files["uncached"]
        node.cli("gc", "--grace", "0", check=True)
        assert _errno_of(lambda: open(f"{mountpoint}/never", "rb").read()) == errno.EIO
        with open(f"{mountpoint}/kept", "rb") as f:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            assert f.read() == files["kept"]  # from the node's cache


def test_dead_daemon(node):
    dataset = node.dataset({"f": b"f", "d/g": b"g"}, name="dead")
    mountpoint = node.mountpoint("dead")
    for clear in (("unmount", mountpoint), ("mount", dataset, mountpoint)):
        pid = node.mount(dataset, mountpoint)
        os.stat(f"{mountpoint}/f")
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: pid_gone(pid), what="daemon death")
        wait_for(lambda: _errno_of(lambda: os.listdir(mountpoint)) == errno.ENOTCONN, what="ENOTCONN")
        for call in (lambda: open(f"{mountpoint}/f", "rb"), lambda: os.listdir(f"{mountpoint}/d")):
            assert _errno_of(call) == errno.ENOTCONN
        node.cli(*clear, check=True)
        if clear[0] == "mount":
            assert open(f"{mountpoint}/f", "rb").read() == b"f"
            node.cli("unmount", mountpoint, check=True)
        assert not is_mounted(mountpoint) and not mounts.is_dead(mountpoint)

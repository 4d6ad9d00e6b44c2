"""The pyfuse3 Operations driven in process, without a mount (S3QL's t3_fs_api tier): attributes,
listing offsets, EROFS for every mutating call, and errors mapped to errno in one place."""

import errno
import logging
import os
import stat

import pytest

try:
    import pyfuse3
except ImportError:  # pragma: no cover - depends on the machine
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("pyfuse3 is not installed (pip install 'dsfs[fuse]')", allow_module_level=True)
import trio  # noqa: E402

from dsfs import Dataset  # noqa: E402
from dsfs.node.cache import Cache  # noqa: E402
from dsfs.errors import StoreUnavailable  # noqa: E402
from dsfs.daemon.fuse_ops import TIMEOUT, XATTR_DIGEST, Operations, mount_options  # noqa: E402
from dsfs.node.view import View  # noqa: E402
from conftest import make_tree  # noqa: E402

FILES = {"a.txt": b"alpha", "run.sh": b"#!/bin/sh\n", "sub/deep/x.bin": os.urandom(3 << 20), "sub/e": b""}


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setenv("DSFS_RETRY_DELAYS", "0.01")


@pytest.fixture
def ops(tmp_path, file_store):
    make_tree(tmp_path / "d", FILES)
    os.chmod(tmp_path / "d" / "run.sh", 0o755)
    ds = Dataset.create("p", "n", store=file_store)
    ds.add_files(str(tmp_path / "d"))
    ds.finalize()
    return Operations(View(ds.store, Cache(), ds.id))


def run(coro_fn, *args):
    return trio.run(coro_fn, *args)


def fuse_errno(coro_fn, *args) -> int:
    with pytest.raises(pyfuse3.FUSEError) as info:
        run(coro_fn, *args)
    return info.value.errno


def lookup(ops, path):
    ino = pyfuse3.ROOT_INODE
    for part in path.split("/"):
        ino = run(ops.lookup, ino, part.encode(), None).st_ino
    return ino


def test_abandoned_reply_is_not_an_error():
    """pyfuse3's ERROR for a reply whose request the kernel dropped (a release queued while the
    mount goes away) is a DEBUG record under -v and nothing otherwise; other reply errors stay."""
    from dsfs.daemon.service import _abandoned_reply_filter

    for debug in (False, True):
        seen: list[logging.LogRecord] = []
        log = logging.Logger("pyfuse3-under-test")
        log.addHandler(logging.Handler())
        log.handlers[0].emit = seen.append  # type: ignore[method-assign]
        log.addFilter(_abandoned_reply_filter(debug))
        log.error("fuse_release(): fuse_reply_* failed with %s", "No such file or directory")
        log.error("fuse_read(): fuse_reply_* failed with %s", "Broken pipe")
        assert [(r.levelname, r.getMessage().split("(")[0]) for r in seen] == (
            [("DEBUG", "fuse_release"), ("ERROR", "fuse_read")] if debug else [("ERROR", "fuse_read")])


def test_attributes(ops):
    root = run(ops.getattr, pyfuse3.ROOT_INODE, None)
    assert stat.S_ISDIR(root.st_mode) and stat.S_IMODE(root.st_mode) == 0o755 and root.st_nlink == 3
    attr = run(ops.lookup, pyfuse3.ROOT_INODE, b"run.sh", None)
    assert stat.S_ISREG(attr.st_mode) and stat.S_IMODE(attr.st_mode) == 0o755  # exec bit kept
    assert run(ops.lookup, pyfuse3.ROOT_INODE, b"a.txt", None).st_mode & 0o777 == 0o644
    big = run(ops.getattr, lookup(ops, "sub/deep/x.bin"), None)
    assert big.st_size == 3 << 20 and big.st_blocks == (3 << 20) // 512  # `du` counts 512-byte blocks
    assert (big.st_uid, big.st_gid) == (os.getuid(), os.getgid())
    assert big.st_mtime_ns == big.st_ctime_ns == big.st_atime_ns > 0
    assert attr.entry_timeout == attr.attr_timeout == TIMEOUT >= 3600
    assert run(ops.getattr, attr.st_ino, None).st_ino == attr.st_ino  # stable inode numbers


def test_negative_and_dot_lookups(ops):
    missing = run(ops.lookup, pyfuse3.ROOT_INODE, b"nope", None)
    assert missing.st_ino == 0 and missing.entry_timeout == TIMEOUT  # cached by the kernel
    assert run(ops.lookup, pyfuse3.ROOT_INODE, b"\xff\xfe", None).st_ino == 0  # not UTF-8: absent
    deep = lookup(ops, "sub/deep")
    assert run(ops.lookup, deep, b".", None).st_ino == deep
    assert run(ops.lookup, deep, b"..", None).st_ino == lookup(ops, "sub")
    assert run(ops.lookup, pyfuse3.ROOT_INODE, b"..", None).st_ino == pyfuse3.ROOT_INODE


def _listing(ops, ino, budget, monkeypatch):
    """Every (name, inode, next offset) of a folder, `budget` entries per readdir call."""
    replies = []
    left = [0]

    def reply(token, name, attr, next_id):
        if left[0] == 0:
            return False
        left[0] -= 1
        replies.append((name, attr.st_ino, next_id))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    fh = run(ops.opendir, ino, None)
    offset, calls = 0, 0
    while True:
        left[0] = budget
        before = len(replies)
        run(ops.readdir, fh, offset, None)
        calls += 1
        if len(replies) == before:
            break
        offset = replies[-1][2]
    run(ops.releasedir, fh)
    return replies, calls


@pytest.mark.parametrize("budget", [1, 2, 1000])
def test_readdir_resumes_at_offsets(ops, monkeypatch, budget):
    replies, _ = _listing(ops, lookup(ops, "sub"), budget, monkeypatch)
    assert [(n, i) for n, i, _ in replies] == [(b".", lookup(ops, "sub")), (b"..", pyfuse3.ROOT_INODE),
                                               (b"deep", lookup(ops, "sub/deep")), (b"e", lookup(ops, "sub/e"))]
    assert [o for _, _, o in replies] == [1, 2, 3, 4]
    root, _ = _listing(ops, pyfuse3.ROOT_INODE, budget, monkeypatch)
    assert [n for n, _, _ in root] == [b".", b"..", b"a.txt", b"run.sh", b"sub"]


def test_readdir_of_a_big_folder_is_fetched_in_windows(tmp_path, file_store, monkeypatch):
    make_tree(tmp_path / "d", {f"f{i:04d}": b"" for i in range(700)})
    ds = Dataset.create("p", "big", store=file_store)
    ds.add_files(str(tmp_path / "d"))
    ds.finalize()
    ops = Operations(View(ds.store, Cache(), ds.id))
    fetched = []
    real = ops._entries
    monkeypatch.setattr(ops, "_entries", lambda ino, start: fetched.append(start) or real(ino, start))
    replies, calls = _listing(ops, pyfuse3.ROOT_INODE, 40, monkeypatch)
    assert [n for n, _, _ in replies] == [b".", b".."] + [f"f{i:04d}".encode() for i in range(700)]
    assert calls > len(fetched) >= 3  # most calls were answered from the fetched window


def test_open_read_release(ops):
    ino = lookup(ops, "sub/deep/x.bin")
    info = run(ops.open, ino, os.O_RDONLY, None)
    assert info.keep_cache and not info.direct_io
    data = FILES["sub/deep/x.bin"]
    assert bytes(run(ops.read, info.fh, 1000, 1 << 20)) == data[1000:1000 + (1 << 20)]
    assert bytes(run(ops.read, info.fh, len(data) - 5, 100)) == data[-5:]
    assert bytes(run(ops.read, info.fh, 1000, 100)) == data[1000:1100]  # from memory now
    run(ops.release, info.fh)
    assert ops.files == {}


def test_every_mutating_call_is_erofs(ops):
    ino = lookup(ops, "a.txt")
    root = pyfuse3.ROOT_INODE
    calls = {
        "setattr": (ino, pyfuse3.EntryAttributes(), None, None, None),
        "mknod": (root, b"n", stat.S_IFREG | 0o644, 0, None), "mkdir": (root, b"d", 0o755, None),
        "unlink": (root, b"a.txt", None), "rmdir": (root, b"sub", None), "symlink": (root, b"l", b"a.txt", None),
        "rename": (root, b"a.txt", root, b"b", 0, None), "link": (ino, root, b"h", None),
        "write": (1, 0, b"x"), "create": (root, b"c", 0o644, os.O_WRONLY, None),
        "setxattr": (ino, b"user.x", b"1", None), "removexattr": (ino, b"user.x", None),
    }
    for name, args in calls.items():
        assert fuse_errno(getattr(ops, name), *args) == errno.EROFS, name
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC, os.O_WRONLY | os.O_APPEND):
        assert fuse_errno(ops.open, ino, flags, None) == errno.EROFS
    assert fuse_errno(ops.access, ino, os.W_OK, None) == errno.EROFS
    assert run(ops.access, ino, os.R_OK, None) is True
    assert run(ops.access, ino, os.X_OK, None) is False
    assert run(ops.access, lookup(ops, "run.sh"), os.X_OK, None) is True


def test_xattrs_and_statfs(ops):
    ino = lookup(ops, "a.txt")
    import blake3

    assert run(ops.getxattr, ino, XATTR_DIGEST, None) == blake3.blake3(b"alpha").hexdigest().encode()
    assert fuse_errno(ops.getxattr, ino, b"security.selinux", None) == errno.ENODATA
    assert fuse_errno(ops.getxattr, pyfuse3.ROOT_INODE, XATTR_DIGEST, None) == errno.ENODATA
    assert run(ops.listxattr, ino, None) == []
    st = run(ops.statfs, None)
    assert st.f_files == 4 + 3 and st.f_bfree == st.f_bavail == 0
    assert st.f_blocks * st.f_frsize >= sum(map(len, FILES.values()))


def test_mount_options():
    assert {"ro", "nosuid", "nodev", "fsname=dsfs", "subtype=dsfs"} <= mount_options()
    assert "default_permissions" not in mount_options() and "allow_other" not in mount_options()
    assert {"allow_other", "default_permissions"} <= mount_options(allow_other=True)


@pytest.mark.expect_log(r"ERROR .*unexpected RuntimeError, answered EIO")
def test_unexpected_exception_is_eio_logged_once_and_serving_goes_on(ops, monkeypatch, caplog):
    ino = lookup(ops, "sub/deep/x.bin")
    fh = run(ops.open, ino, os.O_RDONLY, None).fh
    real = ops.view.read

    def broken(*args, **kwargs):
        raise RuntimeError("bug in a handler")

    monkeypatch.setattr(ops.view, "read", broken)
    with caplog.at_level(logging.ERROR, logger="dsfs"):
        assert fuse_errno(ops.read, fh, 0, 100) == errno.EIO
        assert fuse_errno(ops.read, fh, 100, 100) == errno.EIO
    records = [r for r in caplog.records if "unexpected RuntimeError" in r.getMessage()]
    assert len(records) == 1 and "/sub/deep/x.bin" in records[0].getMessage() and records[0].exc_info
    monkeypatch.setattr(ops.view, "read", real)
    assert bytes(run(ops.read, fh, 0, 5)) == FILES["sub/deep/x.bin"][:5]
    assert run(ops.getattr, ino, None).st_size == 3 << 20


@pytest.mark.expect_log(r"ERROR .*read /a.txt: corrupt chunk")
def test_corrupt_chunk_is_eio_for_that_file_only_and_logged_once(ops, file_store, caplog):
    ref = ops.view.resolve("a.txt").chunks[0]
    hexid = ref.pack.hex()
    path = f"{file_store[len('file://'):]}/packs/{hexid[:2]}/{hexid}"
    raw = bytearray(open(path, "rb").read())
    raw[ref.offset] ^= 0xFF
    open(path, "wb").write(bytes(raw))
    bad = run(ops.open, lookup(ops, "a.txt"), os.O_RDONLY, None).fh
    good = run(ops.open, lookup(ops, "run.sh"), os.O_RDONLY, None).fh
    with caplog.at_level(logging.ERROR, logger="dsfs"):
        for _ in range(3):
            assert fuse_errno(ops.read, bad, 0, 4096) == errno.EIO
    assert bytes(run(ops.read, good, 0, 4096)) == FILES["run.sh"]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "corrupt" in lines[0] and "a.txt" in lines[0]


@pytest.mark.expect_log(r"ERROR .*store unreachable \(test\) \(answered EIO\)")
def test_store_down_mid_read_is_eio_then_recovers(ops, monkeypatch):
    fh = run(ops.open, lookup(ops, "sub/deep/x.bin"), os.O_RDONLY, None).fh
    real = ops.view.store.read_pack_range
    calls = []

    def down(*args):
        calls.append(args)
        raise StoreUnavailable("store unreachable (test)")

    monkeypatch.setattr(ops.view.store, "read_pack_range", down)
    assert fuse_errno(ops.read, fh, 0, 4096) == errno.EIO
    # The read-ahead's background loads of the next chunks may fail too: count the first chunk's.
    first = ops.view.getattr(lookup(ops, "sub/deep/x.bin")).chunks[0]
    asked = [args for args in calls if args[0] == first.pack and args[1] <= first.offset < args[1] + args[2]]
    assert len(asked) == 2  # retried (DSFS_RETRY_DELAYS: one delay) before failing
    monkeypatch.setattr(ops.view.store, "read_pack_range", real)
    assert bytes(run(ops.read, fh, 0, 4096)) == FILES["sub/deep/x.bin"][:4096]

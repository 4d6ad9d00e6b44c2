"""`dsfs get`'s cached copies: a file written, removed or added through a copy is repaired on the
next `get` (the copies share inodes), `cache clear` does not silently break `get --link` symlinks, and
`cache stats` / `cache prune` count the copies' bytes."""

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from dsfs import Store
from dsfs.node import copies
from dsfs.node.cache import Cache
from dsfs.node.view import View
from conftest import final_version, make_tree, read_tree


def _get(dsfs, store, ref, *extra) -> str:
    r = dsfs("--store", store, "get", ref, *extra)
    assert r.code == 0, r.err
    return r.out.strip()


def _stats(dsfs) -> dict:
    stats = json.loads(dsfs("cache", "stats", "--json").out)
    del stats["budget"]  # a share of the disk's free space, which moves
    return stats


def _content_file(ino: int) -> str:
    """The file under the cache's file store with this inode."""
    for folder, _, names in os.walk(os.path.join(Cache().root, "files")):
        for name in names:
            if os.lstat(os.path.join(folder, name)).st_ino == ino:
                return os.path.join(folder, name)
    raise AssertionError(f"no content file has inode {ino}")


def _overwrite_same_size(path):
    with open(path, "r+b") as f:  # root writes into the 0444 file
        f.write(b"X" * 100)


def _grow(path):
    with open(path, "ab") as f:
        f.write(b"more")


def _truncate(path):
    os.truncate(path, 10)


@pytest.mark.parametrize("tamper", [_overwrite_same_size, _grow, _truncate], ids=["same size", "grown", "truncated"])
def test_written_copy_file_is_repaired_to_a_fresh_inode(tmp_path, file_store, dsfs, tamper):
    files = {"a": os.urandom(20_000), "sub/b": os.urandom(5_000)}
    make_tree(tmp_path / "d", files)
    ds = final_version(file_store, tmp_path / "d")
    copy = _get(dsfs, file_store, ds.id)
    target = os.path.join(copy, "a")
    before = os.stat(target)
    content = _content_file(before.st_ino)
    tamper(target)
    altered = os.stat(target)
    assert altered.st_mtime_ns != before.st_mtime_ns
    with open(target, "rb") as held:  # a reader of the altered inode keeps it whole
        tampered_bytes = held.read()
        assert _get(dsfs, file_store, ds.id) == copy
        held.seek(0)
        assert held.read() == tampered_bytes
    assert read_tree(copy) == files
    repaired = os.stat(target)
    assert repaired.st_ino != before.st_ino and repaired.st_mode & 0o222 == 0
    assert os.stat(content).st_ino == repaired.st_ino  # the file store holds the fresh inode
    assert dsfs("--store", file_store, "verify", "--id", ds.id).code == 0


def test_removed_added_and_replaced_entries_are_repaired(tmp_path, file_store, dsfs):
    files = {"a": b"a" * 1000, "sub/b": b"b" * 1000, "sub/deep/c": b"c" * 10, "d": b"d"}
    make_tree(tmp_path / "d", files)
    ds = final_version(file_store, tmp_path / "d")
    copy = _get(dsfs, file_store, ds.id)
    os.unlink(os.path.join(copy, "a"))
    with open(os.path.join(copy, "sub", "extra"), "wb") as f:
        f.write(b"extra")
    os.mkdir(os.path.join(copy, "newdir"))
    with open(os.path.join(copy, "newdir", "x"), "wb") as f:
        f.write(b"x")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.rename(os.path.join(copy, "sub", "deep"), elsewhere / "deep")
    os.symlink(elsewhere / "deep", os.path.join(copy, "sub", "deep"))  # a folder replaced by a symlink
    os.unlink(os.path.join(copy, "d"))
    os.mkdir(os.path.join(copy, "d"))  # a file replaced by a folder
    assert _get(dsfs, file_store, ds.id) == copy
    assert read_tree(copy) == files
    assert not os.path.islink(os.path.join(copy, "sub", "deep"))
    assert sorted(os.listdir(copy)) == ["a", "d", "sub"]
    assert read_tree(elsewhere) == {"deep/c": b"c" * 10}  # nothing written through the symlink


def test_tampering_through_one_version_is_repaired_in_the_other(tmp_path, file_store, dsfs, monkeypatch):
    shared = os.urandom(50_000)
    make_tree(tmp_path / "d", {"shared": shared, "p": b"parent"})
    parent = final_version(file_store, tmp_path / "d")
    make_tree(tmp_path / "d", {"c": b"child"})
    child = final_version(file_store, tmp_path / "d", parents=[parent.id])
    parent_copy = _get(dsfs, file_store, parent.id)
    child_copy = _get(dsfs, file_store, child.id)
    old = os.stat(os.path.join(parent_copy, "shared")).st_ino
    assert os.stat(os.path.join(child_copy, "shared")).st_ino == old
    _overwrite_same_size(os.path.join(parent_copy, "shared"))
    assert _get(dsfs, file_store, child.id) == child_copy  # the other version's copy notices first
    assert read_tree(child_copy) == {"shared": shared, "p": b"parent", "c": b"child"}
    fresh = os.stat(os.path.join(child_copy, "shared")).st_ino
    assert fresh != old
    with monkeypatch.context() as m:  # the parent relinks the content the child's repair wrote
        m.setattr(Store, "read_pack_range", lambda *a: (_ for _ in ()).throw(AssertionError("store read")))
        assert _get(dsfs, file_store, parent.id) == parent_copy
    assert read_tree(parent_copy) == {"shared": shared, "p": b"parent"}
    assert os.stat(os.path.join(parent_copy, "shared")).st_ino == fresh


def test_a_new_copy_does_not_link_content_altered_through_another(tmp_path, file_store, dsfs):
    shared = os.urandom(30_000)
    make_tree(tmp_path / "d", {"shared": shared})
    first = final_version(file_store, tmp_path / "d")
    first_copy = _get(dsfs, file_store, first.id)
    _overwrite_same_size(os.path.join(first_copy, "shared"))
    make_tree(tmp_path / "d", {"new": b"new"})
    second = final_version(file_store, tmp_path / "d", parents=[first.id])
    assert read_tree(_get(dsfs, file_store, second.id)) == {"shared": shared, "new": b"new"}


def test_cache_clear_refuses_while_a_get_link_points_in(tmp_path, file_store, dsfs):
    make_tree(tmp_path / "d", {"f": os.urandom(10_000)})
    ds = final_version(file_store, tmp_path / "d")
    link = tmp_path / "ln"
    assert _get(dsfs, file_store, ds.id, "--link", link) == str(link)
    View(ds.store, Cache(), ds.id).read_path("f")  # a chunk and a view too: a refused clear keeps them
    before = _stats(dsfs)
    assert before["chunks"] == 1 and before["views"] == 1 and before["copies"] == 1
    r = dsfs("cache", "clear")
    assert r.code == 4 and str(link) in r.err and "--force" in r.err and len(r.err.strip().splitlines()) == 1
    assert _stats(dsfs) == before
    assert read_tree(link) == {"f": open(tmp_path / "d" / "f", "rb").read()}
    r = dsfs("cache", "clear", "--force")
    assert r.code == 0 and str(link) in r.err and ds.id in r.err
    assert os.path.islink(link) and not os.path.exists(link)
    assert _stats(dsfs)["copies"] == 0
    _get(dsfs, file_store, ds.id)  # the link works again, and is still known
    assert os.path.exists(link) and dsfs("cache", "clear").code == 4
    os.unlink(link)
    assert dsfs("cache", "clear").code == 0


def _disk_bytes(root) -> int:
    """Bytes of every distinct inode under the cache's file store and copies."""
    sizes = {}
    for sub in ("files", "copies"):
        for folder, _, names in os.walk(os.path.join(root, sub)):
            for name in names:
                st = os.lstat(os.path.join(folder, name))
                sizes[st.st_ino] = st.st_size
    return sum(sizes.values())


def test_cache_stats_count_copy_bytes_once_per_inode(tmp_path, file_store, dsfs):
    shared = os.urandom(200_000)
    make_tree(tmp_path / "d", {"shared": shared, "again": shared, "p": os.urandom(1_000)})
    parent = final_version(file_store, tmp_path / "d")
    make_tree(tmp_path / "d", {"c": os.urandom(2_000)})
    child = final_version(file_store, tmp_path / "d", parents=[parent.id])
    _get(dsfs, file_store, parent.id)
    _get(dsfs, file_store, child.id)
    stats = _stats(dsfs)
    assert stats["copies"] == 2
    assert stats["copy_bytes"] == _disk_bytes(Cache().root)
    assert 203_000 <= stats["copy_bytes"] < 220_000  # the 200 kB file once, not four times
    assert stats["bytes"] == stats["chunk_bytes"] + stats["copy_bytes"]


def test_cache_prune_removes_least_recently_used_copies_but_not_linked_ones(tmp_path, file_store, dsfs):
    versions = []
    for name in ("a", "b"):
        make_tree(tmp_path / name, {"f": os.urandom(300_000)})
        versions.append(final_version(file_store, tmp_path / name, name=name))
    a, b = versions
    a_copy = _get(dsfs, file_store, a.id)
    time.sleep(0.05)
    b_copy = _get(dsfs, file_store, b.id)
    time.sleep(0.05)
    _get(dsfs, file_store, a.id)  # a is now the more recently used
    r = dsfs("cache", "prune", "--to", "400K")
    assert r.code == 0, r.err
    stats = _stats(dsfs)
    assert stats["copies"] == 1 and stats["bytes"] <= 400 * 1024
    assert os.path.isdir(a_copy) and not os.path.exists(b_copy)
    assert stats["copy_bytes"] == _disk_bytes(Cache().root)  # b's content file went with it
    link = tmp_path / "ln"
    _get(dsfs, file_store, a.id, "--link", link)
    r = dsfs("cache", "prune", "--to", "0")
    assert r.code == 0 and str(link) in r.err
    assert read_tree(link) == {"f": open(tmp_path / "a" / "f", "rb").read()}
    assert read_tree(_get(dsfs, file_store, b.id)) == {"f": open(tmp_path / "b" / "f", "rb").read()}


def test_a_copy_from_before_manifests_is_laid_out_again(tmp_path, file_store, dsfs):
    """A cache written by a dsfs without stat records: nothing in it is trusted, so even a write
    that kept size and mtime is undone by the first `get`."""
    from dsfs.node.copies import MANIFEST_SUFFIX, ContentFiles

    files = {"a": os.urandom(4_000), "b": b"b"}
    make_tree(tmp_path / "d", files)
    ds = final_version(file_store, tmp_path / "d")
    copy = _get(dsfs, file_store, ds.id)
    os.unlink(copy + MANIFEST_SUFFIX)
    ContentFiles(Cache()).forget()
    st = os.stat(os.path.join(copy, "a"))
    _overwrite_same_size(os.path.join(copy, "a"))
    os.utime(os.path.join(copy, "a"), ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _get(dsfs, file_store, ds.id) == copy
    assert read_tree(copy) == files


def test_a_copy_is_checked_in_path_order_whatever_its_names(tmp_path, file_store, dsfs):
    """The manifest's rows and the walk of the copy meet in path order, where a folder's files sort
    after names that share its start ('a b' < 'a-b' < 'a.b' < 'a/...' < 'a0'): a copy so laid out is
    reused as it is, and a file added, removed or written through it is still seen. The manifest of
    a dsfs before its header (format 1: one array) makes the copy be laid out again."""
    import msgpack

    from dsfs.node.copies import MANIFEST_SUFFIX, intact

    files = {"a/x": b"1", "a b": b"2", "a-b": b"3", "a.b": b"4", "a/y/z": b"5", "a/ b": b"6", "a0": b"7",
             "é/f": b"8", "e": b"9", "a/y0": b"10"}
    make_tree(tmp_path / "d", files)
    ds = final_version(file_store, tmp_path / "d")
    copy = _get(dsfs, file_store, ds.id)
    with open(copy + MANIFEST_SUFFIX, "rb") as f:
        rows = list(msgpack.Unpacker(f))
    assert rows[0] == {"manifest": 2} and [row[0] for row in rows[1:]] == sorted(files)
    assert intact(copy) and read_tree(copy) == files
    os.unlink(os.path.join(copy, "a", "y", "z"))
    assert not intact(copy)
    assert _get(dsfs, file_store, ds.id) == copy and intact(copy) and read_tree(copy) == files
    open(os.path.join(copy, "a", "new"), "wb").close()
    assert not intact(copy)
    assert _get(dsfs, file_store, ds.id) == copy and intact(copy) and read_tree(copy) == files
    with open(copy + MANIFEST_SUFFIX, "wb") as f:  # format 1, for these very files
        f.write(msgpack.packb([[row[0], *row[1:]] for row in rows[1:]]))
    assert not intact(copy)
    assert _get(dsfs, file_store, ds.id) == copy and intact(copy)


def test_content_file_replaced_while_it_is_linked(tmp_path, file_store, dsfs, monkeypatch):
    """Two `get`s of versions sharing content write the same content file; one renames its inode
    over the name while the other links it, and Linux's link(2) then fails with ENOENT (seen in CI as
    a traceback). The link is tried again and the manifest records the inode actually linked."""
    files = {"a": os.urandom(5_000), "sub/b": os.urandom(3_000)}
    make_tree(tmp_path / "d", files)
    ds = final_version(file_store, tmp_path / "d")
    real_link, raced = os.link, []

    def link_racing_a_rename(source, dest, *args, **kwargs):
        if not raced and os.sep + "files" + os.sep in source:
            raced.append(source)
            other = source + ".other-get"  # the other process's inode of the same content
            with open(source, "rb") as f, open(other, "wb") as out:
                out.write(f.read())
            os.chmod(other, 0o444)
            os.replace(other, source)
            raise FileNotFoundError(2, "No such file or directory", source)
        return real_link(source, dest, *args, **kwargs)

    monkeypatch.setattr(os, "link", link_racing_a_rename)
    copy = _get(dsfs, file_store, ds.id)
    monkeypatch.setattr(os, "link", real_link)
    assert raced and read_tree(copy) == files
    assert copies.intact(copy)  # the manifest matches what was linked: the next get reuses the copy
    inode = os.lstat(os.path.join(copy, "a")).st_ino
    assert _get(dsfs, file_store, ds.id) == copy and os.lstat(os.path.join(copy, "a")).st_ino == inode


def test_a_repair_meets_folders_and_files_in_each_others_place(tmp_path, file_store, dsfs):
    """The repair walks the copy and the version side by side in path order: a folder holding files
    where a file belongs (the walk then passes over its files, removed), a file where a folder
    belongs, and names that sort around them; folders emptied of extra files go too."""
    files = {"a": b"1", "a.b": b"2", "s/x": b"3", "s/y/z": b"4", "s0": b"5"}
    make_tree(tmp_path / "d", files)
    ds = final_version(file_store, tmp_path / "d")
    copy = _get(dsfs, file_store, ds.id)
    os.unlink(os.path.join(copy, "a"))
    make_tree(Path(copy) / "a", {"in": b"i", "deeper/more": b"m", "zz": b"z"})  # a folder in a file's place
    shutil.rmtree(os.path.join(copy, "s"))
    with open(os.path.join(copy, "s"), "wb") as f:  # a file in a folder's place
        f.write(b"not a folder")
    make_tree(Path(copy) / "extra", {"deep/er/f": b"f"})  # only extra files: every folder of it goes
    assert _get(dsfs, file_store, ds.id) == copy
    assert read_tree(copy) == files and copies.intact(copy)
    assert sorted(os.listdir(copy)) == ["a", "a.b", "s", "s0"]

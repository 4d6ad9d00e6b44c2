"""fsspec's own expectations of a filesystem (fsspec.tests.abstract) that apply to a read-only one,
on dsfs://: every `get` test (files, folders, globs, with and without trailing slashes, recursive
and maxdepth, lists of files), run by fsspec's AbstractGetTests against the same trees its fixtures
make, here built as a dsfs version; and get/cat/find/glob/walk/ls/info compared with fsspec's
LocalFileSystem over the same tree. (The copy, put, pipe, open and mv suites write to the
filesystem under test, which dsfs:// refuses: test_filesystem checks every write is EROFS.)"""

from __future__ import annotations

import os
import posixpath
from hashlib import md5

import fsspec
import pytest
from conftest import final_version, make_tree
from fsspec.implementations.local import LocalFileSystem, make_path_posix
from fsspec.tests.abstract import AbstractFixtures
from fsspec.tests.abstract.get import AbstractGetTests

# The trees of fsspec's scenario fixtures (BaseAbstractFixtures), each under a folder of one version.
SCENARIOS = {
    "bulk": ["file1", "file2", "subdir/subfile1", "subdir/subfile2", "subdir/nesteddir/nestedfile"],
    "glob": ["file1", "file2"] + [f"subdir{i}/{name}" for i in range(2)
                                  for name in ("subfile1", "subfile2", "nesteddir/nestedfile")],
    "prefix": ["subdir.txt", "subdir/subfile.txt"],
    "recursive": ["file"],  # test_get_directory_recursive's (made with fs.mkdir and fs.touch there)
}
HASHED = {f"{md5(str(i).encode()).hexdigest()}.txt": str(i).encode() for i in range(10)}
ROOT = "fsspec/abstract"


def _tree() -> dict[str, bytes]:
    files = {f"{scenario}/source/{path}": f"{scenario}:{path}".encode()
             for scenario, paths in SCENARIOS.items() for path in paths}
    files.update({f"hashed/source/{name}": data for name, data in HASHED.items()})
    return files


@pytest.fixture(scope="module")
def abstract_version(tmp_path_factory):
    src = tmp_path_factory.mktemp("abstract-src")
    make_tree(src, _tree())
    store = f"file://{tmp_path_factory.mktemp('abstract-store')}"
    final_version(store, src, project="fsspec", name="abstract")
    return store, src


def _scenario(folder: str):
    """A fixture of fsspec's scenarios: the folder of the version holding its tree."""
    @pytest.fixture
    def source(self):
        return f"{ROOT}/{folder}/source"
    return source


class TestDsfsGet(AbstractFixtures, AbstractGetTests):
    """fsspec's AbstractGetTests, their fixtures pointed at folders of the version (fsspec's would
    make the trees with fs.makedirs and fs.touch, and remove them after)."""

    @pytest.fixture
    def fs(self, abstract_version):
        return fsspec.filesystem("dsfs", store=abstract_version[0], skip_instance_cache=True)

    @pytest.fixture
    def fs_join(self):
        return posixpath.join

    @pytest.fixture
    def fs_path(self):
        return ROOT

    fs_bulk_operations_scenario_0 = _scenario("bulk")
    fs_glob_edge_cases_files = _scenario("glob")
    fs_dir_and_file_with_same_name_prefix = _scenario("prefix")
    fs_10_files_with_hashed_names = _scenario("hashed")

    def test_get_directory_recursive(self, fs, fs_join, fs_path, local_fs, local_join, local_target):
        """fsspec's test, from a folder of the version where it makes one with mkdir and touch."""
        src = fs_join(fs_path, "recursive", "source")
        assert not local_fs.exists(local_target)
        for loop in range(2):  # without a slash: the folder itself the first time, inside it after
            fs.get(src, local_target, recursive=True)
            assert local_fs.isdir(local_target)
            assert local_fs.isfile(local_join(local_target, "file"))
            assert local_fs.isdir(local_join(local_target, "source")) == (loop == 1)
            if loop == 1:
                assert local_fs.isfile(local_join(local_target, "source", "file"))
        local_fs.rm(local_target, recursive=True)
        for _ in range(2):  # with a slash: its contents, both times
            fs.get(src + "/", local_target, recursive=True)
            assert local_fs.isfile(local_join(local_target, "file"))
            assert not local_fs.exists(local_join(local_target, "source"))

    def test_get_copies_the_bytes(self, fs, local_target, local_fs):
        """(fsspec's get tests look at names only.)"""
        fs.get(f"{ROOT}/", local_target, recursive=True)
        got = {make_path_posix(path)[len(make_path_posix(local_target)) + 1:]: local_fs.cat_file(path)
               for path in local_fs.find(local_target)}
        assert got == _tree()


# -- dsfs:// beside LocalFileSystem on the same tree ---------------------------------------------------------

CALLS = [
    ("find", lambda fs, root: fs.find(root)),
    ("find maxdepth 1", lambda fs, root: fs.find(root, maxdepth=1)),
    ("find maxdepth 2 withdirs", lambda fs, root: fs.find(root, maxdepth=2, withdirs=True)),
    ("find a subfolder", lambda fs, root: fs.find(f"{root}/glob/source/subdir1")),
    ("glob *", lambda fs, root: fs.glob(f"{root}/glob/source/*")),
    ("glob **", lambda fs, root: fs.glob(f"{root}/glob/**")),
    ("glob **/nestedfile", lambda fs, root: fs.glob(f"{root}/**/nestedfile")),
    ("glob ** maxdepth 2", lambda fs, root: fs.glob(f"{root}/glob/source/**", maxdepth=2)),
    ("glob [1-2]", lambda fs, root: fs.glob(f"{root}/*/source/file[1-2]")),
    ("glob ?", lambda fs, root: fs.glob(f"{root}/prefix/source/subdi?*")),
    ("ls", lambda fs, root: sorted(fs.ls(f"{root}/bulk/source", detail=False))),  # (os.scandir's order locally)
    ("ls a file", lambda fs, root: fs.ls(f"{root}/bulk/source/file1", detail=False)),
    ("walk", lambda fs, root: sorted((folder, sorted(dirs), sorted(files)) for folder, dirs, files in fs.walk(root))),
    ("walk maxdepth 2", lambda fs, root: sorted((f, sorted(d), sorted(n)) for f, d, n in fs.walk(root, maxdepth=2))),
    ("walk bottom up", lambda fs, root: _bottom_up([f for f, _, _ in fs.walk(f"{root}/glob", topdown=False)])),
    ("cat a glob", lambda fs, root: fs.cat(f"{root}/glob/source/subdir0/*")),  # (it holds a folder: both raise)
    ("cat a glob, omit", lambda fs, root: fs.cat(f"{root}/glob/source/subdir0/*", on_error="omit")),
    ("cat recursive", lambda fs, root: fs.cat(f"{root}/bulk/source", recursive=True, on_error="omit")),
    ("cat a file", lambda fs, root: fs.cat(f"{root}/bulk/source/subdir/subfile2")),
    ("cat a missing file", lambda fs, root: fs.cat(f"{root}/bulk/source/nope")),
    ("cat_file range", lambda fs, root: fs.cat_file(f"{root}/hashed/source/{sorted(HASHED)[0]}", 0, 1)),
    ("du", lambda fs, root: fs.du(f"{root}/glob")),
    ("du per file", lambda fs, root: fs.du(f"{root}/bulk", total=False)),
    ("info", lambda fs, root: [fs.info(f"{root}/bulk/source/subdir")["type"], tuple(
        fs.info(f"{root}/bulk/source/file1")[key] for key in ("name", "size", "type", "mode"))]),  # mtime: below
    ("isdir, isfile, exists", lambda fs, root: [fs.isdir(f"{root}/bulk"), fs.isfile(f"{root}/bulk/source/file1"),
                                                fs.exists(f"{root}/nope"), fs.isdir(f"{root}/bulk/source/file1")]),
]


@pytest.mark.parametrize("what, call", CALLS, ids=[name for name, _ in CALLS])
def test_as_local_file_system(abstract_version, what, call):
    """The same call on dsfs:// and on LocalFileSystem over the same tree: the same answer (names
    relative to the tree's root), or the same exception."""
    store, src = abstract_version
    dsfs_fs = fsspec.filesystem("dsfs", store=store, skip_instance_cache=True)
    local_root = make_path_posix(str(src))
    assert _outcome(call, dsfs_fs, ROOT) == _outcome(call, LocalFileSystem(), local_root)


def _bottom_up(folders: list[str]) -> list[str]:
    """The folders of a bottom-up walk, sorted, once each came after every folder inside it."""
    for i, folder in enumerate(folders):
        assert not any(other.startswith(folder + "/") for other in folders[i + 1:]), folders
    return sorted(folders)


def _outcome(call, fs, root: str):
    """What call(fs, root) gave, names relative to root; or the class of the exception it raised."""
    try:
        value = call(fs, root)
    except OSError as exc:
        return type(exc)
    return _relative(value, root)


def _relative(value, root: str):
    """`value` with `root/` taken off the front of every name in it (lists, dict keys, walk's tuples)."""
    if isinstance(value, str):
        name = make_path_posix(value) if os.path.isabs(value) else value
        return name[len(root):].lstrip("/") if name.startswith(root) else value
    if isinstance(value, dict):
        return {_relative(key, root): value[key] for key in value}
    if isinstance(value, tuple):
        return tuple(_relative(item, root) for item in value)
    if isinstance(value, list):
        return [_relative(item, root) for item in value]
    return value


def test_info_keeps_the_file_times(abstract_version):
    """(Compared apart: the version's nanoseconds / 1e9 and the float st_mtime differ in the last bit.)"""
    store, src = abstract_version
    fs = fsspec.filesystem("dsfs", store=store, skip_instance_cache=True)
    for rel in SCENARIOS["bulk"]:
        mtime = os.stat(src / "bulk" / "source" / rel).st_mtime_ns / 1e9
        assert fs.info(f"{ROOT}/bulk/source/{rel}")["mtime"] == pytest.approx(mtime, abs=1e-6)
        assert abs(fs.modified(f"{ROOT}/bulk/source/{rel}").timestamp() - mtime) < 1e-5


@pytest.mark.parametrize("source, recursive, maxdepth", [
    ("bulk/source", True, None), ("bulk/source/", True, None), ("bulk/source/", True, 1),
    ("glob/source/*", False, None), ("glob/source/*", True, 2), ("glob/source/**", False, None),
    ("prefix/source/subdir*", True, None), ("hashed/source/*.txt", False, None)])
def test_get_as_local_file_system(abstract_version, tmp_path, source, recursive, maxdepth):
    """get into a new folder gives what LocalFileSystem's get of the same tree gives, bytes included."""
    store, src = abstract_version
    dsfs_fs = fsspec.filesystem("dsfs", store=store, skip_instance_cache=True)
    dsfs_fs.get(f"{ROOT}/{source}", str(tmp_path / "ours") + "/", recursive=recursive, maxdepth=maxdepth)
    LocalFileSystem(auto_mkdir=True).get(f"{make_path_posix(str(src))}/{source}", str(tmp_path / "theirs") + "/",
                          recursive=recursive, maxdepth=maxdepth)
    local = LocalFileSystem()
    ours = {p[len(str(tmp_path / "ours")):]: local.cat_file(p) for p in local.find(str(tmp_path / "ours"))}
    theirs = {p[len(str(tmp_path / "theirs")):]: local.cat_file(p) for p in local.find(str(tmp_path / "theirs"))}
    assert ours == theirs and ours

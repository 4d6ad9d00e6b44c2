"""Raw datastore paths: `datastore:NAME/PATH` consumed as a snapshot, and `create --from-datastore`."""

import os

import pytest

from dsfs import Dataset
from dsfs.errors import StaleLink
from conftest import make_tree
from servers import CLOUD_FIXTURES


def _register_and_upload(dsfs, tmp_path, kind, request, files):
    make_tree(tmp_path / "src", files)
    if kind == "file":
        url, options = f"file://{tmp_path}/lake", []
    else:
        cloud = request.getfixturevalue(CLOUD_FIXTURES[kind])
        url = cloud.new_url("lake")
        options = [a for k, v in cloud.options.items() for a in ("--option", f"{k}={v}")]
    assert dsfs("datastore", "register", "lake", url, *options).code == 0
    assert dsfs("datastore", "upload", "lake", tmp_path / "src", "--target-path", "raw/v1").code == 0


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_datastore_path_snapshot_download_and_run(kind, tmp_path, dsfs, request):
    files = {"a.txt": b"alpha", "sub/b.bin": os.urandom(200_000)}
    _register_and_upload(dsfs, tmp_path, kind, request, files)
    r = dsfs("download", "datastore:lake/raw/v1", tmp_path / "out")
    assert r.code == 0, r.err
    assert (tmp_path / "out" / "a.txt").read_bytes() == b"alpha"
    assert (tmp_path / "out" / "sub" / "b.bin").read_bytes() == files["sub/b.bin"]
    first = Dataset.get("datastore:lake/raw/v1")
    again = Dataset.get("datastore:lake/raw/v1")
    assert first.id == again.id  # the same listing is the same snapshot
    assert first.project == "datastore-snapshots" and first.list_files() == ["a.txt", "sub/b.bin"]
    r = dsfs("run", "--input", "raw=datastore:lake/raw/v1:download", "--", "test", "-f",
             "$DSFS_DATAREFERENCE_raw/sub/b.bin")
    assert r.code == 0, r.err


def test_snapshot_is_immutable(tmp_path, dsfs, request):
    _register_and_upload(dsfs, tmp_path, "file", request, {"a.txt": b"alpha"})
    snap = Dataset.get("datastore:lake/raw/v1")
    (tmp_path / "lake" / "raw" / "v1" / "a.txt").write_bytes(b"ALPHA!")
    with pytest.raises(StaleLink):
        snap.read_file("a.txt")  # the old snapshot refuses the changed object
    newer = Dataset.get("datastore:lake/raw/v1")
    assert newer.id != snap.id and newer.read_file("a.txt") == b"ALPHA!"


def test_create_from_datastore(tmp_path, dsfs, request, file_store):
    _register_and_upload(dsfs, tmp_path, "file", request, {"a.txt": b"alpha", "b.txt": b"beta"})
    r = dsfs("--store", file_store, "create", "--project", "p", "--name", "n", "--from-datastore", "lake/raw/v1")
    assert r.code == 0, r.err
    assert dsfs("--store", file_store, "close").code == 0
    ds = Dataset.get("p/n", store=file_store)
    assert ds.list_files() == ["a.txt", "b.txt"] and ds.info.stats["new_bytes"] == 0
    assert ds.read_file("b.txt") == b"beta"
    r = dsfs("--store", file_store, "create", "--project", "p", "--name", "m", "--from-datastore", "lake/nothing")
    assert r.code == 2 and "no object" in r.err
    assert [v.name for v in Dataset.search(store=file_store)] == ["n"]  # the failed create left nothing
    r = dsfs("--store", file_store, "create", "--project", "p", "--name", "m", "--from-datastore", "nope/x")
    assert r.code != 0 and "unknown datastore" in r.err

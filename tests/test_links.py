"""External files: added by URL, read lazily, and refused once they change at their source."""

import json
import os
import time

import pytest

from dsfs import Dataset
from dsfs.node.cache import Cache
from dsfs.errors import StaleLink
from dsfs.node.view import View
from conftest import make_tree, run_cli


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setenv("DSFS_RETRY_DELAYS", "0.01")


@pytest.fixture
def linked(tmp_path, file_store):
    bucket = tmp_path / "bucket"
    files = {"imgs/a.jpg": os.urandom(5 << 20), "imgs/b.jpg": b"bbb", "solo.csv": b"x,y\n"}
    make_tree(bucket, files)
    make_tree(tmp_path / "local", {"local.txt": b"stored in dsfs"})
    env = {"DSFS_STORE": file_store}
    ds_id = run_cli("create", "--project", "p", "--name", "n", env=env).stdout.strip()
    proc = run_cli("add", "--links", f"file://{bucket}/imgs", "--dataset-folder", "ext", env=env)
    assert proc.returncode == 0 and "2 file(s)" in proc.stdout, proc.stderr
    assert run_cli("add", "--links", f"file://{bucket}/solo.csv", "--files", tmp_path / "local", env=env).returncode == 0
    assert run_cli("close", env=env).returncode == 0
    return {"id": ds_id, "bucket": bucket, "files": files, "env": env, "store": file_store}


def test_links_are_listed_read_and_materialized(linked, tmp_path):
    ds = Dataset.get(linked["id"], store=linked["store"])
    assert ds.list_files() == ["ext/a.jpg", "ext/b.jpg", "local.txt", "solo.csv"]
    assert ds.info.stats["new_bytes"] == len(b"stored in dsfs")  # external bytes are not copied
    assert ds.read_file("ext/a.jpg") == linked["files"]["imgs/a.jpg"]
    view = View(ds.store, Cache(), ds.id)
    assert view.read_path("ext/a.jpg", 1000, 3 << 20) == linked["files"]["imgs/a.jpg"][1000:1000 + (3 << 20)]
    ds.download(str(tmp_path / "out"))
    assert (tmp_path / "out" / "ext" / "b.jpg").read_bytes() == b"bbb"
    assert (tmp_path / "out" / "solo.csv").read_bytes() == b"x,y\n"
    copy = ds.get_local_copy()
    assert open(os.path.join(copy, "ext", "a.jpg"), "rb").read() == linked["files"]["imgs/a.jpg"]
    assert ds.verify_dataset_hash().ok


def test_changed_source_fails_only_that_file(linked, tmp_path):
    time.sleep(0.01)
    (linked["bucket"] / "imgs" / "b.jpg").write_bytes(b"BBB")  # same size, new mtime
    ds = Dataset.get(linked["id"], store=linked["store"])
    with pytest.raises(StaleLink, match="changed since it was added"):
        ds.read_file("ext/b.jpg")
    view = View(ds.store, Cache(), ds.id)
    with pytest.raises(StaleLink):
        view.read_path("ext/b.jpg")
    assert view.read_path("solo.csv") == b"x,y\n"
    proc = run_cli("download", linked["id"], tmp_path / "out", env=linked["env"])
    assert proc.returncode == 10 and "ext/b.jpg" in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "out" / "ext" / "a.jpg").read_bytes() == linked["files"]["imgs/a.jpg"]
    assert not (tmp_path / "out" / "ext" / "b.jpg").exists()
    ds.download(str(tmp_path / "out2"), exclude=["ext/b.jpg"])
    proc = run_cli("verify", "--id", linked["id"], "--folder", tmp_path / "out2", "--json", env=linked["env"])
    report = json.loads(proc.stdout)
    assert proc.returncode == 1 and report["stale"] == ["ext/b.jpg"] and report["missing"] == ["ext/b.jpg"]
    (linked["bucket"] / "solo.csv").unlink()
    with pytest.raises(StaleLink, match="gone"):
        ds.read_file("solo.csv")


def test_bad_links(tmp_path, file_store):
    env = {"DSFS_STORE": file_store}
    run_cli("create", "--project", "p", "--name", "n", env=env)
    proc = run_cli("add", "--links", f"file://{tmp_path}/nothing-here", env=env)
    assert proc.returncode == 2 and "no object at" in proc.stderr
    proc = run_cli("add", "--links", "ftp://host/x", env=env)
    assert proc.returncode == 2 and "unsupported URL" in proc.stderr
    s3 = {**env, "FSSPEC_S3_ENDPOINT_URL": "http://127.0.0.1:9", "FSSPEC_S3_KEY": "k", "FSSPEC_S3_SECRET": "s",
          "AWS_MAX_ATTEMPTS": "1"}
    proc = run_cli("add", "--links", "s3://bucket/key", env=s3)
    assert proc.returncode == 7 and "cannot reach s3://bucket/key" in proc.stderr and "Traceback" not in proc.stderr

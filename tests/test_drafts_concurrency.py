"""Two commands on one draft at once: each change takes effect, or the second one refuses naming the
first; none is silently lost (the draft's local state is changed under its lock, dsfs.authoring.drafts)."""

import os
import sys
import threading
import time

import pytest

from dsfs import Dataset

from dsfs.authoring import drafts
from dsfs.errors import Conflict, InvalidState
from dsfs.authoring.ingest import Uploader
from conftest import make_tree, run_cli


@pytest.fixture
def paused_upload(monkeypatch):
    """Uploads in this process stop before reading their first file until `release` is set."""
    started, release = threading.Event(), threading.Event()
    original = Uploader._read_file

    def read_file(self, *args):
        started.set()
        assert release.wait(30)
        return original(self, *args)

    monkeypatch.setattr(Uploader, "_read_file", read_file)
    yield started, release
    release.set()


def _in_thread(fn):
    """Run fn in a thread; returns (thread, outcome) where outcome gets "ok" or the exception."""
    outcome = {}

    def run():
        try:
            fn()
            outcome["result"] = "ok"
        except BaseException as exc:  # handed to the test
            outcome["result"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def _draft(ds_id, store):
    return Dataset.get(ds_id, include_drafts=True, store=store)


@pytest.mark.timeout(60)
def test_add_while_an_upload_runs_waits_or_refuses_and_is_never_lost(tmp_path, file_store, monkeypatch,
                                                                       paused_upload):
    started, release = paused_upload
    make_tree(tmp_path / "big", {f"f{i}": os.urandom(50_000) for i in range(3)})
    make_tree(tmp_path / "extra", {f"e{i}": f"extra {i}".encode() for i in range(5)})
    ds = Dataset.create("p", "n", store=file_store)
    ds.add_files(str(tmp_path / "big"))
    upload, outcome = _in_thread(lambda: _draft(ds.id, file_store).upload())
    assert started.wait(10)

    monkeypatch.setattr(drafts, "LOCK_WAIT", 0.3, raising=False)  # short: the upload holds the draft
    with pytest.raises(Conflict, match=rf"being changed by another dsfs command \(pid {os.getpid()} .*upload p/n@1.0.0"):
        _draft(ds.id, file_store).add_files(str(tmp_path / "extra"))

    monkeypatch.setattr(drafts, "LOCK_WAIT", 30.0, raising=False)  # long enough: the add waits for the upload, then counts
    threading.Timer(0.3, release.set).start()
    assert _draft(ds.id, file_store).add_files(str(tmp_path / "extra")) == 5
    upload.join()
    assert outcome["result"] == "ok"
    _draft(ds.id, file_store).finalize()
    final = Dataset.get("p/n", store=file_store)
    assert final.list_files() == [f"e{i}" for i in range(5)] + [f"f{i}" for i in range(3)]
    assert final.read_file("e3") == b"extra 3"


@pytest.mark.timeout(60)
def test_two_closes_of_one_draft_one_closes_the_other_refuses(tmp_path, file_store, monkeypatch, paused_upload):
    started, release = paused_upload
    make_tree(tmp_path / "d", {f"f{i}": os.urandom(10_000) for i in range(4)})
    ds = Dataset.create("p", "n", store=file_store)
    ds.add_files(str(tmp_path / "d"))
    first, outcome = _in_thread(lambda: _draft(ds.id, file_store).finalize())
    assert started.wait(10)
    threading.Timer(0.3, release.set).start()
    with pytest.raises(InvalidState, match="closed by another command while this one waited"):
        _draft(ds.id, file_store).finalize()  # waited for the first close, then saw it final
    first.join()
    assert outcome["result"] == "ok"
    final = Dataset.get(ds.id, store=file_store)
    assert final.list_files() == [f"f{i}" for i in range(4)] and final.info.stats["files"] == 4
    assert not os.path.exists(drafts.DraftLock.path_for(ds.id))  # a closed draft leaves no lock file


# The same race between processes, as a user meets it: `dsfs upload` running, `dsfs add` in another
# shell. The uploading process reads each file slowly, so the add comes while it holds the draft.
SLOW_UPLOAD = """
import os, sys, time
from dsfs.authoring.ingest import Uploader
original = Uploader._read_file
def slow(self, *args):
    open(os.environ["UPLOAD_STARTED"], "w").close()
    time.sleep(0.4)
    return original(self, *args)
Uploader._read_file = slow
from dsfs.cli.main import main
main(sys.argv[1:])
"""


@pytest.mark.timeout(120)
def test_cli_add_during_upload_takes_effect(tmp_path, file_store):
    import subprocess

    make_tree(tmp_path / "big", {f"f{i}": os.urandom(100_000) for i in range(5)})
    make_tree(tmp_path / "extra", {f"e{i}": f"extra {i}".encode() for i in range(5)})
    started = tmp_path / "upload-started"
    env = {**os.environ, "DSFS_STORE": file_store, "UPLOAD_STARTED": str(started)}
    ds_id = run_cli("create", "--project", "p", "--name", "n", env=env).stdout.strip()
    assert run_cli("add", "--files", tmp_path / "big", env=env).returncode == 0
    upload = subprocess.Popen([sys.executable, "-c", SLOW_UPLOAD, "upload", "--id", ds_id], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.02)  # until the upload reads its first file
    added = run_cli("add", "--files", tmp_path / "extra", "--id", ds_id, env=env)
    out, err = upload.communicate(timeout=60)
    assert upload.returncode == 0, err
    assert added.returncode == 0 and "5 file(s) added" in added.stdout, added.stderr
    closed = run_cli("close", "--id", ds_id, env=env)
    assert closed.returncode == 0, closed.stderr
    assert len(Dataset.get(ds_id, store=file_store).list_files()) == 10  # the 5 added files are in it


def test_a_lock_file_left_by_a_killed_command_blocks_nothing(tmp_path, file_store):
    make_tree(tmp_path / "d", {"a": b"a"})
    ds = Dataset.create("p", "n", store=file_store)
    path = drafts.DraftLock.path_for(ds.id)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write('{"pid": 999999, "host": "gone", "command": "upload", "since": "00:00:00"}')
    assert ds.add_files(str(tmp_path / "d")) == 1  # an flock dies with its process: no stale lock
    ds.finalize()
    assert Dataset.get(ds.id, store=file_store).list_files() == ["a"]

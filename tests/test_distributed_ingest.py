"""Upload on an executor (dsfs.authoring.distributed): a real Dask LocalCluster (2 worker processes)
and a local process pool make the same versions as a serial upload, dedupe against the parents on
the workers, survive failed tasks and killed workers, leave a resumable draft on Ctrl-C, and refuse
an unreachable scheduler or files the workers cannot see before uploading anything."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import make_tree
from servers import required_library

import dsfs.authoring.distributed as distributed
import dsfs.store.executors as executors
from dsfs import Dataset
from dsfs.authoring import drafts
from dsfs.authoring.drafts import DraftState
from dsfs.errors import FileChanged, LocalFileNotFound, StoreUnavailable, UsageError
from dsfs.model import ChunkRef, Entry
from dsfs.store import datastores

FAIL_ONCE = "fail-once"  # a flag file beside the data folder: the next task that removes it fails


@pytest.fixture(scope="module")
def cluster():
    distributed_lib = required_library("distributed")
    with distributed_lib.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None,
                                      silence_logs=40) as local:
        yield local


@pytest.fixture(scope="module")
def client(cluster):
    from distributed import Client

    with Client(cluster, set_as_default=False) as c:
        yield c


@pytest.fixture
def dask(client, monkeypatch):
    """The cluster's executor; partitions of 3 files, so a small tree makes several tasks."""
    monkeypatch.setattr(distributed, "PARTITION_FILES", 3)
    return client.get_executor()


def sample_tree(root: Path) -> dict[str, bytes]:
    files = {f"images/{i:02d}.bin": os.urandom(1000 * (i + 1)) for i in range(8)}
    files["images/big.bin"] = os.urandom(5 << 20)  # several chunks, cut by FastCDC
    files["labels/empty.txt"] = b""
    files["labels/copy.bin"] = files["images/03.bin"]  # the same content twice
    files["run.sh"] = b"#!/bin/sh\necho hi\n"
    make_tree(root, files)
    (root / "run.sh").chmod(0o755)
    return files


def table(ds: Dataset) -> list[tuple]:
    return [(e.path, e.size, e.digest, e.mode) for e in ds.file_entries()]


def closed(store: str, folder: Path, executor=None, parents=None, name: str = "n") -> Dataset:
    ds = Dataset.create("p", name, parents=parents, store=store)
    ds.add_files(str(folder))
    ds.finalize(executor=executor)
    return Dataset.get(ds.id, store=store)


# -- task functions the tests put in place of ingest_partition (pickled by name to the workers) -----------


def _took_flag(task) -> bool:
    """Whether this task removed the FAIL_ONCE flag in a folder above its files (one task does)."""
    for folder in Path(task.files[0][1]).parents:
        try:
            (folder / FAIL_ONCE).unlink()
            return True
        except FileNotFoundError:
            continue
    return False


def fail_once(task, known):
    """The first task to take the flag fails as a store that did not answer would."""
    if _took_flag(task):
        raise StoreUnavailable("store did not answer (injected once)")
    return distributed.ingest_partition(task, known)


def die_once(task, known):
    """The first task to take the flag kills its worker process."""
    if _took_flag(task):
        os.kill(os.getpid(), signal.SIGKILL)
    return distributed.ingest_partition(task, known)


# -- a version made on workers is the version made here ---------------------------------------------------


@pytest.mark.slow
def test_dask_upload_makes_the_same_file_table_as_serial(tmp_path, dask):
    files = sample_tree(tmp_path / "d")
    serial = closed(f"file://{tmp_path}/serial", tmp_path / "d")
    on_dask = closed(f"file://{tmp_path}/dask", tmp_path / "d", dask)
    assert table(on_dask) == table(serial) and len(table(serial)) == len(files)
    assert on_dask.info.stats["files"] == len(files) and on_dask.info.stats["bytes"] == serial.info.stats["bytes"]
    for path, data in files.items():
        assert on_dask.read_file(path) == data


@pytest.mark.slow
def test_cli_workers_uses_a_local_process_pool(tmp_path, dsfs, file_store, monkeypatch):
    monkeypatch.setattr(distributed, "PARTITION_FILES", 4)
    files = sample_tree(tmp_path / "d")
    assert dsfs("--store", file_store, "create", "--project", "p", "--name", "n").code == 0
    assert dsfs("add", "--files", tmp_path / "d").code == 0
    r = dsfs("close", "--workers", "2")
    assert r.code == 0, r.err
    ds = Dataset.get("p/n", store=file_store)
    assert ds.info.stats["files"] == len(files)
    for path, data in files.items():
        assert ds.read_file(path) == data
    serial = closed(f"file://{tmp_path}/serial", tmp_path / "d")
    assert table(ds) == table(serial)


@pytest.mark.slow
def test_a_child_readding_its_parents_files_on_workers_sends_no_bytes(tmp_path, dask, file_store):
    sample_tree(tmp_path / "d")
    parent = closed(file_store, tmp_path / "d")
    child = Dataset.create("p", "n", parents=[parent.id], store=file_store)
    child.add_files(str(tmp_path / "d"), dataset_path="copy")  # the same bytes under other names
    result = child.upload(executor=dask)
    assert result["new_bytes"] == 0 and result["packs_sent"] == 0
    child.finalize(executor=dask)
    child = Dataset.get(child.id, store=file_store)
    assert child.info.stats["new_bytes"] == 0 and child.info.stats["added"] == len(table(parent))
    assert child.read_file("copy/images/big.bin") == parent.read_file("images/big.bin")


# -- failures ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_failed_task_is_run_again(tmp_path, dask, file_store, monkeypatch, caplog):
    files = sample_tree(tmp_path / "d")
    (tmp_path / FAIL_ONCE).touch()
    monkeypatch.setattr(distributed, "ingest_partition", fail_once)
    caplog.set_level("INFO", "dsfs.store.executors")
    ds = closed(file_store, tmp_path / "d", dask)
    assert not (tmp_path / FAIL_ONCE).exists() and "running it again" in caplog.text
    assert table(ds) == table(closed(f"file://{tmp_path}/serial", tmp_path / "d"))
    for path, data in files.items():
        assert ds.read_file(path) == data


@pytest.mark.slow
def test_a_task_failing_every_time_fails_the_upload_and_the_rerun_resumes(tmp_path, dask, file_store,
                                                                          monkeypatch):
    files = sample_tree(tmp_path / "d")
    monkeypatch.setattr(executors, "TASK_TRIES", 1)
    (tmp_path / FAIL_ONCE).touch()
    monkeypatch.setattr(distributed, "ingest_partition", fail_once)
    ds = Dataset.create("p", "n", store=file_store)
    ds.add_files(str(tmp_path / "d"))
    with pytest.raises(StoreUnavailable, match="injected once"):
        ds.upload(executor=dask)
    assert DraftState.load(ds.id, ds.store.url).adds_count  # the failed partition's files wait for the rerun
    ds = Dataset.get(ds.id, include_drafts=True, store=file_store)
    ds.finalize(executor=dask)
    ds = Dataset.get(ds.id, store=file_store)
    for path, data in files.items():
        assert ds.read_file(path) == data


@pytest.mark.slow
def test_a_worker_killed_mid_task_is_replaced_and_the_version_is_right(tmp_path, dask, file_store, monkeypatch):
    files = sample_tree(tmp_path / "d")
    (tmp_path / FAIL_ONCE).touch()
    monkeypatch.setattr(distributed, "ingest_partition", die_once)
    ds = closed(file_store, tmp_path / "d", dask)
    assert not (tmp_path / FAIL_ONCE).exists()  # a worker did die
    for path, data in files.items():
        assert ds.read_file(path) == data


INTERRUPTED = textwrap.dedent("""
    import sys, time
    import dsfs.authoring.distributed as distributed

    REAL = distributed.ingest_partition

    def slow_partition(task, known):
        time.sleep(0.4)
        return REAL(task, known)

    if __name__ == "__main__":
        distributed.PARTITION_FILES = 1
        distributed.ingest_partition = slow_partition
        from dsfs.cli.main import main
        main(sys.argv[1:])
""")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ctrl_c_leaves_a_resumable_draft(tmp_path, file_store, dsfs):
    files = {f"f{i:02d}": os.urandom(20_000 + i) for i in range(16)}
    make_tree(tmp_path / "d", files)
    assert dsfs("--store", file_store, "create", "--project", "p", "--name", "n").code == 0
    assert dsfs("add", "--files", tmp_path / "d").code == 0
    ds = Dataset.current(file_store)
    script = tmp_path / "interrupted.py"
    script.write_text(INTERRUPTED)
    proc = subprocess.Popen([sys.executable, str(script), "upload", "--workers", "2"], stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "DSFS_STORE": file_store}, start_new_session=True)
    state = DraftState.path_for(ds.id)
    deadline = time.monotonic() + 60
    while _uploaded(state) == 0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1]  # still uploading
    os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C in a terminal: the workers get it too
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert 0 < _uploaded(state) < len(files)  # some tasks were recorded, not all
    r = dsfs("close", "--workers", "2")
    assert r.code == 0, r.err
    ds = Dataset.get(ds.id, store=file_store)
    assert ds.info.stats["files"] == len(files)
    for path, data in files.items():
        assert ds.read_file(path) == data


def _uploaded(state: str) -> int:
    """Files recorded in a draft's state, read as another process may (its WAL keeps readers apart)."""
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
            return db.execute("SELECT count(*) FROM uploaded").fetchone()[0]
    except sqlite3.Error:
        return 0


# -- refused before anything is uploaded -----------------------------------------------------------------


@pytest.mark.slow
def test_an_unreachable_scheduler_is_one_line_naming_it(tmp_path, dsfs, file_store, monkeypatch):
    monkeypatch.setattr(executors, "SCHEDULER_TIMEOUT", 2.0)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    make_tree(tmp_path / "d", {"a": b"a"})
    assert dsfs("--store", file_store, "create", "--project", "p", "--name", "n").code == 0
    assert dsfs("add", "--files", tmp_path / "d").code == 0
    address = f"tcp://127.0.0.1:{port}"
    started = time.monotonic()
    r = dsfs("upload", "--dask", address)
    assert time.monotonic() - started < 10
    assert r.code == 7 and address in r.err and len(r.err.strip().splitlines()) == 1, r.err
    monkeypatch.setenv("DSFS_DASK_SCHEDULER", address)  # the same from the environment
    r = dsfs("close")
    assert r.code == 7 and address in r.err
    assert dsfs("upload", "--workers", "1").code == 0  # --workers wins over the environment's scheduler
    r = dsfs("upload", "--dask", "nonsense")
    assert r.code == 2 and "tcp://scheduler:8786" in r.err
    r = dsfs("upload", "--dask", address, "--workers", "2")
    assert r.code == 2 and "pass one of them" in r.err


def test_dask_not_installed_names_the_extra(tmp_path, dsfs, file_store, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed raises ImportError
    assert dsfs("--store", file_store, "create", "--project", "p", "--name", "n").code == 0
    r = dsfs("upload", "--dask", "tcp://127.0.0.1:8786")
    assert r.code == UsageError.exit_code and "pip install 'dsfs[dask]'" in r.err, r.err


def test_a_memory_store_is_refused_for_other_processes(tmp_path, memory_store):
    from concurrent.futures import ProcessPoolExecutor

    make_tree(tmp_path / "d", {"a": b"a"})
    ds = Dataset.create("p", "n", store=memory_store)
    ds.add_files(str(tmp_path / "d"))
    with ProcessPoolExecutor(1) as pool, pytest.raises(UsageError, match="this process only"):
        ds.upload(executor=pool)


@pytest.mark.slow
def test_files_the_workers_cannot_see_are_refused_before_any_upload(tmp_path, dask, file_store, monkeypatch):
    """/proc/self/cwd is each process's own working folder: under it the driver sees this test's
    folder and the Dask workers (started elsewhere) see nothing, as on a cluster with no shared
    filesystem."""
    make_tree(tmp_path / "only-here", {"a.bin": os.urandom(1000), "b.bin": os.urandom(1000)})
    monkeypatch.chdir(tmp_path)
    ds = Dataset.create("p", "n", store=file_store)
    ds.add_files("/proc/self/cwd/only-here")
    with pytest.raises(LocalFileNotFound, match=r"Dask worker tcp://\S+ cannot read /proc/self/cwd/only-here/a.bin"):
        ds.upload(executor=dask)
    assert not (tmp_path / "store" / "packs").exists()
    assert DraftState.load(ds.id, ds.store.url).adds_count == 2


def test_missing_path_and_digests():
    """The helpers tasks run on workers: a file a worker cannot stat, membership of a digest blob."""
    assert executors.missing_path([__file__, "/no/such/file", "/nor/this"]) == "/no/such/file"
    assert executors.missing_path([__file__]) is None
    digests = sorted(os.urandom(32) for _ in range(100))
    known = distributed.Digests(b"".join(digests))
    assert all(d in known for d in digests) and os.urandom(32) not in known
    assert b"x" * 32 not in distributed.Digests(b"")


# -- remote sources: objects copied from a bucket (moto) -----------------------------------------------


SECRET = "lake-secret-never-in-a-draft"


@pytest.fixture
def lake(moto_server, monkeypatch):
    """A bucket with raw/ objects, and a datastore `lake` over it whose credentials are env: values
    set in this process only: the Dask workers (started before this test) have none of them, so they
    read with the options the driver hands them."""
    bucket = moto_server.new_bucket()
    fs = moto_server.fs()
    files = {"raw/a.bin": os.urandom(3 << 20), "raw/sub/b.bin": os.urandom(1000), "raw/sub/empty": b"",
             "raw/c.bin": os.urandom(300_000)}
    for key, data in files.items():
        fs.pipe(f"{bucket}/{key}", data)
    monkeypatch.setenv("LAKE_KEY", "testing")
    monkeypatch.setenv("LAKE_SECRET", SECRET)
    datastores.register("lake", f"s3://{bucket}", {"endpoint_url": moto_server.endpoint, "key": "env:LAKE_KEY",
                                                   "secret": "env:LAKE_SECRET"})
    return {"bucket": bucket, "fs": fs, "files": {k[len("raw/"):]: v for k, v in files.items()}}


def _draft_bytes(ds: Dataset) -> bytes:
    state = DraftState.path_for(ds.id)
    return b"".join(Path(p).read_bytes() for p in (state, state + "-wal") if os.path.exists(p))


@pytest.mark.slow
def test_objects_in_a_bucket_are_copied_here_and_on_dask_workers_alike(tmp_path, lake, dask):
    make_tree(tmp_path / "local", lake["files"])
    local = closed(f"file://{tmp_path}/local-store", tmp_path / "local")
    versions = []
    for source, executor in ((f"s3://{lake['bucket']}/raw/", None), ("datastore:lake/raw", dask)):
        ds = Dataset.create("p", "n", store=f"file://{tmp_path}/store-{len(versions)}")
        assert ds.add_files(source) == len(lake["files"])
        recorded = _draft_bytes(ds)
        assert f"s3://{lake['bucket']}/raw/a.bin".encode() in recorded and SECRET.encode() not in recorded
        ds.finalize(executor=executor)
        versions.append(Dataset.get(ds.id, store=ds.store))
    for ds in versions:
        assert table(ds) == table(local)  # the same files and digests as from local copies of the objects
        assert ds.info.stats["new_bytes"] > 0 and not any(e.url for e in ds.file_entries())  # copied, not linked
        for path, data in lake["files"].items():
            assert ds.read_file(path) == data


@pytest.mark.slow
@pytest.mark.parametrize("where", ["here", "dask"])
def test_an_object_changed_after_add_fails_the_upload_naming_it(tmp_path, lake, request, where, file_store):
    executor = request.getfixturevalue("dask") if where == "dask" else None
    ds = Dataset.create("p", "n", store=file_store)
    ds.add_files(f"s3://{lake['bucket']}/raw/")
    lake["fs"].pipe(f"{lake['bucket']}/raw/c.bin", os.urandom(300_000))  # same size, new content and ETag
    with pytest.raises(FileChanged, match=rf"s3://{lake['bucket']}/raw/c.bin \(added as c.bin\) changed since it was "
                                          r"added \(size 300000 -> 300000, tag ETag:"):
        ds.upload(executor=executor)
    draft = DraftState.load(ds.id, ds.store.url)
    assert "c.bin" not in [e.path for e in draft.uploaded()]  # nothing of it recorded


def test_the_cli_copies_a_datastore_path_and_reports_a_changed_object(tmp_path, lake, dsfs, file_store):
    assert dsfs("--store", file_store, "create", "--project", "p", "--name", "n").code == 0
    r = dsfs("add", "--files", "datastore:lake/raw/sub", "--dataset-folder", "s")
    assert r.code == 0 and "2 file(s)" in r.out, r.err
    lake["fs"].pipe(f"{lake['bucket']}/raw/sub/b.bin", b"shorter")
    r = dsfs("close")
    assert r.code == FileChanged.exit_code and "raw/sub/b.bin (added as s/b.bin) changed" in r.err, r.err
    assert SECRET not in r.err


# -- check --read-data and verify on the executor: the serial report, corrupt data found alike -------------


def _corrupt_first_chunk(store_dir: Path, ds: Dataset, path: str) -> None:
    ref = next(e for e in ds.file_entries() if e.path == path).chunks[0]
    (pack,) = store_dir.glob(f"packs/*/{ref.pack.hex()}")
    data = bytearray(pack.read_bytes())
    data[ref.offset + ref.stored // 2] ^= 0xFF
    pack.write_bytes(bytes(data))


@pytest.mark.slow
def test_check_read_data_on_workers_reports_what_a_serial_check_does(tmp_path, dask, file_store, monkeypatch, dsfs):
    import dsfs.lifecycle.check as check

    monkeypatch.setattr(check, "PARTITION_BYTES", 1)  # a task a pack
    sample_tree(tmp_path / "d")
    ds = closed(file_store, tmp_path / "d")
    (tmp_path / "d" / "more.bin").write_bytes(os.urandom(70 << 20))  # a second pack, in a child
    child = closed(file_store, tmp_path / "d", parents=[ds.id])
    store = ds.store
    serial = check.check_store(store, read_data=True).as_dict()
    assert serial["ok"] and serial["summary"]["data_packs"] >= 2
    assert check.check_store(store, read_data=True, executor=dask).as_dict() == serial
    _corrupt_first_chunk(tmp_path / "store", child, "images/big.bin")
    serial = check.check_store(store, read_data=True).as_dict()
    assert not serial["ok"] and {p["kind"] for p in serial["problems"]} == {"corrupt-chunk"}
    assert check.check_store(store, read_data=True, executor=dask).as_dict() == serial
    r = dsfs("--store", file_store, "check", "--read-data", "--workers", "2", "--json")  # a process pool
    assert r.code == 1 and json.loads(r.out) == json.loads(json.dumps(serial)), r.err


@pytest.mark.slow
def test_verify_on_workers_reports_what_a_serial_verify_does(tmp_path, dask, file_store, monkeypatch, dsfs):
    import dsfs.node.verify as verify

    monkeypatch.setattr(verify, "PARTITION_FILES", 2)
    files = sample_tree(tmp_path / "d")
    ds = closed(file_store, tmp_path / "d")
    copy = tmp_path / "copy"
    ds.download(str(copy))
    assert ds.verify_dataset_hash(str(copy), executor=dask).as_dict() == ds.verify_dataset_hash(str(copy)).as_dict()
    (copy / "images" / "05.bin").write_bytes(os.urandom(len(files["images/05.bin"])))  # same size, other bytes
    data = bytearray(files["images/big.bin"])
    data[-1] ^= 1
    (copy / "images" / "big.bin").write_bytes(bytes(data))
    (copy / "labels" / "copy.bin").unlink()
    (copy / "extra.txt").write_bytes(b"x")
    serial = ds.verify_dataset_hash(str(copy)).as_dict()
    assert serial["different"] == ["images/05.bin", "images/big.bin"] and serial["missing"] == ["labels/copy.bin"]
    assert ds.verify_dataset_hash(str(copy), executor=dask).as_dict() == serial
    r = dsfs("--store", file_store, "verify", "--id", ds.id, "--folder", copy, "--workers", "2", "--json")
    assert r.code == 1 and json.loads(r.out) == serial, r.err


def test_a_task_recorded_in_bulk_is_found_saved_and_forgotten_like_serial_records(tmp_path):
    """DraftState.record_task keeps a pack's refs as one row until a lookup needs them: lookups,
    the digests shipped to workers, a reload and forget_packs see them as record_pack's."""
    draft = DraftState.load("1" * 32, f"file://{tmp_path}/store")
    draft.stage_local([("a", "/data/a"), ("b", "/data/b"), ("c", "/data/c")])
    refs = [ChunkRef(os.urandom(32), b"p" * 16, 100 * i, 90, 100, 0) for i in range(3)]
    entries = [Entry(path=p, size=100, digest=ref.digest, chunks=[ref]) for p, ref in zip("ab", refs, strict=False)]
    draft.record_task([(b"p" * 16, True, 300, drafts.pack_refs(refs))],
                      [(e.path, drafts.entry_blob(e), drafts.local_bytes(f"/data/{e.path}")) for e in entries])
    draft.save()
    assert [e.path for e in draft.uploaded()] == ["a", "b"] and list(draft.adds()) == [("c", "/data/c")]
    draft = DraftState.load("1" * 32, f"file://{tmp_path}/store")  # as a rerun finds it
    assert draft.new_bytes == 300 and draft.written == [b"p" * 16]
    assert all(draft.chunk(ref.digest) == ref for ref in refs)
    assert sorted(draft.chunk_digests()) == sorted(ref.digest for ref in refs)
    draft.record_task([(b"q" * 16, False, 50, drafts.pack_refs([ChunkRef(b"d" * 32, b"q" * 16, 0, 5, 5, 0)]))], [])
    assert draft.forget_packs({b"p" * 16}) == [] and draft.chunk(refs[0].digest) is None
    assert draft.chunk(b"d" * 32) == ChunkRef(b"d" * 32, b"q" * 16, 0, 5, 5, 0)
    assert sorted(path for path, _ in draft.adds()) == ["a", "b", "c"]  # sent again: their pack is gone

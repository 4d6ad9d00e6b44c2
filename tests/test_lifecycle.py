"""Store lifecycle: delete removes records only, gc reclaims exactly the unreferenced packs and keeps
what writers in progress rely on, one gc at a time, and a killed gc reruns to completion.

The store-level parts (pack listing, leases, sessions, gc) run on every backend through the
conformance `backend` fixture; the authoring races run on file:// and memory://."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from dsfs.authoring import close
from dsfs import Dataset, Store

from dsfs.store import sessions

from dsfs.lifecycle import sweep
from dsfs.errors import Conflict, CorruptData, DatasetInUse, DatasetNotFound
from dsfs.store.packs import digest
from dsfs.store.sessions import GcLease, Timing, WriterSession, wait_for_gc
from conftest import make_tree, run_cli
from test_store_conformance import backend, in_threads  # noqa: F401 (fixture)

FAST = Timing(session_ttl=30, refresh=0.2, lease_ttl=30, lease_refresh=1, clock_margin=0, wait_limit=20, poll=0.05)


@pytest.fixture(autouse=True)
def fast_sessions(monkeypatch):
    monkeypatch.setattr(sessions, "TIMING", FAST)


def _final(store, name, folder, parents=None, project="p"):
    ds = Dataset.create(project, name, parents=parents, store=store)
    ds.add_files(str(folder))
    ds.finalize()
    return Dataset.get(ds.id, store=store)


def _read_all(ds: Dataset) -> dict[str, bytes]:
    return {p: ds.read_file(p) for p in ds.list_files()}


def _orphan(store: Store, size: int = 1000) -> bytes:
    data = os.urandom(size)
    pack_id = digest(data)[:16]
    store.write_pack(pack_id, data)
    return pack_id


# -- delete never destroys another version's data --------------------------------------------


def test_delete_of_a_twin_keeps_the_other_readable(tmp_path, file_store, dsfs):
    """The issue's reproduction, through the CLI: two datasets made of the same file."""
    make_tree(tmp_path / "f", {"a.txt": b"hello\n"})
    for name in ("a", "b"):
        assert dsfs("--store", file_store, "create", "--project", "p", "--name", name).code == 0
        assert dsfs("--store", file_store, "add", "--files", tmp_path / "f").code == 0
        assert dsfs("--store", file_store, "close").code == 0
    b = Dataset.get("p/b", store=file_store)
    assert b.info.stats["new_bytes"] == 0 and b.info.stats["packs"] == []  # found present, not sent
    result = dsfs("--store", file_store, "delete", "--id", "p/b")
    assert result.code == 0 and "dsfs gc" in result.out
    result = dsfs("--store", file_store, "cat", "a.txt", "--id", "p/a")
    assert result.code == 0 and result.out == "hello\n"
    report = sweep.gc(Store.open(file_store), grace=0)
    assert report.deleted_packs == 0
    assert Dataset.get("p/a", store=file_store).read_file("a.txt") == b"hello\n"


def test_sibling_children_sharing_a_new_file(tmp_path, file_store):
    make_tree(tmp_path / "base", {"base.txt": b"base"})
    make_tree(tmp_path / "new", {"same.bin": os.urandom(300_000)})
    parent = _final(file_store, "n", tmp_path / "base")
    one = _final(file_store, "n", tmp_path / "new", parents=[parent.id])
    two = _final(file_store, "n", tmp_path / "new", parents=[parent.id])
    Dataset.delete(one.id, store=file_store)
    sweep.gc(Store.open(file_store), grace=0)
    assert _read_all(Dataset.get(two.id, store=file_store)) == {
        "base.txt": b"base", "same.bin": (tmp_path / "new" / "same.bin").read_bytes()}


def test_sync_then_delete_keeps_the_dataset_made_from_the_folder(tmp_path, file_store):
    make_tree(tmp_path / "data", {"x": os.urandom(5000), "y": b"y"})
    made = _final(file_store, "made", tmp_path / "data")
    synced, _ = Dataset.sync(str(tmp_path / "data"), project="p", name="synced", store=file_store)
    Dataset.delete(synced.id, store=file_store)
    sweep.gc(Store.open(file_store), grace=0)
    assert _read_all(Dataset.get(made.id, store=file_store))["x"] == (tmp_path / "data" / "x").read_bytes()


def test_squash_keeps_its_sources_packs(tmp_path, file_store):
    make_tree(tmp_path / "a", {"a": os.urandom(4000)})
    make_tree(tmp_path / "b", {"b": os.urandom(4000)})
    a = _final(file_store, "n", tmp_path / "a")
    b = _final(file_store, "n", tmp_path / "b", parents=[a.id])
    flat = Dataset.squash("flat", [b.id], project="p", store=file_store)
    with pytest.raises(DatasetInUse):
        Dataset.delete(b.id, store=file_store)  # a squash source, like a parent: refused
    unreadable, borrowers = Dataset.dependents(a.id, store=file_store)
    assert [v.id for v in unreadable] == [b.id] and [v.id for v in borrowers] == [flat.id]
    Dataset.delete(b.id, force=True, store=file_store)
    Dataset.delete(a.id, force=True, store=file_store)
    report = sweep.gc(Store.open(file_store), grace=0)
    assert report.deleted_packs == 0  # every pack is borrowed by the squashed version
    assert _read_all(Dataset.get(flat.id, store=file_store)) == {
        "a": (tmp_path / "a" / "a").read_bytes(), "b": (tmp_path / "b" / "b").read_bytes()}


def test_delete_force_names_the_versions_it_breaks(tmp_path, file_store, dsfs):
    make_tree(tmp_path / "a", {"a": b"1"})
    make_tree(tmp_path / "b", {"b": b"2"})
    a = _final(file_store, "n", tmp_path / "a")
    b = _final(file_store, "n", tmp_path / "b", parents=[a.id])
    c = _final(file_store, "n", tmp_path / "a", parents=[b.id])
    result = dsfs("--store", file_store, "delete", "--id", a.id)
    assert result.code == 4 and b.id in result.err
    result = dsfs("--store", file_store, "delete", "--id", a.id, "--force")
    assert result.code == 0
    assert "2 version(s)" in result.err and b.id in result.err and c.id in result.err


def test_delete_puts_the_record_back_when_a_child_appears(tmp_path, file_store, monkeypatch):
    """A child created between delete's check and its removal of the record: delete sees it on its
    second look and restores the parent, so the child can still be closed and read."""
    make_tree(tmp_path / "a", {"a": b"parent"})
    parent = _final(file_store, "n", tmp_path / "a")
    store = Store.open(file_store, create=True)
    child = {}
    original = Store.delete_version_record

    def racing(self, dataset_id):
        child["ds"] = Dataset.create("p", "child", parents=[parent.id], store=file_store)
        original(self, dataset_id)

    monkeypatch.setattr(Store, "delete_version_record", racing)
    with pytest.raises(DatasetInUse, match="got a child"):
        Dataset.delete(parent.id, store=store)
    monkeypatch.undo()
    child["ds"].finalize()
    assert Dataset.get(child["ds"].id, store=file_store).read_file("a") == b"parent"


def test_close_refuses_when_its_parent_was_deleted(tmp_path, file_store):
    make_tree(tmp_path / "a", {"a": b"1"})
    parent = _final(file_store, "n", tmp_path / "a")
    child = Dataset.create("p", "n", parents=[parent.id], store=file_store)
    child.add_files(str(tmp_path / "a"))
    Dataset.delete(parent.id, force=True, store=file_store)
    with pytest.raises(DatasetNotFound, match="was deleted while it was being made"):
        child.finalize()
    assert not Dataset.get(child.id, include_drafts=True, store=file_store).is_final


def test_a_draft_deleted_while_it_closes_stays_deleted(tmp_path, file_store, monkeypatch):
    make_tree(tmp_path / "a", {"a": b"1"})
    draft = Dataset.create("p", "n", store=file_store)
    draft.add_files(str(tmp_path / "a"))
    original = close.check_ancestors

    def deleted_meanwhile(store, info, ids, what):
        Dataset.delete(info.id, store=file_store)
        original(store, info, ids, what)

    monkeypatch.setattr(close, "check_ancestors", deleted_meanwhile)
    with pytest.raises(DatasetNotFound, match="was deleted while it was being closed"):
        draft.finalize()
    assert Dataset.search(store=file_store) == []


def test_a_version_whose_record_is_damaged_can_be_deleted_by_id(tmp_path, file_store, dsfs):
    make_tree(tmp_path / "a", {"a": b"1"})
    ds = _final(file_store, "n", tmp_path / "a")
    Store.open(file_store)._put(f"datasets/{ds.id}/version.json", b"{torn")
    result = dsfs("--store", file_store, "delete", "--id", ds.id)
    assert result.code == 8 and "--force" in result.err
    result = dsfs("--store", file_store, "delete", "--id", ds.id, "--force")
    assert result.code == 0 and f"the damaged version {ds.id}" in result.out
    assert Store.open(file_store).list_version_ids() == []
    assert sweep.gc(Store.open(file_store), grace=0).deleted_packs == 1  # its data is reclaimable now


# -- gc ----------------------------------------------------------------------------------------


def test_delete_then_gc_frees_exactly_the_unreferenced_packs(tmp_path, file_store, dsfs):
    make_tree(tmp_path / "keep", {"k": os.urandom(200_000)})
    make_tree(tmp_path / "gone", {"g": os.urandom(200_000)})
    keep = _final(file_store, "keep", tmp_path / "keep")
    gone = _final(file_store, "gone", tmp_path / "gone")
    store = Store.open(file_store, create=True)
    keep_packs, gone_packs = set(bytes.fromhex(p) for p in keep.info.stats["packs"]), \
        set(bytes.fromhex(p) for p in gone.info.stats["packs"])
    assert keep_packs and gone_packs and not keep_packs & gone_packs
    Dataset.delete(gone.id, store=file_store)
    sizes = store.list_packs()
    assert set(sizes) == keep_packs | gone_packs  # delete removes records only
    result = dsfs("--store", file_store, "gc", "--grace", "0", "--dry-run", "--json")
    assert result.code == 0 and set(json.loads(result.out)["deleted"]) == {p.hex() for p in gone_packs}
    assert set(store.list_packs()) == keep_packs | gone_packs  # a dry run deletes nothing
    result = dsfs("--store", file_store, "gc")  # default grace: everything is young
    assert result.code == 0 and "deleted 0 pack(s)" in result.out
    result = dsfs("--store", file_store, "gc", "--grace", "0", "--json")
    report = json.loads(result.out)
    assert result.code == 0 and set(report["deleted"]) == {p.hex() for p in gone_packs}
    assert report["deleted_bytes"] == sum(sizes[p].size for p in gone_packs) == gone.info.stats["new_bytes"]
    assert set(store.list_packs()) == keep_packs
    assert Dataset.get(keep.id, store=file_store).read_file("k") == (tmp_path / "keep" / "k").read_bytes()


def test_gc_keeps_young_packs_and_reports_partly_used_ones(tmp_path, file_store):
    store = Store.open(file_store, create=True)
    young = _orphan(store)
    report = sweep.gc(store, grace=3600)
    assert report.deleted_packs == 0 and report.kept_young_packs == 1
    assert young in store.list_packs()
    make_tree(tmp_path / "d", {"x": os.urandom(3000), "y": os.urandom(3000)})
    ds = Dataset.create("p", "n", store=store)
    ds.add_files(str(tmp_path / "d"))
    ds.finalize()
    child = Dataset.create("p", "n", parents=[ds.id], store=store)
    child.remove_files("y")
    child.finalize()
    Dataset.delete(ds.id, force=True, store=store)  # the child is unreadable; y's bytes are unreferenced
    report = sweep.gc(store, grace=0)
    assert young not in store.list_packs()
    assert report.partly_referenced_packs == 0  # the parent's change-set is gone: its pack is free
    assert report.deleted_packs == 2


def test_gc_refuses_to_delete_anything_on_a_damaged_store(tmp_path, file_store):
    make_tree(tmp_path / "d", {"x": b"x"})
    ds = _final(file_store, "n", tmp_path / "d")
    store = Store.open(file_store, create=True)
    orphan = _orphan(store)
    store._put(f"datasets/{ds.id}/changes.msgpack.zst", b"garbage")
    with pytest.raises(CorruptData, match="gc deleted nothing"):
        sweep.gc(store, grace=0)
    assert orphan in store.list_packs()
    store._put(f"datasets/{ds.id}/version.json", b"{not json")
    result = run_cli("--store", file_store, "gc", "--grace", "0")
    assert result.returncode == 8 and "gc deleted nothing" in result.stderr and "Traceback" not in result.stderr
    assert orphan in store.list_packs()


def test_two_gcs_at_once_one_is_refused_naming_the_holder(tmp_path, file_store, dsfs):
    store = Store.open(file_store, create=True)
    lease = GcLease.acquire(store, timing=FAST)
    result = dsfs("--store", file_store, "gc", "--grace", "0")
    assert result.code == 5 and "another gc holds" in result.err and f"pid {os.getpid()}" in result.err
    lease.release()
    assert dsfs("--store", file_store, "gc", "--grace", "0").code == 0


def test_a_dead_local_gc_lease_is_taken_over_at_once(file_store):
    store = Store.open(file_store, create=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record = {"host": os.uname().nodename, "node": sessions._node(), "pid": dead.pid, "pid_start": "1",
              "started": time.time(), "expires": time.time() + 3600}
    store.create_lease(1, json.dumps({**record, "node": "other-machine/boot/pid:[1]"}).encode())
    with pytest.raises(Conflict, match="another gc holds"):  # the same pid elsewhere is not ours to judge
        sweep.gc(store, grace=0, timing=FAST)
    store.write_lease(1, json.dumps(record).encode())
    report = sweep.gc(store, grace=0, timing=FAST)
    assert report.deleted_packs == 0 and store.lease_sequences() == [2]


def test_junk_in_locks_and_sessions_blocks_nothing(file_store):
    """Objects dsfs did not write (it writes leases and sessions whole) neither hold the lease nor
    protect packs: gc runs, removes the junk session, and writers do not wait."""
    store = Store.open(file_store, create=True)
    store.create_lease(3, b"{not json")
    store.write_session("1" * 32, b"junk")
    store.write_session("2" * 32, json.dumps({"packs": 7, "refreshed": "soon"}).encode())
    orphan = _orphan(store)
    wait_for_gc(store, Timing(wait_limit=0.5, poll=0.1))
    report = sweep.gc(store, grace=0, timing=FAST)
    assert report.deleted == [orphan.hex()] and report.stale_sessions_removed == 2 and store.read_sessions() == {}


def test_an_expired_lease_from_another_host_is_taken_over(file_store):
    store = Store.open(file_store, create=True)
    store.create_lease(7, json.dumps({"host": "elsewhere", "pid": 1, "expires": time.time() - 1}).encode())
    lease = GcLease.acquire(store, timing=FAST)
    assert lease.sequence == 8 and store.lease_sequences() == [8]
    lease.release()


def test_a_writer_waits_while_gc_holds_the_lease(file_store):
    store = Store.open(file_store, create=True)
    lease = GcLease.acquire(store, timing=FAST)
    done = threading.Event()

    def writer():
        with WriterSession(store, "test writer", timing=FAST):
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    assert not done.wait(0.5)  # announced itself, then waits for the gc
    assert len(store.read_sessions()) == 1
    lease.release()
    assert done.wait(10)
    thread.join()
    assert store.read_sessions() == {}  # the session ends with the writer


def test_gc_keeps_the_packs_of_a_live_writer_session(tmp_path, file_store):
    """grace 0, a session alive: its announced packs survive gc, stale sessions' packs do not."""
    store = Store.open(file_store, create=True)
    with WriterSession(store, "upload", timing=FAST) as session:
        kept = _orphan(store)
        session.announce([kept])
        report = sweep.gc(store, grace=0, timing=FAST)
        assert kept in store.list_packs() and report.kept_session_packs == 1 and report.live_sessions == 1
    store.write_session("0" * 32, json.dumps({"host": "elsewhere", "pid": 1, "refreshed": time.time() - 3600,
                                              "packs": [kept.hex()]}).encode())
    report = sweep.gc(store, grace=0, timing=FAST)
    assert kept not in store.list_packs() and report.stale_sessions_removed == 1


def test_an_idle_draft_whose_packs_gc_took_sends_them_again(tmp_path, file_store):
    make_tree(tmp_path / "d", {"big": os.urandom(400_000), "small": b"s"})
    ds = Dataset.create("p", "n", store=file_store)
    ds.add_files(str(tmp_path / "d"))
    ds.upload()
    report = sweep.gc(Store.open(file_store), grace=0)  # no session: the draft sits idle
    assert report.deleted_packs >= 1
    Dataset.get(ds.id, include_drafts=True, store=file_store).finalize()
    assert _read_all(Dataset.get(ds.id, store=file_store)) == {
        "big": (tmp_path / "d" / "big").read_bytes(), "small": b"s"}


def test_gc_running_while_other_processes_upload(tmp_path, file_store):
    """gc with grace 0 in a loop while another process makes versions: every version it closes reads
    back whole, and `check`-style reading finds every pack."""
    env = {"DSFS_STORE": file_store}
    make_tree(tmp_path / "seed", {"seed": b"seed"})
    _final(file_store, "seed", tmp_path / "seed")
    script = tmp_path / "writer.py"
    script.write_text(
        "import os, sys, time\n"
        "from dsfs import Dataset, Store\n"
        "write_pack = Store.write_pack\n"
        "def slow(self, *args):  # a slow store: gc rounds run between the write and the close\n"
        "    write_pack(self, *args); time.sleep(0.4)\n"
        "Store.write_pack = slow\n"
        "root = sys.argv[1]\n"
        "for i in range(6):\n"
        "    d = os.path.join(root, f'v{i}'); os.makedirs(d)\n"
        "    for j in range(4):\n"
        "        open(os.path.join(d, f'f{j}'), 'wb').write(os.urandom(150_000) + bytes([i, j]))\n"
        "    open(os.path.join(d, 'same'), 'wb').write(b'shared by all' * 1000)\n"
        "    ds = Dataset.create('p', f'w{i}')\n"
        "    ds.add_files(d)\n"
        "    ds.finalize()\n"
        "    print(ds.id, flush=True)\n")
    writer = subprocess.Popen([sys.executable, str(script), str(tmp_path / "w")], env={**os.environ, **env},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store = Store.open(file_store, create=True)
    rounds = 0
    while writer.poll() is None:
        sweep.gc(store, grace=0, timing=FAST)
        rounds += 1
        time.sleep(0.3)  # a gc in a tight loop would keep the writer waiting for its turn
    out, err = writer.communicate()
    assert writer.returncode == 0, err
    ids = out.split()
    assert len(ids) == 6 and rounds >= 2
    sweep.gc(store, grace=0, timing=FAST)
    for i, dataset_id in enumerate(ids):
        files = _read_all(Dataset.get(dataset_id, store=file_store))
        assert files["same"] == b"shared by all" * 1000 and files["f3"][-2:] == bytes([i, 3])


def test_gc_killed_at_random_points_then_rerun(tmp_path, file_store):
    make_tree(tmp_path / "d", {"x": os.urandom(100_000), "y": os.urandom(100_000)})
    ds = _final(file_store, "n", tmp_path / "d")
    store = Store.open(file_store, create=True)
    orphans = {_orphan(store, 200) for _ in range(300)}
    rng = random.Random(12)
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-m", "dsfs.cli.main", "--store", file_store, "gc", "--grace", "0"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert _read_all(Dataset.get(ds.id, store=file_store))["x"] == (tmp_path / "d" / "x").read_bytes()
    result = run_cli("--store", file_store, "gc", "--grace", "0")
    assert result.returncode == 0, result.stderr
    assert not orphans & set(store.list_packs())
    assert _read_all(Dataset.get(ds.id, store=file_store))["y"] == (tmp_path / "d" / "y").read_bytes()


def test_gc_removes_temp_files_that_killed_pack_writes_left(file_store):
    store = Store.open(file_store, create=True)
    root = file_store[len("file://"):]
    os.makedirs(f"{root}/packs/ab", exist_ok=True)
    old, fresh = f"{root}/packs/ab/.tmp-old", f"{root}/packs/ab/.tmp-fresh"
    for path in (old, fresh):
        with open(path, "wb") as f:
            f.write(b"x" * 100)
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    report = sweep.gc(store, grace=0, timing=FAST)
    assert not os.path.exists(old) and os.path.exists(fresh)  # a write in progress is never touched
    assert report.temp_files_removed == 1 and report.temp_bytes_removed == 100


def test_durations():
    assert sweep.parse_duration("24h") == 86400 and sweep.parse_duration("0") == 0
    assert sweep.parse_duration("30m") == 1800 and sweep.parse_duration("1.5d") == 129600
    with pytest.raises(Exception, match="invalid duration"):
        sweep.parse_duration("soon")


# -- every backend -------------------------------------------------------------------------------


def test_conformance_pack_listing_leases_and_gc(backend):  # noqa: F811 (fixture)
    store = backend.store()
    before = time.time()
    orphan = _orphan(store, 1234)
    listed = store.list_packs()
    assert listed[orphan].size == 1234
    assert abs(listed[orphan].modified - before) < 600  # the backend's clock, roughly ours
    results, errors = in_threads(2, lambda i: store.create_lease(1, json.dumps({"who": i}).encode()))
    assert sorted(results) == [False, True] and not errors  # exactly one gc takes a lease
    store.write_lease(1, json.dumps({"released": 1}).encode())
    with WriterSession(store, "conformance", timing=FAST) as session:
        kept = _orphan(store, 99)
        session.announce([kept])
        report = sweep.gc(store, grace=0, timing=FAST)
    assert report.deleted == [orphan.hex()] and set(store.list_packs()) == {kept}
    assert store.read_sessions() == {}
    wait_for_gc(store, FAST)  # the lease was released: no wait
    with pytest.raises(Conflict):
        lease = GcLease.acquire(store, timing=FAST)
        GcLease.acquire(store, timing=FAST)
    lease.release()

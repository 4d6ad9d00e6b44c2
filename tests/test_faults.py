"""Faults while authoring: changing files, corrupt stores, unreachable or read-only stores, crashes.

Each leaves the store as valid as before, and the next command either works or says why.
"""

import functools
import json
import os
import subprocess
import sys
import textwrap

import pytest

import dsfs.authoring.ingest
from dsfs import Dataset, Store
from dsfs.errors import CorruptChunk, FileChanged, StoreReadOnly, StoreUnavailable
from dsfs.store.packs import PackBuilder
from conftest import final_version, make_tree, run_cli


def test_file_changing_during_upload_is_detected(tmp_path, memory_store, monkeypatch):
    src = tmp_path / "d"
    make_tree(src, {"a.bin": os.urandom(2 << 20), "b.bin": os.urandom(3 << 20)})
    real_chunker = dsfs.authoring.ingest.chunker

    class AppendWhileReading:
        """Chunks as usual, but appends to the file being read after the first chunk."""

        def cut_stream(self, f):
            for i, chunk in enumerate(real_chunker().cut_stream(f)):
                path = os.readlink(f"/proc/self/fd/{f.fileno()}")  # upload opens by descriptor
                if i == 0 and path.endswith("b.bin"):
                    with open(path, "ab") as w:
                        w.write(b"more")
                yield chunk

    monkeypatch.setattr(dsfs.authoring.ingest, "chunker", AppendWhileReading)
    ds = Dataset.create("p", "n", store=memory_store)
    ds.add_files(str(src))
    with pytest.raises(FileChanged, match="b.bin changed while it was being uploaded"):
        ds.finalize()
    again = Dataset.get(ds.id, include_drafts=True, store=memory_store)
    assert again.state == "draft"  # nothing final written
    monkeypatch.setattr(dsfs.authoring.ingest, "chunker", real_chunker)
    again.finalize()  # the file is stable now: the retry takes its current content
    assert again.read_file("b.bin") == (src / "b.bin").read_bytes()


@pytest.mark.parametrize("change", ["grow", "shrink", "grow-from-empty"])
def test_small_file_changing_before_it_is_read_is_detected(tmp_path, memory_store, monkeypatch, change):
    """A small file is read whole with its descriptor (LocalSource.read_all): bytes added or cut
    between the open and the read are a FileChanged, never a recorded half."""
    from dsfs.authoring import sources

    src = tmp_path / "d"
    make_tree(src, {"a.txt": b"" if change == "grow-from-empty" else b"0123456789", "b.txt": b"steady"})
    real_read_all = sources.LocalSource.read_all

    def changed_then_read(source):
        if source.path.endswith("a.txt"):
            with open(source.path, "r+b") as f:
                if change == "shrink":
                    f.truncate(4)
                else:
                    f.seek(0, os.SEEK_END)
                    f.write(b"more")
        return real_read_all(source)

    monkeypatch.setattr(sources.LocalSource, "read_all", changed_then_read)
    ds = Dataset.create("p", "n", store=memory_store)
    ds.add_files(str(src))
    with pytest.raises(FileChanged, match="a.txt changed while it was being uploaded"):
        ds.finalize()
    monkeypatch.setattr(sources.LocalSource, "read_all", real_read_all)
    again = Dataset.get(ds.id, include_drafts=True, store=memory_store)
    again.finalize()  # the file is stable now: the retry takes its current content
    assert again.read_file("a.txt") == (src / "a.txt").read_bytes()
    assert again.read_file("b.txt") == b"steady"


def _store_root(url):
    return url[len("file://"):]


@pytest.fixture
def two_versions(tmp_path, file_store):
    make_tree(tmp_path / "d", {"x": b"x" * 1000, "y": os.urandom(5000)})
    return final_version(file_store, tmp_path / "d", name="a"), final_version(file_store, tmp_path / "d", name="b")


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_corrupt_changeset_is_refused(two_versions, file_store, damage):
    a, b = two_versions
    path = f"{_store_root(file_store)}/datasets/{a.id}/changes.msgpack.zst"
    data = open(path, "rb").read()
    if damage == "truncate":
        open(path, "wb").write(data[: len(data) // 2])
    elif damage == "flip":
        open(path, "wb").write(data[:-3] + bytes([data[-3] ^ 0xFF]) + data[-2:])
    else:
        os.unlink(path)
    proc = run_cli("list", "--id", a.id, env={"DSFS_STORE": file_store})
    assert proc.returncode == 8 and "Traceback" not in proc.stderr
    assert f"change-set of dataset {a.id}" in proc.stderr
    proc = run_cli("create", "--project", "p", "--name", "c", "--parents", a.id, env={"DSFS_STORE": file_store})
    assert proc.returncode == 8
    # the other version is untouched and still reads
    assert Dataset.get(b.id, store=file_store).read_file("x") == b"x" * 1000
    assert "c" not in [v.name for v in Dataset.search(store=file_store)]


def test_corrupt_version_record_is_refused(two_versions, file_store):
    a, _ = two_versions
    path = f"{_store_root(file_store)}/datasets/{a.id}/version.json"
    open(path, "w").write('{"id": "')
    proc = run_cli("show", a.id, env={"DSFS_STORE": file_store})
    assert proc.returncode == 8 and "corrupt" in proc.stderr and "Traceback" not in proc.stderr
    assert len(Dataset.search(store=file_store)) == 1  # listing skips it, does not fail


def test_corrupt_pack_byte_fails_that_file_only(two_versions, file_store):
    a, _ = two_versions
    ref = {e.path: e for e in a.file_entries()}["y"].chunks[0]
    hexid = ref.pack.hex()
    path = f"{_store_root(file_store)}/packs/{hexid[:2]}/{hexid}"
    data = bytearray(open(path, "rb").read())
    data[ref.offset + 10] ^= 0xFF
    open(path, "wb").write(bytes(data))
    fresh = Dataset.get(a.id, store=file_store)
    with pytest.raises(CorruptChunk, match="y of dataset"):
        fresh.read_file("y")
    proc = run_cli("cat", "y", "--id", a.id, env={"DSFS_STORE": file_store})
    assert proc.returncode == 8 and proc.stdout == "" and "corrupt chunk" in proc.stderr


def test_unreachable_store(tmp_path):
    env = {"FSSPEC_S3_ENDPOINT_URL": "http://127.0.0.1:9", "FSSPEC_S3_KEY": "k", "FSSPEC_S3_SECRET": "s",
           "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"}
    proc = run_cli("--store", "s3://bucket/prefix", "search", env=env)
    assert proc.returncode == 7 and "unreachable" in proc.stderr and "Traceback" not in proc.stderr
    assert "s3://bucket/prefix" in proc.stderr
    proc = run_cli("--store", "s3://bucket/prefix", "create", "--project", "p", "--name", "n", env=env)
    assert proc.returncode == 7


@pytest.fixture
def read_only(tmp_path):
    """Make a folder read-only for real: a read-only bind mount as root, permissions otherwise."""
    mounted = []

    def make(folder):
        if os.geteuid() == 0:
            subprocess.run(["mount", "--bind", folder, folder], check=True)
            mounted.append(folder)
            subprocess.run(["mount", "-o", "remount,ro,bind", folder], check=True)
        else:
            for root, dirs, files in os.walk(folder):
                for name in dirs + files:
                    os.chmod(os.path.join(root, name), 0o555)
            os.chmod(folder, 0o555)

    yield make
    for folder in mounted:
        subprocess.run(["umount", folder], check=True)


def test_read_only_store(two_versions, file_store, tmp_path, read_only):
    a, _ = two_versions
    read_only(_store_root(file_store))
    env = {"DSFS_STORE": file_store}
    proc = run_cli("create", "--project", "p", "--name", "n", env=env)
    assert proc.returncode == 7 and "refused to write" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("metadata", "set", "k", "v", "--id", a.id, env=env)
    assert proc.returncode == 7
    # reading still works
    assert run_cli("cat", "x", "--id", a.id, env=env).stdout == "x" * 1000
    with pytest.raises(StoreReadOnly):
        Dataset.delete(a.id, force=True, store=file_store)


def test_failed_upload_resumes_without_resending(tmp_path, file_store, monkeypatch):
    """A store failure mid-upload: the rerun sends only what was not recorded."""
    monkeypatch.setattr(dsfs.authoring.ingest, "PackBuilder", functools.partial(PackBuilder, target=1 << 20))
    make_tree(tmp_path / "d", {f"f{i:02d}": os.urandom(300 << 10) for i in range(20)})
    ds = Dataset.create("p", "n", store=file_store)
    ds.add_files(str(tmp_path / "d"))
    written = []
    real_write = Store.write_pack

    def failing_write(self, pack_id, data):
        if len(written) == 3:
            raise StoreUnavailable("store went away")
        written.append(pack_id)
        real_write(self, pack_id, data)

    monkeypatch.setattr(Store, "write_pack", failing_write)
    with pytest.raises(StoreUnavailable):
        ds.upload(max_workers=1)
    monkeypatch.setattr(Store, "write_pack", real_write)
    sent_again = []
    monkeypatch.setattr(Store, "write_pack", lambda self, pid, data: (sent_again.append(pid), real_write(self, pid, data)))
    resumed = Dataset.get(ds.id, include_drafts=True, store=file_store)
    resumed.finalize()
    assert sent_again and not set(sent_again) & set(written)
    assert resumed.info.stats["new_bytes"] == 20 * (300 << 10)  # every byte stored exactly once
    for i in range(20):
        assert resumed.read_file(f"f{i:02d}") == (tmp_path / "d" / f"f{i:02d}").read_bytes()


KILLER = textwrap.dedent("""
    import functools, os, signal, sys
    import dsfs.authoring.ingest
    from dsfs.store.packs import PackBuilder
    from dsfs.store.layout import Store
    dsfs.authoring.ingest.PackBuilder = functools.partial(PackBuilder, target=1 << 20)
    real = Store.write_pack
    count = [0]
    def write_then_die(self, pack_id, data):
        real(self, pack_id, data)
        count[0] += 1
        if count[0] == int(os.environ["KILL_AFTER"]):
            os.kill(os.getpid(), signal.SIGKILL)
    Store.write_pack = write_then_die
    from dsfs.cli.main import main
    main(sys.argv[1:])
""")


def test_killed_upload_resumes_without_resending(tmp_path, file_store):
    make_tree(tmp_path / "d", {f"f{i:02d}": os.urandom(300 << 10) for i in range(20)})
    env = {**os.environ, "DSFS_STORE": file_store}
    ds_id = run_cli("create", "--project", "p", "--name", "n", env=env).stdout.strip()
    run_cli("add", "--files", tmp_path / "d", env=env)
    proc = subprocess.run([sys.executable, "-c", KILLER, "upload", "--max-workers", "1"],
                          env={**env, "KILL_AFTER": "3"}, capture_output=True, text=True)
    assert proc.returncode == -9
    packs_dir = f"{_store_root(file_store)}/packs"
    before = {os.path.join(r, f): os.stat(os.path.join(r, f)).st_mtime_ns
              for r, _, fs in os.walk(packs_dir) for f in fs}
    assert len(before) == 3
    proc = subprocess.run([sys.executable, "-c", KILLER, "close"], env={**env, "KILL_AFTER": "1000"},
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    after = {os.path.join(r, f): os.stat(os.path.join(r, f)).st_mtime_ns
             for r, _, fs in os.walk(packs_dir) for f in fs}
    assert all(after[p] == m for p, m in before.items())  # not rewritten
    ds = Dataset.get(ds_id, store=file_store)
    stored = sum(os.path.getsize(p) for p in after)
    assert stored < 20 * (300 << 10) + (1 << 20)  # at most one pack's worth sent twice
    for i in range(20):
        assert ds.read_file(f"f{i:02d}") == (tmp_path / "d" / f"f{i:02d}").read_bytes()
    assert json.loads(run_cli("show", ds_id, "--json", env=env).stdout)["state"] == "final"

"""Local resources running out or at their limits: a full disk under the cache (a real small tmpfs),
names of up to 255 bytes, `cache prune` racing readers, dates zip cannot hold."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import tarfile
import time
import zipfile

import blake3
import pytest

from dsfs import Dataset
from dsfs.node.cache import Cache
from dsfs.errors import DiskFull
from dsfs.model import encode_changeset
from conftest import final_version, make_tree, read_tree, run_cli
from fusehelp import Node, is_mounted, require_fuse
from servers import unavailable


class SmallDisk:
    """A 1 MiB tmpfs: `fill` takes every free block, `free` gives them back, `grow` enlarges it."""

    def __init__(self, path):
        self.path = path
        self.filler = path / "filler"

    def fill(self) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
        assert os.statvfs(self.path).f_bavail == 0

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def grow(self, size: str = "64m") -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)


@pytest.fixture
def small_disk(tmp_path):
    path = tmp_path / "small"
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        unavailable(f"cannot mount a small tmpfs here (needs root): {proc.stderr.strip()}",
                    "CI runs as root and must mount a small tmpfs")
    yield SmallDisk(path)
    subprocess.run(["umount", "-l", str(path)], check=True)


def _fails_with_9(proc, cache) -> None:
    assert proc.returncode == 9, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"no space left on the device of the cache {cache}" in proc.stderr


def _leftovers(cache) -> list[str]:
    """What a failed write left in the cache: temp files and folders, chunk files LMDB does not record."""
    left = [n for n in os.listdir(cache / "tmp") if not n.endswith(".lock")] if (cache / "tmp").exists() else []
    for folder, dirs, names in os.walk(cache):
        left += [n for n in dirs + names if "dsfs-tmp" in n or ".tmp-" in n]
    recorded = Cache(str(cache)).chunk_count() if (cache / "index.lmdb").exists() else 0
    files = [n for _, _, names in os.walk(cache / "chunks") for n in names]
    if len(files) != recorded:
        left.append(f"{len(files)} chunk files, {recorded} recorded")
    return left


# -- a full disk under the cache -------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_new_cache_on_a_full_disk(small_disk, tmp_path, file_store):
    """No SIGBUS (LMDB's lock file is given its blocks before LMDB maps it): exit 9 naming the cache,
    then the same commands work once there is space."""
    files = {"a.bin": os.urandom(300_000), "b/c.txt": b"c"}
    make_tree(tmp_path / "d", files)
    ds = final_version(file_store, tmp_path / "d")
    cache = small_disk.path / "cache"
    env = {"DSFS_CACHE_DIR": str(cache)}
    small_disk.fill()
    for args in (["cache", "stats"], ["download", ds.id, tmp_path / "t"], ["get", ds.id]):
        _fails_with_9(run_cli("--store", file_store, *args, env=env), cache)
    assert not (tmp_path / "t").exists()
    small_disk.free()
    assert run_cli("--store", file_store, "cache", "stats", env=env).returncode == 0
    proc = run_cli("--store", file_store, "download", ds.id, tmp_path / "t", env=env)
    assert proc.returncode == 0, proc.stderr
    assert read_tree(tmp_path / "t") == files


@pytest.mark.timeout(120)
def test_existing_cache_on_a_full_disk(small_disk, tmp_path, file_store):
    """A cache that holds a version already: building another's view, or laying out a copy, on a full
    disk exits 9 naming the cache and leaves nothing half-written; reruns with space succeed."""
    make_tree(tmp_path / "a", {"x": b"x"})
    first = final_version(file_store, tmp_path / "a", name="first")
    files = {"big.bin": os.urandom(3 << 20), "small/y.txt": b"y" * 100}
    make_tree(tmp_path / "d", files)
    ds = final_version(file_store, tmp_path / "d")
    cache = small_disk.path / "cache"
    env = {"DSFS_CACHE_DIR": str(cache)}
    assert run_cli("--store", file_store, "download", first.id, tmp_path / "first", env=env).returncode == 0
    small_disk.fill()
    _fails_with_9(run_cli("--store", file_store, "download", ds.id, tmp_path / "t", env=env), cache)
    _fails_with_9(run_cli("--store", file_store, "get", first.id, env=env), cache)
    assert run_cli("--store", file_store, "cache", "stats", env=env).returncode == 0  # reading needs no space
    assert _leftovers(cache) == []
    small_disk.free()  # room for the view, not for the 3 MiB of content files `get` writes
    _fails_with_9(run_cli("--store", file_store, "get", ds.id, env=env), cache)
    assert _leftovers(cache) == []
    small_disk.grow()
    proc = run_cli("--store", file_store, "download", ds.id, tmp_path / "t", env=env)
    assert proc.returncode == 0, proc.stderr
    assert read_tree(tmp_path / "t") == files
    proc = run_cli("--store", file_store, "get", ds.id, env=env)
    assert proc.returncode == 0, proc.stderr
    assert read_tree(proc.stdout.strip()) == files


def test_chunks_on_a_full_disk_are_not_left_unrecorded(small_disk):
    """put_chunks on a full disk: DiskFull, and every chunk file written is recorded or removed."""
    cache = Cache(str(small_disk.path / "cache"))
    small_disk.fill()
    small_disk.free()
    chunks = [os.urandom(200_000) for _ in range(8)]  # 1.6 MB: some fit, then the disk is full
    with pytest.raises(DiskFull, match="no space left on the device of the cache"):
        cache.put_chunks([(blake3.blake3(c).digest(), c) for c in chunks])
    assert _leftovers(small_disk.path / "cache") == []


@pytest.mark.timeout(120)
def test_targets_on_a_full_disk(small_disk, tmp_path, file_store):
    """download (before its first file: the partial-download marker), export and get --copy into a
    full disk exit 9 naming the target and leave nothing a rerun would trip on."""
    files = {"a.bin": os.urandom(100_000), "b.txt": b"b"}
    make_tree(tmp_path / "d", files)
    ds = final_version(file_store, tmp_path / "d")
    small_disk.fill()
    target = small_disk.path / "t"
    for args, named in ((["download", ds.id, target], target), (["get", ds.id, "--copy", small_disk.path / "c"],
                        small_disk.path / "c"), (["export", ds.id, "-o", small_disk.path / "x.tar"], small_disk.path)):
        proc = run_cli("--store", file_store, *args)
        assert proc.returncode == 9 and "Traceback" not in proc.stderr, proc.stderr
        assert f"no space left on the device of {named};" in proc.stderr
    assert [n for _, dirs, names in os.walk(small_disk.path) for n in dirs + names if n.startswith(".")] == []
    small_disk.free()
    proc = run_cli("--store", file_store, "download", ds.id, target)
    assert proc.returncode == 0, proc.stderr
    assert read_tree(target) == files


@pytest.mark.timeout(180)
@pytest.mark.expect_log(r"ERROR dsfs\S*: no space left on the device of the cache")
def test_mount_with_its_cache_on_a_full_disk(small_disk, tmp_path):
    """`dsfs mount` with a new cache on a full disk exits 9 naming it and leaves no mount; a mount
    whose cache disk fills up while it serves still answers reads (from memory)."""
    require_fuse()
    node = Node(tmp_path / "node")
    files = {"big.bin": os.urandom(3 << 20), "f.txt": b"f" * 1000}
    dataset = node.dataset(files)
    try:
        cache = small_disk.path / "cache"
        mountpoint = node.mountpoint("m")
        small_disk.fill()
        _fails_with_9(node.cli("mount", dataset, mountpoint, "--cache-dir", cache), cache)
        assert not is_mounted(mountpoint) and node.record(mountpoint) is None
        small_disk.free()
        node.cli("mount", dataset, mountpoint, "--cache-dir", cache, check=True)
        small_disk.fill()
        for name, data in files.items():
            with open(os.path.join(mountpoint, name), "rb") as f:
                assert f.read() == data
        node.cli("unmount", mountpoint, check=True)
    finally:
        node.cleanup()


# -- names of up to 255 bytes ----------------------------------------------------------------------

def _long_names() -> dict[str, bytes]:
    files = {}
    for n in range(246, 256):
        files["a" * n] = f"{n}".encode()
    files["é" * 127] = b"254 bytes of two-byte characters"
    common = "c" * 240  # two multi-chunk files whose names share 240 bytes: their temp files must not
    files[f"deep/{common}-one-{'x' * 6}"] = os.urandom(5 << 20)
    files[f"deep/{common}-two-{'x' * 6}"] = os.urandom(5 << 20)
    return files


@pytest.mark.timeout(120)
def test_names_of_up_to_255_bytes(tmp_path, file_store):
    """download, get (and its repair), get --copy and export write files of 246-255-byte names: the
    temp names they write through fit in 255 bytes and stay distinct."""
    files = _long_names()
    make_tree(tmp_path / "d", files)
    ds = final_version(file_store, tmp_path / "d")
    proc = run_cli("--store", file_store, "download", ds.id, tmp_path / "t")
    assert proc.returncode == 0, proc.stderr
    assert read_tree(tmp_path / "t") == files
    proc = run_cli("--store", file_store, "get", ds.id)
    assert proc.returncode == 0, proc.stderr
    copy = proc.stdout.strip()
    assert read_tree(copy) == files
    damaged = os.path.join(copy, "a" * 255)
    os.chmod(damaged, 0o644)
    with open(damaged, "wb") as f:
        f.write(b"written through")
    assert run_cli("--store", file_store, "get", ds.id).returncode == 0  # repaired by a rename over it
    assert read_tree(copy) == files
    proc = run_cli("--store", file_store, "get", ds.id, "--copy", tmp_path / "mine")
    assert proc.returncode == 0, proc.stderr
    assert read_tree(tmp_path / "mine") == files
    archive = tmp_path / ("z" * 250 + ".tar")
    proc = run_cli("--store", file_store, "export", ds.id, "--format", "tar", "-o", archive)
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(archive) as tar:
        assert {m.name: tar.extractfile(m).read() for m in tar.getmembers()} == files
    assert sorted(os.listdir(tmp_path)) == sorted(["d", "t", "mine", archive.name, "home", "store"])


# -- errors of get name the dataset's paths -------------------------------------------------------

def test_get_names_a_damaged_file_by_its_path(tmp_path, file_store):
    files = {"images/cat.jpg": os.urandom(50_000), "ok.txt": b"fine"}
    make_tree(tmp_path / "d", files)
    ds = final_version(file_store, tmp_path / "d")
    ref = next(e for e in ds.file_entries() if e.path == "images/cat.jpg").chunks[0]
    pack = ds.store.read_pack(ref.pack)
    damaged = bytearray(pack)
    damaged[ref.offset + 10] ^= 0x40
    ds.store.write_pack(ref.pack, bytes(damaged))
    proc = run_cli("--store", file_store, "get", ds.id)
    assert proc.returncode == 8 and "Traceback" not in proc.stderr, proc.stderr
    assert "images/cat.jpg" in proc.stderr
    digest = next(e for e in ds.file_entries() if e.path == "images/cat.jpg").digest.hex()
    assert digest not in proc.stderr


# -- cache prune while readers store chunks -------------------------------------------------------

_STORE_CHUNKS = """
import os, sys, blake3
from dsfs.node.cache import Cache
cache = Cache(sys.argv[1])
print("ready", flush=True)
while True:
    chunks = [os.urandom(4096) for _ in range(32)]
    cache.put_chunks([(blake3.blake3(c).digest(), c) for c in chunks])
"""


@pytest.mark.timeout(60)
def test_prune_to_zero_while_chunks_are_stored(tmp_path):
    """`cache prune --to 0` (evicts, then sweeps tmp/) while another process stores chunks, as a
    mount's reads do: a temp file renamed into place between the sweep's listing and its stat, or a
    chunk evicted as it is stored, is no error."""
    from dsfs.node import copies

    cache = Cache(str(tmp_path / "cache"))
    writer = subprocess.Popen([sys.executable, "-c", _STORE_CHUNKS, cache.root], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            copies.prune(cache, 0)
            cache.sweep_temp()
        assert writer.poll() is None  # the writer did not fail either
    finally:
        writer.kill()
        writer.wait()


# -- dates zip cannot hold -------------------------------------------------------------------------

def _with_mtime(store_url: str, ds: Dataset, mtime_ns: int) -> None:
    """Rewrite a version's change-set with every file's mtime set to `mtime_ns` (a hostile or
    odd writer: authoring on this machine cannot record it)."""
    entries = ds.file_entries()
    for entry in entries:
        entry.mtime_ns = mtime_ns
    data = encode_changeset(entries)
    root = store_url[len("file://"):]
    open(f"{root}/datasets/{ds.id}/changes.msgpack.zst", "wb").write(data)
    path = f"{root}/datasets/{ds.id}/version.json"
    record = json.load(open(path))
    record["changes"] = {"digest": blake3.blake3(data).hexdigest(), "size": len(data)}
    open(path, "w").write(json.dumps(record))


@pytest.mark.parametrize("mtime_ns, date", [
    (2**63 - 1, (2107, 12, 31, 23, 59, 58)),  # the latest a version records (dsfs.model.MTIME_MAX)
    (7_258_118_400 * 10**9, (2107, 12, 31, 23, 59, 58)),  # 2200-01-01
    (0, (1980, 1, 1, 0, 0, 0)),
    (1_700_000_000 * 10**9, (2023, 11, 14, 22, 13, 20)),
])
def test_zip_export_clamps_dates_it_cannot_hold(tmp_path, file_store, mtime_ns, date):
    make_tree(tmp_path / "d", {"f.txt": b"data"})
    ds = final_version(file_store, tmp_path / "d")
    _with_mtime(file_store, ds, mtime_ns)
    proc = run_cli("--store", file_store, "export", ds.id, "--format", "zip", "-o", tmp_path / "x.zip")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    with zipfile.ZipFile(tmp_path / "x.zip") as archive:
        assert archive.getinfo("f.txt").date_time == date and archive.read("f.txt") == b"data"
    proc = run_cli("--store", file_store, "export", ds.id, "--format", "tar", "-o", tmp_path / "x.tar")
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(tmp_path / "x.tar") as tar:  # tar (pax) keeps the date as it is
        assert int(tar.getmember("f.txt").mtime) == mtime_ns // 10**9


def test_an_mtime_past_int64_in_a_change_set_is_corrupt_data(tmp_path, file_store):
    make_tree(tmp_path / "d", {"f.txt": b"data"})
    ds = final_version(file_store, tmp_path / "d")
    _with_mtime(file_store, ds, 2**64 - 1)  # dsfs never writes one: ingest clamps to MTIME_MAX
    proc = run_cli("--store", file_store, "export", ds.id, "--format", "zip", "-o", tmp_path / "x.zip")
    assert proc.returncode == 8 and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_zip_date_of_an_mtime_in_range_is_exact(tmp_path, file_store):
    make_tree(tmp_path / "d", {"f.txt": b"data"})
    os.utime(tmp_path / "d" / "f.txt", ns=(1_700_000_001 * 10**9, 1_700_000_001 * 10**9))
    ds = final_version(file_store, tmp_path / "d")
    buffer = io.BytesIO()
    from dsfs.node.export import export
    from dsfs.node.view import View

    export(View(ds.store, Cache(), ds.id), buffer, "zip")
    with zipfile.ZipFile(buffer) as archive:
        assert archive.getinfo("f.txt").date_time == (2023, 11, 14, 22, 13, 20)  # zip keeps even seconds


def test_one_process_opens_caches_in_many_folders(tmp_path):
    """Each node cache's LMDB environment maps 1 TiB of address space, so a process can map about
    126 at once; one no Cache holds any more is closed, and a process may go through many more."""
    data = os.urandom(1000)
    digest = blake3.blake3(data).digest()
    for i in range(200):
        cache = Cache(str(tmp_path / f"cache{i}"))
        cache.put_chunks([(digest, data)])
        assert cache.get_chunk(digest) == data
    again = Cache(str(tmp_path / "cache0"))  # closed above, opened again with what it held
    assert again.get_chunk(digest) == data


# -- kill -9 while chunk records are group-committed ----------------------------------------------

_READ_THEN_DIE = """
import os, random, signal, sys, threading
from dsfs import Store
from dsfs.node.cache import Cache
from dsfs.node.view import View

store_url, dataset_id, cache_dir, stores_before_kill = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
cache = Cache(cache_dir)
stored = [0]
lock = threading.Lock()
put = cache.put_chunks

def put_then_maybe_die(items):
    put(items)
    with lock:
        stored[0] += 1
        if stored[0] == stores_before_kill:  # the committer is committing, or has records queued
            os.kill(os.getpid(), signal.SIGKILL)

cache.put_chunks = put_then_maybe_die
view = View(Store.open(store_url), cache, dataset_id)
names = [path for path, _ in view.index.walk_files()]
random.Random(stores_before_kill).shuffle(names)

def reader(part):
    for name in part:
        view.read_path(name)

threads = [threading.Thread(target=reader, args=(names[i::4],)) for i in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


@pytest.mark.timeout(120)
def test_killed_during_group_commit_then_every_read_is_right(tmp_path, file_store):
    """A reader killed (-9) while chunk records are group-committed: every record left names a
    complete chunk (a file, or a small chunk's value in LMDB) that verifies, and a new reader of the
    same cache gets every byte right (chunks whose records were lost are fetched again)."""
    from dsfs import Store
    from dsfs.node.view import View

    files = {f"d{i % 7}/f{i:03d}": os.urandom(2000 + 797 * i) for i in range(300)}  # small and big chunks
    make_tree(tmp_path / "src", files)
    ds = final_version(file_store, tmp_path / "src")
    cache_dir = str(tmp_path / "cache")
    for stores_before_kill in (3, 10, 20):  # of about 24 stores (ranges of files read near each other)
        proc = subprocess.run([sys.executable, "-c", _READ_THEN_DIE, file_store, ds.id, cache_dir,
                               str(stores_before_kill)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == -9, proc.stderr
    cache = Cache(cache_dir)
    with cache.env.begin(db=cache.db_chunks) as txn:
        recorded = [bytes(key) for key, _ in txn.cursor()]
    assert recorded and all(cache.get_chunk(digest) is not None for digest in recorded)
    assert cache.chunk_count() == len(recorded)  # none was dropped as damaged
    view = View(Store.open(file_store), cache, ds.id)
    try:
        assert {name: view.read_path(name) for name in files} == files
    finally:
        view.close()
    assert cache.chunk_count() >= len(files)  # every chunk recorded now, at the latest at close

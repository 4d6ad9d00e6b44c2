"""`dsfs://` (issue 19): a read-only fsspec filesystem over final versions, against a file:// store
and S3 (moto): the URL forms and their pins, the listing methods, random reads compared with the
source bytes, the errors (not found, corrupt data, store unreachable, every write refused), the
entry point, readers of parquet when pyarrow is installed, and forked workers."""

from __future__ import annotations

import errno
import io
import multiprocessing
import pickle
import random

import blake3
import fsspec
import pytest
from conftest import final_version, make_tree
from servers import free_port, required_library
from test_view import _corrupt_pack_byte, _flip_cached_byte

from dsfs import Dataset
from dsfs.filesystem import DsfsFileSystem
from dsfs.node.cache import Cache
from dsfs.store import datastores
from dsfs.store.layout import Store

rng = random.Random(19)
BIG = rng.randbytes(6 << 20)  # several content-defined chunks (256 KiB - 4 MiB)
FILES = {
    "big.bin": BIG,
    "labels.csv": b"path,label\n" + b"img/a.jpg,cat\n" * 500,
    "img/a.jpg": rng.randbytes(30_000),
    "img/b@2x.jpg": rng.randbytes(5_000),  # '@' in a path: not a version
    "img/100% real.txt": b"percent and space\n",  # taken as written, never %-decoded
    "img/deep/er/c.bin": rng.randbytes(70_000),
    "empty": b"",
}
PROJECT, NAME = "vision/2024", "cats"  # a project of two parts


def filesystem(store, **options) -> DsfsFileSystem:
    """A new instance (not fsspec's cached one), so that each test pins on its own."""
    return fsspec.filesystem("dsfs", store=store, skip_instance_cache=True, **options)


@pytest.fixture
def version(tmp_path, file_store):
    make_tree(tmp_path / "src", FILES)
    return final_version(file_store, tmp_path / "src", project=PROJECT, name=NAME)


def test_url_forms_name_the_same_version(version, file_store):
    fs = filesystem(file_store)
    forms = [f"dsfs://{PROJECT}/{NAME}", f"{PROJECT}/{NAME}", f"dsfs://{PROJECT}/{NAME}@1.0.0",
             f"dsfs://vision%2F2024/{NAME}", "dsfs://vision%2F2024/c%61ts@1.0.0", f"dsfs://{version.id}"]
    for form in forms:
        for path, data in FILES.items():
            assert fs.cat_file(f"{form}/{path}") == data, (form, path)
    # names come back as written, so they can be passed back
    assert fs.ls(f"vision%2F2024/{NAME}@1.0.0/img", detail=False) == [
        f"vision%2F2024/{NAME}@1.0.0/img/{name}" for name in ("100% real.txt", "a.jpg", "b@2x.jpg", "deep")]
    assert {info.id for info in fs.pins.values()} == {version.id}


def test_a_name_is_pinned_once_per_instance(version, file_store, tmp_path):
    fs = fsspec.filesystem("dsfs", store=file_store)
    assert fs.cat_file(f"{PROJECT}/{NAME}/labels.csv") == FILES["labels.csv"]
    make_tree(tmp_path / "v2", {"labels.csv": b"new\n"})
    newer = final_version(file_store, tmp_path / "v2", project=PROJECT, name=NAME)
    assert Dataset.get(f"{PROJECT}/{NAME}", store=file_store).id == newer.id
    assert fs.cat_file(f"{PROJECT}/{NAME}/labels.csv") == FILES["labels.csv"]  # still the version resolved first
    assert fsspec.filesystem("dsfs", store=file_store) is fs  # fsspec's cached instance, and its pin
    assert fs.exists(f"{PROJECT}/{NAME}/big.bin")
    fresh = fsspec.filesystem("dsfs", store=file_store, skip_instance_cache=True)
    assert fresh.cat_file(f"{PROJECT}/{NAME}/labels.csv") == b"new\n"
    assert not fresh.exists(f"{PROJECT}/{NAME}/big.bin")
    assert fresh.cat_file(f"{PROJECT}/{NAME}@1.0.0/big.bin") == BIG  # a version number names its own
    restored = pickle.loads(pickle.dumps(fs))  # a spawned worker gets the pins with the filesystem
    assert restored is not fs and restored.cat_file(f"{PROJECT}/{NAME}/labels.csv") == FILES["labels.csv"]


def test_listing_methods(version, file_store):
    fs = filesystem(file_store)
    root = f"{PROJECT}/{NAME}"
    listing = {entry["name"]: entry for entry in fs.ls(f"dsfs://{root}")}
    assert sorted(listing) == [f"{root}/{name}" for name in ("big.bin", "empty", "img", "labels.csv")]
    big = listing[f"{root}/big.bin"]
    assert big["type"] == "file" and big["size"] == len(BIG) and big["digest"] == blake3.blake3(BIG).hexdigest()
    assert big["mode"] & 0o777 == 0o644 and big["mode"] & 0o100000 and big["mtime"] > 1e9
    assert listing[f"{root}/img"]["type"] == "directory" and listing[f"{root}/img"]["size"] == 0
    assert fs.ls(f"{root}/img/a.jpg") == [fs.info(f"{root}/img/a.jpg")]  # a file lists itself
    assert fs.info(root)["type"] == "directory" and fs.info(root)["name"] == root
    assert fs.find(root) == sorted(f"{root}/{path}" for path in FILES)
    assert fs.find(f"{root}/img", maxdepth=1) == [f"{root}/img/{n}" for n in ("100% real.txt", "a.jpg", "b@2x.jpg")]
    assert fs.glob(f"{root}/img/*.jpg") == [f"{root}/img/a.jpg", f"{root}/img/b@2x.jpg"]
    assert fs.glob(f"dsfs://{root}/**/c.bin") == [f"{root}/img/deep/er/c.bin"]
    walked = {folder: (sorted(dirs), sorted(files)) for folder, dirs, files in fs.walk(root)}
    assert walked[f"{root}/img/deep"] == (["er"], []) and walked[root] == (["img"], ["big.bin", "empty", "labels.csv"])
    assert fs.du(root) == sum(map(len, FILES.values())) and fs.du(f"{root}/img/deep") == 70_000
    assert fs.exists(f"{root}/img/deep") and fs.exists(f"{root}/empty") and not fs.exists(f"{root}/img/nope")
    assert fs.isdir(f"{root}/img") and not fs.isdir(f"{root}/big.bin") and not fs.isdir(f"{root}/nope")
    assert fs.isfile(f"{root}/big.bin") and not fs.isfile(f"{root}/img") and not fs.isfile(f"{root}/nope")
    assert not fs.exists("vision/2024") and not fs.exists("vision/2024/dogs/x") and not fs.exists("")


def test_random_reads_match_the_source(version, file_store):
    fs = filesystem(file_store)
    pick = random.Random(1)
    with fs.open(f"dsfs://{PROJECT}/{NAME}/big.bin") as f:
        assert f.size == len(BIG) and f.seekable() and f.readable() and not f.writable()
        assert f.read(10) == BIG[:10] and f.tell() == 10
        for _ in range(300):
            offset = pick.choice([pick.randrange(len(BIG)), len(BIG) - pick.randrange(1 << 20), len(BIG) + 5])
            size = max(1, int(2 ** pick.uniform(0, 20)))  # 1 B to 1 MiB, past the end too
            f.seek(offset)
            expected = BIG[offset:offset + size]
            assert f.read(size) == expected and f.tell() == offset + len(expected), (offset, size)
        f.seek(-100, io.SEEK_END)
        assert f.read() == BIG[-100:]
        f.seek(1000)
        buffer = bytearray(5000)
        assert f.readinto(buffer) == 5000 and bytes(buffer) == BIG[1000:6000]
    with fs.open(f"{PROJECT}/{NAME}/labels.csv", "r") as text:  # text mode over the binary file
        assert text.readline() == "path,label\n"
    with fs.open(f"{PROJECT}/{NAME}/empty") as f:
        assert f.read() == b""


def test_cat_file_ranges_and_cat_ranges(version, file_store):
    fs = filesystem(file_store)
    path = f"{PROJECT}/{NAME}/big.bin"
    for start, end in [(0, 10), (5, None), (None, 7), (-100, None), (-100, -50), (len(BIG) - 3, len(BIG) + 9),
                       (len(BIG) + 1, None), (10, 5), (3 << 20, (3 << 20) + (1 << 20))]:
        assert fs.cat_file(path, start, end) == BIG[start:end], (start, end)
    assert fs.cat_ranges([path, path, f"{PROJECT}/{NAME}/img/a.jpg"], [0, 4 << 20, 100], [3, (4 << 20) + 9, 200]) == [
        BIG[:3], BIG[4 << 20:(4 << 20) + 9], FILES["img/a.jpg"][100:200]]
    assert fs.cat(f"{PROJECT}/{NAME}/img/*.jpg") == {f"{PROJECT}/{NAME}/img/a.jpg": FILES["img/a.jpg"],
                                                     f"{PROJECT}/{NAME}/img/b@2x.jpg": FILES["img/b@2x.jpg"]}


def test_checksum_is_the_digest(version, file_store):
    fs = filesystem(file_store)
    for path, data in FILES.items():
        url = f"{PROJECT}/{NAME}/{path}"
        assert fs.ukey(url) == blake3.blake3(data).hexdigest() == fs.info(url)["digest"]
        assert fs.checksum(url) == int(blake3.blake3(data).hexdigest(), 16)
        assert filesystem(file_store).checksum(f"{version.id}/{path}") == fs.checksum(url)  # stable


def test_every_write_is_refused(version, file_store, tmp_path):
    fs = filesystem(file_store)
    root = f"{PROJECT}/{NAME}"
    (tmp_path / "local").write_bytes(b"x")
    writes = [lambda: fs.rm(f"{root}/big.bin"), lambda: fs.rm_file(f"{root}/big.bin"),
              lambda: fs._rm(f"{root}/big.bin"),
              lambda: fs.rm(f"{root}/img", recursive=True), lambda: fs.rmdir(f"{root}/img"),
              lambda: fs.mkdir(f"{root}/new"), lambda: fs.makedirs(f"{root}/new/er", exist_ok=True),
              lambda: fs.pipe_file(f"{root}/new", b"x"), lambda: fs.pipe({f"{root}/new": b"x"}),
              lambda: fs.put_file(str(tmp_path / "local"), f"{root}/new"),
              lambda: fs.put(str(tmp_path / "local"), root),
              lambda: fs.mv(f"{root}/big.bin", f"{root}/moved"), lambda: fs.cp_file(f"{root}/big.bin", f"{root}/copy"),
              lambda: fs.copy(f"{root}/big.bin", f"{root}/copy"), lambda: fs.touch(f"{root}/new"),
              lambda: fs.touch(f"{root}/big.bin", truncate=False), lambda: fs.open(f"{root}/new", "wb"),
              lambda: fs.open(f"{root}/big.bin", "w"), lambda: fs.open(f"{root}/big.bin", "ab"),
              lambda: fs.open(f"{root}/new", "xb"), lambda: fs.open(f"{root}/big.bin", "r+b"),
              lambda: fsspec.open(f"dsfs://{root}/new", "wb", store=file_store).open(),
              lambda: version.open("big.bin", "wb")]
    for write in writes:
        with pytest.raises(PermissionError) as caught:
            write()
        assert caught.value.errno == errno.EROFS and "read-only" in str(caught.value)
    assert fs.cat_file(f"{root}/big.bin") == BIG and not fs.exists(f"{root}/new")


def test_unknown_dataset_or_path_is_file_not_found_naming_it(version, file_store):
    fs = filesystem(file_store)
    for url, said in [(f"dsfs://{PROJECT}/{NAME}/img/nope.jpg", "img/nope.jpg"),
                      (f"dsfs://{PROJECT}/dogs/a.jpg", f"{PROJECT}/dogs/a.jpg"),
                      (f"dsfs://{PROJECT}/{NAME}@9.9.9/a.jpg", "9.9.9"),
                      (f"dsfs://{'0' * 32}/a.jpg", "0" * 32),
                      ("dsfs://vision", "vision"), ("dsfs://cats@1.0.0/a", "cats@1.0.0"),
                      (f"dsfs://{PROJECT}/{NAME}/img/../big.bin", "..")]:
        for call in (fs.info, fs.ls, fs.cat_file, fs.open):
            with pytest.raises(FileNotFoundError) as caught:
                call(url)
            assert said in str(caught.value) and url in str(caught.value), (call, str(caught.value))
    with pytest.raises(IsADirectoryError):
        fs.cat_file(f"{PROJECT}/{NAME}/img")
    with pytest.raises(IsADirectoryError):
        fs.open(f"{PROJECT}/{NAME}/img")
    assert fs.find(f"{PROJECT}/dogs") == [] and fs.glob(f"{PROJECT}/{NAME}/nope/*") == []


def test_a_draft_is_not_read(version, file_store, tmp_path):
    draft = Dataset.create(PROJECT, NAME, version="2.0.0", store=file_store)
    draft.add_files(str(tmp_path / "src"))
    with pytest.raises(FileNotFoundError, match="draft"):
        filesystem(file_store).info(f"{PROJECT}/{NAME}@2.0.0/big.bin")
    assert filesystem(file_store).info(f"{PROJECT}/{NAME}/big.bin")["size"] == len(BIG)  # latest *final*


def test_corrupt_data_is_eio_naming_the_file(version, file_store, tmp_path):
    cache_dir = str(tmp_path / "cache")
    entries = {entry.path: entry for entry in version.file_entries()}
    _corrupt_pack_byte(file_store, entries["img/a.jpg"].chunks[0])
    fs = filesystem(file_store, cache_dir=cache_dir)
    for read in (lambda: fs.cat_file(f"{PROJECT}/{NAME}/img/a.jpg"),
                 lambda: fs.open(f"{PROJECT}/{NAME}/img/a.jpg").read(100)):
        with pytest.raises(OSError) as caught:
            read()
        assert caught.value.errno == errno.EIO and "img/a.jpg" in str(caught.value)
    assert fs.cat_file(f"{PROJECT}/{NAME}/labels.csv") == FILES["labels.csv"]  # other files still read

    # a damaged copy in the node's cache is caught and fetched again from the store
    digest = entries["labels.csv"].chunks[0].digest
    _flip_cached_byte(Cache(cache_dir), digest, 10)
    assert filesystem(file_store, cache_dir=cache_dir).cat_file(f"{PROJECT}/{NAME}/labels.csv") == FILES["labels.csv"]
    # damaged in both places: EIO
    _flip_cached_byte(Cache(cache_dir), digest, 10)
    _corrupt_pack_byte(file_store, entries["labels.csv"].chunks[0])
    with pytest.raises(OSError) as caught:
        filesystem(file_store, cache_dir=cache_dir).cat_file(f"{PROJECT}/{NAME}/labels.csv")
    assert caught.value.errno == errno.EIO and "labels.csv" in str(caught.value)


@pytest.mark.slow
def test_unreachable_store_names_the_store_without_secrets(tmp_path):
    datastores.register("dead", "s3://bucket/dsfs", {"endpoint_url": f"http://127.0.0.1:{free_port()}",
                                                     "key": "AKIDEAD", "secret": "very-secret-value"})
    for fs in (fsspec.filesystem("dsfs", datastore="dead", skip_instance_cache=True),
               filesystem(Store("s3://bucket/dsfs", endpoint_url=f"http://127.0.0.1:{free_port()}",
                                key="AKIDEAD", secret="very-secret-value"))):
        with pytest.raises(OSError) as caught:
            fs.cat_file("p/n/file")
        assert not isinstance(caught.value, FileNotFoundError), caught.value
        assert "s3://bucket/dsfs" in str(caught.value) and "very-secret-value" not in str(caught.value)
        with pytest.raises(OSError):  # an error, not "it does not exist"
            fs.exists("p/n/file")
    with pytest.raises(OSError, match="no dsfs store"):
        filesystem(f"file://{tmp_path}/nothing-here").ls("p/n")


def test_the_entry_point_registers_the_protocol(version, file_store, monkeypatch):
    from importlib.metadata import entry_points

    assert [ep.value for ep in entry_points(group="fsspec.specs") if ep.name == "dsfs"] == [
        "dsfs.filesystem:DsfsFileSystem"]
    assert fsspec.get_filesystem_class("dsfs") is DsfsFileSystem
    with fsspec.open(f"dsfs://{PROJECT}/{NAME}/img/a.jpg", store=file_store) as f:
        assert f.read() == FILES["img/a.jpg"]
    monkeypatch.setenv("DSFS_STORE", file_store)  # no options: the store every dsfs command uses
    with fsspec.open(f"dsfs://{version.id}/labels.csv", "rt") as f:
        assert f.read() == FILES["labels.csv"].decode()
    fs, path = fsspec.core.url_to_fs(f"dsfs://{PROJECT}/{NAME}/big.bin")
    assert isinstance(fs, DsfsFileSystem) and fs.size(path) == len(BIG)


def test_open_reads_through_blocks(version, file_store):
    """A small read is served from the aligned 64 KiB block it falls in; a read of a block or more
    asks the View for what was asked and no more (a random reader's reads are not followed by a block
    it throws away); fsspec's other caches still work when asked for."""
    fs = filesystem(file_store)
    path = f"{PROJECT}/{NAME}/big.bin"
    with fs.open(path) as f:
        assert f.cache.name == "dsfs-blocks" and f.blocksize == 64 << 10
        f.seek(70_000)
        assert f.read(10) == BIG[70_000:70_010] and f.read(100) == BIG[70_010:70_110]  # the second from the block
        assert f.cache.total_requested_bytes == 64 << 10 and f.cache.hit_count == 1
        f.seek(3 << 20)
        assert f.read(1 << 20) == BIG[3 << 20:4 << 20]
        assert f.cache.total_requested_bytes == (64 << 10) + (1 << 20)
        f.seek(len(BIG) - 5)
        assert f.read(100) == BIG[-5:] and f.read(1) == b""
    for cache_type in ("readahead", "none", "bytes", "blockcache"):
        with fs.open(path, cache_type=cache_type, block_size=1 << 20) as f:
            f.seek(5 << 20)
            assert f.read(1000) == BIG[5 << 20:(5 << 20) + 1000], cache_type


def test_a_changed_default_store_gets_a_new_instance(version, file_store, tmp_path, monkeypatch):
    """fsspec keeps one instance per set of options; with none given, the environment that names the
    store is part of that key: a process whose DSFS_STORE changed does not read the old store."""
    monkeypatch.setenv("DSFS_STORE", file_store)
    fs = fsspec.filesystem("dsfs")
    assert fs.cat_file(f"{PROJECT}/{NAME}/labels.csv") == FILES["labels.csv"] and fsspec.filesystem("dsfs") is fs
    make_tree(tmp_path / "other-src", {"labels.csv": b"other\n"})
    other = f"file://{tmp_path}/other-store"
    final_version(other, tmp_path / "other-src", project=PROJECT, name=NAME)
    monkeypatch.setenv("DSFS_STORE", other)
    assert fsspec.filesystem("dsfs") is not fs
    assert fsspec.filesystem("dsfs").cat_file(f"{PROJECT}/{NAME}/labels.csv") == b"other\n"
    with fsspec.open(f"dsfs://{PROJECT}/{NAME}/labels.csv") as f:
        assert f.read() == b"other\n"


def test_dataset_fs_and_open(version, file_store):
    ds = Dataset.get(f"{PROJECT}/{NAME}", store=file_store)
    assert ds.fs is ds.fs and ds.fs.ls("", detail=False) == ["big.bin", "empty", "img", "labels.csv"]
    assert ds.fs.find("img/deep") == ["img/deep/er/c.bin"] and ds.fs.cat_file("/img/a.jpg") == FILES["img/a.jpg"]
    assert ds.fs.glob("img/*@2x.jpg") == ["img/b@2x.jpg"] and ds.fs.du("") == sum(map(len, FILES.values()))
    with ds.open("big.bin") as f:
        f.seek(3 << 20)
        assert f.read(1000) == BIG[3 << 20:(3 << 20) + 1000]
    with ds.open("labels.csv", "r") as f:
        assert f.read() == FILES["labels.csv"].decode()
    with pytest.raises(FileNotFoundError, match="nope"):
        ds.open("nope")
    assert pickle.loads(pickle.dumps(ds.fs)).cat_file("img/a.jpg") == FILES["img/a.jpg"]  # a spawned worker's


def test_parquet_through_dsfs(tmp_path, file_store):
    pa = required_library("pyarrow")
    pq = required_library("pyarrow.parquet")

    table = pa.table({"x": list(range(10_000)), "y": [f"row {i}" for i in range(10_000)]})
    (tmp_path / "src").mkdir()
    pq.write_table(table, str(tmp_path / "src" / "data.parquet"), row_group_size=1000)
    ds = final_version(file_store, tmp_path / "src", project="tables", name="t")
    fs = filesystem(file_store)
    assert pq.read_table("tables/t/data.parquet", filesystem=fs).equals(table)
    assert pq.read_table(ds.open("data.parquet"), columns=["y"]).equals(table.select(["y"]))
    pd = required_library("pandas")
    frame = pd.read_parquet("dsfs://tables/t/data.parquet", storage_options={"store": file_store})
    assert frame.equals(table.to_pandas())


# -- forked workers (a DataLoader's) ---------------------------------------------------------------

_inherited: dict = {}  # what forked children read through: set before the fork, never pickled


def _digests_in_child(paths: list[str]) -> list[tuple[str, str]]:
    fs, opened = _inherited["fs"], _inherited["file"]
    out = []
    for path in paths:
        with fs.open(path) as f:
            f.seek(max(0, f.size - 4096))
            tail = f.read()
        out.append((path, blake3.blake3(fs.cat_file(path) + tail).hexdigest()))
    opened.seek(12345)  # a file the parent opened: read again through the child's own view
    out.append(("opened", blake3.blake3(opened.read(100_000)).hexdigest()))
    return out


def _read_in_forked_children(fs: DsfsFileSystem, root: str, files: dict[str, bytes]) -> None:
    assert fs.cat_file(f"{root}/labels.csv") == files["labels.csv"]  # the parent has its store, cache and views open
    _inherited.update(fs=fs, file=fs.open(f"{root}/big.bin"))
    _inherited["file"].read(10)
    paths = [f"{root}/{path}" for path in files] * 2
    try:
        with multiprocessing.get_context("fork").Pool(3) as pool:
            results = [item for batch in pool.map(_digests_in_child, [paths[i::3] for i in range(3)]) for item in batch]
    finally:
        _inherited.pop("file").close()
        _inherited.clear()
    for path, digest in results:
        if path == "opened":
            assert digest == blake3.blake3(files["big.bin"][12345:12345 + 100_000]).hexdigest()
        else:
            data = files[path[len(root) + 1:]]
            assert digest == blake3.blake3(data + data[max(0, len(data) - 4096):]).hexdigest(), path
    assert len(results) == len(paths) + 3
    assert fs.cat_file(f"{root}/big.bin", 0, 100) == files["big.bin"][:100]  # the parent reads on as before


def test_forked_workers_read_through_the_parents_filesystem(version, file_store):
    _read_in_forked_children(filesystem(file_store), f"{PROJECT}/{NAME}", FILES)


def test_on_s3(moto_server, tmp_path):
    """The same reads on S3 (moto): a Store given as an option, a datastore, and forked workers (an
    async backend's event loop does not cross a fork: each child opens the store again)."""
    files = {"big.bin": BIG[:3 << 20], "labels.csv": FILES["labels.csv"], "img/a.jpg": FILES["img/a.jpg"]}
    make_tree(tmp_path / "src", files)
    store = Store.open(moto_server.new_url(), create=True, **moto_server.options)
    ds = final_version(store, tmp_path / "src", project=PROJECT, name=NAME)
    fs = filesystem(store)
    for form in (f"{PROJECT}/{NAME}", f"vision%2F2024/{NAME}@1.0.0", ds.id):
        assert {path: fs.cat_file(f"{form}/{path}") for path in files} == files
    datastores.register("lake", store.url, moto_server.options)
    lake = fsspec.filesystem("dsfs", datastore="lake", skip_instance_cache=True)
    assert lake.find(f"{PROJECT}/{NAME}") == sorted(f"{PROJECT}/{NAME}/{path}" for path in files)
    with lake.open(f"dsfs://{PROJECT}/{NAME}/big.bin") as f:
        for offset in random.Random(2).sample(range(len(files["big.bin"])), 40):
            f.seek(offset)
            assert f.read(70_000) == files["big.bin"][offset:offset + 70_000]
    assert lake.cat_file(f"{PROJECT}/{NAME}/img/a.jpg", -10) == files["img/a.jpg"][-10:]
    _read_in_forked_children(fs, f"{PROJECT}/{NAME}", files)
    _read_in_forked_children(lake, f"{PROJECT}/{NAME}", files)

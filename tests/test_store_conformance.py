"""One store conformance suite, written once and run on every backend: memory, file, S3 (moto
server), Azure Blob (Azurite) and GCS (fake-gcs-server), each over real HTTP for the clouds.

It states what dsfs needs from a backend (dsfs/store.py's contract): the store marker, write order
(a draft or half-written version is never served), ranged reads of packs, listing, exclusive create
for version numbers (of two concurrent claims exactly one wins), missing objects as typed errors,
a missing bucket named as such, and permission errors where the emulator can produce them.
Then one end-to-end run per cloud through the Python API and through the CLI with --datastore.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import uuid
from dataclasses import dataclass

import pytest

from dsfs import Dataset, Store
from dsfs.errors import (AccessDenied, CorruptData, DatasetNotFound, StoreReadOnly, StoreUnavailable)
from dsfs.model import VersionInfo
from conftest import make_tree
from servers import CLOUD_FIXTURES, Cloud, azurite_connection_string
from test_faults import read_only  # noqa: F401 (fixture)

BACKENDS = ["memory", "file", "s3", "azure", "gcs"]


@dataclass
class Backend:
    name: str
    cloud: Cloud | None
    tmp_path: object

    @property
    def options(self) -> dict:
        return dict(self.cloud.options) if self.cloud else {}

    def new_url(self) -> str:
        if self.cloud:
            return self.cloud.new_url()
        if self.name == "memory":
            return f"memory://conformance-{uuid.uuid4().hex}"
        return f"file://{self.tmp_path}/store-{uuid.uuid4().hex[:8]}"

    def store(self, url: str | None = None, create: bool = True, **overrides) -> Store:
        store = Store(url or self.new_url(), **{**self.options, **overrides})
        store.check(create=create)
        return store


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path) -> Backend:
    cloud = request.getfixturevalue(CLOUD_FIXTURES[request.param]) if request.param in CLOUD_FIXTURES else None
    return Backend(request.param, cloud, tmp_path)


def in_threads(n: int, fn) -> tuple[list, list]:
    """Run fn(i) for i < n in n threads released together; (results by i, exceptions)."""
    results, errors = [None] * n, []
    barrier = threading.Barrier(n)

    def run(i):
        barrier.wait()
        try:
            results[i] = fn(i)
        except Exception as exc:  # returned to the caller, which asserts on them
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


def _info(**kw) -> VersionInfo:
    # a final record names its change-set's size and digest (a record without them is corrupt)
    base = dict(id=uuid.uuid4().hex, project="p", name="n", version="1.0.0", parents=[], tags=[],
                description="", state="draft", created="2026-01-01T00:00:00+00:00",
                changes={"size": 100, "digest": "0" * 64})
    return VersionInfo(**{**base, **kw})


def test_missing_emulator_fails_under_ci(monkeypatch):
    from servers import unavailable

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        unavailable("no emulator")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="no emulator"):
        unavailable("no emulator")


# -- the store marker ---------------------------------------------------------------------------


def test_marker_create_and_check(backend):
    url = backend.new_url()
    with pytest.raises(StoreUnavailable, match="no dsfs store at"):
        backend.store(url, create=False)
    # nodes creating the same store at once: all succeed, one marker
    assert in_threads(4, lambda i: backend.store(url))[1] == []
    store = backend.store(url, create=False)
    assert json.loads(store._get("dsfs-store.json")) == {"format": 1}
    store._put("dsfs-store.json", b'{"format": 99}')
    with pytest.raises(StoreUnavailable, match="format 99"):
        backend.store(url, create=False)
    store._put("dsfs-store.json", b"{not json")
    with pytest.raises(CorruptData, match="store marker"):
        backend.store(url, create=False)


# -- write order ---------------------------------------------------------------------------------


def test_write_order_draft_is_never_served(backend, tmp_path):
    store = backend.store()
    make_tree(tmp_path / "d", {"a/x.bin": os.urandom(3000), "b.txt": b"hello"})
    ds = Dataset.create("p", "n", store=store)
    ds.add_files(str(tmp_path / "d"))
    ds.upload()  # packs are in the store; change-set and final record are not
    assert len(store.list_version_ids()) == 1
    with pytest.raises(DatasetNotFound, match="no final dataset p/n"):
        Dataset.get("p/n", store=store)
    with pytest.raises(CorruptData):  # a draft has no change-set to serve
        store.read_changes(ds.id)
    store.write_changes(ds.id, b"a change-set written just before a crash")
    with pytest.raises(DatasetNotFound, match="no final dataset p/n"):  # still a draft record
        Dataset.get("p/n", store=store)
    ds.finalize()
    got = Dataset.get("p/n", store=store)
    assert got.id == ds.id and got.read_file("b.txt") == b"hello"
    assert got.read_file("a/x.bin") == (tmp_path / "d" / "a" / "x.bin").read_bytes()


def test_version_records_and_changesets(backend):
    store = backend.store()
    info = _info()
    store.write_version(info, exclusive=True)
    with pytest.raises(FileExistsError):
        store.write_version(info, exclusive=True)
    info.state = "final"
    store.write_version(info)  # overwrite: draft -> final is one atomic PUT
    assert store.read_version(info.id).state == "final"
    store.write_changes(info.id, b"\x01" * 100)
    assert store.read_changes(info.id) == b"\x01" * 100
    other = _info()
    store._put(f"datasets/{other.id}/version.json", json.dumps(_info().to_json()).encode())
    with pytest.raises(CorruptData, match="names another id"):
        store.read_version(other.id)
    store.delete_version(info.id)
    with pytest.raises(DatasetNotFound):
        store.read_version(info.id)


# -- packs and ranged reads ------------------------------------------------------------------------


def test_ranged_reads_of_packs(backend):
    store = backend.store()
    data = os.urandom((1 << 20) + 123)
    pack = os.urandom(16)
    assert not store.has_pack(pack)
    store.write_pack(pack, data)
    store.write_pack(pack, data)  # content-addressed: writing twice is harmless
    assert store.has_pack(pack)
    size = len(data)
    for offset, length in [(0, 1), (0, 4096), (5000, 70000), (size - 10, 10), (size - 1, 1), (0, size),
                           (size // 2, size - size // 2)]:
        assert store.read_pack_range(pack, offset, length) == data[offset:offset + length], (offset, length)
    assert store.read_pack(pack) == data
    store.delete_pack(pack)
    assert not store.has_pack(pack)


# -- listing --------------------------------------------------------------------------------------


def test_listing(backend):
    store = backend.store()
    assert store.list_version_ids() == []
    assert store.claimed_version_numbers("p", "n") == []
    ids = sorted(uuid.uuid4().hex for _ in range(5))
    for dataset_id in ids:
        store.write_version(_info(id=dataset_id))
    store._put("datasets/not-an-id/version.json", b"{}")  # foreign names are ignored
    assert store.list_version_ids() == ids
    assert sorted(v.id for v in store.list_versions()) == ids
    for version in ["1.0.0", "1.0.1", "2.0.0-rc.1+build.5"]:
        assert store.claim_version_number("team/vision", "cats dogs", version, ids[0])
    assert sorted(store.claimed_version_numbers("team/vision", "cats dogs")) == ["1.0.0", "1.0.1", "2.0.0-rc.1+build.5"]
    assert store.claimed_version_numbers("team", "vision") == []  # the '/' in the project is quoted
    files = sorted(store.list_files(""))
    assert "dsfs-store.json" in files and f"datasets/{ids[0]}/version.json" in files


@pytest.fixture
def record_reads(monkeypatch) -> list[list[str]]:
    """The ids of each Store._read_records call (the records a listing read from the store), sorted."""
    reads: list[list[str]] = []
    real = Store._read_records
    monkeypatch.setattr(Store, "_read_records", lambda self, ids: reads.append(sorted(ids)) or real(self, ids))
    return reads


def test_listing_through_the_node_record_cache(backend, record_reads, tmp_path):
    """Store.list_versions reads only the records the node's cache (dsfs.store.records) does not hold
    at their listed validator: a second listing reads none; a record rewritten or deleted by another
    node is seen at once; a damaged cache row is ignored and the record read again."""
    store = backend.store()
    infos = [_info(id=uuid.uuid4().hex) for _ in range(30)]
    for info in infos:
        store.write_version(info)
    assert sorted(v.id for v in store.list_versions()) == sorted(i.id for i in infos)
    cached = backend.name != "memory"  # memory:// lists no validator: every record is read each time
    assert [len(ids) for ids in record_reads] == [30]
    assert len(store.list_versions()) == 30
    assert len(record_reads[-1]) == (0 if cached else 30)
    # another node relabels one version and deletes another
    other = backend.store(store.url, create=False)
    changed = infos[3]
    changed.tags = ["relabelled"]
    other.write_version(changed)
    other.delete_version(infos[7].id)
    found = {v.id: v for v in store.list_versions()}
    assert infos[7].id not in found and found[changed.id].tags == ["relabelled"]
    if cached:
        assert len(record_reads[-1]) == 1  # only the rewritten record was read
        # a cached row whose bytes no longer match their digest is ignored: the record is read again
        import sqlite3
        from dsfs.store.records import cache_path
        db = sqlite3.connect(cache_path(store.url))
        db.execute("UPDATE records SET raw = CAST(? AS BLOB) WHERE id = ?", (b'{"torn', infos[5].id))
        db.commit()
        db.close()
        assert {v.id: v.tags for v in store.list_versions()} == {i: v.tags for i, v in found.items()}
        assert len(record_reads[-1]) == 1
        # a cache file that is not a database at all is rebuilt
        with open(cache_path(store.url), "wb") as f:
            f.write(b"garbage" * 1000)
        assert len(store.list_versions()) == 29 and len(record_reads[-1]) == 29


def test_an_unchanged_store_is_not_listed_again(backend, monkeypatch):
    """Every record write or removal sets a new change epoch; while it stays the same a node reuses
    its listing (for at most LISTING_MAX_AGE); a change without a new epoch (a writer killed between
    the two, or an older dsfs) is seen once that age passes; delete's `exact` listing sees it at once."""
    from dsfs.store import records

    store = backend.store()
    infos = [_info(id=uuid.uuid4().hex) for _ in range(3)]
    for info in infos:
        store.write_version(info)
    listings = []
    real = Store._record_validators
    monkeypatch.setattr(Store, "_record_validators", lambda self: listings.append(1) or real(self))
    assert len(store.list_versions()) == 3 and len(listings) == 1
    assert len(store.list_versions()) == 3 and len(listings) == 1  # the epoch is the same: no LIST
    infos[0].tags = ["new"]
    store.write_version(infos[0])  # a new epoch
    assert {v.id: v.tags for v in store.list_versions()}[infos[0].id] == ["new"] and len(listings) == 2
    silent = _info(id=uuid.uuid4().hex)  # written the way a killed writer or an older dsfs leaves it
    store._put(f"datasets/{silent.id}/version.json", json.dumps(silent.to_json()).encode())
    assert silent.id not in {v.id for v in store.list_versions()}  # within the age: the kept listing
    assert silent.id in {v.id for v in store.list_versions(exact=True)}
    monkeypatch.setattr(records, "LISTING_MAX_AGE", 0)
    assert silent.id in {v.id for v in store.list_versions()}


def test_a_cold_node_reads_the_catalog_snapshot(backend, record_reads, monkeypatch, tmp_path):
    """A node with an empty cache takes records from the store's snapshot (written by the first node
    that had to read many), reading only those changed since; a bad snapshot is only ignored."""
    if backend.name == "memory":
        pytest.skip("memory:// lists no validators: no snapshot is used")
    from dsfs.store import records

    store = backend.store()
    infos = [_info(id=uuid.uuid4().hex) for _ in range(records.SNAPSHOT_AFTER + 20)]
    for info in infos:
        store.write_version(info)
    assert len(store.list_versions()) == len(infos)  # reads them all, so writes the snapshot
    assert records.SNAPSHOT_KEY in store.list_files("catalog")
    record_reads.clear()  # counted from here: what a cold node reads
    reads = record_reads
    changed = infos[0]
    changed.tags = ["after the snapshot"]
    store.write_version(changed)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cold-node"))  # another node: nothing cached
    found = {v.id: v for v in store.list_versions()}
    assert len(found) == len(infos) and found[changed.id].tags == ["after the snapshot"]
    assert reads == [[changed.id]]  # only the record the snapshot does not hold at its validator
    for garbage in (b"not zstd", records.encode_snapshot({})[:-3], __import__("zstandard").compress(b"\x93")):
        store._put(records.SNAPSHOT_KEY, garbage)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / f"node-{uuid.uuid4().hex}"))
        assert len(store.list_versions()) == len(infos) and len(reads[-1]) == len(infos)


# -- exclusive create ------------------------------------------------------------------------------


def test_exclusive_create_one_claim_wins(backend):
    url = backend.new_url()
    backend.store(url)
    stores = [backend.store(url, create=False) for _ in range(2)]
    for attempt in range(3):  # a few rounds: a race that is lost only sometimes still shows
        version = f"1.0.{attempt}"
        ids = [uuid.uuid4().hex for _ in range(8)]
        results, errors = in_threads(8, lambda i: stores[i % 2].claim_version_number("p", "n", version, ids[i]))
        assert not errors and results.count(True) == 1, results
        winner = ids[results.index(True)]
        assert stores[0].version_number_holder("p", "n", version) == winner
    assert stores[0].version_number_holder("p", "n", "9.9.9") is None


def test_concurrent_authors_get_distinct_version_numbers(backend):
    store = backend.store()
    made, errors = in_threads(6, lambda i: Dataset.create("p", "race", store=store).version)
    assert not errors and len(set(made)) == 6


# -- missing objects -------------------------------------------------------------------------------


def test_missing_objects_are_typed_errors(backend):
    store = backend.store()
    missing = uuid.uuid4().hex
    with pytest.raises(DatasetNotFound):
        store.read_version(missing)
    with pytest.raises(CorruptData, match="change-set of dataset .* is missing"):
        store.read_changes(missing)
    with pytest.raises(CorruptData, match="pack .* is missing"):
        store.read_pack_range(b"\x00" * 16, 0, 10)
    with pytest.raises(CorruptData, match="pack .* is missing"):
        store.read_pack(b"\x00" * 16)
    assert not store.has_pack(b"\x00" * 16)
    store.delete_pack(b"\x00" * 16)  # deleting what is not there is not an error
    store.delete_version(missing)
    store.release_version_number("p", "n", "1.0.0")


def test_missing_bucket_is_named(backend):
    if not backend.cloud:
        pytest.skip("memory:// and file:// have no buckets (a missing folder is an empty store)")
    url = f"{backend.cloud.protocol}://no-such-bucket-{uuid.uuid4().hex[:8]}/store"
    noun = "container" if backend.name == "azure" else "bucket"
    for create in (False, True):
        with pytest.raises(StoreUnavailable, match=f"{noun} 'no-such-bucket-.*' does not exist"):
            backend.store(url, create=create)


# -- permission errors -----------------------------------------------------------------------------


def test_permission_errors(backend, request):
    """Writes refused by the backend are StoreReadOnly; reads still work. Wrong credentials are
    AccessDenied. Each backend produces them its own way."""
    url = backend.new_url()
    store = backend.store(url)
    info = _info(state="final")
    store.write_version(info)
    if backend.name == "memory":
        pytest.skip("memory:// has no permissions")
    if backend.name == "gcs":
        # fake-gcs-server does not authenticate or authorize anything (no IAM, no signed or
        # scoped tokens): the real service's 401/403 answers cannot be produced here.
        pytest.skip("fake-gcs-server has no authentication or IAM: GCS 401/403 cannot be emulated")
    if backend.name == "file":
        make_read_only = request.getfixturevalue("read_only")
        make_read_only(url[len("file://"):])
        limited = Store(url)
    elif backend.name == "s3":
        limited = Store(url, **_moto_read_only_user(backend.cloud))
    else:
        limited = Store(url, connection_string=_azurite_read_only_sas(backend.cloud, url))
    with _moto_auth(backend.name == "s3"):
        assert limited.read_version(info.id).id == info.id
        with pytest.raises(StoreReadOnly, match="refused to write"):
            limited.write_version(_info())
        with pytest.raises(StoreReadOnly, match="refused to write"):
            limited.claim_version_number("p", "n", "3.0.0", info.id)
        if backend.name != "file":
            with pytest.raises(StoreReadOnly, match="refused to delete"):
                limited.delete_version(info.id)
    if backend.name == "file":
        return
    if backend.name == "s3":
        wrong = Store(url, endpoint_url=backend.cloud.endpoint, key="AKIAWRONGWRONGWRONG", secret="wrong-secret")
    else:
        wrong = Store(url, connection_string=azurite_connection_string(backend.cloud.endpoint, key="d3Jvbmc=" * 11))
    with _moto_auth(backend.name == "s3"):
        with pytest.raises(AccessDenied, match="refused to read: access denied") as caught:
            wrong.read_version(info.id)
        assert "wrong-secret" not in str(caught.value) and "d3Jvbmc" not in str(caught.value)


@contextlib.contextmanager
def _moto_auth(on: bool = True):
    """moto checks credentials and IAM policies only when told to, for the whole server (it runs in
    this process): on for the body of the `with` only, and off again whatever happens in it."""
    import moto.settings

    if on:
        moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    try:
        yield
    finally:
        moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = float("inf")


@pytest.mark.parametrize("cloud_name", ["s3", "azure"])
def test_a_refused_read_fails_at_once_without_retries(cloud_name, request, monkeypatch, caplog):
    """A 403 is an answer, not an outage: a pack read with wrong credentials is tried once (the
    attempts are counted, not timed), and the debug log has its cause without the secret."""
    import logging

    from dsfs.store import fetch

    cloud: Cloud = request.getfixturevalue(CLOUD_FIXTURES[cloud_name])
    url = cloud.new_url()
    Store(url, **cloud.options).check(create=True)
    if cloud_name == "s3":
        secret = "wrong-secret"
        wrong = Store(url, endpoint_url=cloud.endpoint, key="AKIAWRONGWRONGWRONG", secret=secret)
    else:
        secret = "d3Jvbmc=" * 11
        wrong = Store(url, connection_string=azurite_connection_string(cloud.endpoint, key=secret))
    attempts = []
    real = wrong.read_pack_range

    def counted(*args):
        attempts.append(args)
        return real(*args)

    monkeypatch.setattr(wrong, "read_pack_range", counted)
    monkeypatch.setenv("DSFS_RETRY_DELAYS", "0.01,0.01,0.01")
    with _moto_auth(cloud_name == "s3"), caplog.at_level(logging.DEBUG, logger="dsfs"), \
            pytest.raises(AccessDenied) as caught:
        fetch.read_with_retries(wrong, bytes(16), 0, 100)
    assert len(attempts) == 1
    assert "retrying" not in caplog.text
    assert caught.value.cause and caught.value.cause in caplog.text
    assert secret not in caplog.text and "d3Jvbmc" not in caplog.text


def _moto_read_only_user(cloud: Cloud) -> dict:
    import boto3

    iam = boto3.client("iam", endpoint_url=cloud.endpoint, aws_access_key_id="testing",
                       aws_secret_access_key="testing", region_name="us-east-1")
    user = f"reader-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    policy = iam.create_policy(PolicyName=user, PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": "*"}]}))
    iam.attach_user_policy(UserName=user, PolicyArn=policy["Policy"]["Arn"])
    key = iam.create_access_key(UserName=user)["AccessKey"]
    return {"endpoint_url": cloud.endpoint, "key": key["AccessKeyId"], "secret": key["SecretAccessKey"]}


def _azurite_read_only_sas(cloud: Cloud, url: str) -> str:
    import datetime

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    from servers import AZURITE_ACCOUNT, AZURITE_KEY

    container = url.split("://", 1)[1].split("/", 1)[0]
    sas = generate_container_sas(AZURITE_ACCOUNT, container, account_key=AZURITE_KEY,
                                 permission=ContainerSasPermissions(read=True, list=True),
                                 expiry=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1))
    return f"BlobEndpoint={cloud.endpoint}/{AZURITE_ACCOUNT};SharedAccessSignature={sas}"


# -- end to end per cloud ------------------------------------------------------------------------------


CLOUDS = ["s3", "azure", "gcs"]
SECRET_ENV = {"s3": ("secret", "DSFS_TEST_S3_SECRET"), "azure": ("connection_string", "DSFS_TEST_AZ_CONN")}


@pytest.mark.parametrize("cloud_name", CLOUDS)
def test_end_to_end_api_and_cli(cloud_name, request, tmp_path, dsfs, monkeypatch):
    cloud: Cloud = request.getfixturevalue(CLOUD_FIXTURES[cloud_name])
    files = {"images/a.jpg": os.urandom(200_000), "images/b.jpg": os.urandom(5), "labels.csv": b"a,1\nb,2\n",
             "big/blob.bin": os.urandom(3 << 20)}
    make_tree(tmp_path / "d", files)

    # Python API, with the store's options given directly
    store = Store(cloud.new_url(), **cloud.options)
    ds = Dataset.create("vision", "cats", store=store)
    ds.add_files(str(tmp_path / "d"))
    ds.upload(max_workers=2)
    ds.finalize()
    got = Dataset.get("vision/cats", store=store)
    for path, data in files.items():
        assert got.read_file(path) == data

    # CLI with --datastore; the secret only in the environment (env:VAR)
    options = dict(cloud.options)
    secret_value = None
    if cloud_name in SECRET_ENV:
        key, var = SECRET_ENV[cloud_name]
        secret_value = options[key]
        monkeypatch.setenv(var, secret_value)
        options[key] = f"env:{var}"
    url = cloud.new_url("datasets")
    args = [a for k, v in options.items() for a in ("--option", f"{k}={v}")]
    assert dsfs("datastore", "register", "cloud", url, *args).code == 0
    r = dsfs("--datastore", "cloud", "create", "--project", "vision", "--name", "dogs")
    assert r.code == 0, r.err
    ds_id = r.out.strip()
    assert dsfs("--datastore", "cloud", "add", "--files", tmp_path / "d").code == 0
    r = dsfs("--datastore", "cloud", "close")
    assert r.code == 0 and "4 file(s)" in r.out, r.err
    monkeypatch.setenv("DSFS_DATASTORE", "cloud")  # the environment variable picks it too
    r = dsfs("cat", "labels.csv", "--id", "vision/dogs")
    assert r.code == 0 and r.out == "a,1\nb,2\n", r.err
    r = dsfs("list", "--json")  # the current dataset reopens through its datastore
    assert sorted(f["path"] for f in json.loads(r.out)) == sorted(files)
    assert Dataset.get(ds_id, store="datastore:cloud").read_file("big/blob.bin") == files["big/blob.bin"]

    if secret_value:  # nothing written to the store or to local state carries the secret
        fs = cloud.fs()
        for path in fs.find(url.split("://", 1)[1]):
            assert secret_value.encode() not in fs.cat_file(path), path
        state = tmp_path / "home" / "xdg_state_home"
        for path in state.rglob("*"):
            if path.is_file():
                assert secret_value.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("cloud_name", CLOUDS)
def test_end_to_end_download_and_mount(cloud_name, request, tmp_path, dsfs, monkeypatch):
    """Authored into the cloud, then consumed on a node: download, get, and a real mount."""
    from fusehelp import is_mounted, require_fuse

    require_fuse()
    cloud: Cloud = request.getfixturevalue(CLOUD_FIXTURES[cloud_name])
    files = {"train/a.bin": os.urandom(2 << 20), "train/b.txt": b"bee", "val/c.txt": b"sea"}
    make_tree(tmp_path / "d", files)
    args = [a for k, v in cloud.options.items() for a in ("--option", f"{k}={v}")]
    assert dsfs("datastore", "register", "cloud", cloud.new_url("ds"), *args).code == 0
    monkeypatch.setenv("DSFS_DATASTORE", "cloud")
    monkeypatch.setenv("DSFS_RETRY_DELAYS", "0.05")
    assert dsfs("create", "--project", "p", "--name", "n").code == 0
    assert dsfs("add", "--files", tmp_path / "d").code == 0
    assert dsfs("close").code == 0, "close"
    r = dsfs("download", "p/n", tmp_path / "out", "--include", "train")
    assert r.code == 0, r.err
    assert (tmp_path / "out" / "train" / "a.bin").read_bytes() == files["train/a.bin"]
    assert not (tmp_path / "out" / "val").exists()
    r = dsfs("get", "p/n")
    assert r.code == 0 and open(os.path.join(r.out.strip(), "val", "c.txt"), "rb").read() == b"sea"
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    r = dsfs("mount", "p/n", mountpoint, "--cache-dir", tmp_path / "mount-cache")
    assert r.code == 0, r.err
    try:
        for path, data in files.items():
            assert (mountpoint / path).read_bytes() == data
    finally:
        assert dsfs("unmount", mountpoint).code == 0
    assert not is_mounted(str(mountpoint))

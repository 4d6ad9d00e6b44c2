"""A store's external links are followed only where the consumer allows links to be read (dsfs.node.links):
a crafted link cannot make a download read the consumer's own files or loopback services."""

import http.server
import os
import threading

import pytest

from dsfs import Dataset
from dsfs.store import datastores
from dsfs.node import links
from dsfs.errors import AccessDenied, CorruptData, UsageError
from dsfs.model import Entry
from conftest import make_tree, run_cli


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setenv("DSFS_RETRY_DELAYS", "0.01")
    monkeypatch.delenv("DSFS_ALLOW_LINKS", raising=False)


def _crafted(store, entries):
    """A final version whose change-set holds `entries` as a store's writer could craft them (not
    through `add --links`, so this machine never trusted them)."""
    ds = Dataset.create("p", "n", store=store)
    draft = ds._require_draft()
    draft.stage_entries(entries)
    draft.save()
    ds.finalize()
    return ds.id


@pytest.fixture
def secret(tmp_path):
    make_tree(tmp_path / "private", {"secret.txt": b"the consumer's secret"})
    path = tmp_path / "private" / "secret.txt"
    (_, url, size, tag, _), = links.list_objects(f"file://{path}")  # the right size and tag
    return Entry(path="stolen.txt", size=size, url=url, etag=tag)


def test_a_crafted_file_link_is_not_read(tmp_path, file_store, secret):
    ds_id = _crafted(file_store, [secret])
    proc = run_cli("download", ds_id, tmp_path / "out", env={"DSFS_STORE": file_store})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"external link {secret.url} is not under this store or a registered datastore" in proc.stderr
    assert "DSFS_ALLOW_LINKS" in proc.stderr
    assert not (tmp_path / "out" / "stolen.txt").exists()
    ds = Dataset.get(ds_id, store=file_store)
    with pytest.raises(links.LinkRefused):
        ds.read_file("stolen.txt")
    with pytest.raises(links.LinkRefused):
        ds.get_local_copy()


def test_opting_in_allows_a_link(tmp_path, file_store, secret, monkeypatch):
    ds_id = _crafted(file_store, [secret])
    monkeypatch.setenv(links.ALLOW_ENV, f"s3://elsewhere, file://{tmp_path}/private/")
    assert Dataset.get(ds_id, store=file_store).read_file("stolen.txt") == b"the consumer's secret"
    monkeypatch.setenv(links.ALLOW_ENV, f"file://{tmp_path}/priv")  # a prefix of a name is not a folder
    with pytest.raises(links.LinkRefused):
        Dataset.get(ds_id, store=file_store).read_file("stolen.txt")
    monkeypatch.delenv(links.ALLOW_ENV)
    datastores.register("mine", f"file://{tmp_path}/private")  # a registered datastore is trusted
    assert Dataset.get(ds_id, store=file_store).read_file("stolen.txt") == b"the consumer's secret"


def test_dot_dot_leaves_every_allowed_root(tmp_path, file_store, secret, monkeypatch):
    make_tree(tmp_path / "public", {"x": b"x"})
    sneaky = Entry(path="s.txt", size=secret.size, etag=secret.etag,
                   url=f"file://{tmp_path}/public/../private/secret.txt")
    ds_id = _crafted(file_store, [sneaky])
    monkeypatch.setenv(links.ALLOW_ENV, f"file://{tmp_path}/public")
    with pytest.raises(links.LinkRefused):
        Dataset.get(ds_id, store=file_store).read_file("s.txt")
    assert not links.allowed(f"file://{tmp_path}/public/%2e%2e/private/secret.txt")


def test_links_under_the_store_itself_are_followed(tmp_path):
    store_url = f"file://{tmp_path}/store"
    make_tree(tmp_path / "store" / "plain", {"p.bin": b"plain file beside the layout"})
    (_, url, size, tag, _), = links.list_objects(f"{store_url}/plain/p.bin")
    ds_id = _crafted(store_url, [Entry(path="p.bin", size=size, url=url, etag=tag)])
    assert Dataset.get(ds_id, store=store_url).read_file("p.bin") == b"plain file beside the layout"


class _Counting(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self):
        type(self).hits += 1
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"local")

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def loopback():
    """An HTTP server on loopback that counts requests and gives no ETag or Last-Modified."""
    _Counting.hits = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.timeout(60)
def test_a_loopback_link_with_no_tag_is_never_fetched(tmp_path, file_store, loopback, monkeypatch):
    ds_id = _crafted(file_store, [Entry(path="admin", size=5, url=f"{loopback}/admin", etag="")])
    proc = run_cli("download", ds_id, tmp_path / "out", env={"DSFS_STORE": file_store})
    assert proc.returncode == 2 and "is not under this store" in proc.stderr, proc.stderr
    monkeypatch.setenv(links.ALLOW_ENV, loopback)  # even where links are allowed, no tag is no read
    with pytest.raises(CorruptData, match="recorded without a tag"):
        Dataset.get(ds_id, store=file_store).read_file("admin")
    assert _Counting.hits == 0


@pytest.mark.timeout(60)
def test_an_object_with_no_tag_is_not_added(file_store, loopback):
    ds = Dataset.create("p", "n", store=file_store)
    with pytest.raises(UsageError, match="no ETag, version or modification time"):
        ds.add_external_files(f"{loopback}/admin")
    assert ds._require_draft().uploaded_count == 0


def test_the_author_reads_back_their_own_links_only(tmp_path, file_store, monkeypatch):
    make_tree(tmp_path / "bucket", {"imgs/a.jpg": b"a", "other/b.jpg": b"b"})
    ds = Dataset.create("p", "n", store=file_store)
    ds.add_external_files(f"file://{tmp_path}/bucket/imgs/")
    ds.finalize()
    assert Dataset.get(ds.id, store=file_store).read_file("a.jpg") == b"a"
    assert links.allowed(f"file://{tmp_path}/bucket/imgs/a.jpg")
    assert not links.allowed(f"file://{tmp_path}/bucket/other/b.jpg")  # only what was added
    assert not links.allowed(f"file://{tmp_path}/bucket/imgsx/c.jpg")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "another-user"))  # another consumer's machine
    with pytest.raises(links.LinkRefused):
        Dataset.get(ds.id, store=file_store).read_file("a.jpg")


def _plain_file_and_link(tmp_path, store, link) -> str:
    """A final version of ok.txt (uploaded) and `link` (an external file): its id."""
    make_tree(tmp_path / "plain", {"ok.txt": b"fine"})
    ds = Dataset.create("p", "mixed", store=store)
    ds.add_files(str(tmp_path / "plain"))
    draft = ds._require_draft()
    draft.stage_entries([link])
    draft.save()
    ds.finalize()
    return ds.id


def test_a_refused_link_fails_that_file_only(tmp_path, file_store, secret):
    ds_id = _plain_file_and_link(tmp_path, file_store, secret)
    proc = run_cli("download", ds_id, tmp_path / "out", env={"DSFS_STORE": file_store})
    assert proc.returncode == 2 and "stolen.txt" in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "out" / "ok.txt").read_bytes() == b"fine"  # the other files are written
    assert not (tmp_path / "out" / "stolen.txt").exists()


def test_a_denied_link_fails_that_file_only(tmp_path, file_store, secret, monkeypatch):
    """A link the consumer may read but whose source refuses this reader (403, EACCES: AccessDenied,
    which is not 'unavailable') fails that file only, as a refused or stale link does."""
    monkeypatch.setenv(links.ALLOW_ENV, f"file://{tmp_path}/private/")
    ds_id = _plain_file_and_link(tmp_path, file_store, secret)

    def denied(fs, path, start, end, url):
        raise AccessDenied(f"access denied to {url}")

    monkeypatch.setattr(links, "read_range", denied)  # root reads any file: the refusal is simulated
    with pytest.raises(AccessDenied, match="1 file.*stolen.txt"):
        Dataset.get(ds_id, store=file_store).download(str(tmp_path / "out"))
    assert (tmp_path / "out" / "ok.txt").read_bytes() == b"fine"  # the other files are written
    assert not (tmp_path / "out" / "stolen.txt").exists()

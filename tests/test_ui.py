"""The web UI (dsfs.ui, `dsfs ui`) through Starlette's test client: every page and action, bad input
included; read-only mode, the token on a non-loopback host, CSRF, escaping, path traversal, 404
pages, secrets, and verified bytes (a damaged cached chunk is fetched again, a damaged stored chunk
is an error, never bytes). The browser flow is tests/test_ui_browser.py."""

from __future__ import annotations

import io
import re
import tarfile
import urllib.parse
import zipfile

import pytest
from conftest import make_tree
from servers import free_port, required_library

from dsfs import Dataset
from dsfs.errors import UsageError
from dsfs.node.cache import Cache

required_library("starlette")
required_library("httpx")
from starlette.testclient import TestClient  # noqa: E402

from dsfs.ui import app as ui_app  # noqa: E402
from dsfs.ui import content  # noqa: E402

SCRIPT_NAME = "<script>alert(1)</script>.txt"  # a folder `<script>alert(1)<` holding `script>.txt`
EVIL_HTML = b"<html><script>document.title='pwned'</script></html>"
TEXT = b"hello\nworld\n"


def png() -> bytes:
    image = required_library("PIL.Image")
    out = io.BytesIO()
    image.new("RGB", (8, 6), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def parquet() -> bytes:
    pa = required_library("pyarrow")
    pq = required_library("pyarrow.parquet")
    out = io.BytesIO()
    pq.write_table(pa.table({"city": ["Oslo", "Lima", "Pune"], "people": [709_000, 10_000_000, 3_100_000]}), out)
    return out.getvalue()


FILES = {"a/b/c.txt": TEXT, "a/b/img.png": None, "t.csv": b"x,y\n1,2\n3,4\n", "p.parquet": None,
         "d.json": b'{"k": [1, 2]}', "bin.dat": b"\0\1\2" * 100, "evil.html": EVIL_HTML, SCRIPT_NAME: b"boo",
         **{f"many/f{i:03d}.txt": b"%d" % i for i in range(130)}}


@pytest.fixture
def versions(tmp_path, file_store):
    """(parent, child, other): proj/data 1.0.0 and a child that changes c.txt, adds new.txt and
    removes d.json; proj2/other 1.0.0 tagged gold."""
    files = {**FILES, "a/b/img.png": png(), "p.parquet": parquet()}
    make_tree(tmp_path / "v1", files)
    parent = Dataset.create("proj", "data", tags=["raw"], description="first cut", store=file_store)
    parent.add_files(str(tmp_path / "v1"))
    parent.finalize()
    make_tree(tmp_path / "v2", {"a/b/c.txt": b"hello\nthere\nworld\n", "new.txt": b"new"})
    child = Dataset.create("proj", "data", parents=[parent.id], store=file_store)
    child.add_files(str(tmp_path / "v2"))
    child.remove_files("d.json")
    child.finalize()
    make_tree(tmp_path / "v3", {"x.txt": b"x"})
    other = Dataset.create("proj2", "other", tags=["gold"], store=file_store)
    other.add_files(str(tmp_path / "v3"))
    other.finalize()
    return [Dataset.get(d.id, store=file_store) for d in (parent, child, other)]


def client(store, tmp_path, **options) -> TestClient:
    app = ui_app.create_app(store, cache_dir=str(tmp_path / "ui-cache"), **options)
    return TestClient(app, base_url="http://127.0.0.1:8765")


@pytest.fixture
def ui(file_store, tmp_path, versions):
    with client(file_store, tmp_path) as c:
        yield c


def csrf(c: TestClient) -> str:
    c.get("/")
    return c.cookies.get(ui_app.CSRF_COOKIE)


def raw_get(app, raw: str) -> tuple[int, bytes]:
    """GET `raw` as a client that sends its path as is (curl --path-as-is): httpx would remove its
    dot segments first. The server decodes %XX into the path, as uvicorn does."""
    import anyio

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": urllib.parse.unquote(raw), "raw_path": raw.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1:8765")], "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8765)}
    sent: list[dict] = []
    requested = False

    async def receive():  # the request, then nothing until the client goes (never, here)
        nonlocal requested
        if requested:
            await anyio.sleep_forever()
        requested = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    anyio.run(app, scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


# -- pages -------------------------------------------------------------------------------------------


def test_datasets_page_lists_datasets_and_filters(ui, versions):
    parent, child, other = versions
    page = ui.get("/")
    assert page.status_code == 200
    assert "2 dataset(s), 3 version(s)" in page.text
    assert f'href="/v/{child.id}"' in page.text  # proj/data's latest is the child
    assert f'href="/v/{parent.id}"' not in page.text
    assert "proj2" in ui.get("/?tags=gold").text and ">data<" not in ui.get("/?tags=gold").text
    assert "1 dataset(s)" in ui.get("/?project=proj2").text
    assert "1 dataset(s)" in ui.get("/?q=first+cut").text  # the search box: descriptions too
    assert "1 dataset(s)" in ui.get(f"/?q={other.id[:10]}").text  # and ids
    assert "0 dataset(s)" in ui.get("/?state=published").text
    assert ui.get("/?state=bogus").status_code == 400
    assert ui.get("/?start=x").status_code == 400
    Dataset.create("proj3", "late", store=parent.store)  # written by another process: the page's kept answer goes
    assert "3 dataset(s), 4 version(s)" in ui.get("/").text


def test_dataset_page_versions_lineage_and_chart(ui, versions):
    parent, child, _ = versions
    page = ui.get("/dataset?project=proj&name=data")
    assert page.status_code == 200
    assert f'href="/v/{parent.id}">1.0.0' in page.text and f'href="/v/{child.id}">1.0.1' in page.text
    lineage = page.text.split('id="lineage"')[1].split("</svg>")[0]
    assert lineage.count("<circle") == 2 and lineage.count('class="edge parent"') == 1
    assert page.text.count('class="bar"') == 4  # files and bytes, one bar per version each
    assert ui.get("/dataset?project=proj&name=nothing").status_code == 404
    assert ui.get("/dataset").status_code == 400


def test_version_page_info_panel(ui, versions, file_store):
    parent, child, _ = versions
    Dataset.get(child.id, store=file_store).set_metadata({"classes": ["cat", "dog"]})
    page = ui.get(f"/v/{child.id}")
    assert page.status_code == 200
    assert f'<code id="version-id">{child.id}</code>' in page.text and 'data-copy="version-id"' in page.text
    assert f'<a class="parent" href="/v/{parent.id}">proj/data@1.0.0</a>' in page.text
    assert "+1 added, ~1 modified, −1 removed" in text_of(page.text)
    assert "&#34;classes&#34;" in page.text or "&quot;classes&quot;" in page.text
    assert f"/compare?source={parent.id}&amp;target={child.id}" in page.text


def test_a_draft_shows_its_record_and_no_content(ui, file_store):
    draft = Dataset.create("proj", "draft", store=file_store)
    page = ui.get(f"/v/{draft.id}")
    assert page.status_code == 200 and "is a draft" in page.text and 'id="listing"' not in page.text
    assert ui.get(f"/v/{draft.id}/file/x").status_code == 409


def test_folder_browser_breadcrumbs_pages_and_glob(ui, versions, monkeypatch):
    parent = versions[0]
    root = ui.get(f"/v/{parent.id}")
    assert f'href="/v/{parent.id}/tree/a">a/</a>' in root.text
    deep = ui.get(f"/v/{parent.id}/tree/a/b")
    assert f'<a href="/v/{parent.id}/tree/a">a</a>' in deep.text  # breadcrumbs
    assert f'href="/v/{parent.id}/file/a/b/c.txt">c.txt</a>' in deep.text
    assert "12 B" in deep.text  # sizes
    digest = next(e for e in parent.file_entries() if e.path == "a/b/c.txt").digest.hex()
    assert digest[:16] in deep.text

    first = ui.get(f"/v/{parent.id}/tree/many")
    assert "1–100 of 130" in text_of(first.text) and first.text.count('class="file"') == 100
    assert "f000.txt" in first.text and "f100.txt" not in first.text
    second = ui.get(f"/v/{parent.id}/tree/many?start=100")
    assert "101–130 of 130" in text_of(second.text) and second.text.count('class="file"') == 30
    assert 'class="next"' not in second.text
    fragment = ui.get(f"/v/{parent.id}/tree/many?start=100", headers={"HX-Request": "true"})
    assert fragment.text.lstrip().startswith('<div id="listing">')  # htmx swaps the listing only

    matched = ui.get(f"/v/{parent.id}/tree/many?glob=f12*")
    assert matched.text.count('class="file"') == 10 and "10 match(es) among 130" in matched.text
    monkeypatch.setattr(content, "SCAN_LIMIT", 50)  # a filter stops after so many names and offers more
    partial = ui.get(f"/v/{parent.id}/tree/many?glob=f12*")
    assert partial.text.count('class="file"') == 0 and "start=50&amp;glob=f12%2A" in partial.text
    assert ui.get(f"/v/{parent.id}/tree/many?start=100&glob=f12*").text.count('class="file"') == 10
    assert ui.get(f"/v/{parent.id}/tree/a/b/c.txt").status_code == 404  # a file is not a folder


def test_file_views(ui, versions):
    parent = versions[0]
    text = ui.get(f"/v/{parent.id}/file/a/b/c.txt")
    assert text.status_code == 200 and '<pre class="text">hello\nworld\n</pre>' in text.text
    assert '&#34;k&#34;: [\n    1,\n    2\n  ]' in ui.get(f"/v/{parent.id}/file/d.json").text  # JSON indented
    csv_page = ui.get(f"/v/{parent.id}/file/t.csv").text
    assert "<th>x</th><th>y</th>" in csv_page and "<td>3</td><td>4</td>" in csv_page
    table = ui.get(f"/v/{parent.id}/file/p.parquet").text
    assert "<th>city</th><th>people</th>" in table and "<td>Lima</td><td>10000000</td>" in table
    assert "3 row(s)" in table and "people: int64" in table
    image = ui.get(f"/v/{parent.id}/file/a/b/img.png").text
    assert f'<img src="/v/{parent.id}/raw/a/b/img.png"' in image
    raw = ui.get(f"/v/{parent.id}/raw/a/b/img.png")
    assert raw.headers["content-type"] == "image/png" and raw.content == FILES_PNG(parent)
    assert "A binary file" in ui.get(f"/v/{parent.id}/file/bin.dat").text
    assert ui.get(f"/v/{parent.id}/file/a", follow_redirects=False).status_code == 303  # a folder: its listing


def FILES_PNG(version) -> bytes:
    return version.read_file("a/b/img.png")


def test_download_streams_verified_bytes_as_an_attachment(ui, versions):
    parent = versions[0]
    raw = ui.get(f"/v/{parent.id}/raw/a/b/c.txt")
    assert raw.status_code == 200 and raw.content == TEXT
    assert raw.headers["content-disposition"].startswith('attachment; filename="c.txt"')
    assert raw.headers["content-length"] == str(len(TEXT))
    html = ui.get(f"/v/{parent.id}/raw/evil.html")  # a page in a dataset never runs in the UI's origin
    assert html.content == EVIL_HTML and html.headers["content-type"] == "application/octet-stream"
    assert html.headers["content-disposition"].startswith("attachment")
    assert "sandbox" in html.headers["content-security-policy"]
    assert html.headers["x-content-type-options"] == "nosniff"


def test_a_damaged_cached_chunk_is_fetched_again_and_a_damaged_stored_one_is_an_error(versions, file_store, tmp_path):
    from test_view import _corrupt_pack_byte, _flip_cached_byte

    parent = versions[0]
    entry = next(e for e in parent.file_entries() if e.path == "a/b/c.txt")
    with client(file_store, tmp_path) as c:
        assert c.get(f"/v/{parent.id}/raw/a/b/c.txt").content == TEXT  # now in the UI's node cache
    _flip_cached_byte(Cache(str(tmp_path / "ui-cache")), entry.chunks[0].digest, 3)
    with client(file_store, tmp_path) as c:  # a new UI: nothing in memory
        assert c.get(f"/v/{parent.id}/raw/a/b/c.txt").content == TEXT
    _flip_cached_byte(Cache(str(tmp_path / "ui-cache")), entry.chunks[0].digest, 3)
    _corrupt_pack_byte(file_store, entry.chunks[0])
    with client(file_store, tmp_path) as c:
        for url in (f"/v/{parent.id}/raw/a/b/c.txt", f"/v/{parent.id}/file/a/b/c.txt"):
            bad = c.get(url)
            assert bad.status_code == 502 and "corrupt" in bad.text and b"world" not in bad.content
            assert "a/b/c.txt" in bad.text
        assert c.get(f"/v/{parent.id}/raw/t.csv").content == b"x,y\n1,2\n3,4\n"  # other files still read


OUTSIDE = ["..", "../../etc/passwd", "a/../../x", "..%2F..%2Fetc%2Fpasswd", "a%2F..%2F..", "%2Fetc%2Fpasswd",
           "/etc/passwd", "//etc/passwd", "a/b/c.txt%00.png", "a%00", "./a/./../b", "a/b/nothing.txt",
           "%2e%2e/%2e%2e/etc/passwd", "a\\..\\..\\x"]


def test_no_path_outside_the_version_can_be_asked_for(ui, versions):
    parent = versions[0]
    for path in OUTSIDE:
        for kind in ("tree", "file", "raw"):
            status, body = raw_get(ui.app, f"/v/{parent.id}/{kind}/{path}")
            assert status == 404, (kind, path, status)
            assert b"root:" not in body and b"Traceback" not in body
    assert raw_get(ui.app, f"/v/{parent.id}/raw/a/b/c.txt") == (200, TEXT)  # the same way, a path inside
    assert ui.get(f"/compare/diff?source={parent.id}&target={parent.id}&path=../../etc/passwd").status_code == 404


def test_every_name_is_escaped(ui, versions, file_store):
    parent = versions[0]
    Dataset.get(parent.id, store=file_store).set_labels(description="<img src=x onerror=alert(2)>",
                                                        metadata={"note": "</pre><script>alert(3)</script>"})
    pages = [ui.get(f"/v/{parent.id}"), ui.get(f"/v/{parent.id}/tree/%3Cscript%3Ealert(1)%3C"),
             ui.get(f"/v/{parent.id}/file/%3Cscript%3Ealert(1)%3C/script%3E.txt"), ui.get("/?q=%3Cscript%3E"),
             ui.get("/dataset?project=proj&name=data")]
    for page in pages:
        assert page.status_code == 200
        assert "<script>alert" not in page.text and "<img src=x" not in page.text
    assert "&lt;script&gt;alert(1)&lt;" in pages[1].text and "script&gt;.txt" in pages[1].text
    assert "&lt;img src=x onerror=alert(2)&gt;" in pages[0].text
    assert pages[2].status_code == 200 and "boo" in pages[2].text


def test_bad_ids_and_paths_are_404_pages(ui, versions):
    parent = versions[0]
    for url in ["/v/not-an-id", "/v/" + "0" * 32, f"/v/{parent.id}/tree/nowhere", f"/v/{parent.id}/file/nowhere",
                "/v/" + "0" * 32 + "/preview", "/no/such/page", f"/v/{parent.id}/blob/nothing",
                f"/v/{parent.id}/blob/{'0' * 64}", f"/compare?source={parent.id}&target=proj/data@9.9.9"]:
        page = ui.get(url)
        assert page.status_code == 404, url
        assert page.headers["content-type"].startswith("text/html") and "Traceback" not in page.text
        assert '<p class="error" id="error-message">' in page.text
    assert ui.post(f"/v/{parent.id}/preview").status_code == 405


def test_a_bad_store_is_a_clear_error_page(tmp_path):
    with client(f"file://{tmp_path}/no-store", tmp_path) as c:
        page = c.get("/")
    assert page.status_code == 503 and "no dsfs store at" in page.text and "Traceback" not in page.text


def test_datastore_secrets_are_never_rendered(tmp_path):
    from dsfs.store import datastores

    datastores.register("dead", "s3://bucket/dsfs", {"endpoint_url": f"http://127.0.0.1:{free_port()}",
                                                     "key": "AKIDEADBEEF", "secret": "very-secret-value"})
    with client("datastore:dead", tmp_path) as c:
        page = c.get("/")
    assert page.status_code == 503 and "127.0.0.1" in page.text
    assert "very-secret-value" not in page.text and "AKIDEADBEEF" not in page.text


def test_security_headers(ui):
    page = ui.get("/")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in page.text.replace('<script src="/static/', "")  # no inline script
    assert ui.get("/static/htmx.min.js").status_code == 200  # every asset is in the package


# -- compare, preview, export, node ----------------------------------------------------------------


def test_compare_counts_pages_and_diff(ui, versions, monkeypatch):
    parent, child, _ = versions
    page = ui.get(f"/compare?source={parent.id}&target={child.id}&kind=modified")
    assert page.status_code == 200
    summary = text_of(page.text.split('id="summary"')[1].split("</table>")[0])
    assert re.search(r"1 \(3 B\) 1 \(13 B\) 1 \(18 B\) \d+", summary), summary
    assert "path=a/b/c.txt" in page.text
    by_name = ui.get("/compare?source=proj/data@1.0.0&target=proj/data&kind=removed")
    assert f'href="/v/{parent.id}/file/d.json"' in by_name.text
    monkeypatch.setattr(content, "PAGE", 2)
    other = versions[2]
    first = ui.get(f"/compare?source={other.id}&target={parent.id}&kind=added", headers={"HX-Request": "true"})
    assert first.text.lstrip().startswith('<div id="changes">') and first.text.count('href="/v/') == 2
    assert "start=2" in first.text and 'class="next"' in first.text
    diff = ui.get(f"/compare/diff?source={parent.id}&target={child.id}&path=a/b/c.txt")
    assert diff.status_code == 200
    rows = re.findall(r'<tr class="(\w+)">', diff.text)
    assert rows == ["equal", "insert", "equal"] and '<td class="new">there</td>' in diff.text
    assert ui.get(f"/compare/diff?source={parent.id}&target={child.id}&path=bin.dat").status_code == 200
    assert "binary" in ui.get(f"/compare/diff?source={parent.id}&target={child.id}&path=bin.dat").text
    assert ui.get(f"/compare?source={parent.id}&target={child.id}&kind=bogus").status_code == 400


def test_compare_refuses_a_draft(ui, versions, file_store):
    draft = Dataset.create("proj", "data", parents=[versions[0].id], store=file_store)
    assert ui.get(f"/compare?source={versions[0].id}&target={draft.id}").status_code == 409


def test_preview_tab(ui, versions, tmp_path):
    parent = versions[0]
    logger = parent.get_logger()
    logger.report_histogram("classes", "counts", values=[120, 80], xlabels=["cat", "<dog>"])
    picture = png()
    (tmp_path / "pic.png").write_bytes(picture)
    logger.report_image("examples", "first", local_path=str(tmp_path / "pic.png"))
    logger.report_text("<b>collected</b> in 2026")
    page = ui.get(f"/v/{parent.id}/preview")
    assert page.status_code == 200
    assert "<th>extension</th>" in page.text and "<td>.txt</td>" in page.text  # the statistics
    assert "<th>city</th>" in page.text and "<td>Oslo</td>" in page.text  # the automatic table of p.parquet
    assert 'aria-label="classes"' in page.text and "&lt;dog&gt;" in page.text
    assert "&lt;b&gt;collected&lt;/b&gt;" in page.text
    blob = re.search(r'<img class="preview" src="(/v/[0-9a-f]+/blob/[0-9a-f]{64})" alt="pic.png"', page.text).group(1)
    listed = []
    real_previews = Dataset.previews
    with pytest.MonkeyPatch.context() as patch:  # the page listed the items: each <img> reads its blob only
        patch.setattr(Dataset, "previews", lambda self: listed.append(self.id) or real_previews(self))
        image = ui.get(blob)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png" and image.content == picture
    assert listed == []
    other = ui.get(blob.replace(parent.id, versions[1].id))  # not an item of that version
    assert other.status_code == 404


def test_export_tar_and_zip_are_streamed_archives_of_the_version(ui, versions):
    child = versions[1]
    expected = {e.path: child.read_file(e.path) for e in child.file_entries()}
    tar = ui.get(f"/v/{child.id}/export?format=tar")
    assert tar.status_code == 200 and "attachment" in tar.headers["content-disposition"]
    with tarfile.open(fileobj=io.BytesIO(tar.content)) as archive:
        assert {m.name: archive.extractfile(m).read() for m in archive.getmembers()} == expected
    zipped = ui.get(f"/v/{child.id}/export?format=zip")
    with zipfile.ZipFile(io.BytesIO(zipped.content)) as archive:
        assert {name: archive.read(name) for name in archive.namelist()} == expected
    assert ui.get(f"/v/{child.id}/export?format=rar").status_code == 400


def test_node_page_shows_the_cache(ui, versions):
    parent = versions[0]
    ui.get(f"/v/{parent.id}/raw/a/b/c.txt")
    page = ui.get("/node")
    assert page.status_code == 200 and "No dsfs mount on this node" in page.text
    stats = ui.app.state.ui.cache.stats()
    assert stats["chunks"] >= 1 and f"<td>{stats['chunks']} (" in page.text
    assert stats["dir"] in page.text


def test_mounts_are_listed_with_their_cache(monkeypatch, tmp_path, file_store, versions):
    from dsfs import daemon

    record = {"ref": "proj/data@1.0.0", "dataset_id": versions[0].id, "mountpoint": "/mnt/<x>", "pid": 4242,
              "cache_dir": str(tmp_path / "mount-cache"), "cache_budget": 5 << 30}
    monkeypatch.setattr(daemon, "list_mounts", lambda clean=True: ([dict(record)], []))
    with client(file_store, tmp_path) as c:
        page = c.get("/node")
    assert "<td>proj/data</td><td>1.0.0</td>" in page.text and "/mnt/&lt;x&gt;" in page.text
    assert "5.0 GiB" in page.text and "4242" in page.text


# -- actions, CSRF, read-only, the token ---------------------------------------------------------------


def test_edit_labels(ui, versions, file_store):
    parent = versions[0]
    token = csrf(ui)
    done = ui.post(f"/v/{parent.id}/labels", data={"csrf": token, "description": "better", "tags": "gold, silver",
                                                   "metadata": '{"classes": ["cat"]}'}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == f"/v/{parent.id}?done=labels"
    info = Dataset.get(parent.id, store=file_store).info
    assert (info.description, info.tags, info.metadata) == ("better", ["gold", "silver"], {"classes": ["cat"]})
    assert "gold" in ui.get("/?tags=gold+silver").text
    for bad in ({"metadata": "[1, 2]"}, {"metadata": "{nope"}, {"tags": "a/b"}):
        refused = ui.post(f"/v/{parent.id}/labels", data={"csrf": token, "description": "x", **bad})
        assert refused.status_code == 400
    assert Dataset.get(parent.id, store=file_store).info.description == "better"


def test_publish(ui, versions, file_store):
    child = versions[1]
    assert 'id="publish"' in ui.get(f"/v/{child.id}").text
    assert "0 dataset(s)" in ui.get("/?state=published").text
    done = ui.post(f"/v/{child.id}/publish", data={"csrf": csrf(ui)})
    assert done.status_code == 200 and "Published." in done.text
    assert Dataset.get(child.id, store=file_store).state == "published"
    assert 'id="publish"' not in done.text
    assert ui.post(f"/v/{child.id}/publish", data={"csrf": csrf(ui)}).status_code == 409
    assert "1 dataset(s)" in ui.get("/?state=published").text


def test_delete_follows_the_lifecycle_rules(ui, versions, file_store):
    parent, child, _ = versions
    confirm = ui.get(f"/v/{parent.id}/delete")
    assert confirm.status_code == 200 and 'id="children"' in confirm.text and "proj/data@1.0.1" in confirm.text
    token = csrf(ui)
    assert ui.post(f"/v/{child.id}/delete", data={"csrf": token}).status_code == 400  # not confirmed
    refused = ui.post(f"/v/{parent.id}/delete", data={"csrf": token, "confirm": "yes"})
    assert refused.status_code == 409 and "delete those first or pass --force" in refused.text
    assert Dataset.get(parent.id, store=file_store)
    leaf = ui.post(f"/v/{child.id}/delete", data={"csrf": token, "confirm": "yes"}, follow_redirects=False)
    assert leaf.status_code == 303 and "project=proj&name=data" in leaf.headers["location"]
    assert ui.get(f"/v/{child.id}").status_code == 404
    assert "Deleted." in ui.get(leaf.headers["location"]).text
    other = versions[2]
    assert ui.post(f"/v/{other.id}/delete", data={"csrf": token, "confirm": "yes", "force": "on"},
                   follow_redirects=False).headers["location"] == "/?done=deleted"


def test_actions_need_the_csrf_token(ui, versions, file_store):
    child = versions[1]
    for data in ({}, {"csrf": "x" * 43}):
        refused = ui.post(f"/v/{child.id}/publish", data=data)
        assert refused.status_code == 403 and "security token" in refused.text
    cross = ui.post(f"/v/{child.id}/publish", data={"csrf": csrf(ui)}, headers={"Origin": "http://evil.example"})
    assert cross.status_code == 403
    fresh = TestClient(ui.app, base_url="http://127.0.0.1:8765")  # a form posted with no cookie at all
    assert fresh.post(f"/v/{child.id}/publish", data={"csrf": "x" * 43}).status_code == 403
    assert ui.get(f"/v/{child.id}/publish").status_code == 405  # POST only
    assert Dataset.get(child.id, store=file_store).state == "final"


def test_read_only_has_no_actions(file_store, tmp_path, versions):
    child = versions[1]
    with client(file_store, tmp_path, read_only=True) as c:
        page = c.get(f"/v/{child.id}")
        assert page.status_code == 200 and 'id="actions"' not in page.text and "Publish" not in page.text
        assert "read-only" in page.text
        token = csrf(c)
        for action in ("publish", "labels", "delete"):
            refused = c.post(f"/v/{child.id}/{action}", data={"csrf": token, "confirm": "yes"})
            assert refused.status_code == 403 and "read-only" in refused.text
        assert c.get(f"/v/{child.id}/delete").status_code == 403
    assert Dataset.get(child.id, store=file_store).state == "final"


def test_a_non_loopback_host_needs_the_token(file_store, tmp_path, versions):
    with pytest.raises(UsageError, match="needs a token"):
        ui_app.create_app(file_store, host="0.0.0.0")
    app = ui_app.create_app(file_store, cache_dir=str(tmp_path / "c"), host="0.0.0.0", token="s3cret-token")
    with TestClient(app, base_url="http://node7.example:8765") as c:
        assert c.get("/").status_code == 401 and c.get("/static/ui.css").status_code == 401
        assert c.get("/?token=wrong").status_code == 401
        assert c.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        first = c.get("/?token=s3cret-token&q=x", follow_redirects=False)
        assert first.status_code == 303 and first.headers["location"] == "/?q=x"  # the token leaves the URL
        assert "HttpOnly" in first.headers["set-cookie"]
        assert c.get("/").status_code == 200  # the cookie


def test_on_loopback_only_loopback_host_names_are_served(ui):
    assert ui.get("/", headers={"Host": "localhost:8765"}).status_code == 200
    assert ui.get("/", headers={"Host": "[::1]:8765"}).status_code == 200
    rebound = ui.get("/", headers={"Host": "attacker.example:8765"})  # DNS rebinding
    assert rebound.status_code == 403


def test_cli_starts_the_server_with_a_token_off_loopback(versions, file_store, dsfs, monkeypatch):
    uvicorn = required_library("uvicorn")
    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(app=app, **kw))
    result = dsfs("ui", "--store", file_store, "--host", "0.0.0.0", "--port", "9999", "--read-only")
    assert result.code == 0, result.err
    assert (started["host"], started["port"]) == ("0.0.0.0", 9999)
    token = re.search(r"\?token=(\S+)", result.err).group(1)
    assert "(read-only)" in result.err and len(token) >= 24
    with TestClient(started["app"], base_url="http://node7.example:9999") as c:
        assert c.get("/").status_code == 401
        assert c.get("/", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    result = dsfs("ui", "--store", file_store)
    assert "?token=" not in result.err and started["host"] == "127.0.0.1"
    bad = dsfs("ui", "--store", "file:///nonexistent/store")
    assert bad.code == 7 and "no dsfs store" in bad.err


def test_an_unreadable_record_is_named_on_the_datasets_page(ui, versions, file_store):
    """A record that cannot be read is named (it may match), and the other datasets are listed."""
    parent = versions[2]
    path = f"{file_store[len('file://'):]}/datasets/{parent.id}/version.json"
    with open(path, "w") as f:
        f.write("{not json")
    page = ui.get("/")
    assert page.status_code == 200 and "Not listed (it may match)" in page.text and "1 dataset(s)" in page.text

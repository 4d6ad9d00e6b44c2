"""The web UI in a real Chromium (Debian's /usr/bin/chromium driven by Playwright's sync API; no
browser is downloaded): the datasets page, a version, two folder levels, an image and a Parquet
file, a comparison, publishing, and deleting a leaf through its confirmation page. Screenshots go to
the test's tmp folder; the version page's is also docs/img/ui-version.png (README) when that file
is missing. The server is uvicorn on a free loopback port, in a thread of the test process."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from servers import free_port, required_library, unavailable
from test_ui import versions  # noqa: F401 - the fixture of three versions

from dsfs import Dataset

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
README_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "img" / "ui-version.png"


@pytest.fixture
def server(file_store, tmp_path, versions):  # noqa: F811 - versions is the imported fixture
    uvicorn = required_library("uvicorn")
    from dsfs.ui.app import create_app

    port = free_port()
    app = create_app(file_store, cache_dir=str(tmp_path / "ui-cache"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=20)


@pytest.fixture
def page(tmp_path):
    if not os.path.exists(CHROMIUM):
        unavailable(f"{CHROMIUM} is missing", "the setup script installs Debian's chromium")
    sync_api = required_library("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            tab = context.new_page()
            errors: list[str] = []
            tab.on("pageerror", lambda exc: errors.append(str(exc)))
            tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            yield tab
            assert errors == [], errors  # no script error, no CSP violation
        finally:
            browser.close()


@pytest.mark.slow
def test_browse_compare_publish_delete_in_chromium(server, page, versions, tmp_path, file_store):  # noqa: F811
    expect = required_library("playwright.sync_api").expect
    parent, child, _ = versions
    shots = tmp_path / "screenshots"
    shots.mkdir()

    page.goto(server + "/")
    assert page.locator("#datasets tbody tr").count() == 2
    page.fill("input[name=q]", "gold")
    page.click("form.filters button[type=submit]")
    assert page.locator("#datasets tbody tr").count() == 1
    page.screenshot(path=str(shots / "datasets.png"), full_page=True)

    page.goto(server + "/")
    page.click("#datasets a:text-is('data')")  # the dataset
    assert page.locator("#versions tbody tr").count() == 2 and page.locator("#lineage line").count() == 1
    page.screenshot(path=str(shots / "dataset.png"), full_page=True)
    page.click(f"#versions a[href='/v/{parent.id}']")
    assert page.locator("#version-id").inner_text() == parent.id
    page.screenshot(path=str(shots / "version.png"), full_page=True)
    if not README_SCREENSHOT.exists():
        README_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(README_SCREENSHOT))

    page.click("a.folder:text-is('a/')")  # two folder levels
    page.click("a.folder:text-is('b/')")
    assert page.locator("nav.crumbs").inner_text().split() == ["root", "/", "a", "/", "b"]
    page.click("a.file:text-is('img.png')")
    image = page.locator("#fileview img")
    image.wait_for()
    assert page.evaluate("document.querySelector('#fileview img').naturalWidth") == 8  # decoded, shown inline
    page.screenshot(path=str(shots / "image.png"), full_page=True)

    page.goto(f"{server}/v/{parent.id}/tree/many")
    page.fill("input[name=glob]", "f12*")  # htmx filters the listing as one types
    expect(page.locator("#listing a.file")).to_have_count(10)
    page.goto(f"{server}/v/{parent.id}")
    page.click("a.file:text-is('p.parquet')")
    assert page.locator("#fileview table th").all_inner_texts() == ["city", "people"]
    assert "Lima" in page.locator("#fileview table").inner_text()
    page.screenshot(path=str(shots / "parquet.png"), full_page=True)

    page.goto(server + "/dataset?project=proj&name=data")
    page.click("form.filters button:text-is('Compare')")  # 1.0.0 with 1.0.1, the default pair
    assert page.locator("#summary td").first.inner_text().startswith("1 ")
    page.click("#changes nav.tabs a:has-text('modified')")
    page.click("a.diff:text-is('a/b/c.txt')")
    assert page.locator("#diff tr.insert td.new").inner_text() == "there"
    page.screenshot(path=str(shots / "compare.png"), full_page=True)

    page.goto(f"{server}/v/{child.id}")
    page.click("#publish")
    assert page.locator("p.done").inner_text() == "Published."
    assert Dataset.get(child.id, store=file_store).state == "published"

    page.click("#delete")  # a leaf: the confirmation page, then the deletion
    assert page.locator("#children").count() == 0
    page.screenshot(path=str(shots / "delete.png"), full_page=True)
    page.click("#confirm-delete")
    assert page.locator("p.done").inner_text() == "Deleted."
    assert page.locator("#versions tbody tr").count() == 1
    gone = page.request.get(f"{server}/v/{child.id}")
    assert gone.status == 404 and 'id="error-message"' in gone.text()
    assert len(list(shots.iterdir())) == 7

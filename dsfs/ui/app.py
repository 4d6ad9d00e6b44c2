"""The web UI's Starlette application: pages over the catalog, the node's verified read path,
previews, compare and the lifecycle rules, as the command line uses them (docs/ui.md).

Pages (GET): `/` datasets, `/dataset?project=&name=` a dataset's versions and lineage,
`/v/<id>` a version (`/tree/<path>` a folder, `/file/<path>` a file, `/raw/<path>` its bytes,
`/preview` its previews, `/export?format=` an archive), `/compare`, `/node`. Actions are POST only
(`/v/<id>/labels`, `/publish`, `/delete`), refused in read-only mode, each checked against a CSRF
token; delete asks first on its own page (`GET /v/<id>/delete`).

Security, in one place (`Guard`): on a loopback address only requests naming a loopback host are
served (a DNS-rebinding page cannot read the UI); any other address needs the token (a cookie set
from `?token=`, or `Authorization: Bearer`), compared in constant time. Every response carries a
Content-Security-Policy that allows only this origin (no inline script: the UI's own script is a
file) and nosniff; a file's bytes are sent as an attachment under a sandbox policy, so an HTML file
in a dataset never runs in the UI's origin. Every name reaches the page through Jinja2's autoescape.
dsfs errors become pages with their own message and a status (`_status`), never a traceback; the
store is shown by its display URL, which holds no credentials.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import inspect
import ipaddress
import json
import logging
import os
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from dsfs import catalog, daemon, units
from dsfs.dataset import Dataset
from dsfs.errors import (
    AccessDenied,
    Conflict,
    CorruptData,
    DatasetNotFound,
    DiskFull,
    DsfsError,
    InvalidPath,
    InvalidState,
    PathNotFound,
    StoreReadOnly,
    StoreUnavailable,
    UsageError,
)
from dsfs.lineage.viewindex import Inode
from dsfs.model import ID_RE, VersionInfo
from dsfs.node.cache import Cache
from dsfs.store import records
from dsfs.store.layout import Store
from dsfs.ui import charts, content

log = logging.getLogger(__name__)

HERE = os.path.dirname(os.path.abspath(__file__))
TOKEN_COOKIE = "dsfs_ui_token"
CSRF_COOKIE = "dsfs_ui_csrf"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
DATASETS_PAGE = 50
SEARCHES_KEPT = 32  # filter combinations whose answer the datasets page keeps
BLOB_ITEMS_KEPT = 1_000  # preview items with a blob remembered from preview pages (UI.blob_items)
CHART_VERSIONS = 50  # the newest versions drawn in a dataset's chart
SECURITY_HEADERS = [
    ("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                                "form-action 'self'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),  # a token in the URL of the first page never leaves in a Referer
    ("Cache-Control", "no-store"),
]
DOWNLOAD_POLICY = "default-src 'none'; sandbox"  # a file's bytes: nothing in them runs, even opened directly
DONE = {"published": "Published.", "labels": "Description, tags and metadata saved.", "deleted": "Deleted."}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class Settings:
    store: Store | str | None = None  # a Store, a URL, datastore:NAME, or None: the default store
    cache_dir: str | None = None
    cache_size: str | int | None = None
    read_only: bool = False
    token: str | None = None
    host: str = "127.0.0.1"


class UI:
    """What the pages share: the store (opened on first use, so that a bad store is an error page),
    the node cache, the versions' views and the rendered tables."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.lock = threading.Lock()
        self._store: Store | None = None
        self._cache: Cache | None = None
        self._views: content.Views | None = None
        self.tables = content.TableCache()
        self.searches: dict[tuple, tuple[str, float, list[VersionInfo], dict[str, str]]] = {}
        # (version id, blob digest) -> its item, as the last preview page of that version listed it:
        # each <img> of that page is then one GET of its blob, not a listing and a read of every item
        self.blob_items: dict[tuple[str, str], dict] = {}
        self.templates = jinja2.Environment(loader=jinja2.FileSystemLoader(os.path.join(HERE, "templates")),
                                            autoescape=True, undefined=jinja2.StrictUndefined)
        self.templates.filters.update(size=human_size, urlpath=urlpath, short=lambda text: str(text)[:8])
        self.templates.globals.update(read_only=settings.read_only)

    def store(self) -> Store:
        with self.lock:
            if self._store is None:
                self._store = catalog.open_store(self.settings.store)
            return self._store

    @property
    def cache(self) -> Cache:
        with self.lock:
            if self._cache is None:
                self._cache = Cache(self.settings.cache_dir, self.settings.cache_size)
            return self._cache

    @property
    def views(self) -> content.Views:
        store, cache = self.store(), self.cache
        with self.lock:
            if self._views is None:
                self._views = content.Views(store, cache)
            return self._views

    def search(self, project: str | None, name: str | None, tags: list[str], state: str | None,
               unreadable: dict[str, str]) -> list[VersionInfo]:
        """catalog.search, its answer reused under the rule of the catalog's own listing
        (dsfs.store.records): while the store's change epoch is the one it was made under (any
        record written or removed makes a new one) and for at most LISTING_MAX_AGE seconds. A warm
        datasets page then costs one small GET, where parsing and sorting 10,000 records took ~0.5 s."""
        store = self.store()
        key = (project, name, tuple(tags), state)
        epoch = store.read_epoch()
        with self.lock:
            kept = self.searches.get(key)
        if epoch is not None and kept is not None and kept[0] == epoch \
                and 0 <= time.monotonic() - kept[1] < records.LISTING_MAX_AGE:
            unreadable.update(kept[3])
            return kept[2]
        made = time.monotonic()
        found = catalog.search(store, project, name, tags, unreadable=unreadable, state=state)
        if epoch is not None and store.read_epoch() == epoch:  # nothing changed while it was made
            with self.lock:
                self.searches[key] = (epoch, made, found, dict(unreadable))
                while len(self.searches) > SEARCHES_KEPT:
                    self.searches.pop(next(iter(self.searches)))
        return found

    def remember_blobs(self, dataset_id: str, items: list[dict]) -> None:
        with self.lock:
            self.blob_items.update(((dataset_id, i["blob"]), i) for i in items if isinstance(i.get("blob"), str))
            while len(self.blob_items) > BLOB_ITEMS_KEPT:
                self.blob_items.pop(next(iter(self.blob_items)))

    def close(self) -> None:
        if self._views is not None:
            self._views.close()


def human_size(n) -> str:
    """Bytes in IEC units, as the command line prints them; "" for what is not a number (a record
    written by anyone may hold anything)."""
    return units.human(n) if isinstance(n, int | float) else ""


def urlpath(path: str) -> str:
    """A dataset path as it goes into a URL: every character but '/' that could mean something else
    there ('%', '?', '#', spaces...) percent-encoded."""
    return urllib.parse.quote(path, safe="/")


# -- security ------------------------------------------------------------------------------------


class Guard:
    """ASGI middleware: the host check, the token, the CSRF cookie, and the security headers."""

    def __init__(self, app, settings: Settings):
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        refusal = self._refusal(request)
        csrf = request.cookies.get(CSRF_COOKIE) or ""
        new_csrf = "" if len(csrf) >= 32 else secrets.token_urlsafe(32)
        scope.setdefault("state", {})["csrf"] = csrf if not new_csrf else new_csrf

        async def send_secured(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS:
                    if name not in headers:
                        headers[name] = value
                if new_csrf:
                    headers.append("Set-Cookie", f"{CSRF_COOKIE}={new_csrf}; Path=/; HttpOnly; SameSite=Strict")
            await send(message)

        if refusal is not None:
            return await refusal(scope, receive, send_secured)
        return await self.app(scope, receive, send_secured)

    def _refusal(self, request: Request) -> Response | None:
        token = self.settings.token
        if not token:
            if not is_loopback(_hostname(request.headers.get("host", ""))):
                return _plain(403, "This UI answers on a loopback address only: open it as http://127.0.0.1:PORT/ "
                                   "(a page of another site may not reach it through a name of its own).")
            return None
        given = request.query_params.get("token")
        if given is not None:
            if not _same(given, token):
                return _plain(401, "Wrong token.")
            query = urllib.parse.urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            response = RedirectResponse(request.url.path + (f"?{query}" if query else ""), status_code=303)
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
            return response
        bearer = request.headers.get("authorization", "")
        if bearer.lower().startswith("bearer ") and _same(bearer[7:].strip(), token):
            return None
        if _same(request.cookies.get(TOKEN_COOKIE, ""), token):
            return None
        return _plain(401, "This UI needs its token: open the address `dsfs ui` printed (it ends in ?token=...), "
                           "or send Authorization: Bearer TOKEN.")


def _hostname(header: str) -> str:
    """The host of a Host header, without its port ('[::1]:8765' -> '::1')."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(), token.encode())


def _plain(status: int, message: str) -> Response:
    return Response(message + "\n", status_code=status, media_type="text/plain; charset=utf-8")


def _check_post(request: Request, form) -> None:
    """Actions: refused in read-only mode; the form's CSRF token must be the cookie's, and a
    browser's Origin, if sent, this UI's."""
    if request.app.state.ui.settings.read_only:
        raise _Refused(403, "This UI is read-only (dsfs ui --read-only): no action is allowed.")
    cookie = request.cookies.get(CSRF_COOKIE, "")
    given = form.get("csrf", "")
    if not cookie or not isinstance(given, str) or not _same(given, cookie):
        raise _Refused(403, "The form's security token is missing or stale: reload the page and try again.")
    origin = request.headers.get("origin")
    if origin and origin != "null" and urllib.parse.urlsplit(origin).netloc != request.headers.get("host"):
        raise _Refused(403, "This action came from another site's page: refused.")


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# -- pages ---------------------------------------------------------------------------------------


def _status(exc: DsfsError) -> tuple[int, str]:
    """The HTTP status and title of a dsfs error: the one place they are chosen."""
    if isinstance(exc, DatasetNotFound | PathNotFound | InvalidPath):
        return 404, "Not found"
    if isinstance(exc, InvalidState | Conflict):
        return 409, "Not possible now"
    if isinstance(exc, StoreUnavailable | AccessDenied | StoreReadOnly):
        return 503, "The store cannot be reached"
    if isinstance(exc, CorruptData):
        return 502, "Corrupt data"
    if isinstance(exc, DiskFull):
        return 507, "Disk full"
    if isinstance(exc, UsageError):
        return 400, "Bad request"
    return 500, "Error"


def render(request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
    ui: UI = request.app.state.ui
    done = DONE.get(request.query_params.get("done", ""))
    page = ui.templates.get_template(template).render(request=request, csrf=request.state.csrf, done=done,
                                                      store_url=ui._store.display_url if ui._store else "",
                                                      **context)
    return HTMLResponse(page, status_code=status)


def error_page(request: Request, status: int, title: str, message: str) -> HTMLResponse:
    return render(request, "error.html", status=status, title=title, message=message)


def endpoint(fn):
    """A page: fn(request, ui), a dsfs error or a refusal becoming its error page. Plain functions
    run in Starlette's thread pool (they read the store and the cache)."""
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def run_async(request: Request):
            try:
                return await fn(request, request.app.state.ui)
            except DsfsError as exc:
                return error_page(request, *_status(exc), str(exc))
            except _Refused as exc:
                return error_page(request, exc.status, "Refused", str(exc))
        return run_async

    @functools.wraps(fn)
    def run(request: Request):
        try:
            return fn(request, request.app.state.ui)
        except DsfsError as exc:
            return error_page(request, *_status(exc), str(exc))
        except _Refused as exc:
            return error_page(request, exc.status, "Refused", str(exc))
    return run


def _number(request: Request, name: str, default: int = 0) -> int:
    text = request.query_params.get(name, "")
    if not text:
        return default
    if not text.isdigit():
        raise UsageError(f"{name} must be a whole number, not {text!r}")
    return int(text)


def _version(ui: UI, request: Request) -> VersionInfo:
    dataset_id = request.path_params["id"]
    if not ID_RE.match(dataset_id):
        raise DatasetNotFound(f"{dataset_id!r} is not a version id (32 hex digits)")
    return ui.store().read_version(dataset_id)


def _final(info: VersionInfo) -> None:
    if not info.is_final:
        raise InvalidState(f"{info.ref} ({info.id}) is a draft: its files can be seen once it is closed")


def _refs(ui: UI, ids: list[str]) -> dict[str, str]:
    """id -> project/name@version of the versions that can be read (parents, sources)."""
    found = {}
    for dataset_id in ids:
        try:
            found[dataset_id] = ui.store().read_version(dataset_id).ref
        except DsfsError:
            continue  # deleted or damaged: shown by its id
    return found


def _tags(text: str) -> list[str]:
    return [t for t in (part.strip() for part in text.replace(",", " ").split()) if t]


@endpoint
def datasets_page(request: Request, ui: UI):
    """Every dataset (project/name) with its latest version, among the versions the filters keep."""
    query = request.query_params
    project, name, state, text = (query.get(k, "").strip() for k in ("project", "name", "state", "q"))
    tags = _tags(query.get("tags", ""))
    unreadable: dict[str, str] = {}
    found = ui.search(project or None, name or None, tags, state or None, unreadable)
    needle = text.casefold()
    groups: dict[tuple[str, str], dict] = {}
    for v in found:  # by project, name and version number: the last one seen is the latest
        group = groups.setdefault((v.project, v.name), {"project": v.project, "name": v.name, "count": 0,
                                                        "updated": "", "latest": v, "hit": False})
        group["count"] += 1
        group["latest"] = v
        group["updated"] = max(group["updated"], v.finalized or v.created)
        if needle and not group["hit"]:  # the search box: a dataset any of whose versions says it
            group["hit"] = (needle in f"{v.project}/{v.name}".casefold() or needle in v.description.casefold()
                            or any(needle in t.casefold() for t in v.tags) or v.id.startswith(needle))
    rows = [g for g in groups.values() if g["hit"] or not needle]
    start = _number(request, "start")
    projects = sorted({g["project"] for g in groups.values()})
    return render(request, "datasets.html", rows=rows[start: start + DATASETS_PAGE], total=len(rows), start=start,
                  page=DATASETS_PAGE, versions=len(found), projects=projects, unreadable=sorted(unreadable.values()),
                  filters={"project": project, "name": name, "state": state, "q": text, "tags": " ".join(tags)},
                  states=catalog.STATES)


@endpoint
def dataset_page(request: Request, ui: UI):
    project, name = request.query_params.get("project", ""), request.query_params.get("name", "")
    if not project or not name:
        raise UsageError("name a dataset: /dataset?project=P&name=N")
    unreadable: dict[str, str] = {}
    versions = catalog.versions_of(ui.store(), project, name, unreadable)
    if not versions:
        raise DatasetNotFound(f"no dataset {project}/{name}")
    inside = {v.id for v in versions}
    outside = [p for v in versions for p in [*v.parents, *v.sources] if p not in inside]
    graph = charts.lineage(versions, _refs(ui, list(dict.fromkeys(outside))))
    shown = versions[-CHART_VERSIONS:]
    files = charts.bars([(v.version, v.stats.get("files", 0), f"{v.stats.get('files', 0):,}") for v in shown])
    sizes = charts.bars([(v.version, v.stats.get("bytes", 0), human_size(v.stats.get("bytes", 0))) for v in shown])
    return render(request, "dataset.html", project=project, name=name, versions=versions, graph=graph,
                  files_chart=files, bytes_chart=sizes, unreadable=sorted(unreadable.values()),
                  short={v.id: v.version for v in versions})


def _version_context(ui: UI, info: VersionInfo) -> dict:
    return {"info": info, "parents": _refs(ui, [*info.parents, *info.sources]),
            "metadata": json.dumps(info.metadata, indent=2, ensure_ascii=False) if info.metadata else ""}


@endpoint
def version_page(request: Request, ui: UI):
    """The info panel and the Content tab: a folder of the version, a page of it."""
    info = _version(ui, request)
    context = _version_context(ui, info)
    if not info.is_final:
        return render(request, "version.html", tab="content", listing=None, **context)
    path = content.dataset_path(request.path_params.get("path", ""))
    view = ui.views.get(info.id)
    pattern = request.query_params.get("glob", "").strip()
    listing = content.folder_page(view, path, _number(request, "start"), pattern)
    template = "_listing.html" if request.headers.get("hx-request") else "version.html"
    return render(request, template, tab="content", listing=listing, crumbs=content.breadcrumbs(path),
                  pattern=pattern, page=content.PAGE, **context)


def _file(ui: UI, request: Request) -> tuple[VersionInfo, content.View, str, Inode]:
    """(the final version, its view, the path, its node) that /v/<id>/<kind>/<path> names."""
    info = _version(ui, request)
    _final(info)
    path = content.dataset_path(request.path_params["path"])
    view = ui.views.get(info.id)
    return info, view, path, content.lookup(view, path)


@endpoint
def file_page(request: Request, ui: UI):
    info, view, path, node = _file(ui, request)
    if node.is_dir:
        return RedirectResponse(f"/v/{info.id}/tree/{urlpath(path)}", status_code=303)
    shown = content.file_view(view, node, path, ui.tables)
    return render(request, "file.html", tab="content", node=node, path=path, shown=shown,
                  crumbs=content.breadcrumbs(path.rpartition("/")[0]), **_version_context(ui, info))


@endpoint
def raw_file(request: Request, ui: UI):
    """A file's verified bytes, streamed, as an attachment (images may be shown inline by <img>)."""
    info, view, path, node = _file(ui, request)
    if node.is_dir:
        raise PathNotFound(f"{path!r} is a folder")
    pieces = content.stream(view, node, path)
    return StreamingResponse(pieces, media_type=content.media_type(path), headers={
        "Content-Length": str(node.size), "Content-Security-Policy": DOWNLOAD_POLICY,
        "Content-Disposition": _attachment(path.rpartition("/")[2]), "Cache-Control": "private, max-age=3600"})


def _attachment(name: str) -> str:
    ascii_name = name.encode("ascii", "replace").decode().replace('"', "_").replace("\\", "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{urllib.parse.quote(name, safe='')}"


@endpoint
def export_archive(request: Request, ui: UI):
    info = _version(ui, request)
    _final(info)
    fmt = request.query_params.get("format", "tar")
    if fmt not in ("tar", "zip"):
        raise UsageError(f"unknown archive format {fmt!r}: tar or zip")
    include = [request.query_params["include"]] if request.query_params.get("include") else None
    name = f"{info.name}-{info.version}.{fmt}"
    return StreamingResponse(content.archive(ui.views.get(info.id), fmt, include),
                             media_type="application/x-tar" if fmt == "tar" else "application/zip",
                             headers={"Content-Disposition": _attachment(name),
                                      "Content-Security-Policy": DOWNLOAD_POLICY})


@endpoint
def preview_page(request: Request, ui: UI):
    info = _version(ui, request)
    dataset = Dataset(ui.store(), info, ui.cache)
    items = dataset.previews() if info.is_final else []
    ui.remember_blobs(info.id, items)
    drawn = []
    for item in items:
        chart = None
        if item["kind"] == "histogram":
            values = [v if isinstance(v, int | float) else 0 for v in item.get("values") or []]
            labels = item.get("xlabels") or list(range(len(values)))
            chart = charts.bars([(str(label), value, str(value)) for label, value in zip(labels, values, strict=False)])
        elif item["kind"] == "statistics":
            chart = charts.bars([(f"< {human_size(b.get('to', 0))}", b.get("files", 0), str(b.get("files", 0)))
                                 for b in item.get("statistics", {}).get("size_histogram", [])])
        drawn.append((item, chart))
    return render(request, "preview.html", tab="preview", items=drawn, **_version_context(ui, info))


@endpoint
def preview_blob(request: Request, ui: UI):
    info = _version(ui, request)
    name = request.path_params["name"]
    if not (len(name) == 64 and all(c in "0123456789abcdef" for c in name)):
        raise PathNotFound(f"no preview {name!r}")
    dataset = Dataset(ui.store(), info, ui.cache)
    with ui.lock:
        item = ui.blob_items.get((info.id, name))
    if item is None:  # not on a preview page this UI showed: look among the version's items
        items = dataset.previews()
        ui.remember_blobs(info.id, items)
        item = next((i for i in items if i.get("blob") == name), None)
        if item is None:
            raise PathNotFound(f"no preview {name!r} of {info.ref}")
    mime = item.get("mime", "")
    data = dataset.preview_blob(name)
    return Response(data, media_type=mime if mime in content.IMAGE_TYPES.values() else "application/octet-stream",
                    headers={"Content-Security-Policy": DOWNLOAD_POLICY,
                             "Content-Disposition": _attachment(item.get("name") or name)})


@endpoint
def compare_page(request: Request, ui: UI):
    source, target = (request.query_params.get(k, "").strip() for k in ("source", "target"))
    if not source or not target:
        return render(request, "compare.html", result=None, source=source, target=target)
    kind = request.query_params.get("kind", "added")
    differences = Dataset.differences(source, target, store=ui.store(), cache=ui.cache)
    result = content.compare_page(differences, kind, _number(request, "start"))
    ids = [catalog.resolve(ui.store(), ref, include_drafts=True) for ref in (source, target)]
    template = "_changes.html" if request.headers.get("hx-request") else "compare.html"
    return render(request, template, result=result, source=source, target=target, versions=ids,
                  page=content.PAGE)


@endpoint
def diff_page(request: Request, ui: UI):
    source, target = (request.query_params.get(k, "").strip() for k in ("source", "target"))
    path = content.dataset_path(request.query_params.get("path", ""))
    sides = []
    for ref in (source, target):
        info = catalog.resolve(ui.store(), ref, include_drafts=True) if ref else None
        if info is None:
            raise UsageError("name two versions: /compare/diff?source=A&target=B&path=P")
        _final(info)
        view = ui.views.get(info.id)
        node = view.index.resolve(path)
        data = b"" if node is None or node.is_dir or node.size > content.DIFF_BYTES else \
            content.head(view, node, path, content.DIFF_BYTES)
        sides.append((info, node, data))
    if all(node is None for _, node, _ in sides):
        raise PathNotFound(f"no {path!r} in either version")
    rows = content.side_by_side(sides[0][2], sides[1][2]) \
        if all(node is None or node.size <= content.DIFF_BYTES for _, node, _ in sides) else None
    return render(request, "diff.html", path=path, rows=rows, source=source, target=target,
                  versions=[info for info, _, _ in sides])


@endpoint
def node_page(request: Request, ui: UI):
    live, _ = daemon.list_mounts(clean=False)  # a page looks; `dsfs mounts` is what cleans up
    return render(request, "node.html", mounts=daemon.with_cache_use(live), cache=ui.cache.stats())


@endpoint
def delete_confirm(request: Request, ui: UI):
    info = _version(ui, request)
    lost, borrowers = catalog.dependents(ui.store(), info.id)
    return render(request, "delete.html", info=info, lost=lost, borrowers=borrowers)


def action(fn):
    """An action: fn(request, ui, form) run in the thread pool once the form is read and passed
    `_check_post` (not read-only, the CSRF token, the origin)."""
    @endpoint
    @functools.wraps(fn)
    async def run(request: Request, ui: UI):
        form = await request.form()
        _check_post(request, form)
        return await run_in_threadpool(fn, request, ui, form)
    return run


@action
def labels_action(request: Request, ui: UI, form):
    info = _version(ui, request)
    text = str(form.get("metadata", "")).strip()
    try:
        metadata = json.loads(text) if text else {}
    except ValueError as exc:
        raise UsageError(f"metadata must be a JSON object: {exc}") from None
    if not isinstance(metadata, dict):
        raise UsageError("metadata must be a JSON object, e.g. {\"classes\": [\"cat\", \"dog\"]}")
    Dataset(ui.store(), info, ui.cache).set_labels(str(form.get("description", "")),
                                                   _tags(str(form.get("tags", ""))), metadata)
    return RedirectResponse(f"/v/{info.id}?done=labels", status_code=303)


@action
def publish_action(request: Request, ui: UI, form):
    info = _version(ui, request)
    Dataset(ui.store(), info, ui.cache).publish()
    return RedirectResponse(f"/v/{info.id}?done=published", status_code=303)


@action
def delete_action(request: Request, ui: UI, form):
    """Delete a version by the lifecycle rules (catalog.delete): refused while versions inherit
    from it or borrow its packs, unless force."""
    if form.get("confirm") != "yes":
        raise UsageError("deleting needs the confirmation of its page: /v/<id>/delete")
    info = _version(ui, request)
    Dataset.delete(info.id, force=form.get("force") == "on", store=ui.store())
    left = catalog.versions_of(ui.store(), info.project, info.name)
    back = {"project": info.project, "name": info.name} if left else {}  # its dataset's page, if any version is left
    return RedirectResponse(("/dataset?" if left else "/?") + urllib.parse.urlencode({**back, "done": "deleted"}),
                            status_code=303)


async def not_found(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException), "registered for HTTPException only"
    if exc.status_code == 404:
        return error_page(request, 404, "Not found", f"No page at {request.url.path}.")
    return error_page(request, exc.status_code, "Refused", exc.detail or "")


def create_app(store: Store | str | None = None, *, cache_dir: str | None = None,
               cache_size: str | int | None = None, read_only: bool = False, token: str | None = None,
               host: str = "127.0.0.1") -> Starlette:
    """The UI as an ASGI application. A host that is not a loopback address needs a token
    (`dsfs ui` makes one when none is given)."""
    if not is_loopback(host) and not token:
        raise UsageError(f"serving on {host} needs a token (--token), or bind to 127.0.0.1")
    settings = Settings(store=store, cache_dir=cache_dir, cache_size=cache_size, read_only=read_only,
                        token=token or None, host=host)
    ui = UI(settings)
    actions = [] if read_only else [
        Route("/v/{id}/labels", labels_action, methods=["POST"]),
        Route("/v/{id}/publish", publish_action, methods=["POST"]),
        Route("/v/{id}/delete", delete_confirm, methods=["GET"]),
        Route("/v/{id}/delete", delete_action, methods=["POST"]),
    ]
    routes = [
        Route("/", datasets_page),
        Route("/dataset", dataset_page),
        Route("/v/{id}", version_page),
        Route("/v/{id}/tree/{path:path}", version_page),
        Route("/v/{id}/file/{path:path}", file_page),
        Route("/v/{id}/raw/{path:path}", raw_file),
        Route("/v/{id}/preview", preview_page),
        Route("/v/{id}/blob/{name}", preview_blob),
        Route("/v/{id}/export", export_archive),
        Route("/compare", compare_page),
        Route("/compare/diff", diff_page),
        Route("/node", node_page),
        *actions,
        Mount("/static", StaticFiles(directory=os.path.join(HERE, "static")), name="static"),
    ]
    if read_only:  # the actions' addresses answer, refusing (not "not found": the UI says why)
        routes += [Route("/v/{id}/{action:str}", _read_only_refusal, methods=["POST"]),
                   Route("/v/{id}/delete", _read_only_refusal, methods=["GET"])]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        ui.close()

    app = Starlette(routes=routes, exception_handlers={HTTPException: not_found}, lifespan=lifespan)
    app.state.ui = ui
    app.add_middleware(Guard, settings=settings)
    return app


@endpoint
def _read_only_refusal(request: Request, ui: UI):
    raise _Refused(403, "This UI is read-only (dsfs ui --read-only): no action is allowed.")

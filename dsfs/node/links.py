"""External files: objects that stay in their own bucket and are read through fsspec on demand.

At add time each object's size and tag (ETag, generation, version id, or mtime for file://) are
recorded. Before bytes are served, the object's current tag is compared with the recorded one: an
object changed since is `StaleLink` (ESTALE on a mount) instead of a silent mix of versions.
External bytes are not content-addressed, so they are not deduplicated or cached as chunks.

A store may be written by someone else, and a link is read on the consumer's machine with the
consumer's credentials: a crafted `file:///home/me/.ssh/id_rsa` or `http://127.0.0.1:8080/admin`
link would read what the store's writer could not. So a link is followed only where the consumer
allows links to be read (`allowed`), checked before any request:

- under the store being read (any store this process opened through dsfs.dataset.open_store);
- under a registered datastore (`dsfs datastore register`, `local` included): registering a
  location is how a consumer says it trusts it, in the config file;
- under a prefix in $DSFS_ALLOW_LINKS (URL prefixes separated by spaces or commas; `s3://` allows
  every S3 object, `file://` every local file: opt-ins for stores you trust);
- under a URL this user added with `dsfs add --links` on this machine (recorded in the state dir,
  `link-roots`): the author of a local link reads it back without configuring anything.

A link with a '.' or '..' component is under nothing. A link recorded without a tag could not be
checked for changes: it is refused too (at add time, an object with no tag is not added).
"""

from __future__ import annotations

import logging
import os
import urllib.parse

from dsfs import paths, retry, settings
from dsfs.errors import (
    AccessDenied,
    CorruptData,
    LinkRefused,
    LocalFileNotFound,
    StaleLink,
    StoreUnavailable,
    UsageError,
)
from dsfs.fsutil import atomic_write
from dsfs.model import LINK_SCHEMES
from dsfs.store import backends, datastores
from dsfs.store.layout import redact

object_tag = backends.object_tag  # shared with remote sources (dsfs.authoring.sources)
ALLOW_ENV = "DSFS_ALLOW_LINKS"

log = logging.getLogger(__name__)
_stores: set[str] = set()  # URLs of the stores this process opened: their own links are allowed


def allow_store(url: str) -> None:
    """Links under this store's URL may be read (dsfs.dataset.open_store calls it)."""
    _stores.add(url)


def _own_roots_path() -> str:
    return os.path.join(settings.state_dir(), "link-roots")


def _own_roots() -> list[str]:
    try:
        with open(_own_roots_path(), encoding="utf-8") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def trust(url: str) -> None:
    """Record `url` (an object or a prefix this user added as links) as allowed on this machine."""
    plain = _plain(url)
    roots = _own_roots()
    if plain is not None and plain not in roots:
        atomic_write(_own_roots_path(), "\n".join(roots + [plain]).encode() + b"\n")


def _plain(url: str) -> str | None:
    """`url` without a trailing '/', or None if its path has a '.' or '..' component (also when
    percent-encoded, which a server may decode): such a URL is under no root."""
    _, sep, rest = url.partition("://")
    if not sep:
        return None
    parts = urllib.parse.unquote(rest).split("/")
    if any(part in (".", "..") for part in parts):
        return None
    return url.rstrip("/") or None


def allowed(url: str) -> bool:
    """True if a link to `url` may be read here (module docstring)."""
    plain = _plain(url)
    if plain is None:
        return False
    roots = list(_stores) + [d.url for d in datastores.all_datastores()] + _own_roots()
    roots += settings.allowed_link_roots()
    for root in filter(None, roots):
        root = root.rstrip("/")
        if plain == root or plain.startswith(root + "/"):
            return True
    return False


def url_to_fs(url: str):
    """(filesystem, path) for an object URL. Inside a registered datastore, that datastore's options
    (endpoint, credentials) are used: manifests hold plain URLs, never the secrets that reach them."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in LINK_SCHEMES:
        raise UsageError(f"unsupported URL {redact(url)!r}: use one of {', '.join(s + '://' for s in LINK_SCHEMES)}")
    datastore = datastores.for_url(url)
    try:
        if datastore is not None:
            fs = datastore.store().fs
            return fs, fs._strip_protocol(url)
        import fsspec  # here: every command imports this module, few read a link (~80 ms)

        return fsspec.core.url_to_fs(url)
    except ImportError as exc:
        raise backends.missing_library(scheme, exc) from None
    except ValueError as exc:
        raise UsageError(f"cannot open {redact(url)}: {exc}") from None


def _info(fs, path: str, url: str) -> dict:
    try:
        return fs.info(path)
    except FileNotFoundError:
        raise LocalFileNotFound(f"no object at {redact(url)}") from None
    except Exception as exc:  # backends raise their own errors for an unreachable endpoint
        if backends.denied(exc):
            raise backends.caused(AccessDenied(f"access denied to {redact(url)}"), exc, []) from None
        why = backends.scrub(f"{type(exc).__name__}: {str(exc)[:200]}", [])
        raise backends.caused(StoreUnavailable(f"cannot reach {redact(url)}: {why}"), exc, []) from None


def list_objects(url: str, wildcard=None, recursive: bool = True):
    """(relative name, url, size, tag, mtime_ns) of the object at url (or `datastore:NAME/PATH`),
    or of every object under it."""
    if url.startswith(datastores.PREFIX):
        url = datastores.path_url(url)
    if _plain(url) is None and "://" in url:
        raise UsageError(f"{redact(url)}: write link URLs without '.' or '..' components")
    fs, path = url_to_fs(url)
    info = _info(fs, path, url)
    wildcards = paths.as_list(wildcard)
    protocol = url.split("://", 1)[0]
    if info["type"] != "directory":
        name = path.rstrip("/").rsplit("/", 1)[-1]
        yield name, url, info["size"], _tag(info, url), _mtime_ns(info)
        return
    try:
        found = fs.find(path, detail=True, maxdepth=None if recursive else 1)
    except Exception as exc:
        kind = AccessDenied if backends.denied(exc) else StoreUnavailable
        raise backends.caused(kind(f"cannot list {redact(url)}: {type(exc).__name__}"), exc, []) from None
    root = path.rstrip("/") + "/"
    for full, item in sorted(found.items()):
        if item.get("type") == "directory":
            continue
        rel = full[len(root):] if full.startswith(root) else full.rsplit("/", 1)[-1]
        if wildcards and not any(paths.glob_match(rel.rsplit("/", 1)[-1], w) for w in wildcards):
            continue
        yield rel, f"{protocol}://{full}", item["size"], _tag(item, f"{protocol}://{full}"), _mtime_ns(item)


def _tag(info: dict, url: str) -> str:
    """The tag recorded at add time; an object without one could never be checked for changes."""
    tag = object_tag(info)
    if not tag:
        raise UsageError(f"cannot add {redact(url)}: its store gives it no ETag, version or modification "
                         f"time, so a later change could not be detected")
    return tag


def _mtime_ns(info: dict) -> int:
    value = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    if value is None:
        return 0
    if hasattr(value, "timestamp"):
        return int(value.timestamp() * 1e9)
    try:
        return int(float(value) * 1e9)
    except (TypeError, ValueError):
        return 0


def checked(url: str, etag: str, size: int, label: str):
    """(fs, path) of an external object, after checking that it may be read here (`allowed`),
    that it was recorded with a tag, and that it is still what was added."""
    if not allowed(url):
        raise LinkRefused(f"{label}: external link {redact(url)} is not under this store or a registered "
                          f"datastore; refusing to read it. If you trust this store's links there, register "
                          f"a datastore for that location or set {ALLOW_ENV}=<URL prefix>")
    if not etag:
        raise CorruptData(f"{label}: external link {redact(url)} was recorded without a tag, so a change "
                          f"at its source could not be seen; refusing to read it")
    fs, path = url_to_fs(url)
    try:
        info = _info(fs, path, url)
    except LocalFileNotFound:
        raise StaleLink(f"{label}: external object {redact(url)} is gone") from None
    tag = object_tag(info)
    if tag != etag or info["size"] != size:
        raise StaleLink(f"{label}: external object {redact(url)} changed since it was added "
                        f"(size {size} -> {info['size']}, tag {etag or '-'} -> {tag or '-'})")
    return fs, path


def read_range(fs, path: str, start: int, end: int, url: str, delays=None) -> bytes:
    """Bytes [start, end) of an external object, retried by dsfs.retry's policy (a refusal is not)."""
    def attempt() -> bytes:
        try:
            data = fs.cat_file(path, start=start, end=end)
        except FileNotFoundError:
            raise StaleLink(f"external object {redact(url)} is gone") from None
        except Exception as exc:
            if backends.denied(exc):
                raise backends.caused(AccessDenied(f"access denied to {redact(url)}"), exc, []) from None
            why = backends.scrub(f"{type(exc).__name__}: {str(exc)[:200]}", [])
            raise backends.caused(StoreUnavailable(f"cannot read {redact(url)}: {why}"), exc, []) from None
        if len(data) != end - start:
            raise StoreUnavailable(f"cannot read {redact(url)}: short read ({len(data)} of {end - start} bytes)")
        return data

    def still_listening() -> None:  # a refused connection is an answer: no use retrying
        backends.probe(backends.endpoint(url.split("://", 1)[0], fs), redact(url), remember=False)

    what = f"read of {redact(url)} [{start}, {end})"
    log.debug("fetch %s", what)
    return retry.call(attempt, what, delays=delays, between=still_listening)

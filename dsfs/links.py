"""External files: objects that stay in their own bucket and are read through fsspec on demand.

At add time each object's size and tag (ETag, generation, version id, or mtime for file://) are
recorded. Before bytes are served, the object's current tag is compared with the recorded one: an
object changed since is `StaleLink` (ESTALE on a mount) instead of a silent mix of versions.
External bytes are not content-addressed, so they are not deduplicated or cached as chunks.
"""

from __future__ import annotations

import fnmatch
import time

import fsspec

from . import datastores
from .errors import LocalFileNotFound, StaleLink, StoreUnavailable, UsageError
from .model import LINK_SCHEMES
from .store import redact

TAG_KEYS = ("VersionId", "version_id", "generation", "ETag", "etag", "mtime", "LastModified", "last_modified")
RETRY_DELAYS = (0.2, 0.5, 1.0)


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
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise UsageError(f"cannot open {redact(url)}: {exc}") from None


def object_tag(info: dict) -> str:
    for key in TAG_KEYS:
        if info.get(key) not in (None, ""):
            return f"{key}:{info[key]}"
    return ""


def _info(fs, path: str, url: str) -> dict:
    try:
        return fs.info(path)
    except FileNotFoundError:
        raise LocalFileNotFound(f"no object at {redact(url)}") from None
    except (OSError, Exception) as exc:  # backends raise their own errors for an unreachable endpoint
        if isinstance(exc, PermissionError):
            raise StoreUnavailable(f"access denied to {redact(url)}") from None
        raise StoreUnavailable(f"cannot reach {redact(url)}: {type(exc).__name__}: {str(exc)[:200]}") from None


def list_objects(url: str, wildcard=None, recursive: bool = True):
    """(relative name, url, size, tag, mtime_ns) of the object at url (or `datastore:NAME/PATH`),
    or of every object under it."""
    if url.startswith(datastores.PREFIX):
        url = datastores.path_url(url)
    fs, path = url_to_fs(url)
    info = _info(fs, path, url)
    wildcards = [wildcard] if isinstance(wildcard, str) else list(wildcard or [])
    protocol = url.split("://", 1)[0]
    if info["type"] != "directory":
        name = path.rstrip("/").rsplit("/", 1)[-1]
        yield name, url, info["size"], object_tag(info), _mtime_ns(info)
        return
    try:
        found = fs.find(path, detail=True, maxdepth=None if recursive else 1)
    except Exception as exc:
        raise StoreUnavailable(f"cannot list {redact(url)}: {type(exc).__name__}") from None
    root = path.rstrip("/") + "/"
    for full, item in sorted(found.items()):
        if item.get("type") == "directory":
            continue
        rel = full[len(root):] if full.startswith(root) else full.rsplit("/", 1)[-1]
        if wildcards and not any(fnmatch.fnmatchcase(rel.rsplit("/", 1)[-1], w) for w in wildcards):
            continue
        yield rel, f"{protocol}://{full}", item["size"], object_tag(item), _mtime_ns(item)


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
    """(fs, path) of an external object, after checking it is still what was added."""
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


def read_range(fs, path: str, start: int, end: int, url: str) -> bytes:
    for attempt in range(len(RETRY_DELAYS) + 1):
        try:
            data = fs.cat_file(path, start=start, end=end)
            if len(data) == end - start:
                return data
            error = f"short read ({len(data)} of {end - start} bytes)"
        except FileNotFoundError:
            raise StaleLink(f"external object {redact(url)} is gone") from None
        except Exception as exc:
            error = f"{type(exc).__name__}: {str(exc)[:200]}"
        if attempt < len(RETRY_DELAYS):
            time.sleep(RETRY_DELAYS[attempt])
    raise StoreUnavailable(f"cannot read {redact(url)}: {error}")

"""`dsfs://`: dataset versions as a read-only fsspec filesystem, for the readers that open files
through fsspec (pandas, pyarrow, Hugging Face datasets, a torch Dataset calling `fsspec.open`) on
machines that cannot mount. Registered through the `fsspec.specs` entry point, so
`fsspec.filesystem("dsfs")` and every `dsfs://` URL work once dsfs is installed.

It is a thin adapter, as the mount's `fuse_ops` is: `node.view.View` decides and serves (verified
bytes through the node cache shared with mounts and downloads), this module only translates.

URLs (the split of a URL into dataset and path is made once per dataset part, with the rules below):

    dsfs://<32-hex id>/path/in/version
    dsfs://project/name@version/path/in/version
    dsfs://project/name/path/in/version        the latest final version, pinned (see below)

- A first part of 32 hex digits is a version id (as in `catalog.resolve`, ids come first).
- Otherwise the dataset is `project/name`, where a project may have several '/'-separated parts
  (dsfs.paths: labels never hold '/' or '@'). Parts are read from the left; the name is the first
  part that either holds '@' (name@version: no project part can hold one) or, with the parts
  before it as the project, has version numbers claimed in the store (one LIST, as `resolve`
  does). So `vision/2024/cats/img/a.jpg` is `vision/2024` + `cats` when no dataset `vision/2024`
  exists, and a version (`@1.0.0`) ends the dataset part without asking the store. The shortest
  split wins: it costs one request for the common one-part project, where trying the longest
  first would cost one per folder of the path.
- Each project and name part is %-decoded ('%2F' is a '/' inside that part, '%25' a '%'), so
  `vision%2F2024/cats` names project `vision/2024` without any lookup. The path in the version is
  taken as written (NFC-normalized), like an s3fs key: names fsspec returns come back unchanged.
- Names returned by `ls`, `find`, `glob` keep the dataset part exactly as it was written, so that
  they can be passed back (`fs.ls("vision/cats")` -> `vision/cats/images`, ...).

Pinning: a dataset part, once resolved, is pinned for the life of the filesystem object: a
training job must not switch versions mid-epoch. A new version is seen by a new instance
(`fsspec.filesystem("dsfs", skip_instance_cache=True)`); fsspec reuses instances per thread and
set of options (and environment: `_Defaults`), and forgets them in a forked child. A pickled
instance (spawned workers, dask) carries its pins. `Dataset.fs` is a filesystem pinned to one
version whose paths are relative to its root (the `dataset` option).

Processes: a forked child (a DataLoader worker) must not use its parent's thread pools or an async
backend's event loop (s3fs refuses), so the store, the node cache and the views are made per
process: an instance notices the pid change and opens its own (its pins stay). The node cache is
fork-safe on its own (dsfs.node.cache, "Forks"): the child opens the same cache folder again.

Errors: a dsfs error becomes the OSError its errno names, in `_os_error`, the one place: an unknown
dataset or path is FileNotFoundError naming the URL; corrupt data OSError(EIO) naming the file;
an unreachable store OSError naming the store (its display URL: no secrets). Every write is
PermissionError(EROFS): versions are immutable.
"""

from __future__ import annotations

import datetime
import errno
import logging
import os
import stat
import threading
import urllib.parse
from contextlib import contextmanager

from fsspec.caching import BaseCache, register_cache
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from dsfs import catalog, paths, settings
from dsfs.errors import DatasetNotFound, DsfsError, InvalidPath
from dsfs.lineage.viewindex import Inode
from dsfs.model import ID_RE, VersionInfo
from dsfs.node.cache import Cache
from dsfs.node.view import OpenFile, View
from dsfs.store import datastores
from dsfs.store.layout import Store

log = logging.getLogger(__name__)

PROTOCOL = "dsfs"
BLOCK_SIZE = 64 << 10  # what an open file reads around a small read (node.cache.BLOCK: what a random read verifies)

_opening: dict[int, threading.Lock] = {}  # pid -> the lock held while that process's store and cache are opened
# (per process: a lock another thread held at a fork would stay held in the child)


class _ProcessState:
    """What one process reads with: the store, the node's cache and a View per version."""

    def __init__(self, store: Store, cache: Cache):
        self.pid = os.getpid()
        self.store = store
        self.cache = cache
        self.views: dict[str, View] = {}
        self.lock = threading.Lock()

    def view(self, dataset_id: str) -> View:
        with self.lock:  # one View per version: its chunk memory and read-ahead serve every reader
            view = self.views.get(dataset_id)
            if view is None:
                view = self.views[dataset_id] = View(self.store, self.cache, dataset_id)
            return view


class _Defaults:
    """What an instance given no `store` or `cache_dir` opens, as the environment names it now
    (DSFS_STORE, DSFS_DATASTORE, the XDG dirs of the datastores' config and of the cache). fsspec
    keys its instance cache on it, so that a process whose DSFS_STORE changed (a notebook, a test)
    gets a new instance rather than the one reading the store named before; its pins go with it."""

    def __get__(self, instance, owner) -> tuple:
        return (settings.env_store(), settings.env_datastore(), settings.config_path(), settings.data_dir(),
                settings.cache_dir(), settings.cache_size())


class DsfsFileSystem(AbstractFileSystem):
    """Final dataset versions, read-only, as an fsspec filesystem (see the module doc for URLs).

    Options: `store` (a URL, `datastore:NAME` or a Store), or `datastore` (a name): by default the
    store every dsfs command uses; `cache_dir` and `cache_size`: the node cache (default: dsfs's);
    `dataset`: pin the filesystem to one version (an id or `project/name[@version]`), whose paths
    are then relative to its root."""

    protocol = PROTOCOL
    root_marker = ""
    _extra_tokenize_attributes = ("_defaults",)
    _defaults = _Defaults()

    def __init__(self, store: str | Store | None = None, datastore: str | None = None,
                 cache_dir: str | None = None, cache_size: str | int | None = None,
                 dataset: str | None = None, **kwargs):
        super().__init__(**kwargs)
        if store is not None and datastore is not None:
            raise ValueError("give `store` or `datastore`, not both")
        self.store_ref = datastores.PREFIX + datastore if datastore else store
        self.cache_dir = cache_dir
        self.cache_size = cache_size
        self.dataset = dataset
        self.pins: dict[str, VersionInfo] = {}  # a dataset part as written ('' when pinned) -> its version
        self._state: _ProcessState | None = None

    def __reduce__(self):
        return _restored, (type(self), self.storage_args, self.storage_options, dict(self.pins))

    # -- this process's store, cache and views -------------------------------------------------

    def _process(self) -> _ProcessState:
        state = self._state
        if state is None or state.pid != os.getpid():
            with _opening.setdefault(os.getpid(), threading.Lock()):
                state = self._state
                if state is None or state.pid != os.getpid():
                    # (a Store given makes its own backend in a forked child: Store.fs)
                    state = self._state = _ProcessState(catalog.open_store(self.store_ref),
                                                        Cache(self.cache_dir, self.cache_size))
        return state

    # -- where a path leads --------------------------------------------------------------------

    def _url(self, path: str) -> str:
        """`path` as a URL, for messages."""
        path = self._strip_protocol(path)
        return f"{PROTOCOL}://{self.dataset}/{path}" if self.dataset is not None else f"{PROTOCOL}://{path}"

    @contextmanager
    def _errors(self, path: str):
        try:
            yield
        except DsfsError as exc:
            raise _os_error(exc, self._url(path)) from None

    def _locate(self, path: str) -> tuple[str, VersionInfo, str]:
        """(the dataset part of `path` as written, the version it names, the path inside that)."""
        parts = [part for part in self._strip_protocol(path).split("/") if part]
        if self.dataset is not None:
            pinned = self.dataset
            return "", self._pin("", lambda store: catalog.resolve(store, pinned)), "/".join(parts)
        if not parts:
            raise DatasetNotFound("name a dataset: dsfs://project/name[@version]/path or dsfs://<id>/path")
        if ID_RE.match(parts[0]):
            return parts[0], self._pin(parts[0], lambda store: store.read_version(parts[0])), "/".join(parts[1:])
        for end in range(2, len(parts) + 1):  # a dataset part pinned before, the shortest first (the rule's order)
            if (key := "/".join(parts[:end])) in self.pins:
                return key, self.pins[key], "/".join(parts[end:])
        end, project, name, version = self._dataset_part(parts)
        key = "/".join(parts[:end])
        info = self._pin(key, lambda store: catalog.resolve(store, project=project, name=name, version=version))
        return key, info, "/".join(parts[end:])

    def _dataset_part(self, parts: list[str]) -> tuple[int, str, str, str | None]:
        """(how many parts name the dataset, project, name, version or None): the module doc's rule."""
        if "@" not in parts[0]:
            store = self._process().store
            for end in range(1, len(parts)):
                project = "/".join(urllib.parse.unquote(part) for part in parts[:end])
                name, at, version = parts[end].partition("@")
                name = urllib.parse.unquote(name)
                if at:
                    return end + 1, project, name, urllib.parse.unquote(version) or None
                if store.claimed_version_numbers(project, name):
                    return end + 1, project, name, None
        raise DatasetNotFound(f"no dataset at the start of {'/'.join(parts)!r}: write project/name[@version]/path "
                              f"(a '/' inside a project part as %2F) or <id>/path")

    def _pin(self, key: str, find) -> VersionInfo:
        info = self.pins.get(key)
        if info is None:
            info = find(self._process().store)
            if not info.is_final:
                raise DatasetNotFound(f"dataset {info.ref} ({info.id}) is a draft: only final versions can be read")
            info = self.pins.setdefault(key, info)  # two threads resolving at once: the first pin holds
        return info

    def _entry(self, path: str) -> tuple[View, str, str, Inode]:
        """(the version's View, the name fsspec gives `path`, its path inside the version, its Inode)."""
        prefix, info, inner = self._locate(path)
        inner = paths.normalize(inner) if inner else ""
        view = self._process().view(info.id)
        return view, "/".join(filter(None, (prefix, inner))), inner, view.resolve(inner)

    # -- reading -------------------------------------------------------------------------------

    def ls(self, path, detail=True, **kwargs):
        """One folder's entries from the view index (never the whole version), or a file's own."""
        with self._errors(path):
            view, name, _, node = self._entry(path)
            if node.is_dir:
                listing = [_described("/".join(filter(None, (name, child_name))), child)
                           for _, child_name, child in view.readdir(node.ino)]
            else:
                listing = [_described(name, node)]
        return listing if detail else [entry["name"] for entry in listing]

    def info(self, path, **kwargs):
        with self._errors(path):
            _, name, _, node = self._entry(path)
        return _described(name, node)

    def exists(self, path, **kwargs):
        """Only "not found" is False: a store that cannot be reached is an error, not an answer."""
        try:
            self.info(path)
            return True
        except FileNotFoundError:
            return False

    def isdir(self, path):
        try:
            return self.info(path)["type"] == "directory"
        except FileNotFoundError:
            return False

    def isfile(self, path):
        try:
            return self.info(path)["type"] == "file"
        except FileNotFoundError:
            return False

    def walk(self, path, maxdepth=None, topdown=True, on_error="omit", **kwargs):
        """fsspec's walk, except that "omit" omits only folders not found: corrupt data or a store
        that cannot be reached is raised (an empty listing would read as an empty dataset)."""
        return super().walk(path, maxdepth, topdown, _omit_not_found if on_error == "omit" else on_error, **kwargs)

    def modified(self, path):
        """info's mtime as a datetime (DuckDB asks): a file's as it was added, a folder's the version's."""
        return datetime.datetime.fromtimestamp(self.info(path)["mtime"], datetime.UTC)

    created = modified

    def ukey(self, path):
        """A file's blake3 digest (hex): a version never changes, so this is its content's key."""
        return self.info(path).get("digest") or super().ukey(path)

    def checksum(self, path):
        return int(self.ukey(path), 16)

    def cat_file(self, path, start=None, end=None, **kwargs):
        with self._errors(path):
            view, _, inner, node = self._entry(path)
            if node.is_dir:
                raise IsADirectoryError(errno.EISDIR, "is a folder", self._url(path))
            start, end = _span(node.size, start, end)
            handle = view.open(node.ino, inner)
            try:
                return bytes(view.read(handle, start, end - start))
            finally:
                view.release(handle)

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        if mode != "rb":
            raise _read_only(f"open({mode!r})")
        with self._errors(path):
            view, name, inner, node = self._entry(path)
            if node.is_dir:
                raise IsADirectoryError(errno.EISDIR, "is a folder", self._url(path))
            return DsfsFile(self, name, view, inner, node, block_size or BLOCK_SIZE, cache_options, **kwargs)

    # -- writing: refused ----------------------------------------------------------------------

    def _refuse(self, *args, **kwargs):
        raise _read_only("writing")

    mkdir = makedirs = rmdir = touch = _refuse
    pipe = pipe_file = put = put_file = _refuse
    rm = rm_file = _rm = _refuse
    mv = copy = cp_file = _refuse


class _Blocks(BaseCache):
    """DsfsFile's buffer (its default `cache_type`, "dsfs-blocks"). A read of a block or more goes
    straight to the View, whose memory of verified chunks and read-ahead window (the mount's) serve
    it: fsspec's "readahead" would copy every byte twice more and read a block past each read, which
    a random reader (pyarrow reading column chunks) throws away. A smaller read is served from the
    block it starts in (readline, a parser's small reads)."""

    name = "dsfs-blocks"

    def __init__(self, blocksize: int, fetcher, size: int):
        super().__init__(blocksize, fetcher, size)
        self.block, self.start = b"", 0

    def _fetch(self, start: int | None, end: int | None) -> bytes:
        start = 0 if start is None else start
        end = self.size if end is None else min(end, self.size)
        if start >= end:
            return b""
        if self.start <= start and end <= self.start + len(self.block):
            self.hit_count += 1
            return self.block[start - self.start:end - self.start]
        self.miss_count += 1
        if end - start >= self.blocksize:
            self.total_requested_bytes += end - start
            return self.fetcher(start, end)
        self.start = start - start % self.blocksize  # (aligned: a random read checks whole blocks)
        self.block = self.fetcher(self.start, min(self.size, max(end, self.start + self.blocksize)))
        self.total_requested_bytes += len(self.block)
        return self.block[start - self.start:end - self.start]


register_cache(_Blocks)


class DsfsFile(AbstractBufferedFile):
    """A file of a version open for reading: fsspec's buffered file over `View.read`, which
    verifies every byte; `_Blocks` by default (`cache_type` and `block_size` as usual otherwise).
    Read in a forked child, it is opened again through the child's own view."""

    _handle: OpenFile | None = None

    def __init__(self, fs: DsfsFileSystem, name: str, view: View, inner: str, node: Inode, block_size: int,
                 cache_options: dict | None, cache_type: str = _Blocks.name, **kwargs):
        self.view, self.inner, self.node = view, inner, node
        self._handle = view.open(node.ino, inner)
        self.pid = os.getpid()
        super().__init__(fs, name, mode="rb", block_size=block_size, cache_options=cache_options,
                         cache_type=cache_type, size=node.size, **kwargs)
        self.details = _described(name, node)

    def _fetch_range(self, start: int, end: int) -> bytes:
        with self.fs._errors(self.path):
            if self.pid != os.getpid():  # the parent's view and its pins belong to the parent
                self.view = self.fs._process().view(self.view.dataset_id)
                self._handle = self.view.open(self.node.ino, self.inner)
                self.pid = os.getpid()
            assert self._handle is not None, "a closed file is not read (fsspec checks)"
            return bytes(self.view.read(self._handle, start, end - start))

    def close(self) -> None:
        if self._handle is not None and self.pid == os.getpid():
            self.view.release(self._handle)
        self._handle = None
        super().close()


def _restored(cls: type[DsfsFileSystem], args: tuple, options: dict, pins: dict[str, VersionInfo]) -> DsfsFileSystem:
    """An unpickled filesystem: a new instance with the pins of the one pickled."""
    fs = cls(*args, **options, skip_instance_cache=True)
    fs.pins.update(pins)
    return fs


def _os_error(exc: DsfsError, url: str) -> OSError:
    """The OSError fsspec's callers expect for a dsfs error: the only place they are translated (the
    mount's is fuse_ops._errno_of). OSError picks the subclass of the errno: ENOENT is
    FileNotFoundError. A path that breaks the path rule is not found: no version can hold it."""
    code = errno.ENOENT if isinstance(exc, InvalidPath) else exc.errno
    return OSError(code, str(exc), url)


def _read_only(what: str) -> PermissionError:
    return PermissionError(errno.EROFS, f"{PROTOCOL}:// is read-only: a dataset version never changes ({what} refused)")


def _described(name: str, node: Inode) -> dict:
    """fsspec's info dict: name, size, type; mtime (seconds), mode (st_mode), and a file's digest."""
    described = {"name": name, "size": 0 if node.is_dir else node.size, "type": "directory" if node.is_dir else "file",
                 "mtime": node.mtime_ns / 1e9, "mode": (stat.S_IFDIR if node.is_dir else stat.S_IFREG) | node.mode}
    if not node.is_dir:
        described["digest"] = node.digest.hex()
    return described


def _span(size: int, start: int | None, end: int | None) -> tuple[int, int]:
    """fsspec's byte range of a file of `size` bytes: None is its start or end, a negative offset
    counts from its end; clamped to the file."""
    start = 0 if start is None else start + size if start < 0 else start
    end = size if end is None else end + size if end < 0 else end
    start = max(0, start)
    return start, max(start, min(end, size))


def _omit_not_found(error: OSError) -> None:
    if not isinstance(error, FileNotFoundError):
        raise error

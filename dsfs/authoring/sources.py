"""Where an upload reads a file: a local path, or an object in a bucket (`dsfs add --files s3://...`).

A remote source (s3://, gs://, az://, file://..., or `datastore:NAME/PATH` resolved to its URL) is
copied into the version, as a local file is; `--links` is the other way, which leaves the object
where it is. At add time the object's URL, size, tag (ETag, generation, version id or mtime) and
modification time are recorded in the draft, in the column that holds a local file's path, as
"URL\\0size\\0tag\\0mtime" (a local path is absolute and never holds a NUL, so the two never meet):
never the credentials that reach it. At upload those come from where dsfs's stores get theirs: the
registered datastore whose URL covers the object (its options, `env:` values read by the process
that holds the draft and handed to the workers with each task, as a store's are), else the
backend's own environment (AWS_* variables, a credentials file, a metadata service) of the process
that reads.

An upload streams the object through fsspec in ranged reads of READ_BLOCK (never a whole object in
memory) and compares its size and tag with the recorded ones before the first byte and after the
last: an object changed since it was added fails the upload naming it (FileChanged), as a changed
local file does, and its half-read content is never recorded.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from typing import Any

import fsspec

from dsfs.errors import AccessDenied, FileChanged, LocalFileNotFound, StoreUnavailable
from dsfs.store import backends, datastores
from dsfs.store.layout import Store, redact

READ_BLOCK = 8 << 20  # bytes a ranged read of a remote object asks for (fsspec's read-ahead block)
_SEP = "\0"



def is_url(path: str) -> bool:
    """Whether `add --files` was given an object URL or a datastore path rather than a local path."""
    return path.startswith(datastores.PREFIX) or re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", path) is not None


def remote(url: str, size: int, tag: str, mtime_ns: int) -> str:
    """What the draft records for a remote source (module docstring)."""
    return _SEP.join((url, str(size), tag, str(mtime_ns)))


def parse(local: str) -> tuple[str, int, str, int] | None:
    """(url, size, tag, mtime_ns) of a recorded remote source; None for a local path."""
    if _SEP not in local:
        return None
    url, size, tag, mtime_ns = local.split(_SEP, 3)
    return url, int(size), tag, int(mtime_ns)


def shown(local: str) -> str:
    """A recorded source as messages name it: the path, or the URL without credentials."""
    found = parse(local)
    return local if found is None else redact(found[0])


class Locator:
    """url -> (root, options): the registered datastore whose URL is the longest prefix of `url` and
    its options with `env:` read now, or ("", {}) (the backend's own credentials). The datastores
    are read once (a million objects are not a million reads of the config file)."""

    def __init__(self) -> None:
        self._roots: list[tuple[str, datastores.Datastore]] | None = None
        self._options: dict[str, dict] = {}

    def __call__(self, url: str) -> tuple[str, dict]:
        if self._roots is None:
            self._roots = sorted(((d.url.rstrip("/") + "/", d) for d in datastores.all_datastores()),
                                 key=lambda item: -len(item[0]))
        for root, datastore in self._roots:
            if url.startswith(root):
                if root not in self._options:
                    self._options[root] = datastore.resolved_options()
                return root, self._options[root]
        return "", {}


def fixed(roots: dict[str, dict]) -> Callable[[str], tuple[str, dict]]:
    """A task's Locator: the roots and options its driver found for its files."""
    ordered = sorted(roots, key=len, reverse=True)

    def locate(url: str) -> tuple[str, dict]:
        for root in ordered:
            if url.startswith(root):
                return root, roots[root]
        return "", {}
    return locate


class Source:
    """One file to read, open: `file` (binary, sequential reads), `size`, `mtime_ns`, `executable`;
    `read_all()` for a small one; `check(total)` after the last byte raises FileChanged if it changed
    while read. A context manager."""

    file: Any
    stream: Any  # what the chunker reads: the file, or the source itself (its errors translated)
    size: int
    mtime_ns: int
    executable: bool

    def check(self, total: int) -> None:
        raise NotImplementedError

    def read_all(self) -> bytes:
        return self.stream.read()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


class LocalSource(Source):
    """A local file (dsfs.authoring.ingest's rules: a regular file, unchanged in size, mtime and inode
    from before the first byte to after the last)."""

    def __init__(self, local_path: str, dataset_path: str, opener):
        self.path = local_path
        self.fd, self.before = opener(local_path, dataset_path)  # (a descriptor, its fstat)
        self.size = self.before.st_size
        self.mtime_ns = self.before.st_mtime_ns
        self.executable = bool(self.before.st_mode & 0o111)

    @functools.cached_property
    def file(self):  # only for a file the chunker streams: a buffered file costs an fstat and a read more
        return os.fdopen(self.fd, "rb", closefd=False)

    @property
    def stream(self):
        return self.file

    def read_all(self) -> bytes:
        """A small file's bytes, read with the descriptor: one read in the common case, where a
        buffered file made for it cost an fstat and two reads (with the fstat saved at open, close
        of 100,000 files of 8 bytes: 11.2-11.8 -> 8.7-9.7 s in alternating runs)."""
        data = os.read(self.fd, self.size + 1)
        while 0 < len(data) < self.size and (more := os.read(self.fd, self.size + 1 - len(data))):
            data += more  # a short read (a network file system): a changed size is check()'s
        return data

    def __exit__(self, *exc) -> None:
        if "file" in self.__dict__:
            self.file.close()
        os.close(self.fd)

    def check(self, total: int) -> None:
        before = self.before
        after = os.fstat(self.fd)
        try:
            again = os.stat(self.path)
        except FileNotFoundError:
            again = None
        if (total != before.st_size or (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns)
                or again is None
                or (again.st_ino, again.st_size, again.st_mtime_ns)
                != (before.st_ino, before.st_size, before.st_mtime_ns)):
            raise FileChanged(f"{self.path} changed while it was being uploaded; nothing of it was "
                              f"recorded. Run the upload again once it is stable")


class RemoteSource(Source):
    """An object read through fsspec (module docstring)."""

    def __init__(self, recorded: tuple[str, int, str, int], dataset_path: str,
                 locate: Callable[[str], tuple[str, dict]]):
        self.url, self.size, self.tag, self.mtime_ns = recorded
        self.dataset_path = dataset_path
        self.executable = False
        root, options = locate(self.url)
        try:
            self.fs = Store(root.rstrip("/"), **dict(options)).fs if root else fsspec.core.url_to_fs(self.url)[0]
        except ImportError as exc:
            raise backends.missing_library(self.url.split("://", 1)[0], exc) from None
        self.path = self.fs._strip_protocol(self.url)
        self._unchanged("since it was added")
        try:
            self.file = self.fs.open(self.path, "rb", block_size=READ_BLOCK)
            self.stream = self
        except Exception as exc:  # noqa: BLE001 - each backend has its own errors
            raise self._failed("open", exc) from None

    def _unchanged(self, when: str) -> None:
        shown_url = redact(self.url)
        again = f"add it again or `dsfs remove --files {self.dataset_path}`"
        try:
            info = self.fs.info(self.path)
        except FileNotFoundError:
            raise LocalFileNotFound(f"{shown_url} (added as {self.dataset_path}) no longer exists; {again}") from None
        except Exception as exc:  # noqa: BLE001
            raise self._failed("look up", exc) from None
        tag = backends.object_tag(info)
        if info.get("size") != self.size or tag != self.tag:
            raise FileChanged(f"{shown_url} (added as {self.dataset_path}) changed {when} (size {self.size} -> "
                              f"{info.get('size')}, tag {self.tag} -> {tag or '-'}); nothing of it was recorded: "
                              f"{again}")

    def _failed(self, what: str, exc: BaseException):
        shown_url = redact(self.url)
        if backends.denied(exc):
            return backends.caused(AccessDenied(f"access denied to {shown_url}"), exc, [])
        why = backends.scrub(f"{type(exc).__name__}: {str(exc)[:200]}", [])
        return backends.caused(StoreUnavailable(f"cannot {what} {shown_url}: {why}"), exc, [])

    def read(self, n: int = -1) -> bytes:
        try:
            return self.file.read(n)
        except Exception as exc:  # noqa: BLE001
            raise self._failed("read", exc) from None

    def check(self, total: int) -> None:
        if total != self.size:
            raise FileChanged(f"{redact(self.url)} (added as {self.dataset_path}) gave {total} bytes, not the "
                              f"{self.size} recorded; nothing of it was recorded: add it again")
        self._unchanged("while it was being uploaded")


def open_source(local: str, dataset_path: str, opener, locate: Callable[[str], tuple[str, dict]]) -> Source:
    """The recorded source `local` of `dataset_path`, open for reading; `opener` opens a local file
    (dsfs.authoring.ingest.open_regular), `locate` finds a remote one's credentials (Locator)."""
    recorded = parse(local)
    if recorded is None:
        return LocalSource(local, dataset_path, opener)
    return RemoteSource(recorded, dataset_path, locate)

"""Typed errors: every failure a user can cause or meet, with a message they can act on.

Each error class carries the CLI exit code and the errno a FUSE handler answers with. They are
converted in exactly one place each: `dsfs.cli` turns a `DsfsError` into one line on stderr and its
exit code (no traceback); the mount turns it into `FUSEError(errno)`. Anything that is not a
`DsfsError` is a bug and keeps its traceback.

An error made from a backend's exception is raised `from None`, so no traceback or message carries a
secret; its `cause` keeps a scrubbed text of that exception for the debug log.

Store failures are three classes, all exit 7: `StoreUnavailable` (no answer, or a server error: the
only one dsfs.retry tries again), `AccessDenied` and `StoreReadOnly` (the store answered no: the
same request would be refused again, so they are never retried).
"""

from __future__ import annotations

import errno as _errno


class DsfsError(Exception):
    """Base class: a failure with a one-line message meant for the user."""

    exit_code = 1
    errno = _errno.EIO
    cause: str | None = None  # a scrubbed text of the exception this one replaced: for logs, not users


class UsageError(DsfsError):
    """The request itself is wrong (bad argument, nothing matched, no current dataset)."""

    exit_code = 2
    errno = _errno.EINVAL


class InvalidPath(UsageError):
    """A dataset path that is empty, absolute, or has '.', '..' or NUL components."""


class LocalFileNotFound(UsageError):
    """A local file or folder named on the command line does not exist."""

    errno = _errno.ENOENT


class PathNotFound(UsageError):
    """No such file or folder inside a dataset."""

    errno = _errno.ENOENT


class DatasetNotFound(DsfsError):
    """No dataset matches an id or a project/name[@version] reference."""

    exit_code = 3
    errno = _errno.ENOENT


class InvalidState(DsfsError):
    """The operation does not fit the dataset's state (modifying a final version, closing twice...)."""

    exit_code = 4
    errno = _errno.EROFS


class DatasetInUse(InvalidState):
    """The dataset is a parent of other versions."""


class Conflict(DsfsError):
    """Two things claim the same name: a version number, a path that is both file and folder."""

    exit_code = 5
    errno = _errno.EEXIST


class FileChanged(DsfsError):
    """A local file changed while it was read for upload."""

    exit_code = 6
    errno = _errno.EAGAIN


class StoreUnavailable(DsfsError):
    """The store cannot be reached or does not exist."""

    exit_code = 7
    errno = _errno.EIO


class StoreReadOnly(DsfsError):
    """The store refuses writes (permissions, read-only filesystem). Not retried."""

    exit_code = 7
    errno = _errno.EROFS


class CorruptData(DsfsError):
    """Bytes from the store or the cache fail their digest or cannot be decoded."""

    exit_code = 8
    errno = _errno.EIO


class DiskFull(DsfsError):
    """No space left on a device dsfs writes to: a download target, the node's cache, a file:// store."""

    exit_code = 9
    errno = _errno.ENOSPC


class StaleLink(DsfsError):
    """An external file changed at its source since it was added to the version."""

    exit_code = 10
    errno = _errno.ESTALE


class CorruptChunk(CorruptData):
    """A chunk's bytes do not match its digest."""


class AccessDenied(DsfsError):
    """The store refuses these credentials, or there are none (the message says what to set). Not
    retried."""

    exit_code = 7
    errno = _errno.EACCES


class ExecutorUnavailable(DsfsError):
    """The executor of an upload cannot run its tasks: a Dask scheduler that does not answer, a pool
    whose workers are gone, a task that failed on every try (dsfs.authoring.distributed)."""

    exit_code = 7
    errno = _errno.EIO


class LinkRefused(UsageError):
    """An external link points where this consumer has not allowed links to be read (dsfs.node.links)."""

    errno = _errno.EACCES


class DatastoreError(UsageError):
    """A datastore name, its configuration, or a value it refers to (env:VAR) is wrong."""


class FuseUnavailable(DsfsError):
    """FUSE cannot be used on this machine: no /dev/fuse, no fusermount3, or no pyfuse3."""

    exit_code = 11
    errno = _errno.ENODEV


class MountFailed(DsfsError):
    """The mount daemon stopped before serving; the message is the daemon's own error."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code

"""The local files a command names: a file, a folder or a glob, read by one set of input rules.

`add`, `sync` and `datastore upload` turn what the user named into (dataset path, local path) pairs
here; folders are walked by dsfs.authoring.evolve.scan_folder (its docstring has the rules: UTF-8
names, NFC, symlinks, special files). What is skipped is told on stderr, the library's only output
of its own.
"""

from __future__ import annotations

import os
import sys
import unicodedata

from wcmatch import glob as wcglob

from dsfs import paths
from dsfs.authoring import sources
from dsfs.authoring.evolve import is_utf8, printable, scan_folder
from dsfs.errors import LocalFileNotFound


def tell(message: str) -> None:
    """A writer waiting for a gc says so on stderr, and authoring names the local files it skipped
    (the only output of the library's own)."""
    print(f"dsfs: {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    tell(f"warning: {message}")


def local_size(local_path: str) -> int:
    """The size of a draft's source: a local file's now, a remote object's as recorded (0 if gone)."""
    remote = sources.parse(local_path)
    if remote is not None:
        return remote[1]
    try:
        return os.path.getsize(local_path)
    except OSError:
        return 0


def local_files(path: str, wildcard, recursive: bool, follow_symlinks: bool = False, warn=warn):
    """(relative dataset path, absolute local path) for a local file, folder, or glob. A file named
    on the command line (or matched by a glob) is taken as named, following a symlink; a folder is
    read by dsfs.authoring.evolve.scan_folder's input rules."""
    wildcards = paths.as_list(wildcard)
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        roots = [(path, "")]
    elif os.path.isfile(path):
        if not wildcards or paths.matches(os.path.basename(path), wildcards):
            yield from _named_file(path, warn)
        return
    elif paths.is_glob(path):
        roots = []
        for match in sorted(wcglob.glob(path, flags=paths.GLOB_FLAGS)):
            if os.path.isfile(match):
                if not wildcards or paths.matches(os.path.basename(match), wildcards):
                    yield from _named_file(match, warn)
            elif os.path.isdir(match):
                name = _usable_name(match, warn)
                if name is not None:
                    roots.append((match, name + "/"))
    elif os.path.lexists(path):
        raise LocalFileNotFound(f"{printable(path)} is not a regular file or folder" +
                                (" (a broken symlink or a symlink loop)" if os.path.islink(path) else ""))
    else:
        raise LocalFileNotFound(f"no such file or folder: {printable(path)}")
    for root, prefix in roots:
        for rel, local, _ in scan_folder(root, prefix, follow_symlinks, warn, recursive):
            if wildcards and not paths.matches(rel[len(prefix):], wildcards):
                continue
            yield rel, local


def _named_file(path: str, warn):
    name = _usable_name(path, warn)
    if name is not None:
        yield name, os.path.realpath(path)


def _usable_name(path: str, warn) -> str | None:
    """The NFC base name of a file or folder named by the user, or None (with a warning) if it is
    not UTF-8 and so cannot be a dataset path."""
    name = os.path.basename(os.path.normpath(path))
    if not is_utf8(name):
        warn(f"skipped {printable(path)}: its name is not valid UTF-8 (rename it to add it)")
        return None
    return unicodedata.normalize("NFC", name)

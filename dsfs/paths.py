"""Dataset paths: the one definition of a valid path inside a dataset.

A dataset path is relative, POSIX ('/'-separated), NFC-normalized, and has no empty, '.', '..' or
NUL-containing component and no leading '/'. Every path read from a manifest or from the command
line goes through `validate` before it is stored, merged or touches a disk; a path that breaks the
rule is refused with `InvalidPath`, never repaired silently (repairing would let two different
manifest entries collapse onto one file).
"""

from __future__ import annotations

import fnmatch
import unicodedata

from .errors import InvalidPath


def validate(path: str) -> str:
    """Return `path` if it is a valid dataset path, else raise InvalidPath naming it."""
    if not isinstance(path, str) or not path:
        raise InvalidPath(f"invalid dataset path {path!r}: empty")
    if "\0" in path:
        raise InvalidPath(f"invalid dataset path {path!r}: contains NUL")
    if path.startswith("/"):
        raise InvalidPath(f"invalid dataset path {path!r}: absolute")
    if not unicodedata.is_normalized("NFC", path):  # a quick check; normalize() copies the string
        raise InvalidPath(f"invalid dataset path {path!r}: not NFC-normalized")
    parts = path.split("/")
    for part in ("", ".", ".."):  # three scans in C, not one Python step per component
        if part in parts:
            raise InvalidPath(f"invalid dataset path {path!r}: component {part!r} not allowed")
    return path


def normalize(path: str) -> str:
    """Turn user input ('./a//b/', 'a\\b' stays as is) into a dataset path, then validate it.

    Only harmless spellings are normalized: NFC, repeated or trailing slashes and './' prefixes.
    '..' is never resolved.
    """
    path = unicodedata.normalize("NFC", path)
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if path.startswith("/"):
        raise InvalidPath(f"invalid dataset path {path!r}: absolute")
    return validate("/".join(parts))


def folder(dataset_path: str | None) -> str:
    """A target folder given by the user ('' for the root: None, '', '.', '/')."""
    return normalize(dataset_path) if dataset_path not in (None, "", ".", "/") else ""


def join(folder: str, name: str) -> str:
    """Join a dataset folder ('' for the root) and a relative path."""
    return normalize(f"{folder}/{name}" if folder else name)


def parents(path: str):
    """Yield every ancestor folder of `path`, nearest first ('a/b/c' -> 'a/b', 'a')."""
    while "/" in path:
        path = path.rsplit("/", 1)[0]
        yield path


def matches(path: str, patterns, recursive: bool = True) -> bool:
    """True if `path` matches any glob in `patterns`.

    A pattern matches the full path, the file name, or (recursive) any folder prefix: 'imgs'
    selects everything under 'imgs/'. Non-recursive patterns only match files directly in the
    pattern's folder.
    """
    for pattern in patterns:
        pattern = pattern.strip("/")
        if fnmatch.fnmatchcase(path, pattern):
            return True
        if "/" not in pattern and fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern):
            if recursive or "/" not in path:
                return True
        if recursive:
            for folder in parents(path):
                if fnmatch.fnmatchcase(folder, pattern):
                    return True
    return False

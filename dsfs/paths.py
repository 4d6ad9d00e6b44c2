"""Dataset paths: the one definition of a valid path inside a dataset.

A dataset path is relative, POSIX ('/'-separated), NFC-normalized, and has no empty, '.', '..' or
NUL-containing component and no leading '/'. Every path read from a manifest or from the command
line goes through `validate` before it is stored, merged or touches a disk; a path that breaks the
rule is refused with `InvalidPath`, never repaired silently (repairing would let two different
manifest entries collapse onto one file).

Labels follow one rule too, because three of them become object names (`names/<project>/<name>/
<version>`, dsfs.store.layout) and all of them are shown in listings and parsed back from references
(`project/name@version`). A name or a tag is a non-empty string with no '/', '@' or control
character (NUL included), no leading or trailing space, that is not '.' or '..', and at most
LABEL_MAX bytes once percent-encoded (the store's spelling of it; one path component on every
filesystem). A project is one or more such parts joined by '/' ("vision/2024"), within the same
length (the store encodes its '/' too). A version is a semantic version (checked by dsfs.dataset)
and a label as well. `label` checks them at every entry point (create, rename, move, sync, squash,
tags); the store refuses '.', '..' and '' again where it builds a key, as a last line of defence.
"""

from __future__ import annotations

import functools
import unicodedata
import urllib.parse
from collections.abc import Iterable

from wcmatch import glob as wcglob

from dsfs.errors import InvalidPath, UsageError

NAME_MAX = 255  # bytes in one file name on Linux file systems (ext4, xfs, btrfs, tmpfs)

LABEL_MAX = 255


def validate(path: object) -> str:
    """Return `path` if it is a valid dataset path, else raise InvalidPath naming it."""
    if not isinstance(path, str) or not path:
        raise InvalidPath(f"invalid dataset path {path!r}: empty")
    if "\0" in path:
        raise InvalidPath(f"invalid dataset path {path!r}: contains NUL")
    if path.startswith("/"):
        raise InvalidPath(f"invalid dataset path {path!r}: absolute")
    if not unicodedata.is_normalized("NFC", path):  # a quick check; normalize() copies the string
        raise InvalidPath(f"invalid dataset path {path!r}: not NFC-normalized")
    # This runs for every entry decoded (a listing of 1,000,000 files): substring scans in C first,
    # and the components split out only when one could be "." or ".." (1.4 -> 0.4 us a path).
    if "//" in path or path.endswith("/"):
        raise InvalidPath(f"invalid dataset path {path!r}: component '' not allowed")
    if path[0] == "." or "/." in path:
        parts = path.split("/")
        for part in (".", ".."):
            if part in parts:
                raise InvalidPath(f"invalid dataset path {path!r}: component {part!r} not allowed")
    if (len(path) > NAME_MAX // 4 and len(path.encode()) > NAME_MAX
            and max(len(p.encode()) for p in path.split("/")) > NAME_MAX):
        raise InvalidPath(f"invalid dataset path {path[:80]!r}...: a name is longer than {NAME_MAX} bytes, "
                          f"which no file system holds")
    return path


def validate_all(names: list) -> None:
    """`validate` each of `names` (a block of a change-set's paths, decoded in bulk), raising
    InvalidPath for the first bad one. The rules are tested on the block joined by NUL, which no
    valid path holds, with a few substring scans in C: 0.4-0.5 -> 0.2 us a path. A block where a
    scan finds what could be a fault ('.' starting a name) is validated path by path."""
    try:
        joined = "\0".join(names)  # a TypeError when one is not a str: validate() names it
    except TypeError:
        joined = ""
    if (not joined or joined.count("\0") != len(names) - 1 or joined[0] in "/.\0" or joined[-1] in "/\0"
            or "\0\0" in joined or "\0/" in joined or "/\0" in joined or "//" in joined
            or "\0." in joined or "/." in joined or not unicodedata.is_normalized("NFC", joined)):
        for name in names:
            validate(name)
    elif max(map(len, names)) > NAME_MAX // 4:  # a name may be too long: only a path's UTF-8 over it can hold one
        for name in names:
            if len(name) > NAME_MAX // 4 and len(name.encode()) > NAME_MAX:
                validate(name)


def label(kind: str, value) -> str:
    """Return `value` if it is a valid project, name, version or tag ("kind" says which and names
    it in the error), else raise UsageError saying what is wrong."""
    if not isinstance(value, str) or not value:
        raise UsageError(f"invalid {kind} {value!r}: must not be empty")
    for part in value.split("/") if kind == "project" else [value]:
        problem = _label_problem(part)
        if problem:
            raise UsageError(f"invalid {kind} {value!r}: {problem}")
    if len(urllib.parse.quote(value, safe="")) > LABEL_MAX:  # a project's '/' too: it is one component
        raise UsageError(f"invalid {kind} {value[:40]!r}...: longer than {LABEL_MAX} bytes once percent-encoded")
    return value


def _label_problem(part: str) -> str | None:
    if not part or part.strip() != part:
        return "empty parts and leading or trailing spaces are not allowed"
    if part in (".", ".."):
        return f"{part!r} is not allowed"
    if "/" in part or "@" in part:
        return "'/' and '@' are not allowed"
    if any(unicodedata.category(c) == "Cc" for c in part):
        return "control characters (NUL included) are not allowed"
    return None


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


GLOB_FLAGS = wcglob.GLOBSTAR | wcglob.DOTGLOB | wcglob.CASE


def as_list(value: str | Iterable[str] | None) -> list[str]:
    """One string or several (a wildcard or a list of them, a tag or tags, a URL or URLs) as a
    list: what the API's arguments that take either accept."""
    return [value] if isinstance(value, str) else list(value or [])


def is_glob(text: str) -> bool:
    """Whether `text` holds a wildcard of glob_match's rule (else it names one thing)."""
    return wcglob.is_magic(text, flags=GLOB_FLAGS)


def glob_match(text: str, pattern: str) -> bool:
    """The one wildcard rule of dsfs (wcmatch's glob), for dataset paths, local paths, URLs and
    labels alike: `*` and `?` match within one name (never a '/'), `**` any number of folders,
    `[abc]`/`[!abc]` one character of a set; names starting with '.' are matched like any other;
    case counts."""
    return _compiled(pattern).match(text)


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str):
    """A pattern compiled once: wcmatch's globmatch parses it on every call (16 us a match here,
    1.2 us compiled; a filter meets each pattern once per file and folder of a version)."""
    return wcglob.compile(pattern, flags=GLOB_FLAGS)


def matches(path: str, patterns, recursive: bool = True) -> bool:
    """True if `path` matches any glob in `patterns` (glob_match's rule).

    A pattern matches the full path, the file name, or (recursive) any folder prefix: 'imgs'
    selects everything under 'imgs/', 'imgs/*' every file of its subfolders too, and a pattern
    with no '/' ('*.csv') a file of that name in any folder. Non-recursive, a pattern matches only
    the full path, or the name of a file at the top ('*.csv' takes 't.csv', not 'deep/t.csv').
    """
    for pattern in patterns:
        pattern = pattern.strip("/")
        if glob_match(path, pattern):
            return True
        if "/" not in pattern and glob_match(path.rsplit("/", 1)[-1], pattern):
            if recursive or "/" not in path:
                return True
        if recursive:
            for folder in parents(path):
                if glob_match(folder, pattern):
                    return True
    return False

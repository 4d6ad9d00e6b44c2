"""Dataset paths and the change-set codec: what is accepted, what is refused."""

import blake3
import pytest

from dsfs import paths
from dsfs.errors import CorruptData, InvalidPath
from dsfs.model import ChunkRef, Entry, decode_changeset, encode_changeset


@pytest.mark.parametrize("bad", ["", "/abs", "a/../b", "..", ".", "a//b", "a/", "a/./b", "a\0b", "e\u0301"])
def test_validate_refuses_unsafe_paths(bad):
    with pytest.raises(InvalidPath):
        paths.validate(bad)


def test_validate_decides_as_the_plain_rule_on_random_paths():
    """validate's substring scans refuse exactly what the plain rule refuses (split into components:
    none empty, "." or ".."; no NUL; not absolute; NFC; no name over NAME_MAX bytes)."""
    import random
    import unicodedata

    def plain_rule(path: str) -> bool:
        parts = path.split("/")
        return bool(path) and "\0" not in path and not path.startswith("/") \
            and unicodedata.is_normalized("NFC", path) and not {"", ".", ".."} & set(parts) \
            and max(len(p.encode()) for p in parts) <= paths.NAME_MAX

    rnd = random.Random(7)
    alphabet = ["/", ".", "..", "a", "b.c", "\0", "e\u0301", "\u00e9", " ", "x" * 200]
    for _ in range(20_000):
        path = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 8)))
        try:
            paths.validate(path)
            valid = True
        except InvalidPath:
            valid = False
        assert valid == plain_rule(path), path


def test_normalize_fixes_only_harmless_spellings():
    assert paths.normalize("./a//b/") == "a/b"
    assert paths.normalize("e\u0301.txt") == "\u00e9.txt"
    with pytest.raises(InvalidPath):
        paths.normalize("a/../../etc/passwd")
    with pytest.raises(InvalidPath):
        paths.normalize("/etc/passwd")


def test_matches_full_path_name_and_folder():
    assert paths.matches("imgs/a/b.jpg", ["imgs"])
    assert paths.matches("imgs/a/b.jpg", ["*.jpg"])
    assert not paths.matches("imgs/a/b.jpg", ["imgs"], recursive=False)
    assert paths.matches("imgs/b.jpg", ["imgs/*"], recursive=False)
    assert not paths.matches("other/b.png", ["imgs", "*.jpg"])


def _file(path, data=b"x"):
    digest = blake3.blake3(data).digest()
    return Entry(path=path, size=len(data), digest=digest,
                 chunks=[ChunkRef(digest, b"p" * 16, 0, len(data), len(data))])


def test_changeset_roundtrip_sorted():
    entries = [_file("b/c"), Entry(path="a", removed=True), _file("b/a", b"yy")]
    decoded = list(decode_changeset(encode_changeset(entries), "test"))
    assert [e.path for e in decoded] == ["a", "b/a", "b/c"]
    assert decoded[0].removed and decoded[1].size == 2 and decoded[1].chunks[0].raw == 2


def test_changeset_with_escaping_path_is_refused():
    evil = _file("ok")
    evil.path = "../../etc/passwd"  # bypass the constructor, as a hostile writer would
    data = encode_changeset([evil])
    with pytest.raises(CorruptData, match="passwd"):
        list(decode_changeset(data, "change-set of dataset X"))


@pytest.mark.parametrize("cut", [1, 10, -5])
def test_truncated_changeset_is_refused(cut):
    data = encode_changeset([_file(f"f{i}", bytes([i]) * 100) for i in range(50)])
    with pytest.raises(CorruptData):
        list(decode_changeset(data[:cut], "change-set"))


def test_chunks_must_add_up_to_size():
    entry = _file("a", b"abc")
    wire = entry.to_wire()
    wire["s"] = 4
    with pytest.raises(ValueError):
        Entry.from_wire(wire)

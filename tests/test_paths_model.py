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


def _refusal(check, value) -> str | None:
    try:
        check(value)
    except InvalidPath as exc:
        return str(exc)
    return None


def test_validate_all_refuses_what_validate_refuses_on_random_blocks():
    """The block check (decode_changeset's, a few scans of the joined block) refuses a block iff
    validate refuses one of its paths, with the message validate gives the first of them."""
    import random

    rnd = random.Random(11)
    alphabet = ["/", ".", "..", "a", "b.c", "\0", "e\u0301", "\u00e9", " ", "\t", "\n", "\r", "x" * 70, "x" * 200]
    odd = [None, 5, b"a", ("a",)]
    for _ in range(4_000):
        block = []
        for _ in range(rnd.randint(1, 6)):
            if rnd.random() < 0.03:
                block.append(rnd.choice(odd))
            elif rnd.random() < 0.6:
                block.append(f"d{rnd.randint(0, 9)}/f{rnd.randint(0, 99)}")  # a valid path, as most are
            else:
                block.append("".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 6))))
        first_refusal = next((m for m in (_refusal(paths.validate, p) for p in block) if m is not None), None)
        assert _refusal(paths.validate_all, block) == first_refusal, block


def _raw_changeset(items: list) -> bytes:
    """A change-set of these wire items as they are (a hostile writer's), in this order."""
    import msgpack
    import zstandard

    packed = b"".join(msgpack.packb(i, use_bin_type=True) for i in [{"format": 1}, *items])
    return zstandard.ZstdCompressor().compress(packed)


def _decoded_item_by_item(items: list, chunks: bool):
    """What decode_changeset yields, item by item (Entry.from_wire), or the refusal."""
    out, last = [], ""
    for item in items:
        try:
            entry = Entry.from_wire(item, chunks)
        except (InvalidPath, ValueError, KeyError, TypeError):
            return "refused"
        if entry.path <= last:
            return "refused"
        out.append(entry)
        last = entry.path
    return out


def test_block_decode_is_item_by_item_decode_on_random_change_sets():
    """decode_changeset checks its items' paths and order a block at a time (paths.validate_all):
    on change-sets of every kind of entry, and of each kind of fault put anywhere in them (across
    the blocks too), it yields what decoding item by item yields, or refuses where that refuses."""
    import random

    from dsfs import model

    rnd = random.Random(5)

    def item(path, plain):
        kind = 1 if plain else rnd.random()  # plain: files only, as most blocks are (the bulk check's case)
        if kind < 0.05:
            return {"p": path, "r": True}
        if kind < 0.1:
            return {"p": path, "s": 3, "x": False, "t": 1, "u": "s3://b/k", "e": "etag"}
        size = rnd.randint(0, 9)
        return _file(path, bytes(size)).to_wire() | {"x": rnd.random() < 0.2, "t": rnd.randint(0, 10**18)}

    faults = [("s", -1), ("s", True), ("s", 2.0), ("d", b"short"), ("d", "x" * 32),
              ("t", 1 << 63), ("t", "0"), ("t", 1.5), ("c", ()), ("c", ((b"x", b"p" * 16, 0, 1, 1, 0),)),
              ("p", None), ("p", "a/../b"), ("p", "d/.hidden"), ("u", "s3://b/k"), ("q", 1), ("x", None)]
    trials = [(fault, plain) for fault in [None, *faults] for plain in (True, False)]
    for trial, (fault, plain) in enumerate(trials * 2):  # a fault in a file's entry of a block of files, or of any
        n = rnd.choice([1, 5, model.DECODE_BLOCK, 2 * model.DECODE_BLOCK + 7])
        items = [item(f"f{i:05d}", plain) for i in range(n)]
        if fault is not None:
            at = rnd.randrange(n)
            items[at] = {**_file(items[at]["p"]).to_wire(), "x": False, "t": 0, fault[0]: fault[1]}
            if trial % 7 == 0:
                del items[at]["t" if "t" in items[at] else "p"]
        if trial % 11 == 0 and n > 1:  # out of order
            items[0], items[-1] = items[-1], items[0]
        for chunks in (True, False):
            expected = _decoded_item_by_item(items, chunks)
            try:
                got = list(decode_changeset(_raw_changeset(items), "test", chunks))
            except CorruptData:
                got = "refused"
            assert got == expected, (trial, chunks)


@pytest.mark.parametrize("mtime", [float("inf"), 1.5, 1 << 63, "0"])
def test_a_links_bad_mtime_is_corrupt_data(mtime):
    """A link's mtime has the file's rule (an int64): past it, or not an int, the change-set is
    corrupt (an infinite one escaped as an OverflowError)."""
    link = {"p": "a", "s": 3, "x": False, "u": "s3://b/k", "e": "etag"}
    assert list(decode_changeset(_raw_changeset([{**link, "t": 5}]), "t"))[0].mtime_ns == 5
    with pytest.raises(CorruptData, match="bad mtime"):
        list(decode_changeset(_raw_changeset([{**link, "t": mtime}]), "t"))


@pytest.mark.parametrize("item", [5, ["a"], {"s": 1}])
def test_an_item_that_is_not_an_entry_is_named(item):
    with pytest.raises(CorruptData, match="not a map|empty"):
        list(decode_changeset(_raw_changeset([item]), "t"))

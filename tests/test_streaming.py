"""Commands that stream a version's files instead of holding them all (issue 16). Each streaming
form is compared with the in-memory implementation it replaces, on random lineages: chains of
versions, removals, modifications, a version with two parents, and names whose order is easy to
get wrong ('d0 x' < 'd0-x' < 'd0.x' < 'd0/...')."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys

import pytest

from dsfs import Dataset

from conftest import make_tree

FOLDERS = ["d0", "d-1", "d.1", "d1", "é"]
FILES = ["d0 x", "d0-x", "d0.x", "e", "f.txt", "z"]  # never a folder's name: no file/folder conflicts


def _random_path(rng: random.Random) -> str:
    return "/".join([rng.choice(FOLDERS) for _ in range(rng.randint(0, 3))] + [rng.choice(FILES)])


def _version(store, tmp_path, rng, parents, paths_now: set[str], n_add: int, n_remove: int, name: str) -> str:
    """A final version over `parents`: n_add files added or rewritten, n_remove of paths_now removed."""
    folder = tmp_path / f"src-{rng.random()}"
    added = {_random_path(rng): rng.randbytes(rng.randint(0, 3000)) for _ in range(n_add)}
    make_tree(folder, added)
    ds = Dataset.create("stream", name, parents=parents, store=store)
    ds.add_files(str(folder))
    for path in rng.sample(sorted(paths_now - set(added)), min(n_remove, len(paths_now - set(added)))):
        ds.remove_files(path, recursive=False)
    ds.finalize()
    shutil.rmtree(folder)
    paths_now.clear()
    paths_now.update(ds.list_files())
    return ds.id


def _lineage(store, tmp_path, seed: int) -> list[str]:
    rng = random.Random(seed)
    base_paths: set[str] = set()
    base = _version(store, tmp_path, rng, None, base_paths, 40, 0, "base")
    chain, chain_paths = [base], set(base_paths)
    for _ in range(6):
        chain.append(_version(store, tmp_path, rng, [chain[-1]], chain_paths, 5, 3, "chain"))
    branch_paths = set(base_paths)
    branch = _version(store, tmp_path, rng, [base], branch_paths, 8, 6, "branch")
    merged = _version(store, tmp_path, rng, [chain[-1], branch], chain_paths | branch_paths, 3, 6, "merged")
    return [*chain, branch, merged]


def _rows(entries) -> list[dict]:
    return [{"path": e.path, "size": e.size, "mode": e.mode, "mtime_ns": e.mtime_ns, "digest": e.digest.hex()}
            for e in entries]


def test_list_streams_what_the_in_memory_view_lists(tmp_path, file_store, dsfs, monkeypatch):
    from dsfs.lineage import viewindex

    monkeypatch.setattr(viewindex, "FAN_IN", 3)  # the chains are merged through runs on disk too
    for seed in range(3):
        for dataset_id in _lineage(file_store, tmp_path, seed):
            ds = Dataset.get(dataset_id, store=file_store)
            held = ds.file_entries()
            assert held  # (a listing of nothing would compare equal to anything)
            streamed = list(ds.iter_entries())
            assert [(e.path, e.size, e.digest, e.executable, e.url, e.chunks) for e in streamed] == \
                [(e.path, e.size, e.digest, e.executable, e.url, e.chunks) for e in held]
            listed = list(ds.iter_entries(chunks=False))  # a listing's: the same, without chunk refs
            assert [(e.path, e.size, e.digest, e.executable, e.mtime_ns, e.url, e.chunks) for e in listed] == \
                [(e.path, e.size, e.digest, e.executable, e.mtime_ns, e.url, []) for e in held]
            out = dsfs("--store", file_store, "list", "--id", dataset_id, "--json")
            assert out.code == 0 and out.out == json.dumps(_rows(held), indent=2, sort_keys=True) + "\n"
            # the table on a pipe: the same aligned columns the in-memory table printed
            rows = [["size", "path"]] + [[str(e.size), e.path] for e in held]
            width = max(len(r[0]) for r in rows)
            table = "\n".join(f"{size.ljust(width)}  {path}".rstrip() for size, path in rows) + "\n"
            out = dsfs("--store", file_store, "list", "--id", dataset_id)
            assert out.code == 0 and out.out == table
            assert f"{len(held)} file(s)" in out.err
            out = dsfs("--store", file_store, "list", "--id", dataset_id, "--jsonl")
            assert out.code == 0 and out.out.splitlines() == [json.dumps(row, sort_keys=True, separators=(",", ":"))
                                                            for row in _rows(held)]
            changes = dsfs("--store", file_store, "list", "--id", dataset_id, "--modified", "--json").out
            lines = dsfs("--store", file_store, "list", "--id", dataset_id, "--modified", "--jsonl").out
            assert [json.loads(line) for line in lines.splitlines()] == json.loads(changes) != []
            selected = ds.file_entries(["*.x"])
            out = dsfs("--store", file_store, "list", "--id", dataset_id, "--filter", "*.x", "--json")
            assert out.code == 0 and json.loads(out.out) == _rows(selected)


@pytest.mark.parametrize("spool_read", [7, 64, 1 << 18])
def test_spooled_table_is_the_aligned_table_whatever_the_cells(monkeypatch, capsys, spool_read):
    """The streamed two-column table (`dsfs list` on a pipe) prints what ljust prints for each line
    it spooled, when the blocks read back from its spool cut lines anywhere, and when a cell holds a
    tab, a carriage return or a newline (all valid in a dataset path), which its fast form
    (expandtabs) would misplace: a path's tab is printed as it is, its newline splits the line."""
    from dsfs.cli import output

    monkeypatch.setattr(output, "SPOOL_READ", spool_read)
    rnd = random.Random(spool_read)
    paths_ = ["a", "b/c.txt", "tab\there", "cr\rhere", "nl\nhere", "ends\n", "x" * 40]
    rows = [(rnd.choice([0, 7, 12345, 10**12, "cell\rreturn"]), rnd.choice(paths_)) for _ in range(300)]
    plain = [r for r in rows if not any(c in f"{r[0]}{r[1]}" for c in "\t\r\n")]
    for chosen in (rows, plain, [(10, "a\tb"), (2000, "c\nd"), (3, "e")]):
        output.table(["size", "path"], iter(chosen))
        width = max(len(str(size)) for size, _ in [("size", ""), *chosen])
        spooled = "\n".join(f"{size}\t{path}" for size, path in chosen).split("\n")
        expected = "\n".join([f"{'size'.ljust(width)}  path"] + [first.ljust(width) + "  " + last for first, _, last
                                                                  in (line.partition("\t") for line in spooled)])
        assert capsys.readouterr().out == expected + "\n"


def test_list_of_nothing_prints_an_empty_array_or_no_line(tmp_path, file_store, dsfs):
    ds = Dataset.get(_lineage(file_store, tmp_path, 7)[0], store=file_store)
    out = dsfs("--store", file_store, "list", "--id", ds.id, "--filter", "no-such-*", "--json")
    assert out.code == 0 and out.out == "[]\n"
    out = dsfs("--store", file_store, "list", "--id", ds.id, "--filter", "no-such-*", "--jsonl")
    assert out.code == 0 and out.out == ""
    out = dsfs("--store", file_store, "list", "--id", ds.id, "--json", "--jsonl")
    assert out.code == 2 and "choose one" in out.err and "Traceback" not in out.err


def _peak_rss_mb(argv: list[str]) -> float:
    """The peak RSS of one command (its own, by wait4), its output drained from a pipe."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    while proc.stdout.read(1 << 20):
        pass
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, argv
    return usage.ru_maxrss / 1024


def test_list_memory_does_not_grow_with_the_file_count(file_store):
    """`dsfs list --json` of 200,000 files peaks within a few MB of the same at 20,000 (holding the
    listing, as before, cost about 2 KB a file: 400 MB more)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
    from synthetic import synthetic_version  # the same synthetic versions as bench/bench_scale.py

    peaks = {}
    for files in (20_000, 200_000):
        dataset_id = synthetic_version(file_store, files, f"big{files}", size=8)
        argv = [sys.executable, "-m", "dsfs.cli.main", "--store", file_store, "list", "--id", dataset_id, "--json"]
        peaks[files] = _peak_rss_mb(argv)
    assert peaks[200_000] - peaks[20_000] < 55, peaks


def test_close_memory_does_not_grow_with_the_file_count(file_store):
    """`dsfs close` of a draft of 200,000 files peaks within 55 MB of the same at 20,000: the new
    version's file table and change-set go to disk as they are made, so what grows is SQLite's page
    cache (up to 32 MiB; 34 MB measured in all). Holding the draft's entries cost about 2.6 KB a file
    (470 MB more); the table's columns in memory, about 250 bytes a file (45 MB more than now)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
    from synthetic import synthetic_draft  # the same synthetic drafts as bench/bench_scale.py

    peaks = {}
    for files in (20_000, 200_000):
        dataset_id = synthetic_draft(file_store, files, f"draft{files}")
        argv = [sys.executable, "-m", "dsfs.cli.main", "--store", file_store, "close", "--id", dataset_id]
        peaks[files] = _peak_rss_mb(argv)
        closed = Dataset.get(dataset_id, store=file_store)
        assert closed.info.stats["files"] == files and closed.info.stats["added"] == files
    assert peaks[200_000] - peaks[20_000] < 55, peaks


def test_json_rows_are_written_as_json_dumps_writes_their_list(capsys):
    from dsfs.cli.output import emit_json_rows

    rows = [{"path": 'a\u00e9"x\\', "size": 3, "mode": "0o644"}, {"b": True, "a": None, "c": 1.5, "d": -7},
            {}, {"n": {"x": [1, 2]}, "m": [3]}, {"z": 1, "a": "s"}, [1, "x"], "plain"]
    for given in (rows, rows[:1], []):
        emit_json_rows(iter(given))
        assert capsys.readouterr().out == json.dumps(given, indent=2, sort_keys=True) + "\n"


def test_a_streamed_table_prints_what_the_table_of_a_list_prints(capsys):
    """`table` of an iterator (spooled, one %-format per row) prints the same lines as `table` of the
    same rows as a list (a ljust per cell): one to three columns, empty cells, cells wider than
    their header, non-ASCII."""
    from dsfs.cli.output import table

    cases = [(["path"], [("a",), ("été/x",), ("",)]),
             (["size", "path"], [(8, "d/f"), (123456789, "x y"), (0, "é")]),
             (["change", "path", "n"], [("added", "a", 1), ("", "long/path/name", ""), ("removed", "", 22)]),
             (["size", "path"], [])]
    for columns, rows in cases:
        table(columns, rows)
        listed = capsys.readouterr().out
        table(columns, iter(rows))
        assert capsys.readouterr().out == listed, (columns, rows)


def test_a_change_set_reaches_the_node_cache_in_checked_blocks(file_store, tmp_path, monkeypatch):
    """A change-set is copied from the store into the node's cache a block at a time, hashed on the
    way: the copy is whole and used; one whose bytes differ from its record is refused and not kept."""
    import pytest

    from dsfs.errors import CorruptData
    from dsfs.node.cache import Cache
    from dsfs.store.layout import Store

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
    from synthetic import synthetic_version

    blocks = []
    real = Store.iter_changes

    def small_blocks(self, dataset_id, size, block=8 << 20):
        for data in real(self, dataset_id, size, block=4096):
            blocks.append(len(data))
            yield data

    monkeypatch.setattr(Store, "iter_changes", small_blocks)
    dataset_id = synthetic_version(file_store, 5_000, "blocks", size=8)
    ds = Dataset.get(dataset_id, store=file_store, cache=Cache(str(tmp_path / "cache-1")))
    assert sum(1 for _ in ds.iter_entries()) == 5_000
    assert len(blocks) > 2 and sum(blocks) == ds.info.changes["size"]
    path = f"{file_store[len('file://'):]}/datasets/{dataset_id}/changes.msgpack.zst"
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 1
    open(path, "wb").write(bytes(data))
    cache = Cache(str(tmp_path / "cache-2"))
    with pytest.raises(CorruptData, match="corrupt or truncated"):
        sum(1 for _ in Dataset.get(dataset_id, store=file_store, cache=cache).iter_entries())
    assert not os.path.exists(cache.changeset_path(dataset_id))


def test_a_streamed_json_object_is_what_json_dumps_writes(capsys):
    from dsfs.cli.output import emit_json_object

    for scalars, arrays in (({"b": 2, "a": "x\\u00e9", "n": None}, {"a_paths": ["p/1", 'q"2'], "z": []}),
                            ({}, {}), ({"k": 1.5}, {}), ({}, {"only": ["one"]})):
        expected = json.dumps({**scalars, **arrays}, indent=2, sort_keys=True)
        emit_json_object(scalars, {k: iter(v) for k, v in arrays.items()})  # the items as a stream
        assert capsys.readouterr().out == expected + "\n"

"""Commands that stream a version's files instead of holding them all (issue 16). Each streaming
form is compared with the in-memory implementation it replaces, on random lineages: chains of
versions, removals, modifications, a version with two parents, and names whose order is easy to
get wrong ('d0 x' < 'd0-x' < 'd0.x' < 'd0/...')."""

from __future__ import annotations

import json
import random
import shutil

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
    return [{"path": e.path, "size": e.size, "mode": oct(e.mode), "digest": e.digest.hex()} for e in entries]


def test_list_streams_what_the_in_memory_view_lists(tmp_path, file_store, dsfs):
    for seed in range(3):
        for dataset_id in _lineage(file_store, tmp_path, seed):
            ds = Dataset.get(dataset_id, store=file_store)
            held = ds.file_entries()
            assert held  # (a listing of nothing would compare equal to anything)
            streamed = list(ds.iter_entries())
            assert [(e.path, e.size, e.digest, e.executable, e.url) for e in streamed] == \
                [(e.path, e.size, e.digest, e.executable, e.url) for e in held]
            out = dsfs("--store", file_store, "list", "--id", dataset_id, "--json")
            assert out.code == 0 and out.out == json.dumps(_rows(held), indent=2, sort_keys=True) + "\n"
            # the table on a pipe: the same aligned columns the in-memory table printed
            rows = [["size", "path"]] + [[str(e.size), e.path] for e in held]
            width = max(len(r[0]) for r in rows)
            table = "\n".join(f"{size.ljust(width)}  {path}".rstrip() for size, path in rows) + "\n"
            out = dsfs("--store", file_store, "list", "--id", dataset_id)
            assert out.code == 0 and out.out == table
            assert f"{len(held)} file(s)" in out.err
            selected = ds.file_entries(["*.x"])
            out = dsfs("--store", file_store, "list", "--id", dataset_id, "--filter", "*.x", "--json")
            assert out.code == 0 and json.loads(out.out) == _rows(selected)


def test_list_of_nothing_prints_an_empty_array(tmp_path, file_store, dsfs):
    ds = Dataset.get(_lineage(file_store, tmp_path, 7)[0], store=file_store)
    out = dsfs("--store", file_store, "list", "--id", ds.id, "--filter", "no-such-*", "--json")
    assert out.code == 0 and out.out == "[]\n"

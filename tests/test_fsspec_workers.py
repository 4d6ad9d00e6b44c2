"""dsfs:// in data-loader workers (issue 19): 2,000 files of a version read by a multiprocessing pool
started with fork and with spawn, and by torch's DataLoader when torch is installed, each file's
bytes checked against the digest of its source; the workers share the node cache with the parent."""

from __future__ import annotations

import hashlib
import multiprocessing
import random

import blake3
import fsspec
import pytest
from conftest import final_version, make_tree

from dsfs.filesystem import DsfsFileSystem

COUNT = 2000
ROOT = "loader/images"


@pytest.fixture(scope="module")
def version(tmp_path_factory):
    """A version of 2,000 files of 1-24 KiB in 20 folders, and their blake3 digests."""
    pick = random.Random(2000)
    files = {f"part{i % 20:02}/{i:05}.bin": pick.randbytes(pick.randrange(1 << 10, 24 << 10)) for i in range(COUNT)}
    src = tmp_path_factory.mktemp("loader-src")
    make_tree(src, files)
    store = f"file://{tmp_path_factory.mktemp('loader-store')}"
    final_version(store, src, project="loader", name="images")
    return store, {path: blake3.blake3(data).hexdigest() for path, data in files.items()}


def _urls() -> list[str]:
    return sorted(f"{ROOT}/part{i % 20:02}/{i:05}.bin" for i in range(COUNT))


def _checked(results: list[tuple[str, str]], digests: dict[str, str]) -> None:
    assert len(results) == COUNT
    assert {path[len(ROOT) + 1:]: digest for path, digest in results} == digests


# -- multiprocessing --------------------------------------------------------------------------------------

_inherited: dict = {}  # the filesystem forked workers read through (set before the fork, never pickled)


def _read_forked(paths: list[str]) -> list[tuple[str, str]]:
    fs = _inherited["fs"]
    return [(path, blake3.blake3(fs.cat_file(path)).hexdigest()) for path in paths]


def _read_spawned(args: tuple[DsfsFileSystem, list[str]]) -> list[tuple[str, str]]:
    fs, paths = args  # pickled with its pins
    out = []
    for path in paths:
        with fs.open(path) as f:  # buffered reads, as a reader library's
            out.append((path, blake3.blake3(f.read()).hexdigest()))
    return out


def _pooled(method: str, fn, batches: list) -> list:
    with multiprocessing.get_context(method).Pool(4) as pool:
        results = pool.map(fn, batches)
        pool.close()
        pool.join()
    return [row for batch in results for row in batch]


@pytest.mark.slow
def test_forked_workers_read_2000_files(version):
    store, digests = version
    fs = fsspec.filesystem("dsfs", store=store, skip_instance_cache=True)
    assert fs.info(f"{ROOT}/part00/00000.bin")["digest"] == digests["part00/00000.bin"]  # the parent reads first
    urls = _urls()
    _inherited["fs"] = fs
    try:
        _checked(_pooled("fork", _read_forked, [urls[i::16] for i in range(16)]), digests)
    finally:
        _inherited.clear()
    assert fs.cat_file(urls[-1]) and fs.info(urls[-1])["digest"] == digests[urls[-1][len(ROOT) + 1:]]


@pytest.mark.slow
def test_spawned_workers_read_2000_files(version):
    store, digests = version
    fs = fsspec.filesystem("dsfs", store=store, skip_instance_cache=True)
    urls = _urls()
    _checked(_pooled("spawn", _read_spawned, [(fs, urls[i::8]) for i in range(8)]), digests)


# -- torch -------------------------------------------------------------------------------------------------

class _Files:
    """A torch map-style dataset of dsfs:// files: (path, blake3 of the bytes), opened with
    fsspec.open in the worker (a new filesystem instance there: fsspec's instance cache is per
    process, as DataLoader users write it)."""

    def __init__(self, urls: list[str], store: str):
        self.urls, self.store = urls, store

    def __len__(self) -> int:
        return len(self.urls)

    def __getitem__(self, i: int) -> tuple[str, str]:
        with fsspec.open(f"dsfs://{self.urls[i]}", "rb", store=self.store) as f:
            return self.urls[i], blake3.blake3(f.read()).hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_torch_dataloader_reads_2000_files(version, method):
    try:
        from torch.utils.data import DataLoader
    except ImportError:
        pytest.skip("torch is not installed (not in the test extra: install it to run this test)")
    store, digests = version
    assert fsspec.filesystem("dsfs", store=store).exists(ROOT)  # the parent's instance and cache are open
    loader = DataLoader(_Files(_urls(), store), batch_size=50, shuffle=True, num_workers=2,
                        multiprocessing_context=method, collate_fn=_as_list,
                        generator=_generator(method))
    results = [item for batch in loader for item in batch]
    _checked(results, digests)


def _as_list(batch: list) -> list:
    return batch


def _generator(seed: str):
    import torch

    return torch.Generator().manual_seed(int(hashlib.sha256(seed.encode()).hexdigest()[:8], 16))

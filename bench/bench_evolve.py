#!/usr/bin/env python3
"""Evolution benchmark: sync after touching 1% of a folder, and squash of a 10-version chain.

    .venv/bin/python bench/bench_evolve.py [--scale F] [--workdir DIR]

Prints, from one run:
- sync of the 10,000-file folder (bench/gen_dataset.py --kind small) into a fresh file:// store,
  then a second sync after rewriting 1% of the files: time and new bytes of each, and the ratios
  (targets: the second sync under 10% of the first's time and under 2% of its bytes). The chain
  below repeats that second sync 8 more times (another 1% each time): the time ratio is judged on
  the median of the 9, as one ~80 ms figure moves by 10-20% with the machine's noise;
- squash of a 10-version chain (each version rewrites 1% of the files): time, and bytes the store
  grew by other than the new change-set and record (target: no chunk bytes moved).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import gen_dataset  # noqa: E402


def tree_size(path: str, sub: str = "") -> int:
    total = 0
    for root, _, names in os.walk(os.path.join(path, sub)):
        total += sum(os.path.getsize(os.path.join(root, n)) for n in names)
    return total


def rewrite(folder: str, fraction: float, seed: int) -> int:
    files = gen_dataset.data_files(folder)
    step = max(1, int(1 / fraction))
    changed = 0
    for rel in files[seed % step::step]:
        path = os.path.join(folder, rel)
        size = os.path.getsize(path)
        with open(path, "wb") as f:
            f.write(os.urandom(size))
        changed += size
    return changed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--workdir", default=os.path.join(HERE, ".work", "evolve"))
    args = parser.parse_args(argv)
    shutil.rmtree(args.workdir, ignore_errors=True)
    for var in ("XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME"):
        os.environ[var] = os.path.join(args.workdir, var.lower())
    os.environ.pop("DSFS_STORE", None)
    from dsfs import Dataset

    source = os.path.join(HERE, ".data", f"small-s{args.scale:g}-seed0")
    gen_dataset.generate(source, "small", args.scale, 0, quiet=True)
    folder = os.path.join(args.workdir, "folder")
    shutil.copytree(source, folder)
    store_dir = os.path.join(args.workdir, "store")
    store = "file://" + store_dir
    nfiles = len(gen_dataset.data_files(folder))
    failures = 0

    print(f"dsfs evolution benchmark  scale={args.scale:g}  files={nfiles}  store={store}")
    t0 = time.perf_counter()
    first, _ = Dataset.sync(folder, "bench", "synced", store=store, show_progress=False)
    t_first = time.perf_counter() - t0
    bytes_first = first.info.stats["new_bytes"]
    changed = rewrite(folder, 0.01, 1)
    t0 = time.perf_counter()
    second, changes = Dataset.sync(folder, "bench", "synced", store=store, show_progress=False)
    t_second = time.perf_counter() - t0
    bytes_second = second.info.stats["new_bytes"]
    chain, times = [first, second], [t_second]
    for i in range(8):
        rewrite(folder, 0.01, i + 2)
        t0 = time.perf_counter()
        ds, _ = Dataset.sync(folder, "bench", "synced", store=store, show_progress=False)
        times.append(time.perf_counter() - t0)
        chain.append(ds)
    t_median = statistics.median(times)
    time_ratio, bytes_ratio = t_median / t_first, bytes_second / bytes_first
    print(f"sync 1 (all {nfiles} files):        {t_first:7.3f} s, {bytes_first / 2**20:9.2f} MiB stored")
    print(f"sync 2 (1% rewritten, {len(changes.modified)} files, {changed / 2**20:.2f} MiB changed): "
          f"{t_second:7.3f} s, {bytes_second / 2**20:9.2f} MiB stored")
    print(f"syncs 2-10 (1% rewritten each): median {t_median:.3f} s, "
          f"range {min(times):.3f}-{max(times):.3f} s")
    for label, ratio, target in (("time (median)", time_ratio, 0.10), ("bytes", bytes_ratio, 0.02)):
        ok = ratio < target
        failures += not ok
        print(f"  second/first {label}: {ratio:6.2%} (target < {target:.0%}) -> {'PASS' if ok else 'FAIL'}")

    packs_before = tree_size(store_dir, "packs")
    store_before = tree_size(store_dir)
    t0 = time.perf_counter()
    flat = Dataset.squash("squashed", [chain[-1].id], project="bench", store=store)
    t_squash = time.perf_counter() - t0
    packs_moved = tree_size(store_dir, "packs") - packs_before
    grown = tree_size(store_dir) - store_before
    print(f"squash of a {len(chain)}-version chain ({flat.info.stats['files']} files, "
          f"{flat.info.stats['bytes'] / 2**20:.1f} MiB): {t_squash:.2f} s; chunk bytes moved: {packs_moved}; "
          f"store grew {grown / 1024:.1f} KiB (its change-set and record)")
    ok = packs_moved == 0 and flat.read_file(flat.list_files()[0]) is not None
    failures += not ok
    print(f"  no chunk bytes moved -> {'PASS' if ok else 'FAIL'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

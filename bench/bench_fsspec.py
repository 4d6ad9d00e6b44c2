#!/usr/bin/env python3
"""dsfs:// benchmark (issue 19): every figure beside its baseline, measured in one run.

    .venv/bin/python bench/bench_fsspec.py [--scale 0.05] [--repeat 3] [--only seq s3 parquet]

Figures:

    seq-file    4 x 512 MiB (bench/gen_dataset.py kind `large`) read in order through dsfs://, one
                file after the other (fsspec's open, read(8 MiB) to the end), an empty node cache,
                beside `dsfs download` of the same version with an empty cache; the store `file://` on
                local disk                                              target >= 0.9x download MB/s
    seq-s3      the same with the store on s3rver (npm, loopback; bench_download's helpers)
                                                                        target >= 0.9x download MB/s
    parquet     pd.read_parquet of a ~300 MiB parquet file (12 columns, 64 row groups), 3 columns
                selected, through dsfs:// with its chunks in the node cache, beside the same read of
                a local copy of the file (both in the page cache: the second of two reads is timed)
                                                                        target >= 0.9x the local read
                (the same read of every column is shown beside, not judged)

Both sides of a seq figure are processes of their own, timed whole (start-up and imports included:
`dsfs download` pays them too), run interleaved --repeat times, medians reported. They run with the
machine's memory full (bench_mount's ballast; --no-ballast leaves it free), as a node's is after a
while. --scale shrinks the file sizes (the 512 MiB files, the parquet file's rows). Everything runs
under WORKDIR/run with its own XDG dirs (bench_mount.isolate: the user's dsfs state is never
touched). The exit code is 1 if a target is missed. (bench_random.py measures small files through
dsfs:// in forked readers beside the mount, the issue's other figure.)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench_download  # noqa: E402  (s3rver and its credentials)
import gen_dataset  # noqa: E402
from bench_mount import isolate, mem_free_mib, memory_full  # noqa: E402  (one isolation, one ballast)

MB = 10**6
READ = 8 << 20  # each read() of the sequential reader
PARQUET_ROWS = 4_000_000  # ~300 MiB at --scale 1 (12 columns: 8 float64, 2 int64, 2 strings)
SELECTED = ["f0", "i0", "s0"]


def read_in_order(store: str, urls: list[str], cache_dir: str) -> int:
    """The reader process of a seq figure: every file through dsfs://, in order, READ at a time."""
    import fsspec

    fs = fsspec.filesystem("dsfs", store=store, cache_dir=cache_dir)
    total = 0
    for url in urls:
        with fs.open(url) as f:
            while block := f.read(READ):
                total += len(block)
    return total


class Bench:
    def __init__(self, args):
        self.args = args
        self.run_dir = os.path.join(os.path.abspath(args.workdir), "run")
        isolate(self.run_dir)
        self.failed = False
        self.dsfs_bin = os.path.join(os.path.dirname(sys.executable), "dsfs")

    def say(self, text: str = "") -> None:
        print(text, flush=True)

    def record(self, figure: str, what: str, value: str, baseline: str, ratio: float | None, target: str,
               ok: bool | None) -> None:
        verdict = "" if ok is None else ("PASS" if ok else "FAIL")
        self.failed |= ok is False
        shown = f"{ratio:.2f}x" if ratio is not None else ""
        self.say(f"  {figure:9} {what:44} {value:>12} {baseline:>32} {shown:>7} {target:>10} {verdict}")

    def timed(self, cmd: list[str], env: dict | None = None) -> float:
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
        return time.perf_counter() - start

    # -- sequential ------------------------------------------------------------------------------

    def ingest(self, store, folder: str, name: str) -> str:
        from dsfs import Dataset

        ds = Dataset.create("bench", name, store=store)
        ds.add_files(folder)
        ds.finalize(max_workers=4, show_progress=False)
        return ds.id

    def seq_figure(self, figure: str, store_url: str, store, env: dict | None = None) -> None:
        """dsfs:// against `dsfs download` of the 4 large files from `store_url`, interleaved."""
        folder = os.path.join(self.args.datadir, f"large-s{self.args.scale}-seed0")
        params = gen_dataset.generate(folder, "large", self.args.scale, 0, quiet=True)
        rels = gen_dataset.data_files(folder)
        dataset_id = self.ingest(store, folder, f"{figure}-large")
        urls = [f"{dataset_id}/{rel}" for rel in rels]
        serial = iter(range(10**6))
        leftovers = []

        def download() -> float:
            n = next(serial)
            target = os.path.join(self.run_dir, f"{figure}-dl-{n}")
            leftovers.append(target)
            return self.timed([self.dsfs_bin, "--store", store_url, "download", dataset_id, target, "--cache-dir",
                               os.path.join(self.run_dir, f"{figure}-cache-dl-{n}")], env)

        def through_fsspec() -> float:
            n = next(serial)
            cache_dir = os.path.join(self.run_dir, f"{figure}-cache-fs-{n}")
            return self.timed([sys.executable, os.path.abspath(__file__), "--read-in-order", store_url, cache_dir,
                               *urls], env)

        downs, reads, free = [], [], []
        with memory_full(self.say) if self.args.ballast else contextlib.nullcontext():
            for _ in range(self.args.repeat):  # interleaved: the machine's noise hits both alike
                for runs, fn in ((downs, download), (reads, through_fsspec)):
                    os.sync()
                    free.append(mem_free_mib())
                    runs.append(fn())
        for target in leftovers:
            shutil.rmtree(target, ignore_errors=True)
        down, read = statistics.median(downs), statistics.median(reads)
        total = params["bytes"]
        self.record(figure, f"4 x {total // 4 >> 20} MiB in order, empty cache", f"{total / read / MB:.0f} MB/s",
                    f"dsfs download {total / down / MB:.0f} MB/s", down / read, ">= 0.9x", down / read >= 0.9)
        self.say(f"    runs: download {', '.join(f'{d:.2f}' for d in downs)} s; dsfs:// "
                 f"{', '.join(f'{r:.2f}' for r in reads)} s (medians reported); free memory before each: "
                 f"{', '.join(map(str, free))} MiB")

    def bench_seq(self) -> None:
        store_url = f"file://{self.run_dir}/store"
        self.seq_figure("seq-file", store_url, store_url)

    def bench_s3(self) -> None:
        bd = bench_download
        s3 = bd.S3rver(self.args.s3rver_dir, os.path.join(self.run_dir, "s3rver-data"),
                       os.path.join(self.run_dir, "s3rver.log"))
        s3.start()
        try:
            from dsfs import Store

            env = dict(os.environ, FSSPEC_S3_ENDPOINT_URL=s3.endpoint, FSSPEC_S3_KEY=bd.KEY, FSSPEC_S3_SECRET=bd.SECRET)
            store = Store(f"s3://{bd.BUCKET}/dsfs", endpoint_url=s3.endpoint, key=bd.KEY, secret=bd.SECRET)
            store.check(create=True)
            self.say(f"S3: s3rver {s3.version()} on {s3.endpoint}")
            self.seq_figure("seq-s3", f"s3://{bd.BUCKET}/dsfs", store, env)
        finally:
            s3.stop()

    # -- parquet ---------------------------------------------------------------------------------

    def parquet_file(self) -> str:
        """A deterministic parquet file of ~300 MiB x scale (random values do not compress)."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = max(10_000, int(PARQUET_ROWS * self.args.scale))
        path = os.path.join(self.args.datadir, f"table-s{self.args.scale}", "table.parquet")
        if os.path.exists(path):
            return path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        rng = np.random.default_rng(19)
        columns = {f"f{i}": rng.random(rows) for i in range(8)}
        columns.update({f"i{i}": rng.integers(0, 1 << 62, rows) for i in range(2)})
        words = np.array([f"w{n:07d}" for n in range(100_000)])
        columns.update({f"s{i}": words[rng.integers(0, len(words), rows)] for i in range(2)})
        pq.write_table(pa.table(columns), path + ".tmp", row_group_size=max(1, rows // 64), compression="none")
        os.replace(path + ".tmp", path)
        return path

    def bench_parquet(self) -> None:
        import pandas as pd

        from dsfs import Dataset
        from dsfs.filesystem import DsfsFileSystem

        path = self.parquet_file()
        size = os.path.getsize(path)
        store_url = f"file://{self.run_dir}/store"
        ds = Dataset.create("bench", "parquet", store=store_url)
        ds.add_files(os.path.dirname(path))
        ds.finalize(show_progress=False)
        local = os.path.join(self.run_dir, "parquet-local", "table.parquet")
        os.makedirs(os.path.dirname(local))
        shutil.copyfile(path, local)
        fs = DsfsFileSystem(store=store_url, skip_instance_cache=True)
        path_in = f"{ds.id}/table.parquet"

        def best(read) -> float:
            runs = []
            for _ in range(self.args.repeat):
                read()  # the first read puts it in the page cache and, through dsfs://, in the node cache
                start = time.perf_counter()
                read()
                runs.append(time.perf_counter() - start)
            return min(runs)

        for what, columns, judged in (("3 of 12 columns", SELECTED, True), ("every column", None, False)):
            ours = best(lambda columns=columns: pd.read_parquet(path_in, columns=columns, filesystem=fs))
            theirs = best(lambda columns=columns: pd.read_parquet(local, columns=columns))
            self.record("parquet", f"pd.read_parquet, {size >> 20} MiB, {what}", f"{ours:.3f} s",
                        f"local copy {theirs:.3f} s", theirs / ours, ">= 0.9x" if judged else "",
                        theirs / ours >= 0.9 if judged else None)

    def main(self) -> int:
        only = self.args.only or ["seq", "s3", "parquet"]
        self.say(f"bench_fsspec --scale {self.args.scale} --repeat {self.args.repeat}; "
                 f"load average {os.getloadavg()[0]:.1f}")
        for name in only:
            getattr(self, f"bench_{name}")()
        if not self.args.keep:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        return 1 if self.failed else 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--read-in-order"]:  # a seq figure's reader process
        store, cache_dir, *urls = argv[1:]
        return 0 if read_in_order(store, urls, cache_dir) > 0 else 1
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="shrink the file sizes (default 1.0)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure (medians; the best for parquet)")
    ap.add_argument("--only", nargs="*", choices=["seq", "s3", "parquet"], help="only these figures")
    ap.add_argument("--workdir", default=os.path.join(HERE, ".work", "fsspec"))
    ap.add_argument("--datadir", default=os.path.join(HERE, ".data"))
    ap.add_argument("--s3rver-dir", default=os.path.join(HERE, ".work"),
                    help="where s3rver is installed from npm (node_modules/), shared with bench_download.py")
    ap.add_argument("--keep", action="store_true", help="keep WORKDIR/run (store, caches, logs)")
    ap.add_argument("--no-ballast", dest="ballast", action="store_false",
                    help="leave free memory free during the seq figures (a quick check on a shared machine)")
    return Bench(ap.parse_args(argv)).main()


if __name__ == "__main__":
    sys.exit(main())

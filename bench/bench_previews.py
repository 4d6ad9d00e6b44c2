#!/usr/bin/env python3
"""What automatic previews cost a close (issue 20). See bench/README.md.

    .venv/bin/python bench/bench_previews.py [--scale F] [--repeat N] [--workdir DIR]

For bench_authoring's two datasets (`small`: 10,000 files of 4-64 KiB; `large`: 4 x 512 MiB; made by
bench/gen_dataset.py) and for `small` with 10 CSV tables and 100 PNG images added (what auto
previews read), one process per run: a fresh file:// store, `add_files`, then `finalize` (which
uploads and closes, as `dsfs close` does) timed, with `preview="none"` and with `preview="auto"`,
alternating, --repeat times each; the median counts. Target: auto adds under 10% to the close.

Then the statistics of a version of `--stats-files` (1,000,000) files from its file table, as close
makes them (previews.write_statistics over the table's path and size columns; no file read), in a
process of their own: the table's two columns are filled (paths as bench_scale's, 1,000 per folder,
sizes 0-1 MiB), then the statistics timed; the process's peak RSS counts the table. Target: under
5 s and under 300 MB (`dsfs stats --recompute`, which decodes the change-sets instead, is
bench_scale's `stats` figure).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import gen_dataset as gen  # noqa: E402
from bench_download import isolated_env  # noqa: E402 - shared bench helpers

TARGET = 1.10

CLOSE = r"""
import json, sys, time
from dsfs import Dataset
folder, store, mode = sys.argv[1:4]
ds = Dataset.create("bench", "previews", store=store)
ds.add_files(folder)
start = time.perf_counter()
ds.finalize(preview=mode, show_progress=False)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "previews": len(ds.previews())}))
"""


STATS = r"""
import json, resource, sys, time
from dsfs.authoring import previews
from dsfs.lineage.filetable import TableBuilder
from dsfs.model import Entry
files = int(sys.argv[1])
new = TableBuilder()
for i in range(files):
    kind = ("jpg", "png", "txt", "json")[i % 4]
    new.append(Entry(path=f"d{i // 1000:05d}/f{i:07d}.{kind}", size=(i * 7919) % (1 << 20)))
table = new.finish()
start = time.perf_counter()
stats = previews.file_statistics((path, size) for path, size, _ in table.rows())
seconds = time.perf_counter() - start
assert stats["files"] == files
print(json.dumps({"seconds": seconds, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def with_samples(source: str, target: str) -> str:
    """A copy of `source` (hard links) with 10 CSV tables and 100 PNG images added."""
    if os.path.isdir(target):
        return target
    shutil.copytree(source, target, copy_function=os.link)
    extra = os.path.join(target, "samples")
    os.makedirs(extra)
    for i in range(10):
        with open(os.path.join(extra, f"t{i}.csv"), "w") as f:
            f.write("id,label,score\n" + "".join(f"{r},{'cat' if r % 3 else 'dog'},{r * 0.5}\n" for r in range(5000)))
    from PIL import Image
    for i in range(100):
        Image.effect_noise((640, 480), 40 + i).save(os.path.join(extra, f"i{i:03d}.png"))
    return target


def close_once(folder: str, mode: str, run_dir: str) -> dict:
    store = os.path.join(run_dir, "store")
    out = subprocess.run([sys.executable, "-c", CLOSE, folder, f"file://{store}", mode], env=isolated_env(run_dir),
                         capture_output=True, text=True, check=True)
    shutil.rmtree(run_dir, ignore_errors=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="dataset sizes (0.01 for a smoke run)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--stats-files", type=int, default=1_000_000, help="files of the statistics figure")
    parser.add_argument("--workdir", default=os.path.join(HERE, ".work", "previews"))
    parser.add_argument("--datadir", default=os.path.join(HERE, ".work", "data"),
                        help="where the generated datasets are kept (bench_authoring's too)")
    a = parser.parse_args()
    data = {}
    for kind in ("small", "large"):
        folder = os.path.join(a.datadir, f"{kind}-s{a.scale:g}-seed0")  # bench_authoring's name: made once
        gen.generate(folder, kind, a.scale, quiet=True)
        data[kind] = folder
    data["small+samples"] = with_samples(data["small"], os.path.join(a.datadir, f"small-samples-s{a.scale:g}"))
    failed = False
    os.makedirs(a.workdir, exist_ok=True)
    print(f"{'dataset':<15} {'close, none':>12} {'close, auto':>12} {'ratio':>6}  previews  target <= {TARGET:.2f}x")
    for name, folder in data.items():
        times: dict[str, list[float]] = {"none": [], "auto": []}
        items = 0
        for _ in range(a.repeat):
            for mode in ("none", "auto"):
                got = close_once(folder, mode, tempfile.mkdtemp(dir=a.workdir))
                times[mode].append(got["seconds"])
                items = got["previews"] if mode == "auto" else items
        none, auto = statistics.median(times["none"]), statistics.median(times["auto"])
        ratio = auto / none
        failed |= ratio > TARGET
        print(f"{name:<15} {none:>11.2f}s {auto:>11.2f}s {ratio:>5.2f}x  {items:>8}  "
              f"{'PASS' if ratio <= TARGET else 'FAIL'}  (runs: none {', '.join(f'{t:.2f}' for t in times['none'])};"
              f" auto {', '.join(f'{t:.2f}' for t in times['auto'])})")
    run_dir = tempfile.mkdtemp(dir=a.workdir)  # the table is made in its own cache dir
    runs = [json.loads(subprocess.run([sys.executable, "-c", STATS, str(a.stats_files)], capture_output=True,
                                      env=isolated_env(run_dir), text=True, check=True).stdout)
            for _ in range(a.repeat)]
    shutil.rmtree(run_dir, ignore_errors=True)
    seconds, rss = statistics.median(r["seconds"] for r in runs), max(r["rss_mb"] for r in runs)
    ok = seconds < 5 and rss < 300
    failed |= not ok
    each = ", ".join(f"{r['seconds']:.2f}" for r in runs)
    print(f"statistics of {a.stats_files:,} files from the file table: {seconds:.2f} s (runs {each}), "
          f"peak RSS {rss:.0f} MB with the table  target < 5 s, < 300 MB  {'PASS' if ok else 'FAIL'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Authoring benchmarks for dsfs, against DVC as the peer. See bench/README.md.

    .venv/bin/python bench/bench_authoring.py [--scale F] [--skip-dvc] [--workdir DIR] [--workers N]
        [--skip-executors | --executors-only]

One run:
  1. generates (or reuses) the deterministic datasets under --datadir (bench/gen_dataset.py);
  2. ingests `large` (4 x 512 MiB) and `small` (10,000 x 4-64 KiB) into fresh file:// stores with
     the Python API (create, add_files, upload, finalize), each in its own process, interleaved
     with `dvc add` of copies of the same data (DVC lives in its own venv, bench/.work/dvc-venv),
     --repeat times each; the median run counts;
  3. measures what a child version costs: 1% of the small files rewritten, and 1 MiB appended
     to a 100 MiB file, against the target "at most 2 x changed bytes + 4 MiB + its change-set",
     and DVC's cache growth for the same two cases;
  4. times the `dsfs` CLI (create, add, close) once, if the console script works;
  5. ingests `large` and `small` again on executors (dsfs.authoring.distributed), each in its own
     process: serially, on a local process pool of 2 (`--workers 2`) and on a Dask LocalCluster of 2
     worker processes (started before the clock starts, as a cluster a user runs already), with the
     driver's own peak RSS (getrusage in the driver: the workers' are not in it), against the targets
     ">= 1.6x serial for the large files on 2 workers" and "no slower than serial for small files";
  6. prints the figures, the ratios dsfs/DVC and PASS/FAIL against the targets (exit code 1 if a
     target is missed).

All dsfs state goes to a temporary XDG_STATE_HOME / XDG_DATA_HOME under the workdir, never the
user's. MB is 10^6 bytes (throughput), MiB is 2^20 bytes (sizes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import gen_dataset as gen  # noqa: E402
from bench_download import Measured, isolated_env, run_measured  # noqa: E402 - shared bench helpers

MiB = 1 << 20
MB = 1_000_000
CHANGED_FRACTION = 0.01
APPEND_BYTES = 1 * MiB
TARGET_RATIO = 1.5
EXECUTOR_MODES = ("serial", "pool", "dask")  # here; `--workers 2`; a Dask LocalCluster of 2 workers
EXECUTOR_TARGETS = {"large": 1.6, "small": 1.0}  # speed-up over serial with 2 workers (issue 22)


# -- helpers --------------------------------------------------------------------------------------

def tree_bytes(path: str) -> tuple[int, int]:
    """(apparent bytes, allocated bytes) of every file under path."""
    apparent = allocated = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            apparent += st.st_size
            allocated += st.st_blocks * 512
    return apparent, allocated


def page_cache_fraction(folder: str) -> float | None:
    """Fraction of a folder's file bytes resident in the page cache (fincore), or None."""
    if not shutil.which("fincore"):
        return None
    files = [os.path.join(folder, rel) for rel in gen.data_files(folder)]
    resident = total = 0
    for i in range(0, len(files), 500):
        try:
            out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES,SIZE",
                                  *files[i:i + 500]], capture_output=True, text=True, check=True).stdout
        except (subprocess.CalledProcessError, OSError):
            return None
        for line in out.splitlines():
            res, size = line.split()
            resident += min(int(res), int(size))  # fincore counts whole pages
            total += int(size)
    return resident / total if total else None


def warm_up(folder: str) -> None:
    """Read every file once, so that the measured runs find the data in the page cache."""
    for rel in gen.data_files(folder):
        with open(os.path.join(folder, rel), "rb", buffering=0) as f:
            while f.read(16 * MiB):
                pass


def fmt_mib(n: float) -> str:
    return f"{n / MiB:,.2f} MiB"


def copy_tree(src: str, dst: str) -> None:
    shutil.copytree(src, dst)


def replace_file(path: str, data: bytes) -> None:
    """Write via a new inode + rename, so a file hard-linked or made read-only by a tool is not
    modified in place (DVC links and chmods its cache)."""
    tmp = path + ".bench-tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def changed_small_files(rel_paths: list[str]) -> list[str]:
    """The 1% of small files a child rewrites: spread evenly over the folders."""
    count = max(1, round(len(rel_paths) * CHANGED_FRACTION))
    step = len(rel_paths) / count
    return [rel_paths[int(i * step)] for i in range(count)]


def rewrite_small(folder: str, rels: list[str], seed: int) -> int:
    """Give the chosen files new random bytes of the same size; returns the bytes changed."""
    changed = 0
    for rel in rels:
        path = os.path.join(folder, rel)
        size = os.path.getsize(path)
        replace_file(path, gen.random_bytes(gen.stream_key(seed, "small-v2", rel), size))
        changed += size
    return changed


def append_tail(path: str, seed: int) -> None:
    with open(path, "rb") as f:
        data = f.read()
    replace_file(path, data + gen.random_bytes(gen.stream_key(seed, "append-tail", "base.bin"), APPEND_BYTES))


# -- the dsfs worker (runs in its own process, so wall, CPU and RSS are its own) ------------------

def worker(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="bench_authoring.py _worker")
    ap.add_argument("--store", required=True)
    ap.add_argument("--folder", required=True)
    ap.add_argument("--project", default="bench")
    ap.add_argument("--name", required=True)
    ap.add_argument("--parent")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--executor", choices=["serial", "pool", "dask"], default="serial",
                    help="where to chunk, hash and pack: here, a process pool, a Dask LocalCluster")
    ap.add_argument("--executor-workers", type=int, default=2)
    ap.add_argument("--profile")
    args = ap.parse_args(argv)

    def ingest(executor=None) -> dict:
        import resource

        from dsfs import Dataset
        t0 = time.perf_counter()
        ds = Dataset.create(project=args.project, name=args.name, store=args.store,
                            parents=[args.parent] if args.parent else None)
        t1 = time.perf_counter()
        ds.add_files(args.folder)
        t2 = time.perf_counter()
        up = ds.upload(max_workers=None if executor else args.workers, show_progress=False, executor=executor)
        t3 = time.perf_counter()
        ds.finalize(show_progress=False)
        t4 = time.perf_counter()
        return {"id": ds.id, "version": ds.version, "create_s": t1 - t0, "add_s": t2 - t1, "upload_s": t3 - t2,
                "finalize_s": t4 - t3, "total_s": t4 - t0, "upload": up,
                "changes_size": ds.info.changes.get("size", 0),
                "stats": {k: v for k, v in ds.info.stats.items() if k != "packs"},
                "packs": len(ds.info.stats.get("packs", [])),
                "driver_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}

    if args.executor != "serial":
        return executor_worker(args, ingest)

    if args.profile:
        import cProfile
        prof = cProfile.Profile()
        result = prof.runcall(ingest)
        prof.dump_stats(args.profile)
    else:
        result = ingest()
    print(json.dumps(result))
    return 0


def executor_worker(args, ingest) -> int:
    """The ingest on a process pool (its start-up timed: `--workers N` starts one per command) or on
    a Dask LocalCluster started first (not timed: a cluster is already running)."""
    if args.executor == "pool":
        from dsfs.store.executors import process_pool

        t0 = time.perf_counter()
        with process_pool(args.executor_workers) as pool:
            result = ingest(pool)
        result["total_s"] = time.perf_counter() - t0  # with the pool's start and shutdown
    else:
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=args.executor_workers, threads_per_worker=1, processes=True,
                          dashboard_address=None, silence_logs=40) as cluster, \
                Client(cluster, set_as_default=False) as client:
            result = ingest(client.get_executor())
    print(json.dumps(result))
    return 0


# -- the benchmark -------------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.python = sys.executable
        self.run_dir = os.path.join(args.workdir, "run")
        self.results: dict = {}
        self.lines: list[str] = []
        self.env = isolated_env(self.run_dir)
        self.env.update({"DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": os.path.join(self.run_dir, "dvc-site-cache")})

    def say(self, text: str = "") -> None:
        print(text, flush=True)

    # datasets

    def prepare(self) -> None:
        a = self.args
        self.data = {}
        for kind in ("large", "small", "append"):
            folder = os.path.join(a.datadir, f"{kind}-s{a.scale:g}-seed{a.seed}")
            self.data[kind] = (folder, gen.generate(folder, kind, a.scale, a.seed))
        if os.path.isdir(self.run_dir):
            shutil.rmtree(self.run_dir)
        os.makedirs(self.run_dir)

    def dsfs_ingest(self, label: str, store_dir: str, folder: str, name: str, parent: str | None = None,
                    profile: str | None = None, executor: str = "serial") -> tuple[Measured, dict]:
        cmd = [self.python, os.path.abspath(__file__), "_worker", "--store", "file://" + store_dir,
               "--folder", folder, "--name", name, "--workers", str(self.args.workers), "--executor", executor]
        if parent:
            cmd += ["--parent", parent]
        if profile:
            cmd += ["--profile", profile]
        os.sync()
        m = run_measured(cmd, env=self.env)
        if m.rc != 0:
            raise SystemExit(f"dsfs {label} failed (exit {m.rc}):\n{m.stderr[-3000:]}")
        return m, json.loads(m.stdout.strip().splitlines()[-1])

    # -- dsfs --

    def bench_ingest(self, dvc: str | None) -> None:
        """Ingest throughput, dsfs and DVC interleaved, --repeat times each; the median run counts.
        Repetition 0's store and DVC repo are kept for the child measurements."""
        r = self.results
        runs: dict[str, list] = {}
        for rep in range(self.args.repeat):
            for kind in ("large", "small"):
                folder, meta = self.data[kind]
                store = os.path.join(self.run_dir, f"dsfs-store-{kind}-{rep}")
                m, out = self.dsfs_ingest(kind, store, folder, kind)
                runs.setdefault(f"dsfs_{kind}", []).append(
                    {"m": m, "out": out, "meta": meta, "store": store, "store_bytes": tree_bytes(store)[0]})
                if rep:
                    shutil.rmtree(store)
                if dvc and "dvc_error" not in r:
                    try:
                        runs.setdefault(f"dvc_{kind}", []).append(self.dvc_ingest(dvc, kind, rep))
                    except RuntimeError as exc:
                        r["dvc_error"] = str(exc)
        for key, rows in runs.items():
            if key.startswith("dvc_") and "dvc_error" in r:
                continue
            walls = [row["m"].wall for row in rows]
            median = sorted(rows, key=lambda row: row["m"].wall)[len(rows) // 2]
            r[key] = dict(median, walls=walls, first=rows[0])

    def dvc_ingest(self, dvc: str, kind: str, rep: int) -> dict:
        folder, meta = self.data[kind]
        repo = self.dvc_repo(dvc, f"dvc-{kind}-{rep}")
        copy_tree(folder, os.path.join(repo, "data"))  # not timed
        m = self.dvc(dvc, repo, "add", "-q", "data")
        sync_s = self.timed_sync()
        row = {"m": m, "sync_s": sync_s, "meta": meta, "repo": repo,
               "cache": tree_bytes(os.path.join(repo, ".dvc", "cache"))[0]}
        sample = os.path.join(repo, "data", gen.data_files(folder)[0])
        row["link"] = "hardlink/shared" if os.stat(sample).st_nlink > 1 else "copy"
        if rep:
            shutil.rmtree(repo)
        return row

    def bench_executors(self) -> None:
        """Serial vs a process pool of 2 vs a Dask LocalCluster of 2, per dataset, interleaved,
        --repeat times; the median run (by the ingest's own time) counts."""
        runs: dict[str, list] = {}
        for rep in range(self.args.repeat):
            for kind in ("large", "small"):
                folder, meta = self.data[kind]
                for mode in EXECUTOR_MODES:
                    store = os.path.join(self.run_dir, f"dsfs-store-{kind}-{mode}-{rep}")
                    m, out = self.dsfs_ingest(f"{kind} {mode}", store, folder, kind, executor=mode)
                    runs.setdefault(f"{kind}/{mode}", []).append({"m": m, "out": out, "meta": meta})
                    shutil.rmtree(store)
        self.results["executors"] = {key: sorted(rows, key=lambda row: row["out"]["total_s"])[len(rows) // 2]
                                     for key, rows in runs.items()}

    def bench_dsfs_children(self) -> None:
        r = self.results
        run = self.run_dir
        # child: 1% of the small files rewritten; the whole folder is added again (a re-sync)
        folder, meta = self.data["small"]
        child_dir = os.path.join(run, "small-child")
        copy_tree(folder, child_dir)
        rels = gen.data_files(child_dir)
        self.changed_rels = changed_small_files(rels)
        changed = rewrite_small(child_dir, self.changed_rels, self.args.seed)
        store = r["dsfs_small"]["first"]["store"]
        before = tree_bytes(store)
        m, out = self.dsfs_ingest("small child", store, child_dir, "small",
                                  parent=r["dsfs_small"]["first"]["out"]["id"])
        after = tree_bytes(store)
        r["dsfs_small_child"] = {"m": m, "out": out, "changed_files": len(self.changed_rels),
                                 "changed_bytes": changed, "growth": after[0] - before[0],
                                 "growth_alloc": after[1] - before[1], "files": len(rels)}

        # child: 1 MiB appended to a 100 MiB file
        folder, meta = self.data["append"]
        store = os.path.join(run, "dsfs-store-append")
        m0, out0 = self.dsfs_ingest("append parent", store, folder, "append")
        child_dir = os.path.join(run, "append-child")
        copy_tree(folder, child_dir)
        append_tail(os.path.join(child_dir, "base.bin"), self.args.seed)
        before = tree_bytes(store)
        m, out = self.dsfs_ingest("append child", store, child_dir, "append", parent=out0["id"])
        after = tree_bytes(store)
        r["dsfs_append"] = {"m0": m0, "out0": out0, "m": m, "out": out, "base_bytes": meta["bytes"],
                            "changed_bytes": APPEND_BYTES, "growth": after[0] - before[0],
                            "growth_alloc": after[1] - before[1]}

    def bench_cli(self) -> None:
        dsfs_bin = os.path.join(os.path.dirname(self.python), "dsfs")
        if not os.path.exists(dsfs_bin):
            self.results["cli"] = {"skipped": f"no {dsfs_bin} console script"}
            return
        probe = run_measured([dsfs_bin, "--help"], env=self.env)
        if probe.rc != 0:
            self.results["cli"] = {"skipped": f"`dsfs --help` failed: {probe.error()}"}
            return
        out = {}
        for kind in ("large", "small"):
            folder, meta = self.data[kind]
            env = dict(self.env, DSFS_STORE="file://" + os.path.join(self.run_dir, f"dsfs-store-cli-{kind}"))
            steps = [["create", "--project", "bench", "--name", f"cli-{kind}"], ["add", "--files", folder], ["close"]]
            total = cpu = 0.0
            os.sync()
            for step in steps:
                m = run_measured([dsfs_bin, *step], env=env)
                if m.rc != 0:
                    self.results["cli"] = {"skipped": f"`dsfs {' '.join(step[:1])}` failed: {m.error()}"}
                    return
                total += m.wall
                cpu += m.cpu
            out[kind] = {"wall": total, "cpu": cpu, "meta": meta}
        self.results["cli"] = out

    # -- DVC --

    def find_dvc(self) -> str | None:
        if self.args.dvc:
            return self.args.dvc
        venv = os.path.join(self.args.workdir, "dvc-venv")
        dvc = os.path.join(venv, "bin", "dvc")
        if not os.path.exists(dvc):
            self.say(f"installing dvc into {venv} (not the project venv) ...")
            try:
                subprocess.run([sys.executable, "-m", "venv", venv], check=True, capture_output=True)
                subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", "dvc"], check=True,
                               capture_output=True, text=True)
            except subprocess.CalledProcessError as exc:
                tail = ((exc.stderr or "") + (exc.stdout or "")).strip().splitlines()[-1:] or [str(exc)]
                self.results["dvc_error"] = f"could not install dvc: {tail[0][:200]}"
                return None
        return dvc if os.path.exists(dvc) else None

    def dvc(self, dvc: str, repo: str, *args: str) -> Measured:
        os.sync()
        m = run_measured([dvc, *args], cwd=repo, env=self.env)
        if m.rc != 0:
            raise RuntimeError(f"`dvc {' '.join(args)}` failed in {repo}: {m.error()}")
        return m

    def dvc_repo(self, dvc: str, name: str) -> str:
        repo = os.path.join(self.run_dir, name)
        os.makedirs(repo)
        self.dvc(dvc, repo, "init", "--no-scm", "-q")
        return repo

    def timed_sync(self) -> float:
        t = time.perf_counter()
        os.sync()
        return time.perf_counter() - t

    def bench_dvc_children(self, dvc: str) -> None:
        r = self.results
        try:
            # child: the same 1% of small files rewritten with the same new bytes
            repo = r["dvc_small"]["first"]["repo"]
            cache = os.path.join(repo, ".dvc", "cache")
            before = tree_bytes(cache)[0]
            changed = rewrite_small(os.path.join(repo, "data"), self.changed_rels, self.args.seed)
            m = self.dvc(dvc, repo, "add", "-q", "data")
            r["dvc_small_child"] = {"m": m, "changed_bytes": changed, "growth": tree_bytes(cache)[0] - before}

            # child: 1 MiB appended to the 100 MiB file
            folder, meta = self.data["append"]
            repo = self.dvc_repo(dvc, "dvc-append")
            shutil.copy(os.path.join(folder, "base.bin"), os.path.join(repo, "base.bin"))
            m0 = self.dvc(dvc, repo, "add", "-q", "base.bin")
            cache = os.path.join(repo, ".dvc", "cache")
            before = tree_bytes(cache)[0]
            append_tail(os.path.join(repo, "base.bin"), self.args.seed)
            m = self.dvc(dvc, repo, "add", "-q", "base.bin")
            r["dvc_append"] = {"m0": m0, "m": m, "growth": tree_bytes(cache)[0] - before}
        except RuntimeError as exc:
            r["dvc_error"] = str(exc)

    # -- report --

    def report(self, cache_state: dict, started: float) -> int:
        r, say, a = self.results, self.say, self.args
        failures = 0

        def walls(d: dict) -> str:
            return ", ".join(f"{w:.2f}" for w in d["walls"]) + " s (median shown)"

        def verdict(ok: bool) -> str:
            nonlocal failures
            failures += 0 if ok else 1
            return "PASS" if ok else "FAIL"

        say()
        say("=" * 100)
        say(f"dsfs authoring benchmark   scale={a.scale:g}  seed={a.seed}  upload workers={a.workers}  "
            f"cpus={os.cpu_count()}  python={sys.version.split()[0]}")
        say(f"data: {a.datadir}   workdir: {self.run_dir}")
        say("input data read once before measuring; page-cache residency then (fincore): " + ", ".join(
            f"{kind} {'unknown' if frac is None else f'{frac:.0%}'}" for kind, frac in cache_state.items())
            + " -> both tools read warm data (no cache drop)")
        say("store: file:// on the local disk; dsfs fsyncs each pack; DVC does not fsync "
            "(its 'incl. sync' figure adds a `sync` after `dvc add`).")
        say("MB = 10^6 bytes; MiB = 2^20 bytes. Wall times include process start-up and imports.")
        say("-" * 100)

        if a.executors_only:
            self.report_executors(verdict)
            say(f"total benchmark run time {time.perf_counter() - started:.0f}s; "
                f"{'all targets met' if not failures else f'{failures} target(s) missed'}")
            return 1 if failures else 0
        say("1. Ingest into a fresh store (Python API: create + add_files + upload + finalize, own process; "
            f"median of {a.repeat})")
        for kind in ("large", "small"):
            d = r[f"dsfs_{kind}"]
            m, out, meta = d["m"], d["out"], d["meta"]
            mbps, fps = meta["bytes"] / MB / m.wall, meta["files"] / m.wall
            say(f"  dsfs {kind:5s}: {meta['files']:>6,} files, {fmt_mib(meta['bytes']):>14} in {m.wall:7.2f}s wall "
                f"({m.cpu:6.2f}s CPU, peak RSS {m.rss_mib:,.0f} MiB) = {mbps:8.1f} MB/s, {fps:9.1f} files/s")
            say(f"             phases: create {out['create_s']:.2f}s, add_files {out['add_s']:.2f}s, "
                f"upload {out['upload_s']:.2f}s, finalize {out['finalize_s']:.2f}s; "
                f"{out['packs']} packs, store {fmt_mib(d['store_bytes'])}; runs {walls(d)}")
        cli = r.get("cli")
        if cli is not None:
            if "skipped" in cli:
                say(f"  dsfs CLI     : skipped ({cli['skipped']})")
            else:
                for kind, c in cli.items():
                    meta = c["meta"]
                    say(f"  dsfs CLI {kind:5s}: create+add+close {c['wall']:.2f}s wall ({c['cpu']:.2f}s CPU) = "
                        f"{meta['bytes'] / MB / c['wall']:.1f} MB/s, {meta['files'] / c['wall']:.1f} files/s")

        dvc_ok = "dvc_large" in r and "dvc_small" in r
        if dvc_ok:
            say(f"  DVC {r.get('dvc_version', '?')} (`dvc add` of a copy of the same data in a fresh "
                f"`dvc init --no-scm` "
                f"repo, default config; cache link: {r['dvc_large']['link']}):")
            for kind in ("large", "small"):
                d = r[f"dvc_{kind}"]
                m, meta = d["m"], d["meta"]
                say(f"  dvc  {kind:5s}: {meta['files']:>6,} files, {fmt_mib(meta['bytes']):>14} in {m.wall:7.2f}s wall "
                    f"({m.cpu:6.2f}s CPU, peak RSS {m.rss_mib:,.0f} MiB) = {meta['bytes'] / MB / m.wall:8.1f} MB/s, "
                    f"{meta['files'] / m.wall:9.1f} files/s")
                say(f"             incl. the `sync` after it {m.wall + d['sync_s']:.2f}s; runs {walls(d)}")
        else:
            say(f"  DVC: not measured ({r.get('dvc_error', 'skipped with --skip-dvc')})")
        say("-" * 100)

        say("2. Storage a child version costs (target: store growth <= 2 x changed bytes + 4 MiB + its change-set)")
        c = r["dsfs_small_child"]
        out = c["out"]
        limit = 2 * c["changed_bytes"] + 4 * MiB + out["changes_size"]
        say(f"  (a) {c['changed_files']} of {c['files']:,} small files rewritten ({CHANGED_FRACTION:.0%}), "
            f"changed bytes "
            f"{fmt_mib(c['changed_bytes'])}; child adds the whole folder again (re-sync)")
        say(f"      dsfs child: stats.new_bytes {fmt_mib(out['stats']['new_bytes'])}, store grew "
            f"{fmt_mib(c['growth'])} (du: {fmt_mib(c['growth_alloc'])}), change-set {out['changes_size']:,} B, "
            f"{out['stats'].get('modified', 0)} modified")
        say(f"      growth / changed = {c['growth'] / c['changed_bytes']:.2f}x; limit {fmt_mib(limit)} -> "
            f"{verdict(c['growth'] <= limit)}; child ingest {c['m'].wall:.2f}s wall "
            f"({c['files'] / c['m'].wall:,.0f} files/s re-read)")
        if "dvc_small_child" in r:
            d = r["dvc_small_child"]
            say(f"      DVC child: cache grew {fmt_mib(d['growth'])} (file-level: the {c['changed_files']} files), "
                f"`dvc add` {d['m'].wall:.2f}s")
        c = r["dsfs_append"]
        out = c["out"]
        limit = 2 * c["changed_bytes"] + 4 * MiB + out["changes_size"]
        say(f"  (b) 1 MiB appended to a {fmt_mib(c['base_bytes'])} file")
        say(f"      dsfs child: stats.new_bytes {fmt_mib(out['stats']['new_bytes'])}, store grew "
            f"{fmt_mib(c['growth'])} (du: {fmt_mib(c['growth_alloc'])}), change-set {out['changes_size']:,} B")
        say(f"      growth / appended = {c['growth'] / c['changed_bytes']:.2f}x; limit {fmt_mib(limit)} -> "
            f"{verdict(c['growth'] <= limit)}; child ingest {c['m'].wall:.2f}s wall")
        say(f"      a file-level tool stores the whole file again: {fmt_mib(c['base_bytes'] + APPEND_BYTES)} "
            f"({(c['base_bytes'] + APPEND_BYTES) / max(1, c['growth']):.0f}x dsfs's growth)")
        if "dvc_append" in r:
            d = r["dvc_append"]
            say(f"      DVC child: cache grew {fmt_mib(d['growth'])} (`dvc add` {d['m'].wall:.2f}s)")
        say("-" * 100)

        if "executors" in r:
            self.report_executors(verdict)
        say(f"3. Ratios dsfs / DVC (target >= {TARGET_RATIO}x)")
        if dvc_ok:
            for kind, unit in (("large", "MB/s"), ("small", "files/s")):
                ds, dv = r[f"dsfs_{kind}"], r[f"dvc_{kind}"]
                ratio = dv["m"].wall / ds["m"].wall  # same data, so the throughput ratio is the time ratio
                synced = (dv["m"].wall + dv["sync_s"]) / ds["m"].wall
                say(f"  {kind:5s} ({unit:7s}): dsfs/DVC = {ratio:5.2f}x  -> {verdict(ratio >= TARGET_RATIO)}"
                    f"   (vs DVC incl. sync: {synced:.2f}x; CPU-time ratio DVC/dsfs {dv['m'].cpu / ds['m'].cpu:.2f}x)")
            if "dvc_append" in r:
                ds, dv = r["dsfs_append"], r["dvc_append"]
                say(f"  append child storage: DVC/dsfs = {dv['growth'] / max(1, ds['growth']):.1f}x")
        else:
            say(f"  not measured: {r.get('dvc_error', 'skipped with --skip-dvc')}")
        say("-" * 100)
        say(f"total benchmark run time {time.perf_counter() - started:.0f}s; "
            f"{'all targets met' if not failures else f'{failures} target(s) missed'}")
        return 1 if failures else 0

    def report_executors(self, verdict) -> None:
        say, runs = self.say, self.results["executors"]
        say(f"4. Ingest on executors (Python API, own process; median of {self.args.repeat} by the ingest's time): "
            "serial, `--workers 2` (a spawned process pool, its start-up timed), a Dask LocalCluster of 2 worker "
            "processes (started before the clock: a running cluster)")
        for kind in ("large", "small"):
            serial = runs[f"{kind}/serial"]["out"]["total_s"]
            for mode in EXECUTOR_MODES:
                row = runs[f"{kind}/{mode}"]
                out, meta = row["out"], row["meta"]
                speedup = serial / out["total_s"]
                target = EXECUTOR_TARGETS[kind]
                check = "" if mode == "serial" else f" -> target >= {target:g}x {verdict(speedup >= target)}"
                say(f"  {kind:5s} {mode:6s}: {out['total_s']:7.2f}s (upload {out['upload_s']:.2f}s) = "
                    f"{meta['bytes'] / MB / out['total_s']:8.1f} MB/s, {meta['files'] / out['total_s']:9.1f} files/s; "
                    f"{speedup:4.2f}x serial; driver peak RSS {out['driver_rss_mib']:,.0f} MiB; "
                    f"process wall {row['m'].wall:.2f}s{check}")
        say("-" * 100)

    def profile(self) -> None:
        """Re-run the two dsfs ingests under cProfile and print where time goes."""
        import pstats
        out_dir = os.path.join(self.args.workdir, "profiles")
        os.makedirs(out_dir, exist_ok=True)
        for kind in ("large", "small"):
            folder, _ = self.data[kind]
            prof = os.path.join(out_dir, f"dsfs-{kind}.prof")
            store = os.path.join(self.run_dir, f"dsfs-store-profile-{kind}")
            self.dsfs_ingest(f"profile {kind}", store, folder, f"profile-{kind}", profile=prof)
            self.say(f"\n--- cProfile, dsfs ingest {kind} (main thread; {prof}) ---")
            stats = pstats.Stats(prof, stream=sys.stdout)
            stats.sort_stats("tottime").print_stats(15)

    def main(self) -> int:
        started = time.perf_counter()
        self.prepare()
        for folder, _ in self.data.values():  # both tools then read the same warm page cache
            warm_up(folder)
        cache_state = {kind: page_cache_fraction(folder) for kind, (folder, _) in self.data.items()}
        dvc = None
        if self.args.skip_dvc:
            self.results["dvc_error"] = "skipped with --skip-dvc"
        else:
            dvc = self.find_dvc()
            if dvc is None:
                self.results.setdefault("dvc_error", "dvc not available")
            else:
                self.results["dvc_version"] = run_measured([dvc, "--version"], env=self.env).stdout.strip()
        if not self.args.executors_only:
            self.say(f"measuring ingest, dsfs{' and DVC' if dvc else ''} interleaved, "
                     f"{self.args.repeat} run(s) each ...")
            self.bench_ingest(dvc)
            self.say("measuring child versions ...")
            self.bench_dsfs_children()
            if dvc and "dvc_error" not in self.results:
                self.bench_dvc_children(dvc)
            if not self.args.skip_cli:
                self.say("timing the CLI path ...")
                self.bench_cli()
        if not self.args.skip_executors:
            self.say(f"measuring ingest on executors ({', '.join(EXECUTOR_MODES)}), "
                     f"{self.args.repeat} run(s) each ...")
            self.bench_executors()
        rc = self.report(cache_state, started)
        if self.args.profile:
            self.profile()
        if not self.args.keep:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        return rc


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        return worker(argv[1:])
    ap = argparse.ArgumentParser(description="dsfs authoring benchmarks (ingest throughput, child cost, vs DVC)")
    ap.add_argument("--scale", type=float, default=1.0, help="shrink dataset sizes/counts, e.g. 0.05 (default 1)")
    ap.add_argument("--skip-dvc", action="store_true", help="do not measure DVC")
    ap.add_argument("--skip-cli", action="store_true", help="do not time the `dsfs` CLI path")
    ap.add_argument("--workdir", default=os.path.join(HERE, ".work"), help="scratch space (default bench/.work)")
    ap.add_argument("--datadir", default=os.path.join(HERE, ".data"), help="generated data (default bench/.data)")
    ap.add_argument("--workers", type=int, default=4, help="dsfs upload max_workers (default 4)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="ingest runs per tool and dataset, interleaved; the median counts (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dvc", help="a dvc executable to use instead of bench/.work/dvc-venv/bin/dvc")
    ap.add_argument("--profile", action="store_true", help="afterwards, cProfile the dsfs ingests and print the top")
    ap.add_argument("--keep", action="store_true", help="keep the stores and DVC repos under WORKDIR/run")
    ap.add_argument("--skip-executors", action="store_true", help="do not measure ingest on executors (step 5)")
    ap.add_argument("--executors-only", action="store_true", help="measure only the ingest on executors (step 5)")
    args = ap.parse_args(argv)
    if args.skip_executors and args.executors_only:
        ap.error("--skip-executors and --executors-only exclude each other")
    if args.executors_only:
        args.skip_dvc = True
    if args.scale <= 0:
        ap.error("--scale must be positive")
    args.workdir = os.path.abspath(args.workdir)
    args.datadir = os.path.abspath(args.datadir)
    return Bench(args).main()


if __name__ == "__main__":
    sys.exit(main())

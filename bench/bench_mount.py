#!/usr/bin/env python3
"""Mount benchmark: every figure beside its baseline, measured in one run.

    .venv/bin/python bench/bench_mount.py [--scale 0.05] [--repeat 3] [--skip-rclone] [--only NAMES]

Figures (targets from issue 4):

    seq-cold    read 4 x 512 MiB through `dsfs mount`, chunks in the node cache but not in RAM,
                beside `cat` of the same files from local disk, not in RAM, and beside `rclone mount
                --read-only` of the local folder                                   target >= 1 GB/s
    seq-ram     the same with the chunk files in RAM (the FUSE path's ceiling)
    seq-again   the second read of the same mount (kernel page cache) beside a second `cat` of the
                local files                                                        target >= 0.8x
    find        `find -type f -printf '%s %T@'` (a stat per file) over 10,000 files in 100 folders,
                right after mounting and again                       targets >= 10,000 / 20,000 files/s
    small       reading all 10,000 small files (chunks cached), beside rclone, local disk and
                bench/fuse_floor.py (pyfuse3 serving as many files from memory and doing nothing
                else: the ceiling of a pyfuse3 file system here)          target >= 5,000 files/s
    ls-100k     `dsfs mount` until the first `ls` of the root returns, 100,000-file version, view cached
                                                                                    target < 2 s
    rss-1m      peak daemon RSS serving a 1,000,000-file version: mount (view build), then `find` over
                every file; with a cache of its own, and with the cache the other figures filled
                (the view's B-tree pages are then half full: see docs/mount.md)     target < 500 MB

"Not in RAM" is made per file with posix_fadvise(DONTNEED) on the local files and on every chunk file
(nothing else on the machine is evicted); a fresh mount starts with an empty page cache of its own.
The 100k and 1M versions are synthetic change-sets (entries pointing at chunks that are never read),
written through the store API; every other dataset is ingested from bench/gen_dataset.py's data.

    s3-seq      `cat` of the 4 x 512 MiB through a fresh mount with an empty cache, the store on s3rver
                (npm, loopback; bench_download's helpers), beside `dsfs download` of the same version
                with an empty cache, interleaved in the same run                   target >= 0.8x
    s3-small    the same for the 10,000 small files (`find | xargs cat` vs `dsfs download`)
                                                                                    target >= 0.8x
The S3 figures time the reads alone (`dsfs mount` returns before, its time is shown beside); both sides
get s3rver's objects from the page cache (authoring just wrote them). They run with the machine's
memory full, as a node's is after a while: a ballast in /dev/shm leaves ~2 GiB free, so new
page-cache pages come from reclaim. This VM (Firecracker, free page reporting) hands free memory back
to its host, and every page taken from it again costs a host fault: a run that fills free memory ran
1.5-2x slower, and a mount fills two pages per byte read (the chunk file and the FUSE file's cache)
where a download fills one, so with free memory the figure measured the VM (docs/mount.md).

Everything runs under WORKDIR/run with its own XDG dirs (the user's dsfs state is never touched).
The exit code is 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_download  # noqa: E402  (s3rver and its credentials)
import gen_dataset  # noqa: E402
from synthetic import synthetic_version  # noqa: E402

MB = 1e6
MiB = 1 << 20


def wait_mounted(mountpoint: str, what: str, proc: subprocess.Popen | None = None) -> None:
    """Wait (20 s at most) until a mount started elsewhere answers; fail early if `proc` died."""
    deadline = time.monotonic() + 20
    while not os.path.ismount(mountpoint):
        if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not mount {mountpoint}")
        time.sleep(0.05)


def isolate(run_dir: str) -> None:
    """Start run_dir afresh and point this process (and so every dsfs it starts) at XDG dirs inside
    it, with no DSFS_* setting of the caller's: the user's dsfs state and default store are never
    touched."""
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    for var in ("XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_RUNTIME_DIR"):
        os.environ[var] = os.path.join(run_dir, var.lower())
        os.makedirs(os.environ[var])
    for var in ("DSFS_STORE", "DSFS_DATASTORE", "DSFS_CACHE_DIR", "DSFS_CACHE_SIZE", "DSFS_RUNTIME_DIR"):
        os.environ.pop(var, None)


class Bench:
    def __init__(self, args):
        self.args = args
        self.workdir = os.path.abspath(args.workdir)
        self.run_dir = os.path.join(self.workdir, "run")
        self.results: list[tuple] = []
        self.failed = False
        isolate(self.run_dir)
        self.store = f"file://{self.run_dir}/store"
        self.cache_dir = os.path.join(self.run_dir, "cache")
        self.dsfs = [os.path.join(os.path.dirname(sys.executable), "dsfs"), "--store", self.store]
        self.rclone = None if args.skip_rclone else shutil.which("rclone")

    def say(self, text: str = "") -> None:
        print(text, flush=True)

    # -- helpers -------------------------------------------------------------------------------

    def sh(self, cmd, **kwargs) -> float:
        """Run a command; returns its wall time."""
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kwargs)
        return time.perf_counter() - start

    def best(self, fn) -> float:
        """The best (shortest) of --repeat runs of fn() -> seconds."""
        return min(fn() for _ in range(self.args.repeat))

    def mount(self, dataset_id: str, name: str) -> tuple[str, int]:
        mountpoint = os.path.join(self.run_dir, "mnt", name)
        os.makedirs(mountpoint, exist_ok=True)
        out = subprocess.run([*self.dsfs, "mount", dataset_id, mountpoint, "--cache-dir", self.cache_dir],
                             check=True, capture_output=True, text=True).stdout
        pid = int(out.split("(pid ")[1].split(",")[0])
        return mountpoint, pid

    def unmount(self, mountpoint: str) -> None:
        subprocess.run([*self.dsfs, "unmount", mountpoint], check=True, capture_output=True)

    def rclone_mount(self, source: str, name: str) -> str:
        mountpoint = os.path.join(self.run_dir, "mnt", name)
        os.makedirs(mountpoint, exist_ok=True)
        config = os.path.join(self.run_dir, "rclone.conf")
        open(config, "a").close()
        subprocess.run([self.rclone, "mount", source, mountpoint, "--read-only", "--daemon", "--config", config],
                       check=True, capture_output=True)
        wait_mounted(mountpoint, "rclone mount")
        return mountpoint

    def fuse_floor(self, files: int, size: int, cmd: str) -> float:
        """`cmd` over bench/fuse_floor.py: pyfuse3 serving `files` files of `size` bytes from memory
        and doing nothing else, the ceiling of any pyfuse3 file system on this machine."""
        mountpoint = os.path.join(self.run_dir, "mnt", "fuse-floor")
        os.makedirs(mountpoint, exist_ok=True)
        proc = subprocess.Popen([sys.executable, os.path.join(HERE, "fuse_floor.py"), mountpoint, str(files), str(size)])
        try:
            wait_mounted(mountpoint, "bench/fuse_floor.py", proc)
            return self.sh(cmd.format(mountpoint), shell=True)
        finally:
            if os.path.ismount(mountpoint):
                self.kernel_unmount(mountpoint)
            proc.wait(timeout=20)

    def kernel_unmount(self, mountpoint: str) -> None:
        subprocess.run(["fusermount3", "-u", mountpoint], check=True)

    @staticmethod
    def evict(paths) -> None:
        """Drop these files from the page cache (and nothing else; dirty pages are written first, as
        DONTNEED skips them)."""
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    def chunk_files(self) -> list[str]:
        root = os.path.join(self.cache_dir, "chunks")
        return [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]

    def record(self, figure: str, what: str, value: str, baseline: str, ratio: str, target: str, ok: bool | None):
        verdict = "" if ok is None else ("PASS" if ok else "FAIL")
        self.failed |= ok is False
        self.results.append((figure, what, value, baseline, ratio, target, verdict))
        self.say(f"  {figure:10} {what:34} {value:>16} {baseline:>40} {ratio:>7} {target:>12} {verdict}")

    # -- data ----------------------------------------------------------------------------------

    def ingest(self, folder: str, name: str) -> str:
        from dsfs import Dataset

        ds = Dataset.create("bench", name, store=self.store)
        ds.add_files(folder)
        ds.finalize(show_progress=False)
        return ds.id

    def warm_cache(self, dataset_id: str) -> None:
        from dsfs.node.cache import Cache
        from dsfs.dataset import open_store
        from dsfs.node.view import View

        view = View(open_store(self.store), Cache(self.cache_dir), dataset_id)
        view.warm()
        view.close()

    def synthetic(self, files: int, name: str) -> str:
        return synthetic_version(self.store, files, name)

    # -- figures -------------------------------------------------------------------------------

    def bench_sequential(self) -> None:
        scale = self.args.scale
        folder = os.path.join(self.args.datadir, f"large-s{scale}-seed0")
        params = gen_dataset.generate(folder, "large", scale, 0, quiet=True)
        files = [os.path.join(folder, rel) for rel in gen_dataset.data_files(folder)]
        total = params["bytes"]
        self.say(f"sequential read: {len(files)} x {total / len(files) / MiB:.0f} MiB")
        dataset_id = self.ingest(folder, "large")
        self.warm_cache(dataset_id)
        rels = gen_dataset.data_files(folder)

        def local_cold():
            self.evict(files)
            return self.sh(["cat", *files])

        def dsfs_read(cold_chunks: bool):
            def run():
                if cold_chunks:
                    self.evict(self.chunk_files())
                else:
                    subprocess.run(["cat", *self.chunk_files()], stdout=subprocess.DEVNULL, check=True)
                mountpoint, _ = self.mount(dataset_id, "large")
                try:
                    return self.sh(["cat", *(os.path.join(mountpoint, r) for r in rels)])
                finally:
                    self.unmount(mountpoint)
            return run

        local = self.best(local_cold)
        baseline = f"cat local disk {total / local / MB:.0f} MB/s"
        rclone = None
        if self.rclone:
            def rclone_cold():
                self.evict(files)
                mountpoint = self.rclone_mount(folder, "rclone-large")
                try:
                    return self.sh(["cat", *(os.path.join(mountpoint, r) for r in rels)])
                finally:
                    self.kernel_unmount(mountpoint)
            rclone = self.best(rclone_cold)
            baseline += f", rclone {total / rclone / MB:.0f} MB/s"
        cold = self.best(dsfs_read(cold_chunks=True))
        self.record("seq-cold", "dsfs mount, chunks on disk", f"{total / cold / MB:.0f} MB/s", baseline,
                    f"{local / cold:.2f}x", ">= 1000 MB/s", total / cold >= 1000 * MB)
        ram = self.best(dsfs_read(cold_chunks=False))
        self.record("seq-ram", "dsfs mount, chunk files in RAM", f"{total / ram / MB:.0f} MB/s", baseline,
                    f"{local / ram:.2f}x", "", None)

        mountpoint, _ = self.mount(dataset_id, "large")
        try:
            self.sh(["cat", *(os.path.join(mountpoint, r) for r in rels)])
            again = self.best(lambda: self.sh(["cat", *(os.path.join(mountpoint, r) for r in rels)]))
        finally:
            self.unmount(mountpoint)
        self.sh(["cat", *files])
        local_again = self.best(lambda: self.sh(["cat", *files]))
        self.record("seq-again", "second read (page cache)", f"{total / again / MB:.0f} MB/s",
                    f"cat local, second read {total / local_again / MB:.0f} MB/s", f"{local_again / again:.2f}x",
                    ">= 0.8x", local_again / again >= 0.8)

    def bench_small(self) -> None:
        scale = self.args.scale
        folder = os.path.join(self.args.datadir, f"small-s{scale}-seed0")
        params = gen_dataset.generate(folder, "small", scale, 0, quiet=True)
        count = params["files"]
        self.say(f"small files: {count} files, {params['bytes'] / MiB:.0f} MiB in 100 folders")
        dataset_id = self.ingest(folder, "small")
        self.warm_cache(dataset_id)
        find = ["find", "{}", "-type", "f", "-printf", "%s %T@\\n"]
        read_all = "find {} -type f -print0 | xargs -0 -n 500 cat > /dev/null"

        def on(mountpoint: str, cmd):
            if isinstance(cmd, str):
                return self.sh(cmd.format(mountpoint), shell=True)
            return self.sh([c.format(mountpoint) for c in cmd])

        def fresh_dsfs(cmd, then=None):
            mountpoint, _ = self.mount(dataset_id, "small")
            try:
                first = on(mountpoint, cmd)
                second = on(mountpoint, then) if then else None
            finally:
                self.unmount(mountpoint)
            return first, second

        runs = [fresh_dsfs(find, find) for _ in range(self.args.repeat)]
        cold, warm = min(r[0] for r in runs), min(r[1] for r in runs)
        local = self.best(lambda: on(folder, find))
        base_cold = base_warm = f"local disk (warm) {count / local:,.0f} files/s"
        if self.rclone:
            def rclone_find():
                mountpoint = self.rclone_mount(folder, "rclone-small")
                try:
                    return on(mountpoint, find), on(mountpoint, find)
                finally:
                    self.kernel_unmount(mountpoint)
            rruns = [rclone_find() for _ in range(self.args.repeat)]
            base_cold = f"rclone {count / min(r[0] for r in rruns):,.0f} files/s, " + base_cold
            base_warm = f"rclone {count / min(r[1] for r in rruns):,.0f} files/s, " + base_warm
        self.record("find", "find + stat, right after mount", f"{count / cold:,.0f} files/s", base_cold, "",
                    ">= 10,000/s", count / cold >= 10_000)
        self.record("find", "find + stat, again", f"{count / warm:,.0f} files/s", base_warm, "",
                    ">= 20,000/s", count / warm >= 20_000)

        reading = min(fresh_dsfs(read_all)[0] for _ in range(self.args.repeat))
        local_read = self.best(lambda: on(folder, read_all))
        floor = self.best(lambda: self.fuse_floor(count, params["bytes"] // count, read_all))
        baseline = (f"pyfuse3 doing nothing {count / floor:,.0f} files/s, "
                    f"local disk (warm) {count / local_read:,.0f} files/s")
        if self.rclone:
            def rclone_read():
                mountpoint = self.rclone_mount(folder, "rclone-small")
                try:
                    return on(mountpoint, read_all)
                finally:
                    self.kernel_unmount(mountpoint)
            baseline = f"rclone {count / self.best(rclone_read):,.0f} files/s, " + baseline
        self.record("small", "read every file, chunks cached", f"{count / reading:,.0f} files/s", baseline, "",
                    ">= 5,000/s", count / reading >= 5_000)

    def bench_s3(self) -> None:
        """Cold reads from S3 through a fresh mount (empty cache) vs `dsfs download`, interleaved."""
        bd = bench_download
        s3 = bd.S3rver(self.args.s3rver_dir, os.path.join(self.run_dir, "s3rver-data"),
                       os.path.join(self.run_dir, "s3rver.log"))
        s3.start()
        saved = {k: os.environ.get(k) for k in ("FSSPEC_S3_ENDPOINT_URL", "FSSPEC_S3_KEY", "FSSPEC_S3_SECRET")}
        try:
            os.environ.update({"FSSPEC_S3_ENDPOINT_URL": s3.endpoint, "FSSPEC_S3_KEY": bd.KEY,
                               "FSSPEC_S3_SECRET": bd.SECRET})
            from dsfs import Store

            store = Store(f"s3://{bd.BUCKET}/dsfs", endpoint_url=s3.endpoint, key=bd.KEY, secret=bd.SECRET)
            store.check(create=True)
            self.say(f"S3: s3rver {s3.version()} on {s3.endpoint}")
            for kind in ("large", "small"):
                with memory_full(self.say):
                    self.s3_figure(store, kind)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            s3.stop()

    def s3_figure(self, store, kind: str) -> None:
        from dsfs import Dataset

        scale = self.args.scale
        folder = os.path.join(self.args.datadir, f"{kind}-s{scale}-seed0")
        params = gen_dataset.generate(folder, kind, scale, 0, quiet=True)
        rels = gen_dataset.data_files(folder)
        ds = Dataset.create("bench", f"s3-{kind}", store=store)
        ds.add_files(folder)
        ds.finalize(max_workers=4, show_progress=False)
        url = f"s3://{bench_download.BUCKET}/dsfs"
        dsfs = [os.path.join(os.path.dirname(sys.executable), "dsfs"), "--store", url]
        serial = iter(range(10**6))
        # Copies are deleted after all runs, not between them: on ext4 without a journal (this
        # machine's disk) a new inode skips every inode freed in the last 30 s (recently_deleted),
        # so creating 10,000 files right after deleting 10,000 took 2-3x longer; deleting each
        # download before the mount run made the mount pay for it.
        leftovers = []

        def download():
            n = next(serial)
            target = os.path.join(self.run_dir, f"s3-dl-{kind}-{n}")
            took = self.sh([*dsfs, "download", ds.id, target, "--cache-dir",
                            os.path.join(self.run_dir, f"s3-cache-dl-{kind}-{n}")])
            leftovers.append(target)
            return took

        def mounted():
            n = next(serial)
            mountpoint = os.path.join(self.run_dir, "mnt", f"s3-{kind}")
            os.makedirs(mountpoint, exist_ok=True)
            start = time.perf_counter()
            subprocess.run([*dsfs, "mount", ds.id, mountpoint, "--cache-dir",
                            os.path.join(self.run_dir, f"s3-cache-mnt-{kind}-{n}")], check=True, capture_output=True)
            mounting = time.perf_counter() - start
            try:
                if kind == "large":
                    took = self.sh(["cat", *(os.path.join(mountpoint, r) for r in rels)])
                else:
                    took = self.sh(f"find {mountpoint} -type f -print0 | xargs -0 -n 500 cat > /dev/null", shell=True)
            finally:
                self.unmount(mountpoint)
            return took, mounting

        downs, mounts, free = [], [], []
        for _ in range(self.args.repeat):  # interleaved: the machine's noise hits both alike
            os.sync()
            free.append(mem_free_mib())
            downs.append(download())
            os.sync()
            free.append(mem_free_mib())
            mounts.append(mounted())
        for target in leftovers:
            shutil.rmtree(target, ignore_errors=True)
        import statistics

        down = statistics.median(downs)
        read = statistics.median(m[0] for m in mounts)
        mounting = statistics.median(m[1] for m in mounts)
        if kind == "large":
            total = params["bytes"]
            value, base = f"{total / read / MB:.0f} MB/s", f"dsfs download {total / down / MB:.0f} MB/s"
        else:
            count = params["files"]
            value, base = f"{count / read:,.0f} files/s", f"dsfs download {count / down:,.0f} files/s"
        self.record(f"s3-{'seq' if kind == 'large' else 'small'}", f"cold from S3, fresh mount (+{mounting:.1f} s mount)",
                    value, base, f"{down / read:.2f}x", ">= 0.8x", down / read >= 0.8)
        self.say(f"    runs: download {', '.join(f'{d:.2f}' for d in downs)} s; "
                 f"mount read {', '.join(f'{m[0]:.2f}' for m in mounts)} s (medians reported); "
                 f"free memory before each: {', '.join(map(str, free))} MiB")

    def bench_ls_100k(self) -> None:
        files = max(1000, int(100_000 * self.args.scale))
        dataset_id = self.synthetic(files, "synthetic-100k")
        mountpoint, _ = self.mount(dataset_id, "ls")  # builds the view once
        self.unmount(mountpoint)

        def mount_then_ls():
            start = time.perf_counter()
            mountpoint, _ = self.mount(dataset_id, "ls")
            names = os.listdir(mountpoint)
            took = time.perf_counter() - start
            assert len(names) == (files + 999) // 1000
            self.unmount(mountpoint)
            return took

        took = self.best(mount_then_ls)
        self.record("ls-100k", f"dsfs mount -> first ls, {files:,} files", f"{took:.2f} s", "", "", "< 2 s",
                    took < 2)

    def bench_rss_1m(self) -> None:
        files = max(1000, int(1_000_000 * self.args.scale))
        dataset_id = self.synthetic(files, "synthetic-1m")
        self.rss(dataset_id, files, os.path.join(self.run_dir, "cache-1m"), "own cache")
        self.rss(dataset_id, files, self.cache_dir, "cache shared")

    def rss(self, dataset_id: str, files: int, cache_dir: str, which: str) -> None:
        """Mount (building the view), `find` every file; the daemon's memory sampled all along."""
        mountpoint = os.path.join(self.run_dir, "mnt", "rss")
        os.makedirs(mountpoint, exist_ok=True)
        # the daemon in the foreground, so that its memory is sampled from its first instant (view build)
        proc = subprocess.Popen([*self.dsfs, "mount", "--foreground", dataset_id, mountpoint,
                                 "--cache-dir", cache_dir], stderr=subprocess.DEVNULL)
        peaks = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
        done = False

        def sample():
            while not done:
                try:
                    for line in open(f"/proc/{proc.pid}/status"):
                        key, _, value = line.partition(":")
                        if key in peaks:
                            peaks[key] = max(peaks[key], int(value.split()[0]) * 1024)
                except OSError:
                    return
                time.sleep(0.02)

        import threading

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None:
                raise RuntimeError("the 1M-file mount failed")
            time.sleep(0.05)
        built = time.perf_counter() - start
        try:
            start = time.perf_counter()
            out = subprocess.run(["find", mountpoint, "-type", "f", "-printf", "%s\\n"], check=True,
                                 capture_output=True, text=True).stdout
            walked = time.perf_counter() - start
            assert len(out.splitlines()) == files
            hwm = int(open(f"/proc/{proc.pid}/status").read().split("VmHWM:")[1].split()[0]) * 1024
        finally:
            done = True
            proc.terminate()
            proc.wait()
        self.record("rss-1m", f"peak daemon RSS, {which}", f"{hwm / MB:.0f} MB",
                    f"mount {built:.1f} s (view build), find {files / walked:,.0f} files/s", "", "< 500 MB",
                    hwm < 500 * MB)
        self.record("rss-1m", f"  {files:,} files: private (RssAnon)", f"{peaks['RssAnon'] / MB:.0f} MB",
                    f"file-backed peak {peaks['RssFile'] / MB:.0f} MB (LMDB map, code)", "", "", None)

    def main(self) -> int:
        self.say(f"dsfs mount benchmark, scale {self.args.scale}, best of {self.args.repeat}; "
                 f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        self.say(f"  {'figure':10} {'what':34} {'dsfs':>16} {'baseline (same run)':>40} {'ratio':>7} "
                 f"{'target':>12}")
        figures = {"seq": self.bench_sequential, "small": self.bench_small, "ls": self.bench_ls_100k,
                   "rss": self.bench_rss_1m, "s3": self.bench_s3}
        for name, fn in figures.items():
            if not self.args.only or name in self.args.only:
                fn()
        self.say(f"done; load average now {os.getloadavg()[0]:.1f}")
        if not self.args.keep:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        return 1 if self.failed else 0


def mem_free_mib() -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("MemFree:"))


@contextlib.contextmanager
def memory_full(say, leave_mib: int = 2048):
    """Fill free memory but `leave_mib` with a ballast file in /dev/shm (tmpfs: not reclaimable), so
    what the measured commands put in the page cache comes from reclaim, as on a busy node."""
    path = f"/dev/shm/dsfs-bench-ballast-{os.getpid()}"
    block = os.urandom(16 << 20)
    try:
        with open(path, "wb") as f:
            for _ in range(max(0, mem_free_mib() - leave_mib) // 16):
                f.write(block)
        say(f"  (memory full: {os.path.getsize(path) >> 20} MiB ballast in /dev/shm, {mem_free_mib()} MiB free)")
    except OSError as exc:
        say(f"  (no ballast: {exc}; figures depend on free memory)")
    try:
        yield
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="shrink every size and count (default 1.0)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure; the best is reported")
    ap.add_argument("--skip-rclone", action="store_true", help="no rclone baselines")
    ap.add_argument("--only", nargs="*", choices=["seq", "small", "ls", "rss", "s3"], help="only these figures")
    ap.add_argument("--workdir", default=os.path.join(HERE, ".work", "mount"))
    ap.add_argument("--datadir", default=os.path.join(HERE, ".data"))
    ap.add_argument("--s3rver-dir", default=os.path.join(HERE, ".work"),
                    help="where s3rver is installed from npm (node_modules/), shared with bench_download.py")
    ap.add_argument("--keep", action="store_true", help="keep WORKDIR/run (store, cache, logs)")
    args = ap.parse_args(argv)
    try:
        return Bench(args).main()
    finally:
        for line in open("/proc/self/mounts"):
            point = line.split()[1]
            if point.startswith(os.path.join(os.path.abspath(args.workdir), "run")):
                subprocess.run(["fusermount3", "-u", "-z", point], capture_output=True)


if __name__ == "__main__":
    sys.exit(main())

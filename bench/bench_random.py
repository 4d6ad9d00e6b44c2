#!/usr/bin/env python3
"""Random-access benchmark (issue 15): every figure beside its baseline, measured in one run.

    .venv/bin/python bench/bench_random.py [--scale 0.1] [--repeat 3] [--only shuffle fio]

The mount was tuned for files read in order; ML jobs read the other way. Figures:

    shuffle-cold  one epoch over 20,000 files of 1-64 KiB (bench/gen_dataset.py kind `shuffle`, 100
                  folders) in a shuffled order by 8 reader processes (multiprocessing, forked; each
                  takes the next path of one shared shuffled list and reads the whole file, as a
                  DataLoader's workers do), through a fresh `dsfs mount` with an empty node cache,
                  beside `dsfs download` of the same version (empty cache) and the same read of the
                  local folder, its files evicted first              target >= 0.5x download files/s
    shuffle-warm  a second epoch, new shuffle, same mount (node cache and kernel page cache filled by
                  the first), beside bench/fuse_floor.py serving as many files of the mean size (two
                  epochs in the same two orders, the second timed) and the local folder (warm)
                                                                     target >= 0.8x fuse_floor
    torch         the same epochs through torch.utils.data.DataLoader(num_workers=8), only if torch
                  is importable (skipped with the reason otherwise)
    fio-*         fio (Debian's; installed with apt-get when missing and root) `--rw=randread`, 4 jobs,
                  on a 1 GiB file, 4 KiB and 128 KiB, `--ioengine=psync` and `mmap`; psync jobs each on
                  their own quarter (`--size` + `--offset_increment`, fio's random map: no block read
                  twice); fio 3.33's mmap engine ignores offsets (every job reads from 0), so mmap jobs
                  each read a quarter's worth of the whole span (`--io_size`, `--randrepeat=0`) and may
                  meet pages another job faulted in (local and dsfs alike); chunks in
                  the node cache, the page cache of the chunk files and of the file evicted before each
                  run, a fresh mount per run; beside the same fio on the local file, evicted
                                                                     target 4 KiB >= 8,000 IOPS
    floor-*       the 4 KiB psync figure beside bench/fuse_floor.py serving the local file (evicted) by
                  os.pread of the 64 KiB blocks each read touches, nothing else: each read on a trio
                  worker thread (`thread`), on the event loop when the page cache holds it and on a
                  thread when not (`nowait`, what the mount does), or on the loop always (`inline`,
                  which blocks it for as long as the disk takes): what pyfuse3 reaches here
    span-4k       the 4 KiB rate over the 1 GiB span beside the rate over its first 128 MiB (same jobs,
                  a quarter each)                                    target within 20 %
    fsspec-*      the same two epochs through dsfs:// (issue 19): a DsfsFileSystem made in the parent,
                  8 forked readers calling cat_file, a fresh node cache, beside the mount's epochs
                                                                     target >= 1.0x the mount
    daemon        the mount daemon's CPU time (utime+stime of /proc/<pid>/stat) per 4 KiB read, and the
                  bytes it read from disk (/proc/<pid>/io read_bytes) per byte fio was served

Sizes and counts shrink with --scale (the 1 GiB file, the 128 MiB span, the file count; fio's runtime
cap is max(2 s, 15 s x scale)). "Evicted" is posix_fadvise(POSIX_FADV_DONTNEED) per file (after one
`sync`), never /proc/sys/vm/drop_caches: nothing else on the machine is dropped. The store is `file://`
on local disk, its packs in the page cache (authoring just wrote them) for the mount and the download
alike, so the store is not the bottleneck. Datasets are made with the CLI (`dsfs create/add/close`)
and mounted with `dsfs mount`/`dsfs unmount`; the fio file's chunks are put in the node cache with
View.warm (as bench_mount.py does). Everything runs under WORKDIR/run with its own XDG dirs (the
user's dsfs state is never touched). The exit code is 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gen_dataset  # noqa: E402
from bench_mount import isolate, wait_mounted  # noqa: E402  (one isolation, one mount wait)

MB = 1e6
MiB = 1 << 20
KiB = 1 << 10
READERS = 8
FIO_JOBS = 4


def evict(paths) -> None:
    """Drop these files' pages from the page cache, nothing else (callers `os.sync()` first: DONTNEED
    skips dirty pages). No fsync per file: the mount is read-only."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident_bytes(paths) -> int:
    """Bytes of these files in the page cache (util-linux fincore), -1 if it cannot tell."""
    paths = list(paths)
    total = 0
    try:
        for i in range(0, len(paths), 500):
            out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES",
                                  *paths[i:i + 500]], check=True, capture_output=True, text=True).stdout
            total += sum(int(x) for x in out.split())
    except (OSError, subprocess.CalledProcessError, ValueError):
        return -1
    return total


# -- the shuffled epoch: 8 forked readers over one shared list ---------------------------------------

_FS: list = []  # a dsfs:// filesystem forked readers inherit (set before the fork, never pickled)


def _reader(paths, counter, barrier, done, slot):
    fs = _FS[0] if _FS else None
    barrier.wait()
    total = files = 0
    n = len(paths)
    while True:
        with counter.get_lock():
            i = counter.value
            counter.value = i + 1
        if i >= n:
            break
        if fs is not None:
            total += len(fs.cat_file(paths[i]))  # the whole file, verified, through the node cache
        else:
            with open(paths[i], "rb") as f:  # the whole file, as a Dataset's __getitem__ does
                total += len(f.read())
        files += 1
    done[2 * slot] = files
    done[2 * slot + 1] = total


def read_epoch(paths: list[str], readers: int = READERS) -> tuple[float, int, int]:
    """Read every path once with `readers` processes; returns (seconds, files, bytes). The clock
    starts when every reader is forked and waiting, and stops when the last one has exited."""
    ctx = multiprocessing.get_context("fork")
    counter = ctx.Value("q", 0)
    barrier = ctx.Barrier(readers + 1)
    done = ctx.Array("q", 2 * readers, lock=False)
    procs = [ctx.Process(target=_reader, args=(paths, counter, barrier, done, k)) for k in range(readers)]
    for p in procs:
        p.start()
    try:
        barrier.wait(timeout=60)
        start = time.perf_counter()
        for p in procs:
            p.join()
        took = time.perf_counter() - start
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    if any(p.exitcode != 0 for p in procs):
        raise RuntimeError(f"a reader failed (exit codes {[p.exitcode for p in procs]})")
    return took, sum(done[0::2]), sum(done[1::2])


def fs_epoch(fs, paths: list[str], readers: int = READERS) -> tuple[float, int, int]:
    """`read_epoch` through a dsfs:// filesystem made in this process and inherited by the forked
    readers (a DataLoader's workers reading with fsspec), no mount in the way."""
    _FS[:] = [fs]
    try:
        return read_epoch(paths, readers)
    finally:
        _FS.clear()


def torch_epoch(paths: list[str], readers: int = READERS) -> tuple[float, int, int]:
    """One epoch through torch.utils.data.DataLoader, in the order given (a fixed sampler)."""
    import torch.utils.data as tud

    class Files(tud.Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, i):
            with open(paths[i], "rb") as f:
                return len(f.read())

    loader = tud.DataLoader(Files(), batch_size=None, sampler=list(range(len(paths))), num_workers=readers,
                            multiprocessing_context="fork")
    start = time.perf_counter()
    total = files = 0
    for n in loader:
        total += int(n)
        files += 1
    return time.perf_counter() - start, files, total


def proc_cpu_io(pid: int) -> tuple[float, int]:
    """(utime+stime in seconds, read_bytes) of a process, all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/io") as f:
        io = dict(line.split(": ") for line in f.read().splitlines())
    return cpu, int(io["read_bytes"])


class Bench:
    def __init__(self, args):
        self.args = args
        self.workdir = os.path.abspath(args.workdir)
        self.run_dir = os.path.join(self.workdir, "run")
        self.results: list[tuple] = []
        self.failed = False
        isolate(self.run_dir)
        self.store = f"file://{self.run_dir}/store"
        self.dsfs = [os.path.join(os.path.dirname(sys.executable), "dsfs"), "--store", self.store]
        self.serial = iter(range(10**6))
        self.leftovers: list[str] = []

    def say(self, text: str = "") -> None:
        print(text, flush=True)

    def record(self, figure, what, value, baseline, ratio, target, ok):
        verdict = "" if ok is None else ("PASS" if ok else "FAIL")
        self.failed |= ok is False
        self.results.append((figure, what, value, baseline, ratio, target, verdict))
        self.say(f"  {figure:13} {what:36} {value:>20} {baseline:>58} {ratio:>7} {target:>16} {verdict}")

    # -- dsfs through its CLI ------------------------------------------------------------------

    def cli(self, *args: str) -> str:
        return subprocess.run([*self.dsfs, *args], check=True, capture_output=True, text=True).stdout

    def ingest(self, folder: str, name: str) -> str:
        start = time.perf_counter()
        dataset_id = self.cli("create", "--project", "bench", "--name", name).split()[-1]
        self.cli("add", "--files", folder, "--id", dataset_id)
        self.cli("close", "--id", dataset_id)
        self.say(f"  ({name}: dsfs create/add/close {time.perf_counter() - start:.1f} s, id {dataset_id})")
        return dataset_id

    def mount(self, dataset_id: str, name: str, cache_dir: str) -> tuple[str, int]:
        """`dsfs mount`; returns the mountpoint and the daemon's pid (from `dsfs mounts --json`)."""
        mountpoint = os.path.join(self.run_dir, "mnt", name)
        os.makedirs(mountpoint, exist_ok=True)
        self.cli("mount", dataset_id, mountpoint, "--cache-dir", cache_dir)
        live = json.loads(self.cli("mounts", "--json"))
        pids = [r["pid"] for r in live if os.path.realpath(r["mountpoint"]) == os.path.realpath(mountpoint)]
        if not pids:
            raise RuntimeError(f"`dsfs mounts --json` does not list {mountpoint}: {live}")
        return mountpoint, int(pids[0])

    def unmount(self, mountpoint: str) -> None:
        self.cli("unmount", mountpoint)

    def warm_cache(self, dataset_id: str, cache_dir: str) -> dict:
        from dsfs.dataset import open_store
        from dsfs.node.cache import Cache
        from dsfs.node.view import View

        view = View(open_store(self.store), Cache(cache_dir), dataset_id)
        try:
            return view.warm()
        finally:
            view.close()

    @staticmethod
    def chunk_files(cache_dir: str) -> list[str]:
        root = os.path.join(cache_dir, "chunks")
        return [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]

    # -- shuffled epochs -----------------------------------------------------------------------

    def bench_shuffle(self) -> None:
        scale, repeat = self.args.scale, self.args.repeat
        folder = os.path.join(self.args.datadir, f"shuffle-s{scale}-seed0")
        params = gen_dataset.generate(folder, "shuffle", scale, 0, quiet=True)
        rels = gen_dataset.data_files(folder)
        count, total = len(rels), params["bytes"]
        assert count == params["files"]
        self.say(f"shuffled epochs: {count:,} files of 1-64 KiB ({total / MiB:.0f} MiB, mean "
                 f"{total / count / KiB:.1f} KiB) in 100 folders, {READERS} reader processes")
        dataset_id = self.ingest(folder, "shuffle")
        orders = [list(range(count)) for _ in range(2)]
        for epoch, order in enumerate(orders):
            random.Random(f"bench_random/epoch{epoch}").shuffle(order)
        cold_order, warm_order = orders

        def epochs(root: str, names: list[str], before_cold=None) -> tuple[float, float]:
            if before_cold:
                before_cold()
            cold = read_epoch([os.path.join(root, names[i]) for i in cold_order])
            warm = read_epoch([os.path.join(root, names[i]) for i in warm_order])
            for _took, files, nbytes in (cold, warm):
                if files != count or (names is rels and nbytes != total):
                    raise RuntimeError(f"an epoch read {files} files / {nbytes} bytes, expected {count} / {total}")
            return cold[0], warm[0]

        local_paths = [os.path.join(folder, r) for r in rels]

        def local_evict():
            os.sync()
            evict(local_paths)

        local = [epochs(folder, rels, local_evict) for _ in range(repeat)]
        local_cold, local_warm = min(r[0] for r in local), min(r[1] for r in local)

        def download() -> float:
            n = next(self.serial)
            target = os.path.join(self.run_dir, f"download-{n}")
            cache = os.path.join(self.run_dir, f"cache-download-{n}")
            os.sync()  # no writeback of an earlier step's files during the timed run (download and mount alike)
            start = time.perf_counter()
            self.cli("download", dataset_id, target, "--cache-dir", cache)
            took = time.perf_counter() - start
            self.leftovers += [target, cache]  # deleted at the end (see bench_mount.py on ext4 inodes)
            return took

        downs = [download() for _ in range(repeat)]
        down = min(downs)

        daemon = {}

        def mounted() -> tuple[float, float, float]:
            n = next(self.serial)
            cache = os.path.join(self.run_dir, f"cache-shuffle-{n}")  # empty: a fresh node cache
            os.sync()
            start = time.perf_counter()
            mountpoint, pid = self.mount(dataset_id, "shuffle", cache)
            mounting = time.perf_counter() - start
            try:
                cpu0, _ = proc_cpu_io(pid)
                cold = read_epoch([os.path.join(mountpoint, rels[i]) for i in cold_order])
                cpu1, _ = proc_cpu_io(pid)
                warm = read_epoch([os.path.join(mountpoint, rels[i]) for i in warm_order])
                cpu2, _ = proc_cpu_io(pid)
            finally:
                self.unmount(mountpoint)
            for _took, files, nbytes in (cold, warm):
                if files != count or nbytes != total:
                    raise RuntimeError(f"an epoch through the mount read {files} files / {nbytes} bytes, "
                                       f"expected {count} / {total}")
            daemon.setdefault("cold", []).append(cpu1 - cpu0)
            daemon.setdefault("warm", []).append(cpu2 - cpu1)
            self.leftovers.append(cache)
            return cold[0], warm[0], mounting

        runs = [mounted() for _ in range(repeat)]
        cold, warm = min(r[0] for r in runs), min(r[1] for r in runs)
        mounting = sorted(r[2] for r in runs)[len(runs) // 2]

        size = total // count
        floor_names = [f"f{i:07d}" for i in range(count)]

        def floor_run() -> tuple[float, float]:
            mountpoint = os.path.join(self.run_dir, "mnt", "fuse-floor")
            os.makedirs(mountpoint, exist_ok=True)
            proc = subprocess.Popen([sys.executable, os.path.join(HERE, "fuse_floor.py"), mountpoint,
                                     str(count), str(size)])
            try:
                wait_mounted(mountpoint, "bench/fuse_floor.py", proc)
                return epochs(mountpoint, floor_names)
            finally:
                if os.path.ismount(mountpoint):
                    subprocess.run(["fusermount3", "-u", mountpoint], check=True)
                proc.wait(timeout=20)

        floor = [floor_run() for _ in range(repeat)]
        floor_cold, floor_warm = min(r[0] for r in floor), min(r[1] for r in floor)

        def through_fsspec() -> tuple[float, float]:
            from dsfs.filesystem import DsfsFileSystem

            n = next(self.serial)
            cache = os.path.join(self.run_dir, f"cache-fsspec-{n}")  # empty: a fresh node cache
            fs = DsfsFileSystem(store=self.store, dataset=dataset_id, cache_dir=cache, skip_instance_cache=True)
            fs.ls("")  # the version resolved and its view built before the clock, as a mount does
            os.sync()
            cold = fs_epoch(fs, [rels[i] for i in cold_order])
            warm = fs_epoch(fs, [rels[i] for i in warm_order])
            for _took, files, nbytes in (cold, warm):
                if files != count or nbytes != total:
                    raise RuntimeError(f"an epoch through dsfs:// read {files} files / {nbytes} bytes")
            self.leftovers.append(cache)
            return cold[0], warm[0]

        fsspec_runs = [through_fsspec() for _ in range(repeat)]
        fs_cold, fs_warm = min(r[0] for r in fsspec_runs), min(r[1] for r in fsspec_runs)

        def rate(seconds: float) -> str:
            return f"{count / seconds:,.0f} files/s"

        self.record("shuffle-cold", "epoch 1, fresh mount, empty cache", f"{rate(cold)} {total / cold / MB:.0f} MB/s",
                    f"dsfs download {rate(down)}, local disk (evicted) {rate(local_cold)}",
                    f"{down / cold:.2f}x", ">= 0.5x download", down / cold >= 0.5)
        self.record("shuffle-warm", "epoch 2 (new shuffle), same mount", f"{rate(warm)} {total / warm / MB:.0f} MB/s",
                    f"pyfuse3 doing nothing {rate(floor_warm)}, local disk (warm) {rate(local_warm)}",
                    f"{floor_warm / warm:.2f}x", ">= 0.8x floor", floor_warm / warm >= 0.8)
        self.record("fsspec-cold", "epoch 1 through dsfs://, empty cache", rate(fs_cold),
                    f"the mount, epoch 1 {rate(cold)}", f"{cold / fs_cold:.2f}x", ">= 1.0x the mount",
                    cold / fs_cold >= 1.0)
        self.record("fsspec-warm", "epoch 2 through dsfs://", rate(fs_warm),
                    f"the mount, epoch 2 {rate(warm)}", f"{warm / fs_warm:.2f}x", ">= 1.0x the mount",
                    warm / fs_warm >= 1.0)
        cpu_cold = min(daemon["cold"]) / count * 1e6
        cpu_warm = min(daemon["warm"]) / count * 1e6
        self.say(f"    (mount {mounting:.2f} s, not timed; fuse_floor epoch 1 {rate(floor_cold)} at {size:,} B a file; "
                 f"daemon CPU per file: epoch 1 {cpu_cold:.0f} us, epoch 2 {cpu_warm:.0f} us; runs: mount epoch 1 "
                 f"{', '.join(f'{r[0]:.2f}' for r in runs)} s, epoch 2 {', '.join(f'{r[1]:.2f}' for r in runs)} s, "
                 f"download {', '.join(f'{t:.2f}' for t in downs)} s)")

        try:
            import torch  # noqa: F401
        except ImportError as exc:
            self.say(f"  {'torch':13} skipped: torch is not importable ({exc})")
            return
        n = next(self.serial)
        mountpoint, _ = self.mount(dataset_id, "shuffle", os.path.join(self.run_dir, f"cache-shuffle-{n}"))
        try:
            tcold = torch_epoch([os.path.join(mountpoint, rels[i]) for i in cold_order])[0]
            twarm = torch_epoch([os.path.join(mountpoint, rels[i]) for i in warm_order])[0]
        finally:
            self.unmount(mountpoint)
        local_evict()
        lcold = torch_epoch([os.path.join(folder, rels[i]) for i in cold_order])[0]
        lwarm = torch_epoch([os.path.join(folder, rels[i]) for i in warm_order])[0]
        self.record("torch-cold", "DataLoader(num_workers=8), epoch 1", rate(tcold),
                    f"local disk (evicted) {rate(lcold)}", f"{lcold / tcold:.2f}x", "", None)
        self.record("torch-warm", "DataLoader(num_workers=8), epoch 2", rate(twarm),
                    f"local disk (warm) {rate(lwarm)}", f"{lwarm / twarm:.2f}x", "", None)

    # -- fio -----------------------------------------------------------------------------------

    def fio_available(self) -> str | None:
        """None if fio can run, else the reason it cannot."""
        if shutil.which("fio"):
            return None
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            return "fio is not installed (Debian: apt-get install fio) and this is not root with apt-get"
        self.say("  (installing fio: apt-get install -y fio)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        ok = subprocess.run(["apt-get", "install", "-y", "fio"], capture_output=True, env=env).returncode == 0
        if not ok:
            subprocess.run(["apt-get", "update"], capture_output=True, env=env)
            ok = subprocess.run(["apt-get", "install", "-y", "fio"], capture_output=True, env=env).returncode == 0
        return None if ok and shutil.which("fio") else "apt-get install -y fio failed"

    def fio(self, path: str, bs: int, engine: str, span: int) -> dict:
        """fio randread of the first `span` bytes of `path`: FIO_JOBS jobs, a quarter each."""
        quarter = span // FIO_JOBS // bs * bs
        runtime = max(2, round(15 * self.args.scale))
        if engine == "mmap":  # fio 3.33's mmap engine ignores --offset/--offset_increment (reads from 0)
            layout = [f"--size={quarter * FIO_JOBS}", f"--io_size={quarter}", "--randrepeat=0"]
        else:
            layout = [f"--size={quarter}", f"--offset_increment={quarter}"]
        cmd = ["fio", "--name=randread", f"--filename={path}", "--rw=randread", f"--bs={bs}",
               f"--ioengine={engine}", f"--numjobs={FIO_JOBS}", *layout,
               f"--runtime={runtime}", "--group_reporting", "--output-format=json", "--invalidate=1"]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        job = json.loads(out[out.index("{"):])["jobs"][0]
        read = job["read"]
        seconds = read["runtime"] / 1000 or 1e-3
        return {"iops": read["total_ios"] / seconds, "bytes_s": read["io_bytes"] / seconds,
                "ios": read["total_ios"], "io_bytes": read["io_bytes"], "seconds": seconds,
                "p99_us": read.get("clat_ns", {}).get("percentile", {}).get("99.000000", 0) / 1000}

    def bench_fio(self) -> None:
        why = self.fio_available()
        if why:
            self.say(f"  {'fio':13} skipped: {why}")
            return
        version = subprocess.run(["fio", "--version"], capture_output=True, text=True).stdout.strip()
        scale, repeat = self.args.scale, self.args.repeat
        folder = os.path.join(self.args.datadir, f"span-s{scale}-seed0")
        params = gen_dataset.generate(folder, "span", scale, 0, quiet=True)
        size = params["bytes"]
        small_span = max(4 * MiB, int(128 * MiB * scale)) if size > 4 * MiB else size
        local = os.path.join(folder, "span.bin")
        self.say(f"random reads: {version}, {FIO_JOBS} jobs, one {size / MiB:.0f} MiB file (spans {size / MiB:.0f} "
                 f"and {small_span / MiB:.0f} MiB), cap {max(2, round(15 * scale))} s a run; eviction: "
                 f"posix_fadvise(DONTNEED) on the chunk files, the file in the mount and the local file "
                 f"(not /proc/sys/vm/drop_caches)")
        dataset_id = self.ingest(folder, "span")
        cache = os.path.join(self.run_dir, "cache-span")
        warmed = self.warm_cache(dataset_id, cache)
        chunks = self.chunk_files(cache)
        self.say(f"  (node cache: {len(chunks)} chunk files, {sum(os.path.getsize(c) for c in chunks) / MiB:.0f} MiB, "
                 f"warmed {warmed})")

        def local_run(bs, engine, span):
            os.sync()
            evict([local])
            return self.fio(local, bs, engine, span)

        resident = []

        def dsfs_run(bs, engine, span):
            mountpoint, pid = self.mount(dataset_id, "span", cache)
            try:
                path = os.path.join(mountpoint, "span.bin")
                os.sync()
                evict(chunks)
                evict([path])
                resident.append(resident_bytes(chunks))
                cpu0, disk0 = proc_cpu_io(pid)
                result = self.fio(path, bs, engine, span)
                cpu1, disk1 = proc_cpu_io(pid)
            finally:
                self.unmount(mountpoint)
            result["cpu_per_io_us"] = (cpu1 - cpu0) / max(1, result["ios"]) * 1e6
            result["disk_per_byte"] = (disk1 - disk0) / max(1, result["io_bytes"])
            return result

        def floor_run(bs, engine, span, mode):
            """The same fio on bench/fuse_floor.py serving the local file by os.pread of the 64 KiB
            blocks a read touches (no cache, no hash): what pyfuse3 on this machine reaches when
            reads miss memory, with each read on a worker thread or on the event loop."""
            mountpoint = os.path.join(self.run_dir, "mnt", "fuse-floor")
            os.makedirs(mountpoint, exist_ok=True)
            proc = subprocess.Popen([sys.executable, os.path.join(HERE, "fuse_floor.py"), mountpoint, "1", "0",
                                     "trio", local, str(64 * KiB), mode])
            try:
                wait_mounted(mountpoint, "bench/fuse_floor.py", proc)
                path = os.path.join(mountpoint, "f0000000")
                os.sync()
                evict([local, path])
                return self.fio(path, bs, engine, span)
            finally:
                if os.path.ismount(mountpoint):
                    subprocess.run(["fusermount3", "-u", mountpoint], check=True)
                proc.wait(timeout=20)

        def best(fn, *a):
            return max((fn(*a) for _ in range(repeat)), key=lambda r: r["iops"])

        got = {}
        for bs in (4 * KiB, 128 * KiB):
            for engine in ("psync", "mmap"):
                base = best(local_run, bs, engine, size)
                mine = best(dsfs_run, bs, engine, size)
                got[bs, engine] = (mine, base)
                figure = f"fio-{bs // KiB}k-{engine}"
                what = f"randread {bs // KiB} KiB, {size / MiB:.0f} MiB span"
                value = f"{mine['iops']:,.0f} IOPS {mine['bytes_s'] / MB:.0f} MB/s"
                baseline = f"local disk (evicted) {base['iops']:,.0f} IOPS {base['bytes_s'] / MB:.0f} MB/s"
                ratio = f"{mine['iops'] / base['iops']:.2f}x"
                if bs == 4 * KiB:
                    self.record(figure, what, value, baseline, ratio, ">= 8,000 IOPS", mine["iops"] >= 8000)
                else:
                    self.record(figure, what, value, baseline, ratio, "", None)
                self.say(f"    (p99 latency {mine['p99_us']:,.0f} us, local {base['p99_us']:,.0f} us; "
                         f"{mine['ios']:,} reads in {mine['seconds']:.1f} s; daemon CPU {mine['cpu_per_io_us']:.0f} us "
                         f"a read, {mine['disk_per_byte']:.2f} B from disk a byte served)")
        mine = got[4 * KiB, "psync"][0]
        for mode, what in (("thread", "each read on a worker thread"), ("nowait", "on the loop if in page cache"),
                           ("inline", "each read on the event loop")):
            floor = best(floor_run, 4 * KiB, "psync", size, mode)
            self.record(f"floor-{mode}", f"4 KiB psync, pyfuse3 + pread: {what}",
                        f"dsfs {mine['iops']:,.0f} IOPS", f"fuse_floor.py {floor['iops']:,.0f} IOPS",
                        f"{mine['iops'] / floor['iops']:.2f}x", "", None)
        for engine in ("psync", "mmap"):
            base_small = best(local_run, 4 * KiB, engine, small_span)
            small = best(dsfs_run, 4 * KiB, engine, small_span)
            mine, base = got[4 * KiB, engine]
            r, rb = mine["iops"] / small["iops"], base["iops"] / base_small["iops"]
            self.record(f"span-4k-{engine}", f"{size / MiB:.0f} MiB span / {small_span / MiB:.0f} MiB span",
                        f"{mine['iops']:,.0f} / {small['iops']:,.0f} = {r:.2f}",
                        f"local disk {base['iops']:,.0f} / {base_small['iops']:,.0f} = {rb:.2f}", "",
                        "within 20 %", abs(1 - r) <= 0.2)
        for engine in ("psync", "mmap"):
            mine = got[4 * KiB, engine][0]
            self.record("daemon-cpu", f"CPU time per 4 KiB read ({engine})", f"{mine['cpu_per_io_us']:.0f} us", "",
                        "", "", None)
        for bs in (4 * KiB, 128 * KiB):
            for engine in ("psync", "mmap"):
                mine = got[bs, engine][0]
                self.record("daemon-disk", f"disk bytes per byte served ({bs // KiB}k {engine})",
                            f"{mine['disk_per_byte']:.2f}", "", "", "", None)
        if resident:
            self.say(f"    (chunk files resident after eviction: {max(resident) / MiB:.1f} MiB at most, by fincore)")

    def main(self) -> int:
        self.say(f"dsfs random-access benchmark, scale {self.args.scale}, best of {self.args.repeat}; "
                 f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        self.say(f"  {'figure':13} {'what':36} {'dsfs':>20} {'baseline (same run)':>58} {'ratio':>7} {'target':>16}")
        started = time.perf_counter()
        try:
            figures = {"shuffle": self.bench_shuffle, "fio": self.bench_fio}
            for name, fn in figures.items():
                if not self.args.only or name in self.args.only:
                    fn()
        finally:
            for path in self.leftovers:
                shutil.rmtree(path, ignore_errors=True)
        verdicts = [f"{r[0]} {r[6]}" for r in self.results if r[6]]
        passed = sum(r[6] == "PASS" for r in self.results)
        self.say(f"targets: {passed}/{len(verdicts)} met ({'; '.join(verdicts)}); "
                 f"{time.perf_counter() - started:.0f} s, load average now {os.getloadavg()[0]:.1f}")
        if not self.args.keep:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        return 1 if self.failed else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="shrink every size and count (default 1.0)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure; the best is reported")
    ap.add_argument("--only", nargs="*", choices=["shuffle", "fio"], help="only these figures")
    ap.add_argument("--workdir", default=os.path.join(HERE, ".work", "random"))
    ap.add_argument("--datadir", default=os.path.join(HERE, ".data"))
    ap.add_argument("--keep", action="store_true", help="keep WORKDIR/run (store, caches, logs)")
    args = ap.parse_args(argv)
    if not args.scale > 0 or args.repeat < 1:
        ap.error("--scale must be positive and --repeat at least 1")
    try:
        return Bench(args).main()
    finally:
        run = os.path.join(os.path.abspath(args.workdir), "run")
        for line in open("/proc/self/mounts"):
            point = line.split()[1]
            if point.startswith(run + os.sep):  # left by an error: stop its daemon, else detach it
                dsfs = os.path.join(os.path.dirname(sys.executable), "dsfs")
                if subprocess.run([dsfs, "unmount", "--force", point], capture_output=True).returncode:
                    subprocess.run(["fusermount3", "-u", "-z", point], capture_output=True)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Download benchmarks for dsfs: S3 on loopback (s3rver) and a file:// store, beside baselines.

    .venv/bin/python bench/bench_download.py [--scale F] [--skip-baselines] [--workdir DIR]

One run:
  1. generates (or reuses) the deterministic datasets under --datadir (bench/gen_dataset.py):
     `large` (4 x 512 MiB) and `small` (10,000 files of 4-64 KiB in 100 folders), plus a copy of
     `small` where 1% of the files have new bytes (the child);
  2. starts s3rver (npm, installed into WORKDIR/node_modules) on a free loopback port, with its
     data in a temporary folder, and creates a bucket;
  3. authors the three versions (Dataset.create -> add_files -> finalize) into an S3 store
     (s3://bench/dsfs) and into a file:// store, and puts the same files as plain objects under
     s3://bench/plain/ (for the baselines);
  4. measures the endpoint's raw single-stream GET rate (one whole 512 MiB object, s3fs);
  5. times, each in a fresh process with a fresh cache and target: `dsfs download` (S3 and file://,
     small and large), `aws s3 sync`, `rclone copy --transfers 16` (S3) and `cp -r` (file://);
     `dsfs get` cold, a second `get` (cached), and `get` of the 1%-changed child after its parent;
  6. synthesizes a 1,000,000-file version (metadata only, tiny files in one real pack) into a
     file:// store and measures the peak RSS and time of a process that builds its view index;
  7. prints the figures, the ratios and PASS/FAIL against the targets (exit code 1 if one is missed).

Targets: small files >= 4x rclone's files/s; large files >= 0.9x the raw single-stream GET rate;
1M-file view build < 500 MB peak RSS. MB = 10^6 bytes, MiB = 2^20 bytes.
"""

from __future__ import annotations

import argparse
import datetime
import filecmp
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import gen_dataset as gen  # noqa: E402

MiB = 1 << 20
MB = 1_000_000
BUCKET = "bench"
KEY = SECRET = "S3RVER"
CHANGED_FRACTION = 0.01
TARGET_SMALL_VS_RCLONE = 4.0
TARGET_LARGE_VS_RAW = 0.9
TARGET_RSS_MB = 500


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# -- processes ------------------------------------------------------------------------------------

class Measured:
    """A finished subprocess: exit code, wall time, CPU time (user+sys) and peak RSS (from wait4)."""

    def __init__(self, rc, wall, cpu, maxrss_kib, stdout, stderr):
        self.rc, self.wall, self.cpu, self.maxrss_kib = rc, wall, cpu, maxrss_kib
        self.stdout, self.stderr = stdout, stderr

    @property
    def ok(self) -> bool:
        return self.rc == 0

    @property
    def rss_mb(self) -> float:
        return self.maxrss_kib * 1024 / MB

    @property
    def rss_mib(self) -> float:
        return self.maxrss_kib / 1024

    def error(self) -> str:
        lines = [l for l in (self.stderr + "\n" + self.stdout).splitlines() if l.strip()]
        return (lines[-1][:200] if lines else "") + f" (exit code {self.rc})"


GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def run_measured(cmd: list[str], env: dict, cwd: str | None = None) -> Measured:
    """Run cmd; wall time from here, CPU and peak RSS of cmd itself.

    The peak RSS comes from GNU time when it is there: a process forked from this (large) one
    inherits our resident set before exec, and Linux counts that in the child's ru_maxrss, so
    wait4 on a direct child would report this process's peak, not the command's."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r", suffix=".time") as usage_file:
        full = [GNU_TIME, "-q", "-f", "%U %S %M", "-o", usage_file.name, *cmd] if GNU_TIME else cmd
        start = time.perf_counter()
        proc = subprocess.Popen(full, cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        rc = os.waitstatus_to_exitcode(status)
        cpu, maxrss = usage.ru_utime + usage.ru_stime, usage.ru_maxrss
        if GNU_TIME:
            fields = usage_file.read().split()
            if len(fields) >= 3:
                cpu, maxrss = float(fields[-3]) + float(fields[-2]), int(fields[-1])
        return Measured(rc, wall, cpu, maxrss, out.read().decode(errors="replace"),
                        err.read().decode(errors="replace"))


def sync_disk() -> None:
    """Untimed: flush the previous run's dirty pages so they are not written back during the next."""
    os.sync()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_stats(folder: str) -> tuple[int, int]:
    files = total = 0
    for root, _, names in os.walk(folder):
        for name in names:
            files += 1
            total += os.lstat(os.path.join(root, name)).st_size
    return files, total


def check_copy(copy: str, source: str, rels: list[str], sample: int = 25) -> str | None:
    """None if `copy` holds exactly the files of `source` (count, bytes, a sample compared byte by
    byte); otherwise what is wrong."""
    if not os.path.isdir(copy):
        return f"{copy} does not exist"
    want, got = tree_stats(source), tree_stats(copy)
    if want != got:
        return f"{got[0]} files / {got[1]} bytes, expected {want[0]} / {want[1]}"
    rng = random.Random(0)
    for rel in rng.sample(rels, min(sample, len(rels))):
        if not filecmp.cmp(os.path.join(source, rel), os.path.join(copy, rel), shallow=False):
            return f"{rel} differs from the source"
    return None


def rmtree(path: str) -> None:
    if not os.path.lexists(path):
        return
    for root, dirs, _ in os.walk(path):  # `get` leaves read-only files and folders
        for d in dirs:
            try:
                os.chmod(os.path.join(root, d), 0o755)
            except OSError:
                pass
    shutil.rmtree(path, ignore_errors=True)


# -- s3rver ---------------------------------------------------------------------------------------

class S3rver:
    def __init__(self, workdir: str, data_dir: str, log_path: str):
        self.workdir, self.data_dir, self.log_path = workdir, data_dir, log_path
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def install(self) -> str:
        script = os.path.join(self.workdir, "node_modules", "s3rver", "bin", "s3rver.js")
        if not os.path.exists(script):
            log("installing s3rver (npm) into " + self.workdir)
            subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", self.workdir, "s3rver@3.7"],
                           check=True, stdout=subprocess.DEVNULL)
        return script

    def version(self) -> str:
        with open(os.path.join(self.workdir, "node_modules", "s3rver", "package.json")) as f:
            return json.load(f)["version"]

    def start(self) -> None:
        script = self.install()
        os.makedirs(self.data_dir, exist_ok=True)
        env = dict(os.environ)
        # s3rver 3.7 on Node 20: without it every truncated ListObjectsV2 page answers 500
        env["NODE_OPTIONS"] = (env.get("NODE_OPTIONS", "") + " --openssl-legacy-provider").strip()
        for _ in range(5):
            self.port = free_port()
            self.logf = open(self.log_path, "ab")
            self.proc = subprocess.Popen(["node", script, "-d", self.data_dir, "-a", "127.0.0.1", "-p", str(self.port),
                                          "-s", "--configure-bucket", BUCKET], env=env, stdout=self.logf,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            deadline = time.time() + 20
            while time.time() < deadline and self.proc.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                        return
                except OSError:
                    time.sleep(0.1)
            self.stop()
        raise RuntimeError(f"s3rver did not start; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def isolated_env(run_dir: str) -> dict:
    """The environment for benchmark subprocesses: XDG dirs of their own under run_dir (the user's
    dsfs state is never touched) and no DSFS_STORE of the caller's."""
    env = dict(os.environ)
    env.update({
        "XDG_STATE_HOME": os.path.join(run_dir, "xdg-state"),
        "XDG_DATA_HOME": os.path.join(run_dir, "xdg-data"),
        "XDG_CONFIG_HOME": os.path.join(run_dir, "xdg-config"),
        "XDG_CACHE_HOME": os.path.join(run_dir, "xdg-cache"),
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    env.pop("DSFS_STORE", None)
    return env


# -- the benchmark --------------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.python = sys.executable
        self.dsfs = os.path.join(os.path.dirname(sys.executable), "dsfs")
        self.run_dir = os.path.join(args.workdir, "download-run")
        self.r: dict = {}
        self.notes: list[str] = []
        self.env = isolated_env(self.run_dir)
        for name in ("DSFS_CACHE_DIR", "DSFS_CACHE_SIZE", "AWS_CA_BUNDLE", "AWS_PROFILE",
                     "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "RCLONE_CONFIG"):
            self.env.pop(name, None)  # AWS_CA_BUNDLE makes rclone refuse to start against http://
        self.s3 = S3rver(args.workdir, os.path.join(self.run_dir, "s3rver-data"),
                         os.path.join(self.run_dir, "s3rver.log"))

    # environments -----------------------------------------------------------------------------

    def s3_env(self) -> dict:
        env = dict(self.env)
        env.update({"FSSPEC_S3_ENDPOINT_URL": self.s3.endpoint, "FSSPEC_S3_KEY": KEY, "FSSPEC_S3_SECRET": SECRET,
                    "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
                    "RCLONE_CONFIG": os.devnull,
                    "RCLONE_CONFIG_BENCH_TYPE": "s3", "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
                    "RCLONE_CONFIG_BENCH_ENDPOINT": self.s3.endpoint, "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": KEY,
                    "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": SECRET, "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true"})
        return env

    def s3_store(self):
        from dsfs import Store

        store = Store(f"s3://{BUCKET}/dsfs", endpoint_url=self.s3.endpoint, key=KEY, secret=SECRET)
        store.check(create=True)
        return store

    def s3fs(self):
        import s3fs

        return s3fs.S3FileSystem(key=KEY, secret=SECRET, endpoint_url=self.s3.endpoint, skip_instance_cache=True)

    # preparation ------------------------------------------------------------------------------

    def prepare(self) -> None:
        a = self.args
        rmtree(self.run_dir)
        os.makedirs(self.run_dir)
        self.data = {}
        for kind in ("large", "small"):
            folder = os.path.join(a.datadir, f"{kind}-s{a.scale:g}-seed{a.seed}")
            self.data[kind] = folder
            gen.generate(folder, kind, a.scale, a.seed, quiet=True)
        self.rels = {k: gen.data_files(v) for k, v in self.data.items()}
        # the child: a hard-linked copy of small, 1% of its files replaced (new inode) by new bytes
        child = os.path.join(self.run_dir, "small-child")
        subprocess.run(["cp", "-al", self.data["small"], child], check=True)
        count = max(1, round(len(self.rels["small"]) * CHANGED_FRACTION))
        step = len(self.rels["small"]) / count
        self.changed = [self.rels["small"][int(i * step)] for i in range(count)]
        for rel in self.changed:
            path = os.path.join(child, rel)
            data = gen.random_bytes(gen.stream_key(a.seed, "small-v2", rel), os.path.getsize(path))
            with open(path + ".tmp", "wb") as f:
                f.write(data)
            os.replace(path + ".tmp", path)
        self.data["child"] = child
        self.rels["child"] = self.rels["small"]
        self.r["sizes"] = {k: tree_stats(v) for k, v in self.data.items()}
        for kind in ("large", "small"):  # warm the page cache with the inputs (as a re-run would have it)
            for rel in self.rels[kind]:
                with open(os.path.join(self.data[kind], rel), "rb") as f:
                    while f.read(16 * MiB):
                        pass

    def tools(self) -> None:
        self.aws = self.rclone = None
        if self.args.skip_baselines:
            return
        venv = os.path.join(self.args.workdir, "awscli-venv")
        aws = os.path.join(venv, "bin", "aws")
        if not os.path.exists(aws):
            log("installing awscli into " + venv)
            try:
                subprocess.run([sys.executable, "-m", "venv", venv], check=True)
                subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", "awscli"], check=True,
                               stdout=subprocess.DEVNULL)
            except (subprocess.CalledProcessError, OSError) as exc:
                self.notes.append(f"awscli could not be installed ({exc}); aws baseline skipped")
        if os.path.exists(aws):
            self.aws = aws
            self.r["aws_version"] = subprocess.run([aws, "--version"], capture_output=True, text=True,
                                                   env=self.env).stdout.strip().split(" ")[0]
        self.rclone = shutil.which("rclone")
        if self.rclone is None and os.geteuid() == 0 and shutil.which("apt-get"):
            log("installing rclone (apt-get)")
            subprocess.run(["apt-get", "install", "-y", "-q", "rclone"], stdout=subprocess.DEVNULL)
            self.rclone = shutil.which("rclone")
        if self.rclone is None:
            self.notes.append("rclone is not installed; rclone baseline skipped")
        else:
            self.r["rclone_version"] = subprocess.run([self.rclone, "version"], capture_output=True,
                                                      text=True).stdout.splitlines()[0]

    def author(self) -> None:
        """The same three versions in the S3 store and in a file:// store; plain objects for the baselines."""
        os.environ.update({k: self.env[k] for k in ("XDG_STATE_HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME",
                                                    "XDG_CACHE_HOME")})
        from dsfs import Dataset

        self.file_url = "file://" + os.path.join(self.run_dir, "store")
        self.ids = {"s3": {}, "file": {}}
        for where, store in (("s3", self.s3_store()), ("file", self.file_url)):
            for kind, parent in (("large", None), ("small", None), ("child", "small")):
                start = time.perf_counter()
                ds = Dataset.create(project="bench", name=kind if kind != "child" else "small",
                                    parents=[self.ids[where][parent]] if parent else None, store=store)
                ds.add_files(self.data[kind])
                ds.finalize(max_workers=4, show_progress=False)
                self.ids[where][kind] = ds.id
                took = time.perf_counter() - start
                self.r.setdefault("authoring", {})[f"{where}/{kind}"] = took
                log(f"authored {kind} into {where} store in {took:.1f}s ({ds.id})")
        fs = self.s3fs()
        # plain objects: the raw GET object always, the whole trees only for the baselines
        start = time.perf_counter()
        if self.args.skip_baselines or self.rclone is None:
            big = self.rels["large"][0]
            fs.put_file(os.path.join(self.data["large"], big), f"{BUCKET}/plain/large/{big}")
            if not self.args.skip_baselines:
                for kind in ("small", "large"):
                    fs.put(self.data[kind] + "/", f"{BUCKET}/plain/{kind}/", recursive=True)
        else:
            for kind in ("small", "large"):
                m = run_measured([self.rclone, "copy", "--transfers", "16", self.data[kind], f"bench:{BUCKET}/plain/{kind}"],
                                 self.s3_env())
                if not m.ok:
                    raise RuntimeError(f"uploading plain objects failed: {m.error()}")
        log(f"plain objects put in {time.perf_counter() - start:.1f}s")

    # measurements -----------------------------------------------------------------------------

    def raw_get(self, times: int = 1) -> None:
        """The endpoint's raw single-stream GET rate: one whole large object (s3fs, the client dsfs
        uses), `times` times; called again in every round of large downloads, the median counts."""
        fs = self.s3fs()
        key = f"{BUCKET}/plain/large/{self.rels['large'][0]}"
        raw = self.r.setdefault("raw_get", {"whole": [], "ranged8": []})
        size = raw["size"] = fs.size(key)
        for _ in range(times):
            start = time.perf_counter()
            n = len(fs.cat_file(key))
            assert n == size
            raw["whole"].append(n / (time.perf_counter() - start) / MB)
        start = time.perf_counter()
        for off in range(0, size, 8 * MiB):
            fs.cat_file(key, start=off, end=min(size, off + 8 * MiB))
        raw["ranged8"].append(size / (time.perf_counter() - start) / MB)
        raw["rate"] = statistics.median(raw["whole"])
        log(f"raw GET: whole object {', '.join(f'{w:.0f}' for w in raw['whole'][-times:])} MB/s; "
            f"sequential 8 MiB ranges {raw['ranged8'][-1]:.0f} MB/s")

    def timed(self, label: str, cmd: list[str], env: dict, check: tuple[str, str] | None = None,
              path_from_stdout: bool = False) -> dict:
        """One measured run. check = (copy folder, kind) to verify after; the copy is removed after."""
        sync_disk()
        m = run_measured(cmd, env)
        res = {"m": m, "error": None if m.ok else m.error()}
        if m.ok and check is not None:
            folder, kind = check
            if path_from_stdout:
                folder = m.stdout.strip().splitlines()[-1]
            res["error"] = check_copy(folder, self.data[kind], self.rels[kind])
        state = "ok" if res["error"] is None else f"FAILED: {res['error']}"
        log(f"{label}: {m.wall:.2f}s wall, {m.cpu:.2f}s CPU, {m.rss_mb:.0f} MB RSS, {state}")
        self.r.setdefault("runs", {}).setdefault(label, []).append(res)
        return res

    def fresh(self, name: str) -> str:
        """A new, unused path under the run dir (a target or a cache)."""
        self.serial = getattr(self, "serial", 0) + 1
        return os.path.join(self.run_dir, "out", f"{self.serial:03d}-{name}")

    def discard(self, path: str, kind: str) -> None:
        """Get rid of a run's output. Large outputs (a few files) are deleted at once, for the disk's
        sake; trees of many files are kept until the end of the run: this ext4 has no journal, and
        ext4 without a journal skips inodes deleted in the last minute when it allocates new ones
        (recently_deleted() in find_inode_bit), reading an inode-table block for each one skipped.
        Deleting 10,000 files just before a run makes every file the next run creates cost
        0.2-0.6 ms more (measured here), which would bias every small-file figure."""
        if kind == "large":
            rmtree(path)

    def download_runs(self) -> None:
        s3env = self.s3_env()
        reps = self.args.repeat
        for kind in ("small", "large"):
            for _ in range(reps):
                if kind == "large":
                    self.raw_get()
                for where in ("s3", "file"):
                    store = f"s3://{BUCKET}/dsfs" if where == "s3" else self.file_url
                    cache, target = self.fresh("cache"), self.fresh("target")
                    self.timed(f"dsfs download {where} {kind}",
                               [self.dsfs, "--store", store, "download", self.ids[where][kind], target,
                                "--cache-dir", cache, "--max-workers", str(self.args.workers)],
                               s3env, (target, kind))
                    self.discard(target, kind)
                if self.args.skip_baselines:
                    continue
                if self.aws:
                    target = self.fresh("target")
                    self.timed(f"aws s3 sync {kind}",
                               [self.aws, "s3", "sync", f"s3://{BUCKET}/plain/{kind}", target, "--only-show-errors",
                                "--endpoint-url", self.s3.endpoint], s3env, (target, kind))
                    self.discard(target, kind)
                if self.rclone:
                    target = self.fresh("target")
                    self.timed(f"rclone copy {kind}",
                               [self.rclone, "copy", "--transfers", "16", f"bench:{BUCKET}/plain/{kind}", target],
                               s3env, (target, kind))
                    self.discard(target, kind)
                target = self.fresh("target")
                self.timed(f"cp -r {kind}", ["cp", "-r", self.data[kind], target], s3env, (target, kind))
                self.discard(target, kind)
                target = self.fresh("target")
                res = self.timed(f"write floor {kind}", [self.python, os.path.abspath(__file__), "_write_floor",
                                                         self.data[kind], target], s3env, (target, kind))
                if res["m"].ok:  # the figure is the write phase alone, timed inside the worker
                    res["m"].wall = float(res["m"].stdout.split()[-1])
                self.discard(target, kind)

    def get_runs(self) -> None:
        for _ in range(self.args.repeat):
            self.get_round()

    def get_round(self) -> None:
        s3env = self.s3_env()
        store = f"s3://{BUCKET}/dsfs"
        for kind in ("small", "large"):
            cache = self.fresh(f"cache-get-{kind}")
            cmd = [self.dsfs, "--store", store, "get", self.ids["s3"][kind], "--cache-dir", cache,
                   "--max-workers", str(self.args.workers)]
            self.timed(f"dsfs get {kind} cold", cmd, s3env, (None, kind), path_from_stdout=True)
            self.timed(f"dsfs get {kind} second", cmd, s3env, (None, kind), path_from_stdout=True)
            if kind == "small":
                self.timed("dsfs get child after parent",
                           [self.dsfs, "--store", store, "get", self.ids["s3"]["child"], "--cache-dir", cache,
                            "--max-workers", str(self.args.workers)], s3env, (None, "child"), path_from_stdout=True)
                cache2 = self.fresh("cache-get-child-cold")
                self.timed("dsfs get child cold",
                           [self.dsfs, "--store", store, "get", self.ids["s3"]["child"], "--cache-dir", cache2,
                            "--max-workers", str(self.args.workers)], s3env, (None, "child"), path_from_stdout=True)
            self.discard(cache, kind)

    # the 1M-file version --------------------------------------------------------------------------

    def million(self) -> None:
        """Synthesize an N-file version (tiny distinct files, all in one real pack) into a file:// store,
        then measure the process that builds its view index."""
        import blake3

        from dsfs.model import ChunkRef, Entry, VersionInfo, encode_changeset
        from dsfs.store.layout import Store

        n = self.args.million
        start = time.perf_counter()
        url = "file://" + os.path.join(self.run_dir, "store-1m")
        store = Store(url)
        store.check(create=True)
        width = 16
        pack = bytearray()
        for i in range(n):
            pack += f"{i:0{width - 1}d}\n".encode()
        pack = bytes(pack)
        pack_id = blake3.blake3(pack).digest()[:16]
        store.write_pack(pack_id, pack)
        mtime = 1_700_000_000 * 10**9
        per_dir = 1000

        def entries():
            for i in range(n):
                content = pack[i * width:(i + 1) * width]
                d = blake3.blake3(content).digest()
                yield Entry(path=f"d{i // per_dir:04d}/f{i:07d}.bin", size=width, mtime_ns=mtime, digest=d,
                            chunks=[ChunkRef(d, pack_id, i * width, width, width)])

        data = encode_changeset(entries())
        dataset_id = uuid.uuid4().hex
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        store.claim_version_number("bench", "million", "1.0.0", dataset_id)
        store.write_changes(dataset_id, data)
        info = VersionInfo(id=dataset_id, project="bench", name="million", version="1.0.0", state="final",
                           created=now, finalized=now,
                           changes={"digest": blake3.blake3(data).hexdigest(), "size": len(data)},
                           stats={"files": n, "bytes": n * width, "added": n, "modified": 0, "removed": 0,
                                  "new_bytes": n * width, "packs": [pack_id.hex()]})
        store.write_version(info)
        synth = time.perf_counter() - start
        log(f"synthesized a {n:,}-file version in {synth:.1f}s (change-set {len(data) / MiB:.1f} MiB)")
        env = dict(self.env)
        env["DSFS_CACHE_DIR"] = os.path.join(self.run_dir, "cache-1m")
        rmtree(env["DSFS_CACHE_DIR"])
        code = ("import sys\nfrom dsfs import Dataset\nv = Dataset.get(sys.argv[1], store=sys.argv[2]).view()\n"
                "print(v.meta['files'], v.meta['dirs'])")
        floor = run_measured([self.python, "-c", "import dsfs, dsfs.lineage.viewindex, dsfs.dataset"], env)
        sync_disk()
        build = run_measured([self.python, "-c", code, dataset_id, url], env)
        again = run_measured([self.python, "-c", code, dataset_id, url], env)
        error = None if build.ok else build.error()
        if build.ok and build.stdout.split()[0] != str(n):
            error = f"view has {build.stdout.strip()} files/dirs, expected {n} files"
        self.r["million"] = {"n": n, "synth": synth, "changes": len(data), "build": build, "again": again,
                             "floor": floor, "error": error}
        log(f"view of {n:,} files: {build.wall:.1f}s, {build.rss_mb:.0f} MB peak RSS "
            f"(import floor {floor.rss_mb:.0f} MB); second open {again.wall:.2f}s; {error or 'ok'}")
        rmtree(env["DSFS_CACHE_DIR"])

    # profiling --------------------------------------------------------------------------------

    def profile(self) -> None:
        """Re-run the two S3 downloads under cProfile and print the top functions."""
        s3env = self.s3_env()
        for kind in ("small", "large"):
            cache, target = os.path.join(self.run_dir, "cache-prof"), os.path.join(self.run_dir, "target-prof")
            rmtree(cache), rmtree(target)
            prof = os.path.join(self.run_dir, f"download-{kind}.prof")
            sync_disk()
            m = run_measured([self.python, "-m", "cProfile", "-o", prof, self.dsfs, "--store", f"s3://{BUCKET}/dsfs",
                              "download", self.ids["s3"][kind], target, "--cache-dir", cache,
                              "--max-workers", str(self.args.workers)], s3env)
            rmtree(cache), rmtree(target)
            print(f"\n--- cProfile: dsfs download s3 {kind} ({m.wall:.2f}s wall under the profiler; "
                  f"main thread only, fetch threads show as wait time) ---")
            if not m.ok:
                print("  failed: " + m.error())
                continue
            import pstats

            for order in ("cumulative", "tottime"):
                stats = pstats.Stats(prof)
                stats.sort_stats(order).print_stats(18)

    # report -----------------------------------------------------------------------------------

    def report(self, started: float) -> int:
        a, r = self.args, self.r
        runs = r.get("runs", {})
        failures = []

        def verdict(ok: bool, what: str) -> str:
            if not ok:
                failures.append(what)
            return "PASS" if ok else "FAIL"

        def best(label: str) -> dict | None:
            """The median run of a label (over --repeat), or None if it did not run or failed."""
            good = [v for v in runs.get(label, []) if v["error"] is None]
            if not good:
                return None
            return sorted(good, key=lambda v: v["m"].wall)[(len(good) - 1) // 2]

        def rate(res, kind):
            files, total = r["sizes"][kind]
            return (files / res["m"].wall, total / res["m"].wall / MB)

        lines = []
        say = lines.append
        small_files, small_bytes = r["sizes"]["small"]
        large_files, large_bytes = r["sizes"]["large"]
        say("=" * 100)
        say("dsfs download benchmark" + (f"  (scale {a.scale:g})" if a.scale != 1 else ""))
        say(f"data: small = {small_files:,} files, {small_bytes / MiB:.1f} MiB; large = {large_files} files, "
            f"{large_bytes / MiB:.0f} MiB; child = small with {len(self.changed)} files "
            f"({CHANGED_FRACTION:.0%}) rewritten")
        say(f"dsfs: {_git_rev()}")
        say(f"endpoint: s3rver {self.s3.version()} on 127.0.0.1 (node {_node_version()}), data on the same disk; "
            f"file:// store on the same disk")
        tools = [f"dsfs download/get --max-workers {a.workers}"]
        if r.get("aws_version"):
            tools.append(r["aws_version"] + " (s3 sync, defaults)")
        if r.get("rclone_version"):
            tools.append(r["rclone_version"] + " (copy --transfers 16)")
        say("tools: " + "; ".join(tools))
        say(f"machine: {os.cpu_count()} cores; load average (1 min) {r['load'][0]:.2f} at the start, "
            f"{os.getloadavg()[0]:.2f} at the end" + ("  -- other processes were busy: figures are noisy"
                                                     if max(r['load'][0], os.getloadavg()[0]) > 0.7 else ""))
        say("write floor = the same files written from memory by one Python thread (open/write/close), the "
            "write phase alone: what any download to this disk costs at least")
        say("warm: inputs, s3rver's objects and the file:// store are all in the page cache (caches not dropped); "
            "each dsfs run starts with an empty --cache-dir and a new target folder; an untimed `sync` precedes "
            "every timed run; every figure includes process start-up; small-file outputs are kept until the end "
            "(deleting 10,000 files slows the next run's file creation on ext4 without a journal)")
        say("")
        raw = r["raw_get"]
        say(f"raw single-stream GET (s3fs cat_file of one whole {raw['size'] / MiB:.0f} MiB object, median of "
            f"{len(raw['whole'])}): {raw['rate']:.0f} MB/s   [runs {' '.join(f'{w:.0f}' for w in raw['whole'])}; "
            f"sequential 8 MiB ranged GETs, one stream: {' '.join(f'{w:.0f}' for w in raw['ranged8'])} MB/s]")
        say("")
        what = "median of " + str(a.repeat) + " runs" if a.repeat > 1 else "one run"
        say(f"{'run (' + what + ')':34} {'wall s':>7} {'files/s':>8} {'MB/s':>6} {'CPU s':>6} {'RSS MB':>6}   every run's wall s")
        for label, results in runs.items():
            res = best(label)
            walls = " ".join(f"{v['m'].wall:.2f}" for v in results)
            errors = [v["error"] for v in results if v["error"] is not None]
            extra = f"   FAILED {len(errors)}x: {errors[0]}" if errors else ""
            if res is None:
                say(f"{label:34} {'-':>7}{extra}")
                continue
            m = res["m"]
            kind = "large" if " large" in label else ("child" if "child" in label else "small")
            fps, mbs = rate(res, kind)
            say(f"{label:34} {m.wall:7.2f} {fps:8.0f} {mbs:6.0f} {m.cpu:6.2f} {m.rss_mb:6.0f}   {walls}{extra}")
        say("")
        say("ratios (same data, same run):")

        def ratio_line(name, mine, theirs, unit_idx, target=None, what=""):
            if mine is None or theirs is None:
                say(f"  {name:58} n/a (a run is missing or failed)")
                if target is not None:
                    failures.append(what + " (not measured)")
                return
            kind = "large" if unit_idx == 1 else "small"
            x, y = rate(mine, kind)[unit_idx], rate(theirs, kind)[unit_idx]
            unit = "MB/s" if unit_idx == 1 else "files/s"
            text = f"  {name:58} {x:8.0f} vs {y:6.0f} {unit:7} = {x / y:5.2f}x"
            if target is not None:
                text += f"   target >= {target}x -> {verdict(x / y >= target, what)}"
            say(text)

        for where in ("s3", "file"):
            dl_small, dl_large = best(f"dsfs download {where} small"), best(f"dsfs download {where} large")
            baselines = ((("aws s3 sync", "aws"), ("rclone copy", "rclone")) if where == "s3" else (("cp -r", "cp"),)) \
                + (("write floor", "floor"),)
            for base, short in baselines:
                if a.skip_baselines:
                    continue
                is_target = where == "s3" and short == "rclone"
                ratio_line(f"small, dsfs download {where} / {base}", dl_small, best(f"{base} small"), 0,
                           TARGET_SMALL_VS_RCLONE if is_target else None, "small files vs rclone")
                ratio_line(f"large, dsfs download {where} / {base}", dl_large, best(f"{base} large"), 1)
        dl = best("dsfs download s3 large")
        if dl is None:
            say("  large, dsfs download s3 / raw single-stream GET             n/a")
            failures.append("large vs raw GET (not measured)")
        else:
            x = rate(dl, "large")[1]
            say(f"  {'large, dsfs download s3 / raw single-stream GET':58} {x:8.0f} vs {raw['rate']:6.0f} MB/s    = "
                f"{x / raw['rate']:5.2f}x   target >= {TARGET_LARGE_VS_RAW}x -> "
                f"{verdict(x / raw['rate'] >= TARGET_LARGE_VS_RAW, 'large vs raw GET')}")
        say("")
        say("get (S3 store):")
        for kind in ("small", "large"):
            cold, second = best(f"dsfs get {kind} cold"), best(f"dsfs get {kind} second")
            if cold and second:
                say(f"  {kind}: cold get {cold['m'].wall:.2f}s, second get (cached) {second['m'].wall:.3f}s")
        parent, child, child_cold = best("dsfs get small cold"), best("dsfs get child after parent"), best("dsfs get child cold")
        if parent and child:
            text = (f"  1%-changed child after its parent is cached: {child['m'].wall:.2f}s "
                    f"(parent cold get {parent['m'].wall:.2f}s")
            if child_cold:
                text += f", the child cold in an empty cache {child_cold['m'].wall:.2f}s"
            say(text + ")")
        say("")
        mil = r.get("million")
        if mil:
            b = mil["build"]
            ok = mil["error"] is None and b.rss_mb < TARGET_RSS_MB
            say(f"{mil['n']:,}-file version (metadata only, 16-byte files, change-set {mil['changes'] / MiB:.1f} MiB): "
                f"view index built in {b.wall:.1f}s ({mil['n'] / b.wall:,.0f} entries/s, CPU {b.cpu:.1f}s), "
                f"peak RSS {b.rss_mb:.0f} MB (python + dsfs imports alone: {mil['floor'].rss_mb:.0f} MB); "
                f"reopening the built view {mil['again'].wall:.2f}s")
            say(f"  target peak RSS < {TARGET_RSS_MB} MB -> {verdict(ok, '1M-file view RSS')}"
                + (f"   ({mil['error']})" if mil["error"] else ""))
        say("")
        say("not measured: `dvc pull -j 16` (optional; skipped to keep the run short)")
        for note in self.notes:
            say("note: " + note)
        auth = r.get("authoring", {})
        if auth:
            say("setup (untimed for the targets): authoring " +
                ", ".join(f"{k} {v:.1f}s" for k, v in auth.items()))
        say(f"targets: {'all met' if not failures else 'MISSED: ' + ', '.join(failures)}   "
            f"(whole run {time.perf_counter() - started:.0f}s)")
        say("=" * 100)
        print("\n".join(lines), flush=True)
        return 1 if failures else 0

    def main(self) -> int:
        started = time.perf_counter()
        a = self.args
        self.r["load"] = os.getloadavg()
        log(f"preparing data (scale {a.scale:g}) and tools; run dir {self.run_dir}; load average {self.r['load'][0]:.2f}")
        self.prepare()
        self.tools()
        try:
            self.s3.start()
            log(f"s3rver {self.s3.version()} on {self.s3.endpoint}")
            self.author()
            self.raw_get(times=2)
            self.download_runs()
            self.get_runs()
            if a.million:
                self.million()
            code = self.report(started)
            if a.profile:
                self.profile()
            return code
        finally:
            self.s3.stop()
            if not a.keep:
                rmtree(self.run_dir)


def _git_rev() -> str:
    try:
        rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", "dsfs", "cli", "daemon"],
                               capture_output=True, text=True).stdout.strip()
        return f"commit {rev}" + (" + uncommitted changes in dsfs/cli/daemon" if dirty else "")
    except OSError:
        return "?"


def _node_version() -> str:
    try:
        return subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def write_floor(source: str, target: str) -> int:
    """The local floor of a download: the same files written from memory, one thread (open, write,
    close, like cp). Prints the seconds the write phase took (the source is read first, untimed)."""
    files = []
    for rel in gen.data_files(source):
        with open(os.path.join(source, rel), "rb") as f:
            files.append((rel, f.read()))
    start = time.perf_counter()
    for folder in sorted({os.path.dirname(rel) for rel, _ in files}):
        os.makedirs(os.path.join(target, folder), exist_ok=True)
    os.makedirs(target, exist_ok=True)
    for rel, data in files:
        with open(os.path.join(target, rel), "wb") as f:
            f.write(data)
    print(f"{time.perf_counter() - start:.4f}")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_write_floor"]:
        return write_floor(*argv[1:3])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="shrink the datasets (default 1.0 = full size)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-baselines", action="store_true", help="no aws / rclone / cp runs")
    ap.add_argument("--workdir", default=os.path.join(HERE, ".work"), help="scratch (default bench/.work)")
    ap.add_argument("--datadir", default=os.path.join(HERE, ".data"), help="generated data (default bench/.data)")
    ap.add_argument("--workers", type=int, default=8, help="dsfs --max-workers (default 8, the CLI's default)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds of download and get runs, interleaved across tools (median reported; default 3)")
    ap.add_argument("--million", type=int, default=None,
                    help="files in the synthesized version (default 1,000,000 x scale, at least 10,000; 0 = skip)")
    ap.add_argument("--keep", action="store_true", help="keep WORKDIR/download-run (stores, s3rver data)")
    ap.add_argument("--profile", action="store_true", help="afterwards, re-run the S3 downloads under cProfile")
    args = ap.parse_args(argv)
    if not args.scale > 0:
        ap.error("--scale must be positive")
    if args.million is None:
        args.million = max(10_000, int(1_000_000 * args.scale))
    args.workdir = os.path.abspath(args.workdir)
    args.datadir = os.path.abspath(args.datadir)
    os.makedirs(args.workdir, exist_ok=True)
    return Bench(args).main()


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Store lifecycle benchmarks: `dsfs gc` and `dsfs check` on a big store over loopback S3 (s3rver).

    .venv/bin/python bench/bench_lifecycle.py [--versions 1000] [--packs-per-version 5] [--large-mib 512]

One run:
  1. starts s3rver (bench_download's, installed with npm into WORKDIR) on a free loopback port;
  2. writes a store of --versions final versions with --packs-per-version packs each (5 files a
     version, 4 chunks of 16 KiB a pack: metadata-heavy, as gc and check care about requests, not
     bytes), written straight through the Store API in parallel, plus --orphans unreferenced packs;
  3. times `check` (no --read-data), `gc --dry-run` and `gc --grace 0` in this process, counting the
     HTTP requests each sends (botocore's before-send event);
  4. authors one version of 4 files of --large-mib/4 MiB into a second S3 store and times, each in a
     fresh process with a fresh cache, `dsfs download` and `dsfs check --read-data` of the same bytes;
  5. prints the figures and PASS/FAIL against the targets (exit code 1 if one is missed).

Targets (issue 12): gc and check (no --read-data) each under 15 s on 1,000 versions / ~5,000 packs;
check --read-data >= 0.8x of download's MB/s. MB = 10^6 bytes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_download import BUCKET, KEY, SECRET, S3rver, isolated_env, log, rmtree  # noqa: E402

TARGET_SECONDS = 15.0
TARGET_READ_VS_DOWNLOAD = 0.8
MB = 1_000_000


class Requests:
    """Counts the HTTP requests an s3fs filesystem sends."""

    def __init__(self, fs):
        self.count = 0
        fs.ls(f"{BUCKET}/", refresh=True)  # connect, so the client exists
        fs.s3.meta.events.register("before-send", self._one)

    def _one(self, **_):
        self.count += 1


def s3_store(endpoint: str, prefix: str):
    from dsfs import Store

    store = Store(f"s3://{BUCKET}/{prefix}", endpoint_url=endpoint, key=KEY, secret=SECRET)
    store.check(create=True)
    return store


def synthesize(store, versions: int, packs_per_version: int, orphans: int, workers: int = 16) -> int:
    """Final versions written straight through the Store API (packs, change-set, record, in the
    store's write order). Returns the number of packs written."""
    import blake3
    from dsfs.model import ChunkRef, Entry, VersionInfo, encode_changeset
    from dsfs.store.packs import digest

    def pack_of(seed: bytes) -> tuple[bytes, bytes, list[ChunkRef]]:
        chunks = [blake3.blake3(seed + bytes([i])).digest(length=16384) for i in range(4)]
        data = b"".join(chunks)
        pack_id = digest(data)[:16]
        return pack_id, data, [ChunkRef(digest(c), pack_id, i * 16384, 16384, 16384) for i, c in enumerate(chunks)]

    def version(i: int) -> None:
        entries = []
        for j in range(packs_per_version):
            pack_id, data, refs = pack_of(f"{i}/{j}".encode())
            store.write_pack(pack_id, data)
            whole = blake3.blake3(b"".join(blake3.blake3(f"{i}/{j}".encode() + bytes([k])).digest(length=16384)
                                           for k in range(4))).digest()
            entries.append(Entry(path=f"d{j}/file-{i}.bin", size=4 * 16384, digest=whole, chunks=refs))
        dataset_id = uuid.uuid4().hex
        changes = encode_changeset(entries)
        store.write_changes(dataset_id, changes)
        info = VersionInfo(id=dataset_id, project="bench", name=f"n{i // 100}", version=f"1.0.{i}", state="final",
                           changes={"digest": blake3.blake3(changes).hexdigest(), "size": len(changes)},
                           stats={"files": len(entries), "bytes": len(entries) * 4 * 16384})
        store.write_version(info)

    def orphan(i: int) -> None:
        pack_id, data, _ = pack_of(f"orphan/{i}".encode())
        store.write_pack(pack_id, data)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(version, range(versions)))
        list(pool.map(orphan, range(orphans)))
    return versions * packs_per_version + orphans


def timed(label: str, fn, requests: Requests):
    before = requests.count
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    log(f"{label}: {seconds:.2f} s, {requests.count - before} requests")
    return result, seconds, requests.count - before


def run_cli(args: list[str], env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dsfs.cli.main", *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"dsfs {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", type=int, default=1000)
    parser.add_argument("--packs-per-version", type=int, default=5)
    parser.add_argument("--orphans", type=int, default=500)
    parser.add_argument("--large-mib", type=int, default=512)
    parser.add_argument("--workdir", default=os.path.join(HERE, ".work"))
    args = parser.parse_args(argv)

    run_dir = os.path.join(args.workdir, "lifecycle-run")
    rmtree(run_dir)
    os.makedirs(run_dir)
    env = isolated_env(run_dir)
    os.environ.update({k: env[k] for k in ("XDG_STATE_HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")})
    s3 = S3rver(args.workdir, os.path.join(run_dir, "s3rver-data"), os.path.join(run_dir, "s3rver.log"))
    s3.start()
    try:
        from dsfs.lifecycle import sweep
        from dsfs.lifecycle.check import check_store

        store = s3_store(s3.endpoint, "big")
        log(f"s3rver {s3.version()} on {s3.endpoint}; writing {args.versions} versions x "
            f"{args.packs_per_version} packs + {args.orphans} unreferenced packs")
        start = time.perf_counter()
        packs = synthesize(store, args.versions, args.packs_per_version, args.orphans)
        log(f"store written in {time.perf_counter() - start:.1f} s ({packs} packs)")
        requests = Requests(store.fs)
        report, check_s, check_n = timed("check", lambda: check_store(store, progress=False), requests)
        assert report.ok, report.as_dict()["problems"][:3]
        dry, dry_s, dry_n = timed("gc --dry-run", lambda: sweep.gc(store, grace=0, dry_run=True, show_progress=False),
                                  requests)
        done, gc_s, gc_n = timed("gc --grace 0", lambda: sweep.gc(store, grace=0, show_progress=False), requests)
        assert done.deleted_packs == args.orphans, done.deleted_packs
        again, gc2_s, gc2_n = timed("gc again (nothing to delete)", lambda: sweep.gc(store, grace=0, show_progress=False),
                                    requests)

        # check --read-data against download, the same bytes, each in a fresh process and cache
        large = tempfile.mkdtemp(dir=run_dir, prefix="large-")
        per_file = args.large_mib * (1 << 20) // 4
        for i in range(4):
            with open(os.path.join(large, f"part-{i}.bin"), "wb") as f:
                for _ in range(per_file // (8 << 20)):
                    f.write(os.urandom(8 << 20))
        url = f"s3://{BUCKET}/large"
        s3_env = {**env, "FSSPEC_S3_ENDPOINT_URL": s3.endpoint, "FSSPEC_S3_KEY": KEY, "FSSPEC_S3_SECRET": SECRET}
        from dsfs import Dataset

        ds = Dataset.create("bench", "large", store=s3_store(s3.endpoint, "large"))
        ds.add_files(large)
        ds.finalize(show_progress=False)
        nbytes = 4 * per_file
        rows = []
        for attempt in range(2):
            for what, cmd in (("download", ["--store", url, "download", ds.id, os.path.join(run_dir, f"dl-{attempt}")]),
                              ("check --read-data", ["--store", url, "check", "--read-data"])):
                cache = os.path.join(run_dir, f"cache-{what[:5]}-{attempt}")
                seconds = run_cli(cmd, {**s3_env, "DSFS_CACHE_DIR": cache})
                rows.append((what, seconds))
                log(f"{what}: {seconds:.2f} s, {nbytes / seconds / MB:.0f} MB/s")
            rmtree(os.path.join(run_dir, f"dl-{attempt}"))
        best = {w: min(s for x, s in rows if x == w) for w in ("download", "check --read-data")}
        ratio = best["download"] / best["check --read-data"]

        ok_check, ok_gc, ok_read = check_s < TARGET_SECONDS, gc_s < TARGET_SECONDS, ratio >= TARGET_READ_VS_DOWNLOAD
        print(f"\nstore: {args.versions} final versions, {packs} packs ({args.orphans} unreferenced) on s3rver "
              f"{s3.version()} (loopback)")
        print("| what | time | requests | target |")
        print("|---|---|---|---|")
        print(f"| check (no --read-data) | {check_s:.2f} s | {check_n} | < {TARGET_SECONDS:.0f} s: "
              f"{'PASS' if ok_check else 'FAIL'} |")
        print(f"| gc --dry-run | {dry_s:.2f} s | {dry_n} | |")
        print(f"| gc --grace 0 (deletes {done.deleted_packs} packs) | {gc_s:.2f} s | {gc_n} | < {TARGET_SECONDS:.0f} s: "
              f"{'PASS' if ok_gc else 'FAIL'} |")
        print(f"| gc again (nothing to delete) | {gc2_s:.2f} s | {gc2_n} | |")
        print(f"\nsame bytes ({nbytes / MB:.0f} MB in 4 files), fresh process and cache, best of 2:")
        print(f"| dsfs download | {best['download']:.2f} s | {nbytes / best['download'] / MB:.0f} MB/s | |")
        print(f"| dsfs check --read-data | {best['check --read-data']:.2f} s | "
              f"{nbytes / best['check --read-data'] / MB:.0f} MB/s | {ratio:.2f}x of download (>= "
              f"{TARGET_READ_VS_DOWNLOAD}x): {'PASS' if ok_read else 'FAIL'} |")
        return 0 if ok_check and ok_gc and ok_read else 1
    finally:
        s3.stop()


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Catalog benchmark: finding and resolving versions among many, on loopback S3 (s3rver).

    .venv/bin/python bench/bench_catalog.py [--versions 10000] [--small 100]

One run:
  1. starts s3rver (bench_download's, installed with npm into WORKDIR) on a free loopback port;
  2. writes a store of --versions final versions in 100 projects (10 datasets of --versions/1000
     versions each), straight through the Store API in dsfs's write order: each version is a real
     one (its own record, its version-number claim, and a copy of the change-set of a version made
     by `Dataset.finalize`, so `dsfs list` and `download` read it like any other);
  3. runs each command in this process (the CLI's `main`), cold (an empty node cache) then warm,
     counting the HTTP requests it sends (botocore's before-send event):
     `search --project P`, `search --tags T`, `list --id P/N` (the latest), `versions P/N`,
     `create --parents P/N`, `delete` of a leaf;
  4. does the same on a store of --small versions (a store that size must not get slower);
  5. prints a table with PASS/FAIL against the targets (exit 1 if one is missed).

Targets (issue 18): resolve by name (list --id P/N, create --parents) <= 0.3 s cold and warm;
search <= 3 s cold and <= 0.5 s warm. `list --id` also reads the version's change-set (cold: once).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_download import BUCKET, KEY, SECRET, S3rver, isolated_env, log, rmtree  # noqa: E402

RESOLVE_TARGET = 0.3
SEARCH_COLD_TARGET, SEARCH_WARM_TARGET = 3.0, 0.5


class Requests:
    """Counts the HTTP requests of every s3fs client this process makes."""

    def __init__(self):
        import s3fs

        self.count = 0
        real = s3fs.S3FileSystem.set_session
        counter = self

        async def counted(fs, *args, **kwargs):
            client = await real(fs, *args, **kwargs)
            if not getattr(fs, "_bench_counted", False):
                fs.s3.meta.events.register("before-send", counter.one)
                fs._bench_counted = True
            return client

        s3fs.S3FileSystem.set_session = counted

    def one(self, **_):
        self.count += 1


def build(store, versions: int, tmp: str) -> list[tuple[str, str, str]]:
    """`versions` final versions in 100 projects; returns (project, name, id) of each dataset's latest."""
    import blake3

    from dsfs import Dataset
    from dsfs.model import VersionInfo

    os.makedirs(os.path.join(tmp, "seed"), exist_ok=True)
    with open(os.path.join(tmp, "seed", "a.txt"), "wb") as f:
        f.write(b"the one file of every version\n")
    seed = Dataset.create("seed", "seed", store=store)
    seed.add_files(os.path.join(tmp, "seed"))
    seed.finalize(show_progress=False)
    changes = store.read_changes(seed.id)
    per_dataset = max(1, versions // 1000)
    datasets = [(f"proj{p:03d}", f"data{n}") for p in range(100) for n in range(10)][: max(1, versions // per_dataset)]

    def one(k: int) -> tuple[str, str, str] | None:
        project, name = datasets[k // per_dataset]
        number = k % per_dataset
        dataset_id = uuid.uuid4().hex
        info = VersionInfo(id=dataset_id, project=project, name=name, version=f"1.0.{number}", state="final",
                           tags=[f"t{k % 50}"], created=f"2026-11-{1 + number % 28:02d}T00:00:00+00:00",
                           changes={"digest": blake3.blake3(changes).hexdigest(), "size": len(changes)},
                           stats=dict(seed.info.stats))
        assert store.claim_version_number(project, name, info.version, dataset_id)
        store.write_changes(dataset_id, changes)
        store.write_version(info)
        return (project, name, dataset_id) if number == per_dataset - 1 else None

    with ThreadPoolExecutor(16) as pool:
        latest = [x for x in pool.map(one, range(len(datasets) * per_dataset)) if x]
    return latest


def run(args: list[str]) -> None:
    from dsfs.cli.main import main

    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            main(args)
    except SystemExit as exc:
        if exc.code:
            raise RuntimeError(f"dsfs {' '.join(args)} failed ({exc.code}): {out.getvalue()[-400:]}") from None


def measure(label: str, url: str, latest, requests: Requests, cache_root: str) -> list[tuple]:
    """Each command cold (fresh node cache) then warm; rows (label, command, cold s, cold n, warm s, warm n)."""
    project, name, _ = latest[len(latest) // 2]
    victims = iter(latest[:8])  # leaves: the latest of their dataset, no children
    commands = [
        ("search --project P", lambda: ["--store", url, "search", "--project", project]),
        ("search --tags T", lambda: ["--store", url, "search", "--tags", "t7"]),
        ("list --id P/N", lambda: ["--store", url, "list", "--id", f"{project}/{name}"]),
        ("versions P/N", lambda: ["--store", url, "versions", f"{project}/{name}"]),
        ("create --parents P/N", lambda: ["--store", url, "create", "--project", "new", "--name",
                                          uuid.uuid4().hex[:8], "--parents", f"{project}/{name}"]),
        ("delete (a leaf)", lambda: ["--store", url, "delete", "--id", next(victims)[2]]),
    ]
    rows = []
    for what, argv in commands:
        figures = []
        for state in ("cold", "warm"):
            if state == "cold":
                shutil.rmtree(cache_root, ignore_errors=True)
            before = requests.count
            start = time.perf_counter()
            run(argv())
            figures += [time.perf_counter() - start, requests.count - before]
        log(f"{label} {what}: cold {figures[0]:.2f} s / {figures[1]} requests, warm {figures[2]:.2f} s / "
            f"{figures[3]} requests")
        rows.append((label, what, *figures))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", type=int, default=10000)
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--workdir", default=os.path.join(HERE, ".work"))
    args = parser.parse_args(argv)

    run_dir = os.path.join(args.workdir, "catalog-run")
    rmtree(run_dir)
    os.makedirs(run_dir)
    env = isolated_env(run_dir)
    os.environ.update({k: env[k] for k in ("XDG_STATE_HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")})
    os.environ.update({"FSSPEC_S3_KEY": KEY, "FSSPEC_S3_SECRET": SECRET})
    s3 = S3rver(args.workdir, os.path.join(run_dir, "s3rver-data"), os.path.join(run_dir, "s3rver.log"))
    s3.start()
    os.environ["FSSPEC_S3_ENDPOINT_URL"] = s3.endpoint
    try:
        from dsfs import Store

        requests = Requests()
        rows, floors = [], {}
        for label, count in (("small", args.small), ("big", args.versions)):
            url = f"s3://{BUCKET}/{label}"
            store = Store(url, endpoint_url=s3.endpoint, key=KEY, secret=SECRET)
            store.check(create=True)
            start = time.perf_counter()
            latest = build(store, count, os.path.join(run_dir, label))
            log(f"{label}: {count} versions written in {time.perf_counter() - start:.1f} s")
            rows += measure(f"{count:,} versions", url, latest, requests, os.path.join(env["XDG_CACHE_HOME"], "dsfs"))
            # the floor under any catalog that lists the records: the server's own listing, 16 at once
            before, start = requests.count, time.perf_counter()
            base = store._p("datasets")
            with ThreadPoolExecutor(16) as pool:
                keys = sum(pool.map(lambda h, fs=store.fs: len(fs.find(base, prefix=h, detail=True)),  # noqa: B023
                                    "0123456789abcdef"))
            floors[label] = (time.perf_counter() - start, requests.count - before, keys)
            log(f"{label} LIST floor: {floors[label][0]:.2f} s, {floors[label][1]} requests, {keys} keys")

        print(f"\ns3rver {s3.version()} on loopback; each command in this process, cold = empty node cache")
        print("| store | command | cold | requests | warm | requests | target |")
        print("|---|---|---|---|---|---|---|")
        ok = True
        for label, what, cold_s, cold_n, warm_s, warm_n in rows:
            target = ""
            if label.startswith(f"{args.versions:,}"):
                if what.startswith("search"):
                    passed = cold_s <= SEARCH_COLD_TARGET and warm_s <= SEARCH_WARM_TARGET
                    target = f"<= {SEARCH_COLD_TARGET:g} s cold, <= {SEARCH_WARM_TARGET:g} s warm: "
                elif what.startswith(("list --id", "create")):
                    passed = cold_s <= RESOLVE_TARGET and warm_s <= RESOLVE_TARGET
                    target = f"<= {RESOLVE_TARGET:g} s: "
                else:
                    passed = True
                if target:
                    target += "PASS" if passed else "FAIL"
                    ok &= passed
            print(f"| {label} | {what} | {cold_s:.2f} s | {cold_n} | {warm_s:.2f} s | {warm_n} | {target} |")
        for label, (seconds, n, keys) in floors.items():
            print(f"| {label} | the floor: a plain s3fs listing of datasets/ ({keys:,} keys, 16 prefixes at once) "
                  f"| | | {seconds:.2f} s | {n} | |")
        return 0 if ok else 1
    finally:
        s3.stop()


if __name__ == "__main__":
    sys.exit(main())

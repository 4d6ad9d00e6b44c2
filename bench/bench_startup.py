#!/usr/bin/env python3
"""Start-up benchmark: how long the CLI and `import dsfs` take before doing any work.

    .venv/bin/python bench/bench_startup.py [--repeat 20] [--pythonpath DIR] [--top 15]

Prints, from one run:
- the median (and min-max) wall time of `python -c pass` (the floor: the interpreter alone),
  `python -c "import dsfs"`, `python -c "import click"` (what any click command line pays before its
  first line of its own: the bound under `dsfs --help`), `dsfs --version` and `dsfs --help`, each run
  --repeat times,
  interleaved (one of each in turn, so a burst of load on the machine hits all of them alike);
  every figure also as its cost over the floor and as a multiple of it, and the median CPU time
  (user+sys, from wait4), which a busy machine inflates less than the wall time;
- PASS/FAIL against the targets (issue 14): `dsfs --version` and `dsfs --help` under 0.12 s and
  `import dsfs` under 50 ms over the floor, all medians (exit code 1 if one is missed);
- which heavy packages (fsspec, lmdb, trio, rich, dsfs.dataset) `import dsfs` and
  `import dsfs.cli.main` load;
- the top --top entries, by cumulative time, of `python -X importtime -c "import dsfs.cli.main"`
  (one run: single figures move by 20-30% on a busy machine, the order is what to read).

--pythonpath DIR measures the dsfs at DIR instead of the installed one (say a `git worktree` of an
older commit: the baseline). Children run with DIR first on PYTHONPATH and a neutral working folder.

Bytecode: a user's start reads cached .pyc files, so the children do too, whatever this shell says
(PYTHONDONTWRITEBYTECODE=1 would compile every dsfs module on every start, ~1 ms each): they write
and read them under --pycache (default bench/.work/pycache, PYTHONPYCACHEPREFIX), not in the checkout,
and one untimed run of each command fills it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET_CLI = 0.12  # s, median: `dsfs --version`, `dsfs --help`
TARGET_IMPORT = 0.050  # s, median of `import dsfs` less the floor
HEAVY = ("fsspec", "lmdb", "trio", "rich", "dsfs.dataset")

LOADED = ("import sys, {module}; print(' '.join(m for m in {heavy!r} if m in sys.modules))")


def console_script() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "dsfs")
    found = here if os.path.exists(here) else shutil.which("dsfs")
    if not found:
        sys.exit("no `dsfs` console script next to this python or on PATH (pip install -e .)")
    return found


def run(argv: list[str], env: dict, cwd: str) -> tuple[float, float]:
    """(wall time, CPU time user+sys from wait4) of one run."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - t0
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    proc.stderr.close()
    if code != 0:
        sys.exit(f"{' '.join(argv)} failed ({code}): {err.decode(errors='replace')[-500:]}")
    return took, usage.ru_utime + usage.ru_stime


def importtime(module: str, env: dict, cwd: str, top: int) -> list[tuple[int, int, str]]:
    """(cumulative us, self us, name) of the slowest imports of `import module`, slowest first."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], env=env, cwd=cwd,
                          capture_output=True, text=True, check=True)
    rows = []
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if m:
            rows.append((int(m.group(2)), int(m.group(1)), m.group(3)[1:] + m.group(4)))
    return sorted(rows, key=lambda r: -r[0])[:top]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="runs of each command (default 20; medians)")
    parser.add_argument("--pythonpath", default=None, metavar="DIR",
                        help="measure the dsfs package under DIR (e.g. a git worktree of the baseline)")
    parser.add_argument("--top", type=int, default=15, help="importtime entries to show (default 15)")
    parser.add_argument("--pycache", default=os.path.join(HERE, ".work", "pycache"),
                        help="where the children keep their bytecode (PYTHONPYCACHEPREFIX)")
    args = parser.parse_args(argv)

    skip = ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")
    env = {k: v for k, v in os.environ.items() if k not in skip}
    env["PYTHONPYCACHEPREFIX"] = os.path.abspath(args.pycache)
    if args.pythonpath:
        env["PYTHONPATH"] = os.path.abspath(args.pythonpath)
    cwd = tempfile.gettempdir()  # not the checkout: `python -c` puts the working folder first on sys.path
    dsfs = console_script()
    py = sys.executable
    commands = {
        "python -c pass (floor)": [py, "-c", "pass"],
        "python -c 'import dsfs'": [py, "-c", "import dsfs"],
        "python -c 'import click'": [py, "-c", "import click"],  # the bound under `dsfs --help`
        "dsfs --version": [dsfs, "--version"],
        "dsfs --help": [dsfs, "--help"],
    }
    where = subprocess.run([py, "-c", "import dsfs; print(dsfs.__file__)"], env=env, cwd=cwd, capture_output=True,
                           text=True, check=True).stdout.strip()
    print(f"dsfs start-up benchmark  repeat={args.repeat}  python={py}  dsfs={os.path.dirname(where)}  "
          f"cpus={os.cpu_count()}  load={os.getloadavg()[0]:.2f}")

    times: dict[str, list[float]] = {label: [] for label in commands}
    cpu: dict[str, list[float]] = {label: [] for label in commands}
    for argv_ in commands.values():  # warm the page cache and the .pyc files: not timed
        run(argv_, env, cwd)
    for _ in range(args.repeat):
        for label, argv_ in commands.items():
            wall, used = run(argv_, env, cwd)
            times[label].append(wall)
            cpu[label].append(used)
    median = {label: statistics.median(t) for label, t in times.items()}
    median_cpu = {label: statistics.median(t) for label, t in cpu.items()}
    floor = median["python -c pass (floor)"]
    floor_cpu = median_cpu["python -c pass (floor)"]
    print(f"\n{'command':28} {'median':>9} {'min-max':>17} {'over floor':>11} {'x floor':>8}   "
          f"{'CPU median':>10} {'over floor':>11}")
    for label, t in times.items():
        print(f"{label:28} {median[label] * 1000:7.1f}ms {min(t) * 1000:7.1f}-{max(t) * 1000:7.1f}ms "
              f"{(median[label] - floor) * 1000:9.1f}ms {median[label] / floor:7.2f}x   "
              f"{median_cpu[label] * 1000:8.1f}ms {(median_cpu[label] - floor_cpu) * 1000:9.1f}ms")
    print("(wall time; CPU is user+sys of the process, which other work on the machine moves less)")

    failures = 0
    print()
    for label, value, target in (("dsfs --version", median["dsfs --version"], TARGET_CLI),
                                 ("dsfs --help", median["dsfs --help"], TARGET_CLI),
                                 ("import dsfs (over the floor)", median["python -c 'import dsfs'"] - floor,
                                  TARGET_IMPORT)):
        ok = value < target
        failures += not ok
        print(f"  {label}: {value * 1000:.1f} ms median (target < {target * 1000:.0f} ms) -> "
              f"{'PASS' if ok else 'FAIL'}")

    print()
    for module in ("dsfs", "dsfs.cli.main"):
        loaded = subprocess.run([py, "-c", LOADED.format(module=module, heavy=HEAVY)], env=env, cwd=cwd,
                                capture_output=True, text=True, check=True).stdout.split()
        print(f"  import {module} loads: " + (", ".join(loaded) or "none of " + ", ".join(HEAVY)))

    print(f"\npython -X importtime -c 'import dsfs.cli.main', top {args.top} by cumulative time (one run):")
    print(f"  {'cumulative':>10} {'self':>8}  module")
    for cumulative, self_, name in importtime("dsfs.cli.main", env, cwd, args.top):
        print(f"  {cumulative / 1000:8.1f}ms {self_ / 1000:6.1f}ms  {name}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

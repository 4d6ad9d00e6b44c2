#!/usr/bin/env python3
"""Deterministic benchmark datasets for dsfs (and its peers).

    python bench/gen_dataset.py DIR --kind large|small|append|shuffle|span [--scale F] [--seed S]

Kinds (sizes and counts at --scale 1):

    large   4 files x 512 MiB of random bytes                  DIR/part-00.bin ... part-03.bin
    small   10,000 files of 4-64 KiB in 100 folders            DIR/d000/f00000.bin ...
    append  one 100 MiB file of random bytes (the append case)  DIR/base.bin
    shuffle 20,000 files of 1-64 KiB in 100 folders            DIR/d000/f00000.bin ...
    span    one 1 GiB file of random bytes (random reads)      DIR/span.bin

--scale shrinks file sizes (large, append, span) or the file count (small, shuffle) for quick runs.

Content is a blake3 XOF stream keyed by (seed, kind, relative path), so a given (kind, scale, seed)
always produces the same bytes, on any machine, at ~1.5 GB/s per core. Random bytes do not compress,
so neither tool gains from compression and the figures measure hashing, chunking and I/O.

Idempotent: DIR.gen.json (next to DIR, so that adding DIR adds only data files) records the
parameters once everything is written; a second run with the same parameters does nothing, and one
with other parameters regenerates DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time

import blake3

MiB = 1 << 20
KiB = 1 << 10
MARKER_SUFFIX = ".gen.json"
FORMAT = 1  # bump when the layout or the byte stream changes
BLOCK = 64 * MiB


def stream_key(seed: int, kind: str, rel: str) -> bytes:
    return blake3.blake3(f"dsfs-bench/{FORMAT}/{seed}/{kind}/{rel}".encode()).digest()


def random_bytes(key: bytes, length: int, offset: int = 0) -> bytes:
    """`length` bytes of the deterministic stream named by `key`, from `offset`."""
    return blake3.blake3(key=key).digest(length, seek=offset)


def write_stream(path: str, key: bytes, size: int) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        done = 0
        while done < size:
            n = min(BLOCK, size - done)
            f.write(random_bytes(key, n, done))
            done += n
    os.replace(tmp, path)


def plan(kind: str, scale: float, seed: int) -> list[tuple[str, int]]:
    """(relative path, size) of every file of a dataset kind."""
    if kind == "large":
        size = max(1 * MiB, int(512 * MiB * scale))
        return [(f"part-{i:02d}.bin", size) for i in range(4)]
    if kind == "append":
        return [("base.bin", max(4 * MiB, int(100 * MiB * scale)))]
    if kind == "small":
        count = max(100, int(10_000 * scale))
        folders = min(100, count)
        rng = random.Random(f"{seed}/small")
        out = []
        for i in range(count):
            out.append((f"d{i % folders:03d}/f{i:05d}.bin", rng.randint(4 * KiB, 64 * KiB)))
        return sorted(out)
    if kind == "shuffle":
        count = max(200, int(20_000 * scale))
        folders = min(100, count)
        rng = random.Random(f"{seed}/shuffle")
        out = [(f"d{i % folders:03d}/f{i:05d}.bin", rng.randint(1 * KiB, 64 * KiB)) for i in range(count)]
        return sorted(out)
    if kind == "span":
        return [("span.bin", max(16 * MiB, int(1024 * MiB * scale)))]
    raise ValueError(f"unknown kind {kind!r}")


def params(kind: str, scale: float, seed: int) -> dict:
    files = plan(kind, scale, seed)
    return {"format": FORMAT, "kind": kind, "scale": scale, "seed": seed,
            "files": len(files), "bytes": sum(s for _, s in files)}


def generate(folder: str, kind: str, scale: float = 1.0, seed: int = 0, quiet: bool = False) -> dict:
    """Generate (or reuse) the dataset; returns its parameters (files, bytes, ...)."""
    want = params(kind, scale, seed)
    folder = os.path.normpath(folder)
    marker = marker_path(folder)
    try:
        with open(marker) as f:
            if json.load(f) == want:
                if not quiet:
                    print(f"{folder}: {kind} dataset already generated "
                          f"({want['files']} files, {want['bytes'] / MiB:.1f} MiB)", file=sys.stderr)
                return want
    except (FileNotFoundError, json.JSONDecodeError):
        pass
    if os.path.exists(marker):
        os.unlink(marker)
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    start = time.perf_counter()
    for rel, size in plan(kind, scale, seed):
        path = os.path.join(folder, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_stream(path, stream_key(seed, kind, rel), size)
    with open(marker, "w") as f:
        json.dump(want, f)
    if not quiet:
        took = time.perf_counter() - start
        print(f"{folder}: generated {kind} dataset, {want['files']} files, {want['bytes'] / MiB:.1f} MiB "
              f"in {took:.1f}s", file=sys.stderr)
    return want


def marker_path(folder: str) -> str:
    return os.path.normpath(folder) + MARKER_SUFFIX


def data_files(folder: str) -> list[str]:
    """Relative paths of a dataset's files, sorted."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            out.append(os.path.relpath(os.path.join(root, name), folder))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", help="folder to generate into (created; replaced if it holds other parameters)")
    ap.add_argument("--kind", choices=["large", "small", "append", "shuffle", "span"], required=True)
    ap.add_argument("--scale", type=float, default=1.0, help="shrink sizes/counts (default 1.0 = full size)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not args.scale > 0:
        ap.error("--scale must be positive")
    generate(args.dir, args.kind, args.scale, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())

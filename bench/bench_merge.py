#!/usr/bin/env python3
"""The driver's merge of task results on an upload on an executor (dsfs.authoring.distributed), alone.

    .venv/bin/python bench/bench_merge.py [--entries 1000000] [--per-task 2000] [--chunks-per-file 1]

Synthetic task results, as tasks of small files return them (2,000 files a task, one new chunk per
file, one pack a task, encoded on the worker by TaskLedger), are merged by `ExecutorUploader._record`
into a fresh draft whose `adds` holds the same paths: known-chunk resolution, the session's
announce, a HEAD per pack, and the draft's SQLite inserts and deletes with its saves every
SAVE_INTERVAL. Only the merge is timed (time.perf_counter around it); staging the adds and writing
the tiny packs are not. Prints the entries per second and the time for the whole merge, and the
slowest parts under --profile.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--per-task", type=int, default=2000, help="files a task returns (PARTITION_FILES)")
    ap.add_argument("--chunks-per-file", type=int, default=1)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dsfs-bench-merge-") as tmp:
        os.environ["XDG_STATE_HOME"] = os.path.join(tmp, "state")
        os.environ["XDG_DATA_HOME"] = os.path.join(tmp, "data")
        return run(args, tmp)


def run(args, tmp: str) -> int:
    from dsfs.authoring.distributed import ExecutorUploader, TaskLedger
    from dsfs.authoring.drafts import DraftState
    from dsfs.lineage.filetable import FileTable
    from dsfs.model import ChunkRef, Entry
    from dsfs.progress import Tracker
    from dsfs.store.layout import Store
    from dsfs.store.sessions import WriterSession

    store = Store.open(f"file://{tmp}/store", create=True)
    draft = DraftState.load("0" * 32, store.url)
    paths = [f"d{i // 1000:05d}/f{i:07d}.bin" for i in range(args.entries)]
    draft.stage_local((p, f"/data/{p}") for p in paths)
    draft.save()

    results = []
    counter = 0
    for start in range(0, len(paths), args.per_task):
        pack = counter.to_bytes(16, "big")
        counter += 1
        store.write_pack(pack, [b"x"])
        refs = []
        files = []
        offset = 0
        for path in paths[start:start + args.per_task]:
            chunks = []
            for _ in range(args.chunks_per_file):
                ref = ChunkRef(os.urandom(32), pack, offset, 4096, 4096, 0)
                offset += 4096
                chunks.append(ref)
                refs.append(ref)
            entry = Entry(path=path, size=4096 * args.chunks_per_file, mtime_ns=1_700_000_000_000_000_000,
                          digest=chunks[0].digest, chunks=chunks)
            files.append((entry, f"/data/{path}"))
        ledger = TaskLedger()  # what a worker returns: the entries encoded there
        ledger.record_pack(pack, True, offset, refs)
        ledger.record_uploaded(files)
        results.append(((ledger.packs, ledger.files, ledger.known), sum(e.size for e, _ in files)))

    class Task:  # what _record reads of a PartitionTask
        def __init__(self, size):
            self.size = size

    with WriterSession(store, "bench merge") as session:
        uploader = ExecutorUploader.__new__(ExecutorUploader)  # the merge alone: no executor, no tasks
        uploader.store, uploader.draft, uploader.table, uploader.session = store, draft, FileTable.empty(), session
        uploader.progress = Tracker()
        uploader.sent_packs = uploader.skipped_packs = 0
        uploader._saved_at = time.monotonic()
        uploader._recording = False

        def merge():
            for result, size in results:
                assert uploader._record(Task(size), result)
            draft.save()

        t0 = time.perf_counter()
        if args.profile:
            import cProfile
            import pstats
            prof = cProfile.Profile()
            prof.runcall(merge)
            elapsed = time.perf_counter() - t0
            pstats.Stats(prof).sort_stats("tottime").print_stats(12)
        else:
            merge()
            elapsed = time.perf_counter() - t0
    assert draft.uploaded_count == args.entries and draft.adds_count == 0
    print(f"merged {args.entries:,} entries ({len(results):,} task results of {args.per_task}, "
          f"{args.chunks_per_file} chunk(s) a file) in {elapsed:.2f} s = {args.entries / elapsed:,.0f} entries/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

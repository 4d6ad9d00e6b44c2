"""A synthetic final version of many files, written through the store API (a change-set streamed in
path order and its version record; its chunks do not exist): for commands that read no file bytes at
sizes a disk cannot make quickly (bench_mount's 1M view, bench_scale's listings, tests/test_streaming's
memory bound)."""

from __future__ import annotations

import datetime
import io
import time
import uuid

import blake3
import msgpack
import zstandard


def synthetic_version(store_url: str, files: int, name: str, size: int = 4096, parent: str | None = None,
                      changed: int | None = None, seed: int = 0) -> str:
    """A final version of `files` entries (`size` bytes each, 1,000 per folder) written through the store
    API: a change-set streamed in path order and its version record. Its chunks do not exist. With
    `parent` (a version made by this function with as many files), a child that rewrites `changed`
    of them, spread over the folders (`seed` makes each child's content its own)."""
    from dsfs.dataset import open_store
    from dsfs.model import ChunkRef, Entry, VersionInfo

    store = open_store(store_url, create=True)
    out = io.BytesIO()
    pack = uuid.uuid4().bytes
    mtime = time.time_ns()
    rows = range(files) if parent is None else range(seed % max(1, files // max(1, changed)), files,
                                                      max(1, files // max(1, changed)))
    with zstandard.ZstdCompressor(level=3).stream_writer(out, closefd=False) as writer:
        packer = msgpack.Packer()
        writer.write(packer.pack({"format": 1}))
        for i in rows:
            digest = blake3.blake3(i.to_bytes(8, "big") + seed.to_bytes(8, "big")).digest()
            entry = Entry(path=f"d{i // 1000:05d}/f{i:07d}.bin", size=size, mtime_ns=mtime, digest=digest,
                          chunks=[ChunkRef(digest, pack, i * size, size, size)])
            writer.write(packer.pack(entry.to_wire()))
    data = out.getvalue()
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    info = VersionInfo(id=uuid.uuid4().hex, project="bench", name=name, version=f"1.0.{seed}", state="final",
                       created=now, finalized=now, parents=[parent] if parent else [],
                       changes={"digest": blake3.blake3(data).hexdigest(), "size": len(data)},
                       stats={"files": files, "bytes": files * size})
    store.write_changes(info.id, data)
    store.write_version(info)
    return info.id


def synthetic_lineage(store_url: str, files: int, depth: int, changed: int, name: str) -> str:
    """A chain of `depth` children over a synthetic base of `files` files, each rewriting `changed` of
    them (synthetic_version): the id of the last."""
    top = synthetic_version(store_url, files, name, size=8)
    for seed in range(1, depth + 1):
        top = synthetic_version(store_url, files, name, size=8, parent=top, changed=changed, seed=seed)
    return top


def synthetic_draft(store_url: str, files: int, name: str, size: int = 8) -> str:
    """A draft of `files` uploaded entries (`size` bytes each, 1,000 per folder), staged straight into
    its local state: what `dsfs close` of that many files reads, without ingesting them (their chunks
    do not exist). Staged through whichever draft API this checkout has (a --base build's too)."""
    from dsfs import Dataset
    from dsfs.model import ChunkRef, Entry

    ds = Dataset.create("bench", name, store=store_url)
    pack = uuid.uuid4().bytes
    mtime = time.time_ns()

    def entries():
        for i in range(files):
            digest = blake3.blake3(i.to_bytes(8, "big") + pack).digest()
            yield Entry(path=f"d{i // 1000:05d}/f{i:07d}.bin", size=size, mtime_ns=mtime, digest=digest,
                        chunks=[ChunkRef(digest, pack, i * size, size, size)])

    draft = ds._require_draft()
    if hasattr(draft, "stage_entries"):
        draft.stage_entries(entries())
    else:  # a build whose draft state is one msgpack file
        for entry in entries():
            draft.stage_entry(entry)
    draft.save()
    return ds.id

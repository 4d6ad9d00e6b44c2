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


def synthetic_version(store_url: str, files: int, name: str, size: int = 4096) -> str:
    """A final version of `files` entries (`size` bytes each, 1,000 per folder) written through the store
    API: a change-set streamed in path order and its version record. Its chunks do not exist."""
    from dsfs.dataset import open_store
    from dsfs.model import ChunkRef, Entry, VersionInfo

    store = open_store(store_url, create=True)
    out = io.BytesIO()
    pack = uuid.uuid4().bytes
    mtime = time.time_ns()
    with zstandard.ZstdCompressor(level=3).stream_writer(out, closefd=False) as writer:
        packer = msgpack.Packer()
        writer.write(packer.pack({"format": 1}))
        for i in range(files):
            digest = blake3.blake3(i.to_bytes(8, "big")).digest()
            entry = Entry(path=f"d{i // 1000:05d}/f{i:07d}.bin", size=size, mtime_ns=mtime, digest=digest,
                          chunks=[ChunkRef(digest, pack, i * size, size, size)])
            writer.write(packer.pack(entry.to_wire()))
    data = out.getvalue()
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    info = VersionInfo(id=uuid.uuid4().hex, project="bench", name=name, version="1.0.0", state="final",
                       created=now, finalized=now,
                       changes={"digest": blake3.blake3(data).hexdigest(), "size": len(data)},
                       stats={"files": files, "bytes": files * size})
    store.write_changes(info.id, data)
    store.write_version(info)
    return info.id

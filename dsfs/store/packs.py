"""Chunking and packing: how file bytes become content-defined chunks inside ~64 MiB packs.

Files are cut with FastCDC (min 256 KiB, avg 1 MiB, max 4 MiB; pyfastcdc adds min to avg, so chunks
average about 1.25 MiB); a file no larger than the minimum is one chunk. A chunk is named by its
blake3 digest. New chunks are appended to the open pack in the order they are met (path order, so a
folder's files sit together and a subtree downloads as a few large ranged GETs). A pack's id is
blake3 of its bytes (first 16 bytes), so writing a pack is idempotent and a resumed upload skips packs
already stored.

Compression is per chunk and only where it saves: a 16 KiB probe at zstd level 1 decides whether the
whole chunk is worth compressing (images, parquet and random bytes are not, and the probe costs
about 1% of a full attempt), and the compressed form is kept only if it is at least 5% smaller.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import blake3
import zstandard
from pyfastcdc import FastCDC

from dsfs.errors import CorruptChunk
from dsfs.model import COMPRESSION_NONE, COMPRESSION_ZSTD, MAX_CHUNK, ChunkRef

MIN_CHUNK = 256 << 10
AVG_CHUNK = 1 << 20
PACK_TARGET = 64 << 20
PROBE = 16 << 10


def digest(data) -> bytes:
    return blake3.blake3(data).digest()


def file_digest(path: str) -> bytes:
    """blake3 of a local file's bytes (memory-mapped, multi-threaded for large files)."""
    size = os.path.getsize(path)
    if size < (8 << 20):  # threads and mmap cost more than they save on small files
        with open(path, "rb") as f:
            return blake3.blake3(f.read()).digest()
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    hasher.update_mmap(path)
    return hasher.digest()


def chunker() -> FastCDC:
    """A FastCDC instance with dsfs's parameters. Not thread-safe: one per thread."""
    return FastCDC(AVG_CHUNK, min_size=MIN_CHUNK, max_size=MAX_CHUNK)


class Pack:
    """A pack being filled: a list of stored chunk bytes, hashed as they come (no buffer growth,
    no second pass to name it); its id is known once sealed."""

    __slots__ = ("seq", "pieces", "size", "hasher", "id", "chunks")

    def __init__(self, seq: int):
        self.seq = seq
        self.pieces: list[bytes] = []
        self.size = 0
        self.hasher = blake3.blake3()
        self.id: bytes | None = None
        self.chunks: list[PendingRef] = []

    def append(self, data: bytes) -> int:
        offset = self.size
        self.pieces.append(data)
        self.hasher.update(data)
        self.size += len(data)
        return offset

    def seal(self) -> bytes:
        self.id = self.hasher.digest()[:16]
        return self.id

    @property
    def sealed_id(self) -> bytes:
        """The id of a sealed pack (PackBuilder.take seals every pack it hands out)."""
        assert self.id is not None, "pack not sealed"
        return self.id

    def release(self) -> None:
        """Free the bytes, and the refs' back-links: a ref points to its pack, so a pack that kept
        its refs would be a cycle only the cyclic GC frees (10,000 refs made the next full
        collection cost ~15 ms)."""
        self.pieces = []
        self.chunks = []


class PendingRef:
    """A chunk ref whose pack may not be sealed yet."""

    __slots__ = ("digest", "pack", "offset", "stored", "raw", "compression")

    def __init__(self, digest: bytes, pack: Pack, offset: int, stored: int, raw: int, compression: int):
        self.digest, self.pack, self.offset = digest, pack, offset
        self.stored, self.raw, self.compression = stored, raw, compression

    def resolve(self) -> ChunkRef:
        assert self.pack.id is not None, "pack not sealed"
        return ChunkRef(self.digest, self.pack.id, self.offset, self.stored, self.raw, self.compression)


class PackBuilder:
    """Appends new chunks to packs; hands out full packs to be written."""

    def __init__(self, target: int = PACK_TARGET):
        self.target = target
        self._seq = 0
        self.current = Pack(0)
        self._zstd_probe = zstandard.ZstdCompressor(level=1)
        self._zstd = zstandard.ZstdCompressor(level=3)

    def add(self, chunk_digest: bytes, data) -> PendingRef:
        """Append a chunk (copied: `data` may be a view into a reader's buffer)."""
        raw = len(data)
        stored_bytes, compression = self._maybe_compress(data)
        pack = self.current
        offset = pack.append(bytes(stored_bytes))
        ref = PendingRef(chunk_digest, pack, offset, len(stored_bytes), raw, compression)
        pack.chunks.append(ref)
        return ref

    def full(self) -> bool:
        return self.current.size >= self.target

    def take(self) -> Pack | None:
        """Seal and return the current pack (None if empty), and start a new one."""
        pack = self.current
        if not pack.size:
            return None
        pack.seal()
        self._seq += 1
        self.current = Pack(self._seq)
        return pack

    def _maybe_compress(self, data):
        raw = len(data)
        if raw >= 4096:
            probe = data[:min(PROBE, max(4096, raw // 8))]  # small files: a proportional probe
            if len(self._zstd_probe.compress(probe)) > 0.9 * len(probe):
                return data, COMPRESSION_NONE
            packed = self._zstd.compress(data)
            if len(packed) <= 0.95 * raw:
                return packed, COMPRESSION_ZSTD
        return data, COMPRESSION_NONE


def decode_chunk(ref: ChunkRef, stored: bytes | memoryview,
                 where: str | Callable[[], str]) -> bytes | memoryview:
    """Turn a chunk's stored bytes back into its raw bytes, verifying the digest. `where` names the
    file for the error message; a callable is asked only on error (a mount's file paths are computed,
    not stored: a label per chunk fetched was a third of a cold read's CPU). An uncompressed chunk
    is returned as it was given (a memoryview stays one: no copy)."""
    data: bytes | memoryview
    try:
        if ref.compression == COMPRESSION_ZSTD:
            # a frame that states its size is given a buffer of that size, whatever max_output_size
            # says: a crafted one claiming 1 TiB would be a MemoryError, not a corrupt chunk
            claimed = zstandard.frame_content_size(stored)
            data = b"" if claimed not in (-1, ref.raw) else \
                zstandard.ZstdDecompressor().decompress(stored, max_output_size=ref.raw)
        else:
            data = stored
    except zstandard.ZstdError:
        data = b""
    if len(data) != ref.raw or digest(data) != ref.digest:
        label = where() if callable(where) else where
        raise CorruptChunk(f"corrupt chunk {ref.digest.hex()[:16]} in pack {ref.pack.hex()} ({label})")
    return data

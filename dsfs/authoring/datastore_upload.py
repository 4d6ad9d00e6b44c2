"""`dsfs datastore upload`: plain files from a local folder into a datastore, as they are (AzureML's
`datastore.upload`), for data that is consumed raw rather than as a dsfs version.

Files keep their layout under the target path and are sent by a pool of threads (one object per
file; the backend splits large ones into multipart uploads). Nothing is replaced unless asked: the
target is listed first, and any file that would overwrite an existing object stops the upload
before a byte is sent. The dsfs layout's own top-level names (`datasets/`, `packs/`, `names/`,
`sessions/`, `locks/`, the store marker) are refused as targets, so an upload can never damage the dsfs store beside it.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from dsfs import paths
from dsfs.authoring.localfiles import local_files
from dsfs.errors import Conflict, LocalFileNotFound, UsageError
from dsfs.progress import transfer
from dsfs.store import backends
from dsfs.store.datastores import Datastore
from dsfs.store.layout import MARKER

DEFAULT_WORKERS = 8
RESERVED = {"datasets", "packs", "names", "sessions", "locks", MARKER}


def upload(datastore: Datastore, src_dir: str, target_path: str, overwrite: bool = False,
           max_workers: int | None = None, show_progress: bool | None = None) -> dict:
    """Upload every file under `src_dir` to `target_path` in the datastore. Returns counts."""
    src = os.path.abspath(os.path.expanduser(src_dir))
    if not os.path.isdir(src):
        raise LocalFileNotFound(f"no such folder: {src_dir}")
    target = "" if target_path in ("", ".", "/") else paths.normalize(target_path.strip("/"))
    if target.split("/", 1)[0] in RESERVED:
        raise UsageError(f"target path {target_path!r} is part of the dsfs store layout; choose another")
    files = [(paths.join(target, rel) if target else rel, local) for rel, local in local_files(src, None, True)]
    if not files:
        raise UsageError(f"no files in {src_dir}")
    store = datastore.store()
    backends.probe(backends.endpoint(store.protocol, store.fs), store.display_url)
    existing = set(store.list_files(target))
    clashes = sorted(key for key, _ in files if key in existing)
    if clashes and not overwrite:
        raise Conflict(f"{len(clashes)} file(s) already exist in datastore {datastore.name!r} "
                       f"(e.g. {clashes[0]}); pass --overwrite to replace them")
    sizes = {local: os.path.getsize(local) for _, local in files}
    with transfer(f"upload to {datastore.name}", sum(sizes.values()), show_progress) as progress, \
            ThreadPoolExecutor(max(1, max_workers or DEFAULT_WORKERS), thread_name_prefix="dsfs-put") as pool:
        progress.set_total(sum(sizes.values()), len(files))

        def put(item):
            key, local = item
            store.put_file(key, local)
            progress.advance(sizes[local], files=1)

        list(pool.map(put, files))
    return {"files": len(files), "bytes": sum(sizes.values()), "replaced": len(clashes),
            "target": f"{store.display_url}/{target}" if target else store.display_url}

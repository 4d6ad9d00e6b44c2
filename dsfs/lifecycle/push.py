"""Push: copy a final version and everything it needs to another store (DESIGN 7: author offline
into `local`, then `dsfs push vision/cats --to lake`).

What reaches the target, in this order, so that a reader there never sees a version it cannot
serve (the store's write order, applied across stores):

1. every version number is claimed first (`names/...`, exclusive create). A number held there by
   another id is a Conflict and nothing is copied; a number already held by our id is ours (a
   resumed push);
2. ancestors before descendants; a version already final at the target is skipped, and so are its
   ancestors (they went there before it);
3. for each version: the packs its change-set refers to that the target lacks, then its change-set
   (the same bytes: its digest is in version.json), then version.json, last;
4. the previews of each version sent and of the version pushed, those the target lacks (previews
   may be added to a version after an earlier push of it).

The push is a writer session at the target (dsfs.store.sessions): every pack it needs is announced before
it is looked up there, so a gc running at the target keeps the packs a push found present, and
every pack is confirmed present right before a version record is written.

Every step is idempotent: packs are content-addressed and looked up before they are sent, a claim
naming our id is ours, and a version whose record is there is skipped. A push that failed midway
re-sends only what is missing; a second push sends nothing. Packs and change-sets are checked
against their digests before they are sent, so a corrupt source is not replicated.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from dsfs.errors import Conflict, CorruptData, DatasetNotFound, InvalidState, StoreUnavailable, UsageError
from dsfs.lineage.merge import Lineage, read_changes_checked
from dsfs.model import VersionInfo, decode_changeset
from dsfs.progress import transfer
from dsfs.store import datastores
from dsfs.store.layout import Store
from dsfs.store.packs import digest
from dsfs.store.sessions import WriterSession

DEFAULT_WORKERS = 4
log = logging.getLogger(__name__)


def open_target(to: Store | str) -> Store:
    """A Store from a Store, a URL, `datastore:NAME`, or a bare datastore name; created if empty."""
    if isinstance(to, Store):
        to.check(create=True)
        return to
    if "://" not in to and not to.startswith(datastores.PREFIX):
        to = datastores.PREFIX + to
    return datastores.open_store(to, create=True)


def push(source: Store, info: VersionInfo, to: Store | str, max_workers: int | None = None,
         show_progress: bool | None = None) -> dict:
    """Copy `info` (a final version of `source`) and what it needs to `to`. Returns counts."""
    if not info.is_final:
        raise InvalidState(f"dataset {info.id} ({info.ref}) is a draft; close it before pushing")
    target = open_target(to)
    if target.url == source.url:
        raise UsageError(f"{info.ref} is already in {target.display_url}: push copies to another store")
    lineage = Lineage(source)
    lineage.ancestors([info.id])  # a damaged lineage (a cycle, a missing parent) fails before any claim
    missing = _missing_versions(lineage, target, info.id)
    for dataset_id in missing:
        _claim(target, lineage.info(dataset_id))
    changesets = {i: read_changes_checked(source, lineage.info(i)) for i in missing}
    wanted, estimate = _packs(changesets)
    result = {"versions_sent": len(missing), "versions_present": 0, "packs_sent": 0,
              "packs_present": 0, "bytes_sent": 0}
    result["versions_present"] = len(lineage.ancestors([info.id])) - len(missing)
    workers = max(1, max_workers or DEFAULT_WORKERS)
    with ThreadPoolExecutor(workers, thread_name_prefix="dsfs-push") as pool, \
            WriterSession(target, f"push {info.ref} ({info.id})") as session:
        all_packs = sorted({p for packs in wanted.values() for p in packs})
        session.announce(all_packs, verified=False)
        present = dict(zip(all_packs, pool.map(target.has_pack, all_packs), strict=True))
        for pack, found in present.items():
            if found:
                session.seen(pack)
        to_send = [p for p in all_packs if not present[p]]
        result["packs_present"] = len(all_packs) - len(to_send)
        log.info("push %s to %s: %d version(s), %d of %d pack(s) to send", info.ref, target.display_url,
                 len(missing), len(to_send), len(all_packs))
        with transfer(f"push {info.ref}", sum(estimate.get(p, 0) for p in to_send), show_progress) as progress:
            sent: set[bytes] = set()
            for dataset_id in missing:  # ancestors first: each version only after all it needs
                batch = [p for p in wanted[dataset_id] if not present[p] and p not in sent]
                for size in pool.map(lambda p: _copy_pack(source, target, p), batch):
                    result["bytes_sent"] += size
                    progress.advance(size)
                sent.update(batch)
                for pack in batch:
                    session.seen(pack)
                lost = session.confirm(wanted[dataset_id])
                if lost:
                    raise StoreUnavailable(f"pack {lost[0].hex()} disappeared from {target.display_url} during the "
                                           f"push (a gc ran while this push was stalled); run the push again")
                target.write_changes(dataset_id, changesets[dataset_id])
                target.write_version(lineage.info(dataset_id))
            result["packs_sent"] = len(sent)
    result["previews_sent"] = sum(_copy_previews(source, target, i) for i in dict.fromkeys([*missing, info.id]))
    return result


def _copy_previews(source: Store, target: Store, dataset_id: str) -> int:
    """The version's previews (dsfs.authoring.previews) the target lacks: blobs before the items
    that name them (sorted keys: blobs/ < items/). Items are never rewritten, blobs are named by
    their digest: what the target holds under a key is what the source holds."""
    have = set(target.preview_keys(dataset_id))
    wanted = [k for k in sorted(source.preview_keys(dataset_id)) if k not in have]
    for key in wanted:
        source.copy_preview_object(key, target)
    return len(wanted)


def _missing_versions(lineage: Lineage, target: Store, dataset_id: str) -> list[str]:
    """Versions the target lacks, parents before children (post-order over the parent DAG); the
    ancestors of a version the target has are not visited."""
    order: list[str] = []
    seen: set[str] = set()
    stack: list[tuple[str, bool]] = [(dataset_id, False)]
    while stack:
        current, children_done = stack.pop()
        if children_done:
            order.append(current)
            continue
        if current in seen:
            continue
        seen.add(current)
        if _present(target, current):
            continue
        stack.append((current, True))
        stack.extend((parent, False) for parent in reversed(lineage.info(current).parents))
    return order


def _present(target: Store, dataset_id: str) -> bool:
    try:
        return target.read_version(dataset_id).is_final
    except DatasetNotFound:
        return False


def _claim(target: Store, info: VersionInfo) -> None:
    if target.claim_version_number(info.project, info.name, info.version, info.id):
        return
    holder = target.version_number_holder(info.project, info.name, info.version)
    if holder not in (None, info.id):
        raise Conflict(f"{info.ref} is taken in {target.display_url} by another dataset ({holder}); "
                       f"rename or move the version before pushing it")
    if holder is None and not target.claim_version_number(info.project, info.name, info.version, info.id):
        raise Conflict(f"{info.ref} was claimed in {target.display_url} during the push; try again")


def _packs(changesets: dict[str, bytes]) -> tuple[dict[str, list[bytes]], dict[bytes, int]]:
    """The packs each version's change-set refers to, and a lower bound of each pack's size (the
    end of its last chunk referenced) for the progress bar."""
    wanted: dict[str, list[bytes]] = {}
    sizes: dict[bytes, int] = {}
    for dataset_id, data in changesets.items():
        packs = set()
        for entry in decode_changeset(data, f"change-set of dataset {dataset_id}"):
            for ref in entry.chunks:
                packs.add(ref.pack)
                sizes[ref.pack] = max(sizes.get(ref.pack, 0), ref.offset + ref.stored)
        wanted[dataset_id] = sorted(packs)
    return wanted, sizes


def _copy_pack(source: Store, target: Store, pack_id: bytes) -> int:
    data = source.read_pack(pack_id)
    if digest(data)[:16] != pack_id:
        raise CorruptData(f"pack {pack_id.hex()} in {source.display_url} does not match its id; "
                          f"not pushing it (the source store is damaged)")
    target.write_pack(pack_id, data)
    return len(data)

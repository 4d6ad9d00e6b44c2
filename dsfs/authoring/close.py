"""Uploading and closing a draft: the end of the write order (dsfs.store.layout's docstring).

    upload       send a draft's pending files inside a writer session, after re-adopting the packs
                 earlier runs of the draft wrote
    close        upload what is left; confirm every pack relied on is still in the store; check that
                 the parents are still final and the draft was not deleted; then write_final
    write_final  the change-set, then version.json with state=final (a squash ends here too)

The writer session (dsfs.store.sessions) is what keeps a concurrent gc from removing a pack this
draft relies on; `check_ancestors` and catalog.delete's second look at children are what keep a
version from becoming final on top of a deleted one: each of the two sees the other.
"""

from __future__ import annotations

import heapq
import logging
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import Executor

import blake3

from dsfs.authoring import previews
from dsfs.authoring.drafts import DraftState
from dsfs.authoring.localfiles import local_size, tell
from dsfs.errors import CorruptData, DatasetNotFound, DsfsError, InvalidState, StoreUnavailable
from dsfs.fsutil import TMP_PREFIX, space_for
from dsfs.lineage.filetable import LINK, FileTable, TableBuilder, tables_dir, writable
from dsfs.lineage.merge import Lineage
from dsfs.model import Entry, VersionInfo, changeset_written, utc_now
from dsfs.progress import transfer
from dsfs.store.layout import Store
from dsfs.store.sessions import WriterSession

log = logging.getLogger(__name__)
CONFIRM_ROUNDS = 3  # packs lost while closing are sent again at most this many times


def writer_session(store: Store, info: VersionInfo, what: str) -> WriterSession:
    return WriterSession(store, f"{what} {info.ref} ({info.id})", notify=tell)


def upload(store: Store, info: VersionInfo, draft: DraftState, session: WriterSession, max_workers: int | None,
           show_progress: bool | None, executor: Executor | None = None) -> dict:
    """Upload inside a writer session: first re-adopt the packs earlier runs of this draft wrote
    (gc may have removed them if the draft sat idle past the grace period: their files are then
    sent again), then send what is pending, here or by tasks on `executor` (dsfs.authoring.distributed).
    Returns counts."""
    session.announce(draft.packs, verified=False)
    forget_lost(info, draft, session.confirm())
    table = Lineage.of(store).table(info.parents)
    # imported here: dsfs.dataset imports this module for every command, few upload (~130 ms)
    from dsfs.authoring.distributed import ExecutorUploader
    from dsfs.authoring.ingest import Uploader

    uploader: Uploader | ExecutorUploader
    if executor is None:
        uploader = Uploader(store, draft, table.known_chunk, session, max_workers)
    else:
        uploader = ExecutorUploader(executor, store, draft, table, session, max_workers)
    if draft.adds_count:
        with transfer(f"upload {info.ref}", None, show_progress) as progress:
            if progress.bar is not None:  # a stat of every file: only for a bar someone sees
                total = sum(local_size(local) for _, local in draft.adds())
                progress.set_total(total, draft.adds_count)
            uploader.progress = progress
            uploader.run(draft.adds())
    return {"files": draft.uploaded_count, "packs_sent": uploader.sent_packs,
            "packs_present": uploader.skipped_packs, "new_bytes": draft.new_bytes}


def forget_lost(info: VersionInfo, draft: DraftState, lost: list[bytes]) -> None:
    """Packs gc removed under an idle draft: their files go back to pending (their local paths are
    recorded), or the upload fails naming a file that cannot be sent again."""
    if not lost:
        return
    unknown = draft.forget_packs(set(lost))
    draft.save()
    if unknown:
        raise CorruptData(f"{len(unknown)} file(s) of draft {info.id} were uploaded into packs that gc has "
                          f"since removed (the draft sat idle longer than gc's grace period), and their "
                          f"local files are not recorded: add them again (e.g. {unknown[0]})")


def close(store: Store, info: VersionInfo, draft: DraftState, auto_upload: bool, max_workers: int | None,
          show_progress: bool | None, preview: str = "auto",
          executor: Executor | None = None) -> list[tuple[str, int]]:
    """Make a draft final (the caller holds its DraftLock); `info` becomes the final record. What
    is left to upload is uploaded here, or by tasks on `executor`."""
    if draft.adds_count and not auto_upload:
        raise InvalidState(f"dataset {info.id} has {draft.adds_count} files not uploaded; run upload first")
    with writer_session(store, info, "close") as session:
        upload(store, info, draft, session, max_workers, show_progress, executor)
        # Right before the record: every pack relied on is still there (see dsfs.store.sessions).
        # A pack lost now was lost while the session was stale: send its files again.
        for _ in range(CONFIRM_ROUNDS):
            lost = session.confirm()
            if not lost:
                break
            forget_lost(info, draft, lost)
            upload(store, info, draft, session, max_workers, show_progress, executor)
        else:
            raise StoreUnavailable(f"packs of dataset {info.id} keep disappearing from {store.display_url} "
                                   f"while it closes (is a gc with a grace period of 0 running?); try again")
        check_ancestors(store, info, info.parents, "parent")
        check_not_deleted(store, info)
        base = Lineage.of(store).table(info.parents)
        counts = {"added": 0, "modified": 0, "removed": 0}
        with ChangeSpool() as out:
            # one pass over the draft: each change is written into the change-set as the new
            # version's file table takes it
            table = base.child(changeset_written(out, changes_encoded(base, draft, counts)), f"dataset {info.id}")
            candidates = write_final(store, info, out, table, counts, draft.new_bytes, draft.written, preview)
    draft.discard()
    return candidates


class ChangeSpool:
    """A change-set as it is written: into a temp file in the file tables' folder (a
    change-set of 10,000,000 files is ~400 MB: never held in memory), hashed as it goes. A file
    object for changeset_written; `write_final` sends it."""

    def __init__(self) -> None:
        folder = tables_dir()  # where a killed close's spool is swept (filetable._prune), and `cache clear` reaches
        with writable(folder):
            os.makedirs(folder, mode=0o700, exist_ok=True)
            self.file = tempfile.NamedTemporaryFile(dir=folder, prefix=TMP_PREFIX + "changes-")
        self.hasher = blake3.blake3()
        self.size = 0

    def write(self, data) -> int:
        self.hasher.update(data)
        self.size += len(data)
        with space_for(self.file.name):
            return self.file.write(data)

    def flush(self) -> None:
        with space_for(self.file.name):
            self.file.flush()

    @property
    def digest(self) -> str:
        return self.hasher.hexdigest()

    def __enter__(self) -> ChangeSpool:
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


def check_not_deleted(store: Store, info: VersionInfo) -> None:
    """A draft deleted (by another command) while it was closing stays deleted: its record and
    version number are gone, and writing it final would bring back a version nobody claims."""
    try:
        store.read_version(info.id)
    except DatasetNotFound:
        raise DatasetNotFound(f"draft {info.id} ({info.ref}) was deleted while it was being closed; "
                              f"nothing was closed") from None


def check_ancestors(store: Store, info: VersionInfo, ids: list[str], what: str) -> None:
    """Right before the final record, each parent (or squash source) is still a final version.
    A delete removes the record first and then looks for children (dsfs.catalog.delete): one of
    the two commands sees the other, so a version never becomes final on top of a deleted one."""
    for dataset_id in ids:
        try:
            ancestor = store.read_version(dataset_id)
        except DatasetNotFound:
            raise DatasetNotFound(f"{what} {dataset_id} of dataset {info.id} was deleted while it was being "
                                  f"made; nothing was closed (create it again on another {what})") from None
        if not ancestor.is_final:
            raise InvalidState(f"{what} {dataset_id} of dataset {info.id} is no longer final")


def write_final(store: Store, info: VersionInfo, changes: ChangeSpool, new: TableBuilder, counts: dict,
                new_bytes: int, packs: list[bytes], preview: str = "auto") -> list[tuple[str, int]]:
    """The end of the write order: the change-set (spooled), then version.json with state=final.
    `new` is the version's file table, already checked for path conflicts: finished and saved
    first (kept for its children; a table of a version that never becomes final is never used).
    Then its statistics (dsfs.authoring.previews), unless preview is "none": a preview that cannot
    be written is a warning, never a failed close. Returns the table files (path, size) an
    automatic preview would read (previews.sample_candidates): not links."""
    changes.flush()
    table = new.finish(info, changes.digest)
    changes.file.seek(0)
    store.write_changes(info.id, changes.file, changes.size)
    info.changes = {"digest": changes.digest, "size": changes.size}
    info.stats = {"files": table.n, "bytes": table.total_bytes, **counts,
                  "new_bytes": new_bytes, "packs": [p.hex() for p in packs]}
    info.state = "final"
    info.finalized = utc_now()
    store.write_version(info)
    if preview != "none":
        try:
            previews.write_statistics(store, info, ((path, size) for path, size, _ in table.rows()), counts)
        except DsfsError as exc:
            log.warning("dataset %s is final, but its statistics were not stored: %s", info.id, exc)
    return previews.sample_candidates((path, size) for path, size, flags in table.rows() if not flags & LINK)


def changes_against(base: FileTable, draft: DraftState, counts: dict | None = None) -> Iterator[Entry]:
    """The draft's change-set against its parents' merged file table, in path order, as a stream
    (the draft's removals and uploaded files are each sorted, and no path is in both); `counts`
    (added, modified, removed) grow as it is read."""
    return (entry for entry, _ in changes_encoded(base, draft, counts))


def changes_encoded(base: FileTable, draft: DraftState,
                    counts: dict | None = None) -> Iterator[tuple[Entry, bytes | None]]:
    """changes_against's entries, each with its change-set encoding if the draft has it
    (DraftState.uploaded_encoded), for changeset_written."""
    counts = {"added": 0, "modified": 0, "removed": 0} if counts is None else counts
    removed_at, row_of = base.cursor(), base.cursor()  # both streams are in path order
    removals = ((Entry(path=path, removed=True), None) for path in draft.removals()
                if removed_at.find(path) is not None)
    for entry, encoded in heapq.merge(removals, draft.uploaded_encoded(), key=lambda pair: pair[0].path):
        if entry.removed:
            counts["removed"] += 1
        else:
            row = row_of.find(entry.path)
            if row is not None and base.same_content(row, entry):
                continue
            counts["added" if row is None else "modified"] += 1
        yield entry, encoded

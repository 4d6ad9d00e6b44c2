"""The Python API: `Dataset`, in the spirit of `clearml.Dataset`. The CLI is a thin layer over it.

    ds = Dataset.create(project="vision", name="cats", parents=[parent_id])
    ds.add_files("data/", wildcard="*.jpg", dataset_path="images")
    ds.remove_files("images/old/*")
    ds.upload(max_workers=8)
    ds.finalize()                     # uploads what is left, writes the change-set, then state=final
    Dataset.get("vision/cats").list_files("images/*")

A dataset is named by id (32 hex) or by `project/name[@version]` (latest final version when no
version is given), optionally filtered by tags.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager, suppress
from itertools import chain
from typing import TYPE_CHECKING

import blake3
import msgpack

from dsfs import catalog, paths
from dsfs.authoring import close, drafts, previews, projects, sources
from dsfs.authoring.drafts import DraftState
from dsfs.authoring.evolve import Comparison, FolderChanges, folder_diff, printable, squash_parts
from dsfs.authoring.evolve import compare as compare_versions
from dsfs.authoring.evolve import differences as evolve_differences
from dsfs.authoring.localfiles import local_files, local_size, warn
from dsfs.catalog import open_store, resolve
from dsfs.datarefs import DataReference
from dsfs.errors import Conflict, CorruptData, DatasetNotFound, DsfsError, InvalidState, UsageError
from dsfs.lifecycle.push import push as push_version
from dsfs.lineage.merge import Lineage, apply_changes
from dsfs.lineage.viewindex import ViewIndex, ensure_view, merged_entries
from dsfs.model import Entry, VersionInfo, clamp_mtime, utc_now
from dsfs.node import links, materialize
from dsfs.node.cache import Cache
from dsfs.node.chunks import ChunkReader
from dsfs.node.verify import verify_folder
from dsfs.progress import transfer
from dsfs.store import datastores
from dsfs.store.layout import Store

if TYPE_CHECKING:
    from dsfs.filesystem import DsfsFileSystem

SNAPSHOT_PROJECT = "datastore-snapshots"
REMOVALS_PAGE = 4096  # removals a sync stages at a time, while its added files stream by


class Dataset:
    """One version of a dataset in one store."""

    def __init__(self, store: Store, info: VersionInfo, cache: Cache | None = None):
        self.store = store
        self.info = info
        self._lineage = Lineage.of(store)
        self._draft: DraftState | None = None
        self._cache = cache
        self._fs: DsfsFileSystem | None = None

    def __repr__(self) -> str:
        return f"Dataset({self.info.ref}, id={self.id}, state={self.state})"

    # -- identity ------------------------------------------------------------------------------

    id = property(lambda self: self.info.id)
    project = property(lambda self: self.info.project)
    name = property(lambda self: self.info.name)
    version = property(lambda self: self.info.version)
    state = property(lambda self: self.info.state)
    parents = property(lambda self: list(self.info.parents))
    tags = property(lambda self: list(self.info.tags))
    is_final = property(lambda self: self.info.is_final)

    # -- finding and creating ------------------------------------------------------------------

    @classmethod
    def create(cls, project: str, name: str, version: str | None = None, parents: list[str] | None = None,
               tags: list[str] | None = None, description: str = "", store: Store | str | None = None,
               _id: str | None = None) -> Dataset:
        """Create a draft version; parents are ids or references of final versions."""
        catalog.check_labels(project, name, version, tags)
        store = open_store(store, create=True)
        parent_ids = []
        for parent in parents or []:
            info = resolve(store, parent, include_drafts=True)
            if not info.is_final:
                raise InvalidState(f"parent {info.id} ({info.ref}) is a draft; "
                                   f"close it first (`dsfs close --id {info.id}`)")
            parent_ids.append(info.id)
        Lineage.of(store).table(parent_ids)  # a missing or corrupt ancestor fails now, not at close
        dataset_id = _id or uuid.uuid4().hex
        version = catalog.claim_version(store, project, name, version, dataset_id)
        info = VersionInfo(id=dataset_id, project=project, name=name, version=version, parents=parent_ids,
                           tags=list(tags or []), description=description or "", state="draft", created=utc_now())
        try:
            store.write_version(info, exclusive=True)
        except BaseException:
            store.release_version_number(project, name, version)
            raise
        drafts.set_current(store.ref, dataset_id)
        return cls(store, info)

    @classmethod
    def get(cls, ref: str | None = None, *, project: str | None = None, name: str | None = None,
            version: str | None = None, tags: list[str] | None = None, include_drafts: bool = False,
            store: Store | str | None = None, cache: Cache | None = None) -> Dataset:
        """Get a version by id or `project/name[@version]` (latest final version if none given), or a
        snapshot of the plain files at `datastore:NAME/PATH`."""
        if ref and ref.startswith(datastores.PREFIX) and "/" in ref:
            return cls.snapshot(ref).use_cache(cache) if cache else cls.snapshot(ref)
        store = open_store(store)
        return cls(store, resolve(store, ref, project=project, name=name, version=version, tags=tags,
                                  include_drafts=include_drafts), cache)

    @classmethod
    def current(cls, store: Store | str | None = None) -> Dataset:
        """The dataset last created or used on this machine (clearml-data's stateful default)."""
        state = drafts.get_current()
        if not state:
            raise UsageError("no current dataset: pass --id, or create one with `dsfs create`")
        store = open_store(store or state["store"])
        return cls(store, store.read_version(state["id"]))

    def make_current(self) -> None:
        drafts.set_current(self.store.ref, self.id)

    @staticmethod
    def search(project: str | None = None, name: str | None = None, tags: list[str] | None = None,
               ids: list[str] | None = None, store: Store | str | None = None,
               unreadable: dict[str, str] | None = None, **filters) -> list[VersionInfo]:
        """Version records matching all given filters (project and name are globs), oldest first;
        more filters (any_tags, state, since, sort, limit) as dsfs.catalog.search takes them
        (unreadable records are named in `unreadable` if given)."""
        return catalog.search(open_store(store), project, name, tags, ids, unreadable, **filters)

    # -- authoring -----------------------------------------------------------------------------

    def _require_draft(self) -> DraftState:
        """The draft's local state, to read (`_changing` is how a command changes it)."""
        self._require_not_final()
        if self._draft is None:
            self._draft = DraftState.load(self.id, self.store.url)
        return self._draft

    def _require_not_final(self) -> None:
        if self.info.is_final:
            raise InvalidState(f"dataset {self.id} ({self.info.ref}) is {self.state} and cannot change; "
                               f"create a child version with --parents {self.id}")

    @contextmanager
    def _changing(self, what: str):
        """Hold the draft's lock (drafts.DraftLock) for the whole of a command that changes it, and
        give its state as read under the lock: another command may have changed the state, closed
        the draft or deleted it while this one waited."""
        self._require_not_final()
        with drafts.DraftLock(self.id, f"{what} {self.info.ref}"):
            try:
                self.info = self.store.read_version(self.id)
            except DatasetNotFound:
                drafts.discard(self.id)  # and the lock file just made
                raise DatasetNotFound(f"draft {self.id} ({self.info.ref}) was deleted; nothing was changed") from None
            if self.info.is_final:
                drafts.discard(self.id)
                raise InvalidState(f"dataset {self.id} ({self.info.ref}) was closed by another command while "
                                   f"this one waited; nothing was changed")
            self._draft = DraftState.load(self.id, self.store.url)
            try:
                yield self._draft
            except BaseException:
                self._draft.rollback()  # a failed command leaves the draft as its last save
                raise

    def add_files(self, path: str, wildcard: str | list[str] | None = None, recursive: bool = True,
                  dataset_path: str | None = None, follow_symlinks: bool = False) -> int:
        """Add a local file, folder or glob. Folders keep their layout under `dataset_path`.
        Returns the number of files added. Nothing is read until upload. Local names are read by
        the input rules (dsfs.authoring.evolve.scan_folder): files skipped are named on stderr; a symlink in a
        folder is followed only inside it, unless `follow_symlinks`.

        `path` may also be an object or a prefix in a bucket (s3://, gs://, az://...) or a datastore
        path (datastore:NAME/PATH): its objects are copied into the version at upload (unlike
        add_external_files, which leaves them where they are), checked unchanged since now by their
        size and tag; the draft records their URLs, never credentials (dsfs.authoring.sources)."""
        self._require_not_final()
        folder = paths.folder(dataset_path)
        if sources.is_url(path):
            listing = ((paths.join(folder, rel), sources.remote(url, size, tag, mtime_ns))
                       for rel, url, size, tag, mtime_ns in links.list_objects(path, wildcard, recursive))
        else:
            listing = ((paths.join(folder, rel), local) for rel, local in
                       local_files(path, wildcard, recursive, follow_symlinks))

        def conflict(target: str, first: str, second: str) -> Conflict:
            first, second = sources.shown(first), sources.shown(second)
            return Conflict(f"{printable(first)} and {printable(second)} would both be {target!r} in the dataset "
                            f"(names that differ only in their Unicode form are one name); nothing was added")

        with self._changing("add") as draft:
            # streamed from the folder walk into the draft: a million files are never a list here
            count = draft.stage_local(listing, conflict)
            if not count:
                raise UsageError(f"no files match {path!r}" + (f" with wildcard {wildcard!r}" if wildcard else ""))
            draft.save()
        return count

    def add_external_files(self, source_url: str, wildcard: str | list[str] | None = None,
                           dataset_path: str | None = None, recursive: bool = True) -> int:
        """Add objects that stay in their own bucket (s3://, gs://, az://, file://...): a URL of one
        object or of a prefix. Size and tag are recorded now; reads check the object is unchanged.
        The URL is recorded as one this user trusts, so its links are read on this machine
        (dsfs.node.links: other consumers allow them themselves)."""
        count = self._add_links(links.list_objects(source_url, wildcard, recursive), dataset_path,
                                f"{source_url!r}" + (f" with wildcard {wildcard!r}" if wildcard else ""))
        if not source_url.startswith(datastores.PREFIX):  # a datastore's links are allowed anyway
            links.trust(source_url)
        return count

    def _add_links(self, listing, dataset_path: str | None, what: str) -> int:
        self._require_not_final()
        folder = paths.folder(dataset_path)
        # (an object's time past int64's nanoseconds, year 2262, would make the change-set unreadable)
        entries = [Entry(path=paths.join(folder, rel), size=size, mtime_ns=clamp_mtime(mtime_ns), url=url, etag=tag)
                   for rel, url, size, tag, mtime_ns in listing]
        if not entries:
            raise UsageError(f"no objects match {what}")
        with self._changing("add") as draft:
            draft.stage_entries(entries)
            draft.save()
        return len(entries)

    @classmethod
    def snapshot(cls, ref: str) -> Dataset:
        """A version of the plain files at `datastore:NAME/PATH`, as they are now (sizes and tags),
        in the embedded local store. Served like any version, as external files; the same listing
        always gives the same snapshot (its id is the listing's digest), so mounts stay immutable."""
        listing = sorted(links.list_objects(ref))
        if not listing:
            raise UsageError(f"no objects at {ref}")
        key = blake3.blake3(msgpack.packb([(r, u, s, t) for r, u, s, t, _ in listing])).hexdigest()[:32]
        local = datastores.get(datastores.LOCAL).open(create=True)
        try:
            info = local.read_version(key)
            if info.is_final:
                return cls(local, info)
            raise Conflict(f"a snapshot of {ref} is being made by another process; try again")
        except DatasetNotFound:
            pass
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", ref[len(datastores.PREFIX):]).strip("_.") or "snapshot"
        ds = cls.create(SNAPSHOT_PROJECT, name, tags=["snapshot"], store=local,
                        description=f"snapshot of {ref}", _id=key)
        ds._add_links(listing, None, ref)
        ds.finalize()
        return ds

    def remove_files(self, dataset_path: str, recursive: bool = True) -> int:
        """Remove files matching a dataset path or glob: this draft's additions, and files the
        parents have (recorded as removals). Returns the number of files removed."""
        pattern = [dataset_path]
        removed = 0
        with self._changing("remove") as draft:
            staged = chain((path for path, _ in draft.adds()), (entry.path for entry in draft.uploaded()))
            removed += draft.drop([path for path in staged if paths.matches(path, pattern, recursive)])
            gone = [path for path in self._lineage.table(self.info.parents).paths
                    if paths.matches(path, pattern, recursive) and not draft.is_removed(path)]
            draft.stage_removals(gone)
            removed += len(gone)
            if not removed:
                raise UsageError(f"no files in dataset {self.id} match {dataset_path!r}")
            draft.save()
        return removed

    def upload(self, max_workers: int | None = None, show_progress: bool | None = None,
               push_to: str | None = None, executor: Executor | None = None) -> dict:
        """Send the added files' new chunks to the store. Resumable; returns counts. push_to: another
        store (URL or datastore name) the version is pushed to when it is closed (kept in the draft).
        executor: chunk, hash and pack on its workers instead of this process (a ProcessPoolExecutor,
        a Dask client's get_executor(); dsfs.authoring.distributed), max_workers pack writes per task."""
        with self._changing("upload") as draft, close.writer_session(self.store, self.info, "upload") as session:
            if push_to:
                draft.push_to = push_to
            return close.upload(self.store, self.info, draft, session, max_workers, show_progress, executor)

    def finalize(self, auto_upload: bool = True, max_workers: int | None = None,
                 show_progress: bool | None = None, push_to: str | None = None,
                 executor: Executor | None = None, preview: str | None = None) -> dict | None:
        """Close the version: upload what is left (on `executor`'s workers if given, as `upload`),
        write its change-set, then mark it final. Then its previews (dsfs.authoring.previews):
        "auto" file statistics and previews of its first table, image and media files, "stats" the
        statistics only (no sample of the data leaves it), "none" nothing; None takes the project's
        default (`dsfs project set --preview`, dsfs.authoring.projects), "auto" if it sets none.
        Then, if push_to is given (or an upload was given one), push it there with the ancestors it
        needs and return push's counts and "to" (clearml-data's --storage: the version ends up
        there)."""
        if preview is None:
            preview = projects.preview_mode(self.store, self.info.project)[0]
        if preview not in previews.MODES:
            raise UsageError(f"unknown preview mode {preview!r}: use {', '.join(previews.MODES)}")
        if self.info.is_final:
            raise InvalidState(f"dataset {self.id} ({self.info.ref}) is already {self.state}")
        with self._changing("close") as draft:
            push_to = push_to or draft.push_to
            samples = close.close(self.store, self.info, draft, auto_upload, max_workers, show_progress,
                                 executor=executor, preview=preview)
        self._draft = None  # a final version has no draft: do not keep its entries and chunks alive
        if preview == "auto" and samples:
            try:
                # The sample's entries come from one streamed pass over the version: read_file
                # would hold the whole view in memory (an ImageNet of 1.28M files: gigabytes).
                wanted = {path for path, _ in samples}
                entries = {e.path: e for e in self.iter_entries() if e.path in wanted}
                previews.auto_previews(self.store, self.info, samples,
                                       lambda path: self._entry_bytes(entries[path], path))
            except DsfsError as exc:
                warn(f"dataset {self.id} is final, but its previews were not stored: {exc}")
        return {**self.push(push_to, max_workers, show_progress), "to": push_to} if push_to else None

    def publish(self) -> None:
        def published(info: VersionInfo) -> None:
            if info.state == "draft":
                raise InvalidState(f"dataset {self.id} is a draft; close it before publishing")
            if info.state == "published":
                raise InvalidState(f"dataset {self.id} ({info.ref}) is already published")
            info.state = "published"

        self._update_record(published)

    def _update_record(self, change: Callable[[VersionInfo], None]) -> None:
        """Apply `change` to the store's current record of this version, write it back, and hold it.
        Not this object's copy: that may be old (a Dataset kept in a notebook), and writing it would
        undo what other commands changed since (a rename, a publish, another metadata key). Two
        changes in the same few milliseconds can still lose one: records have no conditional write."""
        info = self.store.read_version(self.id)
        change(info)
        self.store.write_version(info)
        self.info = info

    # -- evolution: sync, compare, squash -----------------------------------------------------

    def sync_folder(self, local_path: str, dataset_path: str | None = None,
                    follow_symlinks: bool = False, wildcard: str | list[str] | None = None) -> FolderChanges:
        """Make this draft's content match a local folder: add new and modified files, remove
        files the parents have that the folder no longer has. Returns what changed, counted (the
        draft lists the paths), and what the input rules skipped (also named on stderr)."""
        changes = FolderChanges()
        self._stage_folder_diff(folder_diff(self._lineage.table(self.info.parents), local_path, changes,
                                            dataset_path, follow_symlinks, warn, paths.as_list(wildcard)))
        return changes

    def _stage_folder_diff(self, diff: Iterable[tuple[str, str | None]]) -> None:
        """Stage a folder_diff stream as it comes: its files to add, its removals a page at a time."""
        with self._changing("sync") as draft:
            removals: list[str] = []

            def files():
                for path, local in diff:
                    if local is not None:
                        yield path, os.path.abspath(local)
                        continue
                    removals.append(path)
                    if len(removals) == REMOVALS_PAGE:
                        draft.stage_removals(removals)
                        removals.clear()

            draft.stage_local(files())
            draft.stage_removals(removals)
            draft.save()

    @classmethod
    def sync(cls, folder: str, project: str, name: str, parents: list[str] | None = None,
             tags: list[str] | None = None, dataset_path: str | None = None, close: bool = True,
             allow_empty: bool = False, max_workers: int | None = None, store: Store | str | None = None,
             show_progress: bool | None = None, follow_symlinks: bool = False,
             wildcard: str | list[str] | None = None,
             executor: Executor | None = None) -> tuple[Dataset | None, FolderChanges]:
        """Turn a folder that changes over time into a new version of project/name. Without parents,
        the latest final version of project/name is the parent. An unchanged folder makes no version
        (returns None) unless allow_empty. The folder is read by the input rules of `add_files`;
        wildcard: only the files matching it are synced (the parents' others are kept as they are);
        executor: upload on its workers (as `upload`)."""
        catalog.check_labels(project, name, None, tags)
        store = open_store(store, create=True)
        if parents is None:
            try:
                parents = [resolve(store, project=project, name=name).id]
            except DatasetNotFound:
                parents = []
        parent_ids = [resolve(store, p, include_drafts=True).id for p in parents]
        changes = FolderChanges()
        diff = folder_diff(Lineage.of(store).table(parent_ids), folder, changes, dataset_path, follow_symlinks, warn,
                           paths.as_list(wildcard))
        first = next(diff, None)  # the version is made at the first change, the rest staged as it is found
        if first is None and not allow_empty:
            return None, changes
        ds = cls.create(project, name, parents=parent_ids, tags=tags, store=store)
        try:
            ds._stage_folder_diff(chain([first] if first else [], diff))
        except BaseException:  # a conflict further in the folder, say: no empty draft left behind
            with suppress(DsfsError):
                cls.delete(ds.id, store=store)
            raise
        if close:
            ds.finalize(max_workers=max_workers, show_progress=show_progress, executor=executor)
        return ds, changes

    @staticmethod
    def compare(source: str, target: str, store: Store | str | None = None, cache: Cache | None = None) -> Comparison:
        """Files added, removed and modified from source to target (any two final versions)."""
        store = open_store(store)
        ids = [_final(store, ref, "compared").id for ref in (source, target)]
        return compare_versions(store, cache or Cache(), *ids)

    @staticmethod
    def differences(source: str, target: str, store: Store | str | None = None, cache: Cache | None = None):
        """`compare`'s answer as a stream in path order: (change, path, size in source, size in
        target), change one of added, removed, modified, unchanged (dsfs.authoring.evolve)."""
        store = open_store(store)
        ids = [_final(store, ref, "compared").id for ref in (source, target)]
        return evolve_differences(store, cache or Cache(), *ids)

    @classmethod
    def squash(cls, name: str, ids: list[str], project: str | None = None, version: str | None = None,
               tags: list[str] | None = None, store: Store | str | None = None) -> Dataset:
        """A new flat version (no parents) whose view is `ids` merged in order, made from the chunks
        already stored: no file data moves."""
        store = open_store(store)
        if not ids:
            raise UsageError("name the versions to squash")
        infos = [_final(store, ref, "squashed") for ref in ids]
        sources = Lineage.of(store).ancestors([i.id for i in infos])
        with close.ChangeSpool() as changes:
            # streamed, and checked before a version is claimed
            table = squash_parts(store, Cache(), [i.id for i in infos], "squash of " + ", ".join(i.id for i in infos),
                                 changes)
            ds = cls.create(project or infos[0].project, name, version=version, tags=tags, store=store)
            ds.info.sources = sources
            with close.writer_session(store, ds.info, "squash") as session:
                # the borrowed packs are its sources' until this record is final: a source deleted
                # meanwhile must not let gc take them
                session.announce(sorted(table.packs), verified=False)
                lost = session.confirm()
                if lost:
                    raise CorruptData(f"pack {lost[0].hex()} of the squashed versions is missing from "
                                      f"{store.display_url} (one of them was deleted and gc ran); nothing was squashed")
                close.check_ancestors(store, ds.info, sources, "source")
                close.write_final(store, ds.info, changes, table,
                                  {"added": table.n, "modified": 0, "removed": 0}, 0, [])
        drafts.discard(ds.id)
        return ds

    # -- reading -------------------------------------------------------------------------------

    def _view(self) -> dict[str, Entry]:
        """The merged view; for a draft, what it would be if closed now (pending adds as stubs)."""
        if self.info.is_final:
            return self._lineage.view(self.id)
        draft = self._require_draft()
        view = dict(self._lineage.merged_parents(self.info.parents))
        apply_changes(view, close.changes_against(self._lineage.table(self.info.parents), draft))
        for path, local in draft.adds():
            view[path] = Entry(path=path, size=local_size(local))
        return view

    def list_files(self, dataset_path: str | list[str] | None = None, recursive: bool = True) -> list[str]:
        """Paths of the merged view, sorted, optionally filtered by globs."""
        patterns = [dataset_path] if isinstance(dataset_path, str) else dataset_path
        return sorted(p for p in self._view() if not patterns or paths.matches(p, patterns, recursive))

    def file_entries(self, patterns: list[str] | None = None) -> list[Entry]:
        view = self._view()
        return [view[p] for p in sorted(view) if not patterns or paths.matches(p, patterns)]

    def iter_entries(self, patterns: list[str] | None = None, chunks: bool = True) -> Iterator[Entry]:
        """`file_entries` as a stream, in the same order. A final version's are merged from its
        lineage's change-sets entry by entry (dsfs.lineage.viewindex.merged_entries, with copies of
        the change-sets in the node's cache), so memory stays flat whatever the file count; a draft's
        view is in memory already. chunks=False: a final version's entries come without their chunk
        refs (a listing: a third faster)."""
        if not self.info.is_final:
            yield from self.file_entries(patterns)
            return
        entries = merged_entries(self.store, self.cache, self.id, info=self.info, chunks=chunks)
        if not patterns:
            yield from entries  # a layer fewer per file of a listing
            return
        for entry in entries:
            if paths.matches(entry.path, patterns):
                yield entry

    def _own_changes(self) -> tuple[list[str], list[str], list[str]]:
        """This version's added, modified and removed paths: its own changes (a draft's as they
        would be closed now), told apart by a lookup in the parents' file table, so memory goes
        with the changes, not with the version."""
        parents = self._lineage.table(self.info.parents)
        added: list[str] = []
        modified: list[str] = []
        removed: list[str] = []

        def touched(path: str) -> None:
            (added if parents.find(path) is None else modified).append(path)

        if self.info.is_final:
            changes: Iterable[Entry] = self._lineage.changes(self.id)
        else:
            draft = self._require_draft()
            changes = close.changes_against(parents, draft)
            for path, _ in draft.adds():
                touched(path)
        for entry in changes:
            if entry.removed:
                removed.append(entry.path)
            else:
                touched(entry.path)
        return sorted(added), sorted(modified), sorted(removed)

    def list_added_files(self) -> list[str]:
        return self._own_changes()[0]

    def list_modified_files(self) -> list[str]:
        return self._own_changes()[1]

    def list_removed_files(self) -> list[str]:
        return self._own_changes()[2]

    def read_file(self, dataset_path: str) -> bytes:
        """The bytes of one file of a final version, each chunk verified against its digest: read
        through the node cache (what is missing is fetched with coalesced, retried GETs and kept)."""
        path = paths.normalize(dataset_path)
        if not self.info.is_final:
            raise InvalidState(f"dataset {self.id} is a draft; close it before reading its files")
        entry = self._lineage.view(self.id).get(path)
        if entry is None:
            raise UsageError(f"no file {path!r} in dataset {self.id} ({self.info.ref})")
        return self._entry_bytes(entry, path)

    def _entry_bytes(self, entry: Entry, path: str) -> bytes:
        if entry.url:
            fs, remote = links.checked(entry.url, entry.etag, entry.size, f"{path} of dataset {self.id}")
            return links.read_range(fs, remote, 0, entry.size, entry.url) if entry.size else b""
        reader = ChunkReader(self.store, self.cache)
        try:
            return b"".join(reader.get(entry.chunks, lambda ref: f"{path} of dataset {self.id}"))
        finally:
            reader.close()

    @property
    def fs(self) -> DsfsFileSystem:
        """This final version as a read-only fsspec filesystem (dsfs.filesystem), paths relative
        to its root: `ds.fs.ls("images")`, `pd.read_csv(ds.fs.open("labels.csv"))`."""
        if not self.info.is_final:
            raise InvalidState(f"dataset {self.id} is a draft; close it before reading its files")
        if self._fs is None:
            from dsfs.filesystem import DsfsFileSystem  # fsspec: ~80 ms of every command's start

            cache = self._cache  # None: the node's cache, as for every reader
            self._fs = DsfsFileSystem(store=self.store, dataset=self.id, cache_dir=cache.root if cache else None,
                                      cache_size=cache.budget if cache else None, skip_instance_cache=True)
            self._fs.pins[""] = self.info  # its record is read already
        return self._fs

    def open(self, dataset_path: str, mode: str = "rb"):
        """A file of this final version, open for reading ("rb", or "r" for text): seekable,
        verified, through the node cache; any other mode is PermissionError (EROFS)."""
        return self.fs.open(dataset_path, mode)

    # -- consuming on a node (the cache, views, copies) ---------------------------------------

    @property
    def cache(self) -> Cache:
        if self._cache is None:
            self._cache = Cache()
        return self._cache

    def use_cache(self, cache: Cache) -> Dataset:
        self._cache = cache
        self._fs = None  # made again with this cache
        return self

    def view(self) -> ViewIndex:
        """The flattened view index of this version (built once per node)."""
        return ensure_view(self.store, self.cache, self.id, self.info)

    def download(self, target: str, include: list[str] | None = None, exclude: list[str] | None = None,
                 max_workers: int | None = None, overwrite: bool = False, show_progress: bool | None = None,
                 shard: tuple[int, int] | None = None):
        """Materialize the merged view (or the part matching include/exclude, and of those the
        shard (part, parts): materialize.select) into `target`."""
        view = self.view()
        with transfer(f"download {self.info.ref}", None, show_progress) as progress:
            return materialize.download(self.store, self.cache, view, target, include, exclude,
                                        max_workers or 8, overwrite, progress, shard)

    def get_local_copy(self, max_workers: int | None = None, show_progress: bool | None = None,
                       part: int | None = None, num_parts: int | None = None) -> str:
        """The path of a read-only cached copy (materialized once, reused after). part/num_parts:
        a copy of only the part-th of num_parts even runs of the files in path order (0 first), for
        data-parallel jobs: every node gets the same parts of the same version."""
        if (part is None) != (num_parts is None):
            raise UsageError("pass part and num_parts together (a part is 0 to num_parts - 1)")
        view = self.view()
        with transfer(f"get {self.info.ref}", None, show_progress) as progress:
            if num_parts is not None:
                assert part is not None, "checked above"
                return materialize.get_part(self.store, self.cache, view, part, num_parts, max_workers or 8, progress)
            return materialize.get_copy(self.store, self.cache, view, max_workers or 8, progress)

    def get_mutable_local_copy(self, target_folder: str, overwrite: bool = False,
                               max_workers: int | None = None, show_progress: bool | None = None) -> str:
        """A writable copy in `target_folder` (reflinked from the cached copy where possible)."""
        source = self.get_local_copy(max_workers, show_progress)
        materialize.copy_tree(source, target_folder, overwrite)
        return os.path.abspath(target_folder)

    def verify_dataset_hash(self, local_copy_path: str | None = None, skip_hash: bool = False,
                            executor: Executor | None = None, show_progress: bool | None = None):
        """Compare a folder (default: the cached copy) with the manifest; returns a verify.Report.
        executor: hash the files in tasks on its workers (a ProcessPoolExecutor, a Dask client's
        get_executor(); they must see the folder at the same path); dsfs.node.verify."""
        folder = local_copy_path or materialize.copy_path(self.cache, self.id)
        if not os.path.isdir(folder):
            raise UsageError(f"no folder to verify at {folder}" + ("" if local_copy_path else
                             "; run `dsfs get` first or pass --folder"))
        with transfer(f"verify {self.info.ref}", None, False if skip_hash else show_progress) as progress:
            progress.set_total(int(self.info.stats.get("bytes") or 0), self.info.stats.get("files"))
            return verify_folder(self.view(), folder, size_only=skip_hash, executor=executor, progress=progress)

    def as_mount(self, path_on_compute: str | None = None, name: str | None = None, **options) -> DataReference:
        """A data reference that mounts this version (read-only, lazy) for a job."""
        return DataReference(self, "mount", path_on_compute, name, **options)

    def as_download(self, path_on_compute: str | None = None, name: str | None = None, **options) -> DataReference:
        """A data reference that downloads this version (a private mutable copy) for a job."""
        return DataReference(self, "download", path_on_compute, name, **options)

    def push(self, to: Store | str, max_workers: int | None = None, show_progress: bool | None = None) -> dict:
        """Copy this final version, its ancestors missing at `to` (a datastore name, a URL, or a
        Store) and the packs missing there. Idempotent and resumable; see dsfs.lifecycle.push."""
        return push_version(self.store, self.info, to, max_workers=max_workers, show_progress=show_progress)

    # -- labels (mutable on final versions too) ------------------------------------------------

    def set_metadata(self, metadata: dict, replace: bool = False) -> None:
        def merged(info: VersionInfo) -> None:
            info.metadata = dict(metadata) if replace else {**info.metadata, **metadata}

        self._update_record(merged)

    def set_labels(self, description: str | None = None, tags: list[str] | None = None,
                   metadata: dict | None = None) -> None:
        """Replace the description, the tags and/or the metadata (None: kept) in one write of the
        record; final versions too (labels are not content). Tags follow the label rule."""
        for tag in tags or []:
            paths.label("tag", tag)

        def labelled(info: VersionInfo) -> None:
            if description is not None:
                info.description = description
            if tags is not None:
                info.tags = list(dict.fromkeys(tags))
            if metadata is not None:
                info.metadata = dict(metadata)

        self._update_record(labelled)

    def get_metadata(self, key: str | None = None):
        if key is None:
            return dict(self.info.metadata)
        if key not in self.info.metadata:
            raise UsageError(f"dataset {self.id} has no metadata key {key!r}")
        return self.info.metadata[key]

    # -- previews and statistics (dsfs.authoring.previews; allowed on final versions too) ------

    def get_logger(self) -> previews.PreviewLogger:
        """ClearML's dataset logger: report_table, report_histogram, report_scalar, report_text,
        report_image, report_media; each report is kept as one of this version's previews."""
        return previews.PreviewLogger(self.store, self.info)

    def previews(self) -> list[dict]:
        """This version's previews (dicts with a `kind`), oldest first; ones that cannot be read are
        left out with a warning."""
        items, notes = previews.read_items(self.store, self.info)
        for note in notes:
            warn(note)
        return items

    def preview_blob(self, name: str) -> bytes:
        """The bytes of a preview's image or media (`item["blob"]`), checked against their digest."""
        return previews.blob(self.store, self.info, name)

    def statistics(self, recompute: bool = False) -> dict:
        """Files and bytes by extension and top folder, a size histogram and the changes against the
        parents, from the version's file table (no file read); stored at close, or now if missing or
        `recompute`."""
        found = None if recompute else previews.statistics(self.store, self.info)
        if found is not None:
            return found
        if not self.info.is_final:
            raise InvalidState(f"dataset {self.id} is a draft; its statistics are made when it is closed")
        counts = {k: self.info.stats[k] for k in ("added", "modified", "removed") if k in self.info.stats}
        # streamed from the lineage's change-sets: flat memory whatever the file count
        files = ((e.path, e.size) for e in self.iter_entries(chunks=False))
        return previews.write_statistics(self.store, self.info, files, counts)

    @staticmethod
    def rename(new_name: str, project: str, name: str, store: Store | str | None = None) -> int:
        """Rename every version of project/name. Returns the number of versions renamed."""
        return catalog.relabel(open_store(store), project, name, project, new_name)

    @staticmethod
    def move_to_project(new_project: str, project: str, name: str, store: Store | str | None = None) -> int:
        """Move every version of project/name to another project."""
        return catalog.relabel(open_store(store), project, name, new_project, name)

    @staticmethod
    def delete(ref: str, force: bool = False, store: Store | str | None = None) -> VersionInfo:
        """Delete a version's records, never its packs (dsfs.catalog.delete; `gc` reclaims space).
        Refuses while other versions inherit from it or borrow its packs, unless force."""
        deleted = catalog.delete(open_store(store), ref, force)
        drafts.forget_current(deleted.id)
        return deleted

    @staticmethod
    def dependents(ref: str, store: Store | str | None = None) -> tuple[list[VersionInfo], list[VersionInfo]]:
        """(descendants that become unreadable if `ref` is deleted, squashes that borrow its packs)."""
        return catalog.dependents(open_store(store), ref)


def _final(store: Store, ref: str, what: str) -> VersionInfo:
    """The final version `ref` names; a draft is refused, saying only final versions can be `what`."""
    info = resolve(store, ref, include_drafts=True)
    if not info.is_final:
        raise InvalidState(f"dataset {info.id} ({info.ref}) is a draft; only final versions can be {what}")
    return info

"""ClearML's `clearml.Dataset` on dsfs: the same methods, keyword names, defaults and semantics, so a
ClearML Data script runs with one changed line, `from dsfs.clearml import Dataset`.

Every method delegates to dsfs.Dataset (the `dataset` attribute of an instance), which keeps its own
API. Where ClearML's words mean something else here:

- ClearML's server and file server are one dsfs store: the default store (DSFS_STORE, or the
  embedded local store), or `output_uri`/`output_url` (s3://, gs://, az://, file://, a folder, a
  `datastore:NAME`). `create(output_uri=X)` makes the version in X. `upload(output_url=Y)` and
  `squash(output_url=Y)` leave the final version in Y too, with the ancestors it needs (copied
  there as `dsfs push` does, when the version is final).
- A Task does not exist in dsfs: `use_current_task=True` is ignored with a warning. An `alias`
  prints the dataset's id and exports it as `DSFS_DATASET_ID_<alias>` for the run; with
  `overridable=True`, that variable set beforehand (by a scheduler, say) picks the dataset instead.
- Versions are semantic versions; ClearML's two-part ones ("1.0") are accepted as they are.
- Metadata is JSON: `set_metadata(value, metadata_name)` stores value (anything JSON can hold;
  a pandas DataFrame as its records) under metadata_name.
- Offline mode (`set_offline(True)`, DSFS_OFFLINE=1 or CLEARML_OFFLINE_MODE=1) makes datasets in a
  session store, a folder on this machine whose path is printed; there everything works (finalize
  too), and `import_offline_session(folder, upload, finalize)` pushes its final versions to the
  store. A session's draft that is not finalized stays there (dsfs moves final versions).
- `get_logger()` keeps each report (tables, histograms, scalars, text, images, media) as a preview
  of the version in the store (dsfs.authoring.previews), shown by `dsfs preview`.
- `compression`, `chunk_size` and `retries` of `upload` have no meaning in dsfs (chunks are cut by
  content, compressed per chunk, and retried by the store layer): ignored, with a warning if set.

Errors are dsfs's (dsfs.errors, one line each), never a TypeError for a keyword ClearML accepts.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from dsfs import catalog, paths, settings
from dsfs.authoring.localfiles import warn
from dsfs.catalog import open_store, parse_semver
from dsfs.dataset import Dataset as _Dataset
from dsfs.errors import DatasetNotFound, InvalidState, UsageError
from dsfs.model import VersionInfo

ALIAS_PREFIX = "DSFS_DATASET_ID_"


OFFLINE_VARIABLES = ("DSFS_OFFLINE", "CLEARML_OFFLINE_MODE")
_offline = False  # Dataset.set_offline
_session: str | None = None  # this process's offline session folder


def _offline_store() -> str | None:
    """In offline mode, the URL of this process's session store (made and announced on first use,
    as ClearML prints its offline session's path); otherwise None (the default store)."""
    global _session
    if not Dataset.is_offline():
        return None
    if _session is None:
        _session = os.path.join(settings.data_dir(), "offline", uuid.uuid4().hex)
        os.makedirs(os.path.join(_session, "store"), mode=0o700)
        print(f"dsfs: offline session stored in {_session}", flush=True)
    return f"file://{_session}/store"


def _folder(dataset_path: str | None) -> str | None:
    """ClearML writes dataset folders with a leading and trailing '/' ("/my_dataset/new_folder/")."""
    return dataset_path.strip("/") or None if dataset_path else None


def _ids(parents: Iterable[str | Dataset | _Dataset] | None) -> list[str]:
    return [p.id if isinstance(p, (Dataset, _Dataset)) else p for p in parents or []]


def _newest(found: list[VersionInfo]) -> VersionInfo | None:
    return max(found, key=lambda v: (v.created, parse_semver(v.version) or parse_semver("0.0.0")), default=None)


class Dataset:
    """A dataset version, as ClearML's SDK shows one. `dataset` is the dsfs.Dataset behind it."""

    def __init__(self, dataset: _Dataset):
        self.dataset = dataset

    def __repr__(self) -> str:
        return f"clearml-compatible {self.dataset!r}"

    id = property(lambda self: self.dataset.id)
    name = property(lambda self: self.dataset.name)
    project = property(lambda self: self.dataset.project)
    version = property(lambda self: self.dataset.version)
    tags = property(lambda self: self.dataset.tags)

    def is_final(self) -> bool:
        """Closed (ClearML: completed) or published."""
        return self.dataset.is_final

    def is_dirty(self) -> bool:
        """Files added and not uploaded yet."""
        return not self.dataset.is_final and self.dataset._require_draft().adds_count > 0

    # -- finding and creating ------------------------------------------------------------------

    @classmethod
    def create(cls, dataset_name: str | None = None, dataset_project: str | None = None,
               dataset_tags: str | Sequence[str] | None = None,
               parent_datasets: Sequence[str | Dataset] | None = None, use_current_task: bool = False,
               dataset_version: str | None = None, output_uri: str | None = None,
               description: str | None = None) -> Dataset:
        """A new draft version. Name and project default to the first parent's; without a version,
        the next patch number of project/name (1.0.0 for the first)."""
        if use_current_task:
            warn("use_current_task: dsfs has no tasks; ignored")
        store = open_store(output_uri or _offline_store(), create=True)
        parent_ids = _ids(parent_datasets)
        if parent_ids and not (dataset_name and dataset_project):
            first = _Dataset.get(parent_ids[0], include_drafts=True, store=store)
            dataset_name, dataset_project = dataset_name or first.name, dataset_project or first.project
        if not dataset_name or not dataset_project:
            raise UsageError("Dataset.create needs dataset_name and dataset_project (or parent_datasets)")
        return cls(_Dataset.create(dataset_project, dataset_name, version=dataset_version, parents=parent_ids,
                                   tags=paths.as_list(dataset_tags), description=description or "", store=store))

    @classmethod
    def get(cls, dataset_id: str | None = None, dataset_project: str | None = None,
            dataset_name: str | None = None, dataset_tags: str | Sequence[str] | None = None,
            only_completed: bool = False, only_published: bool = False, include_archived: bool = False,
            auto_create: bool = False, writable_copy: bool = False, dataset_version: str | None = None,
            alias: str | None = None, overridable: bool = False, shallow_search: bool = False,
            **kwargs: Any) -> Dataset:
        """The most recent version matching every given attribute (drafts too unless only_completed;
        only published ones if only_published). auto_create: make a draft of project/name with the
        tags when none matches. writable_copy: a new draft whose parent is the one found. alias:
        see the module's docstring. include_archived and shallow_search have no meaning in dsfs."""
        for unknown in sorted(set(kwargs) - {"store"}):
            warn(f"Dataset.get({unknown}=...): not a dsfs argument; ignored")
        store = open_store(kwargs.get("store") or _offline_store())
        if alias and overridable and os.environ.get(ALIAS_PREFIX + alias):
            dataset_id = os.environ[ALIAS_PREFIX + alias]
        found = cls._find(store, dataset_id, dataset_project, dataset_name, paths.as_list(dataset_tags),
                          dataset_version, only_completed, only_published)
        if found is None:
            if not auto_create:
                what = dataset_id or "/".join(p for p in (dataset_project, dataset_name) if p) or "any dataset"
                raise DatasetNotFound(f"no dataset matches {what}"
                                      + (f"@{dataset_version}" if dataset_version else "")
                                      + (f" with tags {paths.as_list(dataset_tags)}" if dataset_tags else "")
                                      + f" in {store.display_url}")
            ds = cls.create(dataset_name, dataset_project, dataset_tags, dataset_version=dataset_version,
                            output_uri=store.url)
        else:
            ds = cls(_Dataset(store, found))
        if writable_copy:
            ds = cls.create(ds.name, ds.project, ds.tags, parent_datasets=[ds.id], output_uri=store.url)
        if alias:
            os.environ[ALIAS_PREFIX + alias] = ds.id
            print(f"dsfs: dataset alias {alias!r} = {ds.id} ({ds.dataset.info.ref}); "
                  f"{ALIAS_PREFIX}{alias}={ds.id}", flush=True)
        return ds

    @staticmethod
    def _find(store, dataset_id, project, name, tags, version, only_completed, only_published) -> VersionInfo | None:
        if dataset_id:
            try:
                info = store.read_version(dataset_id)
            except DatasetNotFound:
                return None
            candidates = [info]
        else:
            candidates = [v for v in catalog.search(store, project, name, tags)
                          if not version or v.version == version]
        return _newest([v for v in candidates
                        if (v.state == "published" if only_published else v.is_final or not only_completed)])

    @classmethod
    def list_datasets(cls, dataset_project: str | None = None, partial_name: str | None = None,
                      tags: str | Sequence[str] | None = None, ids: Sequence[str] | None = None,
                      only_completed: bool = True, recursive_project_search: bool = True,
                      include_archived: bool = True, store: str | None = None) -> list[dict]:
        """Versions as ClearML lists them: dicts of name, project, id, tags, version, created. A
        project also matches its subprojects ("a" finds "a/b") if recursive_project_search."""
        found = []
        for v in catalog.search(open_store(store or _offline_store()), None, None, paths.as_list(tags),
                                list(ids) if ids else None):
            if dataset_project and not (v.project == dataset_project or recursive_project_search
                                        and v.project.startswith(dataset_project.rstrip("/") + "/")):
                continue
            if partial_name and partial_name.lower() not in v.name.lower():
                continue
            if only_completed and not v.is_final:
                continue
            found.append({"name": v.name, "project": v.project, "id": v.id, "tags": list(v.tags),
                          "version": v.version, "created": v.created, "state": v.state})
        return found

    # -- offline mode --------------------------------------------------------------------------

    @classmethod
    def set_offline(cls, offline_mode: bool = False) -> None:
        """Offline mode: datasets are made in a session store on this machine (a folder; nothing
        reaches the network) until import_offline_session copies them to the real store. Also
        turned on by DSFS_OFFLINE=1 or ClearML's CLEARML_OFFLINE_MODE=1."""
        global _offline, _session
        _offline, _session = offline_mode, None  # a new session at the next dataset made offline

    @classmethod
    def is_offline(cls) -> bool:
        return _offline or any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in OFFLINE_VARIABLES)

    @classmethod
    def import_offline_session(cls, session_folder_zip: str, upload: bool = True, finalize: bool = False) -> list[str]:
        """Copy the versions of an offline session (its folder, as printed when it began) to the
        store (the default one, or DSFS_STORE): its drafts uploaded if `upload` and closed if
        `finalize` first, then every final version pushed with the ancestors it needs (packs only
        once: dsfs push). A draft left open stays in the session: dsfs moves final versions between
        stores. Returns the ids copied."""
        folder = os.path.abspath(os.path.expanduser(session_folder_zip))
        session = os.path.join(folder, "store")
        if not os.path.isdir(session):
            raise UsageError(f"{folder} is not an offline session (no store in it)")
        copied, left = [], []
        for info in catalog.search(open_store(f"file://{session}")):
            ds = _Dataset.get(info.id, include_drafts=True, store=f"file://{session}")
            if not ds.is_final:
                if upload:
                    ds.upload()
                if not finalize:
                    left.append(info.id)
                    continue
                ds.finalize()
            ds.push(open_store(None, create=True))
            copied.append(info.id)
        if left:
            warn(f"{len(left)} draft(s) of the offline session were not copied (dsfs copies final versions; "
                 f"pass finalize=True): {', '.join(left)}")
        return copied

    # -- authoring -----------------------------------------------------------------------------

    def add_files(self, path: str, wildcard: str | Sequence[str] | None = None, local_base_folder: str | None = None,
                  dataset_path: str | None = None, recursive: bool = True, verbose: bool = False,
                  max_workers: int | None = None) -> int:
        """Add a local file or folder (files matching `wildcard` if given) under dataset_path.
        local_base_folder: ClearML's older name for the folder `path` is relative to."""
        if local_base_folder and not os.path.isabs(path):
            path = os.path.join(local_base_folder, path)
        wildcards = [os.path.basename(w) for w in paths.as_list(wildcard)] or None  # ClearML matches names
        return self.dataset.add_files(path, wildcards, recursive, _folder(dataset_path))

    def add_external_files(self, source_url: str | Sequence[str], wildcard: str | Sequence[str] | None = None,
                           dataset_path: str | None = None, recursive: bool = True, verbose: bool = False,
                           max_workers: int | None = None) -> int:
        """Add objects that stay where they are: a URL or a list of URLs (of objects or prefixes)."""
        urls = paths.as_list(source_url)
        wildcards = paths.as_list(wildcard) or None
        return sum(self.dataset.add_external_files(url, wildcards, _folder(dataset_path), recursive) for url in urls)

    def remove_files(self, dataset_path: str | None = None, recursive: bool = True, verbose: bool = False) -> int:
        """Remove files by dataset path or wildcard, or links by their URL (s3://bucket/file)."""
        if not dataset_path:
            raise UsageError("remove_files needs dataset_path (a path, a wildcard or a link's URL)")
        if "://" not in dataset_path:
            return self.dataset.remove_files(dataset_path.lstrip("/"), recursive)
        linked = [e.path for e in self.dataset.iter_entries(chunks=False)
                  if e.url and paths.glob_match(e.url, dataset_path)]
        if not linked:
            raise UsageError(f"no link in dataset {self.id} has the URL {dataset_path!r}")
        return sum(self.dataset.remove_files(glob.escape(path), recursive=False) for path in linked)

    def sync_folder(self, local_path: str, dataset_path: str | None = None,
                    verbose: bool = False) -> tuple[int, int, int]:
        """Make the draft match a local folder; returns (removed, added, modified) counts."""
        changes = self.dataset.sync_folder(local_path, _folder(dataset_path))
        return changes.removed, changes.added, changes.modified

    def upload(self, show_progress: bool = True, verbose: bool = False, output_url: str | None = None,
               compression: Any = None, chunk_size: int | None = None, max_workers: int | None = None,
               retries: int = 3) -> None:
        """Send the added files' new chunks to the store. output_url: the final version is also
        copied there (with the ancestors it needs) when it is finalized."""
        for name, value in (("compression", compression), ("chunk_size", chunk_size)):
            if value is not None:
                warn(f"upload({name}=...): dsfs cuts chunks by content and compresses each; ignored")
        self.dataset.upload(max_workers=max_workers, show_progress=show_progress, push_to=output_url)

    def finalize(self, verbose: bool = False, raise_on_error: bool = True, auto_upload: bool = False) -> bool:
        """Close the version. As in ClearML, files must have been uploaded first unless auto_upload."""
        if self.is_dirty() and not auto_upload:
            if raise_on_error:
                raise InvalidState(f"dataset {self.id} has files not uploaded: call upload() first, "
                                   f"or finalize(auto_upload=True)")
            return False
        self.dataset.finalize(auto_upload=True)
        return True

    def publish(self, raise_on_error: bool = True) -> bool:
        try:
            self.dataset.publish()
        except InvalidState:
            if raise_on_error:
                raise
            return False
        return True

    # -- reading -------------------------------------------------------------------------------

    def _of(self, dataset_id: str | None) -> _Dataset:
        return self.dataset if not dataset_id else _Dataset.get(dataset_id, include_drafts=True,
                                                                store=self.dataset.store)

    def list_files(self, dataset_path: str | None = None, recursive: bool = True,
                   dataset_id: str | None = None) -> list[str]:
        return self._of(dataset_id).list_files(dataset_path.lstrip("/") if dataset_path else None, recursive)

    def list_added_files(self, dataset_id: str | None = None) -> list[str]:
        return self._of(dataset_id).list_added_files()

    def list_modified_files(self, dataset_id: str | None = None) -> list[str]:
        return self._of(dataset_id).list_modified_files()

    def list_removed_files(self, dataset_id: str | None = None) -> list[str]:
        return self._of(dataset_id).list_removed_files()

    def get_local_copy(self, use_soft_links: bool | None = None, part: int | None = None,
                       num_parts: int | None = None, raise_on_error: bool = True,
                       max_workers: int | None = None) -> str:
        """The path of a read-only cached copy; part/num_parts: of that share of the files only (an
        even run of them in path order, part 0 first: ClearML's parts are its zip chunks)."""
        return self.dataset.get_local_copy(max_workers, part=part, num_parts=num_parts)

    def get_mutable_local_copy(self, target_folder: str, overwrite: bool = False, part: int | None = None,
                               num_parts: int | None = None, raise_on_error: bool = True,
                               max_workers: int | None = None) -> str:
        """A writable copy in target_folder. overwrite: the folder is emptied first (ClearML deletes
        it), so no file of another content stays beside the dataset's. part/num_parts: only that
        share of the files (as get_local_copy), downloaded straight into the folder."""
        if (part is None) != (num_parts is None):
            raise UsageError("pass part and num_parts together (a part is 0 to num_parts - 1)")
        target = os.path.abspath(os.path.expanduser(target_folder))
        if num_parts is not None:
            assert part is not None, "checked above"
            if overwrite and os.path.isdir(target):
                shutil.rmtree(target)
            self.dataset.download(target, max_workers=max_workers, shard=(part, num_parts))
            return target
        if overwrite and os.path.isdir(target) and os.listdir(target):
            self.dataset.get_local_copy(max_workers)  # fetched before anything is deleted
            shutil.rmtree(target)
        return self.dataset.get_mutable_local_copy(target, overwrite, max_workers)

    def verify_dataset_hash(self, local_copy_path: str | None = None, skip_hash: bool = False,
                            verbose: bool = False) -> list[str]:
        """The files of a local copy that differ from the version: missing, changed or extra."""
        report = self.dataset.verify_dataset_hash(local_copy_path, skip_hash)
        return sorted({*report.missing, *report.different, *report.extra, *report.stale})

    def get_dependency_graph(self) -> dict[str, list[str]]:
        """id -> parent ids, for this version and every ancestor."""
        graph, todo = {}, [self.id]
        while todo:
            dataset_id = todo.pop()
            if dataset_id not in graph:
                graph[dataset_id] = list(self.dataset.store.read_version(dataset_id).parents)
                todo += graph[dataset_id]
        return graph

    def get_default_storage(self) -> str:
        return self.dataset.store.display_url

    # -- labels --------------------------------------------------------------------------------

    def set_metadata(self, metadata: Any, metadata_name: str = "metadata", ui_visible: bool = True) -> None:
        """Store `metadata` under metadata_name (JSON; a pandas DataFrame as its records)."""
        if hasattr(metadata, "to_dict"):
            metadata = metadata.to_dict(orient="records")
        try:
            json.dumps(metadata)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"metadata {metadata_name!r} is not JSON ({exc}); pass dicts, lists, strings "
                             f"and numbers") from None
        self.dataset.set_metadata({metadata_name: metadata})

    def get_metadata(self, metadata_name: str = "metadata") -> Any:
        """The metadata stored under metadata_name, or None."""
        return self.dataset.info.metadata.get(metadata_name)

    def get_logger(self):
        """ClearML's dataset logger: each report is kept as a preview of this version
        (dsfs.authoring.previews; `dsfs preview` shows them)."""
        return self.dataset.get_logger()

    @classmethod
    def rename(cls, new_dataset_name: str, dataset_project: str, dataset_name: str) -> int:
        """Rename every version of dataset_project/dataset_name."""
        return _Dataset.rename(new_dataset_name, dataset_project, dataset_name, store=_offline_store())

    @classmethod
    def move_to_project(cls, new_dataset_project: str, dataset_project: str, dataset_name: str) -> int:
        """Move every version of dataset_project/dataset_name to new_dataset_project."""
        return _Dataset.move_to_project(new_dataset_project, dataset_project, dataset_name, store=_offline_store())

    @classmethod
    def delete(cls, dataset_id: str | None = None, dataset_project: str | None = None,
               dataset_name: str | None = None, force: bool = False, dataset_version: str | None = None,
               entire_dataset: bool = False, shallow_search: bool = False, delete_files: bool = True,
               delete_external_files: bool = False) -> list[str]:
        """Delete a version (by id, or the one version of project/name[/version]); several matching
        versions are all deleted only with entire_dataset=True and force=True, newest first. A parent
        needs force (its children lose their data). Returns the deleted ids. Records only: `dsfs gc`
        reclaims the packs no version uses (delete_files)."""
        store = open_store(_offline_store())
        if dataset_id:
            return [_Dataset.delete(dataset_id, force, store).id]
        if not dataset_project and not dataset_name:
            raise UsageError("Dataset.delete needs dataset_id, or dataset_project and/or dataset_name")
        found = [v for v in catalog.search(store, dataset_project, dataset_name)
                 if not dataset_version or v.version == dataset_version]
        if not found:
            raise DatasetNotFound(f"no dataset {dataset_project}/{dataset_name} in {store.display_url}")
        if len(found) > 1 and not (entire_dataset and force):
            raise UsageError(f"{len(found)} versions match {dataset_project}/{dataset_name}; pass "
                             f"entire_dataset=True and force=True to delete them all, or dataset_version")
        ordered = sorted(found, key=lambda v: v.created, reverse=True)  # children before their parents
        return [_Dataset.delete(v.id, force, store).id for v in ordered]

    @classmethod
    def squash(cls, dataset_name: str, dataset_ids: Sequence[str | Dataset] | None = None,
               dataset_project_name_pairs: Sequence[tuple[str, str]] | None = None,
               output_url: str | None = None) -> Dataset:
        """One flat version of the given versions merged in order (by id, or the latest final
        version of each (project, name) pair); no file bytes move. output_url: also copied there."""
        ids = _ids(dataset_ids) + [f"{project}/{name}" for project, name in dataset_project_name_pairs or []]
        if not ids:
            raise UsageError("Dataset.squash needs dataset_ids or dataset_project_name_pairs")
        squashed = cls(_Dataset.squash(dataset_name, ids, store=_offline_store()))
        if output_url:
            squashed.dataset.push(output_url)
        return squashed


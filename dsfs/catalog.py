"""The catalog: finding versions and changing what they are called, over one store.

Resolving `project/name[@version]` or an id to a version record, searching, claiming version
numbers, renaming and moving, deleting a version and naming what depends on it. The `Dataset`
facade (dsfs.dataset) and the mount daemon call these; nothing here reads file contents.
"""

from __future__ import annotations

import datetime
import json

import semver

from dsfs import paths
from dsfs.authoring.drafts import DraftState
from dsfs.errors import Conflict, CorruptData, DatasetInUse, DatasetNotFound, UsageError
from dsfs.model import ID_RE, VersionInfo
from dsfs.node import links
from dsfs.store import datastores
from dsfs.store.layout import Store


def open_store(store: Store | str | None = None, create: bool = False) -> Store:
    """A Store from a Store, a URL, `datastore:NAME`, or None ($DSFS_STORE, else $DSFS_DATASTORE,
    else the default datastore, else the embedded local store): see dsfs.store.datastores."""
    if not isinstance(store, Store):
        store = datastores.open_store(store, create=create)
    links.allow_store(store.url)  # links into the store being read are its own (dsfs.node.links)
    return store


def parse_semver(text: str) -> semver.Version | None:
    """A version number: semantic, or ClearML's two-part kind ("1.0", compared as 1.0.0)."""
    try:
        return semver.Version.parse(text, optional_minor_and_patch=True)
    except (ValueError, TypeError):
        return None


def resolve(store: Store, ref: str | None = None, *, project: str | None = None, name: str | None = None,
            version: str | None = None, tags: list[str] | None = None, include_drafts: bool = False) -> VersionInfo:
    """Find one version by id, by `project/name[@version]`, or by the keyword parts."""
    if ref:
        if ID_RE.match(ref):
            return store.read_version(ref)
        base, _, at_version = ref.partition("@")
        if "/" not in base:
            raise DatasetNotFound(f"{ref!r} is neither a dataset id (32 hex) nor project/name[@version]")
        project, name = base.rsplit("/", 1)
        version = at_version or version
    if not (project and name):
        raise UsageError("name a dataset: an id, project/name[@version], or --project and --name")
    best = _resolve_by_claims(store, project, name, version, tags, include_drafts)
    if best is not None:
        return best
    # No claim led to it. Claims are made before any record, so this is a rare answer ("not
    # found", or a record whose claim was lost); the catalog says which.
    unreadable: dict[str, str] = {}
    candidates = [v for v in store.list_versions(unreadable)
                  if v.project == project and v.name == name
                  and (include_drafts or version or v.is_final)
                  and (not version or v.version == version)
                  and all(t in v.tags for t in tags or [])]
    best = max(candidates, key=lambda v: (parse_semver(v.version) or semver.Version(0), v.created), default=None)
    if unreadable:
        _refuse_unreadable(store, project, name, version, best, unreadable)
    if best is None:
        what = f"{project}/{name}" + (f"@{version}" if version else "") + (f" with tags {tags}" if tags else "")
        final = "" if version or include_drafts else "final "
        raise DatasetNotFound(f"no {final}dataset {what} in {store.display_url}")
    return best


def _resolve_by_claims(store: Store, project: str, name: str, version: str | None, tags: list[str] | None,
                       include_drafts: bool) -> VersionInfo | None:
    """project/name[@version] in a few requests, whatever the size of the store: the version
    numbers claimed under `names/` (one LIST; or none with @version), highest first, each claim's
    holder and its record (two GETs), until one matches. A claim is only a pointer: the record
    must still carry that project, name and number (a rename moves claims after the records).
    A record that cannot be read may be the version asked for, so it is refused (CorruptData),
    never skipped for an older one."""
    numbers = [version] if version else store.claimed_version_numbers(project, name)
    ranked: dict[semver.Version, list[str]] = {}
    for number in numbers:
        ranked.setdefault(parse_semver(number) or semver.Version(0), []).append(number)
    for rank in sorted(ranked, reverse=True):
        found = []
        for number in ranked[rank]:  # numbers that compare equal ("1.0", "1.0.0"): the newest wins
            holder = store.version_number_holder(project, name, number)
            if holder is None:
                continue
            try:
                info = store.read_version(holder)
            except DatasetNotFound:  # a claim left by a crash or a deleted version
                continue
            except CorruptData as exc:
                raise CorruptData(f"{project}/{name}@{number}: {exc}. It may be the version asked for, "
                                  f"so no other one is used instead: run `dsfs check`, or name another "
                                  f"version (@VERSION) or id") from None
            if (info.project, info.name, info.version) == (project, name, number) \
                    and (include_drafts or version or info.is_final) and all(t in info.tags for t in tags or []):
                found.append(info)
        if found:
            return max(found, key=lambda v: v.created)
    return None


def _refuse_unreadable(store: Store, project: str, name: str, version: str | None, best: VersionInfo | None,
                       unreadable: dict[str, str]) -> None:
    """A record that exists but cannot be read may be the very version asked for (the number asked
    for, or one newer than the best readable answer): answering with another version would silently
    roll the reader back, so refuse (CorruptData) naming it. Which records are project/name's is
    told by the version-number claims, which hold their ids (store.claim_version_number); a record
    unreadable is rare, so the claims are read only then."""
    floor = parse_semver(best.version) if best is not None else None
    for number in store.claimed_version_numbers(project, name):
        if version and number != version:
            continue
        if not version and floor is not None and (parse_semver(number) or semver.Version(0)) <= floor:
            continue
        holder = store.version_number_holder(project, name, number)
        if holder in unreadable:
            raise CorruptData(f"{project}/{name}@{number}: {unreadable[holder]}. It may be the version asked for, "
                              f"so no other one is used instead: run `dsfs check`, or name another version "
                              f"(@VERSION) or id")


def check_labels(project: str, name: str, version: str | None, tags) -> None:
    """The label rule (dsfs.paths.label) for a new version's project, name, version and tags."""
    paths.label("project", project)
    paths.label("name", name)
    if version is not None:
        paths.label("version", version)
        if parse_semver(version) is None:
            raise UsageError(f"invalid version {version!r}: use semantic versioning, e.g. 1.2.0")
    for tag in tags or []:
        paths.label("tag", tag)


def claim_version(store: Store, project: str, name: str, version: str | None, dataset_id: str) -> str:
    if version is not None:
        if not store.claim_version_number(project, name, version, dataset_id):
            raise Conflict(f"{project}/{name}@{version} already exists; choose another --version")
        return version
    for _ in range(100):  # another author may claim the number between listing and claiming
        taken = [v for v in map(parse_semver, store.claimed_version_numbers(project, name)) if v]
        candidate = str(max(taken).bump_patch()) if taken else "1.0.0"
        if store.claim_version_number(project, name, candidate, dataset_id):
            return candidate
    raise Conflict(f"could not claim a version number for {project}/{name}: too many concurrent authors")


def _name_matches(name: str, wanted: str) -> bool:
    """A name filter: a glob (paths.glob_match), or without wildcards a part of the name, any case
    (clearml-data's `search --name` takes a partial name)."""
    if paths.is_glob(wanted):
        return paths.glob_match(name, wanted)
    return wanted.casefold() in name.casefold()


def versions_of(store: Store, project: str, name: str, unreadable: dict[str, str] | None = None) -> list[VersionInfo]:
    """Every version of project/name (drafts too), by version number: read through its version
    number claims (one LIST, then a claim and a record each), so the cost is that dataset's, not the
    store's. A record that cannot be read is left out and put in `unreadable` ({id: error})."""
    found = []
    for number in store.claimed_version_numbers(project, name):
        holder = store.version_number_holder(project, name, number)
        if holder is None:
            continue
        try:
            info = store.read_version(holder)
        except DatasetNotFound:
            continue
        except CorruptData as exc:
            if unreadable is not None:
                unreadable[holder] = str(exc)
            continue
        if (info.project, info.name, info.version) == (project, name, number):
            found.append(info)
    return sorted(found, key=lambda v: (parse_semver(v.version) or semver.Version(0), v.created))


SORTS = ("version", "date")
STATES = ("draft", "final", "published")  # final: closed, published or not


def parse_since(text: str) -> datetime.datetime:
    """A `--since` moment: an ISO 8601 date or date and time; without a zone it is UTC."""
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"invalid date {text!r}: use ISO 8601, e.g. 2026-11-01 or 2026-11-01T12:00") from None
    return when if when.tzinfo else when.replace(tzinfo=datetime.UTC)


def _created(info: VersionInfo) -> datetime.datetime:
    try:
        when = datetime.datetime.fromisoformat(info.created)
    except ValueError:
        return datetime.datetime.min.replace(tzinfo=datetime.UTC)
    return when if when.tzinfo else when.replace(tzinfo=datetime.UTC)


def _hint(project: str | None, tags: list[str] | None, ids: list[str] | None):
    """A test on a record's raw bytes that only records which cannot match fail: each literal the
    filters require (a project without wildcards, every tag, one of the ids) must appear in the
    bytes as json.dumps writes it. A record written with other escapes (\\u) is always parsed."""
    literals = [json.dumps(t).encode() for t in tags or []]
    if project and not paths.is_glob(project):
        literals.append(json.dumps(project).encode())
    choices = [json.dumps(i).encode() for i in ids or []]
    if not literals and not choices:
        return None

    def hint(raw: bytes) -> bool:
        return b"\\u" in raw or (all(x in raw for x in literals) and (not choices or any(c in raw for c in choices)))

    return hint


def search(store: Store, project: str | None = None, name: str | None = None, tags: list[str] | None = None,
           ids: list[str] | None = None, unreadable: dict[str, str] | None = None, *,
           any_tags: list[str] | None = None, state: str | None = None, since: datetime.datetime | None = None,
           sort: str = "version", limit: int | None = None) -> list[VersionInfo]:
    """Version records matching all given filters: project and name are globs (a name without
    wildcards matches as a part), `tags` must all be there, one of `any_tags` must be, `state`
    draft, final (published or not) or published, created at or after `since`. Sorted by project,
    name and version number, oldest first (sort="version"), or newest first (sort="date"); at most
    `limit`. Records that exist but cannot be read are left out and, if `unreadable` is given, put
    in it ({id: error}): they may match, and a listing should say so. The records come through the
    node's record cache (Store.list_versions): a repeated search reads only what changed."""
    if sort not in SORTS:
        raise UsageError(f"unknown sort {sort!r}: use {' or '.join(SORTS)}")
    if state is not None and state not in STATES:
        raise UsageError(f"unknown state {state!r}: use {' or '.join(STATES)}")
    found = [v for v in store.list_versions(unreadable, hint=_hint(project, tags, ids))
             if (not project or paths.glob_match(v.project, project))
             and (not name or _name_matches(v.name, name))
             and all(t in v.tags for t in tags or [])
             and (not any_tags or any(t in v.tags for t in any_tags))
             and (not state or (v.is_final if state == "final" else v.state == state))
             and (since is None or _created(v) >= since)
             and (not ids or v.id in ids)]
    if sort == "date":
        found.sort(key=lambda v: (_created(v), v.id), reverse=True)
    else:
        found.sort(key=lambda v: (v.project, v.name, parse_semver(v.version) or semver.Version(0), v.created))
    return found[:limit] if limit is not None else found


def relabel(store: Store, project: str, name: str, new_project: str, new_name: str) -> int:
    paths.label("project", new_project)
    paths.label("name", new_name)
    versions = [v for v in store.list_versions(exact=True) if v.project == project and v.name == name]
    if not versions:
        raise DatasetNotFound(f"no dataset {project}/{name} in {store.display_url}")
    claimed: list[str] = []
    for info in versions:  # claim every new number first, so a clash changes nothing
        if not store.claim_version_number(new_project, new_name, info.version, info.id):
            for version in claimed:
                store.release_version_number(new_project, new_name, version)
            raise Conflict(f"{new_project}/{new_name}@{info.version} already exists")
        claimed.append(info.version)
    for info in versions:
        info.project, info.name = new_project, new_name
        store.write_version(info)
        store.release_version_number(project, name, info.version)
    return len(versions)


def delete(store: Store, ref: str, force: bool = False) -> VersionInfo:
    """Delete a version's records: version.json first (readers stop seeing it), then its
    change-set and its name claim. Never packs: they may be shared with unrelated versions
    (pack ids are content hashes); `gc` reclaims the space of packs nothing references.
    Refuses while other versions inherit from it or borrow its packs (a squash), unless force:
    then its descendants can no longer be read (`dependents` names them)."""
    try:
        info = resolve(store, ref, include_drafts=True)
    except CorruptData as exc:
        if not ID_RE.match(ref or ""):
            raise
        if not force:
            raise CorruptData(f"{exc}; `dsfs delete --id {ref} --force` removes the damaged version") from None
        store.delete_version(ref)  # its name claim cannot be read: that number stays taken
        return VersionInfo(id=ref, project="", name="", version="")
    children = [v for v in store.list_versions(exact=True) if info.id in v.parents or info.id in v.sources]
    if children and not force:
        raise DatasetInUse(f"dataset {info.id} ({info.ref}) is a parent or source of {len(children)} version(s) "
                           f"({', '.join(c.id for c in children[:3])}); delete those first or pass --force")
    draft = DraftState.load(info.id, store.url) if not info.is_final else None
    store.delete_version_record(info.id)  # the record goes first: readers stop seeing it at once
    if not force:
        # A child created between the check above and the removal would be left without its
        # parent. A child's close reads its parents after its draft record exists
        # (Dataset._check_ancestors); here the removal comes before this second look: one sees the other.
        late = [v for v in store.list_versions(exact=True) if info.id in v.parents or info.id in v.sources]
        if late:
            store.write_version(info)
            raise DatasetInUse(f"dataset {info.id} ({info.ref}) got a child while it was being deleted "
                               f"({late[0].id}); nothing was deleted")
    store.delete_version(info.id)
    store.release_version_number(info.project, info.name, info.version)
    if draft is not None:
        draft.discard()
    return info


def dependents(store: Store, ref: str) -> tuple[list[VersionInfo], list[VersionInfo]]:
    """(versions that can no longer be read if `ref` is deleted: its descendants, and squashed
    versions that borrow its packs, which stay readable). """
    info = resolve(store, ref, include_drafts=True)
    versions = store.list_versions(exact=True)
    lost, frontier = {}, {info.id}
    while frontier:
        frontier = {v.id for v in versions if v.id not in lost and frontier & set(v.parents)}
        lost.update({v.id: v for v in versions if v.id in frontier})
    borrowers = [v for v in versions if info.id in v.sources and v.id not in lost]
    return sorted(lost.values(), key=lambda v: v.ref), borrowers

"""The catalog at scale: resolving a name costs a few requests whatever the store holds; search
reads only changed records through the node's record cache; another node's changes are seen by the
next command; races between writers and a searcher leave every answer true."""

from __future__ import annotations

import datetime
import json
import os
import threading

import pytest

from dsfs import Dataset, Store
from dsfs.catalog import resolve
from dsfs.errors import DatasetNotFound
from conftest import make_tree, run_cli


def _version(store, tmp_path, project="p", name="n", tags=(), parents=None, final=True, version=None):
    folder = tmp_path / f"src-{os.urandom(4).hex()}"
    make_tree(folder, {"a.txt": os.urandom(20)})
    ds = Dataset.create(project, name, parents=parents, tags=list(tags), version=version, store=store)
    ds.add_files(str(folder))
    if final:
        ds.finalize()
    return ds


class Requests:
    """Every store request made, by kind, through Store._call."""

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        real = Store._call

        def counted(store, what, fn, *args, **kwargs):
            self.calls.append(what)
            return real(store, what, fn, *args, **kwargs)

        monkeypatch.setattr(Store, "_call", counted)

    def __len__(self):
        return len(self.calls)


def test_resolving_a_name_costs_the_same_with_many_other_versions(file_store, tmp_path, monkeypatch):
    store = Store.open(file_store, create=True)
    for i in range(3):
        _version(store, tmp_path, version=f"1.{i}.0")
    latest = _version(store, tmp_path, version="1.10.0")  # semantic order, not text order
    _version(store, tmp_path, version="2.0.0", final=False)  # a draft is not the latest final
    requests = Requests(monkeypatch)
    assert resolve(store, "p/n").id == latest.id
    few = len(requests)
    for i in range(40):
        _version(store, tmp_path, project=f"other{i}", name="x")
    requests.calls.clear()
    assert resolve(store, "p/n").id == latest.id
    # a LIST of the claims, then a claim and its record for 2.0.0 (a draft) and for 1.10.0
    assert len(requests) == few == 5, requests.calls
    requests.calls.clear()
    assert resolve(store, "p/n@1.1.0").version == "1.1.0" and len(requests) <= 3
    assert resolve(store, "p/n", include_drafts=True).version == "2.0.0"
    with pytest.raises(DatasetNotFound, match="no final dataset p/nope"):
        resolve(store, "p/nope")


def test_resolve_skips_stale_claims_and_honours_tags(file_store, tmp_path):
    store = Store.open(file_store, create=True)
    tagged = _version(store, tmp_path, version="1.0.0", tags=["gold"])
    newest = _version(store, tmp_path, version="1.1.0")
    assert resolve(store, "p/n", tags=["gold"]).id == tagged.id
    # a claim whose record is gone (a crash between delete's steps) or holds another name is passed over
    store.delete_version_record(newest.id)
    assert resolve(store, "p/n").id == tagged.id
    store.claim_version_number("p", "n", "9.0.0", tagged.id)  # points at a record numbered 1.0.0
    assert resolve(store, "p/n").version == "1.0.0"


def test_search_filters_sort_and_limit(file_store, tmp_path, dsfs):
    store = Store.open(file_store, create=True)
    a = _version(store, tmp_path, "vision", "cats", tags=["raw"])
    b = _version(store, tmp_path, "vision", "cats", tags=["raw", "gold"])
    c = _version(store, tmp_path, "vision", "dogs", tags=["clean"], final=False)
    _version(store, tmp_path, "audio", "birds", tags=["gold"])

    def ids(*args):
        r = dsfs("search", "--store", file_store, "--json", *args)
        assert r.code == 0, r.err
        return [v["id"] for v in json.loads(r.out)]

    assert ids("--project", "vision", "--tags", "raw", "gold") == [b.id]
    assert set(ids("--project", "vision", "--any-tags", "gold", "clean")) == {b.id, c.id}
    assert ids("--project", "vision", "--state", "draft") == [c.id]
    Dataset.get(a.id, store=file_store).publish()
    assert ids("--project", "vision", "--state", "final") == [a.id, b.id]  # published is final too
    assert ids("--project", "vision", "--state", "published") == [a.id]
    assert ids("--project", "vision", "--sort", "version") == [a.id, b.id, c.id]
    newest_first = ids("--sort", "date")
    created = [Dataset.get(i, store=file_store).info.created for i in newest_first]
    assert created == sorted(created, reverse=True) and len(newest_first) == 4
    assert ids("--sort", "date", "--limit", "2") == newest_first[:2]
    tomorrow = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)).date().isoformat()
    assert ids("--since", tomorrow) == [] and len(ids("--since", "2000-01-01")) == 4
    r = dsfs("search", "--store", file_store, "--since", "last week")
    assert r.code == 2 and "invalid date 'last week'" in r.err


def test_another_node_sees_every_change_at_once(file_store, tmp_path):
    """Two nodes (separate node caches) on one store: what one does, the other's next command sees."""
    def node(name):
        home = tmp_path / name
        env = {"DSFS_STORE": file_store, "XDG_CACHE_HOME": str(home / "cache"),
               "XDG_STATE_HOME": str(home / "state"), "XDG_CONFIG_HOME": str(home / "config")}

        def run(*args):
            r = run_cli(*args, env=env)
            assert r.returncode == 0, r.stderr
            return r.stdout

        return run

    one, two = node("one"), node("two")
    make_tree(tmp_path / "src", {"f.txt": b"x"})
    first = one("create", "--project", "p", "--name", "n", "--json")
    first_id = json.loads(first)["id"]
    one("add", "--id", first_id, "--files", str(tmp_path / "src"))
    one("close", "--id", first_id)

    def seen():
        return {v["id"]: v for v in json.loads(two("search", "--project", "*", "--json"))}

    assert seen()[first_id]["state"] == "final"  # fills two's cache
    one("publish", "--id", first_id)
    assert seen()[first_id]["state"] == "published"
    one("rename", "--project", "p", "--name", "n", "--new-name", "renamed")
    assert seen()[first_id]["name"] == "renamed"
    one("move", "--project", "p", "--name", "renamed", "--new-project", "elsewhere")
    assert seen()[first_id]["project"] == "elsewhere"
    second = json.loads(one("create", "--project", "elsewhere", "--name", "renamed", "--parents",
                            "elsewhere/renamed", "--json"))["id"]
    assert set(seen()) == {first_id, second}
    one("delete", "--id", second)
    assert set(seen()) == {first_id}
    assert json.loads(two("list", "--id", "elsewhere/renamed", "--json"))


def test_writers_racing_for_one_name_while_a_third_searches(file_store, tmp_path):
    store = Store.open(file_store, create=True)
    made: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer():
        try:
            for _ in range(6):
                made.append(_version(store, tmp_path, "race", "same").id)
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    def searcher():
        try:
            while not stop.is_set():
                for v in Dataset.search(project="race", store=file_store):
                    assert v.project == "race" and v.name == "same"
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(2)]
    watcher = threading.Thread(target=searcher)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()
    assert not errors, errors
    found = Dataset.search(project="race", store=file_store)
    assert sorted(v.id for v in found) == sorted(made)
    assert len({v.version for v in found}) == 12  # distinct numbers
    assert resolve(store, "race/same").version == max((v.version for v in found),
                                                      key=lambda s: tuple(map(int, s.split("."))))


def test_a_crafted_record_cannot_shift_the_others_in_a_batch_parse(file_store, tmp_path):
    """Records are parsed as one JSON array; a record made of two JSON values (or anything else that
    does not parse alone) must not make its neighbours parse as each other."""
    store = Store.open(file_store, create=True)
    a, b = _version(store, tmp_path, "p", "a"), _version(store, tmp_path, "p", "b")
    crafted = "f" * 32
    two = store._get(f"datasets/{a.id}/version.json") + b"," + store._get(f"datasets/{b.id}/version.json")
    store._put(f"datasets/{crafted}/version.json", two)
    unreadable: dict[str, str] = {}
    found = {v.id: v.name for v in store.list_versions(unreadable)}
    assert found == {a.id: "a", b.id: "b"} and list(unreadable) == [crafted]


def test_search_by_literal_filters_finds_the_same_as_a_full_parse(file_store, tmp_path):
    """The raw-bytes hint (catalog._hint) skips parsing records that cannot match; what it skips must
    never be a record that matches, whatever else a record holds."""
    store = Store.open(file_store, create=True)
    made = [_version(store, tmp_path, p, n, tags=t) for p, n, t in
            [("vision", "cats", ["raw"]), ("vision", "dogs", ["gold", "raw"]), ("visionary", "x", []),
             ("audio", "raw", ["vision"]), ("a/b", "c", ["raw"])]]
    odd = made[2].info  # a record written with escapes json.dumps would not use is still found
    store._put(f"datasets/{odd.id}/version.json",
               store._get(f"datasets/{odd.id}/version.json").replace(b'"visionary"', b'"vi\\u0073ionary"'))
    Dataset.search(store=file_store)  # fills the node's cache: later searches take records from it
    for filters in ({"project": "vision"}, {"tags": ["raw"]}, {"project": "vision", "tags": ["raw", "gold"]},
                    {"project": "visionary"}, {"project": "a/b"}, {"ids": [made[3].id]}, {"project": "vis*"}):
        full = sorted(v.id for v in Dataset.search(store=file_store)
                      if (not filters.get("project") or __import__("fnmatch").fnmatch(v.project, filters["project"]))
                      and all(t in v.tags for t in filters.get("tags", []))
                      and (not filters.get("ids") or v.id in filters["ids"]))
        assert sorted(v.id for v in Dataset.search(store=file_store, **filters)) == full, filters

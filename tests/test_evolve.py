"""Dataset evolution: sync, compare, squash, export, versions."""

import io
import json
import os
import random
import shutil
import subprocess
import tarfile
import zipfile

import pytest

from dsfs import Dataset, Store
from dsfs.authoring.evolve import FolderChanges, folder_diff
from dsfs.errors import Conflict, DatasetInUse
from dsfs.lineage.merge import Lineage
from conftest import final_version, make_tree, run_cli


def _packs(store_url):
    root = store_url[len("file://"):] + "/packs"
    return sorted(os.path.join(r, f) for r, _, fs in os.walk(root) for f in fs)


def test_sync_detects_changes_and_skips_unchanged(tmp_path, file_store, dsfs):
    folder = tmp_path / "data"
    make_tree(folder, {f"d{i % 3}/f{i}": os.urandom(5000) for i in range(30)})
    args = ("--store", file_store, "sync", "--folder", folder, "--project", "p", "--name", "n")
    r = dsfs(*args)
    assert r.code == 0, r.err
    first = Dataset.get("p/n", store=file_store)
    assert first.info.stats["files"] == 30 and first.version == "1.0.0"
    r = dsfs(*args)
    assert r.code == 0 and "no change" in r.out
    os.utime(folder / "d0" / "f0", ns=(1, 1))  # touched, same bytes: the hash says unchanged
    assert "no change" in dsfs(*args).out
    (folder / "d1" / "f1").write_bytes(b"modified")
    (folder / "d2" / "f2").unlink()
    make_tree(folder, {"new/file": b"new"})
    r = dsfs(*args)
    assert r.code == 0, r.err
    second = Dataset.get("p/n", store=file_store)
    assert second.version == "1.0.1" and second.parents == [first.id]
    assert second.list_added_files() == ["new/file"]
    assert second.list_modified_files() == ["d1/f1"]
    assert second.list_removed_files() == ["d2/f2"]
    assert second.info.stats["new_bytes"] < 100
    assert sorted(second.list_files()) == sorted(
        os.path.relpath(os.path.join(r, f), folder) for r, _, fs in os.walk(folder) for f in fs)
    r = dsfs(*args, "--allow-empty", "--skip-close")
    assert r.code == 0 and Dataset.get(r.out.strip(), include_drafts=True, store=file_store).state == "draft"
    r = dsfs("--store", file_store, "sync", "--folder", tmp_path / "missing", "--project", "p", "--name", "n")
    assert r.code == 2 and "no such folder" in r.err


def test_sync_names_in_nfd_are_stored_nfc_and_match_again(tmp_path, memory_store):
    # macOS-made folders hold decomposed names; a folder's names are checked for NFC together
    nfd, nfc = "cafe\u0301", "caf\u00e9"
    make_tree(tmp_path / "d", {f"{nfd}/{nfd}.txt": b"1", "plain/a.txt": b"2", f"plain/{nfd}": b"3"})
    first, changes = Dataset.sync(str(tmp_path / "d"), "p", "n", store=memory_store)
    assert sorted(first.list_files()) == sorted([f"{nfc}/{nfc}.txt", "plain/a.txt", f"plain/{nfc}"])
    again, changes = Dataset.sync(str(tmp_path / "d"), "p", "n", store=memory_store)
    assert again is None and changes.unchanged == 3  # the NFD names found their NFC entries
    (tmp_path / "d" / nfd / f"{nfd}.txt").write_bytes(b"changed")
    child, changes = Dataset.sync(str(tmp_path / "d"), "p", "n", store=memory_store)
    assert (changes.added, changes.modified, changes.removed) == (0, 1, 0)
    assert child.list_modified_files() == [f"{nfc}/{nfc}.txt"]


def test_sync_folder_api_into_subfolder(tmp_path, memory_store):
    make_tree(tmp_path / "a", {"keep": b"k", "x/old": b"o"})
    base = Dataset.create("p", "n", store=memory_store)
    base.add_files(str(tmp_path / "a"), dataset_path="sub")
    base.add_files(str(tmp_path / "a"), dataset_path="other")
    base.finalize()
    make_tree(tmp_path / "b", {"keep": b"k", "x/new": b"n"})
    child = Dataset.create("p", "n", parents=[base.id], store=memory_store)
    changes = child.sync_folder(str(tmp_path / "b"), dataset_path="sub")
    assert (changes.added, changes.removed, changes.unchanged) == (1, 1, 1)
    assert child.list_added_files() == ["sub/x/new"] and child.list_removed_files() == ["sub/x/old"]
    child.finalize()
    assert child.list_files() == ["other/keep", "other/x/old", "sub/keep", "sub/x/new"]


def test_compare(tmp_path, memory_store, dsfs):
    make_tree(tmp_path / "a", {"same": b"s", "gone": b"g" * 10, "changed": b"c"})
    make_tree(tmp_path / "b", {"same": b"s", "changed": b"C2", "added": b"a" * 7})
    a = final_version(memory_store, tmp_path / "a", name="a")
    b = final_version(memory_store, tmp_path / "b", name="unrelated", project="q")
    r = dsfs("--store", memory_store, "compare", "--source", a.id, "--target", "q/unrelated", "--json")
    data = json.loads(r.out)
    assert (data["added"], data["removed"], data["modified"], data["unchanged"]) == (1, 1, 1, 1)
    assert data["added_paths"] == ["added"] and data["removed_paths"] == ["gone"]
    assert data["modified_paths"] == ["changed"] and data["added_bytes"] == 7
    r = dsfs("--store", memory_store, "compare", "--source", a.id, "--target", b.id, "--verbose")
    assert "1 files added" in r.out and "gone" in r.out and "changed" in r.out
    draft = Dataset.create("p", "d", store=memory_store)
    r = dsfs("--store", memory_store, "compare", "--source", a.id, "--target", draft.id)
    assert r.code == 4 and "draft" in r.err


def test_squash_moves_no_bytes(tmp_path, file_store):
    chain = []
    for i in range(4):
        make_tree(tmp_path / f"v{i}", {f"f{i}": os.urandom(50_000), "shared": f"v{i}".encode()})
        ds = Dataset.create("p", "n", parents=[chain[-1].id] if chain else None, store=file_store)
        ds.add_files(str(tmp_path / f"v{i}"))
        if i == 2:
            ds.remove_files("f0")
        ds.finalize()
        chain.append(ds)
    make_tree(tmp_path / "other", {"o": b"other"})
    other = Dataset.create("q", "o", store=file_store)
    other.add_files(str(tmp_path / "other"))
    other.finalize()
    packs = _packs(file_store)
    proc = run_cli("--store", file_store, "squash", "--name", "flat", "--ids", chain[-1].id, other.id)
    assert proc.returncode == 0, proc.stderr
    flat = Dataset.get(proc.stdout.strip(), store=file_store)
    assert _packs(file_store) == packs  # no chunk bytes moved
    assert flat.parents == [] and flat.project == "p" and flat.info.stats["new_bytes"] == 0
    assert flat.list_files() == ["f1", "f2", "f3", "o", "shared"]
    assert flat.read_file("shared") == b"v3" and flat.read_file("o") == b"other"
    assert flat.get_local_copy()  # consumable like any version
    with pytest.raises(DatasetInUse, match="source"):
        Dataset.delete(other.id, store=file_store)
    Dataset.delete(flat.id, store=file_store)
    Dataset.delete(other.id, store=file_store)


def test_squash_conflict_creates_nothing(tmp_path, memory_store):
    make_tree(tmp_path / "a", {"x": b"file"})
    make_tree(tmp_path / "b", {"x/y": b"nested"})
    ids = []
    for name in ("a", "b"):
        ds = Dataset.create("p", name, store=memory_store)
        ds.add_files(str(tmp_path / name))
        ds.finalize()
        ids.append(ds.id)
    with pytest.raises(Conflict, match="both a file and a folder"):
        Dataset.squash("flat", ids, store=memory_store)
    assert [v.name for v in Dataset.search(store=memory_store)] == ["a", "b"]


def test_export_formats(tmp_path, file_store):
    files = {"a.txt": b"alpha", "dir/b.bin": os.urandom(3 << 20), "dir/c": b""}
    make_tree(tmp_path / "d", files)
    os.chmod(tmp_path / "d" / "a.txt", 0o755)
    ds = Dataset.create("p", "n", store=file_store)
    ds.add_files(str(tmp_path / "d"))
    ds.finalize()
    env = {"DSFS_STORE": file_store}
    assert run_cli("export", ds.id, "-o", tmp_path / "x.tar", env=env).returncode == 0
    with tarfile.open(tmp_path / "x.tar") as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        assert tar.getmember("a.txt").mode == 0o755
    assert got == files
    assert run_cli("export", ds.id, "--format", "zip", "-o", tmp_path / "x.zip", env=env).returncode == 0
    with zipfile.ZipFile(tmp_path / "x.zip") as archive:
        assert {n: archive.read(n) for n in archive.namelist()} == files
    proc = run_cli("export", ds.id, "--format", "manifest-json", "--include", "dir", "-o", "-", env=env)
    manifest = json.loads(proc.stdout)
    assert [f["path"] for f in manifest["files"]] == ["dir/b.bin", "dir/c"]
    assert manifest["files"][0]["size"] == 3 << 20 and len(manifest["files"][0]["digest"]) == 64
    proc = run_cli("export", ds.id, "-o", tmp_path / "x.tar", env=env)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    assert run_cli("export", ds.id, "-o", tmp_path / "x.tar", "--overwrite", "--include", "a.txt", env=env).returncode == 0
    with tarfile.open(tmp_path / "x.tar") as tar:
        assert tar.getnames() == ["a.txt"]
    import subprocess
    import sys

    streamed = subprocess.run([sys.executable, "-m", "dsfs.cli.main", "export", ds.id, "-o", "-"],
                              capture_output=True, env={**os.environ, **env})
    with tarfile.open(fileobj=io.BytesIO(streamed.stdout), mode="r|") as tar:
        assert sorted(m.name for m in tar) == sorted(files)


def test_versions_listing(tmp_path, memory_store, dsfs):
    make_tree(tmp_path / "d", {"f": b"x"})
    v1 = Dataset.create("p", "n", store=memory_store)
    v1.add_files(str(tmp_path / "d"))
    v1.finalize()
    v2 = Dataset.create("p", "n", parents=[v1.id], store=memory_store)
    r = dsfs("--store", memory_store, "versions", "p/n", "--json")
    data = json.loads(r.out)
    assert [(v["version"], v["state"]) for v in data] == [("1.0.0", "final"), ("1.0.1", "draft")]
    r = dsfs("--store", memory_store, "versions", "p/n")
    assert v2.id in r.out and "1.0.0" in r.out
    assert dsfs("--store", memory_store, "versions", "p/none").code == 3


def test_folder_diff_merges_in_path_order(tmp_path, memory_store):
    """The sync merges the folder's scan with the parents' table side by side, so the scan must come
    in the table's order; names that sort around a folder's ('a' < 'a-b' < 'a.txt' < 'a/x' < 'a0' in
    path order, though the name 'a' sorts first) and random trees give what sets would."""
    rng = random.Random(7)
    names = ["a", "a-b", "a.txt", "a0", "b", "a b", "\u00e9", "z"]

    def tree() -> dict[str, bytes]:
        files = {}
        for _ in range(60):
            depth = rng.randint(1, 3)
            path = "/".join(rng.choice(names) for _ in range(depth))
            if not any(p == path or p.startswith(path + "/") or path.startswith(p + "/") for p in files):
                files[path] = rng.choice([b"x", b"yy", os.urandom(5)])
        return files

    for round_ in range(5):
        old, new = tree(), tree()
        for path in rng.sample(sorted(old), 10):  # some survive unchanged
            if not any(p == path or p.startswith(path + "/") or path.startswith(p + "/") for p in new):
                new[path] = old[path]
        shutil.rmtree(tmp_path / "old", ignore_errors=True)
        shutil.rmtree(tmp_path / "new", ignore_errors=True)
        make_tree(tmp_path / "old", old)
        make_tree(tmp_path / "new", new)
        base = final_version(memory_store, tmp_path / "old", name=f"r{round_}")
        changes = FolderChanges()
        diff = list(folder_diff(Lineage.of(Store.open(memory_store)).table([base.id]), str(tmp_path / "new"),
                                changes))
        assert [path for path, _ in diff] == sorted(path for path, _ in diff)
        staged = {path for path, local in diff if local is not None}
        removed = {path for path, local in diff if local is None}
        assert removed == set(old) - set(new)
        assert staged == {p for p in new if p not in old or old[p] != new[p]}
        assert (changes.added, changes.removed) == (len(set(new) - set(old)), len(removed))
        assert changes.modified + changes.unchanged == len(set(new) & set(old))


def test_zip_export_keeps_directory_records_on_disk(tmp_path, file_store, dsfs, monkeypatch):
    """A zip's central directory is written at the end from every entry's record: the records wait
    in a spooled temp file (here forced to disk at once), not as a ZipInfo each in memory, and the
    archive reads back whole (names, bytes, modes, dates)."""
    from dsfs.node import export

    monkeypatch.setattr(export, "SPOOL_BYTES", 1)
    files = {f"d{i % 7}/f{i}": os.urandom(i % 50) for i in range(3000)}
    files["x/run.sh"] = b"#!/bin/sh\n"
    make_tree(tmp_path / "d", files)
    os.chmod(tmp_path / "d" / "x" / "run.sh", 0o755)
    ds = final_version(file_store, tmp_path / "d")
    kept = []
    real_close = export._StreamedZip.close

    def close(self):
        kept.append((len(self.filelist), dict(self.NameToInfo), self.filelist.spool._rolled))
        real_close(self)

    monkeypatch.setattr(export._StreamedZip, "close", close)
    assert dsfs("--store", file_store, "export", ds.id, "--format", "zip", "-o", tmp_path / "x.zip").code == 0
    assert kept[0] == (len(files), {}, True)  # every record counted, none held by name, the spool on disk
    with zipfile.ZipFile(tmp_path / "x.zip") as archive:
        assert archive.testzip() is None
        assert {n: archive.read(n) for n in archive.namelist()} == files
        info = archive.getinfo("x/run.sh")
        assert info.external_attr >> 16 & 0o777 == 0o755 or info.external_attr >> 16 & 0o777 == 0o555
        mtime = os.stat(tmp_path / "d" / "x" / "run.sh").st_mtime
        want = export.zip_date(int(mtime * 1e9))
        assert info.date_time == (*want[:5], want[5] // 2 * 2)  # zip keeps even seconds
    if shutil.which("unzip"):
        assert subprocess.run(["unzip", "-tq", tmp_path / "x.zip"], capture_output=True).returncode == 0

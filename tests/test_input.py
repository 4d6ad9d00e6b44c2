"""Input dsfs must not take on trust: local folders given to `add` and `sync` (names that are not
UTF-8, names that differ only in their Unicode form, FIFOs, symlinks), the labels that name versions
in the store's layout, and version records that a name resolves to."""

import os
import threading

import pytest

from dsfs import Dataset, paths
from dsfs.errors import Conflict, CorruptData, LocalFileNotFound, UsageError
from dsfs.store.layout import Store
from conftest import make_tree, run_cli

NFC, NFD = "caf\u00e9.txt", "cafe\u0301.txt"


def _bad_name(folder) -> bytes:
    """Create a file whose name is not UTF-8 in folder; returns its name."""
    name = b"bad\xff.txt"
    with open(os.path.join(os.fsencode(str(folder)), name), "wb") as f:
        f.write(b"latin-1 name")
    return name


# -- local names -----------------------------------------------------------------------------------


def test_a_name_that_is_not_utf8_is_skipped_with_a_warning(tmp_path, file_store, capfd):
    make_tree(tmp_path / "d", {"good.txt": b"good", "sub/ok.txt": b"ok"})
    _bad_name(tmp_path / "d" / "sub")
    ds = Dataset.create("p", "n", store=file_store)
    assert ds.add_files(str(tmp_path / "d")) == 2
    err = capfd.readouterr().err
    assert f"dsfs: warning: skipped {tmp_path}/d/sub/bad\\xff.txt: its name is not valid UTF-8" in err
    ds.finalize()
    assert Dataset.get(ds.id, store=file_store).list_files() == ["good.txt", "sub/ok.txt"]

    synced, changes = Dataset.sync(str(tmp_path / "d"), "p", "synced", store=file_store)
    assert synced.list_files() == ["good.txt", "sub/ok.txt"]
    assert len(changes.skipped) == 1 and "bad\\xff.txt" in changes.skipped[0] and "UTF-8" in changes.skipped[0]


def test_cli_add_and_sync_of_a_name_that_is_not_utf8(tmp_path, file_store):
    make_tree(tmp_path / "d", {"good.txt": b"good"})
    _bad_name(tmp_path / "d")
    env = {"DSFS_STORE": file_store}
    assert run_cli("create", "--project", "p", "--name", "n", env=env).returncode == 0
    added = run_cli("add", "--files", tmp_path / "d", env=env)
    assert added.returncode == 0 and "1 file(s) added" in added.stdout, added.stderr
    assert "Traceback" not in added.stderr and "bad\\xff.txt" in added.stderr and "not valid UTF-8" in added.stderr
    assert run_cli("close", env=env).returncode == 0
    synced = run_cli("sync", "--folder", tmp_path / "d", "--project", "p", "--name", "s", env=env)
    assert synced.returncode == 0 and "Traceback" not in synced.stderr and "bad\\xff.txt" in synced.stderr


def test_names_differing_only_by_nfc_nfd_are_refused_naming_both(tmp_path, file_store):
    make_tree(tmp_path / "d", {NFC: b"composed", NFD: b"decomposed", "other": b"o"})
    make_tree(tmp_path / "before", {"kept": b"k"})
    ds = Dataset.create("p", "n", store=file_store)
    assert ds.add_files(str(tmp_path / "before")) == 1
    with pytest.raises(Conflict, match=f"{NFC}.* and .*{NFD}|{NFD}.* and .*{NFC}"):
        ds.add_files(str(tmp_path / "d"))
    # nothing of it was added ("other" came before the conflict), and the earlier add stays
    assert dict(ds._require_draft().adds()) == {"kept": str(tmp_path / "before" / "kept")}
    again = Dataset.get(ds.id, store=file_store, include_drafts=True)._require_draft()
    assert dict(again.adds()) == {"kept": str(tmp_path / "before" / "kept")}
    with pytest.raises(Conflict, match="Unicode form"):
        ds.add_files(str(tmp_path / "d" / "*.txt"))  # named one by one (a glob): the same rule
    with pytest.raises(Conflict, match="Unicode form"):
        Dataset.sync(str(tmp_path / "d"), "p", "s", store=file_store)
    assert Dataset.search(store=file_store) == [ds.info]  # sync created nothing


def test_one_nfd_name_alone_is_stored_nfc(tmp_path, file_store):
    make_tree(tmp_path / "d", {NFD: b"decomposed"})
    ds = Dataset.create("p", "n", store=file_store)
    assert ds.add_files(str(tmp_path / "d")) == 1
    ds.finalize()
    assert Dataset.get(ds.id, store=file_store).read_file(NFC) == b"decomposed"


@pytest.mark.timeout(20)
def test_a_file_replaced_by_a_fifo_fails_the_upload_instead_of_hanging(tmp_path, file_store):
    make_tree(tmp_path / "d", {"a": b"a", "pipe": b"was a file"})
    ds = Dataset.create("p", "n", store=file_store)
    ds.add_files(str(tmp_path / "d"))
    os.unlink(tmp_path / "d" / "pipe")
    os.mkfifo(tmp_path / "d" / "pipe")
    with pytest.raises(LocalFileNotFound, match="pipe .*is now a FIFO, not a regular file"):
        ds.upload()
    os.unlink(tmp_path / "d" / "pipe")
    ds.remove_files("pipe")
    ds.finalize()
    assert Dataset.get(ds.id, store=file_store).list_files() == ["a"]


def test_a_fifo_in_a_folder_is_skipped_with_a_warning(tmp_path, file_store):
    make_tree(tmp_path / "d", {"a": b"a"})
    os.mkfifo(tmp_path / "d" / "pipe")
    ds = Dataset.create("p", "n", store=file_store)
    assert ds.add_files(str(tmp_path / "d")) == 1
    _, changes = Dataset.sync(str(tmp_path / "d"), "p", "s", store=file_store)
    assert changes.skipped == [f"skipped {tmp_path}/d/pipe: not a regular file"]


# -- symlinks --------------------------------------------------------------------------------------


@pytest.fixture
def linked_tree(tmp_path):
    """A folder with a symlink inside it, one to a file outside it, a broken one, and two loops."""
    make_tree(tmp_path / "d", {"sub/real.txt": b"inside"})
    make_tree(tmp_path, {"secret.txt": b"outside"})
    d = tmp_path / "d"
    os.symlink("sub/real.txt", d / "inner")
    os.symlink(tmp_path / "secret.txt", d / "outer")
    os.symlink("nothing", d / "broken")
    os.symlink("self", d / "self")
    os.symlink("..", d / "sub" / "up")  # a folder symlink back to the top
    return d


def test_symlinks_inside_the_folder_are_followed_outside_skipped(linked_tree, file_store, capfd):
    ds = Dataset.create("p", "n", store=file_store)
    assert ds.add_files(str(linked_tree)) == 2
    err = capfd.readouterr().err
    assert f"skipped {linked_tree}/outer: a symlink to {linked_tree.parent}/secret.txt, outside" in err
    assert f"skipped {linked_tree}/self: a symlink loop" in err
    assert f"skipped {linked_tree}/broken: a broken symlink" in err
    assert f"skipped {linked_tree}/sub/up: a symlink loop" in err
    ds.finalize()
    final = Dataset.get(ds.id, store=file_store)
    assert final.list_files() == ["inner", "sub/real.txt"] and final.read_file("inner") == b"inside"

    synced, changes = Dataset.sync(str(linked_tree), "p", "s", store=file_store)
    assert changes.added == 2 and len(changes.skipped) == 4
    assert synced.list_added_files() == ["inner", "sub/real.txt"]


def test_follow_symlinks_opts_in_to_targets_outside(linked_tree, file_store, tmp_path):
    ds = Dataset.create("p", "n", store=file_store)
    assert ds.add_files(str(linked_tree), follow_symlinks=True) == 3
    ds.finalize()
    assert Dataset.get(ds.id, store=file_store).read_file("outer") == b"outside"
    synced, _ = Dataset.sync(str(linked_tree), "p", "s", store=file_store, follow_symlinks=True)
    assert synced.list_files() == ["inner", "outer", "sub/real.txt"]
    env = {"DSFS_STORE": file_store}
    assert run_cli("create", "--project", "p", "--name", "cli", env=env).returncode == 0
    added = run_cli("add", "--files", linked_tree, "--follow-symlinks", env=env)
    assert added.returncode == 0 and "3 file(s) added" in added.stdout, added.stderr


def test_a_symlink_named_on_the_command_line_is_followed(linked_tree, file_store):
    ds = Dataset.create("p", "n", store=file_store)
    assert ds.add_files(str(linked_tree / "outer")) == 1  # named by the user: taken as named
    ds.finalize()
    assert Dataset.get(ds.id, store=file_store).read_file("outer") == b"outside"


def test_a_symlink_retargeted_after_add_is_not_followed_at_upload(linked_tree, file_store, tmp_path):
    ds = Dataset.create("p", "n", store=file_store)
    ds.add_files(str(linked_tree))
    os.unlink(linked_tree / "sub" / "real.txt")  # the draft read "inner" as sub/real.txt, its target
    os.symlink(tmp_path / "secret.txt", linked_tree / "sub" / "real.txt")
    with pytest.raises(LocalFileNotFound, match="replaced by a symlink"):
        ds.upload()


# -- labels ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,value", [
    ("project", ".."), ("project", "."), ("project", ""), ("project", "a/../b"), ("project", "a//b"),
    ("project", "/abs"), ("name", "a/b"), ("name", ".."), ("name", "x@y"), ("name", "nul\0"),
    ("name", "tab\there"), ("name", " padded"), ("tag", "new\nline"), ("tag", ""), ("version", ".."),
    ("name", "x" * 256), ("name", "\u00e9" * 50), ("project", "/".join(["abcdefghij"] * 30)),
])
def test_label_rule_refuses(kind, value):
    with pytest.raises(UsageError, match=f"invalid {kind}"):
        paths.label(kind, value)


@pytest.mark.parametrize("kind,value", [("project", "vision/2024"), ("name", "cats-v2.1_x"), ("tag", "gold"),
                                        ("name", "caf\u00e9"), ("version", "1.0.0-rc.1+b5")])
def test_label_rule_accepts(kind, value):
    assert paths.label(kind, value) == value


def test_names_cannot_escape_the_store(tmp_path, dsfs):
    store_root = tmp_path / "store"
    r = dsfs("--store", f"file://{store_root}", "create", "--project", "..", "--name", "..", "--version", "1.0.0")
    assert r.code == 2 and "invalid project '..'" in r.err
    assert set(os.listdir(tmp_path)) <= {"home", "store"}  # nothing above the store root
    assert not os.path.exists(store_root / "names")


def test_every_entry_point_checks_labels(tmp_path, file_store):
    make_tree(tmp_path / "d", {"a": b"a"})
    for bad in ({"project": ".."}, {"name": ".."}, {"name": "a/b"}, {"version": "../1.0.0"}, {"tags": ["ok", "bad\0"]}):
        args = {"project": "p", "name": "n", **bad}
        with pytest.raises(UsageError, match="invalid"):
            Dataset.create(store=file_store, **args)
        if "version" not in bad:
            with pytest.raises(UsageError, match="invalid"):
                Dataset.sync(str(tmp_path / "d"), store=file_store, **args)
    ds = Dataset.sync(str(tmp_path / "d"), "p", "n", store=file_store)[0]
    with pytest.raises(UsageError, match="invalid name"):
        Dataset.rename("..", "p", "n", store=file_store)
    with pytest.raises(UsageError, match="invalid project"):
        Dataset.move_to_project("x/..", "p", "n", store=file_store)
    with pytest.raises(UsageError, match="invalid name"):
        Dataset.squash("..", [ds.id], store=file_store)
    assert [v.ref for v in Dataset.search(store=file_store)] == ["p/n@1.0.0"]  # nothing else was made


def test_the_store_refuses_keys_that_leave_their_place(tmp_path):
    store = Store.open(f"file://{tmp_path}/store", create=True)
    for project, name, version in ((".", "n", "1.0.0"), ("p", "..", "1.0.0"), ("p", "n", ".."), ("", "n", "1")):
        with pytest.raises(UsageError, match="cannot name anything in the store"):
            store.claim_version_number(project, name, version, "0" * 32)
        store.release_version_number(project, name, version)  # nothing was claimed there: nothing to do
        assert store.version_number_holder(project, name, version) is None
    assert store.claimed_version_numbers("..", "..") == []
    assert sorted(os.listdir(tmp_path)) == ["home", "store"]


# -- a version record that cannot be read --------------------------------------------------------


@pytest.fixture
def two_versions(tmp_path, file_store):
    make_tree(tmp_path / "v1", {"a": b"first"})
    make_tree(tmp_path / "v2", {"a": b"second"})
    first, _ = Dataset.sync(str(tmp_path / "v1"), "p", "n", store=file_store)
    second, _ = Dataset.sync(str(tmp_path / "v2"), "p", "n", store=file_store)
    return first, second, file_store[len("file://"):]


def _truncate_record(root, dataset_id):
    path = f"{root}/datasets/{dataset_id}/version.json"
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def test_a_corrupt_latest_record_is_an_error_not_a_rollback(two_versions, tmp_path):
    first, second, root = two_versions
    _truncate_record(root, second.id)
    env = {"DSFS_STORE": f"file://{root}"}
    proc = run_cli("download", "p/n", tmp_path / "out", env=env)
    assert proc.returncode == 8 and "Traceback" not in proc.stderr, proc.stderr
    assert f"p/n@1.0.1: version record of dataset {second.id} is corrupt" in proc.stderr
    assert not (tmp_path / "out" / "a").exists()
    with pytest.raises(CorruptData, match=second.id):
        Dataset.get("p/n", store=env["DSFS_STORE"])
    with pytest.raises(CorruptData, match=second.id):
        Dataset.get("p/n@1.0.1", store=env["DSFS_STORE"])
    with pytest.raises(CorruptData, match=second.id):
        Dataset.get(project="p", name="n", store=env["DSFS_STORE"])
    assert Dataset.get("p/n@1.0.0", store=env["DSFS_STORE"]).read_file("a") == b"first"  # named: still served

    for args in (("search",), ("search", "--json"), ("versions", "p/n")):
        proc = run_cli(*args, env=env)
        assert proc.returncode == 0 and first.id in proc.stdout and second.id not in proc.stdout
        assert f"warning: not listed (it may match): version record of dataset {second.id} is corrupt" in proc.stderr


def test_a_corrupt_older_record_does_not_hide_the_latest(two_versions):
    first, second, root = two_versions
    _truncate_record(root, first.id)
    assert Dataset.get("p/n", store=f"file://{root}").id == second.id  # the answer does not depend on it
    unreadable = {}
    assert [v.id for v in Dataset.search(store=f"file://{root}", unreadable=unreadable)] == [second.id]
    assert list(unreadable) == [first.id]

"""The command line: the authoring workflow, JSON output, and one clear line per user error."""

import json
import os

import pytest

from conftest import make_tree, run_cli


def test_workflow_and_json(tmp_path, dsfs, memory_store):
    make_tree(tmp_path / "d", {"imgs/a.jpg": b"a" * 100, "imgs/b.jpg": b"b" * 200, "labels.csv": b"x,y\n"})
    r = dsfs("--store", memory_store, "create", "--project", "vision", "--name", "cats", "--tags", "raw", "v1")
    assert r.code == 0, r.err
    ds_id = r.out.strip()
    assert len(ds_id) == 32
    assert dsfs("--store", memory_store, "add", "--files", tmp_path / "d").code == 0
    r = dsfs("--store", memory_store, "close")
    assert r.code == 0 and "3 file(s)" in r.out
    r = dsfs("--store", memory_store, "list", "--json", "--filter", "imgs")
    assert [f["path"] for f in json.loads(r.out)] == ["imgs/a.jpg", "imgs/b.jpg"]
    assert json.loads(r.out)[1]["size"] == 200
    r = dsfs("--store", memory_store, "show", ds_id, "--json")
    shown = json.loads(r.out)
    assert shown["state"] == "final" and shown["tags"] == ["raw", "v1"] and shown["stats"]["files"] == 3
    r = dsfs("--store", memory_store, "search", "--tags", "raw", "--json")
    assert [v["id"] for v in json.loads(r.out)] == [ds_id]
    r = dsfs("--store", memory_store, "search")
    assert ds_id in r.out and "vision" in r.out  # a table with full ids
    assert dsfs("--store", memory_store, "metadata", "set", "classes", '["cat"]').code == 0
    assert json.loads(dsfs("--store", memory_store, "metadata", "get", "classes").out) == ["cat"]
    r = dsfs("--store", memory_store, "cat", "labels.csv")
    assert r.out == "x,y\n"
    assert dsfs("--store", memory_store, "publish").code == 0

    r = dsfs("--store", memory_store, "create", "--project", "vision", "--name", "cats", "--parents", "vision/cats")
    child = r.out.strip()
    assert dsfs("--store", memory_store, "remove", "--files", "imgs/a.jpg").code == 0
    make_tree(tmp_path / "e", {"more.jpg": b"m"})
    assert dsfs("--store", memory_store, "add", "--files", tmp_path / "e", "--dataset-folder", "imgs").code == 0
    assert dsfs("--store", memory_store, "upload", "--max-workers", "2").code == 0
    assert dsfs("--store", memory_store, "close").code == 0
    r = dsfs("--store", memory_store, "list", "--modified", "--json", "--id", child)
    assert json.loads(r.out) == [{"change": "removed", "path": "imgs/a.jpg"},
                                 {"change": "added", "path": "imgs/more.jpg"}]
    r = dsfs("--store", memory_store, "show", "vision/cats", "--json")
    assert json.loads(r.out)["id"] == child and json.loads(r.out)["version"] == "1.0.1"
    assert dsfs("--store", memory_store, "rename", "--project", "vision", "--name", "cats", "--new-name", "felines").code == 0
    assert dsfs("--store", memory_store, "move", "--project", "vision", "--name", "felines", "--new-project", "zoo").code == 0
    assert json.loads(dsfs("--store", memory_store, "show", "zoo/felines", "--json").out)["id"] == child
    r = dsfs("--store", memory_store, "delete", "--id", ds_id)
    assert r.code == 4 and "parent or source of 1" in r.err
    assert dsfs("--store", memory_store, "delete", "--id", child).code == 0
    assert dsfs("--store", memory_store, "delete", "--id", ds_id).code == 0
    assert json.loads(dsfs("--store", memory_store, "search", "--json").out) == []


def _assert_one_line_error(proc, code, *words):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dsfs: error: "), proc.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.fixture
def local(tmp_path):
    """A file:// store with one final dataset and one draft, for subprocess tests."""
    store = f"file://{tmp_path}/store"
    make_tree(tmp_path / "d", {"f.txt": b"data"})
    env = {"DSFS_STORE": store}
    final = run_cli("create", "--project", "p", "--name", "n", env=env).stdout.strip()
    run_cli("add", "--files", tmp_path / "d", env=env)
    assert run_cli("close", env=env).returncode == 0
    draft = run_cli("create", "--project", "p", "--name", "n", env=env).stdout.strip()
    return {"env": env, "final": final, "draft": draft, "root": tmp_path}


def test_user_errors_are_one_line(local):
    env, final, draft, root = local["env"], local["final"], local["draft"], local["root"]
    _assert_one_line_error(run_cli("show", "f" * 32, env=env), 3, "no dataset with id")
    _assert_one_line_error(run_cli("show", "p/missing", env=env), 3, "p/missing")
    _assert_one_line_error(run_cli("show", "garbage", env=env), 3, "neither a dataset id")
    _assert_one_line_error(run_cli("add", "--files", root / "nope.txt", env=env), 2, "nope.txt")
    _assert_one_line_error(run_cli("add", "--files", f"{root}/d/*.zzz", env=env), 2, "no files match")
    _assert_one_line_error(run_cli("remove", "--files", "nothing/*", env=env), 2, "no files")
    _assert_one_line_error(run_cli("close", "--id", final, env=env), 4, "already final")
    _assert_one_line_error(run_cli("add", "--files", root / "d", "--id", final, env=env), 4, "cannot change")
    _assert_one_line_error(run_cli("remove", "--files", "f.txt", "--id", final, env=env), 4, "cannot change")
    _assert_one_line_error(run_cli("create", "--project", "p", "--name", "c", "--parents", draft, env=env), 4, "draft")
    _assert_one_line_error(run_cli("create", "--project", "p", "--name", "c", "--parents", "0" * 32, env=env), 3)
    _assert_one_line_error(run_cli("create", "--project", "p", "--name", "n", "--version", "1.0.0", env=env), 5,
                           "already exists")
    _assert_one_line_error(run_cli("cat", "nope.txt", "--id", final, env=env), 2, "no file")
    _assert_one_line_error(run_cli("publish", "--id", draft, env=env), 4, "draft")
    # nothing above changed the store: the final version still reads, the draft is still a draft
    assert run_cli("cat", "f.txt", "--id", final, env=env).stdout == "data"
    assert json.loads(run_cli("show", draft, "--json", env=env).stdout)["state"] == "draft"


def test_no_current_dataset(tmp_path):
    _assert_one_line_error(run_cli("close", env={"DSFS_STORE": f"file://{tmp_path}/s"}), 2, "no current dataset")


def test_missing_store_is_not_created_by_readers(tmp_path):
    _assert_one_line_error(run_cli("--store", f"file://{tmp_path}/none", "search"), 7, "no dsfs store")
    assert not (tmp_path / "none").exists()


def _commands(group, prefix=()):
    import click

    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def test_every_command_takes_the_global_options_after_it(tmp_path, dsfs, file_store):
    """`dsfs create --store X -v` as `dsfs --store X -v create`; clearml-data takes --verbose on every
    command, and users put options where they come to mind."""
    from dsfs.cli.main import cli

    for path, command in _commands(cli):
        names = {name for param in command.params for name in getattr(param, "opts", [])}
        assert {"--store", "--datastore", "--verbose"} <= names, " ".join(path)
    r = dsfs("create", "--project", "p", "--name", "n", "--store", file_store, "-v")
    assert r.code == 0, r.err
    ds_id = r.out.strip()
    make_tree(tmp_path / "d", {"a": b"1"})
    assert dsfs("add", "--files", tmp_path / "d", "--store", file_store, "--verbose").code == 0
    assert dsfs("close", "--id", ds_id, "--store", file_store).code == 0
    r = dsfs("--store", "memory://nothing-here", "list", "--id", ds_id, "--store", file_store)
    assert r.code == 0 and r.out.split()[-1] == "a"  # given after the command, it wins
    r = dsfs("list", "--id", ds_id, "--datastore", "nope")
    assert r.code != 0 and "unknown datastore 'nope'" in r.err


def test_storage_disable_upload_and_sync_into_a_draft(tmp_path, dsfs, file_store):
    """clearml-data's --storage: the closed version ends up in that store too (with what it needs);
    close --disable-upload refuses pending files; sync --id fills an existing draft."""
    other = f"file://{tmp_path}/other"
    make_tree(tmp_path / "d", {"a": b"1", "b": b"2"})
    s = ("--store", file_store)
    ds_id = dsfs(*s, "create", "--project", "p", "--name", "n").out.strip()
    assert dsfs(*s, "add", "--files", tmp_path / "d").code == 0
    r = dsfs(*s, "close", "--disable-upload")
    assert r.code == 4 and "not uploaded" in r.err
    assert dsfs(*s, "upload", "--storage", other).code == 0  # remembered by the draft until it is closed
    r = dsfs(*s, "close")
    assert r.code == 0 and f"pushed to {other}" in r.err
    assert dsfs("--store", other, "cat", "--id", ds_id, "b").out == "2"
    third = f"file://{tmp_path}/third"
    child = dsfs(*s, "create", "--project", "p", "--name", "n", "--parents", ds_id).out.strip()
    (tmp_path / "d" / "a").write_bytes(b"changed")
    r = dsfs(*s, "sync", "--folder", tmp_path / "d", "--id", child, "--storage", third)
    assert r.code == 0 and "0 added, 1 modified" in r.err
    assert dsfs("--store", third, "cat", "--id", child, "a").out == "changed"
    assert dsfs("--store", third, "cat", "--id", ds_id, "b").out == "2"  # the parent came along
    r = dsfs(*s, "squash", "--name", "flat", "--ids", child, "--storage", other)
    assert r.code == 0 and dsfs("--store", other, "cat", "--id", r.out.strip(), "a").out == "changed"
    assert dsfs(*s, "sync", "--folder", tmp_path / "d", "--project", "p", "--name", "n", "--skip-close",
                "--storage", other).code == 2
    draft = dsfs(*s, "create", "--project", "p", "--name", "n", "--parents", child).out.strip()
    r = dsfs(*s, "sync", "--folder", tmp_path / "d", "--id", draft, "--name", "other")
    assert r.code == 2 and "its own" in r.err


DATASET_COMMANDS_WITH_OTHER_ARGUMENTS = {"cat", "metadata set", "metadata get", "sync"}  # --id only: their
# arguments are a path, a key and value, a folder; clearml-data names the dataset with --id there too


def test_every_dataset_command_takes_it_positionally_and_as_id(tmp_path, dsfs, file_store):
    import click

    from dsfs.cli.main import cli

    for path, command in _commands(cli):
        name = " ".join(path)
        options = {o for p in command.params if isinstance(p, click.Option) for o in p.opts}
        arguments = [p for p in command.params if isinstance(p, click.Argument)]
        if "--id" not in options:
            assert not any("DATASET" in (a.metavar or "") for a in arguments), name
            continue
        if name not in DATASET_COMMANDS_WITH_OTHER_ARGUMENTS:
            metavar = arguments[0].metavar or "" if arguments else ""
            assert ("DATASET" in metavar or metavar == "PROJECT/NAME") and not arguments[0].required, name
    make_tree(tmp_path / "d", {"a": b"1"})
    s = ("--store", file_store)
    ds_id = dsfs(*s, "create", "--project", "p", "--name", "n").out.strip()
    assert dsfs(*s, "add", ds_id, "--files", tmp_path / "d").code == 0
    assert dsfs(*s, "close", ds_id).code == 0
    assert json.loads(dsfs(*s, "show", "--id", "p/n", "--json").out)["id"] == ds_id
    assert dsfs(*s, "list", "p/n").out.split()[-1] == "a"
    assert dsfs(*s, "verify", ds_id, "--folder", tmp_path / "d").code == 0
    assert dsfs(*s, "download", "--id", ds_id, tmp_path / "out").code == 0 and (tmp_path / "out" / "a").exists()
    assert dsfs(*s, "download", ds_id, tmp_path / "out2").code == 0
    assert dsfs(*s, "get", "--id", ds_id).code == 0
    assert ds_id in dsfs(*s, "versions", "--id", "p/n").out
    assert dsfs(*s, "push", "--id", ds_id, "--to", f"file://{tmp_path}/other").code == 0
    r = dsfs(*s, "show", ds_id, "--id", "p/other")
    assert r.code == 2 and "name the dataset once" in r.err
    r = dsfs(*s, "download", "--id", ds_id)
    assert r.code == 2 and "TARGET" in r.err


def test_one_glob_rule_and_a_partial_search_name(tmp_path, dsfs, file_store):
    """remove --non-recursive '*.csv' takes the top-level table only: '*' never crosses a '/'
    (wcmatch's glob, the rule of every wildcard); `**` crosses folders; search --name takes a part
    of a name, as clearml-data's does."""
    make_tree(tmp_path / "d", {"t.csv": b"1", "deep/er/table.csv": b"2", "deep/x.txt": b"3", "deep/y.csv": b"4"})
    s = ("--store", file_store)
    ds_id = dsfs(*s, "create", "--project", "p", "--name", "cats-2024").out.strip()
    assert dsfs(*s, "add", "--files", tmp_path / "d").code == 0
    assert dsfs(*s, "remove", "--files", "*.csv", "--non-recursive").code == 0
    assert dsfs(*s, "close").code == 0
    listed = json.loads(dsfs(*s, "list", ds_id, "--json").out)
    assert [f["path"] for f in listed] == ["deep/er/table.csv", "deep/x.txt", "deep/y.csv"]
    r = dsfs(*s, "list", ds_id, "--filter", "deep/**/*.csv", "--json")
    assert [f["path"] for f in json.loads(r.out)] == ["deep/er/table.csv", "deep/y.csv"]
    assert [v["id"] for v in json.loads(dsfs(*s, "search", "--name", "CATS", "--json").out)] == [ds_id]
    assert json.loads(dsfs(*s, "search", "--name", "dogs", "--json").out) == []
    assert [v["id"] for v in json.loads(dsfs(*s, "search", "--name", "cats-*", "--json").out)] == [ds_id]


def test_small_consistency_fixes(tmp_path, dsfs, file_store):
    """list --project --name; get refuses --copy with --link; deleting the current dataset clears
    "current"; a mistyped --input mode names the valid ones."""
    make_tree(tmp_path / "d", {"a": b"1"})
    s = ("--store", file_store)
    ds_id = dsfs(*s, "create", "--project", "p", "--name", "n").out.strip()
    assert dsfs(*s, "add", "--files", tmp_path / "d").code == 0 and dsfs(*s, "close").code == 0
    assert dsfs(*s, "list", "--project", "p", "--name", "n").out.split()[-1] == "a"
    assert dsfs(*s, "list", "--project", "p").code == 2
    r = dsfs(*s, "get", ds_id, "--copy", tmp_path / "c", "--link", tmp_path / "l")
    assert r.code == 2 and "choose one" in r.err and not (tmp_path / "c").exists()
    draft = dsfs(*s, "create", "--project", "p", "--name", "other").out.strip()
    assert dsfs(*s, "delete", draft).code == 0
    r = dsfs(*s, "show")
    assert r.code == 2 and "no current dataset" in r.err
    r = dsfs(*s, "run", "--input", "train=p/n:mnt", "--", "true")
    assert r.code == 2 and "'mnt' is not a mode" in r.err and "mount|:download" in r.err


def test_a_missing_cloud_library_names_the_extra(tmp_path):
    import subprocess
    import sys

    code = ("import sys; sys.modules['s3fs'] = None; sys.modules['gcsfs'] = None; "  # as if not installed
            "from dsfs.cli.main import main; main(sys.argv[1:])")
    for url, extra in (("s3://bucket/x", "s3"), ("gs://bucket/x", "gcs")):
        r = subprocess.run([sys.executable, "-c", code, "--store", url, "search"], capture_output=True, text=True)
        assert r.returncode == 2, r.stderr
        assert f"pip install 'dsfs[{extra}]'" in r.stderr and "Traceback" not in r.stderr


def test_a_gcs_credentials_file_that_does_not_exist_is_named(tmp_path, dsfs, monkeypatch):
    missing = tmp_path / "no-such-key.json"
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(missing))
    r = dsfs("--store", "gs://bucket/x", "search")
    assert r.code == 2 and str(missing) in r.err and "GOOGLE_APPLICATION_CREDENTIALS" in r.err
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
    assert dsfs("datastore", "register", "lake", "gs://bucket/x", "-o", f"token={missing}").code == 0
    r = dsfs("--datastore", "lake", "search")
    assert r.code == 2 and str(missing) in r.err and "token option" in r.err


def test_every_help_has_an_example_that_parses(tmp_path, monkeypatch):
    """Each command's --help ends with an example, and the example is a valid command line
    (click parses it: its command and options exist)."""
    import re
    import shlex

    from dsfs.cli.main import cli

    monkeypatch.chdir(tmp_path)
    for folder in ("data", "raw", "cats"):  # the examples' local folders
        (tmp_path / folder).mkdir()

    for path, command in _commands(cli):
        found = re.search(r"Example: `([^`]*)`", command.help or "")
        assert found, " ".join(path)
        text = found.group(1)
        if text.startswith("eval"):
            text = text[text.index("dsfs"):].rstrip(')"')
        words = shlex.split(text.split(" > ")[0])
        assert words[0] == "dsfs", text
        at = words.index(path[0])
        assert tuple(words[at:at + len(path)]) == path, (path, text)  # the example is of this command
        cli.make_context("dsfs", [*words[1:at], *path])  # the group's options before it parse
        command.make_context(path[-1], words[at + len(path):])  # raises on an unknown option or a bad value


def test_every_command_answers_in_json(tmp_path, dsfs, file_store):
    """--json on every command (before or after it), actions included, in one style: numbers as
    numbers, modes as integers, mtimes and a `digest` field in listings."""
    from dsfs.cli.main import cli

    for path, command in _commands(cli):
        names = {o for p in command.params for o in getattr(p, "opts", [])}
        assert ("--json" in names) == (path != ("run",)), path
    make_tree(tmp_path / "d", {"a.txt": b"hello", "sub/b": b"x" * 10})
    os.chmod(tmp_path / "d" / "a.txt", 0o755)
    s = ("--store", file_store)

    def js(*args):
        r = dsfs(*s, *args)
        assert r.code == 0, (args, r.err)
        return json.loads(r.out)

    created = js("create", "--project", "p", "--name", "n", "--json")
    ds_id = created["id"]
    assert created["state"] == "draft"
    assert js("add", "--files", tmp_path / "d", "--json")["added"] == 2
    assert js("upload", "--json")["files"] == 2
    closed = json.loads(dsfs("--json", *s, "close").out)  # the group's --json
    assert closed["state"] == "final" and closed["stats"]["files"] == 2 and closed["pushed"] is None
    listed = js("list", ds_id, "--json")
    assert listed[0]["mode"] == 0o755 and isinstance(listed[0]["mtime_ns"], int) and len(listed[0]["digest"]) == 64
    assert js("publish", ds_id, "--json")["state"] == "published"
    got = js("get", ds_id, "--json")
    assert os.path.isdir(got["path"])
    down = js("download", ds_id, tmp_path / "out", "--json")
    assert (down["written"], down["bytes"]) == (2, 15)
    assert js("metadata", "set", "k", "[1]", "--id", ds_id, "--json")["value"] == [1]
    assert js("cat", "a.txt", "--id", ds_id, "--json")["data_base64"] == "aGVsbG8="
    manifest = js("export", ds_id, "--format", "manifest-json", "-o", tmp_path / "m.json", "--json")
    assert manifest["files"] == 2
    assert json.loads((tmp_path / "m.json").read_text())["files"][0]["mode"] == 0o755
    assert isinstance(js("cache", "prune", "--to", "1G", "--json")["freed"], int)
    env = js("datastore", "register", "lake", f"file://{tmp_path}/lake", "--json")
    assert env["name"] == "lake"
    assert js("push", ds_id, "--to", "lake", "--json")["versions_sent"] == 1
    assert js("delete", ds_id, "--json", "--store", f"file://{tmp_path}/lake")["deleted"] == ds_id


def test_sync_folder_with_a_wildcard_syncs_only_those_files(tmp_path, dsfs, file_store):
    """clearml-data's `sync --folder ~/data/*.jpg`: the folder's .jpg files are synced (added,
    changed, removed); the parent's other files stay as they are, whatever the folder holds."""
    make_tree(tmp_path / "data", {"a.jpg": b"1", "b.jpg": b"2", "notes.txt": b"n", "sub/c.jpg": b"3"})
    s = ("--store", file_store)
    base = dsfs(*s, "sync", "--folder", tmp_path / "data", "--project", "p", "--name", "n").out.strip()
    (tmp_path / "data" / "a.jpg").write_bytes(b"changed")
    (tmp_path / "data" / "b.jpg").unlink()
    (tmp_path / "data" / "notes.txt").unlink()  # not a .jpg: the version keeps it
    (tmp_path / "data" / "new.jpg").write_bytes(b"4")
    r = dsfs(*s, "sync", "--folder", f"{tmp_path}/data/*.jpg", "--project", "p", "--name", "n", "--json")
    assert r.code == 0, r.err
    out = json.loads(r.out)
    assert out["changes"]["added"] == 1 and out["changes"]["modified"] == 1 and out["changes"]["removed"] == 1
    files = [f["path"] for f in json.loads(dsfs(*s, "list", out["id"], "--json").out)]
    assert files == ["a.jpg", "new.jpg", "notes.txt", "sub/c.jpg"]
    assert base != out["id"]


# clearml-data's option tables (../shared/seeds/000_*.txt), command by command: each option is a dsfs one
CLEARML_DATA_OPTIONS = {
    "create": ["--name", "--project", "--parents", "--tags"],
    "add": ["--id", "--files", "--dataset-folder", "--non-recursive", "--verbose"],
    "remove": ["--id", "--files", "--non-recursive", "--verbose"],
    "upload": ["--id", "--storage", "--verbose"],
    "close": ["--id", "--storage", "--disable-upload", "--verbose"],
    "sync": ["--id", "--folder", "--storage", "--parents", "--project", "--name", "--tags", "--skip-close", "--verbose"],
    "list": ["--id", "--project", "--name", "--filter", "--modified"],
    "delete": ["--id", "--force"],
    "search": ["--ids", "--project", "--name", "--tags"],
    "compare": ["--source", "--target", "--verbose"],
    "squash": ["--name", "--ids", "--storage", "--verbose"],
    "verify": ["--id", "--folder", "--filesize", "--verbose"],
    "get": ["--id", "--copy", "--link", "--overwrite", "--verbose"],
    "publish": ["--id"],
}


@pytest.mark.parametrize("command,option", [(c, o) for c, opts in CLEARML_DATA_OPTIONS.items() for o in opts])
def test_every_clearml_data_option_exists(command, option):
    from dsfs.cli.main import cli

    names = {name for param in cli.commands[command].params for name in getattr(param, "opts", [])}
    assert option in names, f"dsfs {command} has no {option}"

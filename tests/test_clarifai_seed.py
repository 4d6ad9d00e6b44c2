"""Clarifai's dataset management (../shared/seeds/002, a portal with no code) as dsfs commands: the
mapping of docs/decisions.md, "Clarifai's dataset management in dsfs", run step by step through the
CLI on the embedded store, each step checking its effect."""

from __future__ import annotations

import json
import re
import tarfile
import zipfile
from pathlib import Path

import pytest
from conftest import make_tree, read_tree

from dsfs.cli.main import cli

DECISIONS = Path(__file__).resolve().parent.parent / "docs" / "decisions.md"
SECTION = "## Clarifai's dataset management in dsfs"

INPUTS = {"a.jpg": b"cat " * 100, "b.jpg": b"dog " * 100}
MORE = {"c.jpg": b"bird " * 100}
TO_LABEL = {"t.jpg": b"to label " * 100, "a.jpg": b"relabelled cat"}


def _json(result):
    assert result.code == 0, result.err
    return json.loads(result.out)


def _files(dsfs, ref: str) -> dict[str, int]:
    return {f["path"]: f["size"] for f in _json(dsfs("list", ref, "--json"))}


def test_the_mapping_names_real_commands():
    """Every `dsfs COMMAND` the section names is a command of the CLI."""
    text = DECISIONS.read_text()
    section = text[text.index(SECTION):]
    section = section[:section.find("\n## ", 1)] if "\n## " in section[1:] else section
    named = set(re.findall(r"`dsfs (\w[\w-]*)", section))
    assert {"create", "add", "close", "search", "versions", "list", "export", "show", "delete", "gc"} <= named
    assert named <= set(cli.commands), named - set(cli.commands)


@pytest.mark.slow  # about 0.7 s on its own (tests/README.md: the fast tier stays under a minute)
def test_clarifai_portal_actions_end_to_end(dsfs, tmp_path):
    make_tree(tmp_path / "inputs", INPUTS)
    make_tree(tmp_path / "more", MORE)
    make_tree(tmp_path / "tolabel", TO_LABEL)

    # Create a new dataset: an ID (here project/name) and a short description
    r = dsfs("create", "--project", "app", "--name", "training", "--description", "images to train on")
    assert r.code == 0, r.err
    first = r.out.strip()
    shown = _json(dsfs("show", "--json"))
    assert (shown["id"], shown["description"], shown["state"]) == (first, "images to train on", "draft")

    # Add inputs
    assert dsfs("add", "--files", tmp_path / "inputs", "--dataset-folder", "inputs").code == 0

    # New version, then "Update status": the draft becomes an immutable version with its metrics
    assert dsfs("close").code == 0
    shown = _json(dsfs("show", "app/training", "--json"))
    assert (shown["id"], shown["state"], shown["version"]) == (first, "final", "1.0.0")
    assert shown["stats"]["files"] == 2 and shown["stats"]["bytes"] == sum(map(len, INPUTS.values()))
    assert dsfs("add", "--files", tmp_path / "more").code == 4  # a version does not change

    # Update the version: a child version with the new inputs
    r = dsfs("create", "--project", "app", "--name", "training", "--parents", "app/training")
    second = r.out.strip()
    assert dsfs("add", "--files", tmp_path / "more", "--dataset-folder", "inputs").code == 0
    assert dsfs("close").code == 0
    shown = _json(dsfs("show", "app/training", "--json"))
    assert (shown["id"], shown["version"], shown["parents"]) == (second, "1.0.1", [first])
    assert shown["stats"]["new_bytes"] == len(MORE["c.jpg"])  # only the new input was stored
    versions = _json(dsfs("versions", "app/training", "--json"))
    assert [v["version"] for v in versions] == ["1.0.0", "1.0.1"]

    # Selected version: any version by its number
    assert _files(dsfs, "app/training@1.0.0") == {"inputs/a.jpg": 400, "inputs/b.jpg": 400}
    assert _files(dsfs, "app/training") == {"inputs/a.jpg": 400, "inputs/b.jpg": 400, "inputs/c.jpg": 500}

    # Get a list of datasets
    assert dsfs("create", "--project", "app", "--name", "tolabel-1").code == 0
    assert dsfs("add", "--files", tmp_path / "tolabel", "--dataset-folder", "inputs").code == 0
    assert dsfs("close").code == 0
    tolabel = _json(dsfs("show", "app/tolabel-1", "--json"))["id"]
    listed = _json(dsfs("search", "--project", "app", "--json"))
    assert sorted((v["name"], v["version"]) for v in listed) == [("tolabel-1", "1.0.0"), ("training", "1.0.0"),
                                                                 ("training", "1.0.1")]

    # Export: the inputs as tar and zip, their list as JSON
    expected = {f"inputs/{k}": v for k, v in {**INPUTS, **MORE}.items()}
    assert dsfs("export", "app/training", "--format", "tar", "-o", tmp_path / "training.tar").code == 0
    with tarfile.open(tmp_path / "training.tar") as tar:
        assert {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()} == expected
    assert dsfs("export", "app/training", "--format", "zip", "-o", tmp_path / "training.zip").code == 0
    with zipfile.ZipFile(tmp_path / "training.zip") as zf:
        assert {n: zf.read(n) for n in zf.namelist() if not n.endswith("/")} == expected
    as_json = _json(dsfs("list", "app/training", "--json"))
    assert {f["path"]: f["size"] for f in as_json} == {k: len(v) for k, v in expected.items()}
    assert all(re.fullmatch(r"[0-9a-f]{64}", f["digest"]) for f in as_json)
    assert dsfs("export", "app/training", "--format", "manifest-json", "-o", tmp_path / "files.json").code == 0
    manifest = json.loads((tmp_path / "files.json").read_text())
    assert manifest["dataset"] == second and [f["path"] for f in manifest["files"]] == sorted(expected)

    # Copy a dataset ID
    assert _json(dsfs("show", "app/training", "--json"))["id"] == second
    r = dsfs("show", "app/training@1.0.0")
    assert r.code == 0 and first in r.out

    # Merge datasets: tolabel-1's inputs into training, as a new version of training
    assert dsfs("create", "--project", "app", "--name", "training", "--parents", "app/training",
                "app/tolabel-1").code == 0
    assert dsfs("close").code == 0
    merged = _json(dsfs("show", "app/training", "--json"))
    assert merged["version"] == "1.0.2" and merged["parents"] == [second, tolabel]
    assert merged["stats"]["new_bytes"] == 0  # nothing copied
    assert dsfs("download", "app/training", tmp_path / "merged").code == 0
    assert read_tree(tmp_path / "merged") == {**expected, "inputs/t.jpg": TO_LABEL["t.jpg"],
                                              "inputs/a.jpg": TO_LABEL["a.jpg"]}  # the later parent wins

    # Delete datasets: a version others build on is refused; children first, then the space back
    r = dsfs("delete", "app/tolabel-1")
    assert r.code == 4 and merged["id"] in r.err
    assert dsfs("delete", "app/training@1.0.2").code == 0
    assert dsfs("delete", "app/tolabel-1").code == 0
    assert dsfs("show", "app/tolabel-1").code == 3
    names = {(v["name"], v["version"]) for v in _json(dsfs("search", "--project", "app", "--json"))}
    assert names == {("training", "1.0.0"), ("training", "1.0.1")}
    assert dsfs("gc").code == 0
    assert dsfs("download", "app/training", tmp_path / "after").code == 0
    assert read_tree(tmp_path / "after") == expected  # what is left still reads whole


def test_auto_generated_versions_are_only_datastore_snapshots(dsfs, tmp_path):
    """Clarifai makes "auto-generated" versions; dsfs only snapshots a datastore path used as an input."""
    make_tree(tmp_path / "raw", INPUTS)
    assert dsfs("datastore", "register", "lake", f"file://{tmp_path}/lake").code == 0
    assert dsfs("datastore", "upload", "lake", tmp_path / "raw", "--target-path", "incoming").code == 0
    assert _json(dsfs("search", "--json")) == []  # uploading made no version
    assert dsfs("download", "datastore:lake/incoming", tmp_path / "out").code == 0
    made = _json(dsfs("search", "--json"))
    assert [(v["project"], v["tags"]) for v in made] == [("datastore-snapshots", ["snapshot"])]
    assert read_tree(tmp_path / "out") == INPUTS

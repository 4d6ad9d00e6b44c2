"""Previews and statistics (dsfs.authoring.previews): statistics made at close from the file list,
the ClearML logger API round trip through the store and push, what delete and gc do with them,
limits, and previews a store holds that dsfs did not write."""

from __future__ import annotations

import io
import json
import os

import pytest

from dsfs import Dataset, Store
from dsfs.authoring import previews
from dsfs.errors import CorruptData, UsageError
from conftest import make_tree
from servers import required_library

SECRET_ROW = b"patient-7f3a,diagnosis-42"


@pytest.fixture
def version(tmp_path, file_store):
    make_tree(tmp_path / "src", {"tables/a.csv": b"name,value\n" + SECRET_ROW + b"\n",
                                 "tables/b.CSV": b"x\n1\n", "imgs/x.png": os.urandom(3000),
                                 "README": b"read me", "deep/er/z.bin": os.urandom(70000)})
    ds = Dataset.create("p", "n", store=file_store)
    ds.add_files(str(tmp_path / "src"))
    ds.finalize(preview="stats")  # the tables' automatic previews: test_automatic_table_previews
    return Dataset.get(ds.id, store=file_store)


def test_statistics_at_close_from_the_file_list(version, file_store):
    items = version.previews()
    assert [i["kind"] for i in items] == ["statistics"]
    stats = version.statistics()
    assert stats["files"] == 5 and stats["bytes"] == version.info.stats["bytes"]
    by_ext = {r["name"]: (r["files"], r["bytes"]) for r in stats["by_extension"]}
    assert by_ext[".csv"] == (2, len(b"name,value\n" + SECRET_ROW + b"\n") + 4)  # .CSV counts as .csv
    assert by_ext[".png"] == (1, 3000) and by_ext["(none)"] == (1, 7) and by_ext[".bin"] == (1, 70000)
    assert {r["name"]: r["files"] for r in stats["by_folder"]} == {"tables": 2, "imgs": 1, "deep": 1, "(top level)": 1}
    assert sum(b["files"] for b in stats["size_histogram"]) == 5
    assert all(b["from"] <= 70000 < b["to"] for b in stats["size_histogram"] if b["from"] >= 65536)
    assert stats["changes"] == {"added": 5, "modified": 0, "removed": 0}
    # no sample of the data is stored: only paths' extensions, folders and sizes
    store = Store.open(file_store)
    for key in store.preview_keys(version.id):
        assert SECRET_ROW not in store._get(key) and b"patient" not in store._get(key)


def test_file_statistics_group_by_top_folder_and_extension_in_any_order():
    """The grouping looks a top folder up once per run of its files; the result must not depend on
    the order, on top-level files between folders, or on names that are all extension."""
    files = [("b/x.TXT", 3), ("a.txt", 5), ("b/y.txt", 7), (".bashrc", 1), ("b/c/d.tar.gz", 11),
             ("top", 2), ("b.d/e", 13), ("b", 0)]
    expected_ext = {".txt": (3, 15), "(none)": (4, 16), ".gz": (1, 11)}
    expected_folder = {"b": (3, 21), "(top level)": (4, 8), "b.d": (1, 13)}
    for order in (files, sorted(files), sorted(files, reverse=True)):
        stats = previews.file_statistics(order)
        assert {r["name"]: (r["files"], r["bytes"]) for r in stats["by_extension"]} == expected_ext
        assert {r["name"]: (r["files"], r["bytes"]) for r in stats["by_folder"]} == expected_folder
        assert (stats["files"], stats["bytes"]) == (8, 42)
        assert {(b["from"], b["to"]): b["files"] for b in stats["size_histogram"]} == {
            (0, 1): 1, (1, 2): 1, (2, 4): 2, (4, 8): 2, (8, 16): 2}


def test_child_statistics_count_its_changes_and_recompute(version, tmp_path, file_store, dsfs):
    make_tree(tmp_path / "more", {"tables/c.csv": b"1"})
    child = Dataset.create("p", "n", parents=[version.id], store=file_store)
    child.add_files(str(tmp_path / "more"))
    child.remove_files("README")
    child.finalize(preview="stats")
    r = dsfs("stats", child.id, "--store", file_store, "--json")
    assert r.code == 0, r.err
    stats = json.loads(r.out)["statistics"]
    assert stats["files"] == 5 and stats["changes"] == {"added": 1, "modified": 0, "removed": 1}
    r = dsfs("stats", "--id", child.id, "--store", file_store, "--recompute")
    assert r.code == 0 and "5 file(s)" in r.out and "added 1" in r.out
    assert [i["kind"] for i in Dataset.get(child.id, store=file_store).previews()] == ["statistics"] * 2


def test_logger_round_trip_and_push(version, tmp_path, file_store, moto_server, dsfs):
    logger = version.get_logger()
    logger.report_table("sample", "rows", table_plot=[["x", "y"], [1, 2.5], [3, None]])
    logger.report_table("columns", "dict", table_plot={"a": [1, 2], "b": ["u", "v"]})
    (tmp_path / "t.tsv").write_text("k\tv\nq\t9\n")
    logger.report_table("file", "tsv", csv=str(tmp_path / "t.tsv"))
    import pandas as pd  # a test dependency: ClearML's examples pass DataFrames and Series

    logger.report_table("frame", "pandas", table_plot=pd.DataFrame({"a": [1, 2], "b": [0.5, None], "c": ["u", "v"]}))
    counts = pd.Series([10, 3, 7], index=["cat", "dog", "bird"])
    logger.report_histogram("classes", "counts", values=counts, xlabels=counts.index.tolist(), yaxis="n")
    logger.report_scalar("accuracy", "baseline", 0.91, iteration=3)
    logger.report_text("collected in 2026")
    picture = os.urandom(5000)
    (tmp_path / "pic.jpg").write_bytes(picture)
    logger.report_image("examples", "first", local_path=str(tmp_path / "pic.jpg"))
    logger.report_media("audio", "clip", stream=io.BytesIO(b"RIFF...."), file_extension=".wav")

    def check(ds):
        items = {i["kind"] + ":" + i["title"]: i for i in ds.previews()}
        assert items["table:sample"]["columns"] == ["x", "y"] and items["table:sample"]["rows"] == [[1, 2.5], [3, None]]
        assert items["table:columns"]["rows"] == [[1, "u"], [2, "v"]]
        assert items["table:frame"]["columns"] == ["a", "b", "c"]
        assert items["table:frame"]["rows"] == [[1, 0.5, "u"], [2, None, "v"]]  # NaN: a missing value
        assert items["table:file"]["columns"] == ["k", "v"] and items["table:file"]["rows"] == [["q", "9"]]
        assert items["histogram:classes"]["values"] == [10, 3, 7]
        assert items["histogram:classes"]["xlabels"] == ["cat", "dog", "bird"]
        assert items["scalar:accuracy"]["value"] == 0.91 and items["scalar:accuracy"]["iteration"] == 3
        assert items["text:text"]["text"] == "collected in 2026"
        image = items["image:examples"]
        assert image["mime"] == "image/jpeg" and ds.preview_blob(image["blob"]) == picture
        assert ds.preview_blob(items["media:audio"]["blob"]) == b"RIFF...."

    check(version)
    r = dsfs("preview", version.id, "--store", file_store)
    assert r.code == 0 and "[histogram] classes / counts" in r.out and "cat" in r.out and "collected in 2026" in r.out
    url = moto_server.new_url()
    target = Store(url, **moto_server.options)
    target.check(create=True)
    result = version.push(target)
    assert result["previews_sent"] == len(version.store.preview_keys(version.id)) >= 12
    check(Dataset.get(version.id, store=target))
    version.get_logger().report_text("added after the push")
    assert version.push(target)["previews_sent"] == 1  # previews added later follow on the next push
    assert "added after the push" in [i.get("text") for i in Dataset.get(version.id, store=target).previews()]


def test_delete_removes_previews_and_gc_keeps_them(version, file_store, tmp_path):
    version.get_logger().report_text("note")
    store = Store.open(file_store)
    keys = store.preview_keys(version.id)
    assert len(keys) == 2
    from dsfs.lifecycle import sweep

    sweep.gc(store, grace=0, show_progress=False)
    assert store.preview_keys(version.id) == keys
    Dataset.delete(version.id, store=file_store)
    assert store.preview_keys(version.id) == []


def test_limits(version, tmp_path):
    logger = version.get_logger()
    with pytest.raises(UsageError, match="over the limit of 100"):
        logger.report_table("wide", "t", table_plot=[[f"c{i}" for i in range(101)], list(range(101))])
    logger.report_table("long", "t", table_plot=[["i"]] + [[i] for i in range(500)])
    long = [i for i in version.previews() if i["title"] == "long"][0]
    assert len(long["rows"]) == previews.LIMITS["rows"] and long["truncated"]
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (previews.LIMITS["blob_bytes"] + 1))
    with pytest.raises(UsageError, match="over the preview limit"):
        logger.report_image("big", "x", local_path=str(big))
    with pytest.raises(UsageError, match="one of local_path, image or url"):
        logger.report_image("none", "x")
    with pytest.raises(UsageError, match="over the limit"):
        logger.report_text("x" * (previews.LIMITS["text"] + 1))
    with pytest.raises(UsageError, match="a Pillow image or an array"):
        logger.report_image("obj", "x", image=object())
    with pytest.MonkeyPatch.context() as m:
        m.setattr(previews, "_pillow", lambda: None)
        with pytest.raises(UsageError, match=r"needs Pillow: pip install 'dsfs\[preview\]'"):
            logger.report_image("obj", "x", image=object())


def test_previews_a_store_holds_that_dsfs_did_not_write(version, file_store):
    store = Store.open(file_store)
    store._put(f"previews/{version.id}/items/{'9' * 20}-deadbeef.json", b"[1, 2, 3]")
    store._put(f"previews/{version.id}/items/{'9' * 19}8-deadbeef.json", b"{not json")
    items, notes = previews.read_items(store, version.info)
    assert [i["kind"] for i in items] == ["statistics"] and len(notes) == 2
    fake = "ab" * 32
    store._put(f"previews/{version.id}/blobs/{fake}", b"not what the name says")
    with pytest.raises(CorruptData, match="does not match its digest"):
        version.preview_blob(fake)
    with pytest.raises(CorruptData, match="not a digest"):
        version.preview_blob("../../version")


def test_automatic_table_previews(tmp_path, file_store):
    """Table files previewed at close: schema, first rows, column statistics of a bounded sample;
    a corrupt file is a note, never a failed close; `stats` and `none` store no sample."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "src"
    make_tree(src, {"a.csv": b"id,label,score\n" + b"".join(b"%d,%s,%d.5\n" % (i, b"cat" if i % 3 else b"dog", i)
                                                         for i in range(50)),
                    "b.jsonl": b'{"x": 1, "y": "u"}\n{"x": 2}\n',
                    "bad.parquet": b"PAR1 not really"})
    pq.write_table(pa.table({"n": [1.0, 2.0, None], "s": ["p", "q", "r"]}), str(src / "c.parquet"))
    np.save(src / "d.npy", np.arange(12).reshape(4, 3))
    ds = Dataset.create("p", "auto", store=file_store)
    ds.add_files(str(src))
    ds.finalize(preview="auto")
    items = {i["title"]: i for i in Dataset.get(ds.id, store=file_store).previews()}
    a = items["a.csv"]
    assert a["columns"] == ["id", "label", "score"] and a["rows"][0] == [0, "dog", 0.5] and len(a["rows"]) == 10
    stats = {c["name"]: c for c in a["column_statistics"]}
    assert stats["id"]["type"] == "number" and stats["id"]["min"] == 0 and stats["id"]["max"] == 49
    assert sum(stats["id"]["histogram"]["counts"]) == 50 and a["sample_rows"] == 50
    assert stats["label"]["frequencies"] == {"cat": 33, "dog": 17}
    assert items["b.jsonl"]["rows"] == [[1, "u"], [2, None]]
    c = {s["name"]: s for s in items["c.parquet"]["column_statistics"]}
    assert c["n"]["nulls"] == 1 and c["n"]["mean"] == 1.5 and items["c.parquet"]["rows"][2] == [None, "r"]
    assert items["d.npy"]["rows"][1] == [3, 4, 5]
    assert "bad.parquet" in items["preview notes"]["text"]
    for mode in ("stats", "none"):
        other = Dataset.create("p", mode, store=file_store)
        other.add_files(str(src))
        other.finalize(preview=mode)
        kinds = [i["kind"] for i in Dataset.get(other.id, store=file_store).previews()]
        assert kinds == (["statistics"] if mode == "stats" else [])
        store = Store.open(file_store)
        for key in store.preview_keys(other.id):
            assert b"cat" not in store._get(key) and b"label" not in store._get(key)


def _png(path, size, color=(200, 30, 30)):
    from PIL import Image

    Image.new("RGB", size, color).save(path)


def test_automatic_image_and_media_previews(tmp_path, file_store):
    """Images at close: thumbnails of the first few (served from the store, digest-checked) and
    width/height histograms of a sample, the sample recorded; a corrupt image and a decompression
    bomb are notes, never a failed close; other media are listed by path and size, not read."""
    required_library("PIL")
    from PIL import Image

    src = tmp_path / "src"
    (src / "img").mkdir(parents=True)
    for i in range(12):
        _png(src / "img" / f"{i:02d}.png", (40 + 10 * i, 30))
    Image.new("RGB", (600, 300), (0, 90, 200)).save(src / "img" / "photo.jpg", quality=80)
    (src / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    bomb = Image.new("1", (9000, 9000))  # 81 Mpx: over IMAGE_MAX_PIXELS, a few KiB as a bilevel PNG
    bomb.save(src / "img" / "bomb.png")
    (src / "audio").mkdir()
    (src / "audio" / "a.wav").write_bytes(b"RIFF" + os.urandom(100))
    ds = Dataset.create("p", "images", store=file_store)
    ds.add_files(str(src))
    ds.finalize()  # no mode given: the project sets none, so "auto"
    got = Dataset.get(ds.id, store=file_store)
    items = got.previews()
    thumbs = [i for i in items if i["kind"] == "image"]
    assert [t["title"] for t in thumbs] == ["img/00.png", "img/01.png", "img/02.png", "img/03.png", "img/04.png",
                                           "img/05.png", "img/06.png", "img/07.png", "img/08.png", "img/09.png"]
    picture = Image.open(io.BytesIO(got.preview_blob(thumbs[3]["blob"])))
    assert picture.size == (70, 30) and picture.getpixel((5, 5))[:3] == (200, 30, 30)
    widths = next(i for i in items if i["kind"] == "histogram" and i["title"] == "image width")
    assert widths["sample_files"] == 13 and sum(widths["values"]) == 13  # 12 PNGs and the JPEG
    assert widths["statistics"]["min"] == 40 and widths["statistics"]["max"] == 600
    heights = next(i for i in items if i["kind"] == "histogram" and i["title"] == "image height")
    assert heights["statistics"]["max"] == 300 and len(heights["values"]) == 10
    same = tmp_path / "same"
    same.mkdir()
    for i in range(3):
        _png(same / f"{i}.png", (64, 48))
    ds = Dataset.create("p", "same", store=file_store)
    ds.add_files(str(same))
    ds.finalize()
    widths = next(i for i in Dataset.get(ds.id, store=file_store).previews() if i["title"] == "image width")
    assert widths["values"] == [3] and widths["xlabels"] == ["64"]  # one bar when every image is alike
    media = next(i for i in items if i["title"] == "media files")
    assert media["rows"] == [["audio/a.wav", 104]]
    notes = next(i for i in items if i["title"] == "preview notes")["text"]
    assert "img/broken.png" in notes and "img/bomb.png" in notes and "over the limit" in notes


def test_images_without_pillow_are_a_note(tmp_path, file_store, monkeypatch):
    monkeypatch.setattr(previews, "_pillow", lambda: None)
    make_tree(tmp_path / "src", {"a.png": b"whatever"})
    ds = Dataset.create("p", "nopil", store=file_store)
    ds.add_files(str(tmp_path / "src"))
    ds.finalize()
    items = Dataset.get(ds.id, store=file_store).previews()
    assert [i["kind"] for i in items] == ["statistics", "text"]
    assert "needs Pillow" in items[1]["text"] and "dsfs[preview]" in items[1]["text"]


def test_a_project_sets_its_default_preview_mode(tmp_path, file_store, dsfs):
    """`dsfs project set P --preview stats`: versions closed in P and in the projects inside it store
    no sample unless their author asks; another project is not affected; `inherit` removes it; a
    settings object that is not dsfs's is ignored with a warning, never a failed close."""
    make_tree(tmp_path / "src", {"t.csv": b"secret,col\n" + SECRET_ROW + b"\n"})

    sampled = set()  # the versions whose previews may hold a sample of the data

    def closed(project, *args):
        r = dsfs("create", "--project", project, "--name", "n", "--store", file_store)
        assert r.code == 0, r.err
        assert dsfs("add", "--files", str(tmp_path / "src"), "--store", file_store).code == 0
        r = dsfs("close", *args, "--store", file_store, "--json")
        assert r.code == 0, r.err
        version_id = json.loads(r.out)["id"]
        kinds = [i["kind"] for i in Dataset.get(version_id, store=file_store).previews()]
        if "table" in kinds:
            sampled.add(version_id)
        return kinds, r

    r = dsfs("project", "set", "medical", "--preview", "stats", "--store", file_store)
    assert r.code == 0 and "preview stats" in r.out
    r = dsfs("project", "show", "medical/scans/2024", "--store", file_store, "--json")
    assert json.loads(r.out) == {"project": "medical/scans/2024", "preview": "stats", "set_by": "medical"}
    assert closed("medical/scans")[0] == ["statistics"]  # inherited from the project above
    assert closed("other")[0] == ["statistics", "table"]  # not affected
    assert closed("medical", "--preview", "auto")[0] == ["statistics", "table"]  # the author's choice wins
    store = Store.open(file_store)
    holding = {key.split("/")[1] for key in store.list_files("previews") if b"patient" in store._get(key)}
    assert holding == sampled and len(sampled) == 2
    assert dsfs("project", "set", "medical/scans", "--preview", "none", "--store", file_store).code == 0
    assert closed("medical/scans")[0] == []  # the nearest project's setting
    assert dsfs("project", "set", "medical/scans", "--preview", "inherit", "--store", file_store).code == 0
    assert closed("medical/scans")[0] == ["statistics"]
    store.write_project_settings("medical", b"[not an object")
    kinds, r = closed("medical")
    assert kinds == ["statistics", "table"] and "settings of project 'medical'" in r.err and "ignored" in r.err
    store.write_project_settings("medical", b'{"preview": "everything"}')
    r = dsfs("project", "show", "medical", "--store", file_store)
    assert r.code == 0 and "preview: auto" in r.out and "unknown preview mode 'everything'" in r.err
    r = dsfs("project", "set", "../x", "--preview", "stats", "--store", file_store)
    assert r.code != 0 and "invalid project" in r.err and "Traceback" not in r.err


def test_automatic_previews_stream_the_version_instead_of_holding_its_view(tmp_path, file_store, monkeypatch):
    """The sample's entries come from one streamed pass: a close never builds the whole view in
    memory for its previews (a 1,000,000-image version would need gigabytes)."""
    from dsfs.lineage.merge import Lineage

    make_tree(tmp_path / "src", {"a.csv": b"x,y\n1,2\n", **{f"f{i:03d}.bin": b"%d" % i for i in range(200)}})
    ds = Dataset.create("p", "stream", store=file_store)
    ds.add_files(str(tmp_path / "src"))

    def no_view(*args, **kwargs):
        raise AssertionError("the whole view was loaded")

    monkeypatch.setattr(Lineage, "view", no_view)
    ds.finalize(preview="auto")
    table = next(i for i in Dataset.get(ds.id, store=file_store).previews() if i["kind"] == "table")
    assert table["title"] == "a.csv" and table["rows"] == [[1, 2]]

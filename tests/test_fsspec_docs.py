"""docs/fsspec.md cannot drift: every ```python block of it is run against the version it reads
(vision/pets@1.0.0, built here), in the order of the page, and what it prints must be the ```text
block that follows it. A block needing a library of the test extra fails without it under CI=true
(servers.required_library); one needing torch (not in the extra) is skipped without it."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
from conftest import final_version, make_tree
from servers import required_library
from test_fsspec_readers import loopback_only

from dsfs.store import datastores

DOC = Path(__file__).resolve().parent.parent / "docs" / "fsspec.md"
BLOCK = re.compile(r"```python\n(.*?)```(?:\s*```text\n(.*?)```)?", re.S)
LIBRARIES = {"pandas", "pyarrow", "datasets", "polars", "duckdb", "numpy", "PIL"}


def _examples() -> list[tuple[str, int, str, str | None]]:
    """(the heading above it, its line, code, expected output or None) of every python block."""
    text = DOC.read_text()
    out = []
    for match in BLOCK.finditer(text):
        heading = re.findall(r"^#+ (.+)$", text[:match.start()], re.M)[-1]
        out.append((heading, text.count("\n", 0, match.start()) + 2, match.group(1), match.group(2)))
    return out


EXAMPLES = _examples()


def _ids() -> list[str]:
    seen: dict[str, int] = {}
    ids = []
    for heading, *_ in EXAMPLES:
        seen[heading] = seen.get(heading, 0) + 1
        ids.append(heading if seen[heading] == 1 else f"{heading} {seen[heading]}")
    return ids


@pytest.fixture(scope="module")
def pets(tmp_path_factory):
    """The store holding vision/pets@1.0.0, the version every example reads."""
    pa = required_library("pyarrow")
    pq = required_library("pyarrow.parquet")
    image = required_library("PIL.Image")
    src = tmp_path_factory.mktemp("pets-src")
    files, rows = {}, ["path,label"]
    for label, color in (("cat", (200, 120, 40)), ("dog", (60, 90, 200))):
        for i in range(16):
            jpeg = io.BytesIO()
            image.new("RGB", (32, 32), (color[0], color[1] + i, color[2])).save(jpeg, "JPEG", quality=90)
            files[f"images/{label}/{label}-{i:02}.jpg"] = jpeg.getvalue()
            rows.append(f"images/{label}/{label}-{i:02}.jpg,{label}")
    files["labels.csv"] = ("\n".join(rows) + "\n").encode()
    make_tree(src, files)
    for shard in range(3):
        (src / "tables").mkdir(exist_ok=True)
        labels = ["cat" if i % 2 else "dog" for i in range(100)]
        pq.write_table(pa.table({"text": [f"{label} {shard}-{i}" for i, label in enumerate(labels)], "label": labels,
                                 "shard": [shard] * 100}), src / "tables" / f"train-{shard}.parquet")
    for month in (1, 2, 3):
        folder = src / "events" / "year=2024" / f"month={month}"
        folder.mkdir(parents=True)
        pq.write_table(pa.table({"kind": [("feed", "play", "sleep")[i % 3] for i in range(40)],
                                 "n": list(range(40))}), folder / "part-0.parquet")
    store = f"file://{tmp_path_factory.mktemp('pets-store')}"
    final_version(store, src, project="vision", name="pets")
    return store


@pytest.mark.parametrize("heading, line, code, expected", EXAMPLES, ids=_ids())
def test_example(pets, monkeypatch, tmp_path, heading, line, code, expected):
    imported = {name.split(".")[0] for name in re.findall(r"^(?:from|import) ([\w.]+)", code, re.M)}
    if "torch" in imported:
        pytest.importorskip("torch", reason="torch is not installed (not in the test extra)")
    for name in sorted(imported & LIBRARIES):
        required_library(name)
    monkeypatch.setenv("DSFS_STORE", pets)
    datastores.register("lake", pets, {})
    if "datasets" in imported:
        import datasets.config

        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
        loopback_only(monkeypatch)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, f"{DOC}:{line}", "exec"), {"__name__": "__docs__"})  # noqa: S102 - the page's own code
    if expected is not None:
        assert printed.getvalue() == expected, f"docs/fsspec.md:{line} ({heading}) printed something else"


def test_every_example_prints_what_the_page_shows():
    assert len(EXAMPLES) >= 9
    assert all(expected is not None for *_, expected in EXAMPLES)
    headings = {heading for heading, *_ in EXAMPLES}
    assert {"pandas", "pyarrow", "Hugging Face datasets", "polars", "DuckDB", "PyTorch"} <= headings

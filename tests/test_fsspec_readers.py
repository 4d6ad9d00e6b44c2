"""Real readers through dsfs:// (issue 19), each compared with the same read of the local files the
version was made from: pandas (read_csv, read_parquet with columns and filters), pyarrow.dataset
over hive partitions, polars, DuckDB through fsspec, and Hugging Face datasets offline."""

from __future__ import annotations

import socket

import fsspec
import pytest
from conftest import final_version
from servers import required_library

URL = "dsfs://demo/tables"


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """(store URL, source folder) of a version holding hive-partitioned parquet, a CSV and three
    parquet shards."""
    pa = required_library("pyarrow")
    pq = required_library("pyarrow.parquet")
    pd = required_library("pandas")
    src = tmp_path_factory.mktemp("tables-src")
    for year in (2023, 2024):
        for region in ("eu", "us"):
            folder = src / "events" / f"year={year}" / f"region={region}"
            folder.mkdir(parents=True)
            pq.write_table(pa.table({"n": list(range(50)), "what": [f"{year}-{region}-{i}" for i in range(50)]}),
                           folder / "part-0.parquet")
    pd.DataFrame({"path": [f"img/{i}.jpg" for i in range(300)], "label": [i % 7 for i in range(300)]}).to_csv(
        src / "labels.csv", index=False)
    for shard in range(3):
        shard_table = pa.table({"text": [f"text {shard}-{i}" for i in range(400)],
                                "label": [i % 5 for i in range(400)], "extra": [float(i) for i in range(400)]})
        pq.write_table(shard_table, src / f"train-{shard}.parquet", row_group_size=100)
    store = f"file://{tmp_path_factory.mktemp('tables-store')}"
    final_version(store, src, project="demo", name="tables")
    return store, src


def test_pandas(tables):
    pd = required_library("pandas")
    store, src = tables
    options = {"store": store}
    pd.testing.assert_frame_equal(pd.read_csv(f"{URL}/labels.csv", storage_options=options),
                                  pd.read_csv(src / "labels.csv"))
    for columns, filters in [(None, None), (["text"], None), (["label", "extra"], [("label", "==", 3)])]:
        pd.testing.assert_frame_equal(
            pd.read_parquet(f"{URL}/train-1.parquet", columns=columns, filters=filters, storage_options=options),
            pd.read_parquet(src / "train-1.parquet", columns=columns, filters=filters))


def test_pyarrow_dataset_over_hive_partitions(tables):
    pads = required_library("pyarrow.dataset")
    store, src = tables
    fs = fsspec.filesystem("dsfs", store=store, skip_instance_cache=True)
    ours = pads.dataset("demo/tables/events", filesystem=fs, format="parquet", partitioning="hive")
    local = pads.dataset(str(src / "events"), format="parquet", partitioning="hive")
    assert sorted(ours.files) == sorted(f"demo/tables/events/year={y}/region={r}/part-0.parquet"
                                        for y in (2023, 2024) for r in ("eu", "us"))
    order = [("what", "ascending")]
    assert ours.to_table().sort_by(order).equals(local.to_table().sort_by(order))
    only = pads.field("year") == 2024
    assert ours.to_table(filter=only, columns=["what", "region"]).sort_by(order).equals(
        local.to_table(filter=only, columns=["what", "region"]).sort_by(order))
    assert ours.count_rows(filter=pads.field("region") == "eu") == 100


def test_polars(tables):
    pl = required_library("polars")
    store, src = tables
    fs = fsspec.filesystem("dsfs", store=store, skip_instance_cache=True)
    local = pl.read_parquet(src / "train-2.parquet")
    with fs.open("demo/tables/train-2.parquet") as f:  # a file object
        assert pl.read_parquet(f).equals(local)
    with fs.open("demo/tables/labels.csv") as f:
        assert pl.read_csv(f).equals(pl.read_csv(src / "labels.csv"))
    # a URL: polars hands it to fsspec with use_pyarrow=True (its own reader knows only its object stores)
    assert pl.read_parquet(f"{URL}/train-2.parquet", storage_options={"store": store}, use_pyarrow=True,
                           columns=["text"]).equals(local.select("text"))


def test_duckdb(tables):
    duckdb = required_library("duckdb")
    store, src = tables
    con = duckdb.connect()
    con.register_filesystem(fsspec.filesystem("dsfs", store=store, skip_instance_cache=True))
    query = ("select year, region, count(*), min(what) from read_parquet('{}/events/*/*/*.parquet', "
             "hive_partitioning = true) group by all order by all")
    assert con.sql(query.format(URL)).fetchall() == con.sql(query.format(src)).fetchall()
    assert len(con.sql(query.format(URL)).fetchall()) == 4
    assert (con.sql(f"select count(*), sum(label) from read_csv('{URL}/labels.csv')").fetchall()
            == con.sql(f"select count(*), sum(label) from read_csv('{src}/labels.csv')").fetchall())


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Hugging Face offline (the variables, and the flags the libraries read at import), its caches
    under tmp_path, and no connection but to loopback."""
    required_library("datasets")
    import datasets.config
    import huggingface_hub.constants

    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    loopback_only(monkeypatch)
    return tmp_path / "hf-cache"


def loopback_only(monkeypatch) -> None:
    """No connection but to loopback for the rest of the test (the Hub and the cloud are not asked)."""
    real_connect = socket.socket.connect

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise OSError(f"this test is offline: no connection to {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.mark.slow
def test_hugging_face_datasets_offline(tables, offline, monkeypatch):
    """load_dataset("parquet", data_files="dsfs://...") streamed, with the Hub offline. In download
    mode (the default), datasets asks a remote URL's size before it copies it, and refuses any in
    offline mode; with the Hub reachable (HF_HUB_OFFLINE unset; still no connection here) it copies
    dsfs:// files into its cache like any other."""
    datasets = required_library("datasets")
    pa = required_library("pyarrow")
    pq = required_library("pyarrow.parquet")
    store, src = tables
    expected = pa.concat_tables([pq.read_table(src / f"train-{shard}.parquet") for shard in range(3)])
    streamed = datasets.load_dataset("parquet", data_files={"train": f"{URL}/train-*.parquet"}, split="train",
                                     storage_options={"store": store}, streaming=True)
    rows = sorted((row["text"], row["label"], row["extra"]) for row in streamed)
    assert rows == sorted(zip(*(expected[name].to_pylist() for name in ("text", "label", "extra")), strict=True))

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    loaded = datasets.load_dataset("parquet", data_files=f"{URL}/train-*.parquet", split="train",
                                   storage_options={"store": store}, cache_dir=str(offline))
    assert loaded.num_rows == 1200
    assert sorted(loaded["text"]) == sorted(expected["text"].to_pylist())

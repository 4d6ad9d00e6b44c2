"""dsfs.clearml: the Python examples of ClearML's SDK page (../shared/seeds/001_...txt) run with only
their import changed, and ClearML's keywords mean what they mean there. The examples' placeholders
(ids, buckets) are filled with versions and folders made here; s3:// sources are file:// ones."""

from __future__ import annotations

import os

import pytest

from dsfs.clearml import Dataset
from dsfs.errors import DatasetNotFound, InvalidState, UsageError
from conftest import make_tree


@pytest.fixture
def store(file_store, monkeypatch):
    """ClearML has one server: here the default store (DSFS_STORE)."""
    monkeypatch.setenv("DSFS_STORE", file_store)
    return file_store


def _final(tmp_path, name: str, files: dict[str, bytes], project: str = "example project", **create) -> Dataset:
    folder = tmp_path / f"src-{name}-{len(os.listdir(tmp_path))}"
    make_tree(folder, files)
    ds = Dataset.create(dataset_name=name, dataset_project=project, **create)
    ds.add_files(path=str(folder))
    ds.upload()
    ds.finalize()
    return ds


def test_create_with_every_seed_keyword(tmp_path, store, file_store):
    PARENT_DS_ID_1 = _final(tmp_path, "p1", {"a": b"1", "shared": b"first"}).id
    PARENT_DS_ID_2 = _final(tmp_path, "p2", {"b": b"2", "shared": b"second"}).id
    dataset = Dataset.create(
        dataset_name='dataset name',
        dataset_project='dataset project',
        parent_datasets=[PARENT_DS_ID_1, PARENT_DS_ID_2],
        dataset_version="1.0",
        output_uri=file_store,
        description='my dataset description'
    )
    assert dataset.version == "1.0" and not dataset.is_final()
    assert dataset.dataset.info.description == "my dataset description"
    dataset.finalize()
    # parents are merged in order: each overrides what an earlier one has
    assert dataset.dataset.read_file("shared") == b"second" and dataset.list_files() == ["a", "b", "shared"]
    assert Dataset.get(dataset_project="dataset project", dataset_name="dataset name",
                       dataset_version="1.0").id == dataset.id


def test_squash_by_ids_and_by_project_name_pairs(tmp_path, store):
    DS1_ID = _final(tmp_path, "one", {"x": b"1"}, project="dataset1 project").id
    DS2_ID = _final(tmp_path, "two", {"y": b"2"}, project="dataset2 project").id
    DS3_ID = _final(tmp_path, "three", {"x": b"3"}).id
    squashed_dataset_1 = Dataset.squash(
      dataset_name='squashed dataset\'s name',
      dataset_ids=[DS1_ID, DS2_ID, DS3_ID]
    )
    squashed_dataset_2 = Dataset.squash(
      dataset_name='squashed dataset 2',
      dataset_project_name_pairs=[('dataset1 project', 'one'),
                                  ('dataset2 project', 'two')]
    )
    assert squashed_dataset_1.dataset.read_file("x") == b"3" and squashed_dataset_1.list_files() == ["x", "y"]
    assert squashed_dataset_2.dataset.read_file("x") == b"1" and squashed_dataset_2.is_final()


def test_get_with_the_seed_keywords_and_auto_create_and_writable_copy(tmp_path, store):
    old = _final(tmp_path, "Example Dataset", {"a": b"1"}, project="Example Project",
                 dataset_tags="my tag", dataset_version="1.2")
    _final(tmp_path, "Example Dataset", {"a": b"2"}, project="Example Project", dataset_version="1.3")
    dataset = Dataset.get(
            dataset_id=None,
            dataset_project="Example Project",
            dataset_name="Example Dataset",
            dataset_tags="my tag",
            dataset_version="1.2",
            only_completed=True,
            only_published=False,
    )
    assert dataset.id == old.id
    newest = Dataset.get(dataset_project="Example Project", dataset_name="Example Dataset")
    assert newest.version == "1.3"
    with pytest.raises(DatasetNotFound):
        Dataset.get(dataset_project="Example Project", dataset_name="Example Dataset", only_published=True)
    newest.publish()
    assert Dataset.get(dataset_project="Example Project", only_published=True).id == newest.id
    made = Dataset.get(dataset_project="New", dataset_name="fresh", dataset_tags=["t"], auto_create=True)
    assert not made.is_final() and made.tags == ["t"]
    child = Dataset.get(dataset_id=old.id, writable_copy=True)
    assert child.dataset.parents == [old.id] and not child.is_final()


def test_alias_exports_the_id_and_overridable_lets_the_environment_choose(tmp_path, store, monkeypatch, capsys):
    first = _final(tmp_path, "d", {"a": b"1"})
    second = _final(tmp_path, "d", {"a": b"2"})
    monkeypatch.delenv("DSFS_DATASET_ID_train", raising=False)
    got = Dataset.get(dataset_project="example project", dataset_name="d", alias="train")
    assert got.id == second.id and os.environ["DSFS_DATASET_ID_train"] == second.id
    assert second.id in capsys.readouterr().out
    monkeypatch.setenv("DSFS_DATASET_ID_train", first.id)  # a scheduler swaps the dataset
    assert Dataset.get(dataset_project="example project", dataset_name="d", alias="train",
                       overridable=True).id == first.id
    assert Dataset.get(dataset_project="example project", dataset_name="d", alias="train").id == second.id


def test_add_files_and_wildcards_and_remove_files(tmp_path, store):
    make_tree(tmp_path / "path" / "to" / "folder", {"a.jpg": b"j", "b.png": b"p", "deep/c.jpg": b"c",
                                                    "t.csv": b"1", "deep/er/u.csv": b"2"})
    dataset = Dataset.create(dataset_name="my dataset", dataset_project="example project")
    dataset.add_files(
      path=str(tmp_path / "path" / "to" / "folder"),
      wildcard="~/data/*.jpg",
      recursive=True
    )
    assert dataset.list_files() == ["a.jpg", "deep/c.jpg"]
    dataset.add_files(path=str(tmp_path / "path" / "to" / "folder"), dataset_path="/tables/")
    dataset.remove_files(dataset_path="*.csv", recursive=True)
    assert not [p for p in dataset.list_files() if p.endswith(".csv")]
    with pytest.raises(InvalidState, match="upload"):
        dataset.finalize()  # ClearML's default: files must be uploaded first
    assert dataset.is_dirty() and dataset.finalize(raise_on_error=False) is False
    dataset.upload()
    assert dataset.finalize() and dataset.is_final()


def test_external_files_from_a_list_into_a_slashed_folder_and_removed_by_url(tmp_path, store):
    make_tree(tmp_path / "bucket", {"path_to_folder_or_file/x.jpg": b"x", "path_to_another/y.txt": b"y",
                                    "z.jpg": b"z"})
    base = f"file://{tmp_path}/bucket"
    dataset = Dataset.create(dataset_name="my dataset", dataset_project="example project")
    dataset.add_external_files(
      source_url=f"{base}/path_to_folder_or_file",
      dataset_path="/my_dataset/new_folder/"
    )
    dataset.add_external_files(
      source_url=[
        f"{base}/path_to_folder_or_file",
        f"{base}/path_to_another",
      ],
      dataset_path="/my_dataset/new_folder/"
    )
    dataset.add_external_files(
      source_url=f"{base}/",
      wildcard="*.jpg",
      dataset_path="/my_dataset/jpgs/"
    )
    files = dataset.list_files()
    assert "my_dataset/new_folder/x.jpg" in files and "my_dataset/new_folder/y.txt" in files
    assert "my_dataset/jpgs/z.jpg" in files and not any(f.startswith("my_dataset/jpgs/") and
                                                         f.endswith(".txt") for f in files)
    assert dataset.remove_files(dataset_path=f"{base}/path_to_another/y.txt") == 1
    assert "my_dataset/new_folder/y.txt" not in dataset.list_files()
    with pytest.raises(UsageError, match="no link"):
        dataset.remove_files(dataset_path="s3://elsewhere/nothing")


def test_sync_folder_counts_and_versions(tmp_path, store):
    make_tree(tmp_path / "data", {"keep": b"k", "change": b"c", "gone": b"g"})
    first = Dataset.create(dataset_name="synced", dataset_project="p")
    assert first.sync_folder(local_path=str(tmp_path / "data")) == (0, 3, 0)
    first.upload()
    first.finalize()
    (tmp_path / "data" / "change").write_bytes(b"changed")
    (tmp_path / "data" / "gone").unlink()
    (tmp_path / "data" / "new").write_bytes(b"n")
    child = Dataset.create(dataset_name="synced", dataset_project="p", parent_datasets=[first])
    assert child.sync_folder(local_path=str(tmp_path / "data")) == (1, 1, 1)
    child.finalize(auto_upload=True)
    assert child.list_added_files() == ["new"] and child.list_modified_files() == ["change"]
    assert child.list_removed_files() == ["gone"] and child.version == "1.0.1"


def test_delete_rename_and_move_as_the_seed_shows(tmp_path, store):
    v1 = _final(tmp_path, "example dataset", {"a": b"1"})
    _final(tmp_path, "example dataset", {"a": b"2"}, parent_datasets=[v1.id], dataset_version="3.0")
    with pytest.raises(UsageError, match="entire_dataset"):
        Dataset.delete(dataset_project="example project", dataset_name="example dataset")
    Dataset.rename(new_dataset_name="New name", dataset_project="example project",
                   dataset_name="example dataset")
    Dataset.move_to_project(new_dataset_project="New project", dataset_project="example project",
                            dataset_name="New name")
    assert {d["version"] for d in Dataset.list_datasets(dataset_project="New project")} == {"1.0.0", "3.0"}
    deleted = Dataset.delete(
      dataset_id=None,
      dataset_project="New project",
      dataset_name="New name",
      force=False,
      dataset_version="3.0",
      entire_dataset=False
    )
    assert len(deleted) == 1
    _final(tmp_path, "New name", {"a": b"3"}, project="New project", parent_datasets=[v1.id])
    assert len(Dataset.delete(dataset_project="New project", dataset_name="New name",
                              entire_dataset=True, force=True)) == 2
    assert Dataset.list_datasets(dataset_project="New project") == []


def test_local_copies_metadata_and_listing(tmp_path, store):
    ds = _final(tmp_path, "d", {"a": b"1", "sub/b": b"2"}, dataset_tags=["raw"])
    copy = ds.get_local_copy(max_workers=2)
    assert sorted(os.listdir(copy)) == ["a", "sub"]
    target = tmp_path / "mutable"
    make_tree(target, {"stale.txt": b"old"})
    with pytest.raises(UsageError, match="overwrite"):
        ds.get_mutable_local_copy(target_folder=str(target))
    assert ds.get_mutable_local_copy(target_folder=str(target), overwrite=True) == str(target)
    assert sorted(os.listdir(target)) == ["a", "sub"]  # nothing stale stays
    (target / "a").write_bytes(b"mutable")
    assert ds.verify_dataset_hash(local_copy_path=str(target)) == ["a"]
    ds.set_metadata({"classes": ["cat", "dog"]}, metadata_name="labels")
    assert Dataset.get(dataset_id=ds.id).get_metadata("labels") == {"classes": ["cat", "dog"]}
    assert ds.get_metadata("nothing") is None
    with pytest.raises(UsageError, match="JSON"):
        ds.set_metadata(object())
    listed = Dataset.list_datasets(dataset_project="example project", partial_name="D", tags="raw")
    assert [d["id"] for d in listed] == [ds.id]
    # the seed's "Dataset Preview" example; histogram_data is a pandas Series there (pandas is not a
    # test dependency: a stand-in with the two methods the example uses)
    (tmp_path / "meta.csv").write_text("file,label\na,cat\n")

    class Series(list):
        index = type("Index", (), {"tolist": lambda self: ["cat", "dog"]})()

        def tolist(self):
            return list(self)

    histogram_data = Series([3, 5])
    dataset = ds
    dataset.get_logger().report_table(
        title="Raw Dataset Metadata", series="Raw Dataset Metadata", csv=str(tmp_path / "meta.csv")
    )
    dataset.get_logger().report_histogram(
        title="Class distribution",
        series="Class distribution",
        values=histogram_data,
        iteration=0,
        xlabels=histogram_data.index.tolist(),
        yaxis="Number of samples",
    )
    shown = {i["kind"]: i for i in ds.dataset.previews()}
    assert shown["table"]["rows"] == [["a", "cat"]] and shown["histogram"]["values"] == [3, 5]
    assert shown["histogram"]["xlabels"] == ["cat", "dog"]
    assert ds.get_dependency_graph() == {ds.id: []}


def test_parts_share_the_files_evenly_and_whole(tmp_path, store, dsfs):
    files = {f"d{i % 3}/f{i:02d}": bytes([i]) * (i + 1) for i in range(10)}
    ds = _final(tmp_path, "sharded", files)
    shares = []
    for part in range(3):
        folder = ds.get_local_copy(part=part, num_parts=3)
        assert ds.get_local_copy(part=part, num_parts=3) == folder  # the same share again
        shares.append({os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs})
    assert [len(s) for s in shares] == [3, 3, 4]
    assert set().union(*shares) == set(files) and sum(map(len, shares)) == len(files)
    assert sorted(shares[0])[-1] < sorted(shares[1])[0]  # runs in path order
    for rel in shares[1]:
        assert open(os.path.join(ds.get_local_copy(part=1, num_parts=3), rel), "rb").read() == files[rel]
    mutable = ds.get_mutable_local_copy(str(tmp_path / "mine"), part=2, num_parts=3)
    assert {os.path.relpath(os.path.join(d, f), mutable) for d, _, fs in os.walk(mutable) for f in fs} == shares[2]
    with pytest.raises(UsageError, match="0 to 2"):
        ds.get_local_copy(part=3, num_parts=3)
    with pytest.raises(UsageError, match="together"):
        ds.get_local_copy(part=1)
    r = dsfs("--store", store, "get", ds.id, "--part", "0", "--num-parts", "3")
    assert r.code == 0 and r.out.strip() == ds.get_local_copy(part=0, num_parts=3)
    assert dsfs("--store", store, "get", ds.id, "--part", "0").code == 2


def test_offline_session_then_import(tmp_path, store, capsys, monkeypatch):
    make_tree(tmp_path / "imgs", {"my_image.jpg": b"jpeg bytes"})
    monkeypatch.chdir(tmp_path / "imgs")
    Dataset.set_offline(offline_mode=True)
    try:
        assert Dataset.is_offline()
        dataset = Dataset.create(dataset_name="Dataset example", dataset_project="Example project")
        dataset.add_files(path='my_image.jpg')
    finally:
        Dataset.set_offline(offline_mode=False)
    session = capsys.readouterr().out.split("offline session stored in ")[1].split()[0]
    assert os.path.isdir(session) and not os.path.exists(store[len("file://"):])  # nothing reached the store
    copied = Dataset.import_offline_session(session_folder_zip=session, upload=True, finalize=True)
    assert copied == [dataset.id]
    back = Dataset.get(dataset_project="Example project", dataset_name="Dataset example")
    assert back.id == dataset.id and back.dataset.read_file("my_image.jpg") == b"jpeg bytes"
    monkeypatch.setenv("CLEARML_OFFLINE_MODE", "1")  # ClearML's variable turns it on too
    assert Dataset.is_offline()
    with pytest.raises(UsageError, match="not an offline session"):
        Dataset.import_offline_session(str(tmp_path / "imgs"))


def test_external_files_example_against_s3(tmp_path, store, moto_server):
    """The seed's add_external_files examples on s3:// (moto): the bucket is registered as a
    datastore (its endpoint and keys), links into it are read through it."""
    from dsfs.store import datastores

    bucket = moto_server.new_bucket()
    fs = moto_server.fs()
    fs.pipe({f"{bucket}/path_to_folder_or_file/a.jpg": b"A", f"{bucket}/path_to_another_folder_or_file/b.txt": b"B",
             f"{bucket}/c.jpg": b"C"})
    datastores.register("bucket", f"s3://{bucket}", moto_server.options)
    dataset = Dataset.create(dataset_name="my dataset", dataset_project="example project")
    dataset.add_external_files(
      source_url=f"s3://{bucket}/path_to_folder_or_file",
      dataset_path="/my_dataset/new_folder/"
    )
    dataset.add_external_files(
      source_url=[
        f"s3://{bucket}/path_to_folder_or_file",
        f"s3://{bucket}/path_to_another_folder_or_file",
      ],
      dataset_path="/my_dataset/new_folder/"
    )
    dataset.add_external_files(
      source_url=f"s3://{bucket}/",
      wildcard="*.jpg",
      dataset_path="/my_dataset/new_folder/"
    )
    assert dataset.remove_files(dataset_path=f"s3://{bucket}/path_to_folder_or_file/a.jpg") == 2  # both links to it
    dataset.finalize()
    assert dataset.list_files() == ["my_dataset/new_folder/b.txt", "my_dataset/new_folder/c.jpg"]
    assert dataset.dataset.read_file("my_dataset/new_folder/b.txt") == b"B"

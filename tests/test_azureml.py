"""The AzureML seed (../shared/seeds/003: AzureML's "Data" page) through dsfs.azureml, against Azurite.

Each test runs one code example of the seed as it is written there, with only its import changed
(`from azureml.core import ...` -> `from dsfs.azureml import ...`) and its placeholders filled: the
Azurite container and account (`endpoint=` added: Azurite is not at <account>.blob.core.windows.net),
a SAS token made for that container, `<path/on/datastore>` -> TARGET, a ./data folder made here, and
names the seed leaves undefined (`experiment`, `compute_target`). The train.py example runs through
`Experiment.submit` in download mode, and in mount mode where FUSE is (require_fuse)."""

from __future__ import annotations

import ast
import datetime
import json
import os
import stat

import pytest
from azure.storage.blob import ContainerSasPermissions, generate_container_sas
from conftest import make_tree, read_tree, watch_logs
from fusehelp import is_mounted, require_fuse
from servers import AZURITE_ACCOUNT, AZURITE_KEY

from dsfs import settings
from dsfs.datarefs import DataReference
from dsfs.errors import AccessDenied, Conflict, DatastoreError, LocalFileNotFound, UsageError

FILES = {"a.txt": b"alpha", "sub/b.bin": os.urandom(100_000)}
TARGET = "inputs/2024"  # the seed's <path/on/datastore>
NAME = "blobs"  # the seed's <datastore-name>

# The script the seed's ScriptRunConfig examples run: it lists the data it was handed.
SCRIPT = """import os, sys
data = sys.argv[1] if len(sys.argv) > 1 else os.environ["AZUREML_DATAREFERENCE_blobs"]
print("ARG", data)
print("MOUNTED", os.path.ismount(data))
print("ENV", os.environ["AZUREML_DATAREFERENCE_blobs"], os.environ["DSFS_DATAREFERENCE_blobs"])
for folder, _, names in sorted(os.walk(data)):
    for name in sorted(names):
        path = os.path.join(folder, name)
        print("FILE", os.path.relpath(path, data), os.path.getsize(path))
"""


@pytest.fixture
def azure(azurite, tmp_path, monkeypatch):
    """A fresh Azurite container, a SAS token for it alone, and the test's working folder holding ./data."""
    container = azurite.new_bucket()
    sas = generate_container_sas(AZURITE_ACCOUNT, container, account_key=AZURITE_KEY,
                                 permission=ContainerSasPermissions(read=True, write=True, delete=True, list=True,
                                                                    add=True, create=True),
                                 expiry=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1))
    monkeypatch.chdir(tmp_path)
    make_tree(tmp_path / "data", FILES)
    azurite.container, azurite.sas, azurite.blob_endpoint = container, sas, f"{azurite.endpoint}/{AZURITE_ACCOUNT}"
    return azurite


@pytest.fixture
def ws(azure):
    """A workspace whose default datastore is the Azurite container, registered by the seed's own
    SAS example (test_register_with_a_sas_token runs it on its own)."""
    from dsfs.azureml import Datastore, Workspace

    ws = Workspace.from_config()
    Datastore.register_azure_blob_container(workspace=ws, datastore_name=NAME, container_name=azure.container,
                                            account_name=AZURITE_ACCOUNT, sas_token=azure.sas,
                                            endpoint=azure.blob_endpoint)
    ws.set_default_datastore(NAME)
    return ws


@pytest.fixture
def uploaded(ws):
    """./data uploaded to TARGET in the default datastore (the seed's upload example)."""
    ws.get_default_datastore().upload(src_dir="./data", target_path=TARGET, overwrite=True)
    return ws


def _blobs(azure) -> dict[str, bytes]:
    """What Azurite holds under TARGET, read with the account key (not through dsfs)."""
    fs = azure.fs()
    root = f"{azure.container}/{TARGET}/"
    return {path[len(root):]: fs.cat_file(path) for path in fs.find(root)}


def _listing(output: str) -> dict[str, int]:
    return {line.split()[1]: int(line.split()[2]) for line in output.splitlines() if line.startswith("FILE ")}


SIZES = {name: len(data) for name, data in FILES.items()}


# -- Concepts / Get Datastore ----------------------------------------------------------------------


def test_default_datastore_from_config(azure):
    """Seed: `ws = Workspace.from_config(); datastore = ws.get_default_datastore()`, on a fresh node
    and after the Azurite container is made the default."""
    from dsfs.azureml import Datastore, Workspace

    ws = Workspace.from_config()
    datastore = ws.get_default_datastore()
    assert datastore.name == "local" and datastore.datastore.builtin  # a fresh node: the embedded store

    Datastore.register_azure_blob_container(ws, NAME, azure.container, AZURITE_ACCOUNT, sas_token=azure.sas,
                                            endpoint=azure.blob_endpoint)
    ws.set_default_datastore(NAME)
    ws = Workspace.from_config()
    datastore = ws.get_default_datastore()
    assert datastore.name == NAME and datastore.container_name == azure.container


def test_get_default_datastore_follows_the_node_configuration(ws, dsfs):
    """Seed: `datastore = ws.get_default_datastore()`: dsfs's default datastore, read when asked."""
    datastore = ws.get_default_datastore()
    assert datastore.name == NAME and datastore.account_name == AZURITE_ACCOUNT
    assert dsfs("datastore", "set-default", "local").code == 0
    datastore = ws.get_default_datastore()
    assert datastore.name == "local"


def test_register_with_a_sas_token(azure, dsfs):
    """Seed: `Datastore.register_azure_blob_container(workspace=ws, ..., sas_token="<sas-token>")`.
    The SAS is what reaches the container; it is kept 0600 and never shown."""
    from dsfs.azureml import Datastore, Workspace

    ws = Workspace.from_config()
    datastores = Datastore.register_azure_blob_container(
        workspace=ws,
        datastore_name=NAME,
        container_name=azure.container,
        account_name=AZURITE_ACCOUNT,
        sas_token=azure.sas,
        endpoint=azure.blob_endpoint,
    )
    assert datastores.name == NAME and datastores.datastore.url == f"az://{azure.container}"
    assert set(ws.datastores) == {"local", NAME}
    config = settings.config_path()
    assert stat.S_IMODE(os.stat(config).st_mode) == 0o600 and azure.sas in open(config).read()
    printed = f"{datastores} {ws.datastores} {datastores!r}"  # what print() would show
    shown = dsfs("datastore", "show", NAME, "--json")
    listed = dsfs("datastore", "list")
    assert shown.code == 0 and json.loads(shown.out)["options"]["connection_string"] == "***"
    for text in (printed, shown.out, listed.out):
        assert azure.sas not in text and azure.sas.split("sig=")[1][:10] not in text

    datastores.upload(src_dir="./data", target_path=TARGET)
    assert _blobs(azure) == FILES  # the SAS reached the container
    Datastore.register_azure_blob_container(ws, NAME, azure.container, AZURITE_ACCOUNT, endpoint=azure.blob_endpoint,
                                            sas_token=azure.sas.replace("sig=", "sig=AAAA"), overwrite=True)
    with pytest.raises(AccessDenied, match="access denied") as failed:  # the token is what reaches Azurite
        Datastore.get(ws, NAME).upload(src_dir="./data", target_path="other")
    assert "sig=" not in str(failed.value)
    with pytest.raises(Conflict):  # registering over a datastore needs overwrite=True, as in AzureML
        Datastore.register_azure_blob_container(ws, NAME, azure.container, AZURITE_ACCOUNT, sas_token=azure.sas)


def test_connect_to_a_registered_datastore(ws, azure):
    """Seed: `from azureml.core import Datastore; datastore = Datastore.get(ws, "<name-of-registered-datastore>")`."""
    from dsfs.azureml import Datastore

    datastore = Datastore.get(ws, NAME)
    assert datastore.name == NAME and datastore.container_name == azure.container
    with pytest.raises(DatastoreError, match="unknown datastore 'nope'"):  # a dsfs error, not a KeyError
        Datastore.get(ws, "nope")


# -- Upload to Datastore ---------------------------------------------------------------------------


def test_upload_through_the_sdk(ws, azure):
    """Seed: `datastore.upload(src_dir='./data', target_path='<path/on/datastore>', overwrite=True)`."""
    from dsfs.azureml import Datastore

    datastore = Datastore.get(ws, NAME)
    datastore.upload(src_dir='./data', target_path=TARGET, overwrite=True)
    assert _blobs(azure) == FILES
    with open("data/a.txt", "wb") as f:
        f.write(b"ALPHA!")
    with pytest.raises(Conflict):  # without overwrite nothing is replaced
        datastore.upload(src_dir="./data", target_path=TARGET)
    ref = datastore.upload(src_dir='./data', target_path=TARGET, overwrite=True)
    assert _blobs(azure)["a.txt"] == b"ALPHA!"
    assert isinstance(ref, DataReference) and ref.dataset.read_file("a.txt") == b"ALPHA!"  # AzureML returns one


# -- Read from Datastore: DataReference ------------------------------------------------------------


def test_workspace_compute_target_and_datastore(ws):
    """Seed: `ws: Workspace = Workspace.from_config(); compute_target: ComputeTarget =
    ws.compute_targets['<compute-target-name>']; ds: Datastore = ws.get_default_datastore()`."""
    from dsfs.azureml import ComputeTarget, Datastore, Workspace

    ws: Workspace = Workspace.from_config()
    compute_target: ComputeTarget = ws.compute_targets['gpu-cluster']
    ds: Datastore = ws.get_default_datastore()
    assert isinstance(compute_target, ComputeTarget) and compute_target.name == "gpu-cluster"
    assert "any-name" in ws.compute_targets and list(ws.compute_targets) == ["local"]  # every name is this node
    assert isinstance(ds, Datastore) and ds.name == NAME


def test_data_reference_as_mount(uploaded):
    """Seed: `data_ref = ds.path('<path/on/datastore>').as_mount()`: a dsfs DataReference to a
    snapshot of the files there (mounted when a job runs: see the ScriptRunConfig tests)."""
    ds = uploaded.get_default_datastore()
    data_ref = ds.path(TARGET).as_mount()
    assert isinstance(data_ref, DataReference) and data_ref.mode == "mount"
    assert data_ref.data_reference_name == NAME and str(data_ref) == f"$DSFS_DATAREFERENCE_{NAME}"
    assert data_ref.dataset.list_files() == sorted(FILES)
    assert data_ref.dataset.read_file("sub/b.bin") == FILES["sub/b.bin"]
    config = data_ref.to_config()
    assert config == {"data_reference_name": NAME, "dataset_id": data_ref.dataset.id, "store": "datastore:local",
                      "mode": "mount", "path_on_compute": None, "options": {}}


def test_data_reference_as_download(uploaded, azure):
    """Seed: `data_ref = ds.path('<path/on/datastore>').as_download()`."""
    ds = uploaded.get_default_datastore()
    data_ref = ds.path(TARGET).as_download()
    assert data_ref.mode == "download"
    with data_ref as path:
        assert read_tree(path) == FILES
    assert not os.path.exists(path)  # a temporary folder goes with the reference
    assert azure.sas not in json.dumps(data_ref.to_config())


def _consume_in_script_run_config(ws, data_ref, tmp_path, mounted: bool):
    """Seed: ScriptRunConfig with `arguments=[str(data_ref)]` and the reference in data_references;
    then submitted (the seed stops at the config): the script sees the data at its argument."""
    from dsfs.azureml import Experiment, ScriptRunConfig

    (tmp_path / "script.py").write_text(SCRIPT)
    compute_target = ws.compute_targets["cpu-cluster"]
    config = ScriptRunConfig(
        source_directory='.',
        script='script.py',
        arguments=[str(data_ref)],               # returns environment variable $AZUREML_DATAREFERENCE_example_data
        compute_target=compute_target,
    )

    config.run_config.data_references[data_ref.data_reference_name] = data_ref.to_config()
    assert config.arguments == [f"$DSFS_DATAREFERENCE_{NAME}"]
    run = Experiment(ws, "example").submit(config)
    assert run.wait_for_completion(show_output=False)["status"] == "Completed"
    lines = dict(line.split(" ", 1) for line in run.output.splitlines() if line.startswith(("ARG", "ENV")))
    path = lines["ARG"]
    assert lines["ENV"] == f"{path} {path}"  # AzureML's variable and dsfs's name the same folder
    assert _listing(run.output) == SIZES and f"MOUNTED {mounted}" in run.output
    assert not os.path.exists(path) and not is_mounted(path)  # cleaned up after the run


def test_consume_data_reference_in_script_run_config_download(uploaded, tmp_path):
    data_ref = uploaded.get_default_datastore().path(TARGET).as_download()
    _consume_in_script_run_config(uploaded, data_ref, tmp_path, mounted=False)


def test_consume_data_reference_in_script_run_config_mount(uploaded, tmp_path):
    require_fuse()
    watch_logs(settings.runtime_dir())
    data_ref = uploaded.get_default_datastore().path(TARGET).as_mount()
    _consume_in_script_run_config(uploaded, data_ref, tmp_path, mounted=True)


def _without_argument(ws, data_ref, tmp_path, mounted: bool):
    """Seed: `data_ref.path_on_compute = '/tmp/data'` (here a folder of the test), no arguments."""
    from dsfs.azureml import Experiment, ScriptRunConfig

    (tmp_path / "script.py").write_text(SCRIPT)
    compute_target = ws.compute_targets["cpu-cluster"]
    on_compute = str(tmp_path / "data-on-compute")
    data_ref.path_on_compute = on_compute

    config = ScriptRunConfig(
        source_directory='.',
        script='script.py',
        compute_target=compute_target,
    )

    config.run_config.data_references[data_ref.data_reference_name] = data_ref.to_config()
    run = Experiment(ws, "example").submit(config)
    assert run.wait_for_completion()["status"] == "Completed"
    assert f"ARG {on_compute}" in run.output.splitlines() and _listing(run.output) == SIZES
    assert f"MOUNTED {mounted}" in run.output
    assert os.path.isdir(on_compute) and not is_mounted(on_compute)  # a folder the user named is kept
    return on_compute


def test_path_on_compute_without_argument_download(uploaded, tmp_path):
    on_compute = _without_argument(uploaded, uploaded.get_default_datastore().path(TARGET).as_download(), tmp_path,
                                   mounted=False)
    assert read_tree(on_compute) == FILES  # a download stays where it was asked for


def test_path_on_compute_without_argument_mount(uploaded, tmp_path):
    require_fuse()
    watch_logs(settings.runtime_dir())
    on_compute = _without_argument(uploaded, uploaded.get_default_datastore().path(TARGET).as_mount(), tmp_path,
                                   mounted=True)
    assert os.listdir(on_compute) == []  # unmounted: the folder is as it was


# -- Create Dataset -------------------------------------------------------------------------------


def test_upload_local_data_to_the_default_datastore(ws, azure):
    """Seed: `datastore = ws.get_default_datastore(); datastore.upload(src_dir='./data', ...)`."""
    datastore = ws.get_default_datastore()
    datastore.upload(src_dir='./data', target_path=TARGET, overwrite=True)
    assert _blobs(azure) == FILES
    with pytest.raises(LocalFileNotFound):
        datastore.upload(src_dir="./missing", target_path=TARGET)


def test_dataset_from_files_in_a_datastore(uploaded, tmp_path):
    """Seed: `dataset = Dataset.File.from_files(path=(datastore, '<path/on/datastore>'))`."""
    from dsfs.azureml import Dataset

    datastore = uploaded.get_default_datastore()
    dataset = Dataset.File.from_files(path=(datastore, TARGET))
    assert dataset.to_path() == ["/a.txt", "/sub/b.bin"]
    with dataset.as_download(path_on_compute="here") as path:  # relative: under the working directory
        assert path == str(tmp_path / "here") and read_tree(path) == FILES
    # AzureML's other forms of path name the same files, so the same snapshot
    assert Dataset.File.from_files(path=[(datastore, TARGET)]).id == dataset.id
    assert Dataset.File.from_files(path=f"azureml://datastores/{NAME}/paths/{TARGET}").id == dataset.id
    assert Dataset.File.from_files(path=datastore.path(TARGET)).id == dataset.id
    with pytest.raises(UsageError, match="one datastore path at a time"):
        Dataset.File.from_files(path=[(datastore, TARGET), (datastore, "other")])
    with pytest.raises(UsageError, match="no tabular datasets"):
        Dataset.Tabular.from_delimited_files(path=(datastore, TARGET))


# -- Use Dataset: run.py and train.py ------------------------------------------------------------------

TRAIN_PY = """import sys
data_dir = sys.argv[1]

print("===== DATA =====")
print("DATA PATH: " + data_dir)
print("LIST FILES IN DATA DIR...")
print(os.listdir(data_dir))
print("================")
"""


def _run_py(ws, dataset, mode: str):
    """Seed: run.py, with `experiment` made (the seed leaves it undefined) and `dataset.as_<mode>()`."""
    from dsfs.azureml import Experiment, ScriptRunConfig

    experiment = Experiment(ws, "train")
    arguments=[dataset.as_mount() if mode == "mount" else dataset.as_download()]
    config = ScriptRunConfig(source_directory='.', script='train.py', arguments=arguments)
    return experiment.submit(config)


def _train(ws, tmp_path, capsys, mode: str):
    """train.py as the seed writes it, with the `import os` it forgets; its output lists the uploaded files."""
    from dsfs.azureml import Dataset

    (tmp_path / "train.py").write_text("import os\n" + TRAIN_PY)
    dataset = Dataset.File.from_files(path=(ws.get_default_datastore(), TARGET))
    run = _run_py(ws, dataset, mode)
    assert run.wait_for_completion(show_output=True) == {"runId": run.id, "status": "Completed", "exitCode": 0}
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "===== DATA =====" and lines[2] == "LIST FILES IN DATA DIR..."
    data_path = lines[1].removeprefix("DATA PATH: ")
    assert sorted(ast.literal_eval(lines[3])) == ["a.txt", "sub"]
    assert not os.path.exists(data_path) and not is_mounted(data_path)  # its temporary folder is gone


def test_train_py_download(uploaded, tmp_path, capsys):
    _train(uploaded, tmp_path, capsys, "download")


def test_train_py_mount(uploaded, tmp_path, capsys):
    require_fuse()
    watch_logs(settings.runtime_dir())
    _train(uploaded, tmp_path, capsys, "mount")


def test_train_py_verbatim_fails_and_says_why(uploaded, tmp_path, capsys):
    """The seed's train.py uses os without importing it: the run fails, and says so."""
    from dsfs.azureml import Dataset, RunFailed

    (tmp_path / "train.py").write_text(TRAIN_PY)
    run = _run_py(uploaded, Dataset.File.from_files(path=(uploaded.get_default_datastore(), TARGET)), "download")
    assert run.get_status() == "Failed" and run.exit_code == 1
    with pytest.raises(RunFailed, match="exited with code 1"):
        run.wait_for_completion(show_output=True)
    assert "NameError: name 'os' is not defined" in capsys.readouterr().out


# -- what AzureML has and dsfs has not ---------------------------------------------------------------


def test_no_dsfs_meaning_is_a_warning_or_a_dsfs_error(ws, tmp_path, capsys):
    from dsfs.azureml import Experiment, ScriptRunConfig, Workspace

    Workspace(subscription_id="sub", resource_group="rg", workspace_name="ws")
    Workspace.from_config(path="config.json")
    config = ScriptRunConfig(source_directory=".", script="script.py", environment=object(),
                             max_run_duration_seconds=60)
    err = capsys.readouterr().err
    for name in ("subscription_id", "resource_group", "workspace_name", "path", "environment",
                 "max_run_duration_seconds"):
        assert f"({name}=...)" in err and "ignored" in err
    with pytest.raises(LocalFileNotFound):
        Experiment(ws, "x").submit(ScriptRunConfig(source_directory="missing", script="script.py"))
    with pytest.raises(UsageError, match="needs a script"):
        ScriptRunConfig(source_directory=".")
    with pytest.raises(UsageError, match="cannot run no-such-command"):
        Experiment(ws, "x").submit(ScriptRunConfig(command=["no-such-command"]))
    config.run_config.data_references["x"] = "not a reference"
    with pytest.raises(UsageError, match="expected a DataReference"):
        Experiment(ws, "x").submit(config)


def test_relative_path_on_compute_is_under_source_directory(uploaded, tmp_path):
    """AzureML: a relative path_on_compute is under the job's working directory, source_directory."""
    from dsfs.azureml import Experiment, ScriptRunConfig

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "script.py").write_text(SCRIPT)
    data_ref = uploaded.get_default_datastore().path(TARGET).as_download()
    data_ref.path_on_compute = "inputs"
    config = ScriptRunConfig(source_directory="src", script="script.py", arguments=[data_ref])
    run = Experiment(uploaded, "relative").submit(config)
    assert f"ARG {tmp_path / 'src' / 'inputs'}" in run.output.splitlines()
    assert read_tree(tmp_path / "src" / "inputs") == FILES and data_ref.path is None  # the caller's object untouched

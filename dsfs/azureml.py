"""AzureML's data API (`azureml.core`) on dsfs: Workspace, Datastore, Dataset.File, ScriptRunConfig
and Experiment with AzureML's names, keywords and defaults, so that a script written for AzureML's
datastores and data references runs on a dsfs node with one changed line,
`from dsfs.azureml import Workspace, Datastore, Dataset, ScriptRunConfig, Experiment`.

Every call delegates to what dsfs already has:

- `Workspace` is this node's dsfs configuration: its datastores (`$XDG_CONFIG_HOME/dsfs/config.toml`,
  dsfs.store.datastores) and its compute. `from_config()` and `Workspace()` give the same thing;
  AzureML's subscription, resource group, workspace name, `path` and `auth` have no dsfs meaning and
  are ignored with a warning. The default datastore is dsfs's (`local`, the embedded store, unless
  `dsfs datastore set-default` named another).
- `Datastore` is a dsfs datastore. `register_azure_blob_container` registers `az://<container>` with
  adlfs's options (account_name, sas_token or account_key); `endpoint` is AzureML's domain suffix
  (core.windows.net), or a whole blob endpoint URL (`http://127.0.0.1:10000/devstoreaccount1`, as
  Azurite and Azure Stack have), which adlfs only takes inside a connection string, so one is made.
  Further keyword options are adlfs options, stored as given. Secrets are kept as
  `dsfs datastore register` keeps them (a 0600 file, shown as *** everywhere). `upload` is
  `dsfs datastore upload` (plain files, as they are).
- `datastore.path(p).as_mount()` / `.as_download()` and `Dataset.File.from_files((datastore, p))`
  are dsfs's `datastore:NAME/PATH` input: a snapshot of the files there now (an immutable version in
  the embedded store, `Dataset.get("datastore:NAME/PATH")`), handed over as a dsfs DataReference.
  `str(ref)` is `$DSFS_DATAREFERENCE_<name>` (AzureML's `$AZUREML_DATAREFERENCE_<name>`);
  `ref.to_config()` is a plain dict.
- `ComputeTarget` is this node: every name in `ws.compute_targets` gives it, and a job runs here.
- `Experiment(ws, name).submit(ScriptRunConfig(...))` runs the script here, as `dsfs run` does: every
  DataReference in `arguments` or in `run_config.data_references` (an object or its `to_config()`) is
  mounted or downloaded, `$DSFS_DATAREFERENCE_<name>` and `$AZUREML_DATAREFERENCE_<name>` in the
  arguments are expanded, the job sees both variables (so an unchanged train.py that reads AzureML's
  finds it) and `DSFS_DATASET_ID_<name>`, and everything is cleaned up when the job exits, fails or
  is interrupted (SIGTERM or Ctrl-C: forwarded to the job, whose exit is awaited, as `dsfs run`
  does; dsfs.datarefs.run_job). A relative `path_on_compute` is under `source_directory`, the job's working
  directory, as in AzureML. Unlike AzureML, `submit` returns when the job has ended (its output kept,
  printed by `wait_for_completion(show_output=True)`), so nothing stays mounted behind the caller's
  back.

No dsfs meaning: Azure environments, Docker, distributed job configs and run durations (the job runs
with this Python, `sys.executable`), tabular datasets (`Dataset.Tabular`: a clear error), the
portal and Storage Explorer. Such arguments are ignored with a warning when set; errors are dsfs's
(dsfs.errors, one line each), never a TypeError for a keyword AzureML accepts.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from dsfs.authoring import datastore_upload
from dsfs.authoring.localfiles import warn
from dsfs.datarefs import ENV_PREFIX, DataReference, expand, run_job
from dsfs.dataset import Dataset as _Dataset
from dsfs.errors import DsfsError, LocalFileNotFound, UsageError
from dsfs.store import datastores

AZUREML_PREFIX = "AZUREML_DATAREFERENCE_"
DEFAULT_ENDPOINT = "core.windows.net"
AZUREML_URI = re.compile(r"azureml://datastores/([^/]+)/paths/(.+)")  # AzureML's own datastore URI


def _ignored(call: str, reason: str, **given: Any) -> None:
    """Warn about each AzureML argument that was set and has no dsfs meaning."""
    for key, value in given.items():
        if value not in (None, False, {}, []):
            warn(f"{call}({key}=...): {reason}; ignored")


def _variable_name(name: str) -> str:
    """A data reference's name as an environment variable can hold it (datastore names may have '-', '.')."""
    name = re.sub(r"\W", "_", name)
    return name if re.match(r"[A-Za-z_]", name) else "_" + name


class RunFailed(DsfsError):
    """A submitted job exited with a non-zero code (AzureML's ActivityFailedException)."""


# -- the workspace: this node -------------------------------------------------------------------


class ComputeTarget:
    """This node. dsfs has no clusters: a job submitted with any compute target runs here, where
    `Experiment.submit` is called; the name is kept only to be shown."""

    def __init__(self, workspace: Workspace | None = None, name: str = "local"):
        self.name = name

    def __repr__(self) -> str:
        return f"ComputeTarget({self.name!r}: this node)"


class ComputeTargets(Mapping[str, ComputeTarget]):
    """`ws.compute_targets`: every name gives this node (a ComputeTarget so named); listed, it is
    only `local`."""

    def __getitem__(self, name: str) -> ComputeTarget:
        return ComputeTarget(name=name)

    def __iter__(self) -> Iterator[str]:
        return iter(["local"])

    def __len__(self) -> int:
        return 1


class Workspace:
    """This node's dsfs configuration: its datastores and its compute (see the module docstring).
    AzureML's subscription_id, resource_group, workspace_name and auth are ignored with a warning."""

    def __init__(self, subscription_id: str | None = None, resource_group: str | None = None,
                 workspace_name: str | None = None, auth: Any = None, **kwargs: Any):
        _ignored("Workspace", "a dsfs node has one configuration, its datastores", subscription_id=subscription_id,
                 resource_group=resource_group, workspace_name=workspace_name, auth=auth, **kwargs)
        self.name = workspace_name or "dsfs"

    def __repr__(self) -> str:
        return f"Workspace(dsfs node, datastores: {', '.join(self.datastores)})"

    @classmethod
    def from_config(cls, path: str | None = None, auth: Any = None, _logger: Any = None,
                    _file_name: str | None = None) -> Workspace:
        """The node's dsfs configuration; AzureML's config.json (`path`) is not read."""
        _ignored("Workspace.from_config", "dsfs reads its datastores from $XDG_CONFIG_HOME/dsfs/config.toml",
                 path=path, auth=auth, _file_name=_file_name)
        return cls()

    def get_default_datastore(self) -> Datastore:
        """dsfs's default datastore: `local` (the embedded store) unless another was made the default."""
        return Datastore(self)

    def set_default_datastore(self, name: str) -> None:
        """`dsfs datastore set-default NAME`."""
        datastores.set_default(name)

    @property
    def datastores(self) -> dict[str, Datastore]:
        """Every datastore of the node, `local` included, by name."""
        return {d.name: Datastore(self, d.name) for d in datastores.all_datastores()}

    @property
    def compute_targets(self) -> ComputeTargets:
        """Any name gives this node: jobs run locally (ComputeTarget)."""
        return ComputeTargets()


# -- datastores -----------------------------------------------------------------------------------


def _blob_options(account_name: str, sas_token: str | None, account_key: str | None, protocol: str | None,
                  endpoint: str | None) -> dict:
    """adlfs options for AzureML's account, credential, protocol and endpoint. adlfs reaches an account
    as https://{account_host}; any other blob endpoint only through a connection string."""
    options: dict = {"account_name": account_name}
    if sas_token:  # usually a container's SAS, which cannot read the container's properties: adlfs would warn
        options["assume_container_exists"] = True
    if "://" in (endpoint or ""):
        url = (endpoint or "").rstrip("/")
    elif (protocol or "https") != "https":
        url = f"{protocol}://{account_name}.blob.{endpoint or DEFAULT_ENDPOINT}"
    else:
        if endpoint and endpoint != DEFAULT_ENDPOINT:
            options["account_host"] = f"{account_name}.blob.{endpoint}"
        credential = {"sas_token": sas_token} if sas_token else {"account_key": account_key} if account_key else {}
        return {**options, **credential}
    parts = [f"BlobEndpoint={url}"]
    if sas_token:
        parts.append(f"SharedAccessSignature={sas_token.lstrip('?')}")
    elif account_key:
        parts += [f"AccountName={account_name}", f"AccountKey={account_key}"]
    return {**options, "connection_string": ";".join(parts)}


class Datastore:
    """A dsfs datastore as AzureML's Datastore shows one; `datastore` is the dsfs one
    (dsfs.store.datastores.Datastore). `Datastore(ws, name)` is `Datastore.get(ws, name)`; no name
    gives the default datastore."""

    def __init__(self, workspace: Workspace | None = None, name: str | None = None):
        self.datastore = datastores.get(name or datastores.default_name())

    name = property(lambda self: self.datastore.name)

    @property
    def container_name(self) -> str | None:
        """The blob container of an az:// datastore (None for other kinds)."""
        url = self.datastore.url
        return url.split("://", 1)[1].split("/", 1)[0] if url.startswith(("az://", "abfs://")) else None

    @property
    def account_name(self) -> str | None:
        return self.datastore.options.get("account_name")

    def __repr__(self) -> str:
        """What `dsfs datastore show --json` prints: secrets as ***."""
        return f"Datastore({json.dumps(self.datastore.public())})"

    @staticmethod
    def get(workspace: Workspace | None, datastore_name: str) -> Datastore:
        """The datastore so named (DatastoreError listing the known ones if there is none)."""
        return Datastore(workspace, datastore_name)

    @staticmethod
    def get_default(workspace: Workspace | None) -> Datastore:
        return Datastore(workspace)

    @staticmethod
    def register_azure_blob_container(workspace: Workspace | None, datastore_name: str, container_name: str,
                                      account_name: str, sas_token: str | None = None,
                                      account_key: str | None = None, protocol: str | None = None,
                                      endpoint: str | None = None, overwrite: bool = False,
                                      create_if_not_exists: bool = False, skip_validation: bool = False,
                                      blob_cache_timeout: int | None = None, grant_workspace_access: bool = False,
                                      subscription_id: str | None = None, resource_group: str | None = None,
                                      **options: Any) -> Datastore:
        """`dsfs datastore register NAME az://CONTAINER` with the account's adlfs options (see the
        module docstring for endpoint); `options` are more adlfs options, stored as given (e.g.
        connection_string). Nothing is contacted (as with skip_validation=True). Without sas_token
        or account_key, adlfs signs in with the node's Azure identity (AzureML's identity-based access)."""
        _ignored("Datastore.register_azure_blob_container", "dsfs does not create containers or manage "
                 "Azure access", create_if_not_exists=create_if_not_exists, blob_cache_timeout=blob_cache_timeout,
                 grant_workspace_access=grant_workspace_access, subscription_id=subscription_id,
                 resource_group=resource_group)
        blob = _blob_options(account_name, sas_token, account_key, protocol, endpoint)
        datastores.register(datastore_name, f"az://{container_name}", {**blob, **options}, overwrite=overwrite)
        return Datastore(workspace, datastore_name)

    def unregister(self) -> None:
        """`dsfs datastore remove NAME` (the data stays)."""
        datastores.remove(self.name)

    def upload(self, src_dir: str, target_path: str | None = None, overwrite: bool = False,
               show_progress: bool = True) -> DataReference | None:
        """`dsfs datastore upload NAME SRC_DIR --target-path TARGET`: the files as they are. Returns,
        as AzureML does, a mount reference to target_path (None for the datastore's root, which
        holds the dsfs store and is no input). show_progress: a bar where stderr is a terminal."""
        datastore_upload.upload(self.datastore, src_dir, target_path or "", overwrite=overwrite,
                                show_progress=None if show_progress else False)
        return self.path(target_path).as_mount() if (target_path or "").strip("/.") else None

    def path(self, path: str | None = None, data_reference_name: str | None = None) -> DataPath:
        """A path in this datastore, to hand to a job (DataPath)."""
        return DataPath(self, path, data_reference_name)


class DataPath:
    """A path in a datastore (AzureML's DataPath). `as_mount()` / `as_download()` snapshot the files
    there now (dsfs's `datastore:NAME/PATH`) and return a dsfs DataReference named
    data_reference_name, by default the datastore's name (as AzureML names it)."""

    def __init__(self, datastore: Datastore, path_on_datastore: str | None = None, name: str | None = None):
        self.datastore = datastore
        self.path_on_datastore = path_on_datastore
        self.data_reference_name = _variable_name(name or datastore.name)

    @property
    def ref(self) -> str:
        """dsfs's name for these files (no path: the whole datastore, which dsfs refuses as an input)."""
        return f"{datastores.PREFIX}{self.datastore.name}/{(self.path_on_datastore or '').strip('/')}"

    def __repr__(self) -> str:
        return f"DataPath({self.ref})"

    def as_mount(self) -> DataReference:
        """Mounted read-only and lazily for the job."""
        return _Dataset.get(self.ref).as_mount(name=self.data_reference_name)

    def as_download(self, path_on_compute: str | None = None, overwrite: bool = False) -> DataReference:
        """Downloaded for the job (a private copy); overwrite: replace files already at path_on_compute."""
        return _Dataset.get(self.ref).as_download(path_on_compute, name=self.data_reference_name, overwrite=overwrite)


# -- datasets -------------------------------------------------------------------------------------


def _datastore_ref(path: Any) -> str:
    """`datastore:NAME/PATH` for what AzureML's from_files takes: (datastore, path), a DataPath, a
    list of one of them, `azureml://datastores/NAME/paths/PATH`, or dsfs's own `datastore:NAME/PATH`."""
    if isinstance(path, list):
        if len(path) != 1:
            raise UsageError(f"Dataset.File.from_files: {len(path)} paths; dsfs snapshots one datastore path "
                             f"at a time (make one dataset per path, or upload them under one folder)")
        path = path[0]
    if isinstance(path, tuple) and len(path) == 2 and isinstance(path[0], Datastore):
        return DataPath(path[0], path[1]).ref
    if isinstance(path, DataPath):
        return path.ref
    if isinstance(path, str):
        found = AZUREML_URI.fullmatch(path)
        if found:
            return f"{datastores.PREFIX}{found.group(1)}/{found.group(2)}"
        if path.startswith(datastores.PREFIX):
            return path
    raise UsageError(f"Dataset.File.from_files: cannot read path {path!r}; give (datastore, 'path/on/datastore'), "
                     f"datastore.path('...'), 'azureml://datastores/NAME/paths/PATH' or 'datastore:NAME/PATH'")


class FileDataset:
    """AzureML's FileDataset: the files at a datastore path, as a dsfs snapshot (`dataset`, an
    immutable version: the files as they were when it was made)."""

    def __init__(self, dataset: _Dataset):
        self.dataset = dataset

    id = property(lambda self: self.dataset.id)

    def __repr__(self) -> str:
        return f"FileDataset({self.dataset.info.description}, id={self.id})"

    def to_path(self) -> list[str]:
        """The files' paths, as AzureML lists them ('/sub/b.bin')."""
        return ["/" + p for p in self.dataset.list_files()]

    def as_mount(self, path_on_compute: str | None = None) -> DataReference:
        """Mounted read-only for the job; path_on_compute: None -> a temporary folder, relative ->
        under the job's working directory."""
        return self.dataset.as_mount(path_on_compute)

    def as_download(self, path_on_compute: str | None = None) -> DataReference:
        """Downloaded for the job (a private copy); path_on_compute as for as_mount."""
        return self.dataset.as_download(path_on_compute)

    def download(self, target_path: str | None = None, overwrite: bool = False) -> list[str]:
        """`dsfs download`: the files into target_path (default: a new temporary folder); their paths."""
        target = target_path or tempfile.mkdtemp(prefix="dsfs-dataset-")
        self.dataset.download(target, overwrite=overwrite)
        return [os.path.join(os.path.abspath(target), p) for p in self.dataset.list_files()]


class _FileFactory:
    """`Dataset.File`."""

    @staticmethod
    def from_files(path: Any, validate: bool = True, partition_format: str | None = None,
                   is_file: bool = False) -> FileDataset:
        """A FileDataset of the files at `path` (see _datastore_ref for the forms taken). They are
        always listed (validate has no other meaning); partition_format is not supported (ignored)."""
        _ignored("Dataset.File.from_files", "dsfs does not parse partitions from paths",
                 partition_format=partition_format)
        return FileDataset(_Dataset.get(_datastore_ref(path)))


class _NoTabular:
    """`Dataset.Tabular`: dsfs keeps files, not tables."""

    def __getattr__(self, name: str):
        raise UsageError(f"Dataset.Tabular.{name}: dsfs has no tabular datasets; use Dataset.File.from_files "
                         f"and read the files in the job (pandas.read_csv on the mounted path)")


class Dataset:
    """AzureML's Dataset factories: `Dataset.File.from_files(...)`."""

    File = _FileFactory
    Tabular = _NoTabular()


# -- running a job here ---------------------------------------------------------------------------


class RunConfiguration:
    """The part of AzureML's RunConfiguration dsfs uses: `data_references`, name -> a DataReference
    or its `to_config()`, set up for the job whether or not an argument names it."""

    def __init__(self) -> None:
        self.data_references: dict[str, Any] = {}


class ScriptRunConfig:
    """What to run: `script` with `arguments` (DataReferences among them become their paths), in
    `source_directory`, with this Python; or `command` as given. compute_target is always this node;
    environment, distributed_job_config, docker_runtime_config and max_run_duration_seconds have no
    dsfs meaning (ignored with a warning)."""

    def __init__(self, source_directory: str = ".", script: str | None = None, arguments: Sequence[Any] | None = None,
                 run_config: RunConfiguration | None = None, _telemetry_values: Any = None,
                 compute_target: ComputeTarget | str | None = None, environment: Any = None,
                 distributed_job_config: Any = None, resume_from: Any = None,
                 max_run_duration_seconds: int | None = None, command: str | Sequence[str] | None = None,
                 docker_runtime_config: Any = None):
        _ignored("ScriptRunConfig", "the job runs on this node with this Python", environment=environment,
                 distributed_job_config=distributed_job_config, resume_from=resume_from,
                 max_run_duration_seconds=max_run_duration_seconds, docker_runtime_config=docker_runtime_config)
        if not script and not command:
            raise UsageError("ScriptRunConfig needs a script (or a command)")
        self.source_directory = source_directory
        self.script = script
        self.arguments = list(arguments or [])
        self.command = command
        self.run_config = run_config or RunConfiguration()
        self.compute_target = compute_target

    def _argv(self) -> list[Any]:
        if self.command:
            return shlex.split(self.command) if isinstance(self.command, str) else list(self.command)
        return [sys.executable, self.script, *self.arguments]


def _reference(item: Any, source_directory: str) -> DataReference:
    """A fresh DataReference for one input (the caller's object is left as it is), with a relative
    path_on_compute under the job's working directory."""
    if isinstance(item, DataReference):
        config = item.to_config()
        dataset = item.dataset
    elif isinstance(item, dict) and "dataset_id" in item:
        config = item
        dataset = _Dataset.get(config["dataset_id"], store=config.get("store"))
    else:
        raise UsageError(f"data reference {item!r}: expected a DataReference or its to_config()")
    path = config.get("path_on_compute")
    if path is not None:
        path = os.path.join(source_directory, path)  # an absolute path stays as it is
    return DataReference(dataset, config.get("mode", "mount"), path, config.get("data_reference_name"),
                         **config.get("options", {}))


def _inputs(config: ScriptRunConfig, source_directory: str) -> list[DataReference]:
    """Every input of the job, resolved before anything is set up; one name, one dataset."""
    found: dict[str, DataReference] = {}
    in_arguments = [a for a in config._argv() if isinstance(a, DataReference)]
    for item in in_arguments + list(config.run_config.data_references.values()):
        ref = _reference(item, source_directory)
        other = found.get(ref.name)
        if other is not None and other.dataset.id != ref.dataset.id:
            raise UsageError(f"two data references are named {ref.name}; give one another data_reference_name")
        found[ref.name] = ref  # run_config's (listed last) wins over the same reference in the arguments
    return list(found.values())


def _argument(arg: Any, env: dict[str, str]) -> str:
    """An argument as the job gets it: a DataReference or $AZUREML_/$DSFS_DATAREFERENCE_<name> -> its path."""
    text = str(arg)  # a DataReference's str is $DSFS_DATAREFERENCE_<name>
    text = re.sub(r"\$(\{?)" + AZUREML_PREFIX, r"$\g<1>" + ENV_PREFIX, text)
    return expand(text, env)


class Run:
    """A finished job: its status ("Completed" or "Failed"), exit code and output."""

    def __init__(self, experiment: Experiment, exit_code: int, output: str):
        self.id = f"{experiment.name}_{uuid.uuid4().hex[:12]}"
        self.experiment = experiment
        self.exit_code = exit_code
        self.output = output

    @property
    def status(self) -> str:
        return "Completed" if self.exit_code == 0 else "Failed"

    def get_status(self) -> str:
        return self.status

    def __repr__(self) -> str:
        return f"Run({self.id}, {self.status}, exit code {self.exit_code})"

    def wait_for_completion(self, show_output: bool = False, wait_post_processing: bool = False,
                            raise_on_error: bool = True) -> dict:
        """The job has ended already (see the module docstring). show_output: print its output;
        raise_on_error: a failed job raises RunFailed."""
        if show_output:
            print(self.output, end="", flush=True)
        if raise_on_error and self.exit_code != 0:
            raise RunFailed(f"run {self.id} failed: {self.experiment.name} exited with code {self.exit_code}")
        return {"runId": self.id, "status": self.status, "exitCode": self.exit_code}


class Experiment:
    """A name for runs; `submit` runs a ScriptRunConfig on this node."""

    def __init__(self, workspace: Workspace, name: str, **kwargs: Any):
        self.workspace = workspace
        self.name = name

    def submit(self, config: ScriptRunConfig, tags: dict | None = None, **kwargs: Any) -> Run:
        """Set up the inputs, run the job in source_directory with their variables, clean up (as
        `dsfs run` does: dsfs.datarefs); returns the finished Run. Its output (stdout and stderr) is
        kept in `run.output`."""
        _ignored("Experiment.submit", "dsfs keeps no run records", tags=tags, **kwargs)
        source = os.path.abspath(config.source_directory)
        if not os.path.isdir(source):
            raise LocalFileNotFound(f"no such folder: {config.source_directory} (ScriptRunConfig's source_directory)")
        refs = _inputs(config, source)
        with tempfile.TemporaryFile() as log:
            code = run_job(refs, config._argv(), cwd=source, stdin=subprocess.DEVNULL, stdout=log,
                           extra_env=lambda ref: {AZUREML_PREFIX + ref.name: ref.env[ENV_PREFIX + ref.name]},
                           expand_arg=_argument)
            log.seek(0)
            output = log.read().decode(errors="replace")
        return Run(self, code, output)

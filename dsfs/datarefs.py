"""Data references: handing a dataset to training code through the environment.

AzureML's idea (`$AZUREML_DATAREFERENCE_<name>`): the job receives a path in
`DSFS_DATAREFERENCE_<NAME>` (and the version id in `DSFS_DATASET_ID_<NAME>`, for provenance) and
never needs to know where the data came from. An input is mounted (lazy, read-only) or downloaded
(a private mutable copy). path_on_compute: None -> a new temporary folder, absolute -> as given,
relative -> under the working directory.

`DataReference` is the Python form (`with Dataset.get(...).as_mount() as path:`); `dsfs run`,
`dsfs env` and dsfs.azureml's `Experiment.submit` use the same objects (`to_config()` describes one
as a plain dict). Cleanup removes only what setup made: a temporary folder is
deleted, a folder given by the user is left (only its mount is undone). A mount is
`dsfs.daemon.mount` (a detached daemon, as `dsfs mount` starts); its errors are the daemon's own
DsfsErrors, with their messages and exit codes.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dsfs.errors import UsageError

if TYPE_CHECKING:
    from dsfs.daemon import MountHandle

MODES = ("mount", "download")
DATASTORE_PREFIX = "datastore:"  # dsfs.store.datastores.PREFIX (not imported here: it loads fsspec)
MOUNT_OPTIONS = ("cache_dir", "cache_size", "read_ahead", "allow_other")  # what as_mount(**options) passes on
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ENV_PREFIX = "DSFS_DATAREFERENCE_"
ID_PREFIX = "DSFS_DATASET_ID_"


@dataclass
class InputSpec:
    name: str
    dataset: str
    mode: str = "mount"
    path_on_compute: str | None = None


def parse_input(spec: str) -> InputSpec:
    """NAME=DATASET[:mount|:download][:PATH_ON_COMPUTE]"""
    name, sep, rest = spec.partition("=")
    if not sep or not NAME_RE.match(name) or not rest:
        raise UsageError(f"invalid --input {spec!r}: expected NAME=DATASET[:mount|:download][:PATH] "
                         f"with NAME made of letters, digits and _")
    parts = rest.split(":")
    for i in range(len(parts) - 1, 0, -1):  # the last ':mount' / ':download' segment splits it
        if parts[i] in MODES:
            dataset, mode, path = ":".join(parts[:i]), parts[i], ":".join(parts[i + 1:]) or None
            break
    else:
        dataset, mode, path = rest, "mount", None
        unknown = rest.removeprefix(DATASTORE_PREFIX).split(":")[1:]  # only a datastore ref has a ':'
        if unknown:
            raise UsageError(f"invalid --input {spec!r}: {unknown[0]!r} is not a mode; use "
                             f"NAME=DATASET[:{'|:'.join(MODES)}][:PATH]")
    if not dataset:
        raise UsageError(f"invalid --input {spec!r}: no dataset")
    return InputSpec(name, dataset, mode, path)


class DataReference:
    """A dataset made available at a path for the length of a job."""

    def __init__(self, dataset, mode: str = "mount", path_on_compute: str | None = None, name: str | None = None,
                 **options):
        if mode not in MODES:
            raise UsageError(f"unknown mode {mode!r}: use mount or download")
        self.dataset = dataset
        self.mode = mode
        self.name = name or re.sub(r"\W", "_", dataset.name) or "input"
        if not NAME_RE.match(self.name):
            self.name = "_" + self.name
        self.path_on_compute = path_on_compute
        self.options = options
        self.path: str | None = None
        self._temporary = False
        self._mount: MountHandle | None = None  # while mounted

    def __str__(self) -> str:
        return f"${ENV_PREFIX}{self.name}"

    @property
    def data_reference_name(self) -> str:
        """AzureML's word for `name` (dsfs.azureml)."""
        return self.name

    def to_config(self) -> dict:
        """A plain description of this reference, enough to set it up again elsewhere (AzureML's
        DataReferenceConfiguration): the store by its reference (`datastore:NAME` or a URL), never
        by the options and secrets that open it."""
        return {"data_reference_name": self.name, "dataset_id": self.dataset.id, "store": self.dataset.store.ref,
                "mode": self.mode, "path_on_compute": self.path_on_compute, "options": dict(self.options)}

    @property
    def env(self) -> dict[str, str]:
        if self.path is None:
            raise UsageError(f"data reference {self.name} is not set up")
        return {f"{ENV_PREFIX}{self.name}": self.path, f"{ID_PREFIX}{self.name}": self.dataset.id}

    def setup(self) -> str:
        if self.path_on_compute is None:
            self.path = tempfile.mkdtemp(prefix=f"dsfs-{self.name}-")
            self._temporary = True
        else:
            self.path = os.path.abspath(self.path_on_compute)
        try:
            if self.mode == "download":
                self.dataset.download(self.path, max_workers=self.options.get("max_workers"),
                                      overwrite=self.options.get("overwrite", False))
            else:
                os.makedirs(self.path, exist_ok=True)
                from dsfs import daemon  # not at import: `dsfs --help` and `import dsfs` do not load it

                options = {k: self.options[k] for k in MOUNT_OPTIONS if self.options.get(k) is not None}
                self._mount = daemon.mount(self.dataset.id, self.path, self.dataset.store,
                                           temporary=self._temporary, **options)
        except BaseException:
            self.cleanup()
            raise
        return self.path

    def cleanup(self) -> None:
        if self.path is None:
            return
        if self._mount is not None:
            self._mount.unmount()
            self._mount = None
        if self._temporary:
            shutil.rmtree(self.path, ignore_errors=True)
        self.path = None

    def __enter__(self) -> str:
        return self.setup()

    def __exit__(self, *exc) -> None:
        self.cleanup()


class Interrupted(Exception):
    """SIGTERM or SIGINT arrived while the inputs were being set up (they have been cleaned up)."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum


def run_job(refs: list[DataReference], command: list, *, cwd: str | None = None, stdin=None, stdout=None,
            extra_env=None, expand_arg=None) -> int:
    """Set up every input, run `command` with their variables, clean up, and return its exit code
    (128 + N when a signal N ended it): `dsfs run` and dsfs.azureml's Experiment.submit.

    In the main thread, SIGTERM and SIGINT are handled: during setup they undo what was set up and
    raise Interrupted; while the job runs they are forwarded to it and the job's exit is awaited, so
    cleanup always runs and no mount stays behind; cleanup itself is not interrupted. `extra_env(ref)`
    gives more variables for an input; `expand_arg(arg, env)` turns an argument into the job's
    (default: `expand` of its str). stdout, if given, also takes the job's stderr."""
    import signal
    import subprocess
    import threading

    expand_arg = expand_arg or (lambda arg, env: expand(str(arg), env))

    def interrupt(signum, frame):
        raise Interrupted(signum)

    signals = (signal.SIGTERM, signal.SIGINT) if threading.current_thread() is threading.main_thread() else ()
    previous = {s: signal.signal(s, interrupt) for s in signals}
    try:
        env: dict[str, str] = {}
        for ref in refs:
            ref.setup()
            env.update(ref.env)
            env.update(extra_env(ref) if extra_env else {})
        full_env = {**os.environ, **env}
        argv = [expand_arg(arg, full_env) for arg in command]
        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=full_env, stdin=stdin, stdout=stdout,
                                    stderr=subprocess.STDOUT if stdout is not None else None)
        except OSError as exc:  # the command itself is missing or not executable
            raise UsageError(f"cannot run {argv[0]}: {exc.strerror}") from None
        for s in previous:  # from now on a signal is the job's: forward it and wait
            signal.signal(s, lambda signum, frame: proc.send_signal(signum))
        code = proc.wait()
        return code if code >= 0 else 128 - code
    finally:
        for s in previous:
            signal.signal(s, signal.SIG_IGN)  # cleanup must not be interrupted halfway
        for ref in reversed(refs):
            ref.cleanup()
        for s, handler in previous.items():
            signal.signal(s, handler)


def expand(arg: str, env: dict[str, str]) -> str:
    """Replace $DSFS_DATAREFERENCE_X / ${DSFS_DATAREFERENCE_X} of our inputs (and nothing else)."""
    def sub(match):
        key = match.group(1) or match.group(2)
        return env.get(key, match.group(0))

    return re.sub(r"\$\{(DSFS_[A-Za-z0-9_]+)\}|\$(DSFS_[A-Za-z0-9_]+)", sub, arg)

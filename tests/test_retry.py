"""The one retry policy (dsfs.retry), the scrubbed cause kept on errors for the debug log, and the
CLI's -v/-vv (nothing extra on stderr without them)."""

from __future__ import annotations

import logging

import pytest

from dsfs import Dataset, retry
from dsfs.errors import AccessDenied, StoreReadOnly, StoreUnavailable
from dsfs.store.layout import Store
from conftest import make_tree


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setenv("DSFS_RETRY_DELAYS", "0.01,0.01,0.01")


@pytest.fixture
def dsfs_logging():
    """The CLI sets the `dsfs` logger's handlers and level; put them back for the tests after."""
    tree = logging.getLogger("dsfs")
    saved = tree.handlers[:], tree.level
    yield
    tree.handlers[:], level = saved
    tree.setLevel(level)


def _failing(error: Exception, then=None):
    attempts = []

    def fn():
        attempts.append(1)
        if then is not None and len(attempts) > 1:
            return then
        raise error

    return fn, attempts


def test_unavailable_is_retried_after_each_delay_then_raised(caplog):
    fn, attempts = _failing(StoreUnavailable("down"))
    with caplog.at_level(logging.DEBUG, logger="dsfs"), pytest.raises(StoreUnavailable, match="down"):
        retry.call(fn, "read of x")
    assert len(attempts) == 4  # once, then after each of the three delays
    retries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("retrying read of x")]
    assert len(retries) == 3 and "attempt 1 of 4 failed: down" in retries[0]


def test_a_retry_that_succeeds_returns_its_result():
    fn, attempts = _failing(StoreUnavailable("blip"), then=b"bytes")
    assert retry.call(fn, "read") == b"bytes" and len(attempts) == 2


@pytest.mark.parametrize("error", [AccessDenied("refused to read"), StoreReadOnly("refused to write"),
                                   ValueError("a bug")])
def test_refusals_and_other_errors_are_never_retried(error):
    fn, attempts = _failing(error)
    with pytest.raises(type(error)):
        retry.call(fn, "read")
    assert len(attempts) == 1


def test_refusals_are_not_unavailable():
    """`except StoreUnavailable` (the retry predicate) does not catch a refusal; the exit code stays 7."""
    for cls in (AccessDenied, StoreReadOnly):
        assert not issubclass(cls, StoreUnavailable) and cls.exit_code == StoreUnavailable.exit_code == 7


def test_between_can_end_the_retries_at_once():
    fn, attempts = _failing(StoreUnavailable("timed out"))

    def refused():
        raise StoreUnavailable("cannot connect (Connection refused)")

    with pytest.raises(StoreUnavailable, match="refused"):
        retry.call(fn, "read", between=refused)
    assert len(attempts) == 1


def test_no_retry_starts_past_the_time_limit():
    import time

    fn, attempts = _failing(StoreUnavailable("down"))
    with pytest.raises(StoreUnavailable):
        retry.call(fn, "read", delays=(5.0, 5.0), ends=time.monotonic() + 1.0)
    assert len(attempts) == 1


def test_the_cause_is_logged_scrubbed_and_never_chained(memory_store, caplog):
    """A backend error's text is kept (scrubbed) on the typed error and in the debug log; the secret
    option value and a password in an endpoint URL appear nowhere."""
    store = Store(memory_store, key="AKIAEXAMPLE", secret="s3cr3t-value")
    store.check(create=True)

    def broken(*args, **kwargs):
        raise RuntimeError("GET http://admin:hunter22@10.0.0.1:9000/bucket?X-Amz-Signature=abcdef "
                           "failed with secret s3cr3t-value: connection reset by peer")

    store.fs.cat_file = broken
    with caplog.at_level(logging.DEBUG, logger="dsfs"), pytest.raises(StoreUnavailable) as caught:
        store.read_version("0" * 32)
    error = caught.value
    assert error.__cause__ is None and error.__suppress_context__
    assert "RuntimeError" in error.cause and "connection reset by peer" in error.cause
    assert "connection reset by peer" in caplog.text and error.cause in caplog.text
    for secret in ("s3cr3t-value", "hunter22", "abcdef"):
        assert secret not in caplog.text and secret not in str(error) and secret not in error.cause


@pytest.fixture
def one_version(tmp_path, file_store):
    make_tree(tmp_path / "d", {"a.txt": b"alpha", "b/c.bin": b"x" * 5000})
    ds = Dataset.create("p", "n", store=file_store)
    ds.add_files(str(tmp_path / "d"))
    ds.upload()
    ds.finalize()
    return ds


def test_vv_logs_each_fetch_and_no_flag_logs_nothing(dsfs, dsfs_logging, one_version, file_store, tmp_path):
    r = dsfs("--store", file_store, "download", "p/n", tmp_path / "quiet")
    assert r.code == 0 and r.err.strip() == "", r.err
    r = dsfs("-vv", "--store", file_store, "download", "p/n", tmp_path / "loud")
    assert r.code == 0
    assert any(line.startswith("dsfs: fetch read of pack ") for line in r.err.splitlines()), r.err
    r = dsfs("-v", "--store", file_store, "download", "p/n", tmp_path / "info")
    assert r.code == 0 and "fetch read of pack" not in r.err


class _LinkFs:
    """A link's filesystem whose reads fail with `errors` in turn, then answer."""

    def __init__(self, *errors):
        self.errors, self.calls = list(errors), 0

    def cat_file(self, path, start, end):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return b"x" * (end - start)


def test_a_link_read_is_retried_but_a_refused_one_is_not():
    from dsfs.node import links

    flaky = _LinkFs(ConnectionResetError("reset"), TimeoutError("slow"))
    assert links.read_range(flaky, "/x", 0, 10, "s3://bucket/x") == b"x" * 10 and flaky.calls == 3
    refused = _LinkFs(PermissionError(13, "Permission denied"))
    with pytest.raises(AccessDenied, match="access denied to s3://bucket/x"):
        links.read_range(refused, "/x", 0, 10, "s3://bucket/x")
    assert refused.calls == 1

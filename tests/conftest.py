"""Shared fixtures: an isolated home for every test, stores, and an in-process CLI runner; the tiers
(fast, slow, mount, emulators) assigned to every test; and the log check that fails a test on an
unexpected ERROR or traceback (tests/README.md)."""

from __future__ import annotations

import inspect
import logging
import os
import re
import subprocess
import sys
import types
import uuid
import warnings
from dataclasses import dataclass

import pytest

from dsfs.cli.main import main
from servers import CLOUD_FIXTURES, azurite, gcs_server, moto_server, no_cloud_credentials  # noqa: F401 (fixtures)


XDG_DIRS = ("XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_RUNTIME_DIR")


def clean_environment(mp: pytest.MonkeyPatch, home) -> None:
    """No DSFS_* or XDG_* variable of the developer's or CI's (nor systemd's NOTIFY_SOCKET) reaches a
    test; the XDG dirs point under `home`. A test sets what it needs with monkeypatch."""
    for var in list(os.environ):
        if var.startswith(("DSFS_", "XDG_")) or var == "NOTIFY_SOCKET":
            mp.delenv(var)
    for var in XDG_DIRS:
        path = home / var.lower()
        path.mkdir(parents=True, exist_ok=True)
        mp.setenv(var, str(path))


@pytest.fixture(scope="session", autouse=True)
def isolated_session(tmp_path_factory):
    """The same for module- and session-scoped fixtures, which are set up before `isolated_home`."""
    with pytest.MonkeyPatch.context() as mp:
        clean_environment(mp, tmp_path_factory.mktemp("session-home"))
        yield


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Every test gets its own XDG dirs, so state and the default store never leak between tests."""
    clean_environment(monkeypatch, tmp_path / "home")
    return tmp_path / "home"


@pytest.fixture
def memory_store():
    """A fresh memory:// store URL (the memory filesystem is per process)."""
    return f"memory://dsfs-test-{uuid.uuid4().hex}"


@pytest.fixture
def file_store(tmp_path):
    return f"file://{tmp_path}/store"


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def dsfs(capfdbinary):
    """Run the CLI in-process: dsfs("list", "--json") -> Result(code, out, err)."""

    def run(*args) -> Result:
        capfdbinary.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capfdbinary.readouterr()
        return Result(code, captured.out.decode(errors="replace"), captured.err.decode(errors="replace"))

    return run


def run_cli(*args, env=None, **kwargs) -> subprocess.CompletedProcess:
    """Run the real console script in a subprocess (for exit codes, tracebacks and kill tests)."""
    return subprocess.run([sys.executable, "-m", "dsfs.cli.main", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, **kwargs)


def make_tree(root, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def final_version(store, folder, parents=None, name="n", project="p"):
    """A final version of project/name holding `folder`, read back from the store as a consumer
    would see it. Its close makes statistics only: automatic previews read sample files through the
    node cache, and a test that damages the store afterwards expects a cold cache."""
    from dsfs import Dataset

    ds = Dataset.create(project, name, parents=parents, store=store)
    ds.add_files(str(folder))
    ds.finalize(preview="stats")
    return Dataset.get(ds.id, store=store)


def read_tree(root) -> dict[str, bytes]:
    """{relative path: bytes} of every file under `root` (make_tree's inverse)."""
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            out[os.path.relpath(path, root)] = open(path, "rb").read()
    return out


# -- tiers (STYLE 9): `pytest -m fast` in under a minute; `mount` and `emulators` by what a test uses ------

EMULATOR_FIXTURES = frozenset(CLOUD_FIXTURES.values())


def _names_in(code: types.CodeType) -> set[str]:
    """The global names and string constants of a function's code and of the code nested in it."""
    names = set(code.co_names) | {c for c in code.co_consts if isinstance(c, str)}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names_in(const)
    return names


def _names_used(item) -> set[str]:
    """What the test function and the fixtures it uses name in their code: `require_fuse`, or
    `request.getfixturevalue("moto_server")`, are tiers no fixture name shows."""
    funcs = [getattr(item, "function", None)]
    info = getattr(item, "_fixtureinfo", None)
    for defs in info.name2fixturedefs.values() if info else ():
        funcs.extend(d.func for d in defs)
    names: set[str] = set()
    for func in funcs:
        code = getattr(inspect.unwrap(getattr(func, "__func__", func)), "__code__", None) if func else None
        if code is not None:
            names |= _names_in(code)
    return names


def tiers(item) -> set[str]:
    """mount: needs FUSE (the `node` fixtures, or require_fuse()); emulators: needs moto, Azurite or
    fake-gcs-server (their fixtures, a ThreadedMotoServer of its own, or a "s3"/"azure"/"gcs" parameter
    of a test taking `request` or of a fixture naming CLOUD_FIXTURES: request.getfixturevalue(
    CLOUD_FIXTURES[kind]), maybe in a helper);
    fast: neither, and not marked slow."""
    names = _names_used(item)
    fixtures = set(getattr(item, "fixturenames", ()))
    argnames = getattr(getattr(item, "_fixtureinfo", None), "argnames", ())  # the test's own arguments
    params = getattr(getattr(item, "callspec", None), "params", {})
    cloud_param = any(isinstance(v, str) and set(re.split(r"\W+", v)) & set(CLOUD_FIXTURES) for v in params.values())
    found = set()
    if "node" in fixtures or "require_fuse" in names:
        found.add("mount")
    looked_up = cloud_param and ("request" in argnames or "CLOUD_FIXTURES" in names)
    if fixtures & EMULATOR_FIXTURES or names & (EMULATOR_FIXTURES | {"ThreadedMotoServer"}) or looked_up:
        found.add("emulators")
    if not found and item.get_closest_marker("slow") is None and not _listed_slow(item):
        found.add("fast")
    elif not found:
        found.add("slow")
    return found


# Neither mount nor emulators, and 0.8 s or more with other test runs on the 2 cores (0.5 s or more on
# their own; `pytest -m "fast or slow" --durations=0`): mostly `dsfs` in subprocesses, full disks, kills,
# deep lineages. Their tier is slow; a test can also say so itself with @pytest.mark.slow.
# "file::test" takes every parameter of the test, "file::test[id]" one.
SLOW = frozenset("""
    test_authoring.py::test_child_stores_only_new_chunks
    test_cli.py::test_missing_store_is_not_created_by_readers
    test_cli.py::test_no_current_dataset
    test_cli.py::test_user_errors_are_one_line
    test_consume.py::test_corrupt_pack_fails_only_that_file
    test_consume.py::test_disk_full_then_rerun
    test_consume.py::test_draft_cannot_be_consumed
    test_consume.py::test_escaping_manifest_path_is_refused
    test_consume.py::test_killed_download_resumes
    test_consume.py::test_parallel_downloads_share_the_cache
    test_consume.py::test_target_not_writable
    test_crafted.py::test_a_parents_cycle_is_refused_by_every_command
    test_datarefs.py::test_env_prints_exports
    test_datarefs.py::test_run_bad_inputs_set_up_nothing
    test_datarefs.py::test_run_download_exports_and_cleans_up
    test_datarefs.py::test_run_forwards_sigterm_and_cleans_up
    test_datarefs.py::test_signal_during_setup_leaves_nothing
    test_datastores.py::test_dead_endpoint_fails_within_seconds
    test_datastores.py::test_malformed_url
    test_datastores.py::test_readable_config_with_secrets_is_refused
    test_datastores.py::test_removing_local
    test_datastores.py::test_unknown_datastore
    test_deadlines.py::test_store_on_a_full_disk_is_exit_9
    test_drafts_concurrency.py::test_add_while_an_upload_runs_waits_or_refuses_and_is_never_lost
    test_drafts_concurrency.py::test_cli_add_during_upload_takes_effect
    test_evolve.py::test_export_formats
    test_evolve.py::test_squash_moves_no_bytes
    test_faults.py::test_corrupt_changeset_is_refused
    test_faults.py::test_corrupt_pack_byte_fails_that_file_only
    test_faults.py::test_corrupt_version_record_is_refused
    test_faults.py::test_killed_upload_resumes_without_resending
    test_faults.py::test_read_only_store
    test_faults.py::test_unreachable_store
    test_input.py::test_a_corrupt_latest_record_is_an_error_not_a_rollback
    test_input.py::test_cli_add_and_sync_of_a_name_that_is_not_utf8
    test_input.py::test_follow_symlinks_opts_in_to_targets_outside
    test_lifecycle.py::test_gc_killed_at_random_points_then_rerun
    test_lifecycle.py::test_gc_running_while_other_processes_upload
    test_lineage_depth.py::test_a_lineage_of_2000_merges_reads
    test_lineage_depth.py::test_a_version_10000_versions_deep_lists_and_downloads
    test_lineage_depth.py::test_the_merge_equals_the_reference_on_random_lineages
    test_links.py::test_bad_links
    test_links.py::test_changed_source_fails_only_that_file
    test_links.py::test_links_are_listed_read_and_materialized
    test_links_policy.py::test_a_loopback_link_with_no_tag_is_never_fetched
    test_links_policy.py::test_a_refused_link_fails_that_file_only
    test_links_policy.py::test_an_object_with_no_tag_is_not_added
    test_push.py::test_resumed_push_after_failure
    test_resources.py::test_an_mtime_past_int64_in_a_change_set_is_corrupt_data
    test_resources.py::test_existing_cache_on_a_full_disk
    test_resources.py::test_get_names_a_damaged_file_by_its_path
    test_resources.py::test_names_of_up_to_255_bytes
    test_resources.py::test_new_cache_on_a_full_disk
    test_resources.py::test_prune_to_zero_while_chunks_are_stored
    test_resources.py::test_targets_on_a_full_disk
    test_resources.py::test_zip_export_clamps_dates_it_cannot_hold
    test_store_conformance.py::test_concurrent_authors_get_distinct_version_numbers[memory]
    test_store_conformance.py::test_permission_errors[file]
    test_view.py::test_many_files_read_concurrently
""".split())


def _slow_names(item) -> tuple[str, str]:
    return f"{item.path.name}::{item.name}", f"{item.path.name}::{getattr(item, 'originalname', item.name)}"


def _listed_slow(item) -> bool:
    return any(name in SLOW for name in _slow_names(item))


@pytest.hookimpl(tryfirst=True)  # before -m deselects by these marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        for tier in tiers(item):
            item.add_marker(tier)
    if not any("::" in arg for arg in config.args):  # whole files collected: a renamed test is noticed
        names = {name for item in items for name in _slow_names(item)}
        files = {item.path.name for item in items}
        stale = sorted(s for s in SLOW if s.split("::")[0] in files and s not in names)
        if stale:
            warnings.warn(pytest.PytestWarning(f"conftest.SLOW names tests that do not exist: {', '.join(stale)}"),
                          stacklevel=1)


# -- logs as part of the test contract (STYLE 13, after S3QL's pytest_checklogs) ----------------------------
#
# A test fails on a log record at ERROR or above, or carrying a traceback, that it did not declare with
# @pytest.mark.expect_log(r"regex", ...): in process (records reaching the root logger, from setup to
# teardown) and in the log file of every mount daemon it ran (ERROR lines and tracebacks). Each declared
# regex must match one of them (re.search on "LEVEL logger: message" and the traceback), unless
# declared with required=False.


def _problem(record: logging.LogRecord) -> bool:
    """ERROR and above; a traceback at WARNING; and one at DEBUG or INFO from dsfs (made only where a
    test enabled those levels: the loggers keep their levels, WARNING by default, so that caplog sees
    what it always saw). Other libraries' debug tracebacks (botocore's retries) are not ours to judge."""
    if record.levelno >= logging.ERROR:
        return True
    traceback = bool(record.exc_info) and record.exc_info[0] is not None
    return traceback and (record.levelno >= logging.WARNING or record.name.split(".")[0] == "dsfs")


def _describe(record: logging.LogRecord) -> str:
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a malformed call is reported, not raised in the middle of a test
        message = f"{record.msg!r} % {record.args!r}"
    text = f"{record.levelname} {record.name}: {message}"
    if record.exc_info and record.exc_info[0] is not None:
        text += "\n" + logging.Formatter().formatException(record.exc_info)
    return text


class _Problems(logging.Handler):
    """On the root logger during a test: keeps the records `_problem` picks, as text."""

    def __init__(self):
        super().__init__(logging.NOTSET)
        self.found: list[str] = []

    def emit(self, record):
        if _problem(record):
            self.found.append(_describe(record))

    def take(self) -> list[str]:
        with self.lock:
            found, self.found = self.found, []
        return found


DAEMON_ENTRY = re.compile(r"(?:\d{4}-\d\d-\d\d[ T]\S+ )?(DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: |--- ")
LOG_DIRS: set[str] = set()  # runtime dirs whose logs/ mount daemons may write to (fusehelp.Node adds its own)


def watch_logs(runtime_dir: str) -> None:
    LOG_DIRS.add(os.path.join(runtime_dir, "logs"))


def _daemon_logs() -> dict[str, int]:
    sizes = {}
    for folder in LOG_DIRS:
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            if name.endswith(".log"):
                try:
                    sizes[os.path.join(folder, name)] = os.path.getsize(os.path.join(folder, name))
                except OSError:
                    pass
    return sizes


def daemon_problems(text: str) -> list[str]:
    """The entries of a daemon's log (a record and the lines after it: its traceback) at ERROR or
    above, or holding a traceback (also one printed without a record: a thread's unhandled exception)."""
    entries: list[list[str]] = []
    for line in text.splitlines():
        if not entries or DAEMON_ENTRY.match(line):
            entries.append([line])
        else:
            entries[-1].append(line)
    found = []
    for lines in entries:
        head = DAEMON_ENTRY.match(lines[0])
        level = head.group(1) if head else None
        if level in ("ERROR", "CRITICAL") or any(line.startswith("Traceback (most recent call") for line in lines):
            found.append("\n".join(lines))
    return found


class LogCheck:
    def __init__(self, item):
        self.expected = [(re.compile(p), m.kwargs.get("required", True))
                         for m in item.iter_markers("expect_log") for p in m.args]
        self.matched: set[int] = set()
        self.handler = _Problems()
        self.offsets: dict[str, int] = {}

    def start(self) -> None:
        from dsfs import settings

        watch_logs(settings.runtime_dir())
        self.offsets = _daemon_logs()
        logging.getLogger().addHandler(self.handler)

    def stop(self) -> None:
        logging.getLogger().removeHandler(self.handler)

    def unexpected(self) -> list[str]:
        """What was logged since the last call and matches no expect_log regex."""
        from dsfs import settings

        watch_logs(settings.runtime_dir())  # the test's own (its XDG_RUNTIME_DIR, a DSFS_RUNTIME_DIR it set)
        found = [(None, text) for text in self.handler.take()]
        for path, size in sorted(_daemon_logs().items()):
            start = self.offsets.get(path, 0)
            if size < start:
                start = 0  # rotated (dsfs.daemon keeps one old log)
            with open(path, "rb") as f:
                f.seek(start)
                data = f.read(size - start)
            data = data[:data.rfind(b"\n") + 1]  # whole lines: the daemon may be writing one
            self.offsets[path] = start + len(data)
            found.extend((path, entry) for entry in daemon_problems(data.decode(errors="replace")))
        out = []
        for path, text in found:
            hits = {i for i, (regex, _) in enumerate(self.expected) if regex.search(text)}
            self.matched |= hits
            if not hits:
                out.append(text if path is None else f"in the mount daemon's log {path}:\n{text}")
        return out

    def missing(self) -> list[str]:
        return [f"expect_log({regex.pattern!r}): no such log record" for i, (regex, required) in
                enumerate(self.expected) if required and i not in self.matched]


LOG_CHECK = pytest.StashKey[LogCheck]()


@pytest.hookimpl(wrapper=True, tryfirst=True)  # outermost: records made while fixtures are set up count
def pytest_runtest_setup(item):
    check = item.stash[LOG_CHECK] = LogCheck(item)
    check.start()
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    check = item.stash.get(LOG_CHECK, None)
    if check is None or call.when == "setup":
        return report
    problems = [f"unexpected log record (declare it with @pytest.mark.expect_log(r\"...\") if the test "
                f"means it):\n{text}" for text in check.unexpected()]
    if call.when == "call":
        check.call_passed = report.passed
    else:
        check.stop()
        if getattr(check, "call_passed", False):
            problems += check.missing()
    if problems:
        text = "\n\n".join(problems)
        if report.passed:
            report.outcome = "failed"
            report.longrepr = text
        else:
            report.sections.append(("log check", text))
    return report

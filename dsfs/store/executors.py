"""Store work on other processes: tasks on any `concurrent.futures.Executor`, a local process pool
(every core) or a Dask cluster (many machines).

Three commands split their work into tasks this way: an upload (dsfs.authoring.distributed: a
partition of files chunked, hashed and packed), `check --read-data` (dsfs.lifecycle.check: a
partition of packs fetched and re-hashed) and `verify` (dsfs.node.verify: a partition of local files
hashed). What they share is here:

- `store_address`: how a task opens the store again on another process or machine (a URL and
  options, never a Store object);
- `run_tasks`: the driver's loop. It keeps every worker busy and one task more waiting per worker
  (so results come back in about the order the work was cut, and the driver never holds many), hands
  each result to the caller as it comes, runs a task again when it failed for a reason that may pass
  (a worker died, the store did not answer: up to TASK_TRIES times), fails at once when it failed for
  its input's sake (a DsfsError other than StoreUnavailable), and on any exception, Ctrl-C included,
  cancels the tasks not started before the exception goes on;
- `process_pool` and `dask_executor`: the executors `--workers N` and `--dask ADDRESS` make, and
  `missing_on_workers`: the shared-filesystem check a Dask cluster needs before local paths are
  handed to its workers (a local pool is this machine; any other executor is trusted).

Progress is the caller's: it advances as tasks finish (a plain Executor has no channel for a
worker's progress, and Dask's `Future` none either without a queue the cluster would have to serve).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from dsfs.errors import DsfsError, ExecutorUnavailable, StoreUnavailable, UsageError
from dsfs.store import datastores
from dsfs.store.layout import Store

log = logging.getLogger(__name__)

TASK_TRIES = 3               # a task that fails for a passing reason runs at most this many times
SCHEDULER_TIMEOUT = 10.0     # seconds to reach a Dask scheduler before giving up
VISIBLE_SAMPLE = 32          # local files each Dask worker stats before any task is submitted


class Task(Protocol):
    """A task's argument (a frozen TaskRun dataclass): an `attempt` (a Dask task's key is a hash of its
    arguments, so a task run again must differ from its first run) and a `label` for messages."""

    @property
    def attempt(self) -> int: ...

    @property
    def label(self) -> str: ...


T = TypeVar("T", bound=Task)


@dataclass(frozen=True, kw_only=True)
class TaskRun:
    """What every task's argument carries besides its work (a base for them): the command's run id
    (a Dask task's key is a hash of its arguments: two runs of the same partition must differ) and
    the attempt (so must a task run again)."""

    run: str
    attempt: int = 0


def store_address(store: Store) -> tuple[str, dict]:
    """The URL and options that open `store` again, on another process or machine: a datastore's,
    with its `env:` options read here (the workers need not have them set)."""
    if store.ref.startswith(datastores.PREFIX):
        datastore = datastores.get(store.ref[len(datastores.PREFIX):])
        return datastore.url, datastore.resolved_options()
    return store.url, {}


def refuse_memory(store: Store, executor: Executor) -> None:
    """A memory:// store lives in this process: workers elsewhere would see another, empty one."""
    from concurrent.futures import ThreadPoolExecutor

    if store.protocol == "memory" and not isinstance(executor, ThreadPoolExecutor):
        raise UsageError(f"{store.display_url} lives in this process only: workers cannot reach it; "
                         f"use a file:// or cloud store")


def dask_client(executor: Executor):
    """The distributed.Client behind a Dask executor (`client.get_executor()`), else None. A Dask
    executor exists only if its module was imported: looking it up there, not importing it, keeps
    `--workers N` from loading all of Dask (0.76 s) to learn that its pool is not one."""
    cfexecutor = sys.modules.get("distributed.cfexecutor")
    if cfexecutor is None:
        return None
    return executor._client if isinstance(executor, cfexecutor.ClientExecutor) else None


def workers(executor: Executor) -> int:
    """How many tasks the executor runs at once (a guess for executors that do not say)."""
    client = dask_client(executor)
    if client is not None:
        return max(1, sum(client.nthreads().values()))
    return max(1, getattr(executor, "_max_workers", 0) or os.cpu_count() or 1)


def missing_path(local_paths: list[str]) -> str | None:
    """Run on each Dask worker: the first of these files it cannot stat, or None."""
    for path in local_paths:
        try:
            os.stat(path)
        except OSError:
            return path
    return None


def missing_on_workers(executor: Executor, local_paths: Iterable[str], count: int) -> tuple[str, str] | None:
    """On a Dask cluster, (worker, path) of a sample of `local_paths` (about VISIBLE_SAMPLE of the
    `count`, the first and the last among them) that a worker cannot stat, or None; None at once for
    any other executor."""
    client = dask_client(executor)
    if client is None or not count:
        return None
    step = max(1, count // VISIBLE_SAMPLE)
    sample = [path for i, path in enumerate(local_paths) if i % step == 0 or i == count - 1]
    for worker, missing in sorted(client.run(missing_path, sample).items()):
        if missing is not None:
            return worker, missing
    return None


def shared(executor: Executor, value: Any) -> Any:
    """A large argument every task takes (an upload's known digests): scattered once to each worker
    of a Dask cluster, pickled with each task otherwise."""
    client = dask_client(executor)
    return client.scatter(value, broadcast=True, hash=False) if client is not None else value


def run_tasks(executor: Executor, fn: Callable[..., Any], tasks: Iterable[T], accept: Callable[[T, Any], bool],
              *args: Any, what: str = "the command") -> None:
    """Run fn(task, *args) for each task on `executor`, and accept(task, result) in this thread as
    each ends (False: the result cannot be used, run the task again). See the module docstring for
    retries and cancelling; `what` ends the messages ("the upload")."""
    slots = 2 * workers(executor)
    inflight: dict[Future, T] = {}

    def submit(task: T) -> None:
        try:
            inflight[executor.submit(fn, task, *args)] = task
        except RuntimeError as exc:  # a broken or shut down pool (BrokenExecutor is a RuntimeError)
            raise ExecutorUnavailable(f"the executor takes no more tasks ({exc}); what was done is kept: "
                                      f"run {what} again") from exc

    def collect(block: bool) -> None:
        done, _ = wait(list(inflight), timeout=None if block else 0, return_when=FIRST_COMPLETED)
        for future in done:
            task = inflight.pop(future)
            error = future.exception()
            if error is None and accept(task, future.result()):
                continue
            if error is not None and isinstance(error, DsfsError) and not isinstance(error, StoreUnavailable):
                raise error  # the same input would fail again: a file changed or is gone, the store refuses
            if task.attempt + 1 >= TASK_TRIES:
                if isinstance(error, DsfsError):
                    raise error
                why = f"{type(error).__name__}: {error}" if error is not None else "its result was unusable"
                raise ExecutorUnavailable(f"a task failed {TASK_TRIES} times ({why}), for {task.label}; what was "
                                          f"done is kept: run {what} again") from error
            log.info("task for %s failed (%s); running it again", task.label, error or "its result was unusable")
            submit(replace(task, attempt=task.attempt + 1))  # type: ignore[type-var]  # a dataclass

    try:
        for task in tasks:
            while len(inflight) >= slots:
                collect(block=True)
            submit(task)
            collect(block=False)
        while inflight:
            collect(block=True)
    except BaseException:
        # Ctrl-C, or a task failed for good: tasks not started are dropped; those running finish on
        # their own and their results are not used
        for future in inflight:
            future.cancel()
        raise


# -- executors the command line makes ---------------------------------------------------------------


def _ignore_interrupts() -> None:
    """In a pool's worker: Ctrl-C reaches every process of the terminal's group, and is the driver's
    to handle (it cancels what has not started; a worker ends the task it is on)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def process_pool(count: int) -> Iterator[Executor]:
    """`--workers N`: N processes on this machine (spawned: a fork of a process with threads and
    open stores could inherit their locks held)."""
    pool = ProcessPoolExecutor(count, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_ignore_interrupts)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def dask_executor(address: str) -> Iterator[Executor]:
    """`--dask ADDRESS`: the executor of a Dask cluster's scheduler at ADDRESS (tcp://host:8786)."""
    try:
        from distributed import Client
        from distributed.comm.addressing import parse_address, parse_host_port
    except ImportError:
        raise UsageError("--dask needs the distributed library, which is not installed: "
                         "pip install 'dsfs[dask]'") from None
    try:  # checked first: a Client given a malformed address hangs in its finalizer
        scheme, location = parse_address(address)
        if scheme in ("tcp", "tls"):
            parse_host_port(location)
    except ValueError as exc:
        raise UsageError(f"malformed Dask scheduler address {address!r} ({exc}); e.g. tcp://scheduler:8786") from None
    try:
        client = Client(address, timeout=SCHEDULER_TIMEOUT, set_as_default=False)
    except OSError:  # refused or silent: distributed tries again until the timeout either way
        raise ExecutorUnavailable(f"cannot reach the Dask scheduler at {address} within {SCHEDULER_TIMEOUT:g} s; "
                                  f"is it running, and is the address right?") from None
    try:
        yield client.get_executor()
    finally:
        client.close()

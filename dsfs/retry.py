"""The one retry policy: what is tried again, how often, how long apart.

Only `StoreUnavailable` is retried: a store or link that did not answer, answered with a server
error, or gave a short read. `AccessDenied` and `StoreReadOnly` are answers (the same credentials
are refused again), and so is everything else (missing objects, corrupt bytes): they are raised at
once. A call is tried once, then again after each of `dsfs.settings.retry_delays()` (0.2, 0.5, 1,
2 and 4 s by default: six attempts in about 8 s; $DSFS_RETRY_DELAYS replaces them), each delay
stretched by up to `JITTER` at random so that readers that failed together do not come back
together. It stops early when the next delay would pass `ends` (the operation's time limit), and
`between`, called before each delay, may end it at once (a store whose endpoint refuses
connections: dsfs.store.layout.Store.reachable). The last error is raised, never a wrapper.

Each retry is logged at debug on this module's logger: what, the attempt, the delay, the error and
its scrubbed cause (`DsfsError.cause`).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import tenacity

from dsfs import settings
from dsfs.errors import StoreUnavailable

log = logging.getLogger(__name__)

JITTER = 0.25  # each delay is stretched by a random 0-25 %
T = TypeVar("T")


def call(fn: Callable[[], T], what: str, delays: Sequence[float] | None = None, ends: float | None = None,
         between: Callable[[], None] | None = None) -> T:
    """fn(), tried again after each of `delays` (default: settings.retry_delays()) while it raises
    StoreUnavailable, as the module docstring says. `what` names the call in the log; `ends` is a
    time.monotonic() after which no retry starts."""
    delays = tuple(settings.retry_delays() if delays is None else delays)

    def wait(state: tenacity.RetryCallState) -> float:  # asked before stop: past the last delay, stop says so
        if state.attempt_number > len(delays):
            return 0.0
        return delays[state.attempt_number - 1] * (1 + random.uniform(0, JITTER))

    def stop(state: tenacity.RetryCallState) -> bool:
        if state.attempt_number > len(delays):
            return True
        return ends is not None and time.monotonic() + state.upcoming_sleep >= ends

    def before_sleep(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        cause = getattr(error, "cause", None)
        log.debug("retrying %s in %.2f s (attempt %d of %d failed: %s%s)", what, state.upcoming_sleep,
                  state.attempt_number, len(delays) + 1, error, f"; cause: {cause}" if cause else "")
        if between is not None:
            between()

    retrying = tenacity.Retrying(retry=tenacity.retry_if_exception_type(StoreUnavailable), wait=wait, stop=stop,
                                 before_sleep=before_sleep, reraise=True)
    return retrying(fn)

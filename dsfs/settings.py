"""Where dsfs keeps things on a node, and every `DSFS_*` variable: one place, read when used.

Nothing here is read at import time, so a test or a long-lived process that changes the environment
sees the change at the next call.

    config_path()   $XDG_CONFIG_HOME/dsfs/config.toml     named datastores (dsfs.store.datastores)
    state_dir()     $XDG_STATE_HOME/dsfs/                 drafts, the current dataset, link roots
    data_dir()      $XDG_DATA_HOME/dsfs/                  the embedded default store (store/)
    cache_dir()     $DSFS_CACHE_DIR, else $XDG_CACHE_HOME/dsfs/    the node cache (dsfs.node.cache)
    runtime_dir()   $DSFS_RUNTIME_DIR, else $XDG_RUNTIME_DIR/dsfs/, else /tmp/dsfs-<uid>/   mounts

    DSFS_STORE, DSFS_DATASTORE   the store used when a command names none (one of the two)
    DSFS_CACHE_SIZE              the node cache's budget ("50G"); default a share of the disk
    DSFS_ALLOW_LINKS             more roots external links may point into (dsfs.node.links)
    DSFS_RETRY_DELAYS            seconds between retries of a store read ("0.2,0.5,1,2,4"; dsfs.retry)
"""

from __future__ import annotations

import os

DEFAULT_RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0)


def _xdg(variable: str, fallback: str) -> str:
    return os.environ.get(variable) or os.path.expanduser(fallback)


def config_path() -> str:
    return os.path.join(_xdg("XDG_CONFIG_HOME", "~/.config"), "dsfs", "config.toml")


def state_dir() -> str:
    return os.path.join(_xdg("XDG_STATE_HOME", "~/.local/state"), "dsfs")


def data_dir() -> str:
    return os.path.join(_xdg("XDG_DATA_HOME", "~/.local/share"), "dsfs")


def cache_dir() -> str:
    return os.environ.get("DSFS_CACHE_DIR") or os.path.join(_xdg("XDG_CACHE_HOME", "~/.cache"), "dsfs")


def runtime_dir() -> str:
    if os.environ.get("DSFS_RUNTIME_DIR"):
        return os.environ["DSFS_RUNTIME_DIR"]
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "dsfs")
    return f"/tmp/dsfs-{os.getuid()}"


def env_store() -> str | None:
    return os.environ.get("DSFS_STORE") or None


def env_datastore() -> str | None:
    return os.environ.get("DSFS_DATASTORE") or None


def cache_size() -> str | None:
    return os.environ.get("DSFS_CACHE_SIZE") or None


def allowed_link_roots() -> list[str]:
    return [root for root in os.environ.get("DSFS_ALLOW_LINKS", "").replace(",", " ").split() if root]


def retry_delays() -> tuple[float, ...]:
    text = os.environ.get("DSFS_RETRY_DELAYS")
    if text is None:
        return DEFAULT_RETRY_DELAYS
    return tuple(float(d) for d in text.split(",") if d.strip())

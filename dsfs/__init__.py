"""dsfs: a dataset filesystem for machine learning.

Versions datasets in object storage as content-defined chunks deduplicated against every ancestor,
and serves any version on a compute node as a read-only mount or a materialized copy.
"""

from __future__ import annotations

from dsfs.errors import (
    Conflict,
    CorruptChunk,
    CorruptData,
    DatasetInUse,
    DatasetNotFound,
    DsfsError,
    FileChanged,
    InvalidPath,
    InvalidState,
    StoreReadOnly,
    StoreUnavailable,
    UsageError,
)

# Not `from typing import TYPE_CHECKING`: importing typing takes ~3.5 ms, the most of `import dsfs`,
# and a Ctrl-C that lands before dsfs.cli.main() can catch it prints a traceback (mypy reads this
# name the same way).
TYPE_CHECKING = False

if TYPE_CHECKING:
    from dsfs.dataset import Dataset
    from dsfs.lifecycle.check import check_store
    from dsfs.lifecycle.sweep import gc
    from dsfs.store.layout import Store

# Loaded on first use (PEP 562), not by `import dsfs`: the store, fsspec and LMDB cost ~0.3 s, and
# `dsfs --version` or `import dsfs.errors` needs none of them.
_LAZY = {"Dataset": "dsfs.dataset", "Store": "dsfs.store.layout", "gc": "dsfs.lifecycle.sweep",
         "check_store": "dsfs.lifecycle.check"}

__all__ = ["Dataset", "Store", "gc", "DsfsError", "UsageError", "InvalidPath", "DatasetNotFound", "InvalidState",
           "DatasetInUse", "Conflict", "FileChanged", "StoreUnavailable", "StoreReadOnly", "CorruptData",
           "CorruptChunk"]
__all__ += ["check_store"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dsfs' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

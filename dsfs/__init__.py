"""dsfs: a dataset filesystem for machine learning.

Versions datasets in object storage as content-defined chunks deduplicated against every ancestor,
and serves any version on a compute node as a read-only mount or a materialized copy.
"""

from dsfs.lifecycle.check import check_store
from dsfs.dataset import Dataset
from dsfs.errors import (Conflict, CorruptChunk, CorruptData, DatasetInUse, DatasetNotFound, DsfsError,
                     FileChanged, InvalidPath, InvalidState, StoreReadOnly, StoreUnavailable, UsageError)
from dsfs.store.layout import Store
from dsfs.lifecycle.sweep import gc

__all__ = ["Dataset", "Store", "gc", "DsfsError", "UsageError", "InvalidPath", "DatasetNotFound", "InvalidState",
           "DatasetInUse", "Conflict", "FileChanged", "StoreUnavailable", "StoreReadOnly", "CorruptData",
           "CorruptChunk"]
__all__ += ["check_store"]

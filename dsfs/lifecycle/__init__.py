"""Lifecycle: what happens to versions after they are made, store-wide.

push   copy a version and its ancestors to another store
sweep  gc: reclaim the packs no version references (mark and sweep under a lease)
check  verify a store's records, change-sets and (optionally) pack bytes

Independent of the node and of authoring; reads lineage and store.
"""

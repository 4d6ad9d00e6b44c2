"""The node: serving a version on a compute node from its local chunk cache.

cache        the node cache: chunk files indexed by one LMDB environment, budget and eviction
view         a version as inodes and byte ranges, read through the cache (the mount's engine)
materialize  download and `get`: a version written as plain files
export       a version as a tar, zip or manifest stream
verify       a local copy checked against the version's digests
links        external links: which may be read, and reading them
copies       the cached copies of `get` and the links into them

Independent of authoring and lifecycle; reads lineage and store.
"""

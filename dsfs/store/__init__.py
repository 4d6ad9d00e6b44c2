"""The store: objects in a bucket or folder, and the only code that knows their names.

layout     Store: object names, version records, change-sets, name claims, the write order
backends   fsspec filesystems per URL scheme, time limits, errors translated to dsfs errors
datastores named stores (config.toml) and the one answer to "which store?"
packs      the pack format: chunking, compression, chunk digests
fetch      reading chunk ranges out of packs: coalesced, retried, verified
sessions   writer sessions and the gc lease (what protects packs from a concurrent gc)

Imports only dsfs's bottom layer (errors, model, paths, fsutil, settings, progress).
"""

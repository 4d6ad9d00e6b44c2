"""Authoring: making a new version from local files.

drafts            the local state of a draft and the lock that serialises commands on it
localfiles        what the user named (file, folder, glob) as dataset paths, by one input rule set
ingest            chunking, hashing, packing and uploading a draft's files
distributed       the same, by tasks on an executor (a process pool, a Dask cluster)
evolve            sync, compare and squash (folder changes against a version)
datastore_upload  copying plain files into a datastore path

Independent of the node and of lifecycle; reads lineage and store.
"""

"""The lineage: how a version's files follow from its parents' (the merge rule), in three forms.

merge      the rule itself over change-sets, on Python objects (Lineage; walk, merge_views)
filetable  the same merge kept as sorted columns per version, for authoring and listing
viewindex  the same merge built into LMDB tables on the node, for mounts and downloads

The three are kept deliberately and tested equal (tests/test_filetable.py, test_lineage_depth.py).
Reads the store; never the node's chunks or the authoring state.
"""

"""The dsfs command line: a thin click layer over the Python API in `dsfs`."""

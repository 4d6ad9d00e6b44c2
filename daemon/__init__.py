"""The dsfs daemon: the process behind a mount or a download service (filled by the mount issue)."""

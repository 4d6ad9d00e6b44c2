"""systemd's readiness protocol (`Type=notify`), written directly: no dependency.

A datagram of newline-separated KEY=VALUE lines to the AF_UNIX socket named by $NOTIFY_SOCKET;
a name starting with '@' is an abstract socket (leading NUL byte). Without $NOTIFY_SOCKET (not run
by systemd) nothing is sent.
"""

from __future__ import annotations

import os
import socket


def notify(*lines: str) -> bool:
    """Send e.g. notify("READY=1", "STATUS=serving"); True if a socket was there to send to."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall("\n".join(lines).encode())
    return True

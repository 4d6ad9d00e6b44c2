"""`python -m dsfs.daemon STATUS_FD`: the detached mount daemon started by `dsfs.daemon.start`.

Reads its MountSpec (JSON) from stdin, forks, and exits at once; the child (re-parented to init,
in the session `start` created) serves the mount and reports on STATUS_FD. stdout and stderr are
the mount's log file.
"""

import os
import sys

from dsfs.daemon.service import MountSpec, Status, serve, setup_logging


def main() -> None:
    status_fd = int(sys.argv[1])
    spec = MountSpec.from_json(sys.stdin.read())
    if os.fork():
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    setup_logging(spec)
    code = serve(spec, Status(status_fd))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()

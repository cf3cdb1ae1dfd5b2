"""A process tree that keeps forking (subreaper root, setsid and double-forked descendants), each
new process logging its pid to argv[1], for kill_tree (tests/test_proctree.py)."""

import ctypes
import os
import sys
import time

ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # a subreaper, like a worker
log, depth = sys.argv[1], 0
while True:
    for _ in range(3):
        time.sleep(0.003)
        if depth < 3 and os.fork() == 0:
            depth += 1
            if depth % 2:
                os.setsid()  # out of the process group: killpg alone would miss it
            if depth == 2 and os.fork():
                os._exit(0)  # double fork: the grandchild is adopted
            fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            os.write(fd, f"{os.getpid()}\n".encode())
            os.close(fd)
            break
    else:
        time.sleep(60)

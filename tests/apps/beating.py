"""A handler that beats every 10 ms into a file, so late hard kills show (tests/test_serving.py)."""

import time


def beat(path, seconds):
    end = time.time() + seconds
    with open(path, "a") as fh:
        while time.time() < end:
            fh.write(f"{time.time()}\n")
            fh.flush()
            time.sleep(0.01)

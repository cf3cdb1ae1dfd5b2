"""Pings Redis (argv[1]:argv[2]) on one connection, as stdin says ("ping|none WAIT" per line),
printing each reply, timeout or error: run inside a partition by tests/test_partition_harness.py."""

import socket
import sys

sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
for line in sys.stdin:
    send, wait = line.split()
    sock.settimeout(float(wait))
    try:
        if send == "ping":
            sock.sendall(b"PING\r\n")
        print("reply", sock.recv(100).decode().strip(), flush=True)
    except TimeoutError:
        print("timeout", flush=True)
    except OSError as exc:
        print("error", exc, flush=True)

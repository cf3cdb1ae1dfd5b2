"""An HttpServer with no descriptor left for accept: the loop must not spin, and accept recovers
once descriptors are free; prints a JSON summary (tests/test_serving.py)."""

import json
import os
import resource
import selectors
import socket
import time

from governor.ops.httpd import HttpServer

resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
selector = selectors.DefaultSelector()
server = HttpServer("127.0.0.1:0", {"/healthz": lambda: (200, "text/plain", b"ok\n")})
server.attach(selector)
clients = [socket.create_connection(server.sock.getsockname()) for _ in range(3)]
for c in clients:
    c.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
filler = []
while True:  # no descriptor left for accept
    try:
        filler.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        break

def run(seconds):
    passes, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        now = time.monotonic()
        server.expire(now)
        wake = min(server.next_deadline() or end, end)
        for key, mask in selector.select(max(0.0, wake - time.monotonic())):
            key.data[1].on_event(key.fileobj, mask)
        passes += 1
    return passes

starved = run(1.0)
for fd in filler:
    os.close(fd)
run(1.0)
answers = []
for c in clients:
    c.settimeout(1)
    answers.append(c.recv(4096).split(b"\r\n", 1)[0].decode())
print(json.dumps({"starved_passes": starved, "answers": answers}))

"""What operators and their tools talk to: the control socket, the metrics/health HTTP
server (and the non-blocking server both share), Prometheus metrics, systemd notify.
Knows nothing of the master: it is handed callbacks."""

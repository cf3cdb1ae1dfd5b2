"""One host's processes: the master's loop, its pools and workers, their limits, the
sentry and scoreboard that guard leases, and the master's duties in Redis (housekeeping,
partition leases). Builds on ``protocol`` and ``ops``.

Runs in: the master, its workers and the sentry (the package).
"""

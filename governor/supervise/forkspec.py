"""What makes a worker outdated: kept importable here; it lives with the Spawner that builds
the spec it is derived from (``governor.supervise.spawner``).

Runs in: master.
"""

from governor.supervise.spawner import PER_WORKER, POOL_ONLY, outdating_key

__all__ = ["PER_WORKER", "POOL_ONLY", "outdating_key"]

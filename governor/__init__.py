"""governor: a process supervisor with resource governance for Redis-backed job queues."""

from governor.errors import SoftTimeLimitExceeded
from governor.queue import Client

__all__ = ["Client", "SoftTimeLimitExceeded", "__version__"]
__version__ = "0.1.0"

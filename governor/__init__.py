"""governor: a process supervisor with resource governance for Redis-backed job queues."""

from governor.context import JobContext, current_job
from governor.errors import HardTimeLimitExceeded, SoftTimeLimitExceeded
from governor.protocol.limits import RateLimited, limit
from governor.protocol.queue import Client

__all__ = ["Client", "HardTimeLimitExceeded", "JobContext", "RateLimited", "SoftTimeLimitExceeded", "__version__", "current_job",
           "limit"]
__version__ = "0.1.0"

"""Exceptions that job code sees."""


class SoftTimeLimitExceeded(BaseException):
    """Raised inside a handler at its soft time limit.

    A BaseException, like KeyboardInterrupt, so that a broad ``except Exception``
    in job code does not swallow it; catch it by name to clean up before the
    hard limit, when the master kills the worker.
    """


class HardTimeLimitExceeded(BaseException):
    """Raised inside a handler at its hard time limit when its worker runs several jobs at
    once (``jobs_per_worker``): thrown into its thread, or its task cancelled. Only that job
    stops; if it has not ended ``timeout.grace`` later, the master kills the worker's tree
    (its neighbours are requeued, not charged). Catch it only to clean up, quickly."""

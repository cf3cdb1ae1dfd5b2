"""Exceptions that job code sees."""


class SoftTimeLimitExceeded(BaseException):
    """Raised inside a handler at its soft time limit.

    A BaseException, like KeyboardInterrupt, so that a broad ``except Exception``
    in job code does not swallow it; catch it by name to clean up before the
    hard limit, when the master kills the worker.
    """

"""The master's duties: one order, one policy for Redis failures; unit tests, no fork."""

from __future__ import annotations

import math

import pytest
import redis

from governor.supervise.duties import Duties, Step


class _Duty:
    def __init__(self, name: str, log: list[str], due: float = math.inf, raises: Exception | None = None,
                 talks_to_redis: bool = True) -> None:
        self.name, self.log, self.when, self.raises, self.redis = name, log, due, raises, talks_to_redis

    def due(self, now: float) -> float:
        return self.when

    def run(self, now: float) -> None:
        self.log.append(self.name)
        if self.raises:
            raise self.raises


def test_duties_run_in_order_and_a_redis_failure_stops_none_of_the_others():
    ran: list[str] = []
    failures: list[Exception] = []
    outage = redis.ConnectionError("away")
    duties = Duties([_Duty("a", ran), _Duty("b", ran, raises=outage), Step(lambda now: ran.append("local")),
                     _Duty("c", ran, raises=ValueError("garbled reply"))], failures.append)
    duties.run(1.0)
    assert ran == ["a", "b", "local", "c"]
    assert failures[0] is outage and isinstance(failures[1], ValueError)


def test_a_duty_that_does_not_talk_to_redis_is_not_excused():
    duties = Duties([_Duty("a", [], raises=redis.ConnectionError("x"), talks_to_redis=False)], lambda exc: None)
    with pytest.raises(redis.ConnectionError):
        duties.run(1.0)


def test_the_loop_wakes_for_the_earliest_duty():
    duties = Duties([_Duty("a", [], due=5.0), Step(lambda now: None), _Duty("b", [], due=3.0)], lambda exc: None)
    assert duties.next_wakeup(1.0) == 3.0
    assert Duties([Step(lambda now: None)], lambda exc: None).next_wakeup(1.0) == math.inf


def test_a_reload_reaches_the_duties_that_hold_a_setting():
    seen = []

    class _Configurable(_Duty):
        def configure(self, config: object) -> None:
            seen.append(config)

    Duties([_Duty("a", []), _Configurable("b", [])], lambda exc: None).configure("new")
    assert seen == ["new"]

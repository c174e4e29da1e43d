"""Rate-limit arithmetic on known inputs: token buckets, admission charges (live 429s: test_production)."""

from __future__ import annotations

import math

import pytest

from tokenplane_serving.features.ratelimit import Bucket, estimate_tokens


def test_a_full_minute_is_available_at_once_then_refills_per_second() -> None:
    bucket = Bucket(capacity=60)
    assert all(bucket.take(1, now=100.0) == 0 for _ in range(60))
    assert bucket.take(1, now=100.0) == pytest.approx(1.0)  # 60/min: one more in a second
    assert bucket.take(1, now=101.0) == 0
    assert bucket.take(10, now=101.0) == pytest.approx(10.0)


def test_a_refused_request_takes_nothing() -> None:
    bucket = Bucket(capacity=120)
    assert bucket.take(100, now=0.0) == 0
    wait = bucket.take(50, now=0.0)
    assert wait == pytest.approx(15.0)  # 30 missing at 2 per second
    assert bucket.take(20, now=0.0) == 0  # the refusal did not drain the bucket


def test_more_than_a_minute_never_fits() -> None:
    assert math.isinf(Bucket(capacity=100).take(101, now=0.0))


def test_refill_never_exceeds_capacity() -> None:
    bucket = Bucket(capacity=10)
    bucket.take(10, now=0.0)
    assert bucket.take(10, now=3600.0) == 0
    assert bucket.take(1, now=3600.0) > 0


@pytest.mark.parametrize(
    ("body", "tokens"),
    [
        ({"prompt": "x" * 400, "max_tokens": 100}, 200),
        ({"messages": [{"role": "user", "content": "y" * 40}], "max_completion_tokens": 10}, 20),
        ({"prompt": "abcd", "max_tokens": 8, "n": 3}, 25),
        ({"prompt": [1, 2, 3], "max_tokens": 5}, 8),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "z" * 8}]}]}, 2),
        ({"prompt": "", "max_tokens": "many"}, 1),
    ],
)
def test_admission_charge_is_prompt_estimate_plus_output_budget(body: dict[str, object], tokens: int) -> None:
    assert estimate_tokens(body) == tokens

"""The one retry policy: the schedules every caller takes its delays from."""

from __future__ import annotations

from hcafs.retry import BACKGROUND, RetryPolicy


def test_background_schedule_doubles_up_to_five_minutes():
    assert [BACKGROUND.backoff(n) for n in range(1, 10)] == \
        [2, 4, 8, 16, 32, 64, 128, 256, 300]
    assert BACKGROUND.backoff(10_000) == 300 and not BACKGROUND.exhausted(10_000)


def test_calls_are_jittered_capped_and_bounded():
    policy = RetryPolicy(attempts=3, base_delay=1.0, max_delay=4.0)
    for attempt in range(6):
        exact = min(2.0 ** attempt, 4.0)
        assert exact / 2 <= policy.backoff(attempt) <= exact
    assert [policy.exhausted(n) for n in range(4)] == [False, False, True, True]


def test_retry_after_wins_but_is_capped():
    policy = RetryPolicy(max_delay=30.0, jitter=False)
    assert policy.delay(0, "7") == 7.0
    assert policy.delay(0, "3600") == 30.0
    assert policy.delay(2, "soon") == policy.backoff(2) == 2.0
    assert policy.delay(2, None) == 2.0

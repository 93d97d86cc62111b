"""Budgets shared through the store (hcafs/server/budgets.py): processes racing on one
identity's budget, on both backends and with both kinds of window, never go over the limit,
and fall short of it by at most what the re-admission delay costs
(docs/drs.md#budgets-across-servers)."""

from __future__ import annotations

import multiprocessing
import time

import pytest
import test_leases
from fixtures.drs_repo import max_in_period, period_delays, periods

from hcafs.server.budgets import SharedBudget

open_store = test_leases.open_store
store_spec = test_leases.store_spec  # the backend fixture: local and SeaweedFS

FORK = multiprocessing.get_context("fork")
LIMIT, WINDOW = 20, 3.0
DELAY = 1.0  # the re-admission delay the check allows for, generous for a loaded machine


def _hammer(spec, kind, until, results):
    budget = SharedBudget(open_store(spec), "files", LIMIT, WINDOW, kind=kind)
    admitted = []
    while time.time() < until:
        when, wait = budget.take("someone")
        if when is None:
            time.sleep(min(wait, until - time.time(), 1.0) if until > time.time() else 0)
        else:
            admitted.append(when)
    results.put(admitted)


def max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    return max((sum(1 for t in times[i:] if t < start + window)
                for i, start in enumerate(times)), default=0)


def shortfalls(times: list[float], window: float, delay: float, limit: int = LIMIT
               ) -> list[int]:
    """For each window ``[s, s + window)`` starting at an admission ``s`` after the first
    window and ending before the last admission (work waited all along): how far its
    count falls short of the limit *beyond* K(s), the admissions in ``[s - delay, s)``
    (the documented bound: a slot freed at ``e + window`` is taken again ``delay`` later)."""
    times = sorted(times)
    first, last = times[0], times[-1]
    short = []
    for start in times:
        if start < first + window or start + window > last:
            continue
        inside = sum(1 for t in times if start <= t < start + window)
        k = sum(1 for t in times if start - delay <= t < start)
        short.append(max(limit - k - inside, 0))
    return short


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["fixed", "sliding"])
def test_racing_processes_never_exceed_the_budget_and_fill_it(store_spec, kind):
    results = FORK.Queue()
    # five windows for at least four periods: the first admission may come a few seconds
    # late while the workers fork and open the store on a loaded machine
    until = time.time() + 5 * WINDOW
    workers = [FORK.Process(target=_hammer, args=(store_spec, kind, until, results))
               for _ in range(4)]
    for worker in workers:
        worker.start()
    admitted = [when for _ in workers for when in results.get(timeout=60)]
    for worker in workers:
        worker.join(timeout=30)
    assert len({when for when in admitted}) == len(admitted)
    if kind == "sliding":
        assert max_in_window(admitted, WINDOW) <= LIMIT
        short = shortfalls(admitted, WINDOW, DELAY)
        assert short and max(short) == 0
        return
    # Fixed: no period holds more; work waited all along, so every period but the last is
    # full, and each opens within the re-admission delay of the end of the one before.
    found = periods(admitted, WINDOW)
    assert max_in_period(admitted, WINDOW) <= LIMIT and len(found) >= 4
    assert [count for _, count in found[:-1]] == [LIMIT] * (len(found) - 1)
    assert all(0 <= delay < DELAY for delay in period_delays(admitted, WINDOW))


def test_a_fixed_budget_comes_back_whole_when_its_period_ends(tmp_path):
    now = [1000.0]
    budget = SharedBudget(open_store(("local", str(tmp_path))), "files", 3, 10,
                          clock=lambda: now[0])
    assert budget.kind == "fixed" and budget.state("a") == (3, 1000.0, 1000.0)
    for step in range(3):
        now[0] = 1000.0 + step
        assert budget.take("a") == (now[0], 0.0)
    assert budget.take("a") == (None, 8.0)  # the period that opened at 1000 ends at 1010
    assert budget.state("a") == (0, 1010.0, 1010.0)
    now[0] = 1009.99
    assert budget.take_many("a", 5) == ([], pytest.approx(0.01))
    now[0] = 1010.0  # a new period opens with this admission: the whole budget is back
    assert budget.take_many("a", 5) == ([1010.0] * 3, 10.0)
    assert budget.state("a") == (0, 1020.0, 1020.0)
    now[0] = 1031.0
    assert budget.state("a") == (3, 1031.0, 1031.0)
    assert budget.take_many("a", 2) == ([1031.0] * 2, 0.0)
    assert budget.state("a") == (1, 1031.0, 1041.0)
    now[0] = 1035.0  # admitted later, in the period that opened at 1031
    assert budget.take_batch("a", 2) == ([1035.0], pytest.approx(6.0), 1031.0)
    assert budget.take_batch("a", 1) == ([], pytest.approx(6.0), None)
    with pytest.raises(ValueError):
        SharedBudget(budget.store, "files", 3, 10, kind="leaky")


def test_a_fixed_budget_counts_a_clock_that_runs_behind(tmp_path):
    """Two processes on one store, B's clock 0.5 s behind A's: B's admissions in the
    period A opened count, and are stamped no earlier than its start."""
    store = open_store(("local", str(tmp_path)))
    clock_a, clock_b = [1000.0], [999.5]
    a = SharedBudget(store, "files", 3, 10, clock=lambda: clock_a[0])
    b = SharedBudget(store, "files", 3, 10, clock=lambda: clock_b[0])
    assert a.take("k") == (1000.0, 0.0)
    # room for two, stamped at the start; B waits by its own clock (late, never early)
    assert b.take_many("k", 10) == ([1000.0, 1000.0], 10.5)
    assert a.take("k")[0] is None and b.take("k")[0] is None
    assert a.state("k") == (0, 1010.0, 1010.0)


def test_a_fixed_budget_takes_over_a_sliding_document(tmp_path):
    """A document a sliding budget wrote (no period start): its oldest live event opens
    the period, so switching the kind does not hand out a second full budget."""
    store = open_store(("local", str(tmp_path)))
    now = [1000.0]
    sliding = SharedBudget(store, "files", 3, 10, clock=lambda: now[0], kind="sliding")
    fixed = SharedBudget(store, "files", 3, 10, clock=lambda: now[0])
    assert sliding.take_many("k", 2)[0] == [1000.0, 1000.0]
    now[0] = 1004.0
    assert fixed.take_many("k", 3) == ([1004.0], 6.0)  # one left in the period of 1000
    now[0] = 1010.0
    assert fixed.take_many("k", 3) == ([1010.0] * 3, 0.0)


def test_state_says_what_is_left_and_when_it_comes_back(tmp_path):
    now = [1000.0]
    budget = SharedBudget(open_store(("local", str(tmp_path))), "requests", 3, 10,
                          clock=lambda: now[0], kind="sliding")
    assert budget.state("a") == (3, 1000.0, 1000.0)
    for step in range(3):
        now[0] = 1000.0 + step
        assert budget.take("a") == (now[0], 0.0)
    assert budget.take("a") == (None, 8.0)
    assert budget.state("a") == (0, 1010.0, 1012.0)
    assert budget.take("b")[0] is not None  # keys are apart
    now[0] = 1010.5
    assert budget.take("a")[0] == 1010.5


def test_a_batch_is_admitted_in_one_write_as_far_as_the_room_goes(tmp_path):
    now = [1000.0]
    store = open_store(("local", str(tmp_path)))
    budget = SharedBudget(store, "files", 5, 10, clock=lambda: now[0], kind="sliding")
    writes = []
    replace, create = store.replace, store.create
    store.replace = lambda *a, **k: writes.append("replace") or replace(*a, **k)
    store.create = lambda *a, **k: writes.append("create") or create(*a, **k)
    assert budget.take_many("a", 3) == ([1000.0] * 3, 0.0)
    now[0] = 1002.0
    assert budget.take_many("a", 4) == ([1002.0] * 2, 8.0)  # room for two; the third at 1010
    assert writes == ["create", "replace"]
    assert budget.take_many("a", 1) == ([], 8.0)
    assert budget.state("a") == (0, 1010.0, 1012.0)
    assert budget.take_many("a", 0) == ([], 0.0)
    now[0] = 1010.0
    assert budget.take_many("a", 10) == ([1010.0] * 3, 2.0)

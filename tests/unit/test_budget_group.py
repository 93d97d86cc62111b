"""Model tier: callers of one process that ask a budget for one key at once share its write
(hcafs/server/budgets.py, the group commit of ``SharedBudget.take_many``).

The store is a real local one; a fault slows each of its writes, so that callers pile up
behind the one in flight, and counts them."""

from __future__ import annotations

import threading
import time

import pytest

from hcafs.errors import HcafsError
from hcafs.server.budgets import SharedBudget
from hcafs.server.store import LocalStore


class _SlowStore(LocalStore):
    """Each budget write takes ``pause`` seconds longer; ``writes`` counts them."""

    def __init__(self, root: str, pause: float = 0.05):
        super().__init__(root)
        self.pause, self.writes, self.fail = pause, 0, False

    def _write_hook(self) -> None:
        self.writes += 1
        time.sleep(self.pause)
        if self.fail:
            raise HcafsError("the store is gone (a fault)")

    def create(self, key, data, defer=None):
        self._write_hook()
        return super().create(key, data, defer)

    def replace(self, key, data, tag):
        self._write_hook()
        return super().replace(key, data, tag)


def _callers(budget: SharedBudget, counts: list[int]) -> list:
    answers: list = [None] * len(counts)
    start = threading.Barrier(len(counts))

    def ask(n: int) -> None:
        start.wait()
        try:
            answers[n] = budget.take_many("owner", counts[n])
        except HcafsError as exc:
            answers[n] = exc

    threads = [threading.Thread(target=ask, args=(n,), daemon=True)
               for n in range(len(counts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads), "a caller was never answered"
    return answers


@pytest.mark.parametrize("kind", ["fixed", "sliding"])
def test_callers_at_once_share_writes_and_the_limit_holds(tmp_path, kind):
    store = _SlowStore(str(tmp_path / "store"))
    budget = SharedBudget(store, "files", 50, 10.0, kind=kind)
    answers = _callers(budget, [10] * 8)
    admitted = [len(times) for times, _ in answers]
    assert sum(admitted) == 50, admitted
    # 8 callers, the first write alone, the other 7 behind it in one or two more writes
    assert store.writes <= 4, store.writes
    for times, wait in answers:
        assert (wait == 0.0) == (len(times) == 10)
        if len(times) < 10:
            assert 9.0 < wait <= 10.0
    assert all(len(times) in (0, 10) for times, _ in answers)  # 50 = 5 callers whole
    assert budget.state("owner")[0] == 0


def test_each_caller_gets_its_own_answer(tmp_path):
    store = _SlowStore(str(tmp_path / "store"))
    budget = SharedBudget(store, "files", 20, 10.0)
    counts = list(range(1, 9))  # 36 asked, 20 to give
    answers = _callers(budget, counts)
    for count, (times, wait) in zip(counts, answers, strict=True):
        assert len(times) <= count, (count, len(times))
        assert (wait == 0.0) == (len(times) == count), (count, len(times), wait)
    assert sum(len(times) for times, _ in answers) == 20
    assert sum(1 for count, (times, _) in zip(counts, answers, strict=True)
               if 0 < len(times) < count) <= 1  # at most one caller is cut short


def test_a_failed_shared_write_fails_each_caller_that_shared_it(tmp_path):
    store = _SlowStore(str(tmp_path / "store"))
    budget = SharedBudget(store, "files", 50, 10.0)
    store.fail = True
    answers = _callers(budget, [1] * 4)
    assert all(isinstance(answer, HcafsError) for answer in answers), answers
    assert store.writes <= 2, store.writes  # the callers shared the failed writes
    store.fail = False
    assert budget.take_many("owner", 3)[0]  # and the next caller is served again
    assert budget.state("owner")[0] == 47

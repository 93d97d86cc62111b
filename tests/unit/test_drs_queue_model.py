"""Model tier: the DRS import flusher's budget and poll schedule, on a real journal (a
temporary SQLite file) and a real bulk-import client that is never called: its
``limit`` is set as the server's rate-limit headers would set it."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from hcafs.cache import journal as j
from hcafs.cache.cachedb import CacheDB
from hcafs.cache.journal import Journal
from hcafs.remote.bulk_import import BulkImportClient, RateLimit
from hcafs.sync.drs_queue import WAIT, DrsQueue, Poll, let_in_times

BUNDLE = "11111111-1111-4111-8111-111111111111"


@pytest.fixture
def journal(tmp_path) -> Journal:
    journal = Journal(CacheDB(str(tmp_path / "hcafs.db")))
    journal.add_bundle("b", BUNDLE, None, [])
    return journal


def _queue(journal: Journal, limit: int = 500, window: float = 10.0) -> DrsQueue:
    api = BulkImportClient("http://127.0.0.1:9", None)  # port 9: nothing is ever sent
    return DrsQueue(journal, api, None, limit=limit, window=window, default_conflict="SKIP",
                    resolver={})


def _queue_items(journal: Journal, count: int, start: int = 0) -> None:
    for n in range(start, start + count):
        file_id = journal.add_file("b", f"f{n}.drs", j.DRS)
        journal.drs_queued(file_id, 20, "b", f"f{n}", f"drs://h/{n}", "{}", "[]", "SKIP")


def _apply(journal: Journal, jobs: list[str]) -> None:
    """The jobs' results were applied (here: as failures, which ends them as well)."""
    for job in jobs:
        journal.imports_failed([row[0] for row in journal.job_items(job)], "applied")


def _submit(journal: Journal, items: int, job: str) -> None:
    key = journal.claim_batch(time.time(), items)
    journal.batch_submitted(key, job)


def test_let_in_times_follow_fixed_periods_in_order():
    # limit 2 per 10 s: a period opens with the first item let in after the last ended
    lets, start, count = let_in_times([0, 1, 2, 3, 4, 25, 26, 27, 41], 2, 10)
    assert lets == [0, 1, 10, 10, 20, 25, 30, 30, 41] and (start, count) == (41, 1)
    assert let_in_times([], 2, 10) == ([], None, 0)


def test_a_period_goes_at_once_one_more_waits_and_the_next_goes_when_it_ends(journal):
    queue = _queue(journal, limit=500, window=10)
    _queue_items(journal, 1500)
    assert queue.budget(time.time()) == (1000, None)
    for n in range(5):
        _submit(journal, 100, f"job{n}")
    assert queue.budget(time.time()) == (500, None)  # the next period's items may wait
    for n in range(5, 10):
        _submit(journal, 100, f"job{n}")
    first = journal.sent_times_since(0)[0]
    room, reopens = queue.budget(time.time())
    # 500 wait for the period that opens at first + 10: nothing more until then
    assert room == 0 and reopens == pytest.approx(first + 10)
    assert queue._let_in(time.time()) == pytest.approx(first + 10)
    # They are let in then; while the first period's 500 are still in flight (results not
    # applied), two periods' worth is at the server and nothing more goes ...
    room, reopens = queue.budget(first + 10.001)
    assert room == 0 and reopens >= first + 10.001
    # ... and once they are applied, 500 more may wait for the period after
    _apply(journal, [f"job{n}" for n in range(5)])
    assert queue.budget(first + 10.001) == (500, None)


def test_never_more_than_two_periods_in_flight_over_a_long_backlog(journal):
    """The replay covers three windows; sends older than that (a backlog that ran longer)
    are out of it, but their items still in flight count."""
    queue = _queue(journal, limit=100, window=10)
    _queue_items(journal, 300)
    key = journal.claim_batch(time.time() - 100, 100)  # sent 100 s ago, never applied
    journal.batch_submitted(key, "old")
    journal.db.execute("update drs_imports set submitted_at = ? where job_id = ?",
                       [time.time() - 100, "old"])
    assert queue.budget(time.time())[0] == 100  # 2 × 100, less the 100 in flight
    _submit(journal, 100, "new")
    room, reopens = queue.budget(time.time())
    assert room == 0 and reopens >= time.time()


def test_headers_that_our_submissions_explain_do_not_stall_the_next_call(journal):
    """The server counts admissions, which lag the submissions: "0 remaining, all back at
    reset" after our own 500 must not hold the next period's items back until that reset."""
    queue = _queue(journal, limit=500, window=10)
    _queue_items(journal, 1000)
    for n in range(5):
        _submit(journal, 100, f"job{n}")
    queue.api.limit = RateLimit(500, 0, reset=time.time() + 9.5, seen=time.time())
    assert queue.budget(time.time()) == (500, None)


def test_use_the_submissions_do_not_explain_follows_the_server(journal):
    """One item that is a DRS bundle of 1,000 members spends the server's whole budget:
    nothing more goes until the server's reset, although our count has room."""
    queue = _queue(journal, limit=500, window=10)
    _queue_items(journal, 3)
    _submit(journal, 1, "bundle-job")
    reset = time.time() + 7
    queue.api.limit = RateLimit(500, 0, reset=reset, seen=time.time())
    assert queue.budget(time.time()) == (0, reset)
    queue.api.limit = RateLimit(500, 40, reset=reset, seen=time.time())
    assert queue.budget(time.time()) == (40, None)
    # past its reset a header says nothing: this period has 499 left, and 500 may wait
    assert queue.budget(reset + 0.01) == (999, None)


def test_a_lower_limit_on_the_server_is_followed(journal):
    queue = _queue(journal, limit=500, window=10)
    _queue_items(journal, 300)
    _submit(journal, 100, "job0")
    queue.api.limit = RateLimit(100, 100, reset=time.time() + 10, seen=time.time())
    assert queue.budget(time.time()) == (100, None)  # 100 more to wait, not 400
    _submit(journal, 100, "job1")
    room, reopens = queue.budget(time.time())
    assert room == 0 and reopens == pytest.approx(journal.sent_times_since(0)[0] + 10)


def test_polls_come_soon_back_off_and_wake_when_the_window_reopens(journal):
    queue = _queue(journal, limit=500, window=300)  # polls at most 30 s apart
    now = time.time()
    poll = Poll(now)
    steps = []
    for _ in range(10):  # no progress: 0.25 s, 0.5 s, 1 s ... at most 30 s
        queue.schedule(poll, 0, now)
        steps.append(round(poll.at - now, 2))
    assert steps == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    queue.schedule(poll, 100, now)  # progress: soon again
    assert poll.at - now == pytest.approx(0.25)
    for _ in range(8):
        queue.schedule(poll, 100, now)
    assert poll.at - now == pytest.approx(30)
    # The server's budget is spent and comes back in 5 s: the job is polled just after.
    queue.api.limit = RateLimit(500, 0, reset=now + 5, seen=now)
    queue.schedule(poll, 100, now)
    assert poll.at - now == pytest.approx(5.25)


def test_a_finished_job_has_the_jobs_let_in_with_it_polled_at_once(journal):
    queue = _queue(journal, limit=500, window=10)
    now = time.time()
    settling = [Poll(now + 0.2, due=now - 0.5) for _ in range(3)]  # let in half a second ago
    waiting = Poll(now + 5, due=now + 9)  # its items are let in next period
    done = Poll(now + 60, due=now - 30)  # settled long ago
    queue._polls = {f"j{n}": poll for n, poll in enumerate([*settling, waiting, done])}
    queue._look_at_siblings(settling[0], now)
    assert settling[0].at == now + 0.2  # the one seen finished is left to its caller
    assert [poll.at for poll in settling[1:]] == [now, now]
    assert (waiting.at, done.at) == (now + 5, now + 60)
    settling[1].at = settling[2].at = now + 0.2
    queue._look_at_siblings(done, now)  # a job finished long after it settled: no one
    assert [poll.at for poll in settling] == [now + 0.2] * 3


def test_job_progress_is_kept_for_status(journal):
    _queue_items(journal, 150)
    _submit(journal, 100, "job-a")
    _submit(journal, 50, "job-b")
    journal.job_seen("job-a", "RUNNING", 60, 2)
    summary = journal.summary()
    jobs = {job["id"]: job for job in summary["import_jobs"]}
    assert jobs["job-a"] == dict(jobs["job-a"], state="RUNNING", items=100, landed=60,
                                 failed=2, waiting=100)
    assert jobs["job-b"] == dict(jobs["job-b"], state="SUBMITTED", items=50, landed=0,
                                 failed=0, waiting=50)
    assert summary["import_items"] == {"queued": 0, "submitted": 150, "landed": 0,
                                       "failed": 0}


def test_a_waiting_job_is_polled_when_an_earlier_jobs_files_leave_the_window(journal):
    """A job seen FINISHED at T: its files leave the server's window at about T + window,
    and a job that waits for room is polled just then, and soon after (not 30 s later)."""
    queue = _queue(journal, limit=500, window=300)
    now = time.time()
    poll = Poll(now)
    for _ in range(10):
        queue.schedule(poll, 0, now)  # backed off to 30 s
    queue._finishes.append(now - 290)  # seen finished 290 s ago: its files leave in 10 s
    queue.schedule(poll, 0, now)
    assert poll.at - now == pytest.approx(10.25)
    later = poll.at
    queue.schedule(poll, 0, later)  # polled once the window reopened: soon again
    assert poll.at - later == pytest.approx(0.25)


def test_a_job_submitted_during_a_poll_round_is_polled_soon(journal):
    """A job's finish and the next job's submission in one poll round: the flusher's next
    deadline is the new job's first poll, not "never" (it slept 30 s before)."""
    queue = _queue(journal, limit=100, window=4)
    _queue_items(journal, 150)
    _submit(journal, 100, "first")
    queue._polls["first"] = Poll(0.0)

    def finished(job_id, poll, answer):  # the first job is seen FINISHED and applied
        del queue._polls[job_id]
        journal.job_seen(job_id, "FINISHED", 100, 0)
        journal.imports_done([(row[0], row[1], row[3], row[4], [])  # lands nothing
                              for row in journal.job_items(job_id)])

    def submitted():  # ... and in the same round the window lets the second call go
        if "second" not in queue._polls:
            _submit(journal, 50, "second")
            queue._polls["second"] = Poll(time.time() + 0.25)

    queue._poll_one, queue._submit_if_due = finished, submitted
    queue._ask = lambda job_id, etag, wait=0: ({"state": "FINISHED"}, None, False)
    before = time.time()
    soonest = queue._poll()
    assert "second" in queue._polls
    assert soonest <= before + 0.5, soonest - before


def test_a_settling_jobs_held_poll_runs_beside_the_flusher_and_its_answer_wakes_it(journal):
    """A job whose items are being let in, and whose version the queue holds, is polled
    on the pool with a wait; the flusher goes on with the other jobs meanwhile, is woken
    by the answer, handles it like any other and asks again at once after a held 304."""
    queue = _queue(journal, limit=100, window=4)
    queue._heads = ThreadPoolExecutor(2)
    release, asked, handled = threading.Event(), [], []

    def ask(job_id, etag, wait=0):
        asked.append((job_id, wait))
        if wait:
            release.wait(10)
        return None, etag, bool(wait)

    queue._ask = ask
    real = queue._poll_one
    queue._poll_one = lambda job_id, poll, answer: (handled.append((job_id, answer)),
                                                    real(job_id, poll, answer))
    try:
        _queue_items(journal, 150)
        _submit(journal, 100, "settling")
        _submit(journal, 50, "later")
        now = time.time()
        queue._polls["settling"] = Poll(0.0, due=now, etag='"t1"')
        queue._polls["later"] = Poll(0.0, due=now + 100, etag='"t2"')  # not settling
        queue._wake.clear()
        started = time.monotonic()
        queue._poll()
        assert time.monotonic() - started < 1.0  # the held poll did not stop the flusher
        assert asked == [("settling", WAIT), ("later", 0)]
        assert [job_id for job_id, _ in handled] == ["later"]
        assert set(queue._waiting) == {"settling"}
        queue._poll()  # still held: not asked again, not handled
        assert len(asked) == 2 and [job_id for job_id, _ in handled] == ["later"]
        release.set()
        assert queue._wake.wait(5)  # the answer woke the flusher
        queue._poll()
        assert handled[-1] == ("settling", (None, '"t1"', True))
        assert queue._polls["settling"].at <= time.time()  # a held 304: asked again now
        queue._poll()
        assert "settling" in queue._waiting
        deadline = time.monotonic() + 5
        while asked.count(("settling", WAIT)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # the pool thread starts the second held poll
        assert asked.count(("settling", WAIT)) == 2
    finally:
        release.set()
        queue._heads.shutdown(wait=True)

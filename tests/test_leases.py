"""Leases on background work (hcafs/server/leases.py), on both store backends, with racing
processes: one holder at a time, takeover after the TTL, a stalled holder's publish refused,
and a publish that passed the fence finished by whoever takes the lease over."""

from __future__ import annotations

import json
import multiprocessing
import os
import time

import pytest

from hcafs.remote.s3 import S3
from hcafs.server.leases import PREFIX, LeaseLost, Leases
from hcafs.server.store import LocalStore, S3Store, Store

FORK = multiprocessing.get_context("fork")


@pytest.fixture(params=["local", "s3"])
def store_spec(request, tmp_path):
    if request.param == "local":
        return ("local", str(tmp_path / "store"))
    seaweed = request.getfixturevalue("seaweed")
    for name, value in seaweed.env().items():
        request.getfixturevalue("monkeypatch").setenv(name, value)
    return ("s3", f"s3://{seaweed.make_bucket()}/leases", seaweed.endpoint)


def open_store(spec):
    if spec[0] == "local":
        return LocalStore(spec[1])
    return S3Store(spec[1], S3(spec[2]))


def _race(spec, name, start_at, results, release):
    leases = Leases(open_store(spec), ttl=30)
    while time.time() < start_at:
        pass
    lease = leases.claim(name)
    results.put((os.getpid(), lease is not None and not lease.lost))
    release.wait(30)  # a holder that exited holds nothing: the winner stays until all tried


def test_racing_claims_have_exactly_one_winner(store_spec):
    for round_ in range(10):
        results, release = FORK.Queue(), FORK.Event()
        start_at = time.time() + 0.5
        workers = [FORK.Process(target=_race, args=(store_spec, f"race-{round_}", start_at,
                                                    results, release)) for _ in range(4)]
        for worker in workers:
            worker.start()
        won = [results.get(timeout=30)[1] for _ in workers]
        release.set()
        for worker in workers:
            worker.join(timeout=30)
        assert won.count(True) == 1, (round_, won)


def test_a_stalled_holder_loses_its_publish_to_the_new_holder(store_spec):
    store = open_store(store_spec)
    first = Leases(store, ttl=0.6, holder="elsewhere:1:a")  # renewer not started: it stalls
    second = Leases(store, ttl=30, holder="elsewhere:2:b")
    old = first.claim("copy-x")
    assert old is not None and old.token == 1
    assert second.claim("copy-x") is None  # live: nobody else gets it
    time.sleep(0.8)
    new = second.claim("copy-x")
    assert new is not None and new.token == 2
    with pytest.raises(LeaseLost):
        first.publish(old, "files/x", b'{"by":"first"}')
    assert store.read("files/x") is None
    assert second.publish(new, "files/x", b'{"by":"second"}') is True
    assert json.loads(store.read("files/x")) == {"by": "second"}
    assert not first.renew(old) and old.lost


def test_a_publish_past_the_fence_is_finished_by_the_next_holder(store_spec):
    store = open_store(store_spec)
    dying = Leases(store, ttl=0.6, holder="elsewhere:3:c")
    lease = dying.claim("import-7")
    record = dict(dying._record(lease.token, {"key": "files/y", "data": '{"v":1}'}),
                  expires=time.time() + 0.6)
    assert dying._swap(lease, record)  # the fence passed; the holder dies before the create
    time.sleep(0.8)
    taker = Leases(store, ttl=30, holder="elsewhere:4:d")
    assert taker.claim("import-7").token == 2
    assert json.loads(store.read("files/y")) == {"v": 1}


class _OneAtATime(LocalStore):
    """A local store whose group creates go one at a time through the caller's ``run``,
    as on S3, so that a holder can die between two of them (a fault)."""

    create_many = Store.create_many


def test_a_batch_published_past_the_fence_is_finished_by_the_next_holder(store_spec):
    store = _OneAtATime(store_spec[1]) if store_spec[0] == "local" else open_store(store_spec)
    dying = Leases(store, ttl=0.6, holder="elsewhere:5:e")
    lease = dying.claim("import-8")
    batch = [(f"files/b{n}", json.dumps({"n": n}).encode()) for n in range(3)]
    created = []

    def dies_after_one(calls):  # the fence passed; the holder dies after the first create
        call, *args = calls[0]
        created.append(call(*args))
        lease.lost = True  # this holder writes nothing more
        return created

    assert dying.publish_many(lease, batch, run=dies_after_one) == [True]
    assert store.read("files/b1") is None
    time.sleep(0.8)
    taker = Leases(store, ttl=30, holder="elsewhere:6:f")
    assert taker.claim("import-8").token == 2
    assert [json.loads(store.read(key)) for key, _ in batch] == [{"n": 0}, {"n": 1}, {"n": 2}]


def test_a_stalled_holder_publishes_nothing_of_a_batch(store_spec):
    store = open_store(store_spec)
    first = Leases(store, ttl=0.6, holder="elsewhere:7:g")
    old = first.claim("import-9")
    time.sleep(0.8)
    assert Leases(store, ttl=30, holder="elsewhere:8:h").claim("import-9").token == 2
    with pytest.raises(LeaseLost):
        first.publish_many(old, [("files/c0", b"{}"), ("files/c1", b"{}")])
    assert store.read("files/c0") is None and store.read("files/c1") is None


def test_the_renewer_keeps_a_lease_past_its_ttl_and_release_frees_it(store_spec):
    store = open_store(store_spec)
    holder = Leases(store, ttl=0.9, holder="elsewhere:5:e")
    other = Leases(store, ttl=30, holder="elsewhere:6:f")
    holder.start()
    try:
        lease = holder.claim("copy-z")
        time.sleep(2.5)
        assert other.claim("copy-z") is None
        assert holder.held() == 1 and not lease.lost
        holder.release(lease)
        assert store.read(PREFIX + "copy-z") is None
        assert other.claim("copy-z").token == 1
    finally:
        holder.close()


def test_a_dead_process_of_this_machine_is_taken_over_at_once(tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    child = FORK.Process(target=_claim_and_exit, args=(str(tmp_path / "store"),))
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0
    raw = json.loads(store.read(PREFIX + "copy-dead"))
    assert raw["expires"] > time.time() + 100  # not expired: only the holder is gone
    assert Leases(store, ttl=30).claim("copy-dead").token == 2


def _claim_and_exit(root):
    Leases(LocalStore(root), ttl=600).claim("copy-dead")


def test_an_exited_holder_not_yet_reaped_is_taken_over_at_once(tmp_path):
    """A killed server's worker may stay a zombie for a while (its new parent reaps it
    late): it answers signals, but holds nothing."""
    store = LocalStore(str(tmp_path / "store"))
    child = FORK.Process(target=_claim_and_exit, args=(str(tmp_path / "store"),))
    child.start()
    deadline = time.monotonic() + 30
    while _state(child.pid) != "Z":  # exited, and not reaped: nobody waited for it
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        assert Leases(store, ttl=30).claim("copy-dead").token == 2
    finally:
        child.join(timeout=30)


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()[0]

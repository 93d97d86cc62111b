"""GET /v1/events and /v1/events/{uuid} against real ``hcafs serve`` processes.

Events are recorded where bundles are created and deleted, ordered by the cursor the server
assigns when it records them (never by the bundle's version), and every server on one store
(a shared --data-dir, or one SeaweedFS bucket) records into the same journal.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import time
import uuid as _uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from fixtures.dss_checks import assert_problem, new_ids
from fixtures.dss_server import ADMIN, OTHER, USER, DSSServer

from hcafs.server import events as events_module
from hcafs.server.events import JOURNAL_EVENTS
from hcafs.server.store import LocalStore
from hcafs.versions import VERSION_FORMAT, now_version

pytestmark = pytest.mark.s3


class Pair:
    """Two servers on one store, and a file every bundle can hold."""

    def __init__(self, servers: list[DSSServer], staging: Path):
        self.servers = servers
        self.staging = staging
        data = f"events {_uuid.uuid4()}".encode()
        path = staging / f"{hashlib.sha256(data).hexdigest()[:16]}.bin"
        path.write_bytes(data)
        uuid, version = new_ids()
        answer = servers[0].call("PUT", f"/files/{uuid}", USER, params={"version": version},
                                 json={"source_url": f"file://{path}", "creator_uid": 3})
        assert answer.status_code == 201, answer.text
        self.files = [{"uuid": uuid, "version": version, "name": "f.txt", "indexed": False}]

    def put(self, uuid: str, version: str, via: int = 0) -> None:
        answer = self.servers[via].call("PUT", f"/bundles/{uuid}", USER,
                                        params={"replica": "aws", "version": version},
                                        json={"files": self.files, "creator_uid": 3})
        assert answer.status_code == 201, answer.text

    def delete(self, uuid: str, version: str | None = None, via: int = 0) -> None:
        params = {"replica": "aws", **({"version": version} if version else {})}
        answer = self.servers[via].call("DELETE", f"/bundles/{uuid}", ADMIN, params=params,
                                        json={"reason": "gone"})
        assert answer.status_code == 200, answer.text


@pytest.fixture(params=["local", "s3"])
def pair(request, tmp_path: Path, dss_factory, seaweed) -> Pair:
    staging = tmp_path / "staging"
    staging.mkdir()
    args = ["--staging-root", str(staging), "--s3-endpoint", seaweed.endpoint]
    if request.param == "s3":
        args += ["--store", f"s3://{seaweed.make_bucket()}/hcafs"]
    first = dss_factory(f"{request.param}-1", args)
    second = dss_factory(f"{request.param}-2", [*args, "--data-dir", first.data_dir])
    return Pair([first, second], staging)


def events(server: DSSServer, **params) -> tuple[list[dict], str, int]:
    """Every event after ``since`` (following Link pages), the last cursor, and the number
    of requests it took; checks the paging headers on the way."""
    answer = server.call("GET", "/events", params={"replica": "aws", **params})
    found, requests_made = [], 1
    while True:
        assert answer.headers["X-OpenAPI-Paginated-Content-Key"] == "event_streams"
        body = answer.json()
        for stream in body["event_streams"]:
            assert stream["events"] and stream["cursor"] == stream["events"][-1]["cursor"]
            assert stream["from_date"] == stream["events"][0]["timestamp"]
            assert stream["size"] == sum(e["size"] for e in stream["events"])
            found += stream["events"]
        if answer.status_code == 200:
            assert "Link" not in answer.headers
            return found, body["cursor"], requests_made
        assert answer.status_code == 206
        answer = requests.get(answer.links["next"]["url"], timeout=30)
        requests_made += 1


def shapes(found: list[dict]) -> list[tuple[str, str]]:
    return [(e["type"], e["fqid"]) for e in found]


def test_creates_and_deletes_from_two_servers_in_cursor_order(pair):
    _, start, _ = events(pair.servers[0])
    a, b, c = (str(_uuid.uuid4()) for _ in range(3))
    va, vb, vc = now_version(), now_version(), now_version()
    pair.put(a, va, via=0)
    pair.put(b, vb, via=1)
    pair.put(c, vc, via=0)
    pair.delete(b, vb, via=0)
    pair.delete(c, via=1)

    expected = [("create", f"{a}.{va}"), ("create", f"{b}.{vb}"), ("create", f"{c}.{vc}"),
                ("delete", f"{b}.{vb}"), ("delete", c)]
    for server in pair.servers:  # both servers serve the whole journal
        found, cursor, _ = events(server, since=start) if start else events(server)
        mine = [e for e in found if e["uuid"] in (a, b, c)]
        assert shapes(mine) == expected
        cursors = [e["cursor"] for e in found]
        assert cursors == sorted(cursors) and cursor == cursors[-1]
        assert len({e["event_id"] for e in found}) == len(found)
        assert all(e["timestamp"] == e["cursor"][:25] for e in found)

    # nothing new: one request, no events, the cursor handed back
    again, same, made = events(pair.servers[1], since=cursor)
    assert (again, same, made) == ([], cursor, 1)


def test_a_late_commit_is_in_the_next_read_since_the_last_cursor(pair):
    pair.put(str(_uuid.uuid4()), now_version())
    _, cursor, _ = events(pair.servers[0])
    hour_ago = (_dt.datetime.now(_dt.UTC) - _dt.timedelta(hours=1)).strftime(VERSION_FORMAT)
    late = str(_uuid.uuid4())
    pair.put(late, hour_ago, via=1)  # its version is older than every event already read
    found, _, _ = events(pair.servers[0], since=cursor)
    assert shapes(found) == [("create", f"{late}.{hour_ago}")]
    assert found[0]["cursor"] > cursor


def test_paging_from_date_and_to_date(dss):
    """A served journal holds up to 1,000 events; per_page counts journals."""
    first = now_version()
    pair = Pair([dss.server], dss.staging_root)
    made = [new_ids() for _ in range(JOURNAL_EVENTS + 100)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda ids: pair.put(*ids), made))
    answer = dss.server.call("GET", "/events", params={"replica": "aws", "per_page": 1,
                                                       "from_date": first})
    assert answer.status_code == 206
    assert [len(s["events"]) for s in answer.json()["event_streams"]] == [JOURNAL_EVENTS]
    assert "since=" in answer.links["next"]["url"]
    found, _, made_requests = events(dss.server, from_date=first, per_page=1)
    assert made_requests == 2
    assert sorted(shapes(found)) == sorted(("create", f"{u}.{v}") for u, v in made)
    whole, _, made_requests = events(dss.server, from_date=first, per_page=10)
    assert whole == found and made_requests == 1
    middle = found[1]["timestamp"]
    until, _, _ = events(dss.server, from_date=first, to_date=middle)
    assert until == [e for e in found if e["timestamp"] <= middle] and len(until) >= 2


def test_bad_parameters_are_refused(dss):
    for params in ({"since": "yesterday"}, {"from_date": "2019-02-30T000000.000000Z"},
                   {"per_page": 11}, {"per_page": 0}):
        assert_problem(dss.server.call("GET", "/events", params={"replica": "aws", **params}),
                       400, "illegal_arguments")
    assert dss.server.call("GET", "/events", params={"replica": "azure"}).status_code == 400


def test_event_document_of_a_bundle_version(dss):
    pair = Pair([dss.server], dss.staging_root)
    uuid, version = new_ids()
    pair.put(uuid, version)
    answer = dss.server.call("GET", f"/events/{uuid}", params={"replica": "aws",
                                                               "version": version})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["uuid"], body["version"]) == (uuid, version)
    assert [f["uuid"] for f in body["files"]] == [pair.files[0]["uuid"]]
    assert_problem(dss.server.call("GET", f"/events/{_uuid.uuid4()}",
                                   params={"replica": "aws", "version": version}),
                   404, "not_found")
    pair.delete(uuid, version)
    assert_problem(dss.server.call("GET", f"/events/{uuid}",
                                   params={"replica": "aws", "version": version}),
                   404, "not_found")


def test_collections_carry_a_mark_that_changes_with_each_change_of_the_owner(dss):
    def mark(token: str) -> str:
        answer = dss.server.call("GET", "/collections", token, params={"per_page": 10})
        assert answer.status_code in (200, 206), answer.text
        return answer.headers["X-HCAFS-Collections-Mark"]

    body = {"name": "c", "description": "d", "details": {}, "contents": []}
    uuid, version = new_ids()
    seen = [mark(USER)]
    others = mark(OTHER)
    assert mark(USER) == seen[-1]  # reading changes nothing
    answer = dss.server.call("PUT", "/collections", USER, json=body,
                             params={"replica": "aws", "uuid": uuid, "version": version})
    assert answer.status_code == 201, answer.text
    seen.append(mark(USER))
    answer = dss.server.call("PATCH", f"/collections/{uuid}", USER, json={"name": "e"},
                             params={"replica": "aws", "version": version})
    assert answer.status_code == 200, answer.text
    seen.append(mark(USER))
    answer = dss.server.call("DELETE", f"/collections/{uuid}", USER,
                             params={"replica": "aws"})
    assert answer.status_code == 200, answer.text
    seen.append(mark(USER))
    assert len(set(seen)) == 4, seen
    assert mark(OTHER) == others  # another owner's changes do not touch it


class _SlowOnce(LocalStore):
    """A store whose first event write stalls (a fault: a slow disk or S3 PUT)."""

    stall = 0.0

    def mark(self, key: str) -> bool:
        done = super().mark(key)
        if key.startswith("events/") and self.stall:
            time.sleep(self.stall)
            self.stall = 0.0
        return done


def test_an_event_whose_recording_was_slow_is_filed_again_under_a_later_cursor(
        tmp_path, monkeypatch):
    monkeypatch.setattr(events_module, "LATE_SECONDS", 0.2)
    store = _SlowOnce(str(tmp_path / "store"))
    journal = events_module.Journal(store)
    before = journal.record("create", str(_uuid.uuid4()), now_version())
    store.stall = 0.5
    uuid, version = str(_uuid.uuid4()), now_version()
    started = now_version()
    cursor = journal.record("create", uuid, version)
    assert cursor[:25] >= events_module.shift(started, -0.5)  # filed after the stall
    found = [e for events, _ in journal.since(before) for e in events]
    assert [(e.fqid, e.cursor == cursor) for e in found] == [(f"{uuid}.{version}", False),
                                                             (f"{uuid}.{version}", True)]
    # a reader that had already passed the first cursor still gets the second
    assert [e.fqid for events, _ in journal.since(found[0].cursor) for e in events] == [
        f"{uuid}.{version}"]

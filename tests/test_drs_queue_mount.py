"""A DRS bundle of 1,000 members through one ``.drs`` file in a real mount: the import API
of a real ``hcafs serve`` (behind a relay that records the calls) takes it from a second
``hcafs serve``, under a file budget the bundle spends more than once, and ``hcafs status``
shows the job's progress."""

from __future__ import annotations

import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fixtures.drs_repo import max_in_period
from fixtures.dss_server import ADMIN
from fixtures.hcafs_mount import commit, needs_fuse, run_hcafs, wait_until
from fixtures.worlds import DrsWorld

from hcafs.remote.client import DSSClient
from hcafs.versions import now_version

pytestmark = needs_fuse

MEMBERS = 1000


def _publish_bundle(client: DSSClient, staging: Path, files: dict[str, bytes]) -> str:
    """Register ``files`` (8 at a time) and make one bundle of them; its FQID."""

    def register(name: str) -> dict:
        path = staging / str(uuid.uuid4())
        path.write_bytes(files[name])
        file_uuid, version = str(uuid.uuid4()), now_version()
        status, _ = client.put_file(file_uuid, version, f"file://{path}")
        if status == 202:
            client.wait_file(file_uuid, version)
        return {"uuid": file_uuid, "version": version, "name": name, "indexed": False}

    with ThreadPoolExecutor(8) as pool:
        entries = list(pool.map(register, files))
    bundle, version = str(uuid.uuid4()), now_version()
    client.put_bundle(bundle, version, entries)
    return f"{bundle}.{version}"


def test_a_drs_bundle_of_1000_members_through_one_drs_file(tmp_path, seaweed):
    # 600 files per 5 s: the bundle's members need the window twice.
    world = DrsWorld(tmp_path / "world", seaweed, limit=600, window=5)
    try:
        members = {f"lane{n % 4}/m{n:04d}.txt": f"member {n}\n".encode() * (1 + n % 7)
                   for n in range(MEMBERS)}
        fqid = _publish_bundle(DSSClient(world.external.url, token=ADMIN),
                               world.external_staging, members)
        with world.mount(tmp_path / "m") as mount:
            pending = Path(mount.path) / "bundles" / "cohort"
            pending.mkdir()
            (pending / "run1.drs").write_text(world.drs_uri(fqid) + "\n")
            wait_until(lambda: not (pending / "run1.drs").exists(), timeout=300,
                       what="the bundle's import to land")
            landed = {str(p.relative_to(pending / "run1")): p
                      for p in (pending / "run1").rglob("*") if p.is_file()}
            assert sorted(landed) == sorted(members)
            for name in list(members)[::97]:
                assert landed[name].read_bytes() == members[name]
            assert all(p.stat().st_size == len(members[n]) for n, p in landed.items())

            report = json.loads(run_hcafs("status", mount.path, "--json",
                                          env=mount.env).stdout)
            assert report["import_items"] == {"queued": 0, "submitted": 0, "landed": 1,
                                              "failed": 0}
            [job] = report["import_jobs"]
            assert job == dict(job, state="FINISHED", items=1, landed=MEMBERS, failed=0,
                               waiting=0)
            text = run_hcafs("status", mount.path, env=mount.env).stdout
            assert f"import job {job['id']}: FINISHED, 1 items: {MEMBERS} landed" in text
            assert "DRS imports: 0 queued, 0 submitted, 1 landed, 0 failed" in text
            committed = commit(mount, "cohort")
        listed = DSSClient(world.dss.url, token=ADMIN).get_bundle(*committed.split(".", 1))
        assert len(listed["files"]) == MEMBERS
        log = world.import_log()
        calls = [c for c in log["calls"] if c["accepted"] and not c["replay"]]
        assert [c["items"] for c in calls] == [1]  # one item, one call, never resubmitted
        admitted = sorted(a["time"] for a in log["admissions"])
        assert len(admitted) == MEMBERS
        assert max_in_period(admitted, 5) <= 600
        # Polled while the bundle waited for the window: a bounded number of times.
        polls = [s for s in world.proxy.seen if s.method == "GET"
                 and s.path.startswith("/v2/bulk/drs/imports/")]
        assert 1 <= len(polls) <= 40
    finally:
        world.close()


def test_status_lists_queued_and_submitted_items_while_they_wait(tmp_path, seaweed):
    """A window of 1 item per 60 s: the second ``.drs`` file is sent to wait at the server
    for the next period, the third waits, queued, and status says so (and the job of the
    first)."""
    world = DrsWorld(tmp_path / "world", seaweed, limit=1, window=60)
    try:
        client = DSSClient(world.external.url, token=ADMIN)
        fqid = _publish_bundle(client, world.external_staging, {"a.txt": b"a\n"})
        files = client.get_bundle(*fqid.split(".", 1))["files"]
        uri = world.drs_uri((files[0]["uuid"], files[0]["version"]))
        with world.mount(tmp_path / "m") as mount:
            pending = Path(mount.path) / "bundles" / "slow"
            pending.mkdir()
            (pending / "one.drs").write_text(uri)
            wait_until(lambda: (pending / "one").exists(), what="the first import")
            (pending / "two.drs").write_text(uri)
            (pending / "three.drs").write_text(uri)

            def items() -> dict:
                return json.loads(run_hcafs("status", mount.path, "--json",
                                            env=mount.env).stdout)["import_items"]

            wait_until(lambda: items()["queued"] == 1 and items()["submitted"] == 1,
                       what="the second to be sent and the third queued")
            assert items() == {"queued": 1, "submitted": 1, "landed": 1, "failed": 0}
            text = run_hcafs("status", mount.path, env=mount.env).stdout
            assert "DRS imports: 1 queued, 1 submitted, 1 landed, 0 failed" in text
            assert "FINISHED, 1 items: 1 landed, 0 failed" in text
            assert os.path.exists(pending / "two.drs") and os.path.exists(pending / "three.drs")
            # Leave them waiting (a plain umount waits for imports sent, a period here).
            assert run_hcafs("umount", "--no-wait", mount.path, env=mount.env).returncode == 0
    finally:
        world.close()

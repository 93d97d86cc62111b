"""The real Seven Bridges client (sevenbridges-python 2.11.2) against ``hcafs serve``'s bulk
DRS import API, over https with a self-signed certificate (the client refuses http).

The client builds its URLs as ``Api(url) + '/bulk/drs/imports/create'``, so ``url`` ends in
``/v2`` (``sevenbridges/http/client.py``, ``models/drs_import.py``).
"""

from __future__ import annotations

import time

import pytest
import requests
import sevenbridges as sbg
from fixtures.drs_repo import DrsRepo, self_signed_cert, start_repo
from fixtures.dss_server import USER, DSSServer
from sevenbridges.errors import BadRequest, NotFound, SbgError, Unauthorized

from hcafs.remote.client import DSSClient


@pytest.fixture(scope="module")
def rig(tmp_path_factory) -> tuple[DrsRepo, DSSServer, str]:
    work = tmp_path_factory.mktemp("sbg")
    repo = start_repo(work / "repo")  # plain http on loopback: allowed as a DRS source
    cert, key = self_signed_cert(work)
    importer = DSSServer(str(work / "importer"), args=["--tls-cert", cert, "--tls-key", key])
    importer.start()
    yield repo, importer, cert
    importer.stop()
    repo.server.stop()


@pytest.fixture
def api(rig, monkeypatch):
    _, importer, cert = rig
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", cert)
    assert importer.url.startswith("https://127.0.0.1:")
    return sbg.Api(url=f"{importer.url}/v2", token=USER)


def poll(api, job_id: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        job = api.drs_imports.bulk_get(job_id)
        if job.state == "FINISHED":
            return job
        assert job.state in ("SUBMITTED", "RESOLVING", "RUNNING")
        assert time.monotonic() < deadline, job.state
        time.sleep(0.1)


def test_bulk_submit_poll_results_errors_and_result_files(rig, api):
    repo, importer, cert = rig
    single = repo.put_file(b"via sevenbridges-python\n", "hello.txt")
    bundle, _ = repo.put_bundle({"r1.fastq": b"@r1\nACGT\n+\nIIII\n", "r2.fastq": b"@r2\n"})
    imports = [
        {"drs_uri": repo.uri(single), "project": "rfranklin/drs-import/", "name": "hello.txt",
         "metadata": {"study_id": "1", "cohort": 4}},
        {"drs_uri": repo.uri(bundle), "project": "rfranklin/drs-import", "name": "pair"},
        {"drs_uri": "drs://no-such-host.invalid/abc", "project": "rfranklin/drs-import"},
        {"drs_uri": repo.uri(single), "project": "rfranklin/drs-import", "name": "hello.txt"},
    ]
    submitted = api.drs_imports.bulk_submit(imports, tags=["ICDC"],
                                            conflict_resolution="RENAME")
    assert submitted.state == "SUBMITTED" and submitted.result == []
    assert submitted.id.isdigit() and submitted.href.endswith(f"/imports/{submitted.id}")

    job = poll(api, submitted.id)
    assert job.started_on <= job.finished_on
    resources = [r.resource for r in job.result if r.resource]
    failures = [r.error for r in job.result if r.error]
    assert len(job.result) == 5
    assert [r.name for r in resources] == ["hello.txt", "r1.fastq", "r2.fastq",
                                           "_1_hello.txt"]
    [failure] = failures
    assert (failure.status, failure.code) == (404, 5102)
    assert "no-such-host.invalid" in failure.message and failure.more_info

    records = job.result_files
    assert all(record.valid for record in records)
    files = {record.resource.id: record.resource for record in records}
    assert set(files) == {r.id for r in resources}
    hello = files[resources[0].id]
    assert (hello.name, hello.size, hello.project, hello.type) == \
        ("hello.txt", len(b"via sevenbridges-python\n"), "rfranklin/drs-import", "file")
    assert hello.metadata["study_id"] == "1" and hello.metadata["cohort"] == 4
    assert hello.tags == ["ICDC"]
    assert files[resources[1].id].parent == files[resources[2].id].parent != hello.parent

    # the bytes, through the DSS API of the same server
    client = DSSClient(importer.url, verify=cert)
    uuid, version = resources[1].id.split(".", 1)
    assert requests.get(client.file_url(uuid, version), timeout=30).content == \
        b"@r1\nACGT\n+\nIIII\n"


def test_client_side_errors_come_from_the_sbg_error_body(rig, api):
    repo, importer, _ = rig
    item = {"drs_uri": repo.uri(repo.put_file(b"x")), "project": "rfranklin/too-many"}
    with pytest.raises(BadRequest) as refused:
        api.drs_imports.bulk_submit([dict(item) for _ in range(101)])
    assert refused.value.status == 400 and "at most 100" in refused.value.message
    with pytest.raises(NotFound):
        api.drs_imports.bulk_get("1234567890")
    with pytest.raises(Unauthorized):
        sbg.Api(url=f"{importer.url}/v2", token="not-a-token").drs_imports.bulk_get("1")
    with pytest.raises(SbgError, match="requires https"):
        sbg.Api(url=importer.url.replace("https://", "http://") + "/v2", token=USER)

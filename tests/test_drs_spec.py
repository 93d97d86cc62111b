"""Every kind of DRS answer of ``hcafs serve`` validates against the DRS 1.4.0 OpenAPI
schemas (``/work/shared/reference/drs-1.4.0.openapi.yaml``; skipped without it).

The answers come from real servers: an open one with a file and a bundle, and a
bearer-protected one (signed access URLs, its 401).  Each answer is validated with
``jsonschema`` against the schema of that response in the specification.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from fixtures.drs_repo import start_repo
from fixtures.dss_server import USER

SPEC = Path("/work/shared/reference/drs-1.4.0.openapi.yaml")
DRS = "/ga4gh/drs/v1"

pytestmark = pytest.mark.skipif(not SPEC.is_file(), reason="the DRS 1.4.0 spec is absent")


@pytest.fixture(scope="module")
def spec():
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(SPEC.read_text())


@pytest.fixture(scope="module")
def check(spec):
    jsonschema = pytest.importorskip("jsonschema")
    referencing = pytest.importorskip("referencing")
    resource = referencing.Resource.from_contents(
        spec, default_specification=referencing.jsonschema.DRAFT202012)
    registry = referencing.Registry().with_resource("urn:drs-1.4.0", resource)

    def schema_of(path: str, method: str, status: str) -> dict:
        response = spec["paths"][path][method]["responses"][status]
        while "$ref" in response:
            response = spec["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
        return _rebased(response["content"]["application/json"]["schema"])

    def validate(answer: requests.Response, path: str, method: str) -> dict:
        body = answer.json()
        schema = schema_of(path, method, str(answer.status_code))
        jsonschema.Draft202012Validator(schema, registry=registry).validate(body)
        return body

    return validate


def _rebased(schema):
    """The spec's local ``#/components/...`` references, pointed at the registered spec."""
    if isinstance(schema, dict):
        return {k: (f"urn:drs-1.4.0{v}" if k == "$ref" and v.startswith("#") else
                    _rebased(v)) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_rebased(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    open_repo = start_repo(tmp_path_factory.mktemp("spec-open"), ("--drs-max-bulk", "5"))
    closed = start_repo(tmp_path_factory.mktemp("spec-closed"), ("--drs-auth", "bearer"))
    yield open_repo, closed
    open_repo.server.stop()
    closed.server.stop()


def test_objects_bundles_access_and_service_info_validate(repos, check):
    repo, _ = repos
    url = repo.server.url + DRS
    fqid = repo.put_file(b"spec\n")
    bundle, _ = repo.put_bundle({"a.txt": b"a\n", "b.txt": b"b\n"})
    check(requests.get(f"{url}/service-info", timeout=30), "/service-info", "get")
    found = check(requests.get(f"{url}/objects/{fqid}", timeout=30),
                  "/objects/{object_id}", "get")
    assert found["access_methods"]
    found = check(requests.post(f"{url}/objects/{fqid}", json={}, timeout=30),
                  "/objects/{object_id}", "post")
    assert found["id"] == fqid
    found = check(requests.get(f"{url}/objects/{bundle}", timeout=30),
                  "/objects/{object_id}", "get")
    assert len(found["contents"]) == 2
    check(requests.get(f"{url}/objects/{fqid}/access/https", timeout=30),
          "/objects/{object_id}/access/{access_id}", "get")
    check(requests.post(f"{url}/objects/{fqid}/access/https", json={}, timeout=30),
          "/objects/{object_id}/access/{access_id}", "post")
    found = check(requests.options(f"{url}/objects/{fqid}", timeout=30),
                  "/objects/{object_id}", "options")
    assert found["supported_types"] == ["None"]


def test_bulk_answers_validate(repos, check):
    repo, _ = repos
    url = repo.server.url + DRS
    fqid = repo.put_file(b"bulk spec\n")
    found = check(requests.post(f"{url}/objects", timeout=30,
                                json={"bulk_object_ids": [fqid, "nothing-here"]}),
                  "/objects", "post")
    assert found["summary"] == {"requested": 2, "resolved": 1, "unresolved": 1}
    found = check(requests.post(f"{url}/objects/access", timeout=30, json={
        "bulk_object_access_ids": [{"bulk_object_id": fqid, "bulk_access_ids": ["https"]}]}),
        "/objects/access", "post")
    assert found["resolved_drs_object_access_urls"][0]["drs_object_id"] == fqid
    found = check(requests.options(f"{url}/objects", timeout=30,
                                   json={"bulk_object_ids": [fqid]}), "/objects", "options")
    assert found["resolved_drs_object"][0]["drs_object_id"] == fqid
    check(requests.post(f"{url}/objects", timeout=30,
                        json={"bulk_object_ids": [fqid] * 6}), "/objects", "post")


def test_errors_and_protected_answers_validate(repos, check):
    repo, closed = repos
    url, protected = repo.server.url + DRS, closed.server.url + DRS
    check(requests.get(f"{url}/objects/no-such-object", timeout=30),
          "/objects/{object_id}", "get")
    check(requests.get(f"{url}/objects/{repo.put_file(b'x')}/access/nope", timeout=30),
          "/objects/{object_id}/access/{access_id}", "get")
    check(requests.post(f"{url}/objects", json={"bulk_object_ids": "x"}, timeout=30),
          "/objects", "post")
    fqid = closed.put_file(b"closed spec\n")
    check(requests.get(f"{protected}/objects/{fqid}", timeout=30),
          "/objects/{object_id}", "get")
    auth = {"Authorization": f"Bearer {USER}"}
    check(requests.get(f"{protected}/objects/{fqid}", headers={
        "Authorization": "Bearer wrong"}, timeout=30), "/objects/{object_id}", "get")
    found = check(requests.get(f"{protected}/objects/{fqid}", headers=auth, timeout=30),
                  "/objects/{object_id}", "get")
    assert "access_url" not in found["access_methods"][0]
    signed = check(requests.get(f"{protected}/objects/{fqid}/access/https", headers=auth,
                                timeout=30), "/objects/{object_id}/access/{access_id}", "get")
    assert requests.get(signed["url"], timeout=30).content == b"closed spec\n"
    signature = parse_qs(urlsplit(signed["url"]).query)["signature"][0]
    logged = closed.server.log()
    assert f"{urlsplit(signed['url']).path}?expires=" in logged  # the access line is there
    assert "signature=REDACTED" in logged and signature not in logged
    tampered = signed["url"].replace("signature=", "signature=0")
    answer = requests.get(tampered, timeout=30)
    assert answer.status_code == 403 and set(answer.json()) == {"msg", "status_code"}
    found = check(requests.options(f"{protected}/objects/{fqid}", timeout=30),
                  "/objects/{object_id}", "options")
    assert found["supported_types"] == ["BearerAuth"]

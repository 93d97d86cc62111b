"""The ``hca_cli`` fixture's config makes the real hca 7.0.1 CLI talk to a local server.

The server here is a stub that only records requests: these tests check the fixture (config,
token, S3 environment), not hcafs. The stub's spec is shaped like the one hcafs serves
(OpenAPI 3, absolute http server URL, ``security`` on the operations).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from fixtures import HcaCliError

pytestmark = pytest.mark.hca_cli

TOKEN = "stub-token-0123456789"
MiB = 1024 * 1024


def stub_spec(base: str) -> dict:
    secured = [{"dcpAuth": []}]
    uuid_param = {"name": "uuid", "in": "path", "required": True}

    def body(properties: dict, required: list[str]) -> dict:
        schema = {"type": "object", "properties": properties, "required": required}
        return {"content": {"application/json": {"schema": schema}}}

    return {
        "openapi": "3.0.0",
        "info": {"title": "stub", "version": "1", "description": "Stub DSS for fixture tests."},
        "servers": [{"url": f"{base}/v1"}],
        "paths": {
            "/ping": {"get": {"security": secured, "responses": {"200": {"description": "ok"}}}},
            "/files/{uuid}": {
                "put": {
                    "security": secured,
                    "parameters": [uuid_param, {"name": "version", "in": "query"}],
                    "requestBody": body(
                        {"creator_uid": {"type": "integer"}, "source_url": {"type": "string"}},
                        ["creator_uid", "source_url"],
                    ),
                    "responses": {"201": {"description": "created"}},
                }
            },
            "/bundles/{uuid}": {
                "put": {
                    "security": secured,
                    "parameters": [
                        uuid_param,
                        {"name": "version", "in": "query", "required": True},
                        {"name": "replica", "in": "query", "required": True},
                    ],
                    "requestBody": body(
                        {"creator_uid": {"type": "integer"}, "files": {"type": "array"}},
                        ["creator_uid", "files"],
                    ),
                    "responses": {"201": {"description": "created"}},
                }
            },
        },
    }


class StubDSS(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), StubHandler)
        self.base_url = f"http://127.0.0.1:{self.server_address[1]}"
        self.requests: list[dict] = []


class StubHandler(BaseHTTPRequestHandler):
    server: StubDSS

    def log_message(self, *args) -> None:
        pass

    def _reply(self, status: int, payload: object) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> dict:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        entry = {
            "method": self.command,
            "path": url.path,
            "query": parse_qs(url.query),
            "authorization": self.headers.get("Authorization"),
            "body": json.loads(raw) if raw else None,
        }
        self.server.requests.append(entry)
        return entry

    def do_GET(self) -> None:
        entry = self._record()
        if entry["path"] == "/v1/swagger.json":
            self._reply(200, stub_spec(self.server.base_url))
        elif entry["path"] == "/v1/ping":
            self._reply(200, {"authorization": entry["authorization"]})
        else:
            self._reply(404, {"status": 404, "code": "not_found", "title": "no such path"})

    def do_PUT(self) -> None:
        entry = self._record()
        version = entry["query"].get("version", ["?"])[0]
        self._reply(201, {"version": version})


@pytest.fixture
def stub_dss():
    server = StubDSS()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_authenticated_call_sends_the_bearer_token(hca_cli, stub_dss):
    cli = hca_cli(stub_dss.base_url, TOKEN)
    assert cli.json("dss", "get-ping") == {"authorization": f"Bearer {TOKEN}"}
    # Both the DSS and the Auth client loaded the spec from our server, nowhere else.
    fetched = [r for r in stub_dss.requests if r["path"] == "/v1/swagger.json"]
    assert fetched
    # The config file stays private to the fixture's temp dir, token and all.
    written = json.loads(cli.config_file.read_text())
    assert written["oauth2_token"]["access_token"] == TOKEN
    assert str(cli.config_file).startswith(str(cli.home))


def test_failed_run_raises_with_the_cli_output(hca_cli, stub_dss):
    cli = hca_cli(stub_dss.base_url, TOKEN)
    with pytest.raises(HcaCliError) as e:
        cli.run("dss", "no-such-command")
    assert "invalid choice" in str(e.value)
    assert cli.run("dss", "no-such-command", check=False).returncode != 0


def test_upload_stages_to_seaweed_with_checksum_tags(hca_cli, stub_dss, seaweed, tmp_path):
    """``hca dss upload`` stages into SeaweedFS through the fixture's S3 environment.

    One file is past the 64 MiB multipart threshold: the CLI's own ``hca-dss-s3_etag`` tag
    must equal the composite ETag SeaweedFS gives the object.
    """
    bucket = seaweed.make_bucket()
    src = tmp_path / "src"
    src.mkdir()
    files = {"small.json": b'{"a": 1}\n', "big.bin": os.urandom(64 * MiB + 5)}
    for name, data in files.items():
        (src / name).write_bytes(data)

    cli = hca_cli(stub_dss.base_url, TOKEN, s3=seaweed)
    out = cli.json(
        "dss", "upload", "--src-dir", str(src), "--replica", "aws", "--staging-bucket", bucket,
        "--no-progress",
    )  # fmt: skip
    assert sorted(f["name"] for f in out["files"]) == sorted(files)

    puts = [
        r for r in stub_dss.requests if r["method"] == "PUT" and r["path"].startswith("/v1/files/")
    ]
    assert len(puts) == 2
    assert all(r["authorization"] == f"Bearer {TOKEN}" for r in puts)
    s3 = seaweed.client()
    etag_tags = {}
    for put in puts:
        url = put["body"]["source_url"]
        assert url.startswith(f"s3://{bucket}/")
        key = url.split("/", 3)[3]
        name = key.rsplit("/", 1)[1]
        data = files[name]
        tags = {
            t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
        }
        head = s3.head_object(Bucket=bucket, Key=key)
        assert tags["hca-dss-sha256"] == hashlib.sha256(data).hexdigest()
        assert tags["hca-dss-sha1"] == hashlib.sha1(data).hexdigest()
        assert tags["hca-dss-s3_etag"] == head["ETag"].strip('"')
        assert len(tags["hca-dss-crc32c"]) == 8
        assert head["ContentLength"] == len(data)
        etag_tags[name] = tags["hca-dss-s3_etag"]
    assert etag_tags["small.json"] == hashlib.md5(files["small.json"]).hexdigest()
    assert etag_tags["big.bin"].endswith("-2")

    bundle = [r for r in stub_dss.requests if r["path"].startswith("/v1/bundles/")]
    assert len(bundle) == 1
    assert bundle[0]["query"]["replica"] == ["aws"]
    indexed = {f["name"]: f["indexed"] for f in bundle[0]["body"]["files"]}
    assert indexed == {"small.json": True, "big.bin": False}

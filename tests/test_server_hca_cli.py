"""The official ``hca`` 7.0.1 CLI drives ``hcafs serve``: upload/download through SeaweedFS
staging, and every files, bundles and collections command."""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid as _uuid

import pytest
from fixtures.dss_checks import new_ids
from fixtures.dss_server import ADMIN, USER
from fixtures.staging import stage

pytestmark = [pytest.mark.hca_cli, pytest.mark.s3]


@pytest.fixture(scope="module")
def admin_cli(dss, hca_cli, seaweed):
    return hca_cli(dss.server.url, ADMIN, s3=seaweed)


@pytest.fixture(scope="module")
def user_cli(dss, hca_cli):
    return hca_cli(dss.server.url, USER)


def sha256(path) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def test_upload_then_download_byte_for_byte(dss, admin_cli, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    files = {
        "readme.txt": b"hello",
        "sub/meta.json": b'{"sample": "lung"}',
        "sub/reads.fastq.gz": os.urandom(5000),
        "sub/with space & more.txt": b"odd name",
        "big.bin": os.urandom(2 * 1024 * 1024 + 3),  # above --async-threshold: 202 + HEAD polls
        "empty.dat": b"",
    }
    for name, data in files.items():
        (src / name).write_bytes(data)

    out = admin_cli.json("dss", "upload", "--src-dir", str(src), "--replica", "aws",
                         "--staging-bucket", dss.bucket, "--no-progress")
    bundle_uuid, version = out["bundle_uuid"], out["version"]
    assert sorted(f["name"] for f in out["files"]) == sorted(files)
    log = dss.server.log()
    big = next(f for f in out["files"] if f["name"] == "big.bin")
    assert re.search(rf"PUT /v1/files/{big['uuid']}\S* 202", log)
    assert re.search(rf"HEAD /v1/files/{big['uuid']}\S* 200", log)

    dl = tmp_path / "dl"
    admin_cli.run("dss", "download", "--bundle-uuid", bundle_uuid, "--replica", "aws",
                  "--download-dir", str(dl))
    folder = dl / f"{bundle_uuid}.{version}"
    for name, data in files.items():
        assert sha256(folder / name) == hashlib.sha256(data).hexdigest(), name
    manifest = json.loads((folder / "bundle.json").read_text())
    assert {f["name"]: f["indexed"] for f in manifest["bundle"]["files"]}["sub/meta.json"]


def test_put_head_and_get_file(dss, admin_cli, user_cli):
    data = "a plain text file\n"
    url = stage(dss.s3, dss.bucket, data.encode(), content_type="text/plain")
    uuid, version = new_ids()
    out = user_cli.json("dss", "put-file", "--uuid", uuid, "--version", version,
                        "--source-url", url, "--creator-uid", "5")
    assert out["version"] == version
    again = user_cli.json("dss", "put-file", "--uuid", uuid, "--version", version,
                          "--source-url", url, "--creator-uid", "5")
    assert again["version"] == version  # with the stored version's checksums beside it
    assert again["sha256"] == hashlib.sha256(data.encode()).hexdigest()

    head = user_cli.run("dss", "head-file", "--uuid", uuid, "--replica", "aws",
                        "--version", version)
    assert "<Response [200]>" in head.stdout
    got = user_cli.run("dss", "get-file", "--uuid", uuid, "--replica", "aws")
    assert got.stdout == data

    missing = user_cli.run("dss", "head-file", "--uuid", str(_uuid.uuid4()), "--replica",
                           "aws", check=False)
    assert missing.returncode != 0
    conflict = user_cli.run("dss", "put-file", "--uuid", uuid, "--version", version,
                            "--source-url", url, "--creator-uid", "6", check=False)
    assert conflict.returncode != 0 and "file_already_exists" in conflict.stderr


def _register(cli, dss, count: int) -> list[dict]:
    entries = []
    for i in range(count):
        url = stage(dss.s3, dss.bucket, f"content {i}".encode())
        uuid, version = new_ids()
        cli.run("dss", "put-file", "--uuid", uuid, "--version", version, "--source-url", url,
                "--creator-uid", "0")
        entries.append({"uuid": uuid, "version": version, "name": f"f{i:02d}.txt",
                        "indexed": False})
    return entries


def test_bundle_commands(dss, admin_cli, user_cli):
    files = _register(user_cli, dss, 3)
    many = [dict(files[0], name=f"copy-{i:02d}.txt") for i in range(25)]
    uuid, version = new_ids()
    put = user_cli.json("dss", "put-bundle", "--uuid", uuid, "--version", version,
                        "--replica", "aws", "--creator-uid", "1",
                        "--files", *[json.dumps(f) for f in many])
    assert put["version"] == version and len(put["manifest"]["files"]) == 25

    got = user_cli.json("dss", "get-bundle", "--uuid", uuid, "--replica", "aws",
                        "--per-page", "10")
    assert [f["name"] for f in got["bundle"]["files"]] == [f["name"] for f in many]
    assert len(re.findall(rf"GET /v1/bundles/{uuid}\S* 206", dss.server.log())) == 2
    first = user_cli.json("dss", "get-bundle", "--uuid", uuid, "--replica", "aws",
                          "--per-page", "10", "--no-paginate")
    assert len(first["bundle"]["files"]) == 10

    patched = user_cli.json("dss", "patch-bundle", "--uuid", uuid, "--replica", "aws",
                            "--version", version,
                            "--add-files", json.dumps(files[1:]),
                            "--remove-files", json.dumps(many[:20]))
    new_version = patched["version"]
    assert new_version > version
    latest = user_cli.json("dss", "get-bundle", "--uuid", uuid, "--replica", "aws")
    assert latest["bundle"]["version"] == new_version
    assert [f["name"] for f in latest["bundle"]["files"]] == \
        [f["name"] for f in many[20:]] + ["f01.txt", "f02.txt"]

    refused = user_cli.run("dss", "delete-bundle", "--uuid", uuid, "--replica", "aws",
                           "--reason", "not mine", check=False)
    assert refused.returncode != 0 and "403" in refused.stderr
    assert user_cli.run("dss", "get-bundle", "--uuid", uuid, "--replica", "aws").returncode == 0

    admin_cli.run("dss", "delete-bundle", "--uuid", uuid, "--replica", "aws",
                  "--reason", "withdrawn")
    gone = user_cli.run("dss", "get-bundle", "--uuid", uuid, "--replica", "aws", check=False)
    assert gone.returncode != 0 and "not_found" in gone.stderr
    listed = user_cli.json("dss", "get-bundles-all", "--replica", "aws", "--prefix", uuid[:8])
    assert all(b["uuid"] != uuid for b in listed["bundles"])


def test_collection_commands(dss, user_cli, admin_cli):
    files = _register(user_cli, dss, 2)
    items = [{"type": "file", "uuid": f["uuid"], "version": f["version"]} for f in files]
    uuid, version = new_ids()
    put = user_cli.json("dss", "put-collection", "--uuid", uuid, "--version", version,
                        "--replica", "aws", "--name", "lung set", "--description", "two files",
                        "--details", json.dumps({"organ": "lung"}),
                        "--contents", json.dumps(items[0]))
    assert put == {"uuid": uuid, "version": version}

    mine = user_cli.json("dss", "get-collections")
    assert {"uuid": uuid, "version": version} in mine["collections"]
    assert {"uuid": uuid, "version": version} not in \
        admin_cli.json("dss", "get-collections")["collections"]

    got = user_cli.json("dss", "get-collection", "--uuid", uuid, "--replica", "aws")
    assert got["name"] == "lung set" and got["contents"] == items[:1]
    other = admin_cli.run("dss", "get-collection", "--uuid", uuid, "--replica", "aws",
                          check=False)
    assert other.returncode != 0 and "403" in other.stderr

    patched = user_cli.json("dss", "patch-collection", "--uuid", uuid, "--replica", "aws",
                            "--version", version, "--add-contents", json.dumps(items[1:]),
                            "--name", "renamed", "--details", json.dumps({"organ": "heart"}))
    latest = user_cli.json("dss", "get-collection", "--uuid", uuid, "--replica", "aws")
    assert patched["version"] > version
    assert latest["name"] == "renamed" and latest["contents"] == items
    assert latest["details"] == {"organ": "heart"}

    user_cli.run("dss", "delete-collection", "--uuid", uuid, "--replica", "aws")
    gone = user_cli.run("dss", "get-collection", "--uuid", uuid, "--replica", "aws",
                        check=False)
    assert gone.returncode != 0 and "not_found" in gone.stderr

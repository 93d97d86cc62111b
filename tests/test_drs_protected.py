"""Protected DRS sources: bearer- and passport-protected ``hcafs serve`` peers, the
importer's ``--drs-credentials``, signed access URLs that expire, and resumed transfers.

Peers are real ``hcafs serve`` repositories; the only fake is the
:class:`fixtures.relay.CountingRelay` in front of them, which counts calls and cuts an
answer where a test needs a broken connection.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from fixtures.drs_repo import DrsRepo, start_repo, wait_finished
from fixtures.dss_server import OTHER, USER, DSSServer
from fixtures.relay import CountingRelay
from test_drs_bulk import read_back, submit, write_credentials

DRS = "/ga4gh/drs/v1"
ISSUER = "https://passports.example.org"
WRONG_BEARER = "not-a-token-of-the-peer-0123456789"


def _key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def passport(key, kid: str = "k1", issuer: str = ISSUER, lifetime: float = 3600) -> str:
    now = int(time.time())
    return jwt.encode({"iss": issuer, "sub": "someone", "iat": now, "exp": now + lifetime,
                       "ga4gh_passport_v1": []}, key, algorithm="RS256",
                      headers={"kid": kid})


def write_jwks(path: Path, key, kid: str = "k1") -> str:
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    path.write_text(json.dumps({"keys": [dict(public, kid=kid, use="sig", alg="RS256")]}))
    return str(path)


def importer_with(tmp_path: Path, name: str, entries: list[dict]) -> DSSServer:
    credentials = write_credentials(tmp_path / f"{name}-credentials.json", entries)
    return DSSServer(str(tmp_path / name), args=["--drs-credentials", credentials,
                                                 "--import-rate-limit", "100000"]).start()


def secrets_absent(secrets: list[str], *roots: Path) -> None:
    """No secret in any file below ``roots`` (stores, logs), but for the files that hold
    them on purpose (the credentials file, the tokens file of the importer's own users,
    which in these tests hold the same test tokens as the peers')."""
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.name.endswith(("credentials.json",
                                                          "tokens.json")):
                data = path.read_bytes()
                for secret in secrets:
                    assert secret.encode() not in data, f"{secret[:6]}… in {path}"


def range_start(passed) -> int:
    """Where a resumed request's ``Range: bytes=N-`` starts."""
    assert passed.range and passed.range.startswith("bytes=") and passed.range.endswith("-")
    return int(passed.range[6:-1])


def run(importer: DSSServer, uris: list[str], token: str = USER) -> list[dict]:
    job = submit(importer, [{"drs_uri": uri, "project": "user/protected"} for uri in uris],
                 token)
    return wait_finished(importer, job, token, 120)[0]["result"]


@pytest.fixture(scope="module")
def bearer_peer(tmp_path_factory):
    repo = start_repo(tmp_path_factory.mktemp("bearer-repo"), ("--drs-auth", "bearer"))
    relay = CountingRelay(repo.server.url)
    yield repo, relay
    relay.close()
    repo.server.stop()


@pytest.fixture(scope="module")
def passport_peer(tmp_path_factory):
    work = tmp_path_factory.mktemp("passport-repo")
    key = _key()
    jwks = write_jwks(work / "jwks.json", key)
    repo = start_repo(work, ("--drs-auth", "passport", "--drs-passport-jwks", jwks,
                             "--drs-passport-issuer", ISSUER))
    relay = CountingRelay(repo.server.url)
    yield repo, relay, key
    relay.close()
    repo.server.stop()


def test_a_bearer_protected_peer_imports_with_its_token_and_names_the_failures(
        tmp_path, bearer_peer):
    repo, relay = bearer_peer
    fqid = repo.put_file(b"protected by a bearer token\n")
    uri = f"drs://{relay.host}/{fqid}"
    answer = requests.options(f"{repo.server.url}{DRS}/objects/{fqid}", timeout=30)
    assert answer.json()["supported_types"] == ["BearerAuth"]
    assert requests.get(f"{repo.server.url}{DRS}/objects/{fqid}", timeout=30
                        ).status_code == 401
    good = importer_with(tmp_path, "good", [
        {"match": relay.host, "bearer": USER, "users": ["user@example.org"]}])
    wrong = importer_with(tmp_path, "wrong", [
        {"match": relay.host.split(":")[0], "bearer": WRONG_BEARER,
         "users": ["user@example.org"]}])
    missing = DSSServer(str(tmp_path / "missing")).start()
    try:
        [done] = run(good, [uri])
        assert read_back(good, done["resource"]) == b"protected by a bearer token\n"
        [refused] = run(wrong, [uri])
        assert refused["error"]["status"] == 403, refused
        assert relay.host in refused["error"]["message"]
        assert "BearerAuth" in refused["error"]["message"]
        assert WRONG_BEARER not in json.dumps(refused)
        [anonymous] = run(missing, [uri])
        assert anonymous["error"]["status"] == 403, anonymous
        assert "(401)" in anonymous["error"]["message"]
        assert "no credentials" in anonymous["error"]["message"]
        assert relay.host in anonymous["error"]["message"]
    finally:
        for server in (good, wrong, missing):
            server.stop()
    secrets_absent([USER, WRONG_BEARER], tmp_path / "good", tmp_path / "wrong",
                   tmp_path / "missing")


def test_a_passport_protected_peer_imports_with_a_valid_passport_only(
        tmp_path, passport_peer):
    repo, relay, key = passport_peer
    fqid = repo.put_file(b"protected by a passport\n")
    uri = f"drs://{relay.host}/{fqid}"
    found = requests.options(f"{repo.server.url}{DRS}/objects/{fqid}", timeout=30).json()
    assert found["supported_types"] == ["PassportAuth"]
    assert found["passport_auth_issuers"] == [ISSUER]
    valid = passport(key)
    expired = passport(key, lifetime=-60)
    foreign = passport(_key())
    good = importer_with(tmp_path, "good", [
        {"match": relay.host, "passports": [valid], "users": ["user@example.org"]}])
    bad = importer_with(tmp_path, "bad", [
        {"match": relay.host, "passports": [expired, foreign],
         "users": ["user@example.org"]}])
    try:
        [done] = run(good, [uri])
        assert read_back(good, done["resource"]) == b"protected by a passport\n"
        assert relay.count("POST", f"{DRS}/objects/{fqid}") + \
            relay.count("POST", f"{DRS}/objects", exact=True) >= 1
        [refused] = run(bad, [uri])
        assert refused["error"]["status"] == 403
        message = refused["error"]["message"]
        assert "PassportAuth" in message and relay.host in message
        assert "no passport was accepted" in message
    finally:
        good.stop()
        bad.stop()
    secrets_absent([valid, expired, foreign], tmp_path / "good", tmp_path / "bad")


def test_an_identity_not_named_in_an_entry_cannot_import_through_it(tmp_path, bearer_peer):
    repo, relay = bearer_peer
    fqid = repo.put_file(b"for other only\n")
    importer = importer_with(tmp_path, "users", [
        {"match": relay.host, "bearer": USER, "users": ["other@example.org"]}])
    try:
        before = len(relay.passed)
        [refused] = run(importer, [f"drs://{relay.host}/{fqid}"])
        assert refused["error"]["status"] == 403
        assert "not for this identity" in refused["error"]["message"]
        assert not any(c.authorized for c in relay.passed[before:])
        result = wait_finished(importer, submit(importer, [
            {"drs_uri": f"drs://{relay.host}/{fqid}", "project": "other/ok"}], OTHER),
            OTHER, 120)[0]["result"]
        assert "resource" in result[0], result
    finally:
        importer.stop()


def test_credentials_files_readable_by_others_or_without_users_are_refused(tmp_path):
    loose = tmp_path / "loose.json"
    loose.write_text(json.dumps({"entries": [{"match": "h", "bearer": "t", "users": ["a"]}]}))
    os.chmod(loose, 0o644)
    shared = write_credentials(tmp_path / "shared.json",
                               [{"match": "h", "bearer": "secret-for-all"}])
    for path, words in ((str(loose), "0600"), (shared, "users")):
        server = DSSServer(str(tmp_path / Path(path).stem), args=["--drs-credentials", path])
        with pytest.raises(RuntimeError) as failed:
            server.start()
        assert words in str(failed.value)
        assert "secret-for-all" not in str(failed.value)


def test_an_access_url_that_expires_mid_transfer_is_resolved_again_and_resumed(tmp_path):
    repo = start_repo(tmp_path / "ttl-repo", ("--drs-auth", "bearer", "--drs-access-ttl", "1"))
    relay = CountingRelay(repo.server.url)
    data = os.urandom(3 * 1024 * 1024 + 17)
    fqid = repo.put_file(data)
    importer = importer_with(tmp_path, "ttl", [
        {"match": relay.host, "bearer": USER, "users": ["user@example.org"]}])
    try:
        relay.cut(f"{DRS}/blobs/", after=1024 * 1024, pause=2.5)  # the URL expires meanwhile
        [done] = run(importer, [f"drs://{relay.host}/{fqid}"])
        assert "resource" in done, done
        assert read_back(importer, done["resource"]) == data
        blobs = [c for c in relay.passed if c.path.startswith(f"{DRS}/blobs/")]
        assert blobs[0].cut and blobs[0].range is None
        assert any(c.status == 403 for c in blobs[1:])  # the old URL had expired
        resumed = [c for c in blobs if c.status == 206]
        assert len(resumed) == 1 and 0 < range_start(resumed[0]) <= blobs[0].sent
        access = relay.count("POST", f"{DRS}/objects/access", exact=True) + \
            relay.count("GET", "/access/")
        assert access == 2  # the first access URL, and one re-resolve
    finally:
        importer.stop()
        relay.close()
        repo.server.stop()


def test_a_cut_connection_resumes_with_a_range_and_fetches_little_twice(tmp_path):
    repo = start_repo(tmp_path / "cut-repo")
    relay = CountingRelay(repo.server.url)
    data = os.urandom(5 * 1024 * 1024 + 3)
    fqid = repo.put_file(data)
    importer = DSSServer(str(tmp_path / "cut")).start()
    try:
        relay.cut("/blobs/", after=2 * 1024 * 1024 + 5)
        [done] = run(importer, [f"drs://{relay.host}/{fqid}"])
        assert "resource" in done, done
        assert read_back(importer, done["resource"]) == data
        blobs = [c for c in relay.passed if c.path.startswith("/blobs/")]
        assert [c.cut for c in blobs] == [True, False]
        assert 0 < range_start(blobs[1]) <= blobs[0].sent and blobs[1].status == 206
        assert sum(c.sent for c in blobs) <= 1.1 * len(data)
    finally:
        importer.stop()
        relay.close()
        repo.server.stop()


@pytest.mark.s3
def test_an_s3_access_method_is_fetched_with_the_entrys_keys_through_the_egress_check(
        tmp_path, seaweed):
    """A peer on a SeaweedFS store offers an s3 method beside https; an importer whose
    credentials entry holds s3 keys reads the bytes from the bucket, not from the peer;
    one whose policy does not open the s3 endpoint is refused before reading."""
    bucket = seaweed.make_bucket("drs-s3-peer")
    staging = tmp_path / "s3-staging"
    staging.mkdir()
    peer = DSSServer(str(tmp_path / "s3-peer"), env=seaweed.env(), args=[
        "--store", f"s3://{bucket}/peer", "--staging-root", str(staging)]).start()
    relay = CountingRelay(peer.url)
    repo = DrsRepo(peer, staging)
    data = os.urandom(256 * 1024 + 9)
    fqid = repo.put_file(data)
    methods = repo.drs(fqid)["access_methods"]
    assert [m["type"] for m in methods] == ["https", "s3"]
    assert methods[1]["access_url"]["url"].startswith(f"s3://{bucket}/peer/blobs/")
    keys = {"endpoint_url": seaweed.endpoint, "access_key_id": seaweed.access_key,
            "secret_access_key": seaweed.secret_key}
    entry = {"match": relay.host, "s3": keys, "users": ["user@example.org"]}
    importer = importer_with(tmp_path, "s3", [entry])
    closed = DSSServer(str(tmp_path / "s3-closed"), loopback_peers=False, args=[
        "--drs-credentials", write_credentials(tmp_path / "closed-credentials.json",
                                               [entry]),
        "--drs-allow-host", relay.host]).start()
    try:
        [done] = run(importer, [f"drs://{relay.host}/{fqid}"])
        assert "resource" in done, done
        assert read_back(importer, done["resource"]) == data
        assert relay.count("GET", "/blobs/") == 0  # the bytes came from the bucket
        [refused] = run(closed, [f"drs://{relay.host}/{fqid}"])
        assert refused["error"]["code"] == 5107, refused
        assert seaweed.secret_key not in json.dumps(refused)
    finally:
        importer.stop()
        closed.stop()
        relay.close()
        peer.stop()
    secrets_absent([seaweed.secret_key], tmp_path / "s3", tmp_path / "s3-closed")


def test_a_drs_prefix_entry_matches_at_a_name_boundary_only():
    """An entry for drs://PREFIX is for that prefix's URIs (compact or host form), not for
    a longer prefix or another host whose name merely starts the same."""
    from hcafs.server.credentials import Credentials, Entry

    entry = Entry(number=1, match="drs://dg.4503", users=frozenset({"u@example.org"}),
                  bearer="secret-of-dg4503")
    found = Credentials([entry]).find
    for uri in ("drs://dg.4503:abc", "drs://dg.4503/abc", "drs://DG.4503:x"):
        assert found("dg.4503", None, uri, "u@example.org") is entry, uri
    for uri in ("drs://dg.45039:abc", "drs://dg.4503.attacker.example/x",
                "drs://dg.4503x/y"):
        assert found("dg.4503.attacker.example", None, uri, "u@example.org") is None, uri


def test_a_signed_url_with_an_absurd_expiry_is_refused_not_a_crash():
    """An ``expires`` of thousands of digits is a 403 like any bad signature (int() of it
    raised past Python's digit limit: a 500)."""
    from hcafs.errors import Problem
    from hcafs.server.passports import UrlSigner

    for expires in ("9" * 5000, "\u00b2", "\u0661\u0662"):  # '²' and Arabic digits: isdigit()
        with pytest.raises(Problem) as refused:
            UrlSigner(60).check("a" * 64, expires, "ab")
        assert refused.value.status == 403, expires


def test_signed_urls_of_every_worker_end_when_the_tokens_file_changes(tmp_path):
    """The access URLs' key comes from the tokens file as it is now: URLs signed by one
    worker are good at the others, and a token revoked in the file voids every URL handed
    out before, in every worker, without a restart."""
    repo = start_repo(tmp_path / "repo", ("--drs-auth", "bearer", "--workers", "2"))
    try:
        fqid = repo.put_file(b"protected\n")
        url = f"{repo.server.url}/ga4gh/drs/v1/objects/{fqid}/access/https"
        signed = requests.get(url, headers={"Authorization": f"Bearer {USER}"},
                              timeout=30).json()["url"]
        for _ in range(8):  # new connections, so both workers answer some
            assert requests.get(signed, timeout=30).content == b"protected\n"
        tokens = json.loads(Path(repo.server.tokens_file).read_text())
        del tokens[OTHER]  # revoke a token
        Path(repo.server.tokens_file).write_text(json.dumps(tokens))
        for _ in range(8):
            answer = requests.get(signed, timeout=30)
            assert answer.status_code == 403, answer.text
        fresh = requests.get(url, headers={"Authorization": f"Bearer {USER}"},
                             timeout=30).json()["url"]
        for _ in range(8):
            assert requests.get(fresh, timeout=30).content == b"protected\n"
    finally:
        repo.server.stop()

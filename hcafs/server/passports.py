"""Protecting this server's own DRS objects (``hcafs serve --drs-auth bearer|passport``).

* ``bearer``: every DRS object call needs ``Authorization: Bearer TOKEN`` with a token of
  the server's tokens file (the identities of the DSS and the import API).
* ``passport``: every DRS object call is a POST whose body holds ``passports``: GA4GH
  passport JWTs.  One passport that verifies is enough: signed by a key of the JWKS file
  (``--drs-passport-jwks``), ``iss`` equal to ``--drs-passport-issuer``, with a valid
  ``exp`` (and ``nbf``/``iat`` if present).  The visas inside are not examined.
* Protected access URLs are signed (HMAC-SHA256 over the blob key and the expiry, with a
  key derived from the tokens file as it is at each use, :meth:`~.auth.Tokens.derive`) and
  expire ``--drs-access-ttl`` seconds after they were handed out; an expired or altered
  one gives 403.  Every worker and every server that reads the same tokens file accepts
  the URLs any of them signed; a change to the tokens file (a token revoked) invalidates
  the URLs handed out before it, in every process at once, which only costs a re-resolve.

Neither a token nor a passport is logged or repeated in an error.

Threading: everything here is read-only after construction.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from urllib.parse import urlencode

import jwt

from ..errors import ConfigError, Problem
from .auth import Tokens

AUTH_MODES = ("none", "bearer", "passport")
ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA")
MAX_PASSPORTS = 20
SUPPORTED = {"none": ["None"], "bearer": ["BearerAuth"], "passport": ["PassportAuth"]}


def _denied(status: int, message: str) -> Problem:
    return Problem(status, "drs_error", message)


class PassportCheck:
    """Verifies passport JWTs against one issuer and the keys of a JWKS file."""

    def __init__(self, jwks_file: str, issuer: str):
        try:
            with open(jwks_file) as handle:
                self.keys = jwt.PyJWKSet.from_dict(json.load(handle)).keys
        except (OSError, ValueError, jwt.PyJWKSetError) as exc:
            raise ConfigError(f"--drs-passport-jwks {jwks_file}: not a usable JWKS "
                              f"({type(exc).__name__})") from exc
        if not self.keys:
            raise ConfigError(f"--drs-passport-jwks {jwks_file} holds no key")
        self.issuer = issuer

    def valid(self, passport: object) -> bool:
        if not isinstance(passport, str) or len(passport) > 64 * 1024:
            return False
        try:
            kid = jwt.get_unverified_header(passport).get("kid")
        except jwt.PyJWTError:
            return False
        for key in self.keys:
            if kid is not None and key.key_id not in (None, kid):
                continue
            try:
                jwt.decode(passport, key.key, algorithms=list(ALGORITHMS),
                           issuer=self.issuer, options={"require": ["exp", "iss"],
                                                        "verify_aud": False})
                return True
            except jwt.PyJWTError:
                continue
        return False


URL_KEY_LABEL = b"hcafs drs access urls"  # what the access URLs' key is derived for


class UrlSigner:
    """Signed, expiring blob URLs."""

    def __init__(self, ttl: float, key: Callable[[], bytes] | None = None):
        self.ttl = ttl
        fixed = secrets.token_bytes(32)
        self._key = key or (lambda: fixed)  # asked at each use: the key may change

    def _mac(self, blob: str, expires: int) -> str:
        return hmac.new(self._key(), f"{blob}\n{expires}".encode(),
                        hashlib.sha256).hexdigest()

    def query(self, blob: str) -> str:
        expires = int(time.time() + self.ttl + 0.999)
        return urlencode({"expires": expires, "signature": self._mac(blob, expires)})

    def check(self, blob: str, expires: str | None, signature: str | None) -> None:
        if not expires or not (expires.isascii() and expires.isdigit()) or \
                len(expires) > 20 or not signature or \
                not hmac.compare_digest(self._mac(blob, int(expires)), signature):
            raise _denied(403, "the access URL is not valid")
        if int(expires) < time.time():
            raise _denied(403, "the access URL has expired")


class DrsGuard:
    """Who may read this server's DRS objects (``mode`` one of :data:`AUTH_MODES`)."""

    def __init__(self, mode: str = "none", tokens: Tokens | None = None,
                 passports: PassportCheck | None = None, ttl: float = 900.0):
        if mode not in AUTH_MODES:
            raise ConfigError(f"--drs-auth takes bearer or passport, not {mode!r}")
        if mode == "passport" and passports is None:
            raise ConfigError("--drs-auth passport needs --drs-passport-jwks and "
                              "--drs-passport-issuer")
        if mode == "bearer" and tokens is None:
            raise ConfigError("--drs-auth bearer needs the tokens file")
        self.mode = mode
        self.tokens = tokens
        self.passports = passports
        # Signed with a key derived from the tokens file as it is at each use, so every
        # worker and server on the same file agrees, and a new file voids earlier URLs.
        key = (lambda: tokens.derive(URL_KEY_LABEL)) if tokens is not None else None
        self.signer = UrlSigner(ttl, key) if mode != "none" else None

    @property
    def protected(self) -> bool:
        return self.mode != "none"

    def authorizations(self, object_id: str) -> dict:
        found = {"drs_object_id": object_id, "supported_types": SUPPORTED[self.mode]}
        if self.mode == "passport":
            found["passport_auth_issuers"] = [self.passports.issuer]
        return found

    def check(self, authorization: str | None, body: dict | None) -> None:
        """Raise a 401/403 Problem unless the request may read DRS objects."""
        if self.mode == "none":
            return
        if self.mode == "bearer":
            if not authorization:
                raise _denied(401, "this DRS server needs a bearer token")
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise _denied(401, "this DRS server needs a bearer token")
            try:
                self.tokens.lookup(token.strip())
            except Problem:
                raise _denied(403, "the bearer token is not accepted") from None
            return
        passports = (body or {}).get("passports")
        if not isinstance(passports, list) or not passports:
            raise _denied(401, "this DRS server needs a GA4GH passport (POST with "
                          "passports)")
        if not any(self.passports.valid(p) for p in passports[:MAX_PASSPORTS]):
            raise _denied(403, "no passport was accepted")

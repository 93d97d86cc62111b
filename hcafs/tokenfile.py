"""The tokens file that ``hcafs serve`` reads and the embedded mount borrows its token from.

It is JSON, ``{token: {"email": …, "groups": […], "admin": bool}}``, mode 0600.  The server
owns writing it (:mod:`hcafs.server.auth`); the mount only needs the first token, so the
format's reader lives here in the core, where both sides may import it.
"""

from __future__ import annotations

import json


def first_token(path: str) -> str:
    """The first token of a tokens file (what the embedded mount uses)."""
    with open(path) as handle:
        tokens = json.load(handle)
    return next(iter(tokens))

"""How far the bundle listing in a cache DB is, read without the catalog (for ``hcafs
status``, which must start fast and needs no server client)."""

from __future__ import annotations

from .cachedb import CacheDB


def listing_progress(db: CacheDB) -> dict:
    """How far the bundle listing in ``db`` is, for ``hcafs status``: ``complete``, ``in
    progress`` (a first listing still running, or stopped and resumed at the next mount) or
    ``none``, and the versions listed so far."""
    state = db.get_meta("listing_state")
    if state is None:
        state = "complete" if db.get_meta("bundles_refreshed_at") else "none"
    count = db.db().execute("select count(*) from bundles").fetchone()[0]
    return {"state": "in progress" if state == "listing" else state, "versions": count}

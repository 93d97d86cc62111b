"""Where imported files are named: projects, folders and the names in them.

A project ``owner/slug`` has a root folder, which records the identity whose import made it
(``owner``) and a ``members`` list of emails: only they may import into it
(:meth:`Folders.may_write`).  A folder holds names, each bound to an
imported file (its FQID) or to a sub-folder.  Folder ids are 24 hex digits derived from the project
and the folder's path, so the same folder always gets the same id and creating it twice is
harmless.  Everything lives in the server's store::

    import-folders/{folder_id}                 a folder: id, name, project, parent, path
    import-names/{folder_id}/{name_hash}       a name in a folder: a file or a folder

A name binding is written create-once (:meth:`~.store.Store.create`, atomic on both
backends), so SKIP and RENAME cannot overwrite one another's names, even when several
server processes share one store.

Threading: any thread may call any method; all state is in the store.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable

from ..errors import HcafsError
from .dss import dumps
from .store import Staged, Store

MAX_NAME = 255
MORE_INFO = "docs/drs.md#per-item-errors"
PROJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*\Z")
FOLDER_RE = re.compile(r"^[0-9a-f]{24}\Z")


# The mount's own namespace: each of its projects is named by a random key, so none is
# anyone's to reserve (docs/drs.md, the mount's projects).
OPEN_OWNERS = frozenset({"hcafs"})


def owner_part(project: str) -> str:
    """A project's owner part, compared without case (``Alice/x`` is alice's too)."""
    return project.split("/", 1)[0].lower()


class FolderError(HcafsError):
    """A name that cannot be used: an SBG error ``body`` for the item's result."""

    def __init__(self, status: int, code: int, message: str, more_info: str = MORE_INFO):
        self.body = {"status": status, "code": code, "message": message,
                     "more_info": more_info}
        super().__init__(message)


def folder_id(project: str, path: str) -> str:
    return hashlib.sha256(f"{project}\n{path}".encode()).hexdigest()[:24]


def name_error(name: object) -> str | None:
    """Why ``name`` cannot name a file in a folder (``a/b`` makes folder ``a``), or None."""
    if not isinstance(name, str) or not name:
        return "a name must be a non-empty string"
    for part in name.split("/"):
        if part in ("", ".", ".."):
            return f"{name!r}: empty, '.' and '..' are not names"
        try:
            encoded = part.encode()
        except UnicodeEncodeError:
            return f"{name!r}: a name must be text (it holds a lone surrogate)"
        if len(encoded) > MAX_NAME:
            return f"{name!r}: a name is at most {MAX_NAME} bytes"
        if any(ord(c) < 32 or ord(c) == 127 for c in part):
            return f"{name!r}: control characters are not allowed"
    return None


class Folders:
    """Destination folders and the names in them, kept in the store."""

    def __init__(self, store: Store):
        self.store = store

    def get(self, fid: str) -> dict | None:
        raw = self.store.read(f"import-folders/{fid}") if FOLDER_RE.match(fid) else None
        return json.loads(raw) if raw is not None else None

    def root(self, project: str, create: bool = True, owner: str | None = None
             ) -> dict | None:
        """A project's root folder; made (owned by ``owner``, an email) if missing."""
        fid = folder_id(project, "")
        found = self.get(fid)
        if found is None and create:
            found = {"id": fid, "type": "folder", "name": project.split("/")[1],
                     "project": project, "parent": None, "path": "", "owner": owner,
                     "members": []}
            if not self.store.create(f"import-folders/{fid}", dumps(found)):
                found = self.get(fid) or found
        return found

    def may_write(self, email: str, project: str) -> bool:
        """Whether ``email`` may import into ``project`` (add or replace names): its root
        names ``email`` as its ``owner`` (whose import made it) or among its ``members``.
        A root made before roots had owners belongs to the email whose user part is the
        project's owner part."""
        root = self.root(project, create=False) or {}
        if root.get("owner") is None:
            return project.split("/", 1)[0].lower() == email.rpartition("@")[0].lower()
        return email == root["owner"] or email in (root.get("members") or [])

    @staticmethod
    def name_key(fid: str, name: str) -> str:
        """The store key of ``name`` in the folder ``fid``."""
        return f"import-names/{fid}/{hashlib.sha256(name.encode()).hexdigest()[:32]}"

    def lookup(self, fid: str, name: str) -> dict | None:
        raw = self.store.read(self.name_key(fid, name))
        return json.loads(raw) if raw is not None else None

    def descend(self, folder: dict, parts: list[str]) -> dict:
        """The folder at ``parts`` below ``folder``, made (with its names) where missing."""
        for part in parts:
            path = f"{folder['path']}/{part}".lstrip("/")
            sub = {"id": folder_id(folder["project"], path), "type": "folder", "name": part,
                   "project": folder["project"], "parent": folder["id"], "path": path}
            self.store.create(f"import-folders/{sub['id']}", dumps(sub))
            entry = {"name": part, "type": "folder", "id": sub["id"]}
            if not self.store.create(self.name_key(folder["id"], part), dumps(entry)):
                taken = self.lookup(folder["id"], part) or {}
                if taken.get("type") != "folder":
                    raise FolderError(409, 5022, f"{path!r} is a file, not a folder")
            folder = sub
        return folder

    def bind(self, fid: str, name: str, file_id: str, resolution: str,
             defer: set[str] | None = None) -> str:
        """Name ``file_id`` in the folder; returns the name used (RENAME: ``_N_name``).
        ``defer``: see :meth:`.store.Store.write`."""
        if resolution == "OVERWRITE":
            taken = self.lookup(fid, name)
            if taken and taken["type"] == "folder":
                raise FolderError(409, 5003, f"{name!r} is a folder")
            self.store.write(self.name_key(fid, name), self.entry(name, file_id), defer)
            return name
        for n in range(0, 10_000 if resolution == "RENAME" else 1):
            candidate = name if n == 0 else f"_{n}_{name}"
            if len(candidate.encode()) > MAX_NAME:
                break
            if self.store.create(self.name_key(fid, candidate), self.entry(candidate, file_id),
                                 defer):
                return candidate
            taken = self.lookup(fid, candidate) or {}
            if taken.get("id") == file_id:
                return candidate
        raise FolderError(409, 5003, f"Requested file already exists: {name!r}",
                          files_href(self.lookup(fid, name)))

    @staticmethod
    def entry(name: str, file_id: str) -> bytes:
        """The document that binds ``name`` to a file."""
        return dumps({"name": name, "type": "file", "id": file_id})

    def bind_many(self, names: list[tuple[str, str, str]], resolution: str,
                  defer: set[str] | None = None,
                  run: Callable[[list[tuple]], list] | None = None,
                  staged: list[Staged] | None = None) -> list[str | FolderError]:
        """:meth:`bind` of each ``(folder id, name, file id)``, the names all distinct and
        the resolution one that renames nothing (OVERWRITE, SKIP), with the writes as one
        group (:meth:`.store.Store.write_many`; ``run`` as there).  For each, the name
        bound, or the :class:`FolderError` that refused it.  ``staged``: each name's
        :meth:`entry`, staged ahead (:meth:`.store.Store.stage`); one not placed is the
        caller's to discard."""
        if resolution == "RENAME":
            raise ValueError("RENAME binds one name at a time, in order")
        outcomes: list[str | FolderError] = [name for _, name, _ in names]
        lookups = [(self.lookup, fid, name) for fid, name, _ in names]
        taken_now = ((run(lookups) if run else [call(*args) for call, *args in lookups])
                     if resolution == "OVERWRITE" else [None] * len(names))
        group = []  # (index, key, entry)
        for n, (fid, name, file_id) in enumerate(names):
            if len(name.encode()) > MAX_NAME:  # refused as bind refuses it
                try:
                    outcomes[n] = self.bind(fid, name, file_id, resolution, defer)
                except FolderError as exc:
                    outcomes[n] = exc
                continue
            if resolution == "OVERWRITE":
                taken = taken_now[n]
                if taken and taken["type"] == "folder":
                    outcomes[n] = FolderError(409, 5003, f"{name!r} is a folder")
                    continue
            group.append((n, self.name_key(fid, name),
                          staged[n] if staged is not None else self.entry(name, file_id)))
        items = [(key, entry) for _, key, entry in group]
        if resolution == "OVERWRITE":
            self.store.write_many(items, defer, run=run)
            return outcomes
        for (n, _, _), created in zip(group, self.store.create_many(items, defer, run=run),
                                      strict=True):
            fid, name, file_id = names[n]
            if not created and (self.lookup(fid, name) or {}).get("id") != file_id:
                outcomes[n] = FolderError(409, 5003, f"Requested file already exists: "
                                          f"{name!r}", files_href(self.lookup(fid, name)))
        return outcomes

    def entries(self, fid: str) -> list[dict]:
        found = []
        for key in self.store.list(f"import-names/{fid}/"):
            raw = self.store.read(key)
            if raw is not None:
                found.append(json.loads(raw))
        return sorted(found, key=lambda e: e["name"])


def files_href(entry: dict | None) -> str:
    """Where the files API shows a bound name's file or folder (relative to the server)."""
    return f"/v2/files/{entry['id']}" if entry else MORE_INFO

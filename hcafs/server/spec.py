"""The API description served at ``/v1/swagger.json``.

It is OpenAPI 3 with an absolute server URL (the one the caller reached), because that is what
the ``hca`` CLI needs to talk plain http on loopback: under Swagger 2.0 it always speaks
https.  Only operations this server implements are listed, and ``security`` is set on exactly
the restricted ones, which is how the CLI decides to send the bearer token.  No path-level
keys other than methods appear, and every enum is at the parameter's top level, as the CLI's
spec reader expects.

Optional list properties of a body (``add_files``, ``remove_contents`` …) are declared as
JSON values of ``type: object``: the ``hca`` 7.0.1 CLI turns an *optional* ``array`` into an
argument it cannot parse (it calls ``typing.List`` on the text), while it ``json.loads`` an
optional ``object`` argument, so ``--add-files '[{...}]'`` works.  The server checks that the
value is a list.
"""

from __future__ import annotations

from typing import Any

REPLICA = {"name": "replica", "in": "query", "required": True, "enum": ["aws", "gcp"],
           "schema": {"type": "string", "enum": ["aws", "gcp"]},
           "description": "The replica: aws or gcp."}
UUID = {"name": "uuid", "in": "path", "required": True, "schema": {"type": "string"},
        "description": "A UUID."}
SECURED = [{"dcpAuth": []}]


def _query(name: str, description: str, required: bool = False, kind: str = "string"
           ) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": {"type": kind},
            "description": description}


VERSION_OPT = _query("version", "A DSS_VERSION; the latest when omitted.")
VERSION_REQ = _query("version", "A DSS_VERSION (YYYY-MM-DDTHHMMSS.ffffffZ).", required=True)
PER_PAGE = _query("per_page", "Items per page (10-500).", kind="integer")
START_AT = _query("start_at", "Offset of the first item of the page.", kind="integer")


def _body(properties: dict[str, dict], required: list[str]) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _op(summary: str, parameters: list[dict], responses: list[str],
        body: dict | None = None, secured: bool = False) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "description": summary,
        "parameters": parameters,
        "responses": {code: {"description": code} for code in responses},
    }
    if body is not None:
        operation["requestBody"] = body
    if secured:
        operation["security"] = SECURED
    return operation


STRING = {"type": "string"}
INTEGER = {"type": "integer"}
OBJECT = {"type": "object"}
OBJECTS = {"type": "array", "items": {"type": "object"}}
OPTIONAL_OBJECTS = {"type": "object", "description": "A JSON array of objects."}


def paths() -> dict[str, dict]:
    return {
        "/files/{uuid}": {
            "head": _op("Retrieve a file's metadata.", [UUID, REPLICA, VERSION_OPT],
                        ["200", "404", "422"]),
            "get": _op("Retrieve a file (a redirect to its bytes).",
                       [UUID, REPLICA, VERSION_OPT, _query("token", "Retry token."),
                        _query("directurl", "Ignored.", kind="boolean"),
                        _query("content_disposition", "Content-Disposition of the answer.")],
                       ["301", "302", "404", "422"]),
            "put": _op("Create a new version of a file from a staged source.",
                       [UUID, VERSION_REQ],
                       ["200", "201", "202", "400", "409", "422"],
                       _body({"source_url": STRING, "creator_uid": INTEGER},
                             ["source_url", "creator_uid"]), secured=True),
        },
        "/bundles/all": {
            "get": _op("List every live bundle version.",
                       [REPLICA, _query("prefix", "UUID prefix."), PER_PAGE,
                        _query("search_after", "Paging state."), _query("token", "Paging state.")],
                       ["200", "206", "400"]),
        },
        "/bundles/{uuid}": {
            "get": _op("Retrieve a bundle's manifest.",
                       [UUID, REPLICA, VERSION_OPT,
                        _query("directurls", "Unsupported.", kind="boolean"),
                        _query("presignedurls", "Unsupported.", kind="boolean"),
                        _query("token", "Paging state."), PER_PAGE, START_AT],
                       ["200", "206", "404"]),
            "put": _op("Create a bundle version.", [UUID, VERSION_REQ, REPLICA],
                       ["200", "201", "400", "409"],
                       _body({"files": OBJECTS, "creator_uid": INTEGER},
                             ["files", "creator_uid"]), secured=True),
            "patch": _op("Derive a new bundle version by adding or removing files.",
                         [UUID, REPLICA, VERSION_REQ], ["200", "400", "404"],
                         _body({"add_files": OPTIONAL_OBJECTS,
                                "remove_files": OPTIONAL_OBJECTS}, []),
                         secured=True),
            "delete": _op("Delete a bundle (admin only).", [UUID, REPLICA, VERSION_OPT],
                          ["200", "403", "404", "409"],
                          _body({"reason": STRING}, ["reason"]), secured=True),
        },
        "/events": {
            "get": _op("Replay bundle events (creates and deletes) in the order recorded.",
                       [REPLICA, _query("from_date", "A DSS_VERSION: replay from here."),
                        _query("to_date", "A DSS_VERSION: replay up to here."),
                        _query("per_page", "Journals per page (1-10).", kind="integer"),
                        _query("since", "An event cursor: replay what came after it."),
                        _query("token", "Paging state.")],
                       ["200", "206", "400"]),
        },
        "/events/{uuid}": {
            "get": _op("Retrieve the metadata document of a bundle version.",
                       [UUID, REPLICA, VERSION_REQ], ["200", "404"]),
        },
        "/collections": {
            "get": _op("List the caller's collections.", [PER_PAGE, START_AT],
                       ["200", "206"], secured=True),
            "put": _op("Create a collection.",
                       [REPLICA, _query("uuid", "The collection's UUID.", required=True),
                        VERSION_REQ], ["201", "400", "422"],
                       _body({"name": STRING, "description": STRING, "details": OBJECT,
                              "contents": OBJECTS},
                             ["name", "description", "details", "contents"]), secured=True),
        },
        "/collections/{uuid}": {
            "get": _op("Retrieve a collection.", [UUID, REPLICA, VERSION_OPT],
                       ["200", "403", "404"], secured=True),
            "patch": _op("Update a collection (a new version).", [UUID, REPLICA, VERSION_REQ],
                         ["200", "403", "404", "422"],
                         _body({"add_contents": OPTIONAL_OBJECTS,
                                "remove_contents": OPTIONAL_OBJECTS,
                                "name": STRING, "description": STRING, "details": OBJECT}, []),
                         secured=True),
            "delete": _op("Delete a collection.", [UUID, REPLICA], ["200", "403", "404"],
                          secured=True),
        },
    }


def document(base_url: str) -> dict[str, Any]:
    """The OpenAPI 3 document for a server reached at ``base_url`` (no trailing slash)."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "hcafs DSS",
            "version": "1.0.0",
            "description": "A DSS API v1 compatible data store served by hcafs. "
                           "Restricted operations take `Authorization: Bearer TOKEN`.",
        },
        "servers": [{"url": f"{base_url}/v1"}],
        "paths": paths(),
        "components": {"securitySchemes": {"dcpAuth": {"type": "http", "scheme": "bearer"}}},
    }

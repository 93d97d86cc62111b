"""JSON documents from outside (request bodies, answers of remote DRS servers), read once.

:func:`load` parses and checks a document, and raises :class:`BadDocument` with the reason
when it is not one the server can store, index and serve back:

* not JSON, or ``NaN``/``Infinity`` (which JSON does not have);
* nested deeper than :data:`MAX_NESTING` objects and arrays (Python's parser would run out
  of stack on a deep enough one, and no document of the DSS or DRS nests past a dozen);
* text holding a lone surrogate escape (``\\ud800`` to ``\\udfff`` on its own), which is
  no character and cannot be written as UTF-8.
"""

from __future__ import annotations

import json

MAX_NESTING = 64  # objects and arrays one inside another


class BadDocument(ValueError):
    """Why a document was refused, in words for the one who sent it."""


def load(raw: bytes | str) -> object:
    try:
        document = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise BadDocument(f"it nests more than {MAX_NESTING} levels deep") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadDocument("it is not valid JSON") from exc
    check(document)
    return document


def check(document: object) -> None:
    """:class:`BadDocument` if ``document`` nests too deeply or holds a lone surrogate."""
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            _check_text(value)
        elif isinstance(value, (dict, list)):
            if depth > MAX_NESTING:
                raise BadDocument(f"it nests more than {MAX_NESTING} levels deep")
            if isinstance(value, dict):
                for key, inner in value.items():
                    _check_text(key)
                    stack.append((inner, depth + 1))
            else:
                stack.extend((inner, depth + 1) for inner in value)


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON value")


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadDocument("it holds a lone surrogate escape (\\ud800 to \\udfff on its own), "
                          "which is not text") from None

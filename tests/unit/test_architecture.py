"""The import contract: the package layout is the architecture, and this test keeps it so.

Every ``import`` in ``hcafs/`` is read with :mod:`ast`, those inside functions included, and
the rules of ``docs/architecture.md`` are checked on the graph:

* no import cycle between modules;
* layers import downwards only: core ← remote ← cache ← model ← sync ← mount ← cli;
* the model imports no I/O library (requests, boto3, sqlite, FUSE, errno);
* HTTP (requests, urllib3, boto3/botocore) on the client side only in ``remote/``; on the
  server side boto3 only through ``remote.s3`` and requests/urllib3 only in its one
  outbound-HTTP module;
* SQL (sqlite3/sqlite_utils, and SQL statement strings) only in ``cache/``;
* ``mount/`` imported by nothing but ``cli.py``;
* the client side never imports ``server/``, and the server only ``remote.s3`` and the core.

Each rule has a test that plants an offending import in a temporary copy of the package and
shows the check catches it, and :func:`test_the_real_tree_passes` runs them all on the tree.
"""

from __future__ import annotations

import ast
import functools
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

import hcafs

PACKAGE = Path(hcafs.__file__).parent

# The server's one module that may speak HTTP to the outside world.  Both names are allowed
# while the DRS fetches move from drs.py into egress.py.
SERVER_EGRESS = frozenset({"hcafs.server.egress"})

CORE = frozenset({"hcafs", "hcafs.errors", "hcafs.config", "hcafs.versions",
                  "hcafs.checksums", "hcafs.directio", "hcafs.tokenfile", "hcafs.retry",
                  "hcafs.readyfile", "hcafs.processes"})
ENTRY = frozenset({"hcafs.cli", "hcafs.__main__"})  # the command line: serve and mount
# Higher layers may import lower ones, never the other way round.
LAYERS = {"core": 0, "remote": 1, "cache": 2, "model": 3, "sync": 4, "mount": 5, "cli": 6}
HTTP = frozenset({"requests", "urllib3", "boto3", "botocore"})
SQL_LIBRARIES = frozenset({"sqlite3", "sqlite_utils"})
MODEL_FORBIDDEN = HTTP | SQL_LIBRARIES | {"fuse", "mfusepy", "errno"}
SQL_STATEMENT = re.compile(
    r"^\s*(select\s.+\sfrom\s|insert\s+(or\s+\w+\s+)?into\s|delete\s+from\s|"
    r"update\s+\w+\s+set\s|create\s+(unique\s+)?(table|index)\s|pragma\s|"
    r"begin\s+(immediate|exclusive)|savepoint\s|release\s+savepoint)",
    re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class Edge:
    source: str  # importing module, dotted
    target: str  # imported module (dotted; for third-party libraries the top-level name)
    line: int

    def __str__(self) -> str:
        return f"{self.source}:{self.line} imports {self.target}"


@dataclass
class Package:
    modules: dict[str, ast.Module]
    edges: list[Edge]


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def _parse(text: str) -> ast.Module:  # the copies share most files: parse each text once
    return ast.parse(text)


@functools.cache
def _imports(text: str) -> tuple[tuple, ...]:
    """Every import statement of a module's text, anywhere in it (inside functions too), as
    ``("import", names, line)`` or ``("from", level, module, names, line)``; walked once
    per text, since the temporary copies share all but one file."""
    found: list[tuple] = []
    for node in ast.walk(_parse(text)):
        if isinstance(node, ast.Import):
            found.append(("import", tuple(a.name for a in node.names), node.lineno))
        elif isinstance(node, ast.ImportFrom):
            found.append(("from", node.level, node.module,
                          tuple(a.name for a in node.names), node.lineno))
    return tuple(found)


def load(root: Path) -> Package:
    """Parse every module under ``root`` (a copy of ``hcafs/``) and list its imports."""
    texts = {module_name(root, path): path.read_text() for path in sorted(root.rglob("*.py"))}
    modules = {name: _parse(text) for name, text in texts.items()}
    packages = {module_name(root, path.parent) for path in root.rglob("__init__.py")}
    edges = []
    for name, text in texts.items():
        base = name if name in packages else name.rpartition(".")[0]
        for found in _imports(text):
            if found[0] == "import":
                _, names, line = found
                edges += [Edge(name, alias if alias.startswith("hcafs")
                               else alias.split(".")[0], line) for alias in names]
                continue
            _, level, module, names, line = found
            if level:
                anchor = base.split(".")[: len(base.split(".")) - level + 1]
                target = ".".join(anchor + ([module] if module else []))
            else:
                target = module or ""
            if not target.startswith("hcafs"):
                edges.append(Edge(name, target.split(".")[0], line))
                continue
            for alias in names:  # `from . import spec` imports the module spec
                child = f"{target}.{alias}"
                edges.append(Edge(name, child if child in modules else target, line))
    return Package(modules, edges)


def layer(module: str) -> str | None:
    """The client-side layer of a module; None for the server (it stands beside them)."""
    if module in CORE:
        return "core"
    if module in ENTRY:
        return "cli"
    part = module.split(".")[1]
    return None if part == "server" else part


def is_server(module: str) -> bool:
    return module.startswith("hcafs.server")


def internal(edges: list[Edge]) -> list[Edge]:
    return [e for e in edges if e.target.startswith("hcafs")]


# ---------------------------------------------------------------- the checks


def cycles(package: Package) -> list[str]:
    """Every strongly connected set of two or more modules (Tarjan), as a message."""
    graph: dict[str, set[str]] = {name: set() for name in package.modules}
    for edge in internal(package.edges):
        if edge.target in graph and edge.target != edge.source:
            graph[edge.source].add(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[str] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for child in graph[node]:
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append("import cycle: " + " ↔ ".join(sorted(group)))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return found


def upward_imports(package: Package) -> list[str]:
    out = []
    for edge in internal(package.edges):
        source, target = layer(edge.source), layer(edge.target)
        if source is None or target is None or source == target:
            continue
        if LAYERS[target] > LAYERS[source]:
            out.append(f"{edge}: {source} may not import {target} (a higher layer)")
    return out


def model_io(package: Package) -> list[str]:
    return [f"{e}: the model does no I/O of its own" for e in package.edges
            if e.source.startswith("hcafs.model") and e.target in MODEL_FORBIDDEN]


def http_outside_remote(package: Package) -> list[str]:
    out = []
    for edge in package.edges:
        if edge.target not in HTTP:
            continue
        if is_server(edge.source):
            if edge.target in ("requests", "urllib3") and edge.source in SERVER_EGRESS:
                continue
            out.append(f"{edge}: the server reaches S3 through remote.s3 and the outside "
                       f"world through {sorted(SERVER_EGRESS)} only")
        elif not edge.source.startswith("hcafs.remote"):
            out.append(f"{edge}: HTTP belongs in hcafs.remote")
    return out


def _docstrings(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and \
                    isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def sql_outside_cache(package: Package) -> list[str]:
    out = [f"{e}: SQL belongs in hcafs.cache" for e in package.edges
           if e.target in SQL_LIBRARIES and not e.source.startswith("hcafs.cache")]
    for name, tree in package.modules.items():
        if name.startswith("hcafs.cache"):
            continue
        out += [f"{name}:{line} holds SQL {text[:40]!r}: SQL belongs in hcafs.cache"
                for line, text in _sql_strings(tree)]
    return out


@functools.cache
def _sql_strings(tree: ast.Module) -> tuple[tuple[int, str], ...]:
    """The string constants of a module (docstrings aside) that read as SQL statements;
    found once per parsed text."""
    skip = _docstrings(tree)
    return tuple((node.lineno, node.value) for node in ast.walk(tree)
                 if isinstance(node, ast.Constant) and isinstance(node.value, str)
                 and id(node) not in skip and SQL_STATEMENT.match(node.value))


def mount_importers(package: Package) -> list[str]:
    return [f"{e}: only hcafs.cli may import hcafs.mount" for e in internal(package.edges)
            if e.target.startswith("hcafs.mount") and not e.source.startswith("hcafs.mount")
            and e.source not in ENTRY]


SERVER_MAY_USE = CORE | {"hcafs.remote.s3"}


def server_edges(package: Package) -> list[str]:
    """The client side never imports the server (cli.py starts it: it is the entry point of
    both); the server uses only remote.s3 and the core."""
    out = []
    for edge in internal(package.edges):
        if is_server(edge.target) and not is_server(edge.source) and \
                edge.source not in ENTRY:
            out.append(f"{edge}: the client side does not import the server")
        if is_server(edge.source) and not is_server(edge.target) and \
                edge.target not in SERVER_MAY_USE and edge.target != "hcafs.remote":
            out.append(f"{edge}: the server uses only hcafs.remote.s3 and the core")
    return out


CHECKS = [cycles, upward_imports, model_io, http_outside_remote, sql_outside_cache,
          mount_importers, server_edges]


# ---------------------------------------------------------------- the real tree


def test_the_real_tree_passes():
    package = load(PACKAGE)
    assert len(package.modules) > 30 and len(internal(package.edges)) > 100
    problems = [problem for check in CHECKS for problem in check(package)]
    assert problems == []


def test_imports_inside_functions_are_seen():
    package = load(PACKAGE)
    # hcafs.cli imports its commands inside the functions that run them.
    assert any(e.source == "hcafs.cli" and e.target.startswith("hcafs.mount")
               for e in package.edges)


# ---------------------------------------------------------------- each rule catches a plant


@pytest.fixture
def copy(tmp_path):
    """A temporary copy of the package; ``plant(module_path, line)`` adds an import to a
    function at the end of one of its modules (imports inside functions count)."""
    root = tmp_path / "hcafs"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))

    def plant(relative: str, statement: str) -> Package:
        path = root / relative
        path.write_text(path.read_text() + f"\n\ndef _planted():\n    {statement}\n")
        return load(root)

    return plant


def _caught(check, package: Package, needle: str) -> None:
    problems = check(package)
    assert any(needle in p for p in problems), problems


def test_a_cycle_is_caught(copy):
    _caught(cycles, copy("errors.py", "from .model.tree import Tree"), "import cycle")


def test_a_cycle_through_a_function_import_is_caught(copy):
    # mount/daemon imports mount/records; a function in records importing the daemon back
    # is the shape the old daemon ↔ mount cycle had.
    _caught(cycles, copy("mount/records.py", "from .daemon import Daemon"),
            "hcafs.mount.daemon")


def test_an_upward_import_is_caught(copy):
    _caught(upward_imports, copy("cache/journal.py", "from ..sync.syncer import Syncer"),
            "cache may not import sync")


@pytest.mark.parametrize("statement", ["import requests", "import boto3", "import sqlite3",
                                       "import mfusepy", "import fuse", "import errno"])
def test_io_in_the_model_is_caught(copy, statement):
    _caught(model_io, copy("model/pending.py", statement), "the model does no I/O")


@pytest.mark.parametrize("where", ["sync/syncer.py", "cache/catalog.py", "mount/daemon.py",
                                   "cli.py", "errors.py"])
def test_requests_outside_remote_is_caught(copy, where):
    _caught(http_outside_remote, copy(where, "import requests"), "belongs in hcafs.remote")


@pytest.mark.parametrize("statement", ["import boto3", "from botocore import exceptions"])
def test_boto_outside_remote_is_caught(copy, statement):
    _caught(http_outside_remote, copy("sync/staging.py", statement), "hcafs.remote")


def test_boto_in_the_server_is_caught(copy):
    _caught(http_outside_remote, copy("server/store.py", "import boto3"), "remote.s3")


def test_requests_in_the_server_outside_egress_is_caught(copy):
    _caught(http_outside_remote, copy("server/imports.py", "import requests"), "remote.s3")


def test_requests_in_the_server_egress_module_is_allowed(copy):
    package = copy("server/egress.py", "import requests")
    assert http_outside_remote(package) == []


def test_requests_elsewhere_in_the_server_is_caught(copy):
    _caught(http_outside_remote, copy("server/drs.py", "import urllib3"), "outside world")


@pytest.mark.parametrize("statement", ["import sqlite3", "import sqlite_utils",
                                       "from sqlite_utils import Database"])
def test_a_sql_library_outside_cache_is_caught(copy, statement):
    _caught(sql_outside_cache, copy("sync/drs_queue.py", statement), "belongs in hcafs.cache")


@pytest.mark.parametrize("sql", ["select id from pending_files where bundle = ?",
                                 "update pending_files set state = ? where id = ?",
                                 "delete from drs_imports where id = ?",
                                 "insert into meta values (?, ?)"])
def test_a_sql_string_outside_cache_is_caught(copy, sql):
    _caught(sql_outside_cache, copy("model/pending.py", f"return {sql!r}"), "holds SQL")


def test_mount_imported_outside_cli_is_caught(copy):
    _caught(mount_importers, copy("sync/syncer.py", "from ..mount.daemon import Daemon"),
            "only hcafs.cli may import hcafs.mount")


def test_the_client_importing_the_server_is_caught(copy):
    _caught(server_edges, copy("mount/daemon.py", "from ..server.auth import Tokens"),
            "the client side does not import the server")


def test_the_server_importing_the_client_is_caught(copy):
    _caught(server_edges, copy("server/dss.py", "from ..cache.journal import Journal"),
            "the server uses only")

"""The layers' import rules (docs/architecture.md), read from the source of every module.

Dependencies point inward: `events` imports nothing of ours, `lifecycle` only `events` and
never Kafka, Faust or the runtime; inside `streams/` each subpackage imports only what its
docstring allows. An import under `if TYPE_CHECKING:` is a type hint, not a dependency, and
is not counted. A new arrow either belongs to the design (add it here and to the
subpackage's docstring, with the reason) or is a module in the wrong place.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: What each part of `streams/` may import of `streams/` (besides itself).
ALLOWED: dict[str, set[str]] = {
    "internals": set(),
    "settings": set(),
    "kafka": {"internals", "settings"},
    "worker": {"internals", "settings", "kafka"},
    "tools": {"internals", "settings", "kafka"},
    "web": {"internals", "settings", "kafka", "worker", "tools"},
    "dev": {"internals", "settings", "kafka", "worker", "tools", "web"},
    "cli": {"internals", "settings", "kafka", "worker", "tools", "web", "dev"},
}

#: Single modules allowed one arrow more, and why.
EXCEPTIONS: dict[tuple[str, str], str] = {
    # the composition root installs the HTTP views on the app it builds
    ("streams.worker.app", "streams.web.api"): "composition root",
    # the settings object hands out the typed topic names, the configured tokens and the master
    # keys from the environment
    ("streams.settings", "streams.kafka.topics"): "topic names",
    ("streams.settings", "streams.web.access"): "tokens",
    ("streams.settings", "streams.kafka.keys"): "master keys",
    # the aiokafka client options forbid topic auto-creation before any client is built (a
    # lazy import: only a process that talks to a broker loads aiokafka, and none Faust)
    ("streams.settings", "streams.kafka.client_internals"): "no topic auto-creation",
}

RUNTIME_LIBRARIES = {"faust", "aiokafka", "mode", "kafka", "rocksdict", "typer", "rich"}


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth, outside `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_text(), filename=str(path))
    hinted: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hinted.update(id(n) for child in node.body for n in ast.walk(child))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in hinted:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _part(module: str) -> str:
    """`streams.worker.agent` → `worker`; `streams.settings` → `settings`."""
    return module.split(".")[1]


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", ["events", "lifecycle"])
def test_the_core_imports_no_runtime(package: str) -> None:
    allowed = {"events"} if package == "lifecycle" else set()
    wrong = []
    for path in _sources(package):
        for name in _imports(path):
            top = name.split(".")[0]
            ours = top in {"events", "lifecycle", "streams"} and top != package
            if (ours and top not in allowed) or top in RUNTIME_LIBRARIES:
                wrong.append(f"{_module(path)} imports {name}")
    assert not wrong, f"{package}/ must stay pure:\n" + "\n".join(sorted(set(wrong)))


def test_streams_subpackages_import_only_what_their_docstring_allows() -> None:
    wrong = []
    for path in _sources("streams"):
        module = _module(path)
        if module == "streams":
            continue
        source = _part(module)
        for name in _imports(path):
            if not name.startswith("streams.") or not _is_module(name):
                continue
            target = _part(name)
            if target == source or target in ALLOWED[source]:
                continue
            if (module, name) in EXCEPTIONS:
                continue
            wrong.append(f"{module} imports {name}")
    assert not wrong, "arrows the layout does not allow:\n" + "\n".join(sorted(set(wrong)))


def test_every_streams_module_belongs_to_a_part() -> None:
    loose = [
        _module(path)
        for path in (ROOT / "streams").glob("*.py")
        if path.stem not in ALLOWED and path.stem != "__init__"
    ]
    assert not loose, f"modules outside the subpackages (pick one, see docs): {loose}"


def test_every_subpackage_says_what_it_may_import() -> None:
    for part in ALLOWED:
        init = ROOT / "streams" / part / "__init__.py"
        if not init.exists():
            continue
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "May import" in doc, f"streams/{part}/__init__.py: say what it may import"


def test_only_the_cli_imports_typer() -> None:
    wrong = [
        _module(path)
        for path in _sources("streams")
        if not _module(path).startswith("streams.cli")
        and any(name.split(".")[0] == "typer" for name in _imports(path))
    ]
    assert not wrong, f"typer outside streams/cli: {wrong}"

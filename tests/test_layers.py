"""Imports point down only (DESIGN.md): core <- collect, store, publish <- service <- cli.
`agent.config`, `agent.logs` and `agent.files` are leaves every layer but the pure core
may import."""

from __future__ import annotations

import ast
from pathlib import Path

AGENT = Path(__file__).resolve().parents[1] / "agent"
# What each layer may import from the agent package besides itself.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "config": set(),
    "logs": set(),
    "files": set(),
    "collect": {"core", "config", "logs", "files"},
    "store": {"core", "config", "logs", "files"},
    "publish": {"core", "config", "logs", "files"},
    "service": {"core", "config", "logs", "files", "collect", "store", "publish"},
    "cli": {"core", "config", "logs", "files", "collect", "store", "publish", "service"},
    "__main__": {"cli"},
}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return [n for n in names if n == "agent" or n.startswith("agent.")]


def test_imports_point_down_only() -> None:
    wrong = []
    for path in sorted(AGENT.rglob("*.py")):
        rel = path.relative_to(AGENT.parent).with_suffix("")
        layer = _layer(".".join(rel.parts))
        if layer in ("", "__init__"):
            continue
        assert layer in ALLOWED, f"{rel}: a layer the import rule does not know"
        for name in _imports(path):
            target = _layer(name)
            # `agent` itself holds only the version.
            if target not in ("", layer) and target not in ALLOWED[layer]:
                wrong.append(f"{rel} imports {name}")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(wrong)


def test_the_rule_core_is_pure() -> None:
    impure = {"time", "os", "socket", "logging", "sqlite3", "subprocess", "threading"}
    found = []
    for path in sorted((AGENT / "core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                else:
                    mods = [node.module or ""]
                found += [f"{path.name}: {m}" for m in mods if m.split(".")[0] in impure]
    assert not found, found

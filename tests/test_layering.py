"""The import-layering contract: the library's core and its methods never import the layers built on
top of them (the CLI, the server, the vLLM plugin, Ray orchestration). Checked on the source with
``ast``, lazy imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import steerlab

PACKAGE = Path(steerlab.__file__).parent
# Layers that only translate or orchestrate; nothing below them may import them.
TOP = ("cli", "serve", "vllm", "distributed", "demo")
# (module prefix, what it may never import)
CONTRACT = [(m, TOP) for m in ("methods", "evaluate", "pace", "datasets", "intervene", "capture", "vector", "model",
                               "steering", "spec", "generation", "tokens", "blocks", "errors", "safefile", "sources",
                               "gguf_io", "gguf_convert")] + [("serve", ("cli",)), ("distributed", ("cli", "serve"))]


def imported_modules(path: Path, package: str) -> set[str]:
    """Every ``steerlab.*`` module the file imports (absolute or relative, at any depth)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = package.split(".")
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("steerlab"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]  # level 1: this package
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("steerlab"):
                out.add(mod)
                out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def violations(root: Path, contract=CONTRACT) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        module = ".".join(["steerlab", *parts])
        package = ".".join(["steerlab", *rel.parts[:-1]])  # the package a relative import starts from
        for prefix, banned in contract:
            if not (module == f"steerlab.{prefix}" or module.startswith(f"steerlab.{prefix}.")):
                continue
            for name in imported_modules(path, package):
                top = name.split(".")[1] if name.count(".") else ""
                if top in banned:
                    found.append(f"{module} imports {name}")
    return found


def test_the_library_keeps_its_layers():
    assert violations(PACKAGE) == []


def test_the_contract_fails_when_violated(tmp_path):
    """A planted lazy import of the CLI inside a method module is caught (so the check can fail)."""
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "__init__.py").write_text("")
    (tmp_path / "methods" / "bad.py").write_text("def f():\n    from ..cli import main\n    return main\n")
    (tmp_path / "vector.py").write_text("import steerlab.serve.app\n")
    (tmp_path / "spec.py").write_text("from .distributed import map_tasks\n")
    found = violations(tmp_path)
    assert "steerlab.methods.bad imports steerlab.cli" in found
    assert "steerlab.vector imports steerlab.serve.app" in found
    assert "steerlab.spec imports steerlab.distributed" in found

"""The import picture: core <- state <- run <- {tune, rl, eval} <- cli, no circles, no arrows back up.

Every ``import`` in ``rl_statetune`` (module level and inside functions) is read with ``ast``; a module may import
from its own layer or below, the three commands (``trainer``, ``rl``, ``eval``) not from each other, and the
module graph has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "rl_statetune"

LAYERS = {
    "core": ["atomic", "paths", "malloc", "wkv", "model", "decode", "checkpoint", "init", "tokenizer", "lm", "generation", "synthetic",
             "config", "data", "features", "dbp"],
    "state": ["state", "upscale", "support"],
    "run": ["run"],
    "commands": ["trainer", "rl", "eval", "hf"],
    "cli": ["cli"],
}
ORDER = list(LAYERS)
COMMANDS = {"trainer", "rl", "eval", "hf"}
# entry-point aliases of the CLI (``python -m ...``) live outside the package (launch/), never in a lower layer
ALIASES: dict[str, str] = {}


def top(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else ""


def layer(name: str) -> int:
    for i, key in enumerate(ORDER):
        if name in LAYERS[key]:
            return i
    raise AssertionError(f"rl_statetune.{name} is in no layer of tests/test_layers.py: add it where it belongs")


def modules() -> dict[str, list[str]]:
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        imports = []
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imports += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imports.append(node.module)
        out[name] = [m for m in imports if m.startswith("rl_statetune.")]
    return out


def test_imports_only_flow_down_the_layers():
    bad = []
    for mod, imports in modules().items():
        if mod == "rl_statetune":
            continue
        me = ALIASES.get(mod, top(mod))
        for imp in imports:
            other = top(imp)
            if other == me:
                continue
            if layer(other) > layer(me):
                bad.append(f"{mod} imports {imp} (a higher layer)")
            elif me in COMMANDS and other in COMMANDS:
                bad.append(f"{mod} imports {imp} (commands are siblings)")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph = {m: {i for i in imps if i in modules_cache} for m, imps in modules_cache.items()}
    seen, stack, cycles = set(), [], []

    def visit(m):
        if m in stack:
            cycles.append(stack[stack.index(m):] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for n in graph.get(m, ()):
            visit(n)
        stack.pop()

    for m in graph:
        visit(m)
    assert not cycles, cycles


modules_cache = modules()

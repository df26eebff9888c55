"""No dead dependencies: every runtime dependency and every runtime extra of pyproject.toml is imported by the
package code that needs it (dev, the test tooling, is exempt)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMPORT_NAME = {"pyyaml": "yaml", "rl-statetune": None}
CODE_DIRS = ("rl_statetune", "kernels", "guides")


def _imported_modules() -> set[str]:
    names = set()
    for d in CODE_DIRS:
        for f in (ROOT / d).rglob("*.py"):
            for m in re.finditer(r"^\s*(?:import|from)\s+([A-Za-z_][\w]*)", f.read_text(), re.M):
                names.add(m.group(1))
    return names


def _module_of(requirement: str) -> str | None:
    dist = re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0).lower()
    return IMPORT_NAME.get(dist, dist.replace("-", "_"))


def test_every_runtime_dependency_is_imported():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    imported = _imported_modules()
    groups = {"dependencies": project["dependencies"],
              **{f"extra {k}": v for k, v in project["optional-dependencies"].items() if k != "dev"}}
    dead = [f"{group}: {req}" for group, reqs in groups.items() for req in reqs
            if (mod := _module_of(req)) is not None and mod not in imported]
    assert not dead, f"declared but imported nowhere in {CODE_DIRS}: {dead}"


def test_heavy_stacks_are_optional_extras():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_module_of(r) for r in project["dependencies"]}
    assert not core & {"trl", "peft", "lm_eval", "vllm", "ray", "accelerate"}
    assert {"trl", "peft", "accelerate"} <= {_module_of(r) for r in project["optional-dependencies"]["hf"]}

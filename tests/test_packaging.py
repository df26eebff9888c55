"""Import names: kernels/ and guides/ install as rl_statetune_kernels / rl_statetune_guides, and a bare `kernels`
folder on sys.path must not make transformers believe the Hugging Face `kernels` package is installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_packages_import_under_their_safe_names():
    import rl_statetune_guides
    import rl_statetune_kernels

    assert Path(rl_statetune_kernels.__file__).parent == ROOT / "kernels"
    assert Path(rl_statetune_guides.__file__).parent == ROOT / "guides"


def test_transformers_does_not_mistake_our_kernels_folder_for_hf_kernels():
    # run from the repository root, where `kernels/` is importable as a plain folder
    code = ("import importlib.util, importlib.metadata as md\n"
            "from transformers.utils import is_kernels_available\n"
            "spec = importlib.util.find_spec('kernels')\n"
            "try:\n    md.version('kernels'); real = True\nexcept md.PackageNotFoundError:\n    real = False\n"
            "print(spec is not None, real, is_kernels_available())\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    found, real, available = out.stdout.split()
    assert found == "True"              # the folder is visible as `kernels` from the repo root...
    assert available == real            # ...but transformers only reports the real, installed package


def test_a_bare_kernels_import_from_the_repo_root_gets_the_installed_package():
    """transformers >= 5.25 requires and imports Hugging Face's `kernels`; from the repository root our folder came
    first and `from rl_statetune.hf import ...` failed (cannot import name 'CUDAProperties' from 'kernels')."""
    import importlib.metadata as md

    try:
        md.version("kernels")
    except md.PackageNotFoundError:
        pytest.skip("Hugging Face's kernels package is not installed; nothing to hand the name over to")
    code = "import kernels, rl_statetune.hf, rl_statetune_kernels as k; print(kernels.__file__, k.wkv7_triton.__name__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-1500:]
    path, name = out.stdout.split()
    assert Path(path).parent != ROOT / "kernels" and name == "wkv7_triton"


def test_every_subpackage_is_in_the_wheel():
    """``[tool.setuptools] packages`` is an explicit list: a new subpackage missing from it installs from a
    checkout (editable) but not from a wheel."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "rl_statetune").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)

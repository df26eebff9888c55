"""Where bundled files live."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
EMBEDDED_MODEL = ASSETS / "arith-rwkv7-L6-C64.pth"
# "embedded:NAME" -> a bundled model; "embedded" alone is the original answer-format model
EMBEDDED_MODELS = {"arith": EMBEDDED_MODEL, "reason": ASSETS / "reason-rwkv7-L6-C128.pth"}


def resolve_model_path(path: str | Path) -> Path:
    """``"embedded"`` names the small model shipped in the package (``"embedded:reason"`` the one pretrained on the
    reasoning task, see ``synthetic.reasoning_documents``); anything else is a file or folder path."""
    s = str(path)
    if s == "embedded" or s.startswith("embedded:"):
        name = s.partition(":")[2] or "arith"
        if name not in EMBEDDED_MODELS:
            raise FileNotFoundError(f"no embedded model {name!r}; bundled: {', '.join(sorted(EMBEDDED_MODELS))}")
        f = EMBEDDED_MODELS[name]
        if not f.exists():
            raise FileNotFoundError(f"the embedded model {f} is missing from this installation")
        return f
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"no model checkpoint at {p}")
    return p

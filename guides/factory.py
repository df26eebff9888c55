"""``build_guide``: config -> live :class:`~rl_statetune_guides.base.Guide`, importing only the chosen backend."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .base import Guide
from .config import GuideConfig, load_guide_config

__all__ = ["build_guide", "GUIDE_CLASSES"]

# backend -> "module:Class"; modules are imported lazily so heavy optional deps (vllm) stay optional.
GUIDE_CLASSES: dict[str, str] = {
    "transformers": "rl_statetune_guides.transformers_guide:TransformersGuide",
    "vllm": "rl_statetune_guides.vllm_guide:VLLMGuide",
    "openai": "rl_statetune_guides.openai_guide:OpenAIGuide",
    "dataset": "rl_statetune_guides.dataset_guide:DatasetGuide",
    "subprocess": "rl_statetune_guides.subprocess_guide:SubprocessGuide",
}


def build_guide(cfg: GuideConfig | Mapping[str, Any] | str | Path) -> Guide:
    """Build the guide described by ``cfg`` (a :class:`GuideConfig`, a plain mapping or a YAML path)."""
    if isinstance(cfg, (str, Path)):
        cfg = load_guide_config(cfg)
    elif isinstance(cfg, Mapping):
        cfg = GuideConfig.model_validate(dict(cfg))
    elif not isinstance(cfg, GuideConfig):
        raise TypeError(f"build_guide expects a GuideConfig, a mapping or a path, got {type(cfg).__name__}")
    module_name, cls_name = GUIDE_CLASSES[cfg.backend].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(cfg.options)

"""Guide LLM backends (imported as ``rl_statetune_guides``).

A guide writes chain-of-thought targets (:meth:`Guide.generate`) and scores text
(:meth:`Guide.score`). Pick one by config and build it with :func:`build_guide`; backends are
imported lazily, so optional dependencies (vllm, ray) are only needed by the backend that uses them.
"""

from .base import Guide, ScoredText
from .config import (
    DatasetOptions,
    GuideConfig,
    OpenAIOptions,
    Resources,
    TransformersOptions,
    VLLMOptions,
    load_guide_config,
)
from .errors import GuideError, GuideOutputError, GuideRequestError, GuideScoringUnsupported, GuideUnavailable
from .factory import build_guide

__all__ = [
    "Guide",
    "ScoredText",
    "GuideConfig",
    "Resources",
    "TransformersOptions",
    "VLLMOptions",
    "OpenAIOptions",
    "DatasetOptions",
    "load_guide_config",
    "build_guide",
    "GuideError",
    "GuideUnavailable",
    "GuideOutputError",
    "GuideRequestError",
    "GuideScoringUnsupported",
]

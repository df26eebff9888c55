"""Hosting a guide in a Ray actor, and using the actor through the ordinary :class:`Guide` interface.

    actor = spawn_guide_actor(load_guide_config("configs/guides/llama70b_vllm_tp8.yaml"))
    guide = RemoteGuide(actor)          # a Guide: generate / score / close block on the actor
    cots = guide.generate(prompts, max_tokens=512)

The actor asks Ray for ``resources.num_cpus`` / ``resources.num_gpus`` / custom ``resources.resources`` from the
config. ray is optional and imported only here, when an actor is spawned or a remote guide is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import Guide, ScoredText
from .config import GuideConfig
from .factory import build_guide

__all__ = ["GuideActor", "RemoteGuide", "spawn_guide_actor", "import_ray"]


def import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise ImportError("guide actors need Ray: pip install 'rl-statetune[ray]'") from e
    return ray


class GuideActor:
    """The actor body: builds the configured guide in the actor process and forwards calls to it.

    A plain class, so it is usable (and testable) in-process; :func:`spawn_guide_actor` wraps it with
    ``ray.remote``. The config travels as a JSON-able dict and is re-validated on the actor's side.
    """

    def __init__(self, cfg: GuideConfig | dict[str, Any]):
        self.cfg = cfg if isinstance(cfg, GuideConfig) else GuideConfig.model_validate(cfg)
        self.guide: Guide | None = build_guide(self.cfg)

    def pid(self) -> int:
        import os

        return os.getpid()

    def node_id(self) -> str:
        """The Ray node this actor runs on (hex), for the run's record of where each actor was placed."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def info(self) -> dict[str, Any]:
        guide = self._guide()
        return {"backend": self.cfg.backend, "name": self.cfg.name, "supports_scoring": guide.supports_scoring,
                "supports_top_k": guide.supports_top_k}

    def generate(self, prompts: Sequence[str], max_tokens: int = 256, temperature: float = 0.0) -> list[str]:
        return self._guide().generate(list(prompts), max_tokens, temperature)

    def score(self, prompts: Sequence[str], continuations: Sequence[str], top_k: int = 0) -> list[ScoredText]:
        return self._guide().score(list(prompts), list(continuations), top_k)

    def close(self) -> None:
        if self.guide is not None:
            self.guide.close()
            self.guide = None

    def _guide(self) -> Guide:
        if self.guide is None:
            raise RuntimeError("this GuideActor was closed")
        return self.guide


def spawn_guide_actor(cfg: GuideConfig, max_restarts: int = 0, **actor_options: Any) -> Any:
    """Start a :class:`GuideActor` with the config's Ray resources; returns the actor handle.

    ``max_restarts``: a guide whose process dies is started again (its engine rebuilt) up to this many times,
    and the calls it had pending are retried on the new one (guide calls are idempotent: greedy or seeded
    generation, deterministic scoring). ``actor_options`` go to ``.options()`` (e.g. ``namespace``,
    ``lifetime``, ``scheduling_strategy``) and override the config. The actor is named after ``cfg.name``.
    """
    ray = import_ray()
    options: dict[str, Any] = {"num_cpus": cfg.resources.num_cpus, "num_gpus": cfg.resources.num_gpus,
                               "max_restarts": max_restarts, "max_task_retries": max_restarts}
    if cfg.resources.resources:
        options["resources"] = dict(cfg.resources.resources)
    if cfg.name:
        options["name"] = cfg.name
    options.update(actor_options)
    return ray.remote(GuideActor).options(**options).remote(cfg.model_dump(mode="json"))


class RemoteGuide(Guide):
    """:class:`Guide` over a :class:`GuideActor` handle; every call blocks until the actor answers.

    Args:
        handle: from :func:`spawn_guide_actor`.
        timeout_s: per-call ``ray.get`` timeout (None waits forever).
    """

    def __init__(self, handle: Any, timeout_s: float | None = None):
        self._ray = import_ray()
        self.handle = handle
        self.timeout_s = timeout_s
        info = self._get(self._actor().info.remote())
        self.supports_scoring, self.supports_top_k = bool(info["supports_scoring"]), bool(info["supports_top_k"])

    def generate(self, prompts: Sequence[str], max_tokens: int = 256, temperature: float = 0.0) -> list[str]:
        return self._get(self._actor().generate.remote(list(prompts), max_tokens, temperature))

    def score(self, prompts: Sequence[str], continuations: Sequence[str], top_k: int = 0) -> list[ScoredText]:
        return self._get(self._actor().score.remote(list(prompts), list(continuations), top_k))

    def close(self) -> None:
        """Close the guide inside the actor, then end the actor process."""
        if self.handle is None:
            return
        try:
            self._get(self._actor().close.remote())
        finally:
            self._ray.kill(self.handle)
            self.handle = None

    def _actor(self) -> Any:
        if self.handle is None:
            raise RuntimeError("this RemoteGuide was closed")
        return self.handle

    def _get(self, ref: Any) -> Any:
        return self._ray.get(ref, timeout=self.timeout_s)

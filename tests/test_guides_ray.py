"""Guide actors: the actor body in-process, spawning through a stand-in ``ray``, and a real Ray run (slow)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from rl_statetune_guides import GuideConfig, GuideScoringUnsupported
from rl_statetune_guides.ray_actor import GuideActor, RemoteGuide, spawn_guide_actor


@pytest.fixture
def cfg(tmp_path: Path) -> GuideConfig:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"question": "q1", "answer": "because 1"}) + "\n")
    return GuideConfig.model_validate(
        {
            "backend": "dataset",
            "name": "ref-guide",
            "resources": {"num_cpus": 0.5, "num_gpus": 0},
            "options": {"path": str(path), "score_logprob": -0.5},
        }
    )


def test_actor_body_forwards_to_the_guide(cfg: GuideConfig) -> None:
    actor = GuideActor(cfg.model_dump(mode="json"))  # what Ray passes: a JSON-able dict
    assert actor.info() == {"backend": "dataset", "name": "ref-guide", "supports_scoring": True,
                            "supports_top_k": False}
    assert actor.generate(["q1"]) == ["because 1"]
    assert actor.score(["q1"], ["a b"])[0].logprobs == (-0.5, -0.5)
    actor.close()
    with pytest.raises(RuntimeError, match="closed"):
        actor.generate(["q1"])


class _Handle:
    """Actor handle of the stand-in ray: ``handle.method.remote(...)`` calls the local object."""

    def __init__(self, obj: object):
        self._obj = obj

    def __getattr__(self, name: str) -> types.SimpleNamespace:
        return types.SimpleNamespace(remote=lambda *a, **k: getattr(self._obj, name)(*a, **k))


def _fake_ray() -> types.ModuleType:
    ray = types.ModuleType("ray")
    ray.spawned, ray.killed = [], []

    def remote(cls):
        def options(**opts):
            def make(*args):
                ray.spawned.append(opts)
                return _Handle(cls(*args))

            return types.SimpleNamespace(remote=make)

        return types.SimpleNamespace(options=options)

    ray.remote = remote
    ray.get = lambda value, timeout=None: value
    ray.kill = ray.killed.append
    return ray


def test_spawn_uses_config_resources(cfg: GuideConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    ray = _fake_ray()
    monkeypatch.setitem(sys.modules, "ray", ray)
    handle = spawn_guide_actor(cfg, namespace="guides")
    assert ray.spawned == [{"num_cpus": 0.5, "num_gpus": 0.0, "name": "ref-guide", "namespace": "guides",
                            "max_restarts": 0, "max_task_retries": 0}]
    spawn_guide_actor(cfg, max_restarts=3)
    assert ray.spawned[-1]["max_restarts"] == 3 and ray.spawned[-1]["max_task_retries"] == 3
    guide = RemoteGuide(handle)
    assert guide.supports_scoring and guide.generate(["q1"]) == ["because 1"]
    guide.close()
    assert ray.killed == [handle]
    with pytest.raises(RuntimeError, match="closed"):
        guide.generate(["q1"])


def test_missing_ray_is_a_clear_error(cfg: GuideConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"rl-statetune\[ray\]"):
        spawn_guide_actor(cfg)


@pytest.mark.slow
def test_real_ray_actor(cfg: GuideConfig) -> None:
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    # address="local": a private cluster, never one that `ray start` left running on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        guide = RemoteGuide(spawn_guide_actor(cfg), timeout_s=120)
        assert guide.generate(["q1"]) == ["because 1"]
        (s,) = guide.score(["q1"], ["x y"])
        assert s.pieces == ("x", " y") and s.logprobs == (-0.5, -0.5)
        guide.close()
        no_score = cfg.model_copy(
            update={"name": None, "options": cfg.options.model_copy(update={"score_logprob": None})}
        )
        guide = RemoteGuide(spawn_guide_actor(no_score), timeout_s=120)
        with pytest.raises(GuideScoringUnsupported):  # Ray re-raises the actor's exception type
            guide.score(["q1"], ["x"])
        guide.close()
    finally:
        ray.shutdown()

"""What a Ray step logs of its learners' metrics: the terms' shares and means averaged over learners (a learner
with none, NaN, left out), counts summed. Before, a Ray run logged only reward and loss of the rollout terms.
``RayExecutor.step`` runs on a stand-in with two learners' metrics, no Ray."""

from __future__ import annotations

import math
from contextlib import nullcontext

from rl_statetune.rl.learner import REWARD_COUNTS
from rl_statetune.rl.ray_executor import RayExecutor, learners_mean


class Learner:
    def __init__(self, metrics: dict):
        self.metrics, self.step = metrics, self

    def remote(self, step: int, total_steps: int) -> dict:
        return self.metrics


class Executor:
    def __init__(self, metrics: list[dict]):
        self.learners = [Learner(m) for m in metrics]

    def _failures(self, during: str):
        return nullcontext()

    def _gather(self, results: list[dict]) -> list[dict]:
        return results


def learner_metrics(**terms) -> dict:
    return {"reward": 0.5, "loss": 1.0, "lr": 0.1, "tokens": 100, "learner_s": 1.0, "wait_s": 0.1, "skipped": 0,
            **{k: 1 for k in REWARD_COUNTS}, **terms}


def test_the_terms_metrics_are_averaged_over_learners():
    out = RayExecutor.step(Executor([
        learner_metrics(step_right=0.8, corrections=0.5, correction_logprob=float("nan"), verifier_reward=0.25),
        learner_metrics(step_right=0.6, corrections=1.5, correction_logprob=-1.0, verifier_reward=0.75)]), 0, 1)
    assert out["step_right"] == 0.7 and out["corrections"] == 1.0 and out["verifier_reward"] == 0.5
    assert out["correction_logprob"] == -1.0       # the learner that corrected nothing is left out
    assert out["tokens"] == 200 and out["reward_guide_calls"] == 2
    assert "greedy_reward" not in out               # no learner logged it


def test_learners_mean():
    assert learners_mean([1.0, 2.0]) == 1.5 and learners_mean([float("nan"), 2.0]) == 2.0
    assert math.isnan(learners_mean([float("nan")] * 2))

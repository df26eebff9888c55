"""Typed configuration of guide-driven RL runs (single process and Ray), strict like ``rl_statetune.config``.

One YAML file holds every section::

    model: {path: embedded}
    data: {task: synthetic, target_format: hash}
    guide: {config: configs/guides/smollm2_transformers.yaml, cot: {max_tokens: 48}}
    reward: {kind: match, samples: 4}
    pg: {advantage: group, l2: 0.0}
    optim: {lr: 0.1, lr_final: 0.01}
    upscale: {enabled: true, features: 64}     # the same tunables as ``tune``: S0, S~0, R (+ dbp)
    train: {steps: 40, batch_size: 4, out_dir: runs/rl}
    distributed: {num_learners: 2}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from rl_statetune.config import OptimConfig, RunConfig, Section, TrainConfig, load_config


class GuideResources(Section):
    """Where the guide runs (Ray only): overrides of the guide config's resources, and how many replicas."""

    num_cpus: float | None = Field(None, ge=0)
    num_gpus: float | None = Field(None, ge=0)
    replicas: int = Field(1, gt=0)


class CotText(Section):
    """What the guide is asked and how its text becomes the learner's target."""

    max_tokens: int = Field(64, gt=0)          # guide generation budget per CoT
    temperature: float = Field(0.0, ge=0)
    prompt_template: str = "{prompt}"          # what the guide is asked; {prompt} is the task prompt (the only
    #                                            placeholder: other braces are literal, see guides.fill_template)
    join: str = " "                            # put between the task prompt and the guide's text
    suffix: str = "\n"                         # appended to the CoT (the task's end of answer); never scored
    max_chars: int = Field(400, gt=0)          # CoT text is cut here
    stop: list[str] = Field(default_factory=list)  # and at the first of these strings (e.g. "\n": one line)

    @model_validator(mode="after")
    def _has_prompt(self):
        if "{prompt}" not in self.prompt_template:
            raise ValueError("guide.cot.prompt_template must contain {prompt}")
        return self


class GuideSection(Section):
    """Which guide writes the chain of thought (exactly one source), where it runs, and how its text is used."""

    config: str | None = None                  # a guide YAML (configs/guides/*.yaml)
    inline: dict[str, Any] | None = None       # or the same mapping inline
    task_rationales: bool = False              # or a dataset guide serving the task's own reference targets
    options: dict[str, Any] = Field(default_factory=dict)  # override the guide config's backend options
    resources: GuideResources = GuideResources()
    cot: CotText = CotText()

    @model_validator(mode="after")
    def _one_source(self):
        n = (self.config is not None) + (self.inline is not None) + self.task_rationales
        if n != 1:
            raise ValueError("set exactly one of guide.config (a guide YAML), guide.inline (a guide mapping) "
                             "and guide.task_rationales: true")
        return self


class RewardConfig(Section):
    """Per-token alignment reward on the guide's CoT (see ``rl_statetune.rl.rewards``)."""

    kind: Literal["match", "guide_logprob", "reverse_kl", "multistep"] = "match"
    samples: int = Field(4, gt=0)              # actions sampled per position (the GRPO group)
    temperature: float = Field(1.0, gt=0)      # learner sampling temperature
    floor_logprob: float = Field(-20.0, le=0)  # guide log-prob of a token the guide cannot score (eos, bytes)
    rollout_tokens: int = Field(4, gt=0)       # multistep: k tokens rolled out by the learner
    rollout_positions: int = Field(4, gt=0)    # multistep: branch points per CoT
    # guide_logprob / reverse_kl: CoT positions per step whose sampled actions the guide scores (a random subset;
    # None = all). Each scored action is one guide query of prompt + CoT prefix + action, so this caps guide work.
    scored_positions: int | None = Field(None, gt=0)
    # guide_logprob / reverse_kl: the guide scores its own CoT with its top-k next tokens at every position; an
    # action whose text is one of them, at a position where guide and learner tokens start together, is read from
    # there instead of costing a query (0 = off: every action other than the guide's own token is a query).
    # vLLM caps k at its max_logprobs (20 unless raised in engine_kwargs).
    guide_top_k: int = Field(20, ge=0)


class PGConfig(Section):
    """Policy gradient on the initial state only."""

    advantage: Literal["group", "batch", "ema"] = "group"   # group = GRPO (per position, over samples)
    normalize_std: bool = True
    ema_decay: float = Field(0.9, ge=0, lt=1)
    l2: float = Field(0.0, ge=0)               # penalty l2 * mean(S0^2): keeps the state near the frozen model


class DistributedConfig(Section):
    num_learners: int = Field(2, gt=0)
    learner_cpus: float = Field(1.0, ge=0)
    learner_gpus: float = Field(0.0, ge=0)
    collective: Literal["auto", "gloo", "nccl"] = "auto"   # auto: nccl when learners hold GPUs, else gloo
    queue_size: int = Field(4, gt=0)           # CoT batches buffered between the guide and the learners
    torch_threads: int = Field(1, gt=0)        # per learner process
    address: str | None = None                 # ray.init(address=...); None joins a running cluster or starts one
    num_cpus: int | None = Field(None, gt=0)   # for a local ray.init when no cluster is running
    ready_timeout_s: float = Field(60.0, gt=0)  # placement group must be ready within this
    guide_timeout_s: float = Field(600.0, gt=0)
    guide_max_restarts: int = Field(3, ge=0)   # a guide actor that dies is restarted, its pending calls retried


class RLConfig(RunConfig):
    """A guide-driven RL run: every section of ``tune`` (model, data, optim, train, upscale, dbp) plus the guide,
    the reward, the policy gradient and the Ray layout."""

    guide: GuideSection
    reward: RewardConfig = RewardConfig()
    pg: PGConfig = PGConfig()
    optim: OptimConfig = OptimConfig(lr=0.1, lr_final=0.01)
    train: TrainConfig = TrainConfig(steps=40, batch_size=4, log_every=5, ckpt_every=20, out_dir="runs/rl",
                                     eval_max_new_tokens=40)
    distributed: DistributedConfig = DistributedConfig()


def load_rl_config(path: str | Path, overrides: list[str] | None = None) -> RLConfig:
    """Read an RL YAML file; ``overrides`` like ``["train.steps=5"]`` win over the file."""
    return load_config(path, RLConfig, overrides)

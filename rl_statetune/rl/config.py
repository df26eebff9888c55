"""Typed configuration of guide-driven RL runs (single process and Ray), strict like ``rl_statetune.config``.

One YAML file holds every section::

    model: {path: embedded}
    data: {task: synthetic, target_format: hash}
    guide: {config: configs/guides/smollm2_transformers.yaml, cot: {max_tokens: 48}}
    reward: {kind: match, samples: 4}      # or weighted terms: {terms: {verifier: 1.0, on_policy: 0.5}}
    pg: {advantage: group, l2: 0.0}
    optim: {lr: 0.1, lr_final: 0.01}
    upscale: {enabled: true, features: 64}     # the same tunables as ``tune``: S0, S~0, R (+ dbp)
    train: {steps: 40, batch_size: 4, out_dir: runs/rl}
    distributed: {num_learners: 2}

Placement on a cluster of several nodes follows Ray's custom resources: start each node with its own
(``ray start --resources '{"guide_node": 1}'``) and ask for them per role, ``guide.resources.resources:
{guide_node: 1}`` and ``distributed.learner_resources: {learner_node: 1}``; each actor (and its placement-group
bundle) then asks Ray for them, so it lands only on a node that has them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from rl_statetune_guides.config import CustomResources

from rl_statetune.config import OptimConfig, RunConfig, Section, TrainConfig, load_config


class GuideResources(Section):
    """Where the guide runs (Ray only): overrides of the guide config's resources, and how many replicas."""

    num_cpus: float | None = Field(None, ge=0)
    num_gpus: float | None = Field(None, ge=0)
    resources: CustomResources | None = None   # Ray custom resources per replica, e.g. {guide_node: 1}
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
    # rejection-filtered guidance: a CoT whose final answer the task's verifier rejects never reaches the learner
    # (the CoT terms train on the kept ones; counts logged per step as cot_kept / cot_dropped)
    verify: bool = False

    @model_validator(mode="after")
    def _has_prompt(self):
        if "{prompt}" not in self.prompt_template:
            raise ValueError("guide.cot.prompt_template must contain {prompt}")
        return self


class SelfGuideSection(Section):
    """The learner's own frozen model as the guide, prompted with a header (``rl.self_guide``): no second model."""

    header: str = "Mode: reason\n"            # put before every task prompt the guide sees
    batch_size: int = Field(64, gt=0)          # rows per forward of its generate / score calls


class GuideSection(Section):
    """Which guide writes the chain of thought (at most one source), where it runs, and how its text is used.
    No source: only rewards that need no guide (``reward.terms: {verifier: 1.0}``)."""

    config: str | None = None                  # a guide YAML (configs/guides/*.yaml)
    inline: dict[str, Any] | None = None       # or the same mapping inline
    task_rationales: bool = False              # or a dataset guide serving the task's own reference targets
    self_guide: SelfGuideSection | None = None  # or the frozen learner itself with a header (one process only)
    options: dict[str, Any] = Field(default_factory=dict)  # override the guide config's backend options
    resources: GuideResources = GuideResources()
    cot: CotText = CotText()

    @model_validator(mode="after")
    def _one_source(self):
        if self.sources > 1:
            raise ValueError("set at most one of guide.config (a guide YAML), guide.inline (a guide mapping), "
                             "guide.task_rationales: true and guide.self_guide")
        return self

    @property
    def sources(self) -> int:
        return (self.config is not None) + (self.inline is not None) + self.task_rationales + \
            (self.self_guide is not None)


COT_TERMS = ("match", "guide_logprob", "reverse_kl", "multistep")   # rewards on the guide's CoT positions
ROLLOUT_TERMS = ("verifier", "on_policy", "steps", "corrections")   # rewards on the learner's own sampled answers
GUIDE_SCORED = ("guide_logprob", "reverse_kl", "multistep", "on_policy")   # ask the guide for log-probabilities


class RewardConfig(Section):
    """The reward: one term ``kind`` (a per-token alignment reward on the guide's CoT, ``rl_statetune.rl.rewards``)
    or weighted ``terms``: at most one CoT term plus the rollout terms, on G answers the learner samples itself
    (``rl_statetune.rl.outcome``): ``verifier`` (the task's answer check, 1/0, GRPO over the G answers) and
    ``on_policy`` (per token ``log p_guide(a_t) - log p_learner(a_t)`` of the learner's own text, one guide score
    call per batch) and ``steps`` (the task's check of each equation the answer writes, on the tokens of its
    right-hand side: ``rl.steps``) and ``corrections`` (at each wrong equation the learner writes, the right value
    after its own prefix, taught with advantage w: ``rl.steps.correction_rows``). The loss is the weighted sum of
    the terms' policy-gradient losses."""

    kind: Literal["match", "guide_logprob", "reverse_kl", "multistep"] | None = None   # None: match (no terms)
    terms: dict[Literal["match", "guide_logprob", "reverse_kl", "multistep", "verifier", "on_policy", "steps",
                        "corrections"], float] | None = None   # term -> weight (> 0); None: {kind: 1.0}
    max_new_tokens: int | None = Field(None, gt=0)   # rollout terms: answer length cap (None: eval_max_new_tokens)
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
    # verifier term: the guide's CoT joins its prompt's G sampled answers as one more member of the GRPO group
    # (mixed-policy GRPO, as in LUFFY). The verifier judges it like the learner's answers; its advantage is kept
    # only where positive (a right CoT among wrong answers pulls, a wrong CoT never does) and it vanishes once
    # the learner's own answers are as good as the guide's.
    guide_in_group: bool = False
    # guide_in_group: the share of the guide's CoT tokens its group member starts with (1.0: the whole CoT, all
    # teacher-forced). Below 1 the learner samples the rest of that member after the guide's opening (branched
    # from the guide's prefix, as in BREAD or prefix-guided RL): a weak guide whose steps are wrong can still show
    # where a right answer starts. The opening's advantage is kept only where positive (it is the guide's text);
    # the learner's own continuation gets the member's advantage in full.
    guide_prefix: float = Field(1.0, gt=0, le=1)

    @model_validator(mode="after")
    def _terms(self):
        if self.terms is not None:
            if not self.terms:
                raise ValueError("reward.terms is empty; name at least one term, e.g. {verifier: 1.0}")
            if self.kind is not None:
                raise ValueError(f"reward.kind ({self.kind}) and reward.terms are both set; reward.terms replaces "
                                 f"kind: write terms: {{{self.kind}: 1.0, ...}} and drop kind")
            if any(w <= 0 for w in self.terms.values()):
                raise ValueError("reward.terms weights must be > 0 (leave a term out to turn it off)")
            cot = [t for t in self.terms if t in COT_TERMS]
            if len(cot) > 1:
                raise ValueError(f"reward.terms holds {len(cot)} CoT terms {cot}; at most one of {list(COT_TERMS)}")
        if self.guide_in_group and "verifier" not in self.weights:
            raise ValueError("reward.guide_in_group puts the guide's CoT into the verifier's GRPO group; "
                             "add the verifier term, e.g. terms: {verifier: 1.0}")
        if self.guide_prefix < 1 and not self.guide_in_group:
            raise ValueError("reward.guide_prefix is the share of the guide's CoT in its GRPO group member; "
                             "set reward.guide_in_group: true")
        return self

    @property
    def weights(self) -> dict[str, float]:
        return dict(self.terms) if self.terms is not None else {self.kind or "match": 1.0}

    @property
    def cot_term(self) -> str | None:
        """The reward on the guide's CoT positions, if any."""
        return next((t for t in self.weights if t in COT_TERMS), None)

    @property
    def rollout_terms(self) -> dict[str, float]:
        return {t: w for t, w in self.weights.items() if t in ROLLOUT_TERMS}

    @property
    def guide_scored(self) -> bool:
        """Whether a term asks the guide for log-probabilities (a guide that can score is needed)."""
        return any(t in GUIDE_SCORED for t in self.weights)


class PGConfig(Section):
    """Policy gradient on the initial state only."""

    # group = GRPO (per position, over samples); greedy = ReMax: the baseline is the verifier's verdict on the
    # learner's own greedy answer to the prompt (the verifier term only; one greedy answer per prompt per step)
    advantage: Literal["group", "batch", "ema", "greedy"] = "group"
    normalize_std: bool = True
    # the verifier term's negative advantages are multiplied by this (W-REINFORCE): 1 = the plain estimator;
    # 0 = only answers that beat their baseline pull (rejection-sampling fine-tuning on the learner's own answers)
    negative_weight: float = Field(1.0, ge=0, le=1)
    ema_decay: float = Field(0.9, ge=0, lt=1)
    l2: float = Field(0.0, ge=0)               # penalty l2 * mean(S0^2): keeps the state near the frozen model


class DistributedConfig(Section):
    num_learners: int = Field(2, gt=0)
    learner_cpus: float = Field(1.0, ge=0)
    learner_gpus: float = Field(0.0, ge=0)
    # Ray custom resources per learner (``.options(resources=...)``), e.g. {learner_node: 1}: learners then run
    # only on nodes started with ``ray start --resources '{"learner_node": N}'``
    learner_resources: CustomResources = Field(default_factory=dict)
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

    guide: GuideSection = GuideSection()
    reward: RewardConfig = RewardConfig()
    pg: PGConfig = PGConfig()
    optim: OptimConfig = OptimConfig(lr=0.1, lr_final=0.01)
    train: TrainConfig = TrainConfig(steps=40, batch_size=4, log_every=5, ckpt_every=20, out_dir="runs/rl",
                                     eval_max_new_tokens=40)
    distributed: DistributedConfig = DistributedConfig()

    @model_validator(mode="after")
    def _guide_for_reward(self):
        r, g = self.reward, self.guide
        if g.sources == 0 and (r.cot_term is not None or r.guide_scored or g.cot.verify or r.guide_in_group):
            what = r.cot_term or ("on_policy" if r.guide_scored else
                                  "reward.guide_in_group" if r.guide_in_group else "guide.cot.verify")
            raise ValueError(f"{what} needs a guide: set guide.config, guide.inline, guide.task_rationales or "
                             "guide.self_guide (only reward.terms: {verifier: w} runs without one)")
        if self.pg.advantage == "greedy" and ("verifier" not in r.weights or r.cot_term is not None):
            raise ValueError("pg.advantage: greedy takes the verifier's verdict on the learner's greedy answer as "
                             "the baseline; it needs reward.terms with the verifier and no CoT term "
                             f"(got {r.weights})")
        if g.cot.verify and r.cot_term is None and not r.guide_in_group:
            raise ValueError("guide.cot.verify filters the guide's CoTs for a CoT term (match, guide_logprob, "
                             "reverse_kl, multistep) or reward.guide_in_group; reward.terms has neither")
        return self


def load_rl_config(path: str | Path, overrides: list[str] | None = None) -> RLConfig:
    """Read an RL YAML file; ``overrides`` like ``["train.steps=5"]`` win over the file."""
    return load_config(path, RLConfig, overrides)

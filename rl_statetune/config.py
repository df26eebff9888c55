"""Typed run configuration, loaded from YAML files in ``configs/``.

Each section is a small pydantic model that rejects unknown keys and bad values with a message naming the file
and the field (``configs/x.yaml: train.stepz: extra inputs are not permitted``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(Section):
    path: str = "embedded"                     # "embedded", a .pth/.safetensors file or an fla/HF folder
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"   # weights; states and WKV sums stay float32
    wkv_backend: Literal["auto", "torch", "naive", "triton", "fla"] = "auto"


class DataConfig(Section):
    task: Literal["synthetic", "jsonl"] = "synthetic"
    # synthetic task: "answer_format" (easy problems; teach target_format) or "reasoning" (harder problems; teach
    # step-by-step solutions with no mode header; scored by the final number, so target_format must be "sentence")
    corpus: Literal["answer_format", "reasoning"] = "answer_format"
    target_format: Literal["answer", "hash", "sentence"] = "hash"   # synthetic task: the format to teach
    path: str | None = None                    # jsonl task: rows {"prompt": ..., "target": ...}
    train_size: int = Field(512, gt=0)
    eval_size: int = Field(64, gt=0)
    seed: int = 1234

    @model_validator(mode="after")
    def _path_for_jsonl(self):
        if self.task == "jsonl" and not self.path:
            raise ValueError("data.path is required when data.task is 'jsonl'")
        if self.corpus == "reasoning" and self.target_format != "sentence":
            raise ValueError("data.corpus 'reasoning' ends every solution in 'The answer is N.': "
                             "set data.target_format: sentence")
        return self


class OptimConfig(Section):
    lr: float = Field(1.0, gt=0)               # RWKV-PEFT practice for states: very high, decayed
    lr_final: float = Field(0.01, gt=0)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = Field(1.0, gt=0)


class TrainConfig(Section):
    """The run loop, the same shape for supervised tuning and RL. ``batch_size`` is examples per optimiser step
    (per learner in RL: task prompts whose guide CoTs one learner trains on)."""
    steps: int = Field(100, gt=0)
    batch_size: int = Field(16, gt=0)
    grad_accum: int = Field(1, gt=0)
    max_len: int = Field(256, gt=1)
    log_every: int = Field(10, gt=0)
    ckpt_every: int = Field(50, gt=0)
    out_dir: str = "runs/quickstart"
    seed: int = 0
    eval: bool = True                          # held-out accuracy before / after (synthetic task)
    eval_max_new_tokens: int = Field(32, gt=0)
    on_nonfinite: Literal["error", "skip"] = "error"   # a NaN/inf loss or gradient: stop, or skip that step
    max_skipped_share: float = Field(0.5, ge=0, le=1)  # skip mode: more steps skipped than this -> no state written
    # start the tunables from a state file (the state.safetensors of a tune / rl run: S0, and S~0, R and the
    # feature bases of an upscaled one) instead of zero; "before" in the held-out record is then that state's
    init_state: str | None = None


class UpscaleConfig(Section):
    """Kernel-upscaled state (docs/upscaling.md)."""
    enabled: bool = False
    feature_map: Literal["rbf", "taylor", "performer"] = "rbf"
    features: int = Field(128, gt=0)           # M, the lifted key dimension (taylor: 1+d+d^2 <= M)
    support: Literal["random", "kmeans"] = "kmeans"
    support_path: str | None = None            # from `rl-statetune init-support`; None: computed at start
    support_texts: int = Field(64, gt=0)       # training examples the support vectors are chosen on
    gamma: float | None = Field(None, gt=0)    # None: median-distance heuristic
    lr: float | None = Field(None, gt=0)       # lifted state's peak lr; None: the state's (same schedule)
    train_r: bool = True                       # R also learns by gradient (DBP updates it either way)
    r_lr: float | None = Field(0.01, gt=0)     # R's peak lr; None: the state's


class DBPConfig(Section):
    """Decorrelation of the kernel features after each optimiser step (needs upscale.enabled)."""
    enabled: bool = False
    eta: float = Field(1e-3, gt=0)
    kappa: float = Field(5e-3, ge=0, le=1)
    subsample: float = Field(0.1, gt=0, le=1)


class RunConfig(Section):
    """What every tuning run has: the frozen model, the task data, the optimiser, the loop and the tunables."""
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    upscale: UpscaleConfig = UpscaleConfig()
    dbp: DBPConfig = DBPConfig()

    @model_validator(mode="after")
    def _dbp_needs_upscale(self):
        if self.dbp.enabled and not self.upscale.enabled:
            raise ValueError("dbp.enabled needs upscale.enabled (DBP decorrelates the kernel features)")
        return self


class TuneConfig(RunConfig):
    """Supervised state tuning (``rl-statetune tune``)."""


class ConfigError(ValueError):
    pass


def parse_config(data: dict, cls: type[BaseModel] = TuneConfig, source: str = "config") -> BaseModel:
    try:
        return cls.model_validate(data or {})
    except ValidationError as e:
        lines = [f"{source}: {'.'.join(map(str, err['loc'])) or '<root>'}: {err['msg']}" for err in e.errors()]
        raise ConfigError("invalid configuration\n  " + "\n  ".join(lines)) from None


def load_config(path: str | Path, cls: type[BaseModel] = TuneConfig, overrides: list[str] | None = None):
    """Read YAML into ``cls``; ``overrides`` like ``["train.steps=10", "optim.lr=0.5"]`` win over the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no config file at {path}")
    if not path.is_file():
        raise ConfigError(f"config {path} is not a file; pass a YAML file such as configs/quickstart.yaml")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text (UTF-8) file") from None
    if data is None or data == {}:   # an empty file would run every default silently
        raise ConfigError(f"{path} holds no settings (an empty config); start from one in configs/, e.g. "
                          "configs/quickstart.yaml")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    for item in overrides or []:
        apply_override(data, item)
    return parse_config(data, cls, source=str(path))


def apply_override(data: dict, item: str) -> None:
    """``section.key=value`` (value parsed as YAML) into the nested mapping ``data``."""
    key, sep, value = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r} must look like section.key=value, e.g. train.steps=10")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        raise ConfigError(f"--set {item!r}: {value!r} is not a valid YAML value (quote strings with brackets)") \
            from None
    node = data
    *parents, leaf = key.split(".")
    for i, p in enumerate(parents):
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item!r}: {'.'.join(parents[: i + 1])} is a value ({child!r}), "
                              "not a section; nothing can be set below it")
        node = child
    node[leaf] = parsed

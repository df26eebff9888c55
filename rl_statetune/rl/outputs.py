"""What an RL run writes into ``train.out_dir``, shared by the single-process and the Ray runs.

``checkpoint.pt`` (learner state + optimiser + step, atomic; ``--resume`` continues from it), ``metrics.jsonl``
(one line per logged step, with per-component throughput), ``state.pth`` / ``state.safetensors`` and
``result.json`` at the end.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from rl_statetune.paths import resolve_model_path
from rl_statetune.rl.config import RLConfig
from rl_statetune.state import TimeState, model_fingerprint, save_state
from rl_statetune.atomic import atomic_torch_save
from rl_statetune.trainer import held_out_accuracy

CHECKPOINT = "checkpoint.pt"


@dataclass
class RLResult:
    out_dir: str
    steps: int
    reward_first: float            # mean reward of the first steps (max(3, log_every), at most half the run)
    reward_last: float             # mean reward of as many last steps
    rewards: list[float] = field(default_factory=list)   # per step
    acc_before: float = float("nan")
    acc_after: float = float("nan")
    guide_tokens_per_s: float = float("nan")
    learner_tokens_per_s: float = float("nan")
    learner_wait_s: float = 0.0
    seconds: float = 0.0

    def save(self, out: Path) -> None:
        d = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}
        (out / "result.json").write_text(json.dumps(d, indent=2))


def window_means(rewards: list[float], window: int) -> tuple[float, float]:
    w = max(1, min(window, len(rewards) // 2 or 1))
    return sum(rewards[:w]) / w, sum(rewards[-w:]) / w


class MetricsLog:
    def __init__(self, path: Path):
        self.f = open(path, "a")  # noqa: SIM115 - held for the run, closed by close()

    def write(self, rec: dict) -> None:
        self.f.write(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in rec.items()}) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def save_checkpoint(out: Path, cfg: RLConfig, step: int, learner_ckpt: dict, extra: dict) -> None:
    atomic_torch_save({"step": step, "config": cfg.model_dump(mode="json"), **learner_ckpt, **extra}, out / CHECKPOINT)


def load_checkpoint(out: Path, cfg: RLConfig) -> dict:
    path = out / CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    if saved["config"] != cfg.model_dump(mode="json"):
        raise ValueError(f"--resume: {path} was written with a different configuration")
    return saved


def save_final_state(out: Path, cfg: RLConfig, time_state: torch.Tensor, model_config, steps: int) -> None:
    meta = {"format": "rl_statetune/time_state", "base_model": str(cfg.model.path),
            "base_model_sha256_16": model_fingerprint(resolve_model_path(cfg.model.path)),
            "model_config": model_config.__dict__, "rl_config": cfg.model_dump(mode="json"), "steps": steps}
    save_state(out / "state.pth", time_state)
    save_state(out / "state.safetensors", time_state, metadata=meta)


def heldout(model, tok, held, cfg: RLConfig, time_state: torch.Tensor | None) -> float:
    """Held-out accuracy of the synthetic task (NaN for other tasks or when evaluation is off)."""
    if not cfg.train.eval or cfg.data.task != "synthetic":
        return float("nan")
    tunable = None if time_state is None else TimeState(model.config, time_state.cpu())
    return held_out_accuracy(model, tok, held, tunable, cfg.data.target_format, cfg.train.eval_max_new_tokens)

"""The tunable initial WKV state and its files.

A state file is ``{"blocks.{i}.att.time_state": [H, N, N]}`` (value x key, the `rwkv` package's ``state[3*i+1]``
orientation): saved with ``torch.save`` it loads in RWKV-PEFT, RWKV-Runner and Ai00; saved as ``.safetensors``
it also carries metadata (base model fingerprint, model config, tuning config). Extra tensors (the upscaled
state, support vectors, decorrelation matrix) are stored beside under their own keys.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from rl_statetune.atomic import atomic_torch_save, atomic_write
from rl_statetune.model import RWKV7, RWKV7Config, RecurrentState

KEY = "blocks.{i}.att.time_state"
_KEY_RE = re.compile(r"blocks\.(\d+)\.att\.time_state")


class StateShapeError(ValueError):
    """A state does not fit the model it is loaded into."""


class StateFileError(ValueError):
    """A state file that cannot be read or must not be used (corrupt, truncated, non-finite values)."""


def check_finite(tensors: dict[str, torch.Tensor], source: str) -> None:
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise StateFileError(f"{source}: {bad[0]!r} holds NaN or inf values"
                             + (f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else "")
                             + "; a diverged state is never used: re-tune with a lower optim.lr")


class TimeState(nn.Module):
    """Trainable initial WKV state per layer, [L, H, N, N], zero-initialised: at step 0 the tuned model is the
    frozen model exactly."""

    def __init__(self, cfg: RWKV7Config, init: torch.Tensor | None = None):
        super().__init__()
        shape = cfg.state_shape()
        if init is not None and tuple(init.shape) != shape:
            raise StateShapeError(f"initial state has shape {tuple(init.shape)}, model needs {shape} [L,H,N,N]")
        self.time_state = nn.Parameter(torch.zeros(shape) if init is None else init.detach().float().clone())

    def initial_state(self, model: RWKV7, batch_size: int) -> RecurrentState:
        """A model state whose WKV part is this (differentiable) tuned state, broadcast over the batch."""
        s = model.zero_state(batch_size)
        s.wkv = self.time_state[:, None].expand(-1, batch_size, -1, -1, -1)
        return s


def initial_state_fn(model: RWKV7, state: "TimeState | None"):
    """``batch_size -> RecurrentState | None``: how evaluation and generation ask for the starting state."""
    if state is None:
        return lambda batch_size: None
    return lambda batch_size: state.initial_state(model, batch_size)


@dataclass
class StateFile:
    time_state: torch.Tensor                      # [L, H, N, N] float32
    metadata: dict = field(default_factory=dict)  # str -> JSON-able
    extras: dict = field(default_factory=dict)    # other tensors saved beside (upscaling, DBP)

    def check_fits(self, cfg: RWKV7Config, source: str = "state") -> None:
        want = cfg.state_shape()
        if tuple(self.time_state.shape) != want:
            L, H, N, _ = self.time_state.shape
            raise StateShapeError(
                f"{source} was tuned for a model with {L} layers x {H} heads x head size {N}, but this model has "
                f"{want[0]} layers x {want[1]} heads x head size {want[2]}; states only load into the model "
                "size they were tuned on")

    @property
    def upscaled(self) -> bool:
        """Whether the file carries a kernel-upscaled state (``upscale.*`` tensors; see ``upscale.load_tunable``)."""
        return any(k.startswith("upscale.") for k in self.extras)


def model_fingerprint(path: str | Path) -> str:
    """sha256 of the checkpoint's bytes (of its *.safetensors files for a folder), first 16 hex digits."""
    path = Path(path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def state_to_dict(time_state: torch.Tensor) -> dict[str, torch.Tensor]:
    return {KEY.format(i=i): time_state[i].detach().float().contiguous().cpu() for i in range(time_state.shape[0])}


def save_state(path: str | Path, time_state: torch.Tensor, metadata: dict | None = None,
               extras: dict[str, torch.Tensor] | None = None) -> Path:
    """Write atomically (temp file + rename). The format follows the suffix: ``.pth`` / ``.pt`` or ``.safetensors``."""
    path = Path(path)
    tensors = state_to_dict(time_state)
    for k, v in (extras or {}).items():
        if k in tensors:
            raise ValueError(f"extra tensor name {k!r} collides with a state key")
        tensors[k] = v.detach().contiguous().cpu()
    check_finite(tensors, f"refusing to write {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    if path.suffix in (".pth", ".pt"):
        return atomic_torch_save(tensors, path)
    raise ValueError(f"state file {path} must end in .pth, .pt or .safetensors")


def load_state(path: str | Path) -> StateFile:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no state file at {path}")
    if path.is_dir():
        raise StateFileError(f"{path} is a folder; pass a state file (.pth or .safetensors)")
    metadata: dict = {}
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                tensors = {k: f.get_tensor(k) for k in f.keys()}
                for k, v in (f.metadata() or {}).items():
                    try:
                        metadata[k] = json.loads(v)
                    except json.JSONDecodeError:
                        metadata[k] = v
        else:
            tensors = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch / safetensors raise many kinds for corrupt files
        kind = "safetensors" if path.suffix == ".safetensors" else "torch (.pth)"
        raise StateFileError(f"cannot read {path} as a {kind} state file: it is truncated, corrupt or another "
                             f"format ({type(e).__name__}). Re-export it, or use the run's other state file") \
            from None
    if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise StateFileError(f"{path} does not hold a flat mapping of tensors; is it a state file?")
    layers = {int(m.group(1)): t for k, t in tensors.items() if (m := _KEY_RE.fullmatch(k))}
    if not layers:
        raise StateShapeError(f"{path} holds no 'blocks.N.att.time_state' tensors; is it a state file?")
    if sorted(layers) != list(range(len(layers))):
        raise StateShapeError(f"{path}: layers {sorted(layers)} are not contiguous from 0")
    shapes = {tuple(t.shape) for t in layers.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise StateShapeError(f"{path}: per-layer states must all be [H, N, N], got shapes {sorted(shapes)}")
    check_finite(tensors, str(path))
    time_state = torch.stack([layers[i].float() for i in range(len(layers))])
    extras = {k: t for k, t in tensors.items() if not _KEY_RE.fullmatch(k)}
    return StateFile(time_state, metadata, extras)

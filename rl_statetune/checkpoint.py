"""Reading RWKV-7 weights: BlinkDL ``.pth`` / ``.safetensors`` files and fla / Hugging Face folders.

Everything is converted to the BlinkDL key layout (the one the `rwkv` package and RWKV-LM use); every dimension
of the model is inferred from tensor shapes. Bad input fails with a message that names the file and the key.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from rl_statetune.atomic import atomic_torch_save
from rl_statetune.model import RWKV7, RWKV7Config
from rl_statetune.paths import resolve_model_path

WKV_BACKENDS = ("auto", "torch", "naive", "triton", "fla")


class CheckpointError(ValueError):
    """The file is not a usable RWKV-7 checkpoint (missing, odd or mis-shaped keys)."""


# layer-0 value-residual weights exist in some checkpoints but the model never uses them
IGNORED_KEYS = ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")

_FLA_TOP = {"model.embeddings.weight": "emb.weight", "model.norm.weight": "ln_out.weight",
            "model.norm.bias": "ln_out.bias", "lm_head.weight": "head.weight"}
_FLA_SUB = {"attn": "att", "ffn": "ffn", "pre_norm": "ln0", "attn_norm": "ln1", "ffn_norm": "ln2"}
_FLA_PROJ = {"r_proj": "receptance", "k_proj": "key", "v_proj": "value", "o_proj": "output", "g_norm": "ln_x"}
_FLA_LORA = {"lora.2.bias": "0", "lora.0.weight": "1", "lora.2.weight": "2"}


def fla_key_to_blinkdl(name: str) -> tuple[str, bool]:
    """Map one fla key to (BlinkDL key, needs transpose). Raises CheckpointError for unknown names."""
    if name in _FLA_TOP:
        return _FLA_TOP[name], False
    m = re.fullmatch(r"model\.layers\.(\d+)\.(\w+)\.(.+)", name)
    if not m or m.group(2) not in _FLA_SUB:
        raise CheckpointError(f"unexpected key {name!r} in an fla/Hugging Face RWKV-7 checkpoint")
    layer, sub, rest = m.groups()
    sub = _FLA_SUB[sub]
    lora = re.fullmatch(r"([wavg])_lora\.(lora\.\d\.(?:weight|bias))", rest)
    if lora:
        if lora.group(2) not in _FLA_LORA:
            raise CheckpointError(f"unexpected LoRA tensor {name!r}")
        num = _FLA_LORA[lora.group(2)]
        return f"blocks.{layer}.{sub}.{lora.group(1)}{num}", num in "12"
    head, _, tail = rest.partition(".")
    if head in _FLA_PROJ:
        rest = f"{_FLA_PROJ[head]}.{tail}" if tail else _FLA_PROJ[head]
    return f"blocks.{layer}.{sub}.{rest}", False


def blinkdl_key_to_fla(name: str) -> tuple[str, bool]:
    """Inverse of ``fla_key_to_blinkdl`` (used to export and in tests)."""
    inv_top = {v: k for k, v in _FLA_TOP.items()}
    if name in inv_top:
        return inv_top[name], False
    m = re.fullmatch(r"blocks\.(\d+)\.(\w+)\.(.+)", name)
    if not m:
        raise CheckpointError(f"not a BlinkDL RWKV-7 key: {name!r}")
    layer, sub, rest = m.groups()
    sub = {v: k for k, v in _FLA_SUB.items()}[sub]
    lora = re.fullmatch(r"([wavg])([012])", rest)
    if lora:
        part = {v: k for k, v in _FLA_LORA.items()}[lora.group(2)]
        return f"model.layers.{layer}.{sub}.{lora.group(1)}_lora.{part}", lora.group(2) in "12"
    head, _, tail = rest.partition(".")
    inv_proj = {v: k for k, v in _FLA_PROJ.items()}
    if head in inv_proj:
        rest = f"{inv_proj[head]}.{tail}" if tail else inv_proj[head]
    return f"model.layers.{layer}.{sub}.{rest}", False


def from_fla_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in sd.items():
        key, transpose = fla_key_to_blinkdl(name)
        out[key] = t.t().contiguous() if transpose else t  # same memory layout as a .pth load
    return out


def to_fla_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BlinkDL -> fla keys, with fla's shapes (vectors flattened except the attention x_* mixes)."""
    out = {}
    for name, t in sd.items():
        if name in IGNORED_KEYS:
            continue
        key, transpose = blinkdl_key_to_fla(name)
        t = t.t() if transpose else t
        if t.dim() == 3 and t.shape[:2] == (1, 1) and ".attn.x_" not in key:
            t = t.reshape(-1)
        out[key] = t.contiguous()
    return out


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise CheckpointError(f"cannot read {path} as a torch checkpoint: {e}") from e
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a flat dict of tensors (is it a training checkpoint?)")
    return obj


def load_blinkdl_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read weights from a file or an fla/HF folder and return them under BlinkDL keys."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.is_dir():
        files = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
        if not files:
            raise CheckpointError(f"{path} is a folder without *.safetensors or pytorch_model*.bin files")
        sd = {}
        for f in files:
            sd.update(_read_file(f))
    else:
        sd = _read_file(path)
    if any(k.startswith("model.layers.") or k == "model.embeddings.weight" for k in sd):
        sd = from_fla_state_dict(sd)
    return sd


def _need(sd, key, source):
    if key not in sd:
        raise CheckpointError(f"{source}: missing key {key!r}; not a complete RWKV-7 (x070) checkpoint")
    return sd[key]


def config_from_state_dict(sd: dict[str, torch.Tensor], source: str = "checkpoint") -> RWKV7Config:
    """Infer every dimension from tensor shapes."""
    emb = _need(sd, "emb.weight", source)
    if "blocks.0.att.time_mix_r" in sd or "blocks.0.att.time_decay" in sd:
        raise CheckpointError(f"{source}: this is an RWKV-4/5/6 checkpoint, not RWKV-7 (x070)")
    n_layer = 0
    while f"blocks.{n_layer}.att.receptance.weight" in sd:
        n_layer += 1
    if n_layer == 0:
        raise CheckpointError(f"{source}: missing key 'blocks.0.att.receptance.weight'")
    H, N = _need(sd, "blocks.0.att.r_k", source).shape
    dim_v = sd["blocks.1.att.v1"].shape[1] if n_layer > 1 and "blocks.1.att.v1" in sd else 0
    return RWKV7Config(
        vocab_size=emb.shape[0], n_embd=emb.shape[1], n_layer=n_layer, head_size=N,
        dim_w=_need(sd, "blocks.0.att.w1", source).shape[1], dim_a=_need(sd, "blocks.0.att.a1", source).shape[1],
        dim_v=dim_v, dim_g=_need(sd, "blocks.0.att.g1", source).shape[1],
        dim_ffn=_need(sd, "blocks.0.ffn.key.weight", source).shape[0],
    )


def check_state_dict(sd: dict[str, torch.Tensor], expected: dict[str, torch.Size],
                     source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Validate keys and shapes against the model; vectors stored flat (fla) are reshaped to [1,1,C]."""
    sd = {k: v for k, v in sd.items() if k not in IGNORED_KEYS}
    missing = [k for k in expected if k not in sd]
    if missing:
        raise CheckpointError(f"{source}: missing key {missing[0]!r}"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    extra = [k for k in sd if k not in expected]
    if extra:
        raise CheckpointError(f"{source}: unexpected key {extra[0]!r} (and {len(extra) - 1} more); "
                              "is this an RWKV-7 x070 checkpoint of a supported variant?")
    out = {}
    for k, shape in expected.items():
        t = sd[k]
        if t.shape != shape:
            if t.numel() == shape.numel() and len(shape) == 3 and shape[:2] == (1, 1):
                t = t.reshape(shape)
            else:
                raise CheckpointError(f"{source}: key {k!r} has shape {tuple(t.shape)}, expected {tuple(shape)} "
                                      "(truncated or mixed checkpoint?)")
        out[k] = t
    return out


def build_model(sd: dict[str, torch.Tensor], cfg: RWKV7Config, dtype: torch.dtype = torch.float32,
                device: str | torch.device = "cpu", source: str = "checkpoint") -> RWKV7:
    """A frozen ``RWKV7`` from BlinkDL-keyed weights (checked against the model's keys and shapes)."""
    with torch.device("meta"):
        model = RWKV7(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    sd = check_state_dict(sd, expected, source)
    model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in sd.items()}, assign=True)
    model.requires_grad_(False)
    return model.eval()


def load_model(path: str | Path = "embedded", dtype: str | torch.dtype = "float32",
               device: str | torch.device = "cpu", backend: str = "auto") -> RWKV7:
    """The one model loader: ``"embedded"``, a BlinkDL ``.pth`` / ``.safetensors`` file or an fla / Hugging Face
    folder -> a frozen ``RWKV7`` in ``dtype`` on ``device`` whose WKV recurrence runs on ``backend``."""
    if isinstance(dtype, str):
        if dtype not in ("float32", "bfloat16", "float16", "float64"):
            raise ValueError(f"unknown model dtype {dtype!r}; use float32, bfloat16, float16 or float64")
        dtype = getattr(torch, dtype)
    if backend not in WKV_BACKENDS:
        raise ValueError(f"unknown WKV backend {backend!r}; use one of {', '.join(WKV_BACKENDS)}")
    resolved = resolve_model_path(path)
    sd = load_blinkdl_state_dict(resolved)
    model = build_model(sd, config_from_state_dict(sd, source=str(resolved)), dtype, device, str(resolved))
    model.wkv_backend = backend
    return model


def save_blinkdl(model, path: str | Path, dtype: torch.dtype = torch.bfloat16) -> None:
    """Write the model as a BlinkDL ``.pth`` (with zero layer-0 v0/v1/v2 for loaders that expect them)."""
    sd = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    C = model.config.n_embd
    sd["blocks.0.att.v0"] = torch.zeros(1, 1, C, dtype=dtype)
    sd["blocks.0.att.v1"] = torch.zeros(C, max(model.config.dim_v, 1), dtype=dtype)
    sd["blocks.0.att.v2"] = torch.zeros(max(model.config.dim_v, 1), C, dtype=dtype)
    atomic_torch_save(sd, path)


def save_fla_folder(model, folder: str | Path) -> None:
    """Write an fla / Hugging Face style folder: model.safetensors + a minimal config.json."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    sd = to_fla_state_dict({k: v.detach() for k, v in model.state_dict().items()})
    save_file(sd, str(folder / "model.safetensors"))
    conf = {"model_type": "rwkv7", "architectures": ["RWKV7ForCausalLM"], "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.n_embd, "num_hidden_layers": cfg.n_layer, "head_dim": cfg.head_size,
            "decay_low_rank_dim": cfg.dim_w, "a_low_rank_dim": cfg.dim_a, "v_low_rank_dim": cfg.dim_v,
            "gate_low_rank_dim": cfg.dim_g, "intermediate_size": cfg.dim_ffn, "norm_eps": 1e-5}
    (folder / "config.json").write_text(json.dumps(conf, indent=2))

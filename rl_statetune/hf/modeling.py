"""``RWKV7ForCausalLM``: the project's RWKV-7 as a Hugging Face ``PreTrainedModel`` + ``GenerationMixin``.

The model's parameters are the project's ``RWKV7`` (``model.rwkv.*``, BlinkDL names); there is one
implementation of the model. What this module adds is the Hugging Face convention:

- files in fla-hub's layout (``model_type: rwkv7``, fla's config keys and weight names, converted on load and on
  save by transformers' own weight-conversion machinery), so ``from_pretrained`` / ``AutoModelForCausalLM`` /
  ``pipeline`` read fla-hub folders and ours, with every usual keyword (``dtype``, ``device_map``, ``revision``,
  ``config``, ...), and fla reads ours;
- ``forward(input_ids | inputs_embeds, attention_mask, cache, labels, use_cache, output_hidden_states)`` ->
  ``CausalLMOutputWithPast``; the recurrent state (``RecurrentState``) is carried between calls as the
  generation cache (``RWKV7Cache``), so ``model.generate`` runs one prefill and then one token per step;
- ``attention_mask`` may be right padding (training collators) or left padding (``generate`` on a batch): a
  left-padded row is rotated so that its real tokens come first, run with ``lengths``, and rotated back, so pad
  tokens never enter the state;
- a tuned state (``TimeState`` / ``UpscaledState``) attaches to the backbone (``attach_state``) and is where every
  row starts when no cache is given; it is the only trainable part;
- ``save_pretrained`` writes the config and the tuned state (a few KB to MB) and, with ``weights=True``, the
  weights too (safetensors, sharded by ``max_shard_size``), so the folder is self-contained;
- ``from_pretrained`` also reads the project's own sources ("embedded", BlinkDL ``.pth`` / ``.safetensors``, a
  state-only folder naming its ``base_model``) through ``rl_statetune.checkpoint.load_model``.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from rl_statetune.hf.configuration import RWKV7HFConfig
from rl_statetune.model import RWKV7, RecurrentState
from rl_statetune.state import TimeState, load_state
from rl_statetune.upscale import save_tunable, tunable_from_file

STATE_FILE = "state.safetensors"      # what save_pretrained writes beside config.json
RUNTIME_STATE_FILE = "state.pth"      # the same standard state in the RWKV-PEFT / Runner / Ai00 format


class RWKV7Cache:
    """The recurrent state as a generation cache: ``state`` is the model's ``RecurrentState`` after the tokens
    seen so far. It has constant size (no keys/values grow), so it is never cropped."""

    is_compileable = False
    is_croppable = False

    def __init__(self, state: RecurrentState, seen_tokens: int = 0):
        self.state = state
        self.seen_tokens = seen_tokens

    @property
    def is_linear(self) -> list[bool]:
        return [True] * self.state.wkv.shape[0]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.state = self.state.select(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.state = self.state.select(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        rows = torch.arange(self.state.batch_size, device=self.state.wkv.device).repeat_interleave(repeats)
        self.state = self.state.select(rows)


def padding_layout(input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
    """-> (ids with each row's real tokens first, lengths [B] or None, per-row rotation [B] or None).

    Each row of ``attention_mask`` must be one contiguous run of ones: right padding (training collators), left
    padding (``generate`` on a batch) or both (TRL's GRPO: left-padded prompt + right-padded completion). Its last
    T columns describe ``input_ids`` (during generation the mask also covers the tokens already in the cache)."""
    if attention_mask is None:
        return input_ids, None, None
    B, T = input_ids.shape
    if attention_mask.dim() != 2 or attention_mask.shape[0] != B or attention_mask.shape[1] < T:
        raise ValueError(f"attention_mask of shape {tuple(attention_mask.shape)} does not fit input_ids {(B, T)}")
    mask = attention_mask[:, -T:].to(input_ids.device).bool()
    if bool(mask.all()):
        return input_ids, None, None
    n = mask.sum(1)
    if bool((n == 0).any()):
        raise ValueError("a row of attention_mask has no real tokens")
    pos = torch.arange(T, device=input_ids.device)
    start = mask.int().argmax(1)  # first real token of each row
    if not bool((mask == ((pos[None] >= start[:, None]) & (pos[None] < (start + n)[:, None]))).all()):
        raise ValueError("each row of attention_mask must be one contiguous run of ones (a recurrent model reads "
                         "every token it is given into its state)")
    if not bool(start.any()):
        return input_ids, n, None
    return input_ids.gather(1, (pos[None] + start[:, None]) % T), n, start



# -- fla-hub weight names <-> ours (transformers' weight-conversion machinery, reversed by it on save) -------------

def _fla_conversions() -> list:
    """fla's RWKV-7 weight names -> the HF model's (``model.rwkv.`` + BlinkDL names): renamings, then one converter
    per key where fla stores the tensor transposed (LoRA matrices) or flat (vectors that are [1, 1, C] here).
    Mirrors ``rl_statetune.checkpoint.fla_key_to_blinkdl`` / ``to_fla_state_dict``."""
    from transformers.core_model_loading import ConversionOps, Transpose, WeightConverter, WeightRenaming

    class Reshape(ConversionOps):
        def __init__(self, flat: bool):
            self.flat = flat

        @torch.no_grad()
        def convert(self, input_dict, source_patterns, target_patterns, **kwargs):
            tensors = next(iter(input_dict.values()))
            t = tensors[0] if isinstance(tensors, list) else tensors
            return {target_patterns[0]: t.reshape(-1) if self.flat else t.reshape(1, 1, -1)}

        @property
        def reverse_op(self):
            return Reshape(not self.flat)

    renames = [("model.embeddings.", "model.rwkv.emb."), ("model.norm.", "model.rwkv.ln_out."),
               ("lm_head.", "model.rwkv.head."), (r"model.layers.(\d+).", r"model.rwkv.blocks.\1."),
               (r"\.pre_norm\.", ".ln0."), (r"\.attn_norm\.", ".ln1."), (r"\.ffn_norm\.", ".ln2."),
               (r"\.attn\.", ".att."), (r"\.r_proj\.", ".receptance."), (r"\.k_proj\.", ".key."),
               (r"\.v_proj\.", ".value."), (r"\.o_proj\.", ".output."), (r"\.g_norm\.", ".ln_x.")]
    out = [WeightRenaming(src, dst) for src, dst in renames]
    for x in "wavg":
        out += [WeightConverter(rf"\.att\.{x}_lora\.lora\.0\.weight", f".att.{x}1", [Transpose()]),
                WeightConverter(rf"\.att\.{x}_lora\.lora\.2\.weight", f".att.{x}2", [Transpose()])]
        if x != "g":
            out.append(WeightConverter(rf"\.att\.{x}_lora\.lora\.2\.bias", f".att.{x}0", [Reshape(False)]))
    for name in (r"\.att\.k_k", r"\.att\.k_a", r"\.ffn\.x_k"):
        out.append(WeightConverter(name, name.replace("\\", ""), [Reshape(False)]))
    return out


@contextlib.contextmanager
def _fla_conversions_registered(class_name: str):
    """transformers looks conversions up by class name; fla's model has the same class name, so ours is
    registered only while our ``from_pretrained`` runs (saving uses the instance's ``_weight_conversions``)."""
    from transformers import conversion_mapping as cm

    cm.register_checkpoint_conversion_mapping(class_name, _fla_conversions(), overwrite=True)
    try:
        yield
    finally:
        cm._checkpoint_conversion_mapping_cache.pop(class_name, None)
        cm.USER_REGISTERED_MAPPINGS.discard(class_name)


# files of a saved folder
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
SHIM_FILE = "rl_statetune_hf.py"   # what ``auto_map`` points at: imports the classes from the installed package
SHIM = ('"""Loads the RWKV-7 classes of the installed `rl_statetune` package (pip install rl-statetune) for '
        'trust_remote_code."""\nfrom rl_statetune.hf import RWKV7ForCausalLM, RWKV7HFConfig, RWKV7Model, '
        'RWKVWorldTokenizer  # noqa: F401\n')
AUTO_MAP = {"AutoConfig": "rl_statetune_hf.RWKV7HFConfig", "AutoModel": "rl_statetune_hf.RWKV7Model",
            "AutoModelForCausalLM": "rl_statetune_hf.RWKV7ForCausalLM"}


def write_shim(folder: "str | os.PathLike") -> None:
    (Path(folder) / SHIM_FILE).write_text(SHIM)


_HUB_KWARGS = ("revision", "trust_remote_code", "local_files_only", "cache_dir", "token", "use_safetensors",
               "low_cpu_mem_usage", "adapter_kwargs", "force_download", "subfolder", "proxies", "resume_download",
               "attn_implementation", "code_revision", "use_auth_token", "variant")


def _is_project_source(src: str) -> bool:
    """True for what transformers cannot read itself: "embedded", a BlinkDL file, a folder without config.json
    (BlinkDL safetensors) and a state-only folder (config.json naming ``base_model``, no weight files)."""
    path = Path(src)
    if src == "embedded" or src.startswith("embedded:") or path.is_file():
        return True
    if not path.is_dir():
        return False  # a hub id: transformers' business
    if not (path / "config.json").exists():
        return True
    if not any((path / f).exists() for f in WEIGHT_FILES):
        return True
    return _has_blinkdl_keys(path)


def _has_blinkdl_keys(folder: Path) -> bool:
    """A folder whose safetensors hold BlinkDL names (``emb.weight``, ``blocks.0...``) rather than fla's."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        keys = list(json.loads(index.read_text()).get("weight_map", {}))
    elif (folder / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            keys = list(f.keys())
    else:
        return False
    return any(k == "emb.weight" or k.startswith("blocks.") for k in keys)


class RWKV7PreTrainedModel(PreTrainedModel):
    config_class = RWKV7HFConfig
    config: RWKV7HFConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _is_stateful = True
    supports_gradient_checkpointing = True
    _no_split_modules = ["Block"]
    _keys_to_ignore_on_load_unexpected = [r"blocks\.0\.att\.v[012]"]  # unused layer-0 value-residual weights

    def _init_weights(self, module):
        """Weights come from checkpoints (``from_pretrained``); a model built from a config alone keeps torch's
        default initialisation (``rl_statetune.init.init_rwkv7`` makes a proper random RWKV-7)."""


class RWKV7Model(RWKV7PreTrainedModel):
    """The backbone: ``rwkv`` (the project's ``RWKV7``) and the optional tuned initial state ``tunable``.
    Returns the final ln_out features (``last_hidden_state``) and the state as ``cache``."""

    def __init__(self, config: RWKV7HFConfig, rwkv: RWKV7 | None = None):
        super().__init__(config)
        self.rwkv = rwkv if rwkv is not None else RWKV7(config.to_rwkv())
        self.rwkv.wkv_backend = config.wkv_backend
        self.tunable: TimeState | None = None
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.rwkv.emb

    def set_input_embeddings(self, value):
        self.rwkv.emb = value

    def start_state(self, batch_size: int) -> RecurrentState | None:
        return None if self.tunable is None else self.tunable.initial_state(self.rwkv, batch_size)

    def _run(self, ids, embeds, state, lengths, layers_out):
        """The stack outside autocast: the model runs in its weights' dtype (load ``dtype=torch.bfloat16`` for a
        bf16 model) and the WKV recurrence in float32 as everywhere in the project, so a Trainer's ``bf16=True``
        (mixed precision) leaves the backbone as it is and applies to the parts outside it (TRL's LM head)."""
        dev = (ids if ids is not None else embeds).device.type
        with torch.autocast(dev, enabled=False):
            if embeds is not None:
                embeds = embeds.to(self.rwkv.emb.weight.dtype)
            return self._run_stack(ids, embeds, state, lengths, layers_out)

    def _run_stack(self, ids, embeds, state, lengths, layers_out):
        if not (self.gradient_checkpointing and self.training and torch.is_grad_enabled()):
            return self.rwkv.hidden(ids, state, lengths, embeds, layers_out)
        # the whole stack is one checkpointed segment (its blocks are not separate modules of the forward pass);
        # the state's tensors go in as arguments so that the tuned state gets its gradient
        if state is None:
            state = self.rwkv.zero_state(ids.shape[0] if embeds is None else embeds.shape[0])
        lift = state.lift

        def run(ids, embeds, att_x, wkv, ffn_x, lifted):
            hid, s = self.rwkv.hidden(ids, RecurrentState(att_x, wkv, ffn_x, lifted, lift), lengths, embeds)
            return hid, s.att_x, s.wkv, s.ffn_x, s.lifted

        hid, att_x, wkv, ffn_x, lifted = self._gradient_checkpointing_func(
            run, ids, embeds, state.att_x, state.wkv, state.ffn_x, state.lifted)
        if layers_out is not None:
            raise ValueError("output_hidden_states is not available with gradient checkpointing while training")
        return hid, RecurrentState(att_x, wkv, ffn_x, lifted, lift)

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                cache: RWKV7Cache | None = None, use_cache: bool | None = None,
                inputs_embeds: torch.Tensor | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, past_key_values: RWKV7Cache | None = None,
                **kwargs) -> BaseModelOutputWithPast:
        cache = cache if cache is not None else past_key_values
        if cache is not None and not isinstance(cache, RWKV7Cache):
            raise TypeError(f"RWKV7 carries its recurrent state as an RWKV7Cache, not {type(cache).__name__}")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        B, T = (input_ids if inputs_embeds is None else inputs_embeds).shape[:2]
        ref = torch.zeros(B, T, dtype=torch.long, device=(input_ids if inputs_embeds is None else inputs_embeds).device)
        _, lengths, shift = padding_layout(ref, attention_mask)
        ids, embeds = input_ids, inputs_embeds
        pos = torch.arange(T, device=ref.device)
        if shift is not None:  # rotate each left-padded row so that its real tokens come first
            fwd = (pos[None] + shift[:, None]) % T
            if ids is not None:
                ids = ids.gather(1, fwd)
            else:
                embeds = embeds.gather(1, fwd[..., None].expand(-1, -1, embeds.shape[-1]))
        state = cache.state if cache is not None else self.start_state(B)
        layers = [] if output_hidden_states else None
        hidden, new_state = self._run(ids, embeds, state, lengths, layers)

        def back(h):  # the rows rotated back to the caller's (left-padded) positions
            if shift is None:
                return h
            idx = (pos[None] - shift[:, None]) % T
            return h.gather(1, idx[..., None].expand(-1, -1, h.shape[-1]))

        hidden = back(hidden)
        all_hidden = None
        if layers is not None:  # embeddings (after ln0), each block's output, and the final normed features
            all_hidden = tuple(back(h) for h in layers[:-1]) + (hidden,)
        seen = (cache.seen_tokens if cache is not None else 0) + T
        return BaseModelOutputWithPast(last_hidden_state=hidden, hidden_states=all_hidden,
                                       cache=RWKV7Cache(new_state, seen) if use_cache else None)


class RWKV7ForCausalLM(RWKV7PreTrainedModel, GenerationMixin):
    """``AutoModelForCausalLM.from_pretrained(folder)`` or ``RWKV7ForCausalLM.from_pretrained("embedded",
    state="runs/x/state.safetensors")``; ``model.generate``.

    Parameters: the frozen ``model.rwkv.*`` (requires_grad False when loaded by the project's loader) and, once
    attached, the tuned state ``model.tunable.*`` (trainable)."""

    def __init__(self, config: RWKV7HFConfig, rwkv: RWKV7 | None = None):
        super().__init__(config)
        self.model = RWKV7Model(config, rwkv)
        self._weight_conversions = None  # set by from_pretrained; save_pretrained(weights=True) sets fla's
        self.post_init()

    # -- Hugging Face accessors ----------------------------------------------------------------------------------
    def get_input_embeddings(self):
        return self.model.rwkv.emb

    def set_input_embeddings(self, value):
        self.model.rwkv.emb = value

    def get_output_embeddings(self):
        return self.model.rwkv.head

    def set_output_embeddings(self, new_embeddings):
        self.model.rwkv.head = new_embeddings

    @property
    def rwkv(self) -> RWKV7:
        return self.model.rwkv

    @property
    def tunable(self) -> TimeState | None:
        return self.model.tunable

    # -- tuned state ---------------------------------------------------------------------------------------------
    def attach_state(self, state: "TimeState | str | os.PathLike | None") -> TimeState | None:
        """Start every sequence from ``state``: a ``TimeState`` / ``UpscaledState``, a state file (``.pth`` /
        ``.safetensors``, upscaled or not), or None to detach. Returns the attached module."""
        if state is not None and not isinstance(state, nn.Module):
            state = tunable_from_file(load_state(state), self.rwkv.config, str(state))
        if state is not None:
            state = state.to(self.rwkv.emb.weight.device)
        self.model.tunable = state
        return state

    def new_state(self, upscale: dict | None = None) -> TimeState:
        """Attach and return a zero (trainable) tuned state; ``upscale`` = ``build_upscaled_state`` kwargs."""
        if upscale is None:
            return self.attach_state(TimeState(self.rwkv.config))
        from rl_statetune.upscale import build_upscaled_state

        return self.attach_state(build_upscaled_state(self.rwkv, **upscale))

    # -- forward ---------------------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                cache: RWKV7Cache | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, inputs_embeds: torch.Tensor | None = None,
                output_hidden_states: bool | None = None, logits_to_keep: int | torch.Tensor = 0,
                num_items_in_batch: int | torch.Tensor | None = None, return_logits: bool = True,
                return_dict: bool | None = None, past_key_values: RWKV7Cache | None = None,
                **kwargs) -> CausalLMOutputWithPast:
        """``labels``: the loss is the next-token cross-entropy summed over labels != -100 and divided by their
        count (or ``num_items_in_batch``); the vocabulary projection for it runs only at those positions.
        ``return_logits=False`` skips the full [B, T, V] logits (training needs only the loss)."""
        if kwargs.get("output_attentions"):
            raise ValueError("RWKV-7 has no attention weights to output (output_attentions)")
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, cache=cache, use_cache=use_cache,
                         inputs_embeds=inputs_embeds, output_hidden_states=output_hidden_states,
                         past_key_values=past_key_values)
        hidden = out.last_hidden_state
        head = self.model.rwkv.head
        loss = None
        if labels is not None:
            shifted = labels[:, 1:].to(hidden.device)
            mask = shifted != -100
            logits_t = head(hidden[:, :-1][mask])
            nll = F.cross_entropy(logits_t.float(), shifted[mask], reduction="sum")
            denom = num_items_in_batch if num_items_in_batch is not None else mask.sum().clamp(min=1)
            loss = nll / denom
        logits = None
        if return_logits:
            if isinstance(logits_to_keep, int):
                hidden = hidden[:, -logits_to_keep:] if logits_to_keep > 0 else hidden
            else:
                hidden = hidden[:, logits_to_keep]
            logits = head(hidden)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=out.cache, hidden_states=out.hidden_states)

    # -- files -----------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: "str | os.PathLike" = "embedded", *model_args,
                        state: "TimeState | str | os.PathLike | None" = None, backend: str | None = None,
                        **kwargs) -> "RWKV7ForCausalLM":
        """transformers' ``from_pretrained`` (every usual keyword) for folders with weights (ours or fla-hub's);
        the project's sources ("embedded", BlinkDL files, state-only folders naming ``base_model``) go through
        ``rl_statetune.checkpoint.load_model``. A folder's ``state.safetensors`` is attached unless ``state`` is
        given; ``backend`` picks the WKV backend (default: the config's ``wkv_backend``)."""
        src = str(pretrained_model_name_or_path)
        if _is_project_source(src):
            model = cls._from_project_source(src, backend, **kwargs)
        else:
            want_info = kwargs.pop("output_loading_info", False)
            with _fla_conversions_registered(cls.__name__):
                model, info = super().from_pretrained(src, *model_args, output_loading_info=True, **kwargs)
            missing = [k for k in info.get("missing_keys", ()) if not k.startswith("model.tunable.")]
            if missing or info.get("mismatched_keys"):
                bad = missing or [k[0] if isinstance(k, tuple) else k for k in info["mismatched_keys"]]
                raise ValueError(f"{src}: {'missing' if missing else 'mis-shaped'} weight {bad[0]!r}"
                                 + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
                                 + "; not an RWKV-7 folder in fla-hub's layout")
            if backend is not None:
                model.config.wkv_backend = model.rwkv.wkv_backend = backend
            if not model.config.base_model:  # what a state-only save_pretrained of this model names
                model.config.base_model = src
            model.rwkv.requires_grad_(False)
        saved = Path(src) / STATE_FILE
        model.attach_state(state if state is not None else (saved if saved.is_file() else None))
        model.eval()
        return (model, info) if not _is_project_source(src) and want_info else model

    @classmethod
    def _from_project_source(cls, src: str, backend: str | None, **kwargs) -> "RWKV7ForCausalLM":
        from rl_statetune.checkpoint import load_model

        folder = Path(src)
        conf_file = folder / "config.json"
        if conf_file.is_file() and not any((folder / f).exists() for f in WEIGHT_FILES):
            # a state-only folder: the model is its base_model (any source from_pretrained reads)
            saved = json.loads(conf_file.read_text())
            base = saved.get("base_model")
            if not base:
                raise ValueError(f"{conf_file} names no base_model and the folder holds no weights")
            if Path(base).resolve() == folder.resolve():
                raise ValueError(f"{conf_file} names its own folder as base_model")
            model = cls.from_pretrained(base, backend=backend or saved.get("wkv_backend"), **kwargs)
            model.config.base_model = base
            return model
        # the keywords transformers' from_pretrained takes that mean something here; the rest are refused
        dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None) or "float32"
        device = kwargs.pop("device_map", None) or kwargs.pop("device", None) or "cpu"
        config = kwargs.pop("config", None)
        for k in list(kwargs):  # where to download from, and transformers' internal bookkeeping: nothing to do here
            if k in _HUB_KWARGS or k.startswith("_"):
                kwargs.pop(k)
        if kwargs:
            raise TypeError(f"RWKV7ForCausalLM.from_pretrained({src!r}): unsupported arguments {sorted(kwargs)}")
        if dtype == "auto":
            dtype = "float32"
        if isinstance(dtype, torch.dtype):
            dtype = str(dtype).removeprefix("torch.")
        if isinstance(device, dict):
            devices = set(device.values())
            if len(devices) != 1:
                raise ValueError(f"device_map {device} splits the model; RWKV7 from {src} loads on one device")
            device = devices.pop()
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        base, saved = src, {}
        if conf_file.is_file() and (folder / "model.safetensors").is_file():  # BlinkDL names in the folder
            saved, base = json.loads(conf_file.read_text()), str(folder / "model.safetensors")
        if config is not None and getattr(config, "wkv_backend", None):
            saved["wkv_backend"] = config.wkv_backend
        backend = backend or saved.get("wkv_backend") or "auto"
        rwkv = load_model(base, dtype=dtype, device=device, backend=backend)
        hf_config = RWKV7HFConfig.from_rwkv(rwkv.config, base_model=base, wkv_backend=backend)
        return cls(hf_config, rwkv)

    def save_pretrained(self, save_directory: "str | os.PathLike", *args, weights: bool = False,
                        metadata: dict | None = None, max_shard_size: "int | str" = "5GB", **kwargs) -> None:
        """Write ``config.json`` (fla-hub's layout + ``auto_map``), the tuned state (``state.safetensors`` with
        its upscaled tensors and metadata, ``state.pth`` in the runtime format) and ``rl_statetune_hf.py`` (what
        ``auto_map`` names). ``weights=True`` also writes the weights in fla-hub's names (``model.safetensors``,
        sharded by ``max_shard_size``), so the folder is self-contained; otherwise ``config.json`` names the
        ``base_model`` they are read from. Trainer's keyword arguments (``state_dict``, ...) are accepted."""
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        for f in WEIGHT_FILES:  # never leave stale weights beside a new config
            (out / f).unlink(missing_ok=True)
        for f in out.glob("model-*-of-*.safetensors"):
            f.unlink()
        self.config.auto_map = dict(AUTO_MAP)
        self.config.architectures = [type(self).__name__]
        base = self.config.base_model
        if weights:
            self.config.base_model = None
            self._weight_conversions = _fla_conversions()
            sd = {k: v for k, v in self.state_dict().items() if not k.startswith("model.tunable.")}
            kwargs.pop("state_dict", None)
            try:
                super().save_pretrained(out, *args, state_dict=sd, max_shard_size=max_shard_size, **kwargs)
            finally:
                self.config.base_model = base
        else:
            if not base:
                raise ValueError("this model has no base_model to name; save it with weights=True")
            self.config.save_pretrained(out)
            if self.generation_config is not None and self.can_generate():
                self.generation_config.save_pretrained(out)
        write_shim(out)
        tunable = self.model.tunable
        if tunable is None:
            return
        save_tunable(out, tunable, {"base_model": str(base), "model_config": self.rwkv.config.__dict__,
                                    **(metadata or {})})


__all__ = ["RWKV7Cache", "RWKV7Model", "RWKV7ForCausalLM", "RWKV7PreTrainedModel", "padding_layout",
           "STATE_FILE", "RUNTIME_STATE_FILE", "write_shim"]

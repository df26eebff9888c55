"""``RWKV7ForCausalLM``: the project's RWKV-7 as a Hugging Face ``PreTrainedModel`` + ``GenerationMixin``.

The wrapper holds an ``rl_statetune.model.RWKV7`` and calls it: there is one implementation of the model. What
it adds is the Hugging Face calling convention:

- ``forward(input_ids, attention_mask, cache, labels, use_cache)``; the recurrent state (``RecurrentState``) is
  carried between calls as the generation cache (``RWKV7Cache``), so ``model.generate`` runs one prefill and then
  one token per step, exactly like ``rl_statetune.generation.generate``;
- ``attention_mask`` may be right padding (training collators) or left padding (``generate`` on a batch): a
  left-padded row is rotated so that its real tokens come first, run with ``lengths``, and rotated back, so pad
  tokens never enter the state;
- a tuned state (``TimeState`` / ``UpscaledState``) attaches to the backbone (``attach_state``) and is where every
  row starts when no cache is given; it is the only part that is trainable;
- ``from_pretrained`` reads what ``rl_statetune.checkpoint.load_model`` reads ("embedded", BlinkDL ``.pth`` /
  ``.safetensors``, fla / Hugging Face folders) and folders written by ``save_pretrained``, which writes a config
  and the tuned state only (never the frozen weights: a few MB).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.utils import ModelOutput

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


@dataclass
class RWKV7ModelOutput(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    cache: RWKV7Cache | None = None


@dataclass
class RWKV7CausalLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: RWKV7Cache | None = None


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


class RWKV7PreTrainedModel(PreTrainedModel):
    config_class = RWKV7HFConfig
    config: RWKV7HFConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _is_stateful = True
    supports_gradient_checkpointing = False
    _no_split_modules = ["Block"]

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
        self.post_init()

    def get_input_embeddings(self):
        return self.rwkv.emb

    def set_input_embeddings(self, value):
        self.rwkv.emb = value

    def start_state(self, batch_size: int) -> RecurrentState | None:
        return None if self.tunable is None else self.tunable.initial_state(self.rwkv, batch_size)

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                cache: RWKV7Cache | None = None, use_cache: bool | None = None,
                inputs_embeds: torch.Tensor | None = None, return_dict: bool | None = None,
                **kwargs) -> RWKV7ModelOutput:
        if inputs_embeds is not None:
            raise NotImplementedError("RWKV7Model takes input_ids, not inputs_embeds")
        if input_ids is None:
            raise ValueError("input_ids is required")
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        B, T = input_ids.shape
        ids, lengths, shift = padding_layout(input_ids, attention_mask)
        state = cache.state if cache is not None else self.start_state(B)
        hidden, new_state = self.rwkv.hidden(ids, state, lengths)
        if shift is not None:  # rotate the rows back to the caller's (left-padded) positions
            pos = torch.arange(T, device=ids.device)
            back = (pos[None] - shift[:, None]) % T
            hidden = hidden.gather(1, back[..., None].expand(-1, -1, hidden.shape[-1]))
        seen = (cache.seen_tokens if cache is not None else 0) + T
        return RWKV7ModelOutput(last_hidden_state=hidden,
                                cache=RWKV7Cache(new_state, seen) if use_cache else None)


class RWKV7ForCausalLM(RWKV7PreTrainedModel, GenerationMixin):
    """``RWKV7ForCausalLM.from_pretrained("embedded", state="runs/x/state.safetensors")``; ``model.generate``.

    Parameters: the frozen ``model.rwkv.*`` (requires_grad False) and, once attached, the tuned state
    ``model.tunable.*`` (trainable)."""

    def __init__(self, config: RWKV7HFConfig, rwkv: RWKV7 | None = None):
        super().__init__(config)
        self.model = RWKV7Model(config, rwkv)
        self.post_init()

    # -- Hugging Face accessors ----------------------------------------------------------------------------------
    def get_input_embeddings(self):
        return self.model.rwkv.emb

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
                use_cache: bool | None = None, logits_to_keep: int | torch.Tensor = 0,
                num_items_in_batch: int | torch.Tensor | None = None, return_logits: bool = True,
                return_dict: bool | None = None, **kwargs) -> RWKV7CausalLMOutput:
        """``labels``: the loss is the next-token cross-entropy summed over labels != -100 and divided by their
        count (or ``num_items_in_batch``); the vocabulary projection for it runs only at those positions.
        ``return_logits=False`` skips the full [B, T, V] logits (training needs only the loss)."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, cache=cache, use_cache=use_cache,
                         **kwargs)
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
        return RWKV7CausalLMOutput(loss=loss, logits=logits, cache=out.cache)

    # -- files -----------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: "str | os.PathLike" = "embedded", *args,
                        state: "TimeState | str | os.PathLike | None" = None, dtype="float32", device="cpu",
                        backend: str | None = None, **kwargs) -> "RWKV7ForCausalLM":
        """Load the frozen weights with ``rl_statetune.checkpoint.load_model`` (never from a hub).

        ``pretrained_model_name_or_path``: "embedded", a BlinkDL file, an fla/HF folder, or a folder written by
        ``save_pretrained`` (config.json naming the base model + ``state.safetensors``, attached unless ``state``
        is given)."""
        from rl_statetune.checkpoint import load_model

        if args or kwargs:
            unknown = sorted(kwargs) + [repr(a) for a in args]
            raise TypeError(f"RWKV7ForCausalLM.from_pretrained: unsupported arguments {unknown}")
        if isinstance(dtype, torch.dtype):
            dtype = str(dtype).removeprefix("torch.")
        path = Path(str(pretrained_model_name_or_path))
        base, saved_state, saved_backend = str(pretrained_model_name_or_path), None, "auto"
        conf_file = path / "config.json"
        if path.is_dir() and conf_file.exists():
            conf = json.loads(conf_file.read_text())
            if conf.get("model_type") == RWKV7HFConfig.model_type:
                if not conf.get("base_model"):
                    raise ValueError(f"{conf_file} names no base_model to load the frozen weights from")
                base, saved_backend = conf["base_model"], conf.get("wkv_backend", "auto")
                if (path / STATE_FILE).exists():
                    saved_state = path / STATE_FILE
        backend = backend or saved_backend
        rwkv = load_model(base, dtype=dtype, device=device, backend=backend)
        config = RWKV7HFConfig.from_rwkv(rwkv.config, base_model=base, wkv_backend=backend)
        model = cls(config, rwkv)
        model.attach_state(state if state is not None else saved_state)
        return model.eval()

    def save_pretrained(self, save_directory: "str | os.PathLike", *args, metadata: dict | None = None,
                        **kwargs) -> None:
        """Write ``config.json`` (dimensions + ``base_model``) and the tuned state (``state.safetensors`` with its
        upscaled tensors and metadata, ``state.pth`` in the runtime format). The frozen weights are not written:
        ``from_pretrained(save_directory)`` reads them from ``base_model`` again. Trainer's keyword arguments
        (``state_dict``, ``safe_serialization``, ...) are accepted and ignored."""
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        base = self.config.base_model
        if base and base != "embedded" and Path(base).exists():
            self.config.base_model = str(Path(base).resolve())
        self.config.save_pretrained(out)
        tunable = self.model.tunable
        if tunable is None:
            return
        save_tunable(out, tunable, {"base_model": str(self.config.base_model),
                                    "model_config": self.rwkv.config.__dict__, **(metadata or {})})


__all__ = ["RWKV7Cache", "RWKV7Model", "RWKV7ForCausalLM", "RWKV7PreTrainedModel", "padding_layout",
           "STATE_FILE", "RUNTIME_STATE_FILE"]

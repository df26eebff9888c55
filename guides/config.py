"""Typed, strict guide configuration (unknown keys are errors) and its YAML loader.

A guide config names a ``backend`` and that backend's ``options``::

    backend: transformers
    resources: {num_cpus: 2, num_gpus: 0}     # used when the guide runs as a Ray actor
    # resources: {num_cpus: 2, resources: {guide_node: 1}}   # + Ray custom resources: only nodes started with
    #                                           # ray start --resources '{"guide_node": 1}' host it
    options:
      model: /models/smollm2-135m-instruct
      dtype: float32
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import GuideError

__all__ = [
    "BACKENDS",
    "GuideConfig",
    "CustomResources",
    "Resources",
    "TransformersOptions",
    "VLLMOptions",
    "OpenAIOptions",
    "DatasetOptions",
    "SubprocessOptions",
    "load_guide_config",
]

Backend = Literal["transformers", "vllm", "openai", "dataset", "subprocess"]
BACKENDS: tuple[str, ...] = ("transformers", "vllm", "openai", "dataset", "subprocess")
DType = Literal["auto", "float32", "bfloat16", "float16"]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


RAY_BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


def check_custom_resources(value: dict[str, float]) -> dict[str, float]:
    """Ray custom resources (``.options(resources=...)``): names other than Ray's own, amounts > 0."""
    builtin = [k for k in value if k in RAY_BUILTIN_RESOURCES]
    if builtin:
        raise ValueError(f"{builtin} are not custom resources; use num_cpus / num_gpus")
    bad = [k for k, v in value.items() if not v > 0]
    if bad:
        raise ValueError(f"custom resource amounts must be > 0 ({bad}); leave a resource out instead")
    return value


CustomResources = Annotated[dict[str, float], AfterValidator(check_custom_resources)]


class Resources(_Strict):
    """Ray resources of the actor hosting the guide (ignored when the guide runs in-process): ``num_cpus``,
    ``num_gpus`` and custom ``resources`` as in Ray's actor options; a custom resource pins the actor to the
    nodes started with it (``ray start --resources '{"guide_node": 1}'``)."""

    num_cpus: Annotated[float, Field(ge=0)] = 1.0
    num_gpus: Annotated[float, Field(ge=0)] = 0.0
    resources: CustomResources = Field(default_factory=dict)


def looks_like_a_path(name: str) -> bool:
    """Whether a ``model`` / ``tokenizer`` value can only be a local folder (a hub id is ``name`` or
    ``namespace/name``)."""
    return (os.path.isabs(name) or name.startswith(("./", "../", "~")) or name.endswith("/")
            or name.count("/") > 1 or os.path.isdir(name.split("/")[0]) and "/" in name)


def check_local_model(name: str, field: str = "model") -> None:
    """Refuse a ``model`` / ``tokenizer`` that names a local folder which does not exist, before the library
    takes it for a hub id (transformers: "Repo id must be in the form ..."; vLLM: a hub download)."""
    path = Path(name).expanduser()
    if not path.exists() and looks_like_a_path(name):
        raise GuideError(f"guide options.{field}: no model folder at {name} ({path.resolve()} does not exist); "
                         "build it first (scripts/make_smollm2_guide.py, scripts/make_task_guide.py) or fix the path")


class _LocalModelOptions(_Strict):
    """Options shared by the backends that load the model weights themselves."""

    model: str = Field(description="Local folder or Hugging Face hub id of a causal LM.")
    tokenizer: str | None = Field(None, description="Tokenizer folder/id when it differs from the model.")
    trust_remote_code: bool = False
    dtype: DType = "auto"
    chat_template: bool | None = Field(
        None, description="Wrap prompts in the tokenizer's chat template; None = when the tokenizer has one."
    )
    system_prompt: str | None = None
    top_p: TopP = 1.0


class TransformersOptions(_LocalModelOptions):
    """In-process Hugging Face ``AutoModelForCausalLM`` (CPU or one GPU)."""

    backend: Literal["transformers"] = "transformers"
    gguf_file: str | None = Field(None, description="Load (and dequantise) this GGUF file inside `model`.")
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    batch_size: Annotated[int, Field(ge=1)] = 8
    seed: int | None = Field(None, description="Seeds sampling per call without touching the global RNG.")
    num_threads: Annotated[int, Field(ge=1)] | None = Field(
        None, description="torch.set_num_threads on load (process-wide: for a guide in its own actor/process)."
    )


class VLLMOptions(_LocalModelOptions):
    """Offline ``vllm.LLM`` engine in this process (or in a Ray actor, see ``ray_actor``)."""

    backend: Literal["vllm"] = "vllm"
    tensor_parallel_size: Annotated[int, Field(ge=1)] = 1
    pipeline_parallel_size: Annotated[int, Field(ge=1)] = 1
    gpu_memory_utilization: Annotated[float, Field(gt=0.0, le=1.0)] = 0.9
    max_model_len: Annotated[int, Field(ge=1)] | None = None
    quantization: str | None = None
    enforce_eager: bool = False
    seed: int = 0
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra keyword arguments passed verbatim to vllm.LLM."
    )

    @model_validator(mode="after")
    def _no_shadowed_kwargs(self) -> VLLMOptions:
        named = {
            "model",
            "tokenizer",
            "trust_remote_code",
            "dtype",
            "tensor_parallel_size",
            "pipeline_parallel_size",
            "gpu_memory_utilization",
            "max_model_len",
            "quantization",
            "enforce_eager",
            "seed",
        }
        clash = sorted(named & set(self.engine_kwargs))
        if clash:
            raise ValueError(f"engine_kwargs repeats named options {clash}; set them as options instead")
        return self


class OpenAIOptions(_Strict):
    """Any OpenAI-compatible completions server (``vllm serve``, SGLang, TGI ...)."""

    backend: Literal["openai"] = "openai"
    base_url: str = Field("http://127.0.0.1:8000/v1", description="Server root including /v1.")
    model: str = Field(description="Model name the server serves (the `model` request field).")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key, if any.")
    prompt_template: str = Field(
        "{prompt}", description="Each {prompt} becomes the prompt, other text is literal; the server applies no template."
    )
    timeout_s: Annotated[float, Field(gt=0)] = 30.0
    # all attempts of one request together, backoff included: a server that accepts connections but never
    # answers fails within this (raise both for long generations on a big model)
    total_timeout_s: Annotated[float, Field(gt=0)] = 45.0
    max_retries: Annotated[int, Field(ge=0)] = 3
    backoff_s: Annotated[float, Field(ge=0)] = 0.5
    backoff_max_s: Annotated[float, Field(ge=0)] = 8.0
    batch_size: Annotated[int, Field(ge=1)] = 32
    top_p: TopP = 1.0
    seed: int | None = None
    score_max_tokens: Literal[0, 1] = Field(
        1, description="max_tokens of echo scoring requests; 0 where the server accepts it (vLLM does; saves a step)."
    )
    tokenize: Literal["joint", "vllm"] = Field(
        "joint", description="How scoring tokenizes: 'joint' sends prompt + continuation as one text (any server; a "
        "token may straddle the boundary); 'vllm' tokenizes the prompt and the continuation on their own with vLLM's "
        "/tokenize (at base_url's root) and sends token ids, as the transformers and vllm backends do.")
    top_logprobs: bool = Field(
        True, description="score(top_k=k) reads the echo's top_logprobs (vLLM: each token's text as it reads appended "
        "to the text); false for a server whose token strings are not that (rewards then use exact queries).")

    @model_validator(mode="after")
    def _check(self) -> OpenAIOptions:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if "{prompt}" not in self.prompt_template:
            raise ValueError("prompt_template must contain {prompt}")
        return self


class DatasetOptions(_Strict):
    """Reference rationales from a dataset: the guide 'writes' the dataset's answer for a known prompt."""

    backend: Literal["dataset"] = "dataset"
    path: str | None = Field(None, description="Local .jsonl/.json/.csv/.parquet file.")
    hf_name: str | None = Field(None, description="Hub dataset name (e.g. openai/gsm8k), via datasets.")
    hf_config: str | None = None
    split: str = "train"
    prompt_field: str = "question"
    target_field: str = "answer"
    strip_calculator_annotations: bool = Field(False, description="Remove GSM8K '<<48/2=24>>' annotations.")
    on_missing: Literal["error", "empty"] = "error"
    on_duplicate: Literal["first", "error"] = "first"
    score_logprob: Annotated[float, Field(le=0)] | None = Field(
        None, description="Constant per-piece log-prob returned by score(); None makes score() raise."
    )

    @model_validator(mode="after")
    def _one_source(self) -> DatasetOptions:
        if (self.path is None) == (self.hf_name is None):
            raise ValueError("set exactly one of `path` (local file) and `hf_name` (hub dataset)")
        return self


class SubprocessOptions(_Strict):
    """Another guide config, run in a child process with another Python (vLLM's own environment on CPU)."""

    backend: Literal["subprocess"] = "subprocess"
    guide: dict[str, Any] = Field(description="The inner guide config (backend, options), e.g. a vllm guide.")
    python: str | None = Field(None, description="The child's Python; default: the python_env variable's value.")
    python_env: str | None = "RL_STATETUNE_VLLM_PYTHON"
    start_timeout_s: Annotated[float, Field(gt=0)] = 900.0
    call_timeout_s: Annotated[float, Field(gt=0)] = 600.0

    @model_validator(mode="after")
    def _inner_is_a_guide(self) -> SubprocessOptions:
        inner = GuideConfig.model_validate(self.guide)
        if inner.backend == "subprocess":
            raise ValueError("a subprocess guide cannot wrap another subprocess guide")
        return self


Options = Annotated[TransformersOptions | VLLMOptions | OpenAIOptions | DatasetOptions | SubprocessOptions,
                    Field(discriminator="backend")]


class GuideConfig(_Strict):
    """Which guide to build and how. ``options`` is validated against the ``backend``'s option model."""

    backend: Backend
    name: str | None = Field(None, description="Label for logs and the Ray actor name.")
    resources: Resources = Resources()
    options: Options

    @model_validator(mode="before")
    @classmethod
    def _route_options(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "options" not in data:
            return data
        backend, options = data.get("backend"), data["options"]
        if isinstance(options, dict):
            if "backend" in options and options["backend"] != backend:
                raise ValueError(f"options.backend {options['backend']!r} contradicts backend {backend!r}")
            data = {**data, "options": {**options, "backend": backend}}
        elif isinstance(options, BaseModel) and getattr(options, "backend", None) != backend:
            raise ValueError(f"options are {type(options).__name__} but backend is {backend!r}")
        return data


def load_guide_config(path: str | Path) -> GuideConfig:
    """Read a guide YAML file. Raises ``ValueError`` naming the file and the offending keys."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"guide config not found: {path}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"guide config {path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"guide config {path} must be a mapping, got {type(raw).__name__}")
    try:
        return GuideConfig.model_validate(raw)
    except ValidationError as e:
        raise ValueError(f"invalid guide config {path}:\n{e}") from e

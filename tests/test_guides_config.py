"""Guide config: strict validation, YAML loading of the shipped configs, the factory's dispatch."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from rl_statetune_guides import (
    DatasetOptions,
    GuideConfig,
    OpenAIOptions,
    TransformersOptions,
    VLLMOptions,
    build_guide,
    load_guide_config,
)
from rl_statetune_guides.dataset_guide import DatasetGuide

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "guides"
SHIPPED = {
    "smollm2_transformers.yaml": TransformersOptions,
    "smollm2_vllm_cpu.yaml": VLLMOptions,
    "dataset_gsm8k.yaml": DatasetOptions,
    "openai_local.yaml": OpenAIOptions,
    "task_guide_openai.yaml": OpenAIOptions,
    "llama70b_vllm_tp8.yaml": VLLMOptions,
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_configs_load(name: str) -> None:
    cfg = load_guide_config(CONFIGS / name)
    assert isinstance(cfg.options, SHIPPED[name]) and cfg.options.backend == cfg.backend
    # A config survives a JSON round trip (how it travels to a Ray actor).
    assert GuideConfig.model_validate(cfg.model_dump(mode="json")) == cfg


def test_llama70b_is_a_real_tp8_config() -> None:
    cfg = load_guide_config(CONFIGS / "llama70b_vllm_tp8.yaml")
    assert cfg.options.tensor_parallel_size == 8 and cfg.resources.num_gpus == 8
    assert cfg.options.dtype == "bfloat16" and cfg.options.max_model_len == 8192


def test_unknown_option_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("backend: transformers\noptions:\n  model: m\n  temprature: 0.5\n")
    with pytest.raises(ValueError, match=r"(?s)invalid guide config .*g\.yaml.*temprature.*Extra inputs"):
        load_guide_config(path)


def test_unknown_top_level_key_and_backend() -> None:
    with pytest.raises(ValidationError, match="guide_model"):
        GuideConfig.model_validate({"backend": "dataset", "guide_model": "x", "options": {"path": "a.jsonl"}})
    with pytest.raises(ValidationError, match="backend"):
        GuideConfig.model_validate({"backend": "llamacpp", "options": {"model": "x"}})


def test_options_are_checked_against_their_backend() -> None:
    # tensor_parallel_size is a vllm option, not a transformers one.
    with pytest.raises(ValidationError, match="tensor_parallel_size"):
        GuideConfig.model_validate({"backend": "transformers", "options": {"model": "m", "tensor_parallel_size": 2}})
    with pytest.raises(ValidationError, match="contradicts"):
        GuideConfig.model_validate({"backend": "vllm", "options": {"backend": "openai", "model": "m"}})
    with pytest.raises(ValidationError, match="backend is 'vllm'"):
        GuideConfig(backend="vllm", options=TransformersOptions(model="m"))


@pytest.mark.parametrize(
    ("backend", "options", "message"),
    [
        ("vllm", {"model": "m", "gpu_memory_utilization": 1.5}, "less than or equal to 1"),
        ("vllm", {"model": "m", "tensor_parallel_size": 0}, "greater than or equal to 1"),
        ("vllm", {"model": "m", "engine_kwargs": {"dtype": "half"}}, "repeats named options"),
        ("transformers", {"model": "m", "dtype": "fp8"}, "dtype"),
        ("openai", {"model": "m", "base_url": "localhost:8000"}, "http://"),
        ("openai", {"model": "m", "prompt_template": "no placeholder"}, r"contain \{prompt\}"),
        ("openai", {"model": "m", "prompt_template": "{question}"}, r"contain \{prompt\}"),
        ("dataset", {}, "exactly one of"),
        ("dataset", {"path": "a.jsonl", "hf_name": "gsm8k"}, "exactly one of"),
        ("dataset", {"path": "a.jsonl", "score_logprob": 0.5}, "less than or equal to 0"),
    ],
)
def test_invalid_values(backend: str, options: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        GuideConfig.model_validate({"backend": backend, "options": options})


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="guide config not found"):
        load_guide_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must be a mapping"):
        load_guide_config(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("backend: [\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_guide_config(tmp_path / "bad.yaml")


def test_build_guide_from_path_mapping_and_model(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "q1", "answer": "a1"}\n')
    raw = {"backend": "dataset", "options": {"path": str(data)}}
    (tmp_path / "g.yaml").write_text(f"backend: dataset\noptions:\n  path: {data}\n")
    for spec in (raw, GuideConfig.model_validate(raw), tmp_path / "g.yaml", str(tmp_path / "g.yaml")):
        guide = build_guide(spec)
        assert isinstance(guide, DatasetGuide) and guide.generate(["q1"]) == ["a1"]
    with pytest.raises(TypeError, match="GuideConfig"):
        build_guide(42)  # type: ignore[arg-type]

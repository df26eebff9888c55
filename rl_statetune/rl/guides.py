"""From the ``guide`` section of an RL config to a guide config (and, in-process, a live guide)."""

from __future__ import annotations

import json
from pathlib import Path

from rl_statetune_guides import DatasetOptions, GuideConfig, Resources, load_guide_config

from rl_statetune.config import DataConfig
from rl_statetune.data import load_examples
from rl_statetune.rl.config import GuideSection
from rl_statetune.rl.cot import guide_prompt

RATIONALES_FILE = "task_rationales.jsonl"


def write_task_rationales(section: GuideSection, data: DataConfig, path: Path) -> Path:
    """The task's own reference targets as a dataset-guide file: {"question": guide prompt, "answer": target}."""
    train, held = load_examples(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps({"question": guide_prompt(e.prompt, section.cot), "answer": e.target.strip()}) + "\n"
                     for e in train + held)
    return path


def resolve_guide_config(section: GuideSection, data: DataConfig, work_dir: str | Path) -> GuideConfig:
    """The guide's config, with the section's resource overrides applied.

    ``task_rationales`` writes ``work_dir/task_rationales.jsonl`` and serves it with the dataset backend.
    """
    if section.config is not None:
        cfg = load_guide_config(section.config)
    elif section.inline is not None:
        cfg = GuideConfig.model_validate(section.inline)
    else:
        path = write_task_rationales(section, data, Path(work_dir) / RATIONALES_FILE)
        cfg = GuideConfig(backend="dataset", name="task-rationales", resources=Resources(num_cpus=0),
                          options=DatasetOptions(path=str(path.resolve()), prompt_field="question",
                                                 target_field="answer"))
    if section.options:
        data = cfg.model_dump(mode="json")
        cfg = GuideConfig.model_validate({**data, "options": {**data["options"], **section.options}})
    r = section.resources
    res = cfg.resources.model_copy(update={k: v for k, v in (("num_cpus", r.num_cpus), ("num_gpus", r.num_gpus),
                                                             ("resources", r.resources)) if v is not None})
    return cfg.model_copy(update={"resources": res})

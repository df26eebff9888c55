"""`ray job submit` entry point of a distributed RL run: ``rl-statetune rl --ray`` inside the job.

    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env launch/runtime_env.yaml \
        -- python -m launch.submit_entry --submit-dir "$PWD" --config configs/rl_1p5b_70b_8gpu.yaml [--set ...]

Inside a job, RAY_ADDRESS points at the cluster, so the run joins it (distributed.num_cpus is ignored). A run
that cannot be placed fails in the pre-flight check, naming what is missing, instead of waiting for resources
that never come. From a shell, ``python -m launch.submit_entry ARGS`` is ``rl-statetune rl --ray ARGS``.

Paths. The job runs in Ray's copy of the working directory, without the git-ignored ``models/`` and ``runs/``
(launch/runtime_env.yaml), and that copy is gone (or reused by the next job) when the job ends. So the run's
relative local paths (``train.out_dir``, ``model.path``, ``data.path``, ``upscale.support_path``,
``train.init_state`` and the guide's model / tokenizer folders) are resolved against ``--submit-dir``, the
submitter's working directory that their shell expands in ``"$PWD"``: the guide loads the folder the user built
and the run folder lands where the user finds it. Inside a job without ``--submit-dir``, a relative local path ends the job at once, in one line naming it
and this fix. Every node must see the submitter's folders (one machine, or a shared file system).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

IN_A_JOB = "RAY_JOB_CONFIG_JSON_ENV_VAR"   # set by Ray in a submitted job's driver


def _local(value: str | None, base: Path, model: bool = False) -> bool:
    """Whether ``value`` is a relative path of a local file or folder (a model may also be a hub id)."""
    if not value or Path(value).expanduser().is_absolute() or value.startswith("~"):
        return False
    if model:
        from rl_statetune_guides.config import looks_like_a_path

        return looks_like_a_path(value) or (base / value).exists() or (base / value.split("/")[0]).is_dir()
    return True


def _guide_overrides(cfg, base: Path) -> dict[str, str]:
    """``--set`` overrides that make the guide's relative model / tokenizer folders absolute."""
    from rl_statetune_guides import GuideConfig
    from rl_statetune_guides.config import load_guide_config

    g = cfg.guide
    if g.config is None and g.inline is None:
        return {}
    gc = load_guide_config(g.config) if g.config is not None else GuideConfig.model_validate(g.inline)
    options = {**gc.model_dump(mode="json")["options"], **g.options}
    out: dict[str, str] = {}
    if options.get("backend") == "subprocess":
        inner = json.loads(json.dumps(options["guide"]))
        inner_opts = inner.setdefault("options", {})
        changed = False
        for key in ("model", "tokenizer"):
            if _local(inner_opts.get(key), base, model=True):
                inner_opts[key] = str(base / inner_opts[key])
                changed = True
        if changed:
            out["guide.options.guide"] = json.dumps(inner)
        return out
    for key in ("model", "tokenizer"):
        if _local(options.get(key), base, model=True):
            out[f"guide.options.{key}"] = str(base / options[key])
    return out


def relative_paths(config: str, sets: list[str], base: Path) -> dict[str, str]:
    """``{config key: absolute path}`` for every relative local path of the run, resolved against ``base``."""
    from rl_statetune.rl.config import load_rl_config

    cfg = load_rl_config(config, sets)
    out: dict[str, str] = {}
    if _local(cfg.train.out_dir, base):
        out["train.out_dir"] = str(base / cfg.train.out_dir)
    path = cfg.model.path
    if not (path == "embedded" or path.startswith("embedded:")) and _local(path, base):
        out["model.path"] = str(base / path)
    for key, value in (("data.path", cfg.data.path), ("upscale.support_path", cfg.upscale.support_path),
                       ("train.init_state", cfg.train.init_state)):
        if _local(value, base):
            out[key] = str(base / value)
    return {**out, **_guide_overrides(cfg, base)}


def job_args(argv: list[str], in_a_job: bool) -> list[str]:
    """The ``rl-statetune rl --ray`` arguments: ``argv`` less ``--submit-dir``, plus ``--set`` overrides making the
    relative local paths absolute. Raises ``ValueError`` inside a job with relative paths and no ``--submit-dir``."""
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--submit-dir", default=None)
    ap.add_argument("--config", default=None)
    ap.add_argument("--set", action="append", default=[])
    known, _ = ap.parse_known_args(argv)
    rest = list(argv)
    if known.submit_dir is not None:
        i = next(i for i, a in enumerate(rest) if a == "--submit-dir" or a.startswith("--submit-dir="))
        del rest[i: i + (1 if "=" in rest[i] else 2)]
    if known.config is None or (known.submit_dir is None and not in_a_job):
        return rest
    base = Path(known.submit_dir or ".").expanduser().resolve()
    if known.submit_dir is not None and not base.is_dir():
        raise ValueError(f"--submit-dir {known.submit_dir} is not a folder; pass the submitter's working directory "
                         "(--submit-dir \"$PWD\")")
    resolved = relative_paths(known.config, known.set, base)
    if known.submit_dir is None:
        if resolved:
            names = ", ".join(f"{k}={v}" for k, v in ((k, _shown(k, v, base)) for k, v in resolved.items()))
            raise ValueError(f"this Ray job runs in a temporary copy of the working directory (without models/ and "
                             f"runs/), where the relative paths {names} would not be yours; add --submit-dir \"$PWD\" "
                             "to the entry command (python -m launch.submit_entry --submit-dir \"$PWD\" ...) or make "
                             "them absolute")
        return rest
    return rest + [x for k, v in resolved.items() for x in ("--set", f"{k}={v}")]


def _shown(key: str, value: str, base: Path) -> str:
    """The path as the user wrote it (relative), for the error message."""
    try:
        return str(Path(value).relative_to(base)) if key != "guide.options.guide" else "(the inner guide's model)"
    except ValueError:
        return value


def main(argv: list[str] | None = None) -> int:
    from rl_statetune.cli import main as cli_main

    argv = sys.argv[1:] if argv is None else argv
    try:
        args = job_args(argv, bool(os.environ.get(IN_A_JOB)))
    except (ValueError, OSError) as e:
        print(f"rl-statetune rl: error: {e}", file=sys.stderr)
        return 2
    return cli_main(["rl", "--ray", *args])


if __name__ == "__main__":
    sys.exit(main())

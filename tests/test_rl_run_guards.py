"""Issue 24, the RL / Ray cases: the documented cluster recipe fits the demo's pre-flight, result.json carries what
the console prints, the measuring script reads an RL config, paths of a submitted job, the failing actor named."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rl_statetune.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]


def test_the_documented_ray_heads_fit_the_demos_preflight(tmp_path):
    """Issue 24.15: docs/rl.md's `ray start --head --num-cpus 2` failed the demo's own pre-flight (needs 3)."""
    from rl_statetune.rl.config import load_rl_config
    from rl_statetune.rl.guides import resolve_guide_config
    from rl_statetune.rl.ray_executor import plan_bundles, preflight

    cfg = load_rl_config(REPO / "configs/rl_cpu_demo.yaml")
    g, learners = plan_bundles(cfg, resolve_guide_config(cfg.guide, cfg.data, tmp_path))
    found = 0
    for doc in ("README.md", "docs/rl.md"):
        for n in re.findall(r"ray start --head --num-cpus (\d+)", (REPO / doc).read_text()):
            preflight(g + learners, {"CPU": float(n)})
            found += 1
    assert found >= 2
    with pytest.raises(Exception, match="needs 3 CPU"):
        preflight(g + learners, {"CPU": 2.0})


def test_result_json_carries_the_steady_idle_share(tiny_world_ckpt, tmp_path, capsys):
    """Issue 24.15: the console's 'idle share after it' was not in result.json."""
    from rl_statetune.rl.driver import RLResult, steady_idle_share

    out = tmp_path / "rl"
    cfg = tmp_path / "rl.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"path": str(tiny_world_ckpt)}, "data": {"train_size": 8, "eval_size": 4},
        "guide": {"task_rationales": True}, "reward": {"kind": "match", "samples": 2},
        "train": {"steps": 3, "batch_size": 2, "log_every": 1, "out_dir": str(out), "eval": False}}))
    assert cli_main(["rl", "--config", str(cfg), "--no-progress"]) == 0
    res = json.loads((out / "result.json").read_text())
    want = steady_idle_share(RLResult.from_dict(res))
    assert res["steady_idle_share"] == pytest.approx(want) and 0 <= want <= 1
    assert f"idle share after it {100 * want:.1f} %" in capsys.readouterr().out


def test_measure_reasoning_reads_an_rl_config():
    """Issue 24.15: scripts/measure_reasoning.py refused configs/rl_cpu_demo.yaml (guide/reward/pg/distributed:
    Extra inputs are not permitted); it reads the run sections it needs."""
    res = subprocess.run([sys.executable, "scripts/measure_reasoning.py", "--config", "configs/rl_cpu_demo.yaml",
                          "--limit", "2", "--max-new-tokens", "4"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    row = json.loads(res.stdout.strip().splitlines()[-1])
    assert row["model"] == "embedded:reason" and row["n"] == 2


ray = pytest.importorskip("ray", reason="Ray is a dev dependency: pip install 'rl-statetune[ray]'")


@pytest.fixture(scope="module")
def local_ray():
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def ray_cfg(tmp_path: Path, model, **over) -> Path:
    base = {"model": {"path": str(model)}, "data": {"train_size": 8, "eval_size": 4},
            "guide": {"task_rationales": True}, "reward": {"kind": "match", "samples": 2},
            "train": {"steps": 3, "batch_size": 2, "log_every": 1, "ckpt_every": 1, "out_dir": str(tmp_path / "rl"),
                      "eval": False},
            "distributed": {"num_learners": 1, "learner_cpus": 1, "queue_size": 2, "ready_timeout_s": 30,
                            "guide_timeout_s": 120, "guide_max_restarts": 0}}
    for k, v in over.items():
        base[k] = v if k == "guide" else {**base.get(k, {}), **v}
    path = tmp_path / "rl.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def test_a_guide_that_fails_to_start_on_ray_is_named_and_no_resume_offered(local_ray, tiny_world_ckpt, tmp_path,
                                                                           capsys):
    """Issue 24.13: a guide actor that fails in its constructor was reported as 'a learner failed during step 1
    (ActorDiedError ...); the last checkpoint is in train.out_dir, continue with --resume' with no checkpoint."""
    missing = tmp_path / "models" / "task-guide"
    cfg = ray_cfg(tmp_path, tiny_world_ckpt, guide={"inline": {"backend": "transformers",
                                                               "options": {"model": str(missing)}},
                                                    "resources": {"num_cpus": 1}})
    assert cli_main(["rl", "--ray", "--config", str(cfg), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    line = [x for x in err.splitlines() if "error:" in x][-1]
    assert "the guide failed" in line and f"GuideError: guide options.model: no model folder at {missing}" in line, \
        err[-3000:]
    assert "learner" not in line.split("(")[0] and "--resume" not in line, line


def test_a_submitted_jobs_relative_paths_resolve_against_the_submitters_folder(tmp_path):
    """Issues 24.3 / 24.14: in a `ray job submit` job the working directory is Ray's temporary copy without
    models/: the guide's relative models/task-guide went to the hub, and the relative train.out_dir landed in the
    copy (out of reach; reused by the next job, which then found 'already holds a run'). With --submit-dir "$PWD"
    they resolve against the submitter's folder; without it, the job stops at once naming them and the fix."""
    sys.path.insert(0, str(REPO))
    from launch.submit_entry import job_args

    from rl_statetune.rl.config import load_rl_config
    from rl_statetune.rl.guides import resolve_guide_config

    user = tmp_path / "user"
    (user / "models" / "task-guide").mkdir(parents=True)
    cfg = "configs/rl_cpu_demo.yaml"
    args = job_args(["--submit-dir", str(user), "--config", cfg, "--set", "train.steps=2"], in_a_job=True)
    assert "--submit-dir" not in args and str(user) not in args[:4]
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    run = load_rl_config(REPO / cfg, sets)
    assert run.train.out_dir == str(user / "runs/rl_cpu_demo") and run.train.steps == 2
    guide = resolve_guide_config(run.guide, run.data, tmp_path).options
    assert guide.guide["options"]["model"] == str(user / "models/task-guide")
    assert guide.guide["options"]["dtype"] == "float32"          # the rest of the inner guide kept
    # an absolute path stays; outside a job nothing changes without --submit-dir
    args = job_args(["--submit-dir", str(user), "--config", cfg, "--set", f"train.out_dir={tmp_path}/o"], True)
    assert not any(a.startswith("train.out_dir=" + str(user)) for a in args)
    assert job_args(["--config", cfg], in_a_job=False) == ["--config", cfg]


def test_a_job_without_submit_dir_stops_in_one_line_naming_the_paths(tmp_path):
    """Issue 24.3: a real `python -m launch.submit_entry` process as Ray starts it in a job (its environment
    marks the job): relative paths and no --submit-dir end it at once, exit 2, before any Ray or model work."""
    res = subprocess.run([sys.executable, "-m", "launch.submit_entry", "--config", "configs/rl_cpu_demo.yaml"],
                         cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "RAY_JOB_CONFIG_JSON_ENV_VAR": "{}", "RAY_ADDRESS": ""})
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("rl-statetune rl: error:"), lines
    assert "train.out_dir=runs/rl_cpu_demo" in lines[0] and '--submit-dir "$PWD"' in lines[0], lines[0]


def test_a_diverged_ray_run_names_optim_lr_and_claims_no_checkpoint(local_ray, tmp_path, capsys):
    """Issue 24.4 on Ray: the learner's non-finite policy reaches the driver as the learner's own one-line error
    (naming optim.lr), not as 'the last checkpoint is in train.out_dir, continue with --resume'."""
    cfg = ray_cfg(tmp_path, "embedded", optim={"lr": 1e20}, reward={"kind": "match", "samples": 4},
                  train={"steps": 3, "batch_size": 2, "log_every": 1, "ckpt_every": 100,
                         "out_dir": str(tmp_path / "rl"), "eval": False})
    assert cli_main(["rl", "--ray", "--config", str(cfg), "--no-progress"]) == 2
    line = [x for x in capsys.readouterr().err.splitlines() if "error:" in x][-1]
    assert "optim.lr 1e+20" in line and "policy is not finite" in line and "--resume" not in line, line
    assert not (tmp_path / "rl" / "state.pth").exists()

"""Ray runs: resource pre-flight, 2 data-parallel learners + guide actor, and `ray job submit` (slow)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from rl_statetune.rl.config import RLConfig
from rl_statetune.rl.driver import run_rl
from rl_statetune.rl.ray_executor import ResourceError, collective_backend, plan_bundles, preflight
from rl_statetune.rl.guides import resolve_guide_config
from rl_statetune.state import load_state

ray = pytest.importorskip("ray", reason="Ray is a dev dependency: pip install 'rl-statetune[ray]'")
REPO = Path(__file__).resolve().parents[1]


def cfg_for(model: str, out: Path, **over) -> RLConfig:
    base = {
        "model": {"path": str(model)},
        "data": {"train_size": 8, "eval_size": 4},
        "guide": {"task_rationales": True, "options": {"score_logprob": -1.0}},
        "reward": {"kind": "reverse_kl", "samples": 2},
        "train": {"steps": 3, "batch_size": 2, "log_every": 1, "ckpt_every": 3, "out_dir": str(out),
                  "eval": False},
        "distributed": {"num_learners": 2, "learner_cpus": 1, "queue_size": 2, "ready_timeout_s": 20},
    }
    for k, v in over.items():
        base[k] = {**base.get(k, {}), **v}
    return RLConfig.model_validate(base)


def test_preflight_names_what_is_missing(tmp_path):
    cfg = cfg_for("embedded", tmp_path, guide={"resources": {"num_cpus": 2, "num_gpus": 1, "replicas": 2}},
                  distributed={"num_learners": 4, "learner_gpus": 1})
    g, lrn = plan_bundles(cfg, resolve_guide_config(cfg.guide, cfg.data, tmp_path))
    assert g == [{"CPU": 2, "GPU": 1}] * 2 and lrn == [{"CPU": 1, "GPU": 1}] * 4
    assert collective_backend(cfg) == "nccl"
    preflight(g + lrn, {"CPU": 8, "GPU": 6})
    with pytest.raises(ResourceError, match=r"needs 6 GPU \(cluster has 4\)") as e:
        preflight(g + lrn, {"CPU": 16, "GPU": 4})
    assert "CPU" not in str(e.value).split("needs")[1].split(":")[0]
    with pytest.raises(ResourceError, match=r"8 CPU \(cluster has 2\), 6 GPU \(cluster has 0\)"):
        preflight(g + lrn, {"CPU": 2})


@pytest.fixture(scope="module")
def local_ray():
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_two_learners_stay_in_sync_and_match_single_learner_files(local_ray, tiny_world_ckpt, tmp_path):
    res = run_rl(cfg_for(tiny_world_ckpt, tmp_path), ray=True, progress=False)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3]
    assert lines[-1]["tokens"] > 0 and lines[-1]["guide_tokens_per_s"] > 0 and "learner_wait_s" in lines[-1]
    state = load_state(tmp_path / "state.pth").time_state
    assert state.abs().sum() > 0                  # the all-reduced gradient moved the state
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert ck["step"] == 3 and len(ck["ranks"]) == 2
    torch.testing.assert_close(ck["tunable"]["time_state"], state)
    assert len(res.rewards) == 3
    # resources come back (asynchronously): the actors were killed and the placement group removed
    deadline = time.time() + 20
    while ray.available_resources().get("CPU", 0) < 3 and time.time() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) == pytest.approx(3)


@pytest.fixture(scope="module")
def one_process_runs(tiny_world_ckpt, tmp_path_factory):
    """Rewards and S0 of the one-process run of ``cfg_for`` with one learner, per model dtype (computed on demand)."""
    runs: dict = {}

    def get(dtype: str):
        if dtype not in runs:
            out = tmp_path_factory.mktemp(f"one_{dtype}")
            res = run_rl(with_dtype(cfg_for(tiny_world_ckpt, out, distributed={"num_learners": 1}), dtype),
                         progress=False)
            runs[dtype] = (res.rewards, load_state(out / "state.pth").time_state)
        return runs[dtype]
    return get


def with_dtype(cfg: RLConfig, dtype: str) -> RLConfig:
    d = cfg.model_dump(mode="json")
    d["model"]["dtype"] = dtype
    return RLConfig.model_validate(d)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_ray_learner_runs_the_model_in_the_configured_dtype(local_ray, tiny_world_ckpt, one_process_runs, tmp_path,
                                                            dtype):
    """model.dtype reaches the Ray learner actor: a one-learner Ray run in half precision gives the one-process
    run's rewards and S0 in that dtype (bit-identical here; bound 1e-5), and rewards within 3 % of float32's that
    are not float32's own (the half-precision rewards differ from float32's by 0.3-1.3 % on this tiny model)."""
    res = run_rl(with_dtype(cfg_for(tiny_world_ckpt, tmp_path, distributed={"num_learners": 1}), dtype), ray=True,
                 progress=False)
    state = load_state(tmp_path / "state.pth").time_state
    assert state.dtype == torch.float32                        # states stay float32
    rewards, s_one = one_process_runs(dtype)
    assert res.rewards == pytest.approx(rewards, rel=1e-5)
    torch.testing.assert_close(state, s_one, rtol=1e-5, atol=1e-7)
    rewards32, _ = one_process_runs("float32")
    assert res.rewards == pytest.approx(rewards32, rel=0.03)
    assert max(abs(a - b) for a, b in zip(res.rewards, rewards32)) > 1e-3   # not the float32 run


UPSCALED = {"upscale": {"enabled": True, "features": 12, "support": "random", "r_lr": 0.05},
            "dbp": {"enabled": True, "eta": 0.05, "subsample": 0.5}}


def test_ray_runs_are_reproducible_all_reduce_every_tunable_and_resume_after_a_killed_learner(
        local_ray, tiny_world_ckpt, tmp_path):
    """Two learners on the upscaled + DBP state: two runs of one config give identical artefacts (S0, S~0, R),
    and kill -9 of a learner process mid-run, then --resume, gives the uninterrupted run's artefact."""
    import threading

    def cfg(out):
        return cfg_for(tiny_world_ckpt, out, train={"steps": 10, "ckpt_every": 2}, **UPSCALED)

    run_rl(cfg(tmp_path / "a"), ray=True, progress=False)
    run_rl(cfg(tmp_path / "b"), ray=True, progress=False)
    a, b = (load_state(tmp_path / x / "state.safetensors") for x in "ab")
    assert torch.equal(a.time_state, b.time_state) and a.extras.keys() == b.extras.keys()
    assert any(k.endswith(".R") for k in a.extras)
    for k in a.extras:
        assert torch.equal(a.extras[k], b.extras[k]), k

    c = cfg(tmp_path / "c")
    failure: list[BaseException] = []
    t = threading.Thread(target=lambda: _catch(failure, run_rl, c, ray=True, progress=False))
    t.start()
    kill_actor_after_checkpoint(tmp_path / "c", "rl-learner-1-")
    t.join(timeout=300)
    assert failure and "--resume" in str(failure[0]), failure
    assert str(failure[0]).startswith("learner 1 failed during step"), failure   # the killed one (issue 24.13)
    assert not (tmp_path / "c" / "state.pth").exists()
    run_rl(c, resume=True, ray=True, progress=False)
    r = load_state(tmp_path / "c" / "state.safetensors")
    assert torch.equal(r.time_state, a.time_state)
    for k in a.extras:
        assert torch.equal(r.extras[k], a.extras[k]), k


def kill_actor_after_checkpoint(out: Path, name_prefix: str) -> None:
    """Once the run in ``out`` wrote its first checkpoint, SIGKILL the process of the actor named ``prefix*``."""
    deadline = time.time() + 300
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    names = [x["name"] for x in ray.util.list_named_actors(all_namespaces=True) if x["name"].startswith(name_prefix)]
    os.kill(ray.get(ray.get_actor(names[0]).pid.remote()), signal.SIGKILL)


def _catch(into: list, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except BaseException as e:  # noqa: BLE001 - the test inspects it
        into.append(e)


def test_unplaceable_run_fails_fast(local_ray, tiny_world_ckpt, tmp_path):
    t0 = time.time()
    with pytest.raises(ResourceError, match=r"needs 5 CPU \(cluster has 3\)"):
        run_rl(cfg_for(tiny_world_ckpt, tmp_path, distributed={"num_learners": 5}), ray=True, progress=False)
    assert time.time() - t0 < 30


@pytest.mark.slow
def test_smollm2_guide_two_learners_reward_rises(local_ray, smollm2_dir, tmp_path):
    """configs/rl_cpu_demo.yaml with SmolLM2-135M-Instruct (transformers) in the guide actor, two learners tune
    the embedded state. The prompt pool is one global batch, so every step rewards the same CoTs: the reward rises."""
    from rl_statetune.rl.config import load_rl_config
    cfg = load_rl_config(REPO / "configs/rl_cpu_demo.yaml", [
        "guide.config=configs/guides/smollm2_transformers.yaml", f"guide.options.model={smollm2_dir}",
        "guide.options.num_threads=1", "data.train_size=16", "guide.cot.max_tokens=32", f"train.out_dir={tmp_path}", "train.eval=false",
        "train.steps=10", "distributed.guide_timeout_s=900"])
    res = run_rl(cfg, ray=True, progress=False)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # step 1 is scored before any update (the frozen model's agreement); with deterministic batches per learner
    # the rise is complete by step 2, so the first 3-step window would already be trained
    first = lines[0]["match_argmax"]
    last = sum(x["match_argmax"] for x in lines[-3:]) / 3
    assert last > first + 0.02, [x["match_argmax"] for x in lines]
    assert sum(res.rewards[-3:]) / 3 > res.rewards[0]
    assert lines[-1]["guide_tokens_per_s"] > 0 and lines[-1]["learner_tokens_per_s"] > 0


@pytest.mark.slow
def test_ray_job_submit(tiny_world_ckpt, tmp_path):
    """`ray start --head` + `ray job submit --working-dir . -- python -m launch.submit_entry` on CPU."""
    if ray.is_initialized():
        ray.shutdown()
    ray_bin = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    # a relative train.out_dir, as the shipped configs have: --submit-dir resolves it against the submitter's folder,
    # not Ray's temporary copy of the working directory (issue 24.3 / 24.14)
    cfg = cfg_for(tiny_world_ckpt, Path("runs/job_out"))
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    # the head enables token auth (token in ~/.ray/auth_token); the job CLI only reads it in token mode
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "token"}
    subprocess.run([ray_bin, "start", "--head", "--num-cpus", "3", "--include-dashboard", "true",
                    "--dashboard-host", "127.0.0.1"], check=True, env=env, capture_output=True)
    try:
        job = subprocess.run(
            [ray_bin, "job", "submit", "--address", "http://127.0.0.1:8265", "--working-dir", str(REPO),
             "--runtime-env", str(REPO / "launch/runtime_env.yaml"), "--",
             sys.executable, "-m", "launch.submit_entry", "--submit-dir", str(tmp_path), "--config",
             str(tmp_path / "job.yaml")],
            env=env, capture_output=True, text=True, timeout=600, check=False)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "succeeded" in job.stdout and "reward" in job.stdout
        assert (tmp_path / "runs" / "job_out" / "state.pth").exists(), job.stdout[-3000:]
        # the documented shell command joins the running head by itself (no RAY_ADDRESS needed)
        env_no_addr = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}
        cfg2 = cfg_for(tiny_world_ckpt, tmp_path / "out2")
        (tmp_path / "job2.yaml").write_text(yaml.safe_dump(cfg2.model_dump(mode="json")))
        run = subprocess.run([sys.executable, "-m", "launch.submit_entry", "--config",
                              str(tmp_path / "job2.yaml"), "--no-progress"], cwd=REPO, env=env_no_addr,
                             capture_output=True, text=True, timeout=600, check=False)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert "joined the running Ray cluster" in run.stderr and (tmp_path / "out2" / "state.pth").exists()
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, check=False)


def test_a_killed_guide_actor_is_restarted_and_every_step_runs_once(local_ray, tiny_world_ckpt, tmp_path):
    """kill -9 of the guide actor's process mid-run: Ray restarts it (distributed.guide_max_restarts), its pending
    calls are retried, and the run finishes with every step done once and the uninterrupted run's state."""
    import threading

    def cfg(out):
        return cfg_for(tiny_world_ckpt, out, train={"steps": 8, "ckpt_every": 2})

    ref = run_rl(cfg(tmp_path / "ref"), ray=True, progress=False)
    c = cfg(tmp_path / "c")
    done: list = []
    t = threading.Thread(target=lambda: done.append(run_rl(c, ray=True, progress=False)))
    t.start()
    kill_actor_after_checkpoint(tmp_path / "c", "task-rationales-0-")
    t.join(timeout=300)
    assert done, "the run did not survive the guide's death"
    steps = [json.loads(x)["step"] for x in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))
    assert done[0].rewards == ref.rewards
    assert torch.equal(load_state(tmp_path / "c" / "state.pth").time_state,
                       load_state(tmp_path / "ref" / "state.pth").time_state)

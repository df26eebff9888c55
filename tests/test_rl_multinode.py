"""A Ray cluster of two nodes on this machine, through ``ray job submit`` (issue 23.2).

The head offers ``{"guide_node": 1}`` and 3 CPUs, the second node ``{"learner_node": 2}`` and 2 CPUs; the run asks
for them by config (``guide.resources.resources``, ``distributed.learner_resources``). The head could host the
whole run (3 bundles of 1 CPU), and Ray's ``PACK`` would put it there: only the config sends the learners away.

Checked: the guide actor ran on the head and both learners on the second node (node ids from the run's result
against Ray's own ``ray list nodes``); the artefact equals the one-node run's of the same config; killing the
second node (its raylet, and its workers with it) mid-run ends the job in one line naming ``--resume``, and
``--resume`` once a node is back gives the uninterrupted artefact. Ray gets its own temp dir and ports, and every
process of the cluster is killed by id at the end, pass or fail (never ``ray stop``: it would end every Ray on the
machine).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml

from rl_statetune.rl.driver import run_rl
from rl_statetune.state import load_state

ray = pytest.importorskip("ray", reason="Ray is a dev dependency: pip install 'rl-statetune[ray]'")

from ray_cluster import LocalCluster  # noqa: E402
from test_rl_distributed import cfg_for  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GUIDE_NODE, LEARNER_NODE = {"guide_node": 1.0}, {"learner_node": 2.0}


def placed_cfg(model, out: Path):
    """The cheapest run that exercises placement: dataset-guide CoTs (the task's own rationales), a tiny model,
    2 learners of 1 CPU, 40 short steps (the node is killed after the first checkpoint, at step 4)."""
    return cfg_for(model, out, guide={"resources": {"num_cpus": 1, "resources": {"guide_node": 1}}},
                   train={"steps": 40, "ckpt_every": 4},
                   distributed={"learner_resources": {"learner_node": 1}, "ready_timeout_s": 60})


def artefact(out: Path) -> tuple[bytes, list[float]]:
    """The state file's bytes and the per-step rewards of the result."""
    return (out / "state.pth").read_bytes(), json.loads((out / "result.json").read_text())["rewards"]


def test_guide_and_learners_on_their_nodes_by_config_and_resume_after_the_learner_node_dies(
        tiny_world_ckpt, tmp_path, monkeypatch):
    t0 = time.time()
    # the one-node run of the same config: both custom resources on one local node (as in LocalCluster, Ray's memory
    # monitor is off: on a shared machine it kills our workers for memory other processes hold)
    monkeypatch.setenv("RAY_memory_monitor_refresh_ms", "0")
    if ray.is_initialized():
        ray.shutdown()
    temp_dir = tempfile.mkdtemp(prefix="rlray1-", dir="/tmp")
    ray.init(address="local", num_cpus=3, resources={**GUIDE_NODE, **LEARNER_NODE}, include_dashboard=False,
             log_to_driver=False, _temp_dir=temp_dir)
    try:
        one = run_rl(placed_cfg(tiny_world_ckpt, tmp_path / "one"), ray=True, progress=False)
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert len(set(one.nodes.values())) == 1 and len(one.nodes) == 3
    t_one = time.time() - t0

    cluster = LocalCluster()
    try:
        head = cluster.start_head(3, GUIDE_NODE)
        learner_node = cluster.add_node(2, LEARNER_NODE)
        t_cluster = time.time() - t0

        def submit(name: str, *extra: str):
            (tmp_path / f"{name}.yaml").write_text(
                yaml.safe_dump(placed_cfg(tiny_world_ckpt, tmp_path / name).model_dump(mode="json")))
            return cluster.submit(f"{name}-{int(time.time())}", [sys.executable, "-m", "launch.submit_entry",
                                  "--config", str(tmp_path / f"{name}.yaml"), "--no-progress", *extra],
                                  REPO, REPO / "launch/runtime_env.yaml")

        # the uninterrupted two-node run: placed as asked, the one-node run's artefact
        job = submit("two")
        out, _ = job.communicate(timeout=600)
        assert job.returncode == 0, out[-4000:]
        guide_id, learner_id = cluster.node_id(head), cluster.node_id(learner_node)
        assert guide_id != learner_id
        nodes = json.loads((tmp_path / "two" / "result.json").read_text())["nodes"]
        assert nodes == {"guide 0": guide_id, "learner 0": learner_id, "learner 1": learner_id}, (nodes, guide_id)
        assert f"learner 1 {learner_id}" in out                    # and the run's log says so
        assert artefact(tmp_path / "two") == artefact(tmp_path / "one")
        t_two = time.time() - t0

        # the learners' node dies mid-run: one line naming --resume, no traceback, no state
        name = "killed"
        job = submit(name)
        ckpt = tmp_path / name / "checkpoint.pt"
        deadline = time.time() + 300
        while not ckpt.exists() and job.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        cluster.kill_node(learner_node)
        out, _ = job.communicate(timeout=600)
        assert job.returncode != 0 and "failed" in out, out[-4000:]
        logs = cluster.job_logs(job.args[job.args.index("--submission-id") + 1])
        resume = [x for x in logs.splitlines() if "--resume" in x]
        assert len(resume) == 1 and resume[0].startswith("rl-statetune rl: error: "), logs[-4000:]
        assert "Traceback" not in logs, logs[-4000:]
        assert not (tmp_path / name / "state.pth").exists()
        stopped_at = torch.load(ckpt, weights_only=False)["step"]
        assert 4 <= stopped_at < 40
        t_killed = time.time() - t0

        # the node comes back (a new raylet, a new node id); --resume gives the uninterrupted artefact
        back = cluster.add_node(2, LEARNER_NODE)
        job = submit(name, "--resume")
        out, _ = job.communicate(timeout=600)
        assert job.returncode == 0, out[-4000:]
        assert f"resuming {tmp_path / name} at step {stopped_at}" in out
        assert artefact(tmp_path / name) == artefact(tmp_path / "one")
        new_id = cluster.node_id(back)
        nodes = json.loads((tmp_path / name / "result.json").read_text())["nodes"]
        assert new_id != learner_id and nodes == {"guide 0": guide_id, "learner 0": new_id, "learner 1": new_id}
        torch.testing.assert_close(load_state(tmp_path / name / "state.pth").time_state,
                                   load_state(tmp_path / "one" / "state.pth").time_state, rtol=0, atol=0)
    finally:
        cluster.stop()
    t_all = time.time() - t0
    print(f"\nwall time: one-node run {t_one:.0f} s, cluster up {t_cluster - t_one:.0f} s, two-node run "
          f"{t_two - t_cluster:.0f} s, killed run {t_killed - t_two:.0f} s, resumed {t_all - t_killed:.0f} s, "
          f"{t_all:.0f} s in all")


def test_placement_fields_are_strict_and_reach_the_bundles(tmp_path):
    """Per-role custom resources go into the bundles (the RL config's over the guide config's); Ray's own
    resource names, amounts <= 0 and misspelt keys are refused; a resource no node offers is named up front."""
    from rl_statetune.rl.config import RLConfig
    from rl_statetune.rl.guides import resolve_guide_config
    from rl_statetune.rl.ray_executor import ResourceError, plan_bundles, preflight

    inline = {"backend": "dataset", "resources": {"num_cpus": 2, "resources": {"big_disk": 1}},
              "options": {"path": str(tmp_path / "x.jsonl")}}
    cfg = cfg_for("embedded", tmp_path, guide={"task_rationales": False, "inline": inline},
                  distributed={"learner_resources": {"learner_node": 0.5}})
    g, lrn = plan_bundles(cfg, resolve_guide_config(cfg.guide, cfg.data, tmp_path))
    assert g == [{"CPU": 2, "big_disk": 1}] and lrn == [{"CPU": 1, "learner_node": 0.5}] * 2
    cfg = cfg_for("embedded", tmp_path, guide={"task_rationales": False, "inline": inline,
                                               "resources": {"resources": {"guide_node": 1}}})
    g, _ = plan_bundles(cfg, resolve_guide_config(cfg.guide, cfg.data, tmp_path))
    assert g == [{"CPU": 2, "guide_node": 1}]
    for bad, msg in (({"distributed": {"learner_resources": {"CPU": 1}}}, "not custom resources; use num_cpus"),
                     ({"guide": {"resources": {"resources": {"g": 0}}}}, "must be > 0"),
                     ({"distributed": {"learner_resource": {"g": 1}}}, "Extra inputs")):
        with pytest.raises(ValueError, match=msg):
            RLConfig.model_validate({**bad, "guide": {"task_rationales": True, **bad.get("guide", {})}})
    with pytest.raises(ResourceError, match=r"needs 2 learner_node \(cluster has 0\).*ray start --resources "
                                            r"'\{\"learner_node\": N\}'"):
        preflight([{"CPU": 1, "learner_node": 1}] * 2, {"CPU": 8})


class _Stub:
    """An actor handle whose every method call returns a (dead) object ref."""

    def __getattr__(self, name):
        return self

    def remote(self, *args, **kwargs):
        return None


class _DeadRay:
    """``ray`` as the driver sees it once the node under the actors is gone."""

    def __init__(self, error):
        self.error = error

    def get(self, *args, **kwargs):
        raise self.error


@pytest.mark.parametrize("call", ["stats", "checkpoint", "nodes", "final", "start"])
def test_a_node_dying_outside_a_step_also_ends_in_one_line_naming_resume(tmp_path, call):
    """The node may die while the driver asks for the guide's stats, a checkpoint, the actors' nodes or the final
    state, not only during a step: each is the same one line (WorkerDied, which the CLI prints), not a traceback."""
    from ray.exceptions import ActorDiedError

    from rl_statetune.rl.ray_executor import RayExecutor, WorkerDied

    ex = RayExecutor.__new__(RayExecutor)
    ex.out, ex.ray = tmp_path, _DeadRay(ActorDiedError())
    ex.producer, ex.guides, ex.learners, ex.queues, ex.produced = _Stub(), [_Stub()], [_Stub(), _Stub()], [], None
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    args = {"start": (3, 10, {"step": 3})}.get(call, ())
    with pytest.raises(WorkerDied, match=r"^an actor failed .*ActorDiedError.*the last checkpoint is .*--resume$"):
        getattr(ex, call)(*args)

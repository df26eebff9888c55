"""Guide-driven RL on Ray: guide actor(s), a CoT producer, and N data-parallel learner actors.

    guide actor(s) --generate--> CotProducer --bounded queue--> learner 0 .. N-1 --all-reduce(dS0)--> same step

* Every actor with resources lives in one placement group (one bundle per guide replica and per learner).
  A pre-flight check compares the bundles with the cluster's resources and fails fast, naming what is missing.
* The producer runs ahead of the learners by up to ``distributed.queue_size`` batches, so guide generation
  overlaps learning; the time learners wait on the queue is logged.
* Each learner takes its own batch, computes the state gradient, and the gradients are averaged with
  ``ray.util.collective`` (gloo on CPU, nccl on GPU). Identical averaged gradients and identical optimisers
  keep the learners' states identical (checked at the end).

Run:  ``python -m rl_statetune.rl.distributed --config configs/rl_cpu_demo.yaml``  (or via ``ray job submit``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from rl_statetune_guides import GuideConfig

from rl_statetune.rl.config import RLConfig, load_rl_config
from rl_statetune.rl.guides import resolve_guide_config
from rl_statetune.rl.outputs import (
    MetricsLog,
    RLResult,
    heldout,
    load_checkpoint,
    save_checkpoint,
    save_final_state,
    window_means,
)
from rl_statetune.rl.workers import CotProducer, LearnerWorker

log = logging.getLogger("rl_statetune.rl.distributed")


class ResourceError(RuntimeError):
    """The cluster cannot host the requested guide and learner actors."""


def _bundle(cpus: float, gpus: float) -> dict[str, float]:
    return {k: v for k, v in (("CPU", cpus), ("GPU", gpus)) if v > 0}


def plan_bundles(cfg: RLConfig, guide: GuideConfig) -> tuple[list[dict], list[dict]]:
    """(guide bundles, learner bundles); a bundle is empty for an actor that needs no resources."""
    g = [_bundle(guide.resources.num_cpus, guide.resources.num_gpus)] * cfg.guide.replicas
    d = cfg.distributed
    return g, [_bundle(d.learner_cpus, d.learner_gpus)] * d.num_learners


def preflight(bundles: list[dict], cluster: dict[str, float]) -> None:
    """Raise :class:`ResourceError` when the bundles cannot fit the cluster's total resources."""
    need: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            need[k] = need.get(k, 0.0) + v
    short = {k: (v, cluster.get(k, 0.0)) for k, v in need.items() if v > cluster.get(k, 0.0) + 1e-9}
    if short:
        what = ", ".join(f"{v:g} {k} (cluster has {have:g})" for k, (v, have) in short.items())
        raise ResourceError(
            f"the run needs {what}: guide replicas x guide resources + num_learners x learner resources. "
            "Lower distributed.num_learners / learner_cpus / learner_gpus or guide.num_cpus / num_gpus / replicas, "
            "or start Ray with more resources (ray start --num-cpus/--num-gpus, or distributed.num_cpus)")


def collective_backend(cfg: RLConfig) -> str:
    d = cfg.distributed
    if d.collective != "auto":
        return d.collective
    return "nccl" if d.learner_gpus > 0 else "gloo"


def _init_ray(cfg: RLConfig):
    import ray

    if ray.is_initialized():
        return ray, False
    d = cfg.distributed
    local = d.address is None and not os.environ.get("RAY_ADDRESS")
    ray.init(address=d.address, num_cpus=d.num_cpus if local else None, log_to_driver=True)
    return ray, True


def _gather(ray, refs: list, watch: Any, timeout_s: float) -> list:
    """``ray.get(refs)``, but fail as soon as the ``watch`` task (the producer) fails."""
    deadline = time.monotonic() + timeout_s
    while True:
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=1.0)
        if len(done) == len(refs):
            return ray.get(refs)
        ready, _ = ray.wait([watch], timeout=0)
        if ready:
            ray.get(ready[0])  # raises the producer's (guide's) error, if any
        if time.monotonic() > deadline:
            raise TimeoutError(f"learners did not finish a step within {timeout_s:.0f} s")


class RayRun:
    """Owns the placement group and the actors of one run; ``close()`` releases everything."""

    def __init__(self, cfg: RLConfig, out: Path):
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.queue import Queue
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
        from rl_statetune_guides.ray_actor import spawn_guide_actor

        self.ray, self.owns_ray = _init_ray(cfg)
        self._remove_pg = remove_placement_group
        self.cfg, d = cfg, cfg.distributed
        gcfg = resolve_guide_config(cfg.guide, cfg.data, out)
        g_bundles, l_bundles = plan_bundles(cfg, gcfg)
        preflight(g_bundles + l_bundles, self.ray.cluster_resources())
        placed = [b for b in g_bundles + l_bundles if b]
        self.pg = placement_group(placed, strategy="PACK") if placed else None
        self.actors: list = []
        if self.pg is not None:
            ready, _ = self.ray.wait([self.pg.ready()], timeout=d.ready_timeout_s)
            if not ready:
                free = self.ray.available_resources()
                self._remove_pg(self.pg)
                raise ResourceError(f"placement group {placed} not ready within {d.ready_timeout_s:.0f} s; "
                                    f"free now: {free}. Other jobs may hold the resources.")

        index = iter(range(len(placed)))

        def where(bundle: dict) -> dict:
            if not bundle:  # no resources: outside the group, taking none
                return {"num_cpus": 0}
            return {"scheduling_strategy": PlacementGroupSchedulingStrategy(self.pg, next(index))}

        name = gcfg.name or "guide"
        self.guides = [spawn_guide_actor(gcfg.model_copy(update={"name": None}), **where(b),
                                         name=f"{name}-{r}-{os.getpid()}")
                       for r, b in enumerate(g_bundles)]
        self.actors += self.guides
        self.queue = Queue(maxsize=d.queue_size, actor_options={"num_cpus": 0})
        cfg_json = cfg.model_dump(mode="json")
        backend = collective_backend(cfg)
        group = f"rl_learners_{os.getpid()}_{int(time.time())}"
        self.learners = []
        for rank, b in enumerate(l_bundles):
            opts = {"num_cpus": d.learner_cpus, "num_gpus": d.learner_gpus, **where(b)}
            w = self.ray.remote(LearnerWorker).options(**opts).remote(
                cfg_json, rank, d.num_learners, self.queue, self.guides[rank % len(self.guides)], group, backend,
                d.guide_timeout_s)
            self.learners.append(w)
        self.actors += self.learners
        self.producer = self.ray.remote(CotProducer).options(num_cpus=0, max_concurrency=len(self.guides) + 2) \
            .remote(cfg_json, self.guides, self.queue, d.guide_timeout_s)
        self.actors.append(self.producer)
        self.ray.get([w.setup_collective.remote() for w in self.learners], timeout=d.guide_timeout_s)
        log.info("%d guide actor(s) (%s), %d learners (%s all-reduce), queue of %d batches",
                 len(self.guides), gcfg.backend, len(self.learners), backend, d.queue_size)

    def close(self) -> None:
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception as e:  # noqa: BLE001 - already dead
                log.debug("kill %s: %s", a, e)
        try:
            self.queue.shutdown()
        except Exception as e:  # noqa: BLE001 - the queue actor is gone already
            log.debug("queue shutdown: %s", e)
        if self.pg is not None:
            self._remove_pg(self.pg)
        if self.owns_ray:
            self.ray.shutdown()


def run_distributed(cfg: RLConfig, resume: bool = False) -> RLResult:
    """Train with ``distributed.num_learners`` learners; writes the same files as ``rl_statetune.rl.loop``."""
    from rl_statetune.trainer import start_run

    t_start = time.time()
    out, model, tok, _, held = start_run(cfg)      # the driver evaluates; learners load their own copies
    steps, N = cfg.train.steps, cfg.distributed.num_learners
    held = held[: cfg.train.eval_size] if cfg.train.eval_size else held
    saved = load_checkpoint(out, cfg) if resume else None
    run = RayRun(cfg, out)
    metrics = MetricsLog(out / "metrics.jsonl")
    try:
        ray = run.ray
        start, rewards = 0, []
        if saved is not None:
            ray.get([w.load_checkpoint.remote(saved) for w in run.learners])
            start, acc_before, rewards = saved["step"], saved["acc_before"], saved["rewards"]
            log.info("resumed at step %d", start)
        else:
            acc_before = heldout(model, tok, held, cfg, None)
        produced = run.producer.run.remote(start * N, (steps - start) * N)
        learner_s = wait_s = 0.0
        tokens = 0
        for step in range(start, steps):
            ms = _gather(ray, [w.step.remote(step, steps) for w in run.learners], produced,
                         cfg.distributed.guide_timeout_s)
            rewards.append(sum(m["reward"] for m in ms) / N)
            learner_s += max(m["learner_s"] for m in ms)
            wait_s += max(m["wait_s"] for m in ms)
            tokens += sum(m["tokens"] for m in ms)
            if (step + 1) % cfg.train.log_every == 0 or step + 1 == steps:
                g = ray.get(run.producer.stats.remote())
                rec = {"step": step + 1, "reward": rewards[-1], "loss": sum(m["loss"] for m in ms) / N,
                       "lr": ms[0]["lr"], "state_norm": ms[0]["state_norm"], "tokens": tokens,
                       "guide_tokens_per_s": g["guide_tokens_per_s"],
                       "learner_tokens_per_s": tokens / max(learner_s, 1e-9), "learner_wait_s": wait_s,
                       "queue_size": run.queue.size()}
                if "match_argmax" in ms[0]:
                    rec["match_argmax"] = sum(m["match_argmax"] for m in ms) / N
                metrics.write(rec)
                log.info("step %d reward %.4f guide %.0f tok/s learners %.0f tok/s waited %.1f s queue %d",
                         step + 1, rec["reward"], rec["guide_tokens_per_s"], rec["learner_tokens_per_s"],
                         wait_s, rec["queue_size"])
            if (step + 1) % cfg.train.ckpt_every == 0 or step + 1 == steps:
                ckpt = ray.get(run.learners[0].checkpoint.remote())
                ckpt["generators"] = ray.get([w.generator_state.remote() for w in run.learners])
                save_checkpoint(out, cfg, step + 1, ckpt, {"acc_before": acc_before, "rewards": rewards})
        guide_stats = ray.get(produced)
        sums = ray.get([w.state_checksum.remote() for w in run.learners])
        if len(set(sums)) != 1:
            raise RuntimeError(f"learner states diverged (checksums {sums}); the all-reduce is broken")
        time_state = ray.get(run.learners[0].checkpoint.remote())["time_state"]
    finally:
        metrics.close()
        run.close()
    save_final_state(out, cfg, time_state, model.config, steps)
    first, last = window_means(rewards, max(3, cfg.train.log_every))
    res = RLResult(str(out), steps, first, last, rewards, acc_before, heldout(model, tok, held, cfg, time_state),
                   guide_stats["guide_tokens_per_s"], tokens / max(learner_s, 1e-9), wait_s, time.time() - t_start)
    res.save(out)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rl_statetune.rl.distributed", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        res = run_distributed(load_rl_config(args.config, args.set), resume=args.resume)
    except (FileNotFoundError, ValueError, ResourceError) as e:
        print(f"rl distributed: error: {e}", file=sys.stderr)
        return 2
    print(f"reward {res.reward_first:.4f} -> {res.reward_last:.4f}; held-out accuracy {res.acc_before:.3f} -> "
          f"{res.acc_after:.3f}; guide {res.guide_tokens_per_s:.0f} tok/s, learners "
          f"{res.learner_tokens_per_s:.0f} tok/s, waited {res.learner_wait_s:.1f} s; state in {res.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

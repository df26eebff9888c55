"""The Ray step executor: guide actor(s), a CoT producer, and N data-parallel learner actors.

    guide actor(s) --generate--> CotProducer --queue per learner--> learner 0 .. N-1 --all-reduce--> same step

* Every actor with resources lives in one placement group (one bundle per guide replica and per learner).
  A pre-flight check compares the bundles with the cluster's resources and fails fast, naming what is missing.
* Per-role Ray custom resources (``guide.resources.resources``, ``distributed.learner_resources``) go into the
  bundles and the actors' options, so on a cluster of several nodes each role lands on the nodes started with
  them (``ray start --resources '{"guide_node": 1}'``); the node every actor ran on is logged and kept in the
  result (``nodes``).
* A Ray failure anywhere in the loop (an actor or a whole node dying) ends the run with :class:`WorkerDied`,
  one line naming ``--resume`` when a checkpoint exists.
* The producer runs ahead of the learners by up to ``distributed.queue_size`` batches per learner, so guide
  generation overlaps learning; the time learners wait on their queue is logged.
* Learner ``rank`` trains on batch ``step * N + rank``; gradients (S0, S~0, R) and DBP statistics are averaged
  with ``ray.util.collective`` (gloo on CPU, nccl on GPU), so the learners' tunables stay identical (checked at
  the end).
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rl_statetune_guides import GuideConfig

from rl_statetune.rl.config import RLConfig
from rl_statetune.rl.guides import resolve_guide_config
from rl_statetune.rl.learner import REWARD_COUNTS, TERM_MEANS
from rl_statetune.rl.workers import CotProducer, LearnerWorker

log = logging.getLogger("rl_statetune.rl.ray")


class ResourceError(RuntimeError):
    """The cluster cannot host the requested guide and learner actors."""


class WorkerDied(RuntimeError):
    """A learner or guide actor died mid-run; the run stops (its last checkpoint stays) and can be resumed."""


class ActorFailed(Exception):
    """Which actor (``the guide``, ``learner 1``) a Ray error came from."""

    def __init__(self, who: str, error: BaseException):
        super().__init__(who)
        self.who, self.error = who, error


_ERROR_LINE = re.compile(r"^(?:\w+\.)*(\w*(?:Error|Exception|Exit|Interrupt|Unavailable)): (.+)$")


def own_error(e: BaseException) -> str:
    """The failing actor's own error in one line (``GuideError: ...``), out of Ray's wrapping: the last
    ``SomeError: message`` line of its text (an actor that died in its constructor carries that error last)."""
    cause = getattr(e, "cause", None)
    inner = cause if isinstance(cause, BaseException) else e
    lines = [x.strip() for x in str(inner).splitlines() if x.strip()]
    for line in reversed(lines):
        m = _ERROR_LINE.match(line)
        if m:
            return f"{m.group(1)}: {m.group(2)}"[:500]
    return f"{type(inner).__name__}: {lines[-1] if lines else ''}"[:500]


def _bundle(cpus: float, gpus: float, custom: dict[str, float]) -> dict[str, float]:
    return {**{k: v for k, v in (("CPU", cpus), ("GPU", gpus)) if v > 0}, **custom}


def plan_bundles(cfg: RLConfig, guide: GuideConfig) -> tuple[list[dict], list[dict]]:
    """(guide bundles, learner bundles); a bundle is empty for an actor that needs no resources."""
    r = guide.resources
    g = [_bundle(r.num_cpus, r.num_gpus, r.resources)] * cfg.guide.resources.replicas
    d = cfg.distributed
    return g, [_bundle(d.learner_cpus, d.learner_gpus, d.learner_resources)] * d.num_learners


def preflight(bundles: list[dict], cluster: dict[str, float]) -> None:
    """Raise :class:`ResourceError` when the bundles cannot fit the cluster's total resources."""
    need: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            need[k] = need.get(k, 0.0) + v
    short = {k: (v, cluster.get(k, 0.0)) for k, v in need.items() if v > cluster.get(k, 0.0) + 1e-9}
    if short:
        what = ", ".join(f"{v:g} {k} (cluster has {have:g})" for k, (v, have) in short.items())
        custom = [k for k in short if k not in ("CPU", "GPU")]
        hint = (f"; custom resources come from the nodes' ray start --resources '{{\"{custom[0]}\": N}}' "
                "(guide.resources.resources, distributed.learner_resources)" if custom else "")
        raise ResourceError(
            f"the run needs {what}: guide replicas x guide resources + num_learners x learner resources. "
            "Lower distributed.num_learners / learner_cpus / learner_gpus or guide.resources.num_cpus / num_gpus "
            "/ replicas, or start Ray with more resources (ray start --num-cpus/--num-gpus, or "
            f"distributed.num_cpus){hint}")


def collective_backend(cfg: RLConfig) -> str:
    d = cfg.distributed
    if d.collective != "auto":
        return d.collective
    return "nccl" if d.learner_gpus > 0 else "gloo"


def init_ray(cfg: RLConfig):
    """Join the configured cluster (``distributed.address`` / ``RAY_ADDRESS``), else a running local head
    (``ray start --head``), else start a private local one with ``distributed.num_cpus``."""
    import ray

    if ray.is_initialized():
        return ray, False
    d = cfg.distributed
    if d.address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=d.address, log_to_driver=True)
        return ray, True
    try:
        ray.init(address="auto", log_to_driver=True)
        log.info("joined the running Ray cluster (distributed.num_cpus is ignored)")
    except ConnectionError:
        ray.init(num_cpus=d.num_cpus, log_to_driver=True)
    return ray, True


def learners_mean(values: list[float]) -> float:
    """The mean over learners of a per-step metric, leaving out those that had none (NaN: no step judged, no
    correction); NaN where none had one."""
    have = [v for v in values if not math.isnan(v)]
    return sum(have) / len(have) if have else float("nan")


class RayExecutor:
    """Owns the placement group and the actors of one run; ``close()`` releases everything."""

    def __init__(self, cfg: RLConfig, out: Path):
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.queue import Queue
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
        from rl_statetune_guides.ray_actor import spawn_guide_actor

        self.ray, self.owns_ray = init_ray(cfg)
        self._remove_pg = remove_placement_group
        self.cfg, d = cfg, cfg.distributed
        self.out = Path(out)
        self.actors: list = []
        self.queues: list = []
        self.pg = None
        gcfg = resolve_guide_config(cfg.guide, cfg.data, out)
        self.guide_backend = gcfg.backend
        g_bundles, l_bundles = plan_bundles(cfg, gcfg)
        try:
            preflight(g_bundles + l_bundles, self.ray.cluster_resources())
            with self._failures("while starting"):
                self._place(cfg, gcfg, g_bundles, l_bundles, placement_group, Queue,
                            PlacementGroupSchedulingStrategy, spawn_guide_actor)
        except BaseException:
            self.close()
            raise

    def _place(self, cfg, gcfg, g_bundles, l_bundles, placement_group, Queue, Strategy, spawn_guide_actor):
        d = cfg.distributed
        placed = [b for b in g_bundles + l_bundles if b]
        self.pg = placement_group(placed, strategy="PACK") if placed else None
        if self.pg is not None:
            ready, _ = self.ray.wait([self.pg.ready()], timeout=d.ready_timeout_s)
            if not ready:
                free = self.ray.available_resources()
                raise ResourceError(f"placement group {placed} not ready within {d.ready_timeout_s:.0f} s; "
                                    f"free now: {free}. Other jobs may hold the resources.")
        index = iter(range(len(placed)))

        def where(bundle: dict) -> dict:
            if not bundle:  # no resources: outside the group, taking none
                return {"num_cpus": 0}
            return {"scheduling_strategy": Strategy(self.pg, next(index))}

        name = gcfg.name or "guide"
        self.guides = [spawn_guide_actor(gcfg.model_copy(update={"name": None}), d.guide_max_restarts,
                                         **where(b), name=f"{name}-{r}-{os.getpid()}")
                       for r, b in enumerate(g_bundles)]
        self.actors += self.guides
        self.queues = [Queue(maxsize=d.queue_size, actor_options={"num_cpus": 0}) for _ in l_bundles]
        cfg_json = cfg.model_dump(mode="json")
        backend = collective_backend(cfg)
        group = f"rl_learners_{os.getpid()}_{int(time.time())}"
        self.learners = []
        for rank, b in enumerate(l_bundles):
            opts = {"num_cpus": d.learner_cpus, "num_gpus": d.learner_gpus, "name": f"rl-learner-{rank}-{os.getpid()}",
                    **({"resources": dict(d.learner_resources)} if d.learner_resources else {}), **where(b)}
            w = self.ray.remote(LearnerWorker).options(**opts).remote(
                cfg_json, rank, d.num_learners, self.queues[rank], self.guides[rank % len(self.guides)], group,
                backend, d.guide_timeout_s)
            self.learners.append(w)
        self.actors += self.learners
        self.producer = self.ray.remote(CotProducer).options(num_cpus=0, max_concurrency=len(self.guides) + 2) \
            .remote(cfg_json, self.guides, self.queues, d.guide_timeout_s)
        self.actors.append(self.producer)
        self.ray.get([w.setup_collective.remote() for w in self.learners], timeout=d.guide_timeout_s)
        log.info("%d guide actor(s) (%s), %d learners (%s all-reduce), queues of %d batches",
                 len(self.guides), gcfg.backend, len(self.learners), backend, d.queue_size)

    # -- the executor interface (see rl.driver) ----------------------------------------------------------------
    def start(self, first_step: int, total_steps: int, saved: dict | None) -> None:
        with self._failures("while loading the checkpoint"):
            if saved is not None:
                self.ray.get([w.load_checkpoint.remote(saved) for w in self.learners])
            N = len(self.learners)
            self.produced = self.producer.run.remote(first_step * N, (total_steps - first_step) * N)

    @contextmanager
    def _failures(self, during: str):
        """Turn a Ray failure (an actor, or the node under it, died) into one :class:`WorkerDied` line naming the
        actor and what to do next; a learner's ``ValueError`` (bad input, a diverged run) passes as itself."""
        from ray.exceptions import RayError

        try:
            yield
        except (ActorFailed, RayError) as failure:
            who, e = (failure.who, failure.error) if isinstance(failure, ActorFailed) else ("an actor", failure)
            cause = getattr(e, "cause", None)
            if isinstance(cause, ValueError):     # bad input or a diverged run, raised inside a learner
                raise cause from None
            many = len(getattr(self, "learners", [])) > 1     # (none yet when starting fails)
            why = "; the others' all-reduce breaks with it" if who.startswith("learner") and many else ""
            raise WorkerDied(f"{who} failed {during} ({own_error(e)}){why}; {self._after_failure()}") from e

    def step(self, step: int, total_steps: int) -> dict:
        with self._failures(f"during step {step + 1}"):
            ms = self._gather([w.step.remote(step, total_steps) for w in self.learners])
        N = len(ms)
        out = {k: sum(m[k] for m in ms) / N for k in ("reward", "loss") if k in ms[0]}
        out.update({k: learners_mean([m[k] for m in ms]) for k in TERM_MEANS if k in ms[0]})
        out.update({k: ms[0][k] for k in ("lr", "state_norm", "lifted_norm", "decor_loss") if k in ms[0]},
                   tokens=sum(m["tokens"] for m in ms), learner_s=max(m["learner_s"] for m in ms),
                   wait_s=max(m["wait_s"] for m in ms), skipped=ms[0]["skipped"],
                   **{k: sum(m[k] for m in ms) for k in REWARD_COUNTS})
        return out

    def stats(self) -> dict:
        with self._failures("while reporting the guide's stats"):
            g = self.ray.get(self.producer.stats.remote())
            return {"guide_tokens_per_s": g["guide_tokens_per_s"], "queue_size": sum(q.size() for q in self.queues)}

    def checkpoint(self) -> dict:
        with self._failures("while writing a checkpoint"):
            ckpt = self.ray.get(self.learners[0].checkpoint.remote())
            ckpt["ranks"] = self.ray.get([w.rank_state.remote() for w in self.learners])
        return ckpt

    def nodes(self) -> dict[str, str]:
        """``{"guide 0": node id, "learner 0": node id, ...}``: the Ray node each actor runs on (also logged)."""
        refs = {**{f"guide {r}": g.node_id.remote() for r, g in enumerate(self.guides)},
                **{f"learner {r}": w.node_id.remote() for r, w in enumerate(self.learners)}}
        with self._failures("while asking the actors for their nodes"):
            out = dict(zip(refs, self.ray.get(list(refs.values()))))
        log.info("actors ran on Ray nodes: %s", ", ".join(f"{k} {v}" for k, v in out.items()))
        return out

    def final(self) -> dict:
        """The tunables' state dict, after checking every learner holds the same tunables."""
        with self._failures("at the end of the run"):
            self.ray.get(self.produced)
            sums = self.ray.get([w.state_checksum.remote() for w in self.learners])
            if any(s != sums[0] for s in sums):
                raise RuntimeError(f"learner tunables diverged (checksums {sums}); the all-reduce is broken")
            return self.ray.get(self.learners[0].checkpoint.remote())["tunable"]

    def _after_failure(self) -> str:
        """What the user can do after an actor failed: --resume only where a checkpoint exists."""
        ckpt = self.out / "checkpoint.pt"
        if ckpt.exists():
            return f"the last checkpoint is {ckpt}: fix the cause, then continue with --resume"
        return "no checkpoint was written yet: fix the cause and start again (--overwrite)"

    def _get(self, ref, who: str):
        e = self._failed(ref)
        if e is not None:
            raise ActorFailed(who, e) from e

    def _failed(self, ref) -> BaseException | None:
        from ray.exceptions import RayError

        try:
            self.ray.get(ref)
        except RayError as e:
            return e
        return None

    def _raise_learner_failure(self, refs: list) -> None:
        """Name the learner that died (its death breaks the others' all-reduce too, which fail as well)."""
        from ray.exceptions import ActorDiedError

        done, _ = self.ray.wait(refs, num_returns=len(refs), timeout=2.0)   # let the others' errors arrive
        failed = []
        for rank, ref in enumerate(refs):
            e = self._failed(ref) if ref in done else None
            if e is not None:
                failed.append((rank, e))
        died = [(r, e) for r, e in failed if isinstance(e, ActorDiedError)]
        rank, e = (died or failed)[0]
        raise ActorFailed(f"learner {rank}", e) from e

    def _gather(self, refs: list) -> list:
        """``ray.get(refs)``, but fail as soon as the producer (the guide) fails; failures name their actor
        (:class:`ActorFailed`)."""
        timeout_s = self.cfg.distributed.guide_timeout_s
        deadline = time.monotonic() + timeout_s
        while True:
            done, _ = self.ray.wait(refs, num_returns=len(refs), timeout=1.0)
            if any(self._failed(r) for r in done):   # a learner that died raises now, not after the others time out
                self._raise_learner_failure(refs)
            if len(done) == len(refs):
                return self.ray.get(refs)
            ready, _ = self.ray.wait([self.produced], timeout=0)
            if ready:
                self._get(ready[0], "the guide")  # raises the producer's (the guide's) error, if any
            if time.monotonic() > deadline:
                raise TimeoutError(f"learners did not finish a step within {timeout_s:.0f} s")

    def close(self) -> None:
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception as e:  # noqa: BLE001 - already dead
                log.debug("kill %s: %s", a, e)
        for q in self.queues:
            try:
                q.shutdown()
            except Exception as e:  # noqa: BLE001 - the queue actor is gone already
                log.debug("queue shutdown: %s", e)
        if self.pg is not None:
            try:
                self._remove_pg(self.pg)
            except Exception as e:  # noqa: BLE001 - its node (or the cluster) is gone
                log.debug("remove placement group: %s", e)
        if self.owns_ray:
            self.ray.shutdown()


__all__ = ["RayExecutor", "ResourceError", "WorkerDied", "collective_backend", "init_ray", "plan_bundles", "preflight"]

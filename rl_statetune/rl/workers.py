"""The Ray actor bodies of a distributed RL run: the CoT producer and the data-parallel learners.

Plain classes (usable and testable in-process); ``rl_statetune.rl.ray_executor`` wraps them with ``ray.remote``.

Batches are assigned deterministically: batch ``i = step * N + rank`` goes to learner ``rank`` through that
learner's own queue, whatever order the guide replicas finish in, so a run is reproducible for a fixed seed
and learner count (and a resumed run equals an uninterrupted one).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import torch

from rl_statetune.rl.config import RLConfig
from rl_statetune.rl.learner import Learner
from rl_statetune.rl.source import GuideStats, make_source


class CotProducer:
    """Asks the guide actor(s) for CoT batches and puts ``(i, items)`` on learner ``i % N``'s bounded queue.

    Batch ``i`` goes to guide replica ``i % R``; one thread per replica, so replicas generate concurrently. A
    full queue blocks the producer (back-pressure); an empty one makes its learner wait (logged).
    """

    def __init__(self, cfg: dict, guide_handles: list, queues: list, guide_timeout_s: float | None = None):
        from rl_statetune_guides.ray_actor import RemoteGuide

        from rl_statetune.data import load_examples
        from rl_statetune.tokenizer import WorldTokenizer

        self.cfg = RLConfig.model_validate(cfg)
        train, _ = load_examples(self.cfg.data)
        tok = WorldTokenizer()
        self.sources = [make_source(self.cfg, RemoteGuide(h, guide_timeout_s), train, tok) for h in guide_handles]
        self.queues = queues
        self.put_wait_s = 0.0

    def run(self, first: int, count: int) -> dict:
        """Produce batches ``first .. first+count-1``; returns the final stats (raises a guide's error)."""
        errors: list[Exception] = []
        R, N = len(self.sources), len(self.queues)

        def work(r: int) -> None:
            try:
                for i in range(first + r, first + count, R):
                    items = self.sources[r].batch(i)
                    t0 = time.perf_counter()
                    self.queues[i % N].put((i, items))
                    self.put_wait_s += time.perf_counter() - t0
            except Exception as e:  # noqa: BLE001 - surfaced to the driver through run()'s result
                errors.append(e)

        threads = [threading.Thread(target=work, args=(r,), daemon=True) for r in range(R)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return self.stats()

    def stats(self) -> dict:
        s = GuideStats()
        for src in self.sources:
            s.seconds += src.stats.seconds
            s.tokens += src.stats.tokens
            s.batches += src.stats.batches
            s.kept += src.stats.kept
            s.dropped += src.stats.dropped
        # replicas run concurrently: throughput is the sum of per-replica rates
        rate = sum(src.stats.tokens_per_s for src in self.sources if src.stats.seconds > 0)
        return {"guide_tokens": s.tokens, "guide_s": s.seconds, "guide_batches": s.batches,
                "cot_kept_total": s.kept, "cot_dropped_total": s.dropped,
                "guide_tokens_per_s": rate if s.seconds > 0 else float("nan"), "producer_put_wait_s": self.put_wait_s}


class LearnerWorker:
    """One data-parallel learner: takes its batches from its own queue, all-reduces gradients and DBP stats."""

    def __init__(self, cfg: dict, rank: int, world_size: int, queue: Any, guide_handle: Any = None,
                 group: str = "rl_learners", backend: str = "gloo", queue_timeout_s: float | None = None):
        from rl_statetune.malloc import keep_freed_memory
        from rl_statetune.run.setup import make_tunable, start_run

        keep_freed_memory()     # a process of its own: the CLI's setting does not reach it
        self.cfg = RLConfig.model_validate(cfg)
        d = self.cfg.distributed
        torch.set_num_threads(d.torch_threads)
        torch.manual_seed(self.cfg.train.seed)
        self.rank, self.world, self.queue, self.group, self.backend = rank, world_size, queue, group, backend
        self.queue_timeout_s = queue_timeout_s
        model, tok, train, _ = start_run(self.cfg, "cuda" if d.learner_gpus > 0 else "cpu")
        tunable = make_tunable(model, tok, train, self.cfg)   # deterministic: identical on every learner
        guide = None
        if self.cfg.reward.guide_scored:
            from rl_statetune_guides.ray_actor import RemoteGuide

            guide = RemoteGuide(guide_handle, queue_timeout_s)
        # every learner samples differently; the gradients are averaged, so the tunables stay identical
        self.learner = Learner(model, tok, self.cfg, guide, seed=self.cfg.train.seed + 7919 * rank,
                               tunable=tunable)
        self.pending: dict[int, list] = {}
        self.wait_s = 0.0

    def setup_collective(self) -> int:
        """Join the all-reduce group; every learner must call this concurrently."""
        if self.world > 1:
            from ray.util import collective

            collective.init_collective_group(self.world, self.rank, backend=self.backend, group_name=self.group)
        return self.rank

    def _allreduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return t
        from ray.util import collective

        t = t.contiguous()
        collective.allreduce(t, group_name=self.group)
        return t / self.world

    def _batch(self, index: int) -> list:
        """Batch ``index`` from this learner's queue (replicas may deliver out of order)."""
        while index not in self.pending:
            i, items = self.queue.get(block=True, timeout=self.queue_timeout_s)
            self.pending[i] = items
        return self.pending.pop(index)

    def step(self, step: int, total_steps: int) -> dict:
        t0 = time.perf_counter()
        items = self._batch(step * self.world + self.rank)
        waited = time.perf_counter() - t0
        self.wait_s += waited
        m = self.learner.train_step(items, step, total_steps, allreduce=self._allreduce)
        return {**m, "wait_s": waited}

    def checkpoint(self) -> dict:
        return self.learner.checkpoint()

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        """The Ray node this learner runs on (hex)."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def rank_state(self) -> dict:
        """What differs between learners: the sampling generator and the EMA baseline."""
        return {"generator": self.learner.generator.get_state(), "baseline": self.learner.baseline.value}

    def load_checkpoint(self, ckpt: dict) -> None:
        """Rank 0's tunables and optimiser (identical on every rank); this rank's own generator and baseline."""
        ranks = ckpt.get("ranks")
        if ranks is not None and len(ranks) != self.world:
            raise ValueError(f"checkpoint was written by {len(ranks)} learners; this run has {self.world}")
        self.learner.load_checkpoint({**ckpt, **(ranks[self.rank] if ranks else {})})

    def state_checksum(self) -> list[float]:
        """One sum per tunable tensor: equal on every learner when the all-reduce works (R included)."""
        return [float(p.detach().double().abs().sum()) for p in self.learner.state.parameters()]

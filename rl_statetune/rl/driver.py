"""The one RL driver: a run folder, the frozen model, a step executor, the loop, the final state.

    data -> guide (rl.source) -> reward (rl.rewards) -> policy gradient (rl.learner) -> tunables

The executor runs one step of the run: :class:`LocalExecutor` alternates the guide and one learner in this
process; ``rl.ray_executor.RayExecutor`` runs guide actors and N learner actors on Ray. Everything else (resume,
metrics, checkpoints, signals, held-out accuracy, the saved artefact) is here, shared by both.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from rl_statetune_guides import Guide, build_guide
from tqdm.auto import tqdm

from rl_statetune.rl.config import RLConfig
from rl_statetune.rl.guides import resolve_guide_config
from rl_statetune.rl.learner import Learner
from rl_statetune.rl.self_guide import SelfGuide
from rl_statetune.rl.source import make_source
from rl_statetune.run.folder import Interrupted, RunDir, stop_on_signals
from rl_statetune.run.heldout import HeldOut, run_held_out
from rl_statetune.run.setup import check_skipped, make_tunable, save_tuned, start_run

log = logging.getLogger("rl_statetune.rl")


@dataclass
class RLResult:
    out_dir: str
    steps: int
    reward_first: float            # mean reward of the first steps (max(3, log_every), at most half the run)
    reward_last: float             # mean reward of as many last steps
    rewards: list[float] = field(default_factory=list)   # per step
    acc_before: float = float("nan")
    acc_after: float = float("nan")
    guide_tokens_per_s: float = float("nan")
    learner_tokens_per_s: float = float("nan")
    learner_wait_s: float = 0.0
    seconds: float = 0.0
    # the first step's wait holds the guide's start-up (a vLLM engine: minutes on CPU) and first batch; the
    # steady-state idle share is (learner_wait_s - first_wait_s) / (loop_s - first_wait_s)
    first_wait_s: float = 0.0
    loop_s: float = 0.0                   # wall time of the step loop (no held-out evaluation)
    queue_depth: float = float("nan")     # CoT batches waiting in the learners' queues, mean over logged steps (Ray)
    tokens_before: float = float("nan")   # mean generated tokens per held-out answer (test-time compute)
    tokens_after: float = float("nan")
    skipped_steps: int = 0                # steps skipped with train.on_nonfinite: skip
    already_finished: bool = False        # --resume of a finished run: its stored result, nothing written
    steady_idle_share: float = float("nan")   # share of the loop after the first batch the learners waited
    nodes: dict[str, str] = field(default_factory=dict)   # Ray: the node id each actor ran on ("learner 0": id)

    @classmethod
    def from_dict(cls, d: dict) -> "RLResult":
        return cls(**{k: (float("nan") if v is None else v) for k, v in d.items() if k in cls.__dataclass_fields__})


def window_means(rewards: list[float], window: int) -> tuple[float, float]:
    if not rewards:
        return float("nan"), float("nan")
    w = max(1, min(window, len(rewards) // 2 or 1))
    return sum(rewards[:w]) / w, sum(rewards[-w:]) / w


class Executor(Protocol):
    def start(self, first_step: int, total_steps: int, saved: dict | None) -> None: ...
    def step(self, step: int, total_steps: int) -> dict: ...
    def stats(self) -> dict: ...
    def checkpoint(self) -> dict: ...
    def final(self) -> dict: ...
    def nodes(self) -> dict[str, str]: ...
    def close(self) -> None: ...


class LocalExecutor:
    """One learner in this process; the guide writes the next step's CoTs in a thread while the learner trains
    on this step's (a guide in another process, e.g. a vLLM engine, then really overlaps). ``learner_wait_s`` is
    the time the learner waited for CoTs. Batch ``i`` depends only on (seed, i): prefetching changes nothing."""

    def __init__(self, cfg: RLConfig, model, tok, train, tunable, work_dir: Path, guide: Guide | None = None):
        self.own_guide = guide is None
        if guide is None:
            guide = make_local_guide(cfg, model, tok, work_dir)
        self.guide = guide
        # the reward's guide calls must not run concurrently with the prefetch on a guide that is not thread-safe;
        # the self-guide shares this process's cores with the learner: nothing to overlap
        self.prefetch = not cfg.reward.guide_scored and not isinstance(guide, SelfGuide)
        self.learner = Learner(model, tok, cfg, self.guide if cfg.reward.guide_scored else None,
                               seed=cfg.train.seed, tunable=tunable)
        self.source = make_source(cfg, self.guide, train, tok)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="cot-prefetch")
        self.pending: dict[int, Future] = {}

    def start(self, first_step: int, total_steps: int, saved: dict | None) -> None:
        if saved is not None:
            self.learner.load_checkpoint(saved)

    def _batch(self, i: int) -> Future:
        if i not in self.pending:
            self.pending[i] = self.pool.submit(self.source.batch, i)
        return self.pending[i]

    def step(self, step: int, total_steps: int) -> dict:
        t0 = time.perf_counter()
        items = self._batch(step).result()        # batch step * N + rank with N = 1
        del self.pending[step]
        waited = time.perf_counter() - t0
        if self.prefetch and step + 1 < total_steps:
            self._batch(step + 1)
        return {**self.learner.train_step(items, step, total_steps), "wait_s": waited}

    def stats(self) -> dict:
        st = self.source.stats
        return {"guide_tokens_per_s": st.tokens_per_s, "guide_tokens": st.tokens, "cot_kept_total": st.kept,
                "cot_dropped_total": st.dropped}

    def checkpoint(self) -> dict:
        return self.learner.checkpoint()

    def final(self) -> dict:
        return self.learner.checkpoint()["tunable"]

    def nodes(self) -> dict[str, str]:
        return {}

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.own_guide and self.guide is not None:
            self.guide.close()


def make_local_guide(cfg: RLConfig, model, tok, work_dir: Path) -> Guide | None:
    """The ``guide`` section's guide in this process: none, the frozen learner with a header, or a backend."""
    g = cfg.guide
    if g.sources == 0:
        return None
    if g.self_guide is not None:
        return SelfGuide(model, tok, g.self_guide.header, g.cot.stop or ("\n",), g.self_guide.batch_size)
    return build_guide(resolve_guide_config(g, cfg.data, work_dir))


def run_rl(cfg: RLConfig, resume: bool = False, progress: bool = True, guide: Guide | None = None,
           ray: bool = False, overwrite: bool = False) -> RLResult:
    """Tune the tunables with guide rewards, in this process or (``ray``) on Ray with
    ``distributed.num_learners`` learners. ``guide`` overrides ``cfg.guide`` in-process (e.g. a loaded model)."""
    if ray and (cfg.guide.sources == 0 or cfg.guide.self_guide is not None):
        raise ValueError("--ray needs a guide backend (guide.config, guide.inline or guide.task_rationales); "
                         "a run with no guide or with guide.self_guide runs in one process: drop --ray")
    run = RunDir(cfg.train.out_dir, cfg.model_dump(mode="json"), resume, overwrite)
    try:
        return _run_rl(run, cfg, progress, guide, ray)
    finally:
        run.close()


def _run_rl(run: RunDir, cfg: RLConfig, progress: bool, guide: Guide | None, ray: bool) -> RLResult:
    t_start = time.time()
    finished = run.open()
    if finished is not None:
        return RLResult.from_dict({**finished, "already_finished": True})
    saved = run.saved
    torch.manual_seed(cfg.train.seed)
    model, tok, train, held = start_run(cfg)     # the driver's copy evaluates and writes the artefact
    tunable = make_tunable(model, tok, train, cfg)
    start, before, rewards, skipped = 0, HeldOut.none(), [], 0
    if saved is not None:
        start, rewards, skipped = saved["step"], saved["rewards"], saved.get("skipped", 0)
        before = HeldOut(saved["acc_before"], saved.get("tokens_before", float("nan")), 0.0)
        log.info("resuming %s at step %d", run.path, start)
    else:
        before = run_held_out(cfg, model, tok, held, tunable if cfg.train.init_state else None)
    if ray:
        from rl_statetune.rl.ray_executor import RayExecutor


        ex: Executor = RayExecutor(cfg, run.path)
    else:
        ex = LocalExecutor(cfg, model, tok, train, tunable, run.path, guide)
    steps = cfg.train.steps
    learner_s = wait_s = first_wait_s = 0.0
    tokens, depths = 0, []
    t_loop = time.time()
    try:
        ex.start(start, steps, saved)
        with run.metrics() as metrics, stop_on_signals() as stop:
            for step in tqdm(range(start, steps), initial=start, total=steps, desc="rl", disable=not progress):
                m = ex.step(step, steps)
                learner_s += m.pop("learner_s")
                waited = m.pop("wait_s")
                wait_s += waited
                first_wait_s = waited if step == start else first_wait_s
                tokens += m["tokens"]
                rewards.append(m["reward"])
                skipped += int(m.get("skipped", 0))
                if (step + 1) % cfg.train.log_every == 0 or step + 1 == steps:
                    rec = {"step": step + 1, **m, **ex.stats(), "tokens": tokens,
                           "learner_tokens_per_s": tokens / max(learner_s, 1e-9), "learner_wait_s": wait_s}
                    metrics.write(rec)
                    depths += [rec["queue_size"]] if "queue_size" in rec else []
                    log.info("step %d reward %.4f loss %.4f guide %.0f tok/s learner %.0f tok/s waited %.1f s",
                             step + 1, m["reward"], m["loss"], rec["guide_tokens_per_s"],
                             rec["learner_tokens_per_s"], wait_s)
                if (step + 1) % cfg.train.ckpt_every == 0 or step + 1 == steps or stop:
                    run.save_checkpoint(step + 1, {**ex.checkpoint(), "acc_before": before.accuracy,
                                                     "tokens_before": before.mean_tokens, "rewards": rewards,
                                                     "skipped": skipped})
                if stop and step + 1 < steps:
                    raise Interrupted(stop.signum, step + 1, run.path)
        loop_s = time.time() - t_loop
        nodes = ex.nodes()
        final = ex.final()
        guide_rate = ex.stats()["guide_tokens_per_s"]
    finally:
        ex.close()
    tunable.load_state_dict(final)
    check_skipped(skipped, steps, cfg)
    save_tuned(run.path, tunable, cfg, model, {"steps": steps})
    first, last = window_means(rewards, max(3, cfg.train.log_every))
    after = run_held_out(cfg, model, tok, held, tunable)
    depth = sum(depths) / len(depths) if depths else float("nan")
    res = RLResult(str(run.path), steps, first, last, rewards, before.accuracy, after.accuracy, guide_rate,
                   tokens / max(learner_s, 1e-9), wait_s, time.time() - t_start, first_wait_s=first_wait_s,
                   loop_s=loop_s, queue_depth=depth, tokens_before=before.mean_tokens,
                   tokens_after=after.mean_tokens, skipped_steps=skipped, nodes=nodes)
    res.steady_idle_share = steady_idle_share(res)
    run.write_result(asdict(res))
    return res


def summary(res: RLResult, evaluated: bool) -> str:
    acc = (f"held-out accuracy {res.acc_before:.3f} -> {res.acc_after:.3f} (generated tokens per answer "
           f"{res.tokens_before:.1f} -> {res.tokens_after:.1f})" if evaluated
           else "held-out accuracy not evaluated (train.eval: false)")
    rate = "n/a" if math.isnan(res.guide_tokens_per_s) else f"{res.guide_tokens_per_s:.1f}"
    return (f"reward {res.reward_first:.4f} -> {res.reward_last:.4f} over {res.steps} steps; {acc}\n"
            f"guide {rate} tok/s, learner {res.learner_tokens_per_s:.1f} tok/s, learner waited "
            f"{res.learner_wait_s:.1f} s ({res.first_wait_s:.1f} s of it for the first batch: guide start-up), "
            f"idle share after it {100 * steady_idle_share(res):.1f} %, {res.seconds:.0f} s in all")


def steady_idle_share(res: RLResult) -> float:
    """Share of the step loop the learners waited for CoTs, after the first batch (guide start-up) arrived."""
    busy = res.loop_s - res.first_wait_s
    return (res.learner_wait_s - res.first_wait_s) / busy if busy > 0 else float("nan")


__all__ = ["Executor", "LocalExecutor", "RLResult", "run_rl", "steady_idle_share", "summary", "window_means"]

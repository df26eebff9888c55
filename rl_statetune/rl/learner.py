"""The learner: a frozen RWKV-7 whose only trainable parameters are its tunables (the initial WKV state S0;
with ``upscale`` also the lifted state S~0 and the decorrelation R, which DBP updates after every step).

A step has up to two parts, weighted by ``reward.terms`` and summed into one loss:

* the CoT term scores every position of a batch of guide CoTs in ONE teacher-forced parallel forward: the hidden
  states at all CoT positions give the learner's next-token distributions, ``G`` actions are sampled per
  position and rewarded against the guide;
* the rollout terms (``rl.outcome``): the learner samples ``G`` whole answers per prompt, the task's verifier
  and / or the guide judge them, and their log-probabilities come from one teacher-forced forward.

The policy-gradient surrogate is backpropagated into the tunables.
"""

from __future__ import annotations

import time
from collections import Counter

import torch
from rl_statetune_guides import Guide

from rl_statetune.lm import NonFiniteLogits, check_finite, pad_right
from rl_statetune.model import RWKV7
from rl_statetune.rl.config import RLConfig
from rl_statetune.rl.cot import CotBatch, CotItem, collate_cots
from rl_statetune.rl.align import decode_with_spans
from rl_statetune.rl.outcome import (
    clip_heads,
    combine,
    group_verifier_advantages,
    guide_heads,
    guide_rows,
    guide_token_logprobs,
    token_mean_loss,
    verifier_rewards,
)
from rl_statetune.rl.policy_gradient import EmaBaseline, advantages, l2_penalty, pg_loss, weigh_negatives
from rl_statetune.rl.rewards import (
    guide_logprob_reward,
    guide_logprobs_of_actions,
    match_reward,
    multistep_reward,
    reverse_kl_reward,
)
from rl_statetune.rl.rollout import (
    append_continuations,
    append_rows,
    sample_answers,
    sample_rollouts,
    sequence_logprobs,
    stop_token_mask,
    token_logprobs,
)
from rl_statetune.rl.source import CountingGuide
from rl_statetune.rl.steps import correction_rows, step_advantages, step_token_rewards
from rl_statetune.rl.verifier import make_check
from rl_statetune.run.setup import AllReduce, diverged, guarded_step, lr_at, make_optimizer, set_lr, state_norms
from rl_statetune.state import TimeState

# per-step counts of the reward's guide work (summed over learners): calls, queries and guide tokens of the reward's
# score calls; actions resolved from the guide's own token, from its top-k, by an exact query; CoT tokens scored
REWARD_COUNTS = ("reward_guide_calls", "reward_guide_queries", "reward_guide_tokens", "reward_actions_own",
                 "reward_actions_top_k", "reward_actions_exact", "cot_guide_tokens")
# per-step shares and means of the terms (averaged over learners, a learner with none left out): the CoT term's
# argmax / sample agreement with the guide, the rollout terms' verdicts, the guide's members, the corrections
TERM_MEANS = ("match_argmax", "match_sample", "target_logprob", "verifier_reward", "greedy_reward",
              "on_policy_reward", "step_right", "step_tokens", "answer_tokens", "guide_group_right",
              "guide_group_adv", "corrections", "correction_logprob")


class Learner:
    """Policy-gradient state tuning. ``guide`` is needed by the rewards that ask it for log-probabilities."""

    def __init__(self, model: RWKV7, tokenizer, cfg: RLConfig, guide: Guide | None = None, seed: int = 0,
                 tunable: TimeState | None = None):
        """``tunable``: the run's tunables (``run.setup.make_tunable``); default a zero ``TimeState``."""
        if cfg.reward.guide_scored and guide is None:
            raise ValueError(f"reward {cfg.reward.weights} asks the guide for log-probabilities; pass a guide")
        self.model, self.tok, self.cfg = model, tokenizer, cfg
        self.check = make_check(cfg.data)   # the task's answer check (verifier term)
        self._stop_mask: torch.Tensor | None = None
        self.guide = None if guide is None else CountingGuide(guide)   # the reward's queries, logged per step
        self.device = model.emb.weight.device
        self.state = (tunable if tunable is not None else TimeState(model.config)).to(self.device)
        self.opt = make_optimizer(self.state, cfg)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.baseline = EmaBaseline(cfg.pg.ema_decay)
        self.resolved: Counter = Counter()   # how the step's actions got their guide log-prob (own / top_k / exact)

    def penalty(self) -> torch.Tensor:
        """``pg.l2`` on the states (S0 and S~0): both start at zero, the frozen model."""
        pen = l2_penalty(self.state.time_state, self.cfg.pg.l2)
        lifted = getattr(self.state, "lifted_state", None)
        return pen if lifted is None else pen + l2_penalty(lifted, self.cfg.pg.l2)

    def init_state(self, batch_size: int):
        return self.state.initial_state(self.model, batch_size)

    def collate(self, items: list[CotItem]) -> CotBatch:
        return collate_cots(items, self.tok, self.cfg.train.max_len)

    # -- the one forward ---------------------------------------------------------------------------------------
    def policy_logprobs(self, batch: CotBatch) -> torch.Tensor:
        """[P, V] learner log-probabilities (at the sampling temperature) at every CoT position, one forward."""
        idx = batch.idx.to(self.device)
        hidden, _ = self.model.hidden(idx, self.init_state(idx.shape[0]), lengths=batch.lengths.to(self.device))
        h = hidden[:, :-1][batch.mask.to(self.device)]
        return torch.log_softmax(self.model.head(h).float() / self.cfg.reward.temperature, dim=-1)

    def sample_actions(self, logp: torch.Tensor, samples: int) -> torch.Tensor:
        check_finite(logp, "the learner's policy distribution")   # torch.multinomial would only say "invalid"
        return torch.multinomial(logp.detach().exp(), samples, replacement=True, generator=self.generator)

    def scored_rows(self, n_positions: int) -> torch.Tensor | None:
        """The positions whose actions get a reward this step: all (None), or ``reward.scored_positions`` of them
        drawn at random when the reward needs a guide query per action."""
        budget = self.cfg.reward.scored_positions
        if budget is None or budget >= n_positions or self.cfg.reward.cot_term == "match":
            return None
        rows = torch.randperm(n_positions, generator=self.generator, device=self.generator.device)[:budget]
        return rows.sort().values.to(self.device)

    def single_step_rewards(self, batch: CotBatch, logp: torch.Tensor, actions: torch.Tensor,
                            rows: torch.Tensor | None = None) -> torch.Tensor:
        """[R, G] rewards of ``actions`` sampled from ``logp`` ([R, V], [R, G]) at the CoT positions ``rows``
        (indices into ``batch.positions()``; default all)."""
        kind = self.cfg.reward.cot_term
        a = actions.cpu()
        rows_list = None if rows is None else rows.tolist()
        if kind == "match":
            return match_reward(a, batch.targets if rows is None else batch.targets[rows.cpu()])
        g = guide_logprobs_of_actions(self.guide, batch, a, self.tok, self.cfg.reward.floor_logprob, rows_list,
                                      self.resolved)
        if kind == "guide_logprob":
            return guide_logprob_reward(g)
        if kind == "reverse_kl":
            return reverse_kl_reward(g, logp.detach().gather(1, actions).cpu())
        raise ValueError(f"{kind!r} is not a single-step reward")

    # -- losses ------------------------------------------------------------------------------------------------
    def loss(self, items: list[CotItem]) -> tuple[torch.Tensor, dict]:
        """The weighted sum of the terms' losses on one batch of items, and the step's metrics (``reward``: the
        CoT term's mean reward, else the verifier's share of right answers, else the on-policy token reward, else
        the share of right step tokens, else the log-probability of the corrections)."""
        rc = self.cfg.reward
        total = self.penalty()
        metrics: dict = {"tokens": 0}
        cot = rc.cot_term
        if cot is not None:
            kept = [it for it in items if it.accepted]
            metrics.update(cot_kept=len(kept), cot_dropped=len(items) - len(kept))
            if kept:
                batch = self.collate(kept)
                loss, m = self._multistep_loss(batch) if cot == "multistep" else self._cot_loss(batch)
                total = total + rc.weights[cot] * loss
                metrics.update(m, tokens=batch.n_tokens)
            else:
                metrics["reward"] = float("nan")
        if rc.rollout_terms:
            loss, m = self._rollout_loss(items)
            total = total + loss
            metrics.update(m, tokens=metrics["tokens"] + m["rollout_tokens"])
            if cot is None:
                metrics["reward"] = next(m[k] for k in ("verifier_reward", "on_policy_reward", "step_right",
                                                        "correction_logprob") if k in m)
        return total, metrics

    def _cot_loss(self, batch: CotBatch) -> tuple[torch.Tensor, dict]:
        rc, pc = self.cfg.reward, self.cfg.pg
        logp = self.policy_logprobs(batch)
        rows = self.scored_rows(logp.shape[0])
        logp_r = logp if rows is None else logp[rows]
        actions = self.sample_actions(logp_r, rc.samples)
        rewards = self.single_step_rewards(batch, logp_r, actions, rows)
        adv = advantages(rewards, mode=pc.advantage, normalize_std=pc.normalize_std, baseline=self.baseline)
        lp = logp_r.gather(1, actions)
        loss = pg_loss(lp, adv.to(lp.device))
        targets = batch.targets.to(self.device)
        return loss, {"reward": float(rewards.mean()),
                      "match_argmax": float((logp.detach().argmax(-1) == targets).float().mean()),
                      "match_sample": float((actions == (targets if rows is None else targets[rows])[:, None])
                                            .float().mean()),
                      "target_logprob": float(logp.detach().gather(1, targets[:, None]).mean()),
                      "positions": int(logp.shape[0])}

    def _multistep_loss(self, batch: CotBatch) -> tuple[torch.Tensor, dict]:
        rc, pc = self.cfg.reward, self.cfg.pg
        rows, ends, chars, items = [], [], [], []
        per_row: dict[int, list[int]] = {}
        for b, t in batch.mask.nonzero().tolist():
            per_row.setdefault(b, []).append(t)
        for b, ts in per_row.items():
            pick = torch.randperm(len(ts), generator=self.generator, device=self.device)[: rc.rollout_positions]
            for i in sorted(pick.tolist()):
                t = ts[i]
                rows.append(b)
                ends.append(t + 1)
                chars.append(batch.spans[b][t + 1 - batch.prompt_lens[b]][0])
                items.append(batch.items[b])
        G, k = rc.samples, rc.rollout_tokens
        idx = batch.idx[torch.tensor(rows)].repeat_interleave(G, 0).to(self.device)
        ends_t = torch.tensor(ends).repeat_interleave(G).to(self.device)
        rollouts = sample_rollouts(self.model, self.init_state, idx, ends_t, k, rc.temperature, self.generator)
        seq_lp = sequence_logprobs(self.model, self.init_state, idx, ends_t, rollouts, rc.temperature)
        texts = [self._rollout_text(r) for r in rollouts.cpu().tolist()]
        N = len(rows)
        rewards = multistep_reward(self.guide, items, chars, [texts[n * G:(n + 1) * G] for n in range(N)],
                                   seq_lp.view(N, G).cpu(), k, rc.floor_logprob)
        adv = advantages(rewards, mode=pc.advantage, normalize_std=pc.normalize_std, baseline=self.baseline)
        loss = pg_loss(seq_lp.view(N, G), adv.to(seq_lp.device))
        return loss, {"reward": float(rewards.mean()), "positions": N * G * k}

    def stop_mask(self) -> torch.Tensor:
        if self._stop_mask is None:
            self._stop_mask = stop_token_mask(self.tok, self.model.head.weight.shape[0])
        return self._stop_mask

    def sample_answers(self, items: list[CotItem], heads: list[list[int]] | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """G answers per item from the tuned state: prompt rows (idx, lengths), answer ids and mask, all
        [N * G, ...] with row ``n * G + g`` prompt ``n``'s ``g``-th answer. With ``heads`` (token lists, one per
        item), N more rows ``N * G + n`` continue prompt ``n`` after ``heads[n]`` (their idx rows hold the prompt
        and the head, their ids the continuation only), sampled in the same batch."""
        rc = self.cfg.reward
        G = rc.samples
        prompts = [self.tok.encode(it.prompt) for it in items for _ in range(G)]
        prompts += [self.tok.encode(it.prompt) + h for it, h in zip(items, heads or [])]
        idx, lengths = pad_right(prompts, 0, self.device)
        ids, mask = sample_answers(self.model, self.init_state, idx, lengths,
                                   rc.max_new_tokens or self.cfg.train.eval_max_new_tokens, rc.temperature,
                                   self.stop_mask(), self.generator)
        return idx, lengths, ids, mask

    def greedy_rewards(self, items: list[CotItem]) -> torch.Tensor:
        """[N] the verifier's verdicts on the learner's greedy answer to each item (``pg.advantage: greedy``)."""
        idx, lengths = pad_right([self.tok.encode(it.prompt) for it in items], 0, self.device)
        ids, mask = sample_answers(self.model, self.init_state, idx, lengths,
                                   self.cfg.reward.max_new_tokens or self.cfg.train.eval_max_new_tokens, 0.0,
                                   self.stop_mask())
        texts = [decode_with_spans(self.tok, row[m].tolist())[0] for row, m in zip(ids.cpu(), mask.cpu())]
        return verifier_rewards(self.check, items, texts, 1)[:, 0]

    def guide_members(self, items: list[CotItem], heads: list[list[int]] | None, ids: torch.Tensor,
                      mask: torch.Tensor) -> tuple[list[list[int]], list[str]]:
        """The guide's group members as token rows after their prompts and the texts the verifier judges: its whole
        CoTs, or (``heads``) its openings followed by the learner's sampled continuations ``ids`` / ``mask`` [N, K]
        (none after an opening that already ends the answer)."""
        if heads is None:
            return guide_rows(items, self.tok)
        stop = self.stop_mask()
        rows = [h + ([] if stop[h[-1]] else row[m].tolist()) for h, row, m in zip(heads, ids.cpu(), mask.cpu())]
        return rows, [decode_with_spans(self.tok, r)[0] for r in rows]

    def _rollout_loss(self, items: list[CotItem]) -> tuple[torch.Tensor, dict]:
        rc, pc = self.cfg.reward, self.cfg.pg
        terms, G = rc.rollout_terms, rc.samples
        n_own = len(items) * G
        heads = (guide_heads(guide_rows(items, self.tok)[0], rc.guide_prefix)
                 if rc.guide_in_group and rc.guide_prefix < 1 else None)
        idx, lengths, ids, mask = self.sample_answers(items, heads)
        if rc.guide_in_group:       # the guide's members as rows N * G + n, after the same prompts
            g_ids, g_texts = self.guide_members(items, heads, ids[n_own:], mask[n_own:])
        idx, lengths, ids, mask = idx[:n_own], lengths[:n_own], ids[:n_own], mask[:n_own]
        answers = [row[m].tolist() for row, m in zip(ids.cpu(), mask.cpu())]
        decoded = [decode_with_spans(self.tok, a) for a in answers]
        texts, spans = [t for t, _ in decoded], [s for _, s in decoded]
        prompts = [it.prompt for it in items for _ in range(G)]
        if rc.guide_in_group:
            idx, lengths = torch.cat([idx, idx[::G]]), torch.cat([lengths, lengths[::G]])
            ids, mask = append_rows(ids, mask, g_ids)
        n_judged = ids.shape[0]     # the learner's answers and the guide's members; the corrections follow
        fixes = correction_rows(texts, spans, answers, prompts, self.tok) if "corrections" in terms else []
        if fixes:                   # each after its prompt and the answer's own tokens before the wrong step
            idx, lengths, ids, mask = append_continuations(idx, lengths, ids, mask, fixes)
        lp = token_logprobs(self.model, self.init_state, idx, lengths, ids, rc.temperature, mask)   # [rows, K]
        m = mask.cpu()
        metrics: dict = {"rollout_tokens": int(m.sum()) + int(lengths.sum()),
                         "answer_tokens": float(m[:n_own].sum(1).float().mean())}
        if "corrections" in terms:
            metrics.update(corrections=len(fixes) / n_own, correction_logprob=float(
                lp[n_judged:].detach().cpu()[m[n_judged:]].mean()) if fixes else float("nan"))
        v_adv = r_tok = None
        if "verifier" in terms:
            v = verifier_rewards(self.check, items, texts, G)
            metrics["verifier_reward"] = float(v.mean())
            greedy = self.greedy_rewards(items) if pc.advantage == "greedy" else None
            if greedy is not None:
                metrics["greedy_reward"] = float(greedy.mean())
            if rc.guide_in_group:
                v_guide = verifier_rewards(self.check, items, g_texts, 1)[:, 0]
                v_adv = group_verifier_advantages(v, v_guide, torch.tensor([it.accepted for it in items]),
                                                  pc.advantage, pc.normalize_std, self.baseline,
                                                  clip_guide=heads is None, greedy=greedy)
                metrics.update(guide_group_right=float(v_guide.mean()),
                               guide_group_adv=float(v_adv[n_own:].mean()))
            else:
                v_adv = advantages(v, mode=pc.advantage, normalize_std=pc.normalize_std, baseline=self.baseline,
                                   greedy=greedy)
        if v_adv is not None:
            v_adv = weigh_negatives(v_adv, pc.negative_weight)
        if "on_policy" in terms:    # the learner's own answers only (the guide's rows get no token reward)
            g, judged = guide_token_logprobs(self.guide, items, texts, spans, G, ids.shape[1], rc.floor_logprob)
            r_tok = torch.zeros(m[:n_judged].shape)
            r_tok[:n_own] = (g - lp[:n_own].detach().cpu()) * judged * m[:n_own]
            metrics["on_policy_reward"] = float(r_tok.sum() / m[:n_own].sum().clamp_min(1))
        s_adv = None
        if "steps" in terms:        # the learner's own answers only, as on_policy
            r_step, judged = step_token_rewards(texts, spans, prompts, ids.shape[1])
            s_adv = torch.zeros(m[:n_judged].shape)
            s_adv[:n_own] = step_advantages(r_step, judged)
            metrics.update(step_right=float(r_step[judged].mean()) if judged.any() else float("nan"),
                           step_tokens=float(judged.sum(1).float().mean()))
        adv = combine(terms, m[:n_judged], v_adv, r_tok, s_adv)
        if fixes:                   # the right values are taught: advantage w on their tokens
            adv = torch.cat([adv, terms["corrections"] * m[n_judged:].float()])
        if heads is not None:
            adv = clip_heads(adv, n_own, heads)
        return token_mean_loss(lp, adv.to(lp.device), mask), metrics

    def _rollout_text(self, ids: list[int]) -> str:
        cut = ids.index(self.tok.eos_id) if self.tok.eos_id in ids else len(ids)
        return self.tok.decode(ids[:cut])

    # -- optimisation ------------------------------------------------------------------------------------------
    def train_step(self, items: list[CotItem], step: int, total_steps: int,
                   allreduce: AllReduce | None = None) -> dict:
        """One update from ``items``: policy gradient into every tunable, then DBP. ``allreduce`` averages the
        gradients and the DBP statistics over data-parallel learners (so their tunables stay identical)."""
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        try:
            loss, metrics = self.loss(items)
        except NonFiniteLogits:   # the state diverged at an earlier step: skipping cannot help
            raise diverged("the learner's policy is not finite (its state diverged at an earlier step)", self.cfg,
                           step, skippable=False) from None
        if loss.requires_grad:      # not when every CoT was dropped and no other term is on
            loss.backward()
        lr = lr_at(step, total_steps, self.cfg.optim)
        set_lr(self.opt, lr)
        stepped = guarded_step(self.state, self.opt, float(loss.detach()), self.cfg, step, allreduce)
        calls = self.guide.take() if self.guide is not None else {"guide_calls": 0, "guide_queries": 0,
                                                                  "guide_tokens": 0}
        resolved, self.resolved = self.resolved, Counter()
        metrics.update(loss=float(loss.detach()), lr=lr, learner_s=time.perf_counter() - t0,
                       skipped=int(not stepped), reward_guide_calls=calls["guide_calls"],
                       reward_guide_queries=calls["guide_queries"], reward_guide_tokens=calls["guide_tokens"],
                       reward_actions_own=resolved["own"], reward_actions_top_k=resolved["top_k"],
                       reward_actions_exact=resolved["exact"],
                       cot_guide_tokens=sum(len(it.scored) for it in items if it.scored is not None),
                       **state_norms(self.state))
        return metrics

    def checkpoint(self) -> dict:
        """Every tunable (S0, S~0, R and the feature bases), the optimiser, the baseline and the sampler."""
        return {"tunable": {k: v.detach().cpu().clone() for k, v in self.state.state_dict().items()},
                "optimizer": self.opt.state_dict(), "baseline": self.baseline.value,
                "generator": self.generator.get_state()}

    def load_checkpoint(self, ckpt: dict) -> None:
        self.state.load_state_dict(ckpt["tunable"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.baseline.value = ckpt["baseline"]
        self.generator.set_state(ckpt["generator"])

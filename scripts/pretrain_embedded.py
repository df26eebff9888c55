"""Pretrain the small embedded RWKV-7 on the synthetic word-problem corpus (reproducible; CPU, ~20-40 min).

    python scripts/pretrain_embedded.py --out rl_statetune/assets/arith-rwkv7-L6-C64.pth
    python scripts/pretrain_embedded.py --out rl_statetune/assets/reason-rwkv7-L6-C128.pth --corpus reasoning \
        --width 128 --steps 1000 --docs 64000 --lr 3e-3 --threads 1      # the reasoning task (embedded:reason)

The result is a BlinkDL-format bf16 checkpoint (< 20 MB: the 65536-token world vocabulary dominates) that the
quickstart tunes. Every document starts from the zero state, as prompts do at inference. The corpus uses ~150
distinct tokens, so the softmax runs over those plus a fresh uniform sample of the other ids each step (sampled
softmax): 30x cheaper than the full 65536-way softmax, and every unused id is pushed down often enough that greedy
decoding over the full vocabulary never picks one (the script checks this at the end).
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

from rl_statetune.checkpoint import save_blinkdl
from rl_statetune.init import init_rwkv7
from rl_statetune.model import RWKV7Config
from rl_statetune.synthetic import corpus_documents, reasoning_documents
from rl_statetune.tokenizer import WorldTokenizer

EMBEDDED_CONFIG = RWKV7Config(vocab_size=65536, n_embd=64, n_layer=6, head_size=32,
                              dim_w=16, dim_a=16, dim_v=8, dim_g=32, dim_ffn=256)
CORPORA = {"answer_format": corpus_documents, "reasoning": reasoning_documents}


def model_config(width: int, layers: int) -> RWKV7Config:
    """The embedded shape at another width (64: EMBEDDED_CONFIG); heads of 32."""
    if width == 64 and layers == 6:
        return EMBEDDED_CONFIG
    return RWKV7Config(vocab_size=65536, n_embd=width, n_layer=layers, head_size=32, dim_w=width // 4,
                       dim_a=width // 4, dim_v=width // 8, dim_g=width // 2, dim_ffn=4 * width)


def batches(tok: WorldTokenizer, n_docs: int, batch: int, seed: int, corpus: str = "answer_format"):
    docs = [tok.encode(d) for d in CORPORA[corpus](n_docs, seed)]
    g = torch.Generator().manual_seed(seed)
    while True:
        for i in torch.randperm(len(docs), generator=g).split(batch):
            rows = [docs[j] for j in i.tolist()]
            T = max(map(len, rows))
            idx = torch.zeros(len(rows), T, dtype=torch.long)
            for r, d in enumerate(rows):
                idx[r, : len(d)] = torch.tensor(d)
            yield idx, torch.tensor([len(d) for d in rows])


def sampled_softmax_loss(model, idx, lengths, mask, used: list[int], negatives: int) -> torch.Tensor:
    """Cross-entropy over the corpus ids, the batch's ids and `negatives` random other ids."""
    hidden, _ = model.hidden(idx, lengths=lengths)
    targets = idx[:, 1:][mask]
    cand = torch.cat([torch.tensor(used), targets, torch.randint(0, model.config.vocab_size, (negatives,))]).unique()
    logits = hidden[:, :-1][mask] @ model.head.weight[cand].T
    return F.cross_entropy(logits, torch.searchsorted(cand, targets))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--docs", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--negatives", type=int, default=2048, help="sampled unused ids per step")
    ap.add_argument("--corpus", choices=sorted(CORPORA), default="answer_format",
                    help="answer_format: the original quickstart corpus; reasoning: synthetic.reasoning_documents")
    ap.add_argument("--width", type=int, default=64, help="n_embd (heads of 32)")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--save-every", type=int, default=0, help="also save OUT.stepN.pth every N steps (0: never)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    # without this, steps slow down 5-10x within ~100 steps on CPU (float32 denormals in the WKV recurrence)
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    tok = WorldTokenizer()
    model = init_rwkv7(model_config(args.width, args.layers), seed=args.seed)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and "emb" not in n]
    other = [p for n, p in model.named_parameters() if not (p.dim() == 2 and "emb" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": other, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.99), eps=1e-8)
    used = sorted({t for d in CORPORA[args.corpus](2000, args.seed + 1) for t in tok.encode(d)})
    data = batches(tok, args.docs, args.batch, args.seed, args.corpus)
    t0, seen = time.time(), 0
    for step in range(1, args.steps + 1):
        lr = args.lr * min(1.0, step / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        idx, lengths = next(data)
        mask = torch.arange(idx.shape[1])[None, 1:] < lengths[:, None]
        loss = sampled_softmax_loss(model, idx, lengths, mask, used, args.negatives)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        seen += int(lengths.sum())
        if step % 25 == 0 or step == 1:
            el = time.time() - t0
            print(f"step {step:5d}  loss {loss.item():.4f}  lr {lr:.2e}  tok/s {seen / el:,.0f}  {el:,.0f}s", flush=True)
        if args.save_every and step % args.save_every == 0 and step < args.steps:
            save_blinkdl(model, f"{args.out}.step{step}.pth", dtype=torch.bfloat16)
    save_blinkdl(model, args.out, dtype=torch.bfloat16)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()

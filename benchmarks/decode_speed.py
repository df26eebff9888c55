"""Decode and prefill speed of our RWKV-7 against the official `rwkv` package, side by side in one run.

Random weights of a real shape (default the 0.1B World shape: L12 C768, head 64, vocab 65536), stored in
bfloat16 as real checkpoints are. Contenders, measured interleaved (round robin, ``--repeats`` rounds, median):

* ``rwkv fp32`` / ``rwkv bf16``: the `rwkv` pip package (RWKV_V7_ON=1, its default TorchScript), strategy
  "cpu fp32" / "cpu bf16", one token per ``forward([tok], state)`` and a whole prompt per ``forward(tokens)``;
* ``ours fp32`` / ``ours bf16`` / ``ours fp16``: ``RWKV7`` with float32 / bfloat16 / float16 weights (the bf16
  file converts exactly to float16 for weights within its range), ``model.decode`` for one token and ``model(idx)``
  for a prompt; ``ours bf16+fp16 step``: bfloat16 weights whose one-token step uses float16 copies of the big
  matrices (``model.decode_dtype``); ``ours fp32 transposed``: float32 with [in, out] copies of the head and FFN
  key for the step (``model.decode_transposed``); ``ours ... B=8``: eight sequences decoded together (tokens/s counts all
  eight).

Prints tokens/s per thread count and the ratio to ``rwkv fp32``. On a machine shared with other jobs compare
only figures from the same run.

    python benchmarks/decode_speed.py                      # 0.1B shape, threads 1 and 2
    python benchmarks/decode_speed.py --layers 2 --repeats 2 --decode 8 --prefill 32    # quick check
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ["RWKV_V7_ON"] = "1"  # before `import rwkv.model`

import torch  # noqa: E402

from rl_statetune.checkpoint import load_model, save_blinkdl  # noqa: E402
from rl_statetune.init import init_rwkv7  # noqa: E402
from rl_statetune.model import RWKV7Config  # noqa: E402


def shape(args) -> RWKV7Config:
    C = args.embd
    return RWKV7Config(vocab_size=args.vocab, n_embd=C, n_layer=args.layers, head_size=64, dim_w=64, dim_a=64,
                       dim_v=32, dim_g=128, dim_ffn=4 * C)


class Official:
    def __init__(self, path: Path, strategy: str):
        import contextlib
        import io

        from rwkv.model import RWKV

        with contextlib.redirect_stdout(io.StringIO()):
            self.model = RWKV(model=str(path)[: -len(".pth")], strategy=strategy)

    def prefill(self, toks: list[int]):
        return self.model.forward(toks, None)

    def decode(self, toks: list[int], n: int):
        _, state = self.model.forward(toks, None)
        tok = toks[-1]
        t0 = time.perf_counter()
        for _ in range(n):
            logits, state = self.model.forward([tok], state)
            tok = int(logits.argmax())
        return time.perf_counter() - t0


class Ours:
    def __init__(self, path: Path, dtype: str, batch: int = 1, decode_dtype: torch.dtype | None = None,
                 transposed: bool = False):
        self.model, self.batch = load_model(path, dtype=dtype), batch
        self.model.decode_dtype = decode_dtype
        self.model.decode_transposed = transposed

    @torch.inference_mode()
    def prefill(self, toks: list[int]):
        return self.model(torch.tensor([toks]))

    @torch.inference_mode()
    def decode(self, toks: list[int], n: int):
        _, state = self.model(torch.tensor([toks] * self.batch))
        tok = torch.full((self.batch,), toks[-1])
        t0 = time.perf_counter()
        for _ in range(n):
            logits, state = self.model.decode(tok, state)
            tok = logits.argmax(-1)
        return time.perf_counter() - t0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--embd", type=int, default=768)
    p.add_argument("--vocab", type=int, default=65536)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--decode", type=int, default=32, help="decoded tokens per measurement")
    p.add_argument("--prefill", type=int, default=128, help="prompt tokens per prefill measurement")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds (median reported)")
    p.add_argument("--batch", type=int, default=8, help="sequences of the batched-decode column (0: none)")
    p.add_argument("--no-half", action="store_true", help="skip the bf16 / fp16 contenders")
    args = p.parse_args(argv)

    cfg = shape(args)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pth"
        save_blinkdl(init_rwkv7(cfg, seed=0, noise=1.0), path, dtype=torch.bfloat16)
        contenders = {"rwkv fp32": Official(path, "cpu fp32"), "ours fp32": Ours(path, "float32"),
                      "ours fp32 transposed": Ours(path, "float32", transposed=True)}
        if not args.no_half:
            for name, make in (("rwkv bf16", lambda: Official(path, "cpu bf16")),
                               ("ours bf16", lambda: Ours(path, "bfloat16")),
                               ("ours bf16+fp16 step", lambda: Ours(path, "bfloat16", decode_dtype=torch.float16)),
                               ("ours fp16", lambda: Ours(path, "float16"))):
                try:
                    contenders[name] = make()
                except Exception as e:  # noqa: BLE001 - report and go on
                    print(f"# {name}: {type(e).__name__}: {e}", file=sys.stderr)
        if args.batch > 1:
            for dt in ("float32",) + (() if args.no_half else ("float16",)):
                contenders[f"ours {dt[0]}{dt[-2:]} B={args.batch}".replace("f32", "fp32").replace("f16", "fp16")] = \
                    Ours(path, dt, args.batch)
        g = torch.Generator().manual_seed(0)
        toks = torch.randint(0, cfg.vocab_size, (args.prefill,), generator=g).tolist()
        short = toks[:8]
        print(f"# L{cfg.n_layer} C{cfg.n_embd} vocab {cfg.vocab_size}, weights stored bf16; decode {args.decode} "
              f"tokens after an 8-token prompt, prefill {args.prefill} tokens; median of {args.repeats} "
              f"interleaved rounds; torch {torch.__version__}")
        for threads in args.threads:
            torch.set_num_threads(threads)
            dec = {n: [] for n in contenders}
            pre = {n: [] for n in contenders}
            for name, c in contenders.items():       # warm-up (TorchScript compiles on first calls)
                c.decode(short, 2)
                c.prefill(toks[:16])
            for _ in range(args.repeats):
                for name, c in contenders.items():
                    batch = getattr(c, "batch", 1)
                    dec[name].append(batch * args.decode / c.decode(short, args.decode))
                    if batch == 1:
                        t0 = time.perf_counter()
                        c.prefill(toks)
                        pre[name].append(args.prefill / (time.perf_counter() - t0))
            base_d, base_p = statistics.median(dec["rwkv fp32"]), statistics.median(pre["rwkv fp32"])
            print(f"\nthreads {threads}")
            print(f"{'':22s} {'decode tok/s':>13s} {'x rwkv fp32':>12s} {'prefill tok/s':>14s} {'x rwkv fp32':>12s}")
            for name in contenders:
                d = statistics.median(dec[name])
                line = f"{name:22s} {d:13.1f} {d / base_d:12.2f}"
                if pre[name]:
                    q = statistics.median(pre[name])
                    line += f" {q:14.1f} {q / base_p:12.2f}"
                print(line, flush=True)


if __name__ == "__main__":
    main()

"""Check a guide config end to end: build it, generate for a few prompts, score a few continuations.

    python -m rl_statetune_guides.smoke configs/guides/smollm2_vllm_cpu.yaml --set model=models/smollm2 \
        --prompt "What is 2+3?" --continuation "2 + 3 = 5." --out guide_check.json

Prints (and with ``--out`` writes) JSON: the generated texts and, per continuation, the guide's token pieces,
offsets and log-probabilities. Run it before a long job to see that the guide loads, answers and scores;
it is also how the test suite drives the vLLM backend from vLLM's own Python environment.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from .config import GuideConfig
from .factory import build_guide


def run_check(cfg: GuideConfig, prompts: list[str], continuations: list[str], max_tokens: int) -> dict[str, Any]:
    """Build the guide, generate greedily for ``prompts`` and score ``continuations`` (paired with ``prompts``)."""
    t0 = time.perf_counter()
    guide = build_guide(cfg)
    try:
        t1 = time.perf_counter()
        generated = guide.generate(prompts, max_tokens=max_tokens)
        t2 = time.perf_counter()
        scored = guide.score(prompts[: len(continuations)], continuations) if continuations else []
        t3 = time.perf_counter()
    finally:
        guide.close()
    return {
        "backend": cfg.backend,
        "generated": generated,
        "scored": [{"pieces": list(s.pieces), "offsets": [list(o) for o in s.offsets],
                    "logprobs": list(s.logprobs)} for s in scored],
        "seconds": {"load": t1 - t0, "generate": t2 - t1, "score": t3 - t2},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rl_statetune_guides.smoke", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="guide YAML (configs/guides/*.yaml) or inline JSON of a guide config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override an entry of options (VALUE parsed as YAML), e.g. --set model=models/x")
    p.add_argument("--prompt", action="append", default=[], help="prompt to generate for (repeatable)")
    p.add_argument("--continuation", action="append", default=[],
                   help="continuation to score, paired with the prompt of the same position (repeatable)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--out", type=Path, help="also write the JSON result here")
    args = p.parse_args(argv)

    source = args.config.strip()
    raw = json.loads(source) if source.startswith("{") else yaml.safe_load(Path(source).read_text())
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set expects KEY=VALUE, got {item!r}")
        raw.setdefault("options", {})[key] = yaml.safe_load(value)
    cfg = GuideConfig.model_validate(raw)
    prompts = args.prompt or ["What is 2+3?"]
    if len(args.continuation) > len(prompts):
        p.error(f"{len(args.continuation)} continuations for {len(prompts)} prompts")

    result = run_check(cfg, prompts, args.continuation, args.max_tokens)
    text = json.dumps(result, ensure_ascii=False, indent=1)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":   # vLLM's engine start-up re-imports __main__ in worker processes
    sys.exit(main())

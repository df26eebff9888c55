"""Guide served by any OpenAI-compatible completions server (e.g. ``vllm serve MODEL``).

Standard library only (urllib). Generation is ``POST {base_url}/completions``; scoring sends
``prompt + continuation`` with ``echo: true, logprobs: max(top_k, 1)`` and reads the echoed prompt tokens'
log-probs, and with ``top_k`` their ``top_logprobs``. With ``tokenize: vllm`` the prompt and the continuation
are tokenized on their own by vLLM's ``/tokenize`` and sent as token ids, so the scored tokens are those the
transformers and vllm backends score (checked against a real ``vllm serve`` in tests/test_guides_openai_server.py).
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
_TOKEN_CACHE = 4096   # texts whose token ids are kept (tokenize: vllm)
_TRANSIENT = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, socket.timeout)


class OpenAIGuide(Guide):
    """Client of an OpenAI-compatible ``/v1/completions`` endpoint.

    Prompts are rendered with ``prompt_template`` client-side (the completions endpoint applies no chat
    template). With ``tokenize: joint`` a token of the echoed text that straddles the prompt/continuation
    boundary is reported as the continuation's first token, clipped to its part of the continuation, with the
    whole token's log-prob (and no top-k alternatives).
    """

    def __init__(self, options: OpenAIOptions, *, sleep: Callable[[float], None] = time.sleep):
        self.options = options
        root = options.base_url.rstrip("/")
        self.url = root + "/completions"
        self.tokenize_url = root.removesuffix("/v1") + "/tokenize"   # vLLM's, outside /v1
        self.supports_top_k = options.top_logprobs
        self._token_cache: dict[tuple[str, bool], list[int]] = {}
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
        if not self.supports_top_k:
            warn_no_top_k(self, top_k)
            top_k = 0
        rendered = [self.render(p) for p in prompts]
        out: list[ScoredText] = []
        pairs = list(zip(rendered, continuations))
        for batch in self._batches(pairs):
            if self.options.tokenize == "vllm":   # token ids: no token crosses the prompt boundary
                ids = [(self._token_ids(p, True), self._token_ids(c, False)) for p, c in batch]
                prompt: list = [p_ids + c_ids for p_ids, c_ids in ids]
                n_prompt: list[tuple[int, int] | None] = [(len(p_ids), len(c_ids)) for p_ids, c_ids in ids]
            else:
                prompt, n_prompt = [p + c for p, c in batch], [None] * len(batch)
            payload = {
                "prompt": prompt,
                "max_tokens": self.options.score_max_tokens,
                "temperature": 0.0,
                "echo": True,
                "logprobs": max(top_k, 1),
            }
            choices = self._choices(self._post(payload), len(batch))
            out.extend(self._scored(choice, p, c, n, top_k) for choice, (p, c), n in zip(choices, batch, n_prompt))
        return out

    def _scored(self, choice: dict[str, Any], prompt: str, continuation: str, n_ids: tuple[int, int] | None,
                top_k: int = 0) -> ScoredText:
        """``n_ids``: the prompt's and the continuation's token counts when ids were sent (``tokenize: vllm``)."""
        lp = _field(choice, "logprobs", dict)
        tokens = _field(lp, "tokens", list)
        values = _field(lp, "token_logprobs", list)
        tops = lp.get("top_logprobs") if top_k else None
        if len(tokens) != len(values) or (tops is not None and len(tops) != len(tokens)):
            raise GuideOutputError(f"{self.url}: {len(tokens)} tokens, {len(values)} token_logprobs and "
                                   f"{len(tops or [])} top_logprobs")
        n_gen = self.options.score_max_tokens  # the echo ends with the token(s) generated after the text
        if len(tokens) < n_gen:
            raise GuideOutputError(f"{self.url}: echo returned {len(tokens)} tokens, expected at least {n_gen}")
        end = len(tokens) - n_gen
        if not all(isinstance(t, str) for t in tokens[:end]):
            raise GuideOutputError(f"{self.url}: logprobs.tokens must be strings")
        if n_ids is not None:
            if end != sum(n_ids):
                raise GuideOutputError(f"{self.url}: echo returned {end} tokens for the {sum(n_ids)} sent")
            first, spans = n_ids[0], align_pieces(continuation, tokens[n_ids[0]:end])
            straddles = False
        else:   # joint text: keep the tokens that reach into the continuation, clipped to it
            start = len(prompt)
            full = align_pieces(prompt + continuation, tokens[:end])
            keep = [i for i, (s, e) in enumerate(full) if e > start or (s == e and s > start)]
            first = keep[0] if keep else end
            spans = [(max(s, start) - start, e - start) for s, e in full[first:end]]
            straddles = bool(keep) and full[first][0] < start
        lps = values[first:end]
        for k, v in enumerate(lps):
            if v is None or not isinstance(v, (int, float)):
                raise GuideOutputError(
                    f"{self.url}: continuation token at {spans[k][0]} has log-prob {v!r}; "
                    "is the prompt empty (the first token has no context)?"
                )
        alts = None
        if top_k:
            if tops is None:
                warn_no_top_k(self, top_k)   # this server sends no top_logprobs: exact queries instead
            else:
                alts = self._top_k(tokens[first:end], continuation, spans, tops[first:end], top_k, straddles)
        return scored_text(continuation, spans, [min(float(v), 0.0) for v in lps], alts)

    def _top_k(self, tokens: list[str], text: str, spans: list[tuple[int, int]], tops: list[Any], k: int,
               straddles: bool) -> list[tuple[tuple[str, float], ...]]:
        """Per continuation token, the ``k`` most likely (piece, logprob) of the echo's ``top_logprobs`` (the
        token's own entry plus the top ``k``, keyed by text). No alternatives where the prefix does not end
        at a character the text shares: after a token that does not read as its own piece (the byte tokens of
        a character) and for a first token that straddles the prompt boundary. Pieces that are empty or hold
        ``\\ufffd`` (byte tokens) are dropped; special tokens stay, as their text (the in-process backends drop
        them); two ids with one text are one entry of the server's mapping."""
        out: list[tuple[tuple[str, float], ...]] = []
        for i, row in enumerate(tops):
            if not isinstance(row, dict):
                raise GuideOutputError(f"{self.url}: top_logprobs entry {i} of the continuation is {row!r}")
            prev = text[spans[i - 1][0]:spans[i - 1][1]] if i > 0 else ""
            prev_ok = prev != "" and tokens[i - 1].endswith(prev)   # its own text (clipped, if it straddles)
            if (i == 0 and straddles) or (i > 0 and not prev_ok):
                out.append(())
                continue
            best = sorted(((p, float(v)) for p, v in row.items()), key=lambda pv: pv[1], reverse=True)[:k]
            out.append(tuple((p, v) for p, v in best if p and "\ufffd" not in p))
        return out

    def _token_ids(self, text: str, add_special_tokens: bool) -> list[int]:
        """Token ids of ``text`` from vLLM's ``/tokenize`` (cached: an RL run scores the same prompts often)."""
        if not text:
            return []
        key = (text, add_special_tokens)
        if key not in self._token_cache:
            if len(self._token_cache) >= _TOKEN_CACHE:
                self._token_cache.clear()
            try:
                data = self._post({"prompt": text, "add_special_tokens": add_special_tokens}, self.tokenize_url)
            except GuideRequestError as e:
                raise GuideRequestError(f"{e}; tokenize: vllm needs vLLM's /tokenize next to /v1 (other servers: "
                                        "tokenize: joint)") from e
            ids = _field(data, "tokens", list)
            if not all(isinstance(t, int) for t in ids):
                raise GuideOutputError(f"{self.tokenize_url}: tokens must be integers")
            self._token_cache[key] = ids
        return list(self._token_cache[key])

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

    def _post(self, payload: dict[str, Any], url: str | None = None) -> dict[str, Any]:
        if self._closed:
            raise RuntimeError("this OpenAIGuide was closed")
        url = url or self.url
        body = json.dumps({"model": self.options.model, **payload}).encode()
        attempts = self.options.max_retries + 1
        last = "no attempt made"
        deadline = time.monotonic() + self.options.total_timeout_s
        for attempt in range(attempts):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                attempts = attempt
                break
            request = urllib.request.Request(url, data=body, headers=self._headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=min(self.options.timeout_s, remaining)) as resp:
                    raw = resp.read()
            except urllib.error.HTTPError as e:
                detail = e.read()[:500].decode("utf-8", "replace")
                if e.code not in _RETRY_STATUS:
                    raise GuideRequestError(
                        f"guide server {url} rejected the request: HTTP {e.code}: {detail}"
                    ) from e
                last = f"HTTP {e.code}: {detail}"
            except _TRANSIENT as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            else:
                return _parse_json(raw, url)
            if attempt + 1 < attempts:
                delay = min(self.options.backoff_max_s, self.options.backoff_s * 2**attempt,
                            max(deadline - time.monotonic(), 0.0))
                log.warning(
                    "guide %s attempt %d/%d failed (%s); retrying in %.2fs",
                    url,
                    attempt + 1,
                    attempts,
                    last,
                    delay,
                )
                self._sleep(delay)
        raise GuideUnavailable(f"guide server {url} unavailable after {attempts} attempt(s): {last} (all "
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

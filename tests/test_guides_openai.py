"""The OpenAI-compatible backend against a small fake ``/v1/completions`` server on 127.0.0.1.

The fake server tokenizes with a regex (word pieces, punctuation, whitespace), prepends an echoed
``<s>`` with no log-prob, emits non-ASCII words as two undecodable byte tokens, and gives token ``t``
the log-prob ``-(0.25 * len(t) + 0.01)``, so expected scores are computed independently here. Its
``top_logprobs`` hold the token itself and three fixed others (``FAKE_TOP``), the actual token first as vLLM
does; ``/tokenize`` (vLLM's, outside /v1) gives ids of the same tokens (``<s>`` = 0), which completions accept.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rl_statetune_guides import (
    GuideConfig,
    GuideOutputError,
    GuideRequestError,
    GuideUnavailable,
    OpenAIOptions,
    build_guide,
)
from rl_statetune_guides.openai_guide import OpenAIGuide

_TOKEN = re.compile(r"\s*\w+|\s*[^\w\s]|\s+")


def fake_tokens(text: str) -> list[str]:
    out = []
    for tok in _TOKEN.findall(text):
        out.extend(["bytes:\\xe6", "bytes:\\x97"] if not tok.isascii() else [tok])
    return out


def fake_logprob(tok: str) -> float:
    return -(0.25 * len(tok) + 0.01)


FAKE_TOP = {"": -0.2, " x": -0.3, " y": -1.5}   # "" is how vLLM shows a byte token: never an alternative


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.mode = "ok"
        self.failures_left = 0
        self.requests: list[dict] = []
        self.paths: list[str] = []
        self.vocab: dict[str, int] = {"<s>": 0}
        self.headers_seen: list[dict] = []

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that timed out closes its socket mid-answer: expected here. Anything else is a bug.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class Handler(BaseHTTPRequestHandler):
    server: FakeServer

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        srv = self.server
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv.requests.append(payload)
        srv.paths.append(self.path)
        srv.headers_seen.append(dict(self.headers))
        if self.path == "/tokenize" and srv.mode != "no_tokenize":
            ids = [srv.vocab.setdefault(t, len(srv.vocab)) for t in fake_tokens(payload["prompt"])]
            return self._send(200, json.dumps({"tokens": [0] * payload["add_special_tokens"] + ids}).encode())
        if self.path != "/v1/completions":
            return self._send(404, b'{"error": "not found"}')
        if srv.failures_left > 0:
            srv.failures_left -= 1
            return self._send(503, b'{"error": "warming up"}')
        if srv.mode == "malformed":
            return self._send(200, b'{"choices": [ {"text": ')
        if srv.mode == "bad_request":
            return self._send(400, b'{"error": "max_tokens too large"}')
        if srv.mode == "slow":
            time.sleep(0.5)
        if srv.mode == "missing_choice":
            return self._send(200, json.dumps({"choices": [{"index": 0, "text": "x"}]}).encode())
        choices = []
        for i, prompt in enumerate(payload["prompt"]):
            generated = [" ok"] * payload["max_tokens"]
            if payload.get("echo"):
                if isinstance(prompt, list):   # token ids: the client sent <s> itself if it wanted one
                    names = {v: k for k, v in srv.vocab.items()}
                    toks = [names[t] for t in prompt[: len(prompt) - (srv.mode == "short_echo")]] + generated
                else:
                    toks = ["<s>", *fake_tokens(prompt), *generated]
                lps = [None] + [fake_logprob(t) for t in toks[1:]]
                top = None if srv.mode == "no_top" else [None] + [{t: fake_logprob(t), **FAKE_TOP} for t in toks[1:]]
                logprobs = {"tokens": toks, "token_logprobs": lps, "text_offset": [], "top_logprobs": top}
                choices.append({"index": i, "text": "".join(toks[1:]) if isinstance(prompt, list) else prompt + "".join(generated),
                                "logprobs": logprobs})
            else:
                choices.append({"index": i, "text": f"answer to {prompt}", "logprobs": None})
        choices.reverse()  # clients must order by index, not by position
        self._send(200, json.dumps({"object": "text_completion", "choices": choices}).encode())


@pytest.fixture
def server() -> Iterator[FakeServer]:
    srv = FakeServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def make_guide(url: str, **kw: object) -> OpenAIGuide:
    opts = {"base_url": url, "model": "fake", "timeout_s": 2.0, "max_retries": 2, "backoff_s": 0.01, **kw}
    guide = build_guide(GuideConfig(backend="openai", options=OpenAIOptions(**opts)))
    assert isinstance(guide, OpenAIGuide)
    return guide


def test_generate_batches_and_orders(server: FakeServer) -> None:
    guide = make_guide(server.base_url, batch_size=2, prompt_template="Q: {prompt}\nA:", seed=5)
    out = guide.generate(["one", "two", "three"], max_tokens=7, temperature=0.5)
    assert out == ["answer to Q: one\nA:", "answer to Q: two\nA:", "answer to Q: three\nA:"]
    assert [len(r["prompt"]) for r in server.requests] == [2, 1]
    first = server.requests[0]
    assert first["model"] == "fake" and first["max_tokens"] == 7 and first["temperature"] == 0.5
    assert first["seed"] == 5 and "echo" not in first


def test_score_uses_echo_and_aligns_offsets(server: FakeServer) -> None:
    prompts = ["Question: 2+3?", "Say"]
    conts = [" It is 5, so 5.", " naïve ok"]
    scored = make_guide(server.base_url).score(prompts, conts)
    req = server.requests[0]
    assert req["echo"] is True and req["logprobs"] == 1 and req["max_tokens"] == 1
    assert req["prompt"] == [p + c for p, c in zip(prompts, conts)]
    s0 = scored[0]
    assert s0.pieces == (" It", " is", " 5", ",", " so", " 5", ".")
    assert s0.logprobs == pytest.approx([fake_logprob(t) for t in s0.pieces])
    # " naïve" is two undecodable byte tokens: the first takes the characters, the second is empty.
    s1 = scored[1]
    assert s1.pieces == (" naïve", "", " ok") and "".join(s1.pieces) == conts[1]
    assert s1.logprobs == pytest.approx([fake_logprob("bytes:\\xe6"), fake_logprob("bytes:\\x97"), fake_logprob(" ok")])


def test_token_straddling_the_prompt_boundary(server: FakeServer) -> None:
    # The fake tokenizer merges "ab" + "cd" into one word token: it straddles prompt | continuation.
    (s,) = make_guide(server.base_url, score_max_tokens=0).score(["x ab"], ["cd ef"])
    assert server.requests[0]["max_tokens"] == 0
    assert s.pieces == ("cd", " ef") and s.offsets == ((0, 2), (2, 5))
    assert s.logprobs == pytest.approx([fake_logprob(" abcd"), fake_logprob(" ef")])


def test_score_top_k_from_top_logprobs(server: FakeServer) -> None:
    guide = make_guide(server.base_url, score_max_tokens=0)
    s3, s2 = guide.score(["Say"], [" It is"], top_k=3)[0], guide.score(["Say"], [" It is"], top_k=2)[0]
    assert server.requests[0]["logprobs"] == 3 and server.requests[1]["logprobs"] == 2
    # the k best of the token and FAKE_TOP, best first, "" dropped: " It" (-0.76) is third, so only in k=3's row
    assert s3.top_k == (((" x", -0.3), (" It", fake_logprob(" It"))), ((" x", -0.3), (" is", fake_logprob(" is"))))
    assert s2.top_k == (((" x", -0.3),), ((" x", -0.3),))
    # after a byte token the prefix ends inside a character: no alternatives there
    (s,) = guide.score(["Say"], [" naïve ok"], top_k=3)
    assert s.pieces == (" naïve", "", " ok") and s.top_k[0] == ((" x", -0.3), (" y", -1.5)) and s.top_k[1:] == ((), ())
    # a token straddling the prompt boundary (joint text) has none either; the next one has (" abcd" ends in "cd")
    (s,) = guide.score(["x ab"], ["cd ef"], top_k=3)
    assert s.top_k == ((), ((" x", -0.3), (" ef", fake_logprob(" ef"))))


def test_score_top_k_without_top_logprobs_falls_back(server: FakeServer, caplog: pytest.LogCaptureFixture) -> None:
    server.mode = "no_top"
    (s,) = make_guide(server.base_url).score(["Say"], [" It is"], top_k=3)
    assert s.top_k is None and "cannot return top-k" in caplog.text
    (s,) = make_guide(server.base_url, top_logprobs=False).score(["Say"], [" It is"], top_k=3)
    assert s.top_k is None and server.requests[-1]["logprobs"] == 1


def test_tokenize_vllm_scores_the_continuation_tokenized_on_its_own(server: FakeServer) -> None:
    guide = make_guide(server.base_url, tokenize="vllm", score_max_tokens=0)
    (s,) = guide.score(["x ab"], ["cd ef"])
    # the prompt with <s>, the continuation without, sent as ids: "cd" is its own token, not " abcd"
    assert server.paths == ["/tokenize", "/tokenize", "/v1/completions"]
    assert [r["add_special_tokens"] for r in server.requests[:2]] == [True, False]
    v = server.vocab
    assert server.requests[2]["prompt"] == [[0, v["x"], v[" ab"], v["cd"], v[" ef"]]]
    assert s.pieces == ("cd", " ef") and s.logprobs == pytest.approx([fake_logprob("cd"), fake_logprob(" ef")])
    guide.score(["x ab"], ["gh"])   # the prompt's ids are cached
    assert server.paths[3:] == ["/tokenize", "/v1/completions"] and server.requests[3]["prompt"] == "gh"


def test_tokenize_vllm_echo_of_other_tokens_is_an_output_error(server: FakeServer) -> None:
    server.mode = "short_echo"   # one token fewer echoed than sent: the spans would be misread
    with pytest.raises(GuideOutputError, match="echo returned 4 tokens for the 5 sent"):
        make_guide(server.base_url, tokenize="vllm", score_max_tokens=0).score(["x ab"], ["cd ef"])


def test_tokenize_vllm_on_a_server_without_tokenize_says_so(server: FakeServer) -> None:
    server.mode = "no_tokenize"   # 404 there, as on a server other than vLLM
    with pytest.raises(GuideRequestError, match="tokenize: vllm needs vLLM's /tokenize"):
        make_guide(server.base_url, tokenize="vllm").score(["x"], ["y"])


def test_retries_then_succeeds(server: FakeServer) -> None:
    server.failures_left = 2
    sleeps: list[float] = []
    guide = OpenAIGuide(
        OpenAIOptions(base_url=server.base_url, model="fake", max_retries=2, backoff_s=0.1), sleep=sleeps.append
    )
    assert guide.generate(["p"], max_tokens=1) == ["answer to p"]
    assert len(server.requests) == 3 and sleeps == [0.1, 0.2]  # exponential backoff


def test_persistent_5xx_is_unavailable(server: FakeServer) -> None:
    server.failures_left = 10
    with pytest.raises(GuideUnavailable, match=r"unavailable after 3 attempt\(s\): HTTP 503"):
        make_guide(server.base_url).generate(["p"], max_tokens=1)
    assert len(server.requests) == 3


def test_unreachable_port_names_the_url() -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    t0 = time.monotonic()
    with pytest.raises(GuideUnavailable, match=re.escape(f"{url}/completions")):
        make_guide(url, max_retries=1).generate(["p"], max_tokens=1)
    assert time.monotonic() - t0 < 5


def test_timeout_is_retried_then_unavailable(server: FakeServer) -> None:
    server.mode = "slow"
    with pytest.raises(GuideUnavailable, match="timed out"):
        make_guide(server.base_url, timeout_s=0.1, max_retries=1).generate(["p"], max_tokens=1)
    assert len(server.requests) == 2


def test_malformed_json_is_an_output_error(server: FakeServer) -> None:
    server.mode = "malformed"
    with pytest.raises(GuideOutputError, match="malformed JSON"):
        make_guide(server.base_url).generate(["p"], max_tokens=1)
    assert len(server.requests) == 1  # a malformed answer is not retried


def test_missing_choices_is_an_output_error(server: FakeServer) -> None:
    server.mode = "missing_choice"
    with pytest.raises(GuideOutputError, match=r"expected choices 0\.\.1"):
        make_guide(server.base_url).generate(["p", "q"], max_tokens=1)


def test_client_error_is_not_retried(server: FakeServer) -> None:
    server.mode = "bad_request"
    with pytest.raises(GuideRequestError, match="HTTP 400.*max_tokens too large"):
        make_guide(server.base_url).generate(["p"], max_tokens=1)
    assert len(server.requests) == 1


def test_api_key_from_environment(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_GUIDE_KEY", "sekrit")
    make_guide(server.base_url, api_key_env="FAKE_GUIDE_KEY").generate(["p"], max_tokens=1)
    assert server.headers_seen[0]["Authorization"] == "Bearer sekrit"
    monkeypatch.delenv("FAKE_GUIDE_KEY")
    with pytest.raises(ValueError, match="FAKE_GUIDE_KEY"):
        make_guide(server.base_url, api_key_env="FAKE_GUIDE_KEY")


def test_a_server_that_never_answers_fails_within_the_total_timeout(server: FakeServer) -> None:
    """Accepts the connection, never answers: the wait is bounded by total_timeout_s, retries included."""
    server.mode = "slow"
    t0 = time.monotonic()
    with pytest.raises(GuideUnavailable, match=r"after 1 attempt\(s\): .*timed out.*total_timeout_s=0.3"):
        make_guide(server.base_url, timeout_s=10.0, total_timeout_s=0.3, max_retries=5).generate(["p"], max_tokens=1)
    assert time.monotonic() - t0 < 2

"""The RWKV "world" tokenizer, read from the vocabulary file that ships inside the `rwkv` pip package."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

VOCAB_NAME = "rwkv_vocab_v20230424.txt"


def default_vocab_path() -> Path:
    spec = importlib.util.find_spec("rwkv")
    if spec is None or spec.origin is None:
        raise ImportError("the `rwkv` package (which ships the world vocabulary) is not installed: pip install rwkv")
    path = Path(spec.origin).parent / VOCAB_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed `rwkv` package")
    return path


@lru_cache(maxsize=4)
def _trie(path: str):
    """Building the 65536-entry trie takes ~2 s; every tokenizer on the same vocabulary shares one."""
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    return TRIE_TOKENIZER(path)


class WorldTokenizer:
    """Greedy longest-match byte tokenizer (65536 tokens; id 0 is end of text)."""

    eos_id = 0

    def __init__(self, vocab_path: str | Path | None = None):
        self.vocab_path = Path(vocab_path) if vocab_path else default_vocab_path()
        self._trie = _trie(str(self.vocab_path.resolve()))
        self.vocab_size = max(self._trie.idx2token) + 1  # ids used by the vocabulary (models pad to 65536)

    def encode(self, text: str) -> list[int]:
        return self._trie.encodeBytes(text.encode("utf-8"))

    def decode(self, ids: list[int], errors: str = "replace") -> str:
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def decode_bytes(self, ids: list[int]) -> bytes:
        return b"".join(self._trie.idx2token[i] for i in ids if i != self.eos_id)

    def token_bytes(self, i: int) -> bytes:
        return b"" if i == self.eos_id else self._trie.idx2token[i]

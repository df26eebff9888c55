"""Rendering task prompts into the token ids a local guide model sees (chat template or raw text)."""

from __future__ import annotations

from typing import Any

__all__ = ["PromptEncoder", "fill_template"]


def fill_template(template: str, prompt: str) -> str:
    """The one templating rule of the project: every ``{prompt}`` becomes the prompt; nothing else in the
    template is interpreted (other braces, ``{0}`` or ``{{`` stay as written)."""
    if "{prompt}" not in template:
        raise ValueError(f"prompt template {template!r} must contain {{prompt}}")
    return template.replace("{prompt}", prompt)


class PromptEncoder:
    """Turns a raw task prompt into guide token ids, identically for generation and scoring.

    Args:
        tokenizer: a Hugging Face tokenizer.
        chat_template: ``True`` wraps the prompt as one user message with the tokenizer's chat template
            (error if it has none), ``False`` uses the raw text, ``None`` uses the template when present.
        system_prompt: optional system message (chat template only).
    """

    def __init__(self, tokenizer: Any, chat_template: bool | None = None, system_prompt: str | None = None):
        has_template = getattr(tokenizer, "chat_template", None) is not None
        if chat_template and not has_template:
            raise ValueError(
                f"chat_template=True but the tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat "
                "template; set chat_template: false (raw prompts) or use an instruct model's tokenizer"
            )
        self.tokenizer = tokenizer
        self.use_chat_template = has_template if chat_template is None else chat_template
        if system_prompt is not None and not self.use_chat_template:
            raise ValueError("system_prompt needs a chat template; it would be silently ignored on raw prompts")
        self.system_prompt = system_prompt

    def render(self, prompt: str) -> str:
        """The exact text the guide model is conditioned on."""
        if not self.use_chat_template:
            return prompt
        messages = [{"role": "user", "content": prompt}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(self, prompt: str) -> list[int]:
        """Token ids of :meth:`render`; special tokens come from the template, or the tokenizer's defaults."""
        ids = list(self.tokenizer(self.render(prompt), add_special_tokens=not self.use_chat_template)["input_ids"])
        if not ids:
            bos = getattr(self.tokenizer, "bos_token_id", None)
            if bos is None:
                raise ValueError(
                    "the prompt encodes to no tokens and the tokenizer has no BOS token; the first "
                    "continuation token would have no context to be scored in"
                )
            ids = [bos]
        return ids

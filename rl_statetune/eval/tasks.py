"""Task definitions: Hub location, schema, and the lm-evaluation-harness prompt formats.

A few-shot prompt is ``description + sum(example + "\\n\\n") + doc_to_text(doc)`` where an example is
``doc_to_text(ex) + " " + target(ex)``; multiple-choice continuations are ``" " + choice``. WinoGrande is the
harness's "partial" scoring: one context per option (the sentence up to the blank, with the option filled in) and
one shared continuation (the rest of the sentence).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"


@dataclass(frozen=True)
class MultipleChoiceDoc:
    """One scored question: request i is (contexts[i], continuations[i]); ``norm_texts`` give acc_norm lengths."""

    doc_id: int
    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    gold: int
    norm_texts: tuple[str, ...]

    def __post_init__(self):
        n = len(self.contexts)
        if n < 2 or len(self.continuations) != n or len(self.norm_texts) != n:
            raise ValueError(f"doc {self.doc_id}: need >= 2 choices with one context/continuation/norm text each")
        if not 0 <= self.gold < n:
            raise ValueError(f"doc {self.doc_id}: gold index {self.gold} out of range for {n} choices")


@dataclass(frozen=True)
class GenerationDoc:
    doc_id: int
    prompt: str
    reference: str


@dataclass(frozen=True)
class Task:
    """Base class: subclasses set the class variables and implement ``doc_to_text`` / ``target`` / ``build``."""

    name: ClassVar[str]
    kind: ClassVar[str]                       # "multiple_choice" | "generate_until"
    hub_path: ClassVar[str]
    hub_config: ClassVar[str | None]
    eval_split: ClassVar[str]
    fewshot_split: ClassVar[str]
    fields: ClassVar[tuple[str, ...]]
    metrics: ClassVar[tuple[str, ...]]
    primary_metric: ClassVar[str]
    default_num_fewshot: ClassVar[int] = 0
    fewshot_sampler: ClassVar[str] = "random"  # "random" (seeded, per doc) | "first_n"
    limit_strategy: ClassVar[str] = "first"    # "first" N docs | "stride": N docs evenly spread over the split

    config: str | None = field(default=None)  # Hub config override (e.g. an MMLU subject)

    @property
    def hub_name(self) -> str | None:
        return self.config if self.config is not None else self.hub_config

    def validate(self, doc: dict, where: str) -> None:
        missing = [f for f in self.fields if f not in doc]
        if missing:
            raise ValueError(f"{self.name}: {where} lacks field(s) {missing}; the schema is {list(self.fields)} "
                             f"(got {sorted(doc)})")

    def description(self, doc: dict) -> str:
        return ""

    def fewshot_group(self, doc: dict) -> Any:
        """Few-shot examples are drawn from pool docs with the same group key (None = whole pool)."""
        return None

    def doc_to_text(self, doc: dict) -> str:
        raise NotImplementedError

    def target(self, doc: dict) -> str:
        raise NotImplementedError

    def fewshot_example(self, doc: dict) -> str:
        return self.doc_to_text(doc) + TARGET_DELIMITER + self.target(doc)

    def fewshot_prefix(self, doc: dict, examples: list[dict]) -> str:
        return self.description(doc) + "".join(self.fewshot_example(e) + FEWSHOT_DELIMITER for e in examples)

    def build(self, doc: dict, doc_id: int, examples: list[dict]) -> MultipleChoiceDoc | GenerationDoc:
        raise NotImplementedError


class _ListChoiceTask(Task):
    """Question + fixed list of choices; continuation " " + choice, acc_norm over the choice strings."""

    def choices(self, doc: dict) -> list[str]:
        raise NotImplementedError

    def gold(self, doc: dict) -> int:
        raise NotImplementedError

    def target(self, doc: dict) -> str:
        return self.choices(doc)[self.gold(doc)]

    def build(self, doc, doc_id, examples):
        ctx = self.fewshot_prefix(doc, examples) + self.doc_to_text(doc)
        choices = self.choices(doc)
        return MultipleChoiceDoc(doc_id, (ctx,) * len(choices), tuple(TARGET_DELIMITER + c for c in choices),
                                 self.gold(doc), tuple(choices))


class MMLU(_ListChoiceTask):
    name: ClassVar[str] = "mmlu"
    kind: ClassVar[str] = "multiple_choice"
    hub_path: ClassVar[str] = "cais/mmlu"
    hub_config: ClassVar[str | None] = "all"
    eval_split: ClassVar[str] = "test"
    fewshot_split: ClassVar[str] = "dev"
    fields: ClassVar[tuple[str, ...]] = ("question", "subject", "choices", "answer")
    metrics: ClassVar[tuple[str, ...]] = ("acc", "acc_norm")
    primary_metric: ClassVar[str] = "acc"
    fewshot_sampler: ClassVar[str] = "first_n"
    limit_strategy: ClassVar[str] = "stride"  # the "all" split is sorted by subject

    def description(self, doc):
        subject = str(doc["subject"]).replace("_", " ")
        return f"The following are multiple choice questions (with answers) about {subject}.\n\n"

    def fewshot_group(self, doc):
        return doc["subject"]

    def doc_to_text(self, doc):
        letters = "ABCD"
        if len(doc["choices"]) != 4:
            raise ValueError(f"mmlu: expected 4 choices, got {len(doc['choices'])}")
        lines = [str(doc["question"]).strip()] + [f"{letters[i]}. {c}" for i, c in enumerate(doc["choices"])]
        return "\n".join(lines) + "\nAnswer:"

    def choices(self, doc):
        return ["A", "B", "C", "D"]

    def gold(self, doc):
        return int(doc["answer"])


class ARCChallenge(_ListChoiceTask):
    name: ClassVar[str] = "arc_challenge"
    kind: ClassVar[str] = "multiple_choice"
    hub_path: ClassVar[str] = "allenai/ai2_arc"
    hub_config: ClassVar[str | None] = "ARC-Challenge"
    eval_split: ClassVar[str] = "test"
    fewshot_split: ClassVar[str] = "train"
    fields: ClassVar[tuple[str, ...]] = ("question", "choices", "answerKey")
    metrics: ClassVar[tuple[str, ...]] = ("acc", "acc_norm")
    primary_metric: ClassVar[str] = "acc_norm"

    def doc_to_text(self, doc):
        return f"Question: {doc['question']}\nAnswer:"

    def choices(self, doc):
        return list(doc["choices"]["text"])

    def gold(self, doc):
        labels = list(doc["choices"]["label"])
        if doc["answerKey"] not in labels:
            raise ValueError(f"arc: answerKey {doc['answerKey']!r} not among labels {labels}")
        return labels.index(doc["answerKey"])


class WinoGrande(Task):
    name: ClassVar[str] = "winogrande"
    kind: ClassVar[str] = "multiple_choice"
    hub_path: ClassVar[str] = "allenai/winogrande"
    hub_config: ClassVar[str | None] = "winogrande_xl"
    eval_split: ClassVar[str] = "validation"
    fewshot_split: ClassVar[str] = "train"
    fields: ClassVar[tuple[str, ...]] = ("sentence", "option1", "option2", "answer")
    metrics: ClassVar[tuple[str, ...]] = ("acc",)
    primary_metric: ClassVar[str] = "acc"

    @staticmethod
    def _blank(doc) -> int:
        i = doc["sentence"].find("_")
        if i < 0:
            raise ValueError(f"winogrande: sentence has no blank '_': {doc['sentence']!r}")
        return i

    def options(self, doc) -> list[str]:
        """The sentence up to the blank, with each option filled in."""
        head = doc["sentence"][: self._blank(doc)]
        return [head + doc["option1"], head + doc["option2"]]

    def target(self, doc):
        return doc["sentence"][self._blank(doc) + 1:].strip()

    def gold(self, doc) -> int:
        answer = str(doc["answer"])
        if answer not in ("1", "2"):
            raise ValueError(f"winogrande: answer must be '1' or '2', got {answer!r}")
        return int(answer) - 1

    def doc_to_text(self, doc):
        return self.options(doc)[self.gold(doc)]

    def build(self, doc, doc_id, examples):
        prefix = self.fewshot_prefix(doc, examples)
        options = self.options(doc)
        cont = TARGET_DELIMITER + self.target(doc)
        contexts = tuple(prefix + o for o in options)
        return MultipleChoiceDoc(doc_id, contexts, (cont,) * 2, self.gold(doc), tuple(options))


class GSM8K(Task):
    name: ClassVar[str] = "gsm8k"
    kind: ClassVar[str] = "generate_until"
    hub_path: ClassVar[str] = "openai/gsm8k"
    hub_config: ClassVar[str | None] = "main"
    eval_split: ClassVar[str] = "test"
    fewshot_split: ClassVar[str] = "train"
    fields: ClassVar[tuple[str, ...]] = ("question", "answer")
    metrics: ClassVar[tuple[str, ...]] = ("exact_match,strict-match", "exact_match,flexible-extract")
    primary_metric: ClassVar[str] = "exact_match,strict-match"
    default_num_fewshot: ClassVar[int] = 5
    stop: ClassVar[tuple[str, ...]] = ("Question:", "</s>", "<|im_end|>")

    def doc_to_text(self, doc):
        return f"Question: {doc['question']}\nAnswer:"

    def target(self, doc):
        return doc["answer"]

    def build(self, doc, doc_id, examples):
        return GenerationDoc(doc_id, self.fewshot_prefix(doc, examples) + self.doc_to_text(doc), doc["answer"])


TASKS: dict[str, type[Task]] = {t.name: t for t in (MMLU, GSM8K, WinoGrande, ARCChallenge)}


def get_task(spec: str) -> Task:
    """``"mmlu"`` or ``"mmlu:abstract_algebra"`` (a Hub config after the colon)."""
    name, _, config = spec.strip().partition(":")
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; available: {', '.join(TASKS)}")
    return TASKS[name](config=config or None)

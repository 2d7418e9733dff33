"""Token ids for training and decoding, with the prompt/completion boundary made explicit.

Prompt and completion are tokenised separately and concatenated, so the prompt's ids at training
time are exactly the ids the model sees at inference (no merge across the boundary), and the loss
mask covers exactly the completion plus EOS. Special-token strings inside user text
(``<|end_of_text|>``, ``<eos>``) are split into ordinary tokens: text cannot end a sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import jinja2

from labeltune.prompts import render_prompt
from labeltune.task import TaskSpec

IGNORE_INDEX = -100


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """BOS (if the tokenizer adds one) + prompt ids; special-token strings in text stay plain text."""
    return tokenizer(prompt, add_special_tokens=True, split_special_tokens=True)["input_ids"]


def encode_completion(tokenizer, completion: str) -> list[int]:
    """Answer ids followed by EOS."""
    ids = tokenizer(completion, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return ids + [tokenizer.eos_token_id]


def encode_many(tokenizer, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    """``[tokenizer(t, add_special_tokens=..., split_special_tokens=True)["input_ids"] for t in texts]`` in
    one call. A fast tokenizer goes straight to its Rust backend (``encode_batch_fast``: no offsets, no
    per-row Python conversion into a BatchEncoding), which is what the transformers call runs too."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch_fast"):
        return tokenizer(texts, add_special_tokens=add_special_tokens, split_special_tokens=True)["input_ids"]
    before = backend.encode_special_tokens
    backend.encode_special_tokens = True  # = split_special_tokens
    try:
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=add_special_tokens)]
    finally:
        backend.encode_special_tokens = before


def pad_ids(rows: list[list[int]], value: int, left: bool = False):
    """(ids tensor padded with `value` to the longest row, attention mask 1 on real tokens); pads on
    the right (training, scoring) or the left (generation, so every row ends at the last column)."""
    import torch

    width = max(map(len, rows))
    gaps = [width - len(row) for row in rows]
    if left:
        ids = [[value] * gap + list(row) for gap, row in zip(gaps, rows)]
        mask = [[0] * gap + [1] * len(row) for gap, row in zip(gaps, rows)]
    else:
        ids = [list(row) + [value] * gap for gap, row in zip(gaps, rows)]
        mask = [[1] * len(row) + [0] * gap for gap, row in zip(gaps, rows)]
    shape = (len(rows), width)  # view: a batch of empty rows stays 2-D
    return torch.tensor(ids, dtype=torch.long).view(shape), torch.tensor(mask, dtype=torch.long).view(shape)


def max_answer_tokens(tokenizer, task: TaskSpec) -> int:
    """Length in tokens (with EOS) of the task's longest well-formed answer."""
    return max(len(encode_completion(tokenizer, a)) for a in task.all_answers())


@dataclass
class Prompter:
    """Renders and encodes prompts for one (tokenizer, template, task), keeping within `max_length`.

    A text too long for the budget is cut (by tokens, at its end) before rendering, so the prompt
    always keeps its instruction and answer header; `truncated` says which prompts were cut.
    """

    tokenizer: object
    template: jinja2.Template
    task: TaskSpec
    max_length: int

    def __post_init__(self):
        self.answer_budget = max_answer_tokens(self.tokenizer, self.task)
        overhead = len(encode_prompt(self.tokenizer, render_prompt(self.template, self.task, "")))
        self.text_budget = self.max_length - self.answer_budget - overhead
        if self.text_budget < 8:
            raise ValueError(
                f"max_length {self.max_length} leaves {self.text_budget} tokens for the text "
                f"(template takes {overhead}, answer {self.answer_budget}); raise max_length"
            )

    @cached_property
    def answer_trie(self):
        """The task's answer language as token ids (constrained and score decoding), built once."""
        return AnswerTrie(self.tokenizer, self.task)

    def fit(self, text: str, budget: int | None = None) -> tuple[str, bool]:
        """(text cut to `budget` tokens, default the text budget; whether it was cut)."""
        budget = self.text_budget if budget is None else budget
        ids = self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        if len(ids) <= budget:
            return text, False
        cut = self.tokenizer.decode(ids[:budget], skip_special_tokens=False)
        return cut.rstrip("\ufffd"), True  # drop a half character left by a byte-level cut

    def prompt_ids(self, text: str) -> tuple[list[int], bool]:
        """Ids of the rendered prompt within the budget, and whether the text was cut to get there."""
        limit, budget = self.max_length - self.answer_budget, self.text_budget
        while True:  # re-rendering a cut text can merge tokens differently: shrink until it fits
            fitted, truncated = self.fit(text, budget)
            ids = encode_prompt(self.tokenizer, render_prompt(self.template, self.task, fitted))
            if len(ids) <= limit:
                return ids, truncated
            budget = max(0, budget - 4)

    def prompt_ids_many(self, texts: list[str]) -> list[tuple[list[int], bool]]:
        """``[prompt_ids(t) for t in texts]`` with the texts and prompts tokenised in two batched calls
        (see `encode_many`); only texts over the budget take the per-row cutting path."""
        if not texts:
            return []
        text_lengths = [len(ids) for ids in encode_many(self.tokenizer, texts, add_special_tokens=False)]
        prompts = [render_prompt(self.template, self.task, t) for t in texts]
        encoded = encode_many(self.tokenizer, prompts, add_special_tokens=True)
        limit = self.max_length - self.answer_budget
        return [
            (ids, False) if n <= self.text_budget and len(ids) <= limit else self.prompt_ids(text)
            for text, n, ids in zip(texts, text_lengths, encoded)
        ]

    def training_features(self, text: str, answer: str) -> dict[str, list[int]]:
        prompt_ids, _ = self.prompt_ids(text)
        completion_ids = encode_completion(self.tokenizer, answer)
        return {
            "input_ids": prompt_ids + completion_ids,
            "labels": [IGNORE_INDEX] * len(prompt_ids) + completion_ids,
        }


class AnswerTrie:
    """Token ids of every well-formed answer of a task (+ EOS), as prefix -> allowed next tokens."""

    def __init__(self, tokenizer, task):
        self.eos = tokenizer.eos_token_id
        self.children: dict[tuple, list[int]] = {}
        self.labels_under: dict[tuple, set[str]] = {}
        self.answers: dict[tuple, tuple[str, int | None]] = {}  # token ids (+ EOS) -> (label, score)
        self.memo: dict = {}  # tables derived from the trie, made once (answers.score_plan)
        for label, score in task.answer_pairs():
            ids = tuple(encode_completion(tokenizer, task.render_answer(label, score)))
            self.answers[ids] = (label, score)
            for k in range(len(ids)):
                nxt = self.children.setdefault(ids[:k], [])
                if ids[k] not in nxt:
                    nxt.append(ids[k])
                self.labels_under.setdefault(ids[:k], set()).add(label)
        self.max_len = max(len(a) for a in self.answers)
        self.shared = ()  # the fixed start of every answer ("label : ")
        while len(self.children.get(self.shared, ())) == 1 and len(self.labels_under[self.shared]) > 1:
            self.shared += (self.children[self.shared][0],)
        # the label's own tokens: from `shared` down to where only one label remains
        self.label_path: dict[str, tuple] = {}
        for ids in self.answers:
            k = len(self.shared)
            while len(self.labels_under[ids[:k]]) > 1:
                k += 1
            self.label_path.setdefault(next(iter(self.labels_under[ids[:k]])), ids[len(self.shared) : k])

    def allowed(self, prefix: tuple) -> list[int]:
        return self.children.get(prefix, [self.eos])

    def forced(self, prefix: tuple) -> tuple | None:
        """The rest of the answer if nothing branches below `prefix` (ends with EOS), else None."""
        rest = ()
        while (prefix + rest)[-1:] != (self.eos,):
            nxt = self.children.get(prefix + rest, [])
            if len(nxt) != 1:
                return None
            rest += (nxt[0],)
        return rest

"""Batched greedy generation: left padding, prompts sorted by length, stop at EOS.

``generate`` returns, in input order, the text generated before EOS and whether EOS was reached
(a generation that hits `max_new_tokens` first is reported as unfinished: the "never stops" failure).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Generation:
    text: str  # decoded tokens before EOS (special tokens kept visible)
    finished: bool  # EOS was generated within max_new_tokens


def generate(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int, batch_size: int = 16) -> list[Generation]:
    import torch

    device = next(model.parameters()).device
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    results: list[Generation | None] = [None] * len(prompt_ids)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            width = max(len(prompt_ids[i]) for i in index)
            input_ids = torch.full((len(index), width), pad, dtype=torch.long)
            attention = torch.zeros((len(index), width), dtype=torch.long)
            for row, i in enumerate(index):
                ids = prompt_ids[i]
                input_ids[row, width - len(ids) :] = torch.tensor(ids)
                attention[row, width - len(ids) :] = 1
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=pad,
            )
            for row, i in enumerate(index):
                new = out[row, width:].tolist()
                finished = eos in new
                if finished:
                    new = new[: new.index(eos)]
                results[i] = Generation(tokenizer.decode(new, skip_special_tokens=False), finished)
    return results  # type: ignore[return-value]


@dataclass(frozen=True)
class Prediction:
    label: str | None
    score: int | None
    ok: bool
    reason: str  # "" when ok; a parse.REASONS value, "no_eos" or "empty_input" otherwise
    raw: str  # the generated text
    truncated: bool  # the text was cut to fit the model's length budget


def predict(model, prompter, texts: list[str], max_new_tokens: int | None = None, batch_size: int = 16) -> list[Prediction]:
    """Label texts: render, generate, parse. Empty texts get ok=False without generating."""
    from labeltune.parse import parse

    max_new_tokens = max_new_tokens or prompter.answer_budget + 8
    todo = [i for i, t in enumerate(texts) if t is not None and str(t).strip()]
    encoded = [prompter.prompt_ids(str(texts[i])) for i in todo]
    generations = generate(model, prompter.tokenizer, [ids for ids, _ in encoded], max_new_tokens, batch_size)
    out = [Prediction(None, None, False, "empty_input", "", False)] * len(texts)
    for i, (_, truncated), gen in zip(todo, encoded, generations):
        parsed = parse(gen.text, prompter.task)
        reason = parsed.reason or ("" if gen.finished else "no_eos")
        ok = parsed.ok and gen.finished
        out[i] = Prediction(parsed.label if ok else None, parsed.score if ok else None, ok, reason, gen.text, truncated)
    return out

"""Batched decoding in three modes, all with left padding and prompts sorted by length.

- ``generate``: free greedy generation until EOS, then the strict parser (measures format compliance;
  a generation that hits `max_new_tokens` first is reported as ``no_eos``).
- ``constrained``: greedy generation restricted at every step to the task's answer language (an
  ``AnswerTrie`` of the token ids of every well-formed answer + EOS), so only answers the task spec
  accepts can come out, with or without fine-tuning.
- ``score``: no generation for the label. One batched forward pass over prompt + the answer's fixed
  start (``label : ``) gives the distribution over the tokens where the labels diverge; a label's
  probability is the product of its tokens' probabilities renormalised over the trie's allowed
  tokens at each node (multi-token labels scored as full continuations, extra forward passes only
  where labels share a token). The score of a label that has one is then decoded greedily within the
  trie (the most probable integer one token at a time, not the expected value: Llama 3 writes up to
  three digits per token, so the expected value would need ~100 continuations per row). The answer
  string is written by the task spec, so it is well-formed by construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


class AnswerTrie:
    """Token ids of every well-formed answer of a task (+ EOS), as prefix -> allowed next tokens."""

    def __init__(self, tokenizer, task):
        from labeltune.features import encode_completion

        self.eos = tokenizer.eos_token_id
        self.children: dict[tuple, list[int]] = {}
        self.labels_under: dict[tuple, set[str]] = {}
        self.answers: dict[tuple, str] = {}
        for answer in task.all_answers():
            ids = tuple(encode_completion(tokenizer, answer))
            self.answers[ids] = answer
            label = answer.split("\n")[0][len("label : ") :]
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


class SubTrie:
    """The part of an AnswerTrie below `start` (e.g. the score after a chosen label)."""

    def __init__(self, trie: AnswerTrie, start: tuple):
        self.trie, self.start = trie, start
        self.max_len = trie.max_len - len(start)

    def allowed(self, prefix: tuple) -> list[int]:
        return self.trie.allowed(self.start + prefix)


@dataclass(frozen=True)
class Generation:
    text: str  # decoded tokens before EOS (special tokens kept visible)
    finished: bool  # EOS was generated within max_new_tokens
    label_probs: dict | None = field(default=None)  # constrained mode: label -> probability


def _padded(prompt_ids: list[list[int]], index: list[int], pad: int):
    import torch

    width = max(len(prompt_ids[i]) for i in index)
    input_ids = torch.full((len(index), width), pad, dtype=torch.long)
    attention = torch.zeros((len(index), width), dtype=torch.long)
    for row, i in enumerate(index):
        ids = prompt_ids[i]
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention[row, width - len(ids) :] = 1
    return input_ids, attention, width


def _renormalised(logits_row, allowed: list[int], temperature: float) -> list[float]:
    values = [float(logits_row[t]) / temperature for t in allowed]
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def generate(
    model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int, batch_size: int = 16,
    trie: AnswerTrie | SubTrie | None = None, temperature: float = 1.0,
) -> list[Generation]:
    """Greedy generation in input order; with a trie, constrained to the task's answers."""
    import torch

    device = next(model.parameters()).device
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    results: list[Generation | None] = [None] * len(prompt_ids)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            input_ids, attention, width = _padded(prompt_ids, index, pad)
            extra = {}
            if trie is not None:
                extra = dict(
                    prefix_allowed_tokens_fn=lambda _, ids, w=width: trie.allowed(tuple(ids[w:].tolist())),
                    output_logits=True, return_dict_in_generate=True,
                )
            out = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention.to(device),
                max_new_tokens=trie.max_len if trie is not None else max_new_tokens,
                do_sample=False, eos_token_id=eos, pad_token_id=pad, **extra,
            )
            sequences = out.sequences if trie is not None else out
            for row, i in enumerate(index):
                new = sequences[row, width:].tolist()
                finished = eos in new
                if finished:
                    new = new[: new.index(eos)]
                probs = None
                one_step_labels = isinstance(trie, AnswerTrie) and all(len(p) == 1 for p in trie.label_path.values())
                if one_step_labels and len(new) > len(trie.shared):
                    branch = trie.allowed(trie.shared)
                    p = _renormalised(out.logits[len(trie.shared)][row], branch, temperature)
                    probs = {next(iter(trie.labels_under[trie.shared + (t,)])): q for t, q in zip(branch, p)}
                results[i] = Generation(tokenizer.decode(new, skip_special_tokens=False), finished, probs)
    return results  # type: ignore[return-value]


def label_distribution(
    model, tokenizer, prompt_ids: list[list[int]], trie: AnswerTrie, batch_size: int = 16, temperature: float = 1.0
) -> list[dict[str, float]]:
    """score mode: P(label | prompt) for every label, in input order, by forward passes only."""
    import torch

    device = next(model.parameters()).device
    labels = list(trie.label_path)
    logp = [dict.fromkeys(labels, 0.0) for _ in prompt_ids]
    # group the label paths by their proper prefixes: each needs one forward pass (usually just `()`)
    prefixes = sorted({path[:k] for path in trie.label_path.values() for k in range(len(path))}, key=len)
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    with torch.inference_mode():
        for prefix in prefixes:
            node = trie.shared + prefix
            allowed = trie.allowed(node)
            extended = [ids + list(node) for ids in prompt_ids]
            for start in range(0, len(order), batch_size):
                index = order[start : start + batch_size]
                input_ids, attention, _ = _padded(extended, index, tokenizer.pad_token_id)
                position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
                logits = model(
                    input_ids=input_ids.to(device), attention_mask=attention.to(device),
                    position_ids=position_ids.to(device), use_cache=False, logits_to_keep=1,
                ).logits[:, -1, :].float().cpu()
                for row, i in enumerate(index):
                    probs = dict(zip(allowed, _renormalised(logits[row], allowed, temperature)))
                    for label, path in trie.label_path.items():
                        if len(path) > len(prefix) and path[: len(prefix)] == prefix:
                            logp[i][label] += math.log(max(probs[path[len(prefix)]], 1e-300))
    out = []
    for row in logp:
        top = max(row.values())
        exps = {k: math.exp(v - top) for k, v in row.items()}
        total = sum(exps.values())
        out.append({k: v / total for k, v in exps.items()})
    return out


@dataclass(frozen=True)
class Prediction:
    label: str | None
    score: int | None
    ok: bool
    reason: str  # "" when ok; a parse.REASONS value, "no_eos" or "empty_input" otherwise
    raw: str  # the generated (or, in score mode, the spec-written) answer
    truncated: bool  # the text was cut to fit the model's length budget
    probs: dict | None = None  # label -> probability (constrained and score modes)

    @property
    def confidence(self) -> float | None:
        return None if self.probs is None or self.label is None else self.probs[self.label]


MODES = ("generate", "constrained", "score")


def predict(
    model, prompter, texts: list, max_new_tokens: int | None = None, batch_size: int = 16,
    mode: str = "generate", temperature: float = 1.0,
) -> list[Prediction]:
    """Label texts: render, decode in `mode`, parse. Empty texts get ok=False without decoding.
    `temperature` rescales label probabilities (see labeltune.calibrate); labels are unaffected."""
    from labeltune.parse import parse

    from labeltune.calibrate import apply_temperature

    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; available: {', '.join(MODES)}")
    tokenizer, task = prompter.tokenizer, prompter.task
    todo = [i for i, t in enumerate(texts) if t is not None and str(t).strip()]
    encoded = [prompter.prompt_ids(str(texts[i])) for i in todo]
    prompts = [ids for ids, _ in encoded]
    out = [Prediction(None, None, False, "empty_input", "", False)] * len(texts)
    if mode == "score":
        trie = AnswerTrie(tokenizer, task)
        dists = [apply_temperature(d, temperature) for d in label_distribution(model, tokenizer, prompts, trie, batch_size)]
        chosen = [max(d, key=d.get) for d in dists]
        answers = {}
        for label in trie.label_path:
            rows = [k for k, lab in enumerate(chosen) if lab == label]
            start = trie.shared + trie.label_path[label]
            if not rows or len(trie.allowed(start)) == 1 and trie.allowed(start)[0] == trie.eos:
                continue  # no score to decode after this label
            sub = SubTrie(trie, start)
            for k, gen in zip(rows, generate(model, tokenizer, [prompts[k] + list(start) for k in rows], 0, batch_size, sub)):
                answers[k] = tokenizer.decode(list(start), skip_special_tokens=False) + gen.text
        for k, (i, (_, truncated)) in enumerate(zip(todo, encoded)):
            parsed = parse(answers[k], task) if k in answers else None
            score = parsed.score if parsed is not None and parsed.ok else None
            answer = task.render_answer(chosen[k], score)
            out[i] = Prediction(chosen[k], score if task.score is not None else None, True, "", answer, truncated, dists[k])
        return out
    trie = AnswerTrie(tokenizer, task) if mode == "constrained" else None
    max_new_tokens = max_new_tokens or prompter.answer_budget + 8
    generations = generate(model, tokenizer, prompts, max_new_tokens, batch_size, trie)
    for i, (_, truncated), gen in zip(todo, encoded, generations):
        parsed = parse(gen.text, task)
        reason = parsed.reason or ("" if gen.finished else "no_eos")
        ok = parsed.ok and gen.finished
        probs = apply_temperature(gen.label_probs, temperature) if gen.label_probs else None
        out[i] = Prediction(parsed.label if ok else None, parsed.score if ok else None, ok, reason, gen.text, truncated, probs)
    return out

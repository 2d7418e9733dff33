"""From an engine's log-probabilities to answers: the maths both engines share, no torch, no model.

An engine (labeltune.decode for hf, labeltune.vllm_engine for vLLM) computes log-probabilities of the
tokens the answer trie (labeltune.features.AnswerTrie) allows at its nodes, or generates text; this
module turns them into an ``Answer``:

- a label's probability: the sum over its tokens of log p renormalised over each node's allowed tokens,
  then a softmax over the labels (label_distribution); the decision after temperature and label biases
  (choose_label);
- a label's score: below the node where its score starts (score_root), the exact distribution over its
  allowed scores, the product of the renormalised probabilities along each score's path, and the greedy
  path (score_distribution), then one score from it (estimate_score);
- a generation finished: the strict parser, ``no_eos`` when the token limit stopped it (generated_answer).

An engine supplies, per node, ``{token id: log p}`` for the node's allowed tokens (raw logits or
log-probabilities: both are renormalised here).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from labeltune.config import MODES, SCORE_ESTIMATES
from labeltune.metrics import adjust, apply_temperature, argmax_label
from labeltune.parse import parse

LogProbs = dict[int, float]  # allowed token id -> log p (unnormalised is fine)


@dataclass(frozen=True)
class Answer:
    """One text's decoded answer, as an engine returns it (labeltune.api.Prediction is the user's view)."""

    label: str | None
    score: int | None
    ok: bool
    reason: str  # "" when ok; a parse.REASONS value, "no_eos" or "empty_input" otherwise
    raw: str  # the generated (or, in score mode, the spec-written) answer
    truncated: bool  # the text was cut to fit the model's length budget
    probs: dict | None = None  # label -> probability (constrained and score modes)
    score_greedy: int | None = None  # score mode: the greedy score, beside the chosen estimate in `score`

    @property
    def confidence(self) -> float | None:
        return None if self.probs is None or self.label is None else self.probs[self.label]


EMPTY_INPUT = Answer(None, None, False, "empty_input", "", False)


@dataclass(frozen=True)
class DecodeSettings:
    """What an engine's predict takes besides the texts and the mode (engine.predict's keyword arguments)."""

    temperature: float = 1.0  # rescales label probabilities (labeltune.calibrate); labels unaffected
    score_estimate: str = "expected"  # score mode: estimate_score's `how`
    label_bias: dict[str, float] | None = None  # per-label shifts of the decision (labeltune.calibrate)
    max_new_tokens: int | None = None  # generate: None = the task's longest answer + 8 tokens


def check_mode(mode: str, engine: str, decoders: dict) -> None:
    """Refuse a mode that is not a decode mode, or that this engine does not decode, listing those it does."""
    if mode not in MODES or mode not in decoders:
        why = "unknown mode" if mode not in MODES else f"the {engine} engine has no mode"
        raise ValueError(f"{why} {mode!r}; available: {', '.join(m for m in MODES if m in decoders)}")


def answer_texts(prompter, texts: list, decode: Callable[[list[list[int]]], list[Answer]]) -> list[Answer]:
    """One Answer per text, in order: empty texts (None, blank) get EMPTY_INPUT without decoding; the rest
    are rendered to prompt token ids and decoded together by `decode`, and marked truncated where cut."""
    todo = [i for i, t in enumerate(texts) if t is not None and str(t).strip()]
    out = [EMPTY_INPUT] * len(texts)
    if not todo:
        return out
    encoded = prompter.prompt_ids_many([str(texts[i]) for i in todo])
    for i, (_, truncated), answer in zip(todo, encoded, decode([ids for ids, _ in encoded])):
        out[i] = replace(answer, truncated=truncated) if truncated else answer
    return out


def log_softmax(values: LogProbs) -> LogProbs:
    """The values renormalised to log-probabilities over their own keys."""
    top = max(values.values())
    norm = top + math.log(sum(math.exp(v - top) for v in values.values()))
    return {t: v - norm for t, v in values.items()}


def label_nodes(trie) -> list[tuple]:
    """The label trie's nodes, as token paths after ``trie.shared``, shorter first (() first): where a
    label's next token is chosen. Usually only (); more where labels share a token."""
    return sorted({p[:k] for p in trie.label_path.values() for k in range(len(p))}, key=len)


def label_distribution(trie, at: dict[tuple, LogProbs]) -> dict[str, float]:
    """p(label): log p summed over its tokens, each renormalised over the node's allowed tokens (`at`:
    label node -> log p of its allowed tokens), then a softmax over the labels."""
    normal = {node: log_softmax(lp) for node, lp in at.items()}
    logp = {
        lab: sum(normal[path[:k]][t] for k, t in enumerate(path)) for lab, path in trie.label_path.items()
    }
    return {lab: math.exp(v) for lab, v in log_softmax(logp).items()}


def choose_label(
    dist: dict[str, float], temperature: float = 1.0, label_bias: dict[str, float] | None = None
) -> str:
    """The most probable label after the temperature and the per-label biases (labeltune.calibrate)."""
    return argmax_label(apply_temperature(dist, temperature), label_bias)


def score_root(trie, label: str) -> tuple:
    """The answer's token ids from its start through `label` and the fixed run after it (``\\nscore : ``):
    up to the node where its score branches, or through EOS for an answer without a score."""
    root = trie.shared + trie.label_path[label]
    while len(nxt := trie.allowed(root)) == 1:
        root += (nxt[0],)
        if nxt[0] == trie.eos:
            break
    return root


def has_score(trie, root: tuple) -> bool:
    return root[-1] != trie.eos


def score_tree(trie, root: tuple) -> tuple[list[tuple], list[tuple[tuple, int]]]:
    """Below the branching node `root` of a scored answer: (the prefixes to feed, shorter first: every node
    where the answer still branches and their ancestors; the leaves: (path to EOS, score))."""
    leaves = [
        (ids[len(root) :], score) for ids, (_, score) in trie.answers.items() if ids[: len(root)] == root
    ]
    branching = {
        path[:k] for path, _ in leaves for k in range(1, len(path)) if len(trie.allowed(root + path[:k])) > 1
    }
    feed = {b[:k] for b in branching for k in range(1, len(b) + 1)}
    return sorted(feed, key=lambda p: (len(p), p)), leaves


def branching_nodes(trie, root: tuple) -> list[tuple]:
    """The paths below `root` (() included) where the answer branches: where score_distribution needs
    log-probabilities."""
    feed, _ = score_tree(trie, root)
    return [()] + [p for p in feed if len(trie.allowed(root + p)) > 1]


def score_plan(trie, root: tuple) -> tuple[list[tuple[tuple, int]], list[list[tuple[tuple, int]]]]:
    """(score_tree's leaves below `root`, each leaf's steps where the answer branches: (path before the
    step, token)), worked out once per trie and root (kept in ``trie.memo``: score_distribution runs per
    row)."""
    key = ("score_plan", root)
    if key not in trie.memo:
        _, leaves = score_tree(trie, root)
        steps = [
            [(path[:j], t) for j, t in enumerate(path) if len(trie.allowed(root + path[:j])) > 1]
            for path, _ in leaves
        ]
        trie.memo[key] = (leaves, steps)
    return trie.memo[key]


def score_distribution(trie, root: tuple, at: dict[tuple, LogProbs]) -> tuple[dict[int, float], int]:
    """({score: probability}, greedy score) below `root` from the log-probabilities at its branching nodes
    (`at`, keyed by the path below root, as branching_nodes lists them): p(score) is the product of the
    renormalised probabilities along its path; greedy takes the most probable token at every branch
    (ties: the first allowed, as an argmax)."""
    leaves, steps = score_plan(trie, root)
    normal = {node: log_softmax(lp) for node, lp in at.items()}
    scores = {value: math.exp(sum(normal[pre][t] for pre, t in st)) for (_, value), st in zip(leaves, steps)}
    walk: tuple = ()
    while not walk or walk[-1] != trie.eos:
        allowed = trie.allowed(root + walk)
        lp = normal[walk] if len(allowed) > 1 else {allowed[0]: 0.0}
        walk += (max(allowed, key=lambda t: (lp[t], -allowed.index(t))),)
    return scores, dict(leaves)[walk]


def estimate_score(probs: dict[int, float], greedy: int, how: str) -> int:
    """One score from a score distribution: the allowed score nearest the expected value (the default:
    a graded quantity is not collapsed onto its mode), the median, or the greedy one (what generation
    writes: the most probable token at each step)."""
    if how == "greedy":
        return greedy
    allowed = sorted(probs)
    if how == "median":
        total, acc = sum(probs.values()), 0.0
        for score in allowed:
            acc += probs[score]
            if acc >= total / 2:
                return score
        return allowed[-1]
    if how != "expected":
        raise ValueError(f"unknown score estimate {how!r}; available: {', '.join(SCORE_ESTIMATES)}")
    mean = sum(s * p for s, p in probs.items()) / sum(probs.values())
    return min(allowed, key=lambda s: (abs(s - mean), s))


def scored_answer(
    trie,
    task,
    label: str,
    dist: dict[str, float],
    scored: tuple[dict[int, float], int] | None,
    settings: DecodeSettings,
) -> Answer:
    """score mode's answer for `label`: its score estimated from `scored` (score_distribution; None: a label
    without a score, whose fixed score (or None) is the trie's), the answer written by the task spec
    (well-formed by construction), the label probabilities after temperature and biases."""
    fixed = None if scored else trie.answers[score_root(trie, label)][1]
    greedy = scored[1] if scored else fixed
    score = estimate_score(scored[0], greedy, settings.score_estimate) if scored else fixed
    return Answer(
        label,
        score,
        True,
        "",
        task.render_answer(label, score),
        False,
        adjust(dist, settings.temperature, settings.label_bias),
        greedy,
    )


def one_token_labels(trie) -> list[int] | None:
    """The tokens after ``trie.shared`` where every label is one token (None otherwise): where a generation's
    label probabilities can be read at one position."""
    if all(len(p) == 1 for p in trie.label_path.values()):
        return trie.allowed(trie.shared)
    return None


def first_token_label_probs(trie, at: LogProbs) -> dict[str, float]:
    """Label -> probability from the log p of the one-token labels' tokens (one_token_labels) after
    ``trie.shared``, renormalised over them."""
    return {
        next(iter(trie.labels_under[trie.shared + (t,)])): math.exp(v) for t, v in log_softmax(at).items()
    }


def generated_answer(
    text: str, finished: bool, task, label_probs: dict[str, float] | None = None, temperature: float = 1.0
) -> Answer:
    """A generation's answer: the strict parser; ``no_eos`` when it did not finish; the label probabilities
    (constrained mode) after the temperature."""
    parsed = parse(text, task)
    ok = parsed.ok and finished
    reason = parsed.reason or ("" if finished else "no_eos")
    probs = apply_temperature(label_probs, temperature) if label_probs else None
    return Answer(parsed.label if ok else None, parsed.score if ok else None, ok, reason, text, False, probs)

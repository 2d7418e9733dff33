"""Batched decoding in three modes, all with left padding and prompts sorted by length.

- ``generate``: free greedy generation until EOS, then the strict parser (measures format compliance;
  a generation that hits `max_new_tokens` first is reported as ``no_eos``).
- ``constrained``: greedy generation restricted at every step to the task's answer language (an
  ``AnswerTrie`` of the token ids of every well-formed answer + EOS), so only answers the task spec
  accepts can come out, with or without fine-tuning.
- ``score``: no generation for the label. One batched forward pass over prompt + the answer's fixed
  start (``label : ``) gives the distribution over the tokens where the labels diverge; a label's
  probability is the product of its tokens' probabilities renormalised over the trie's allowed
  tokens at each node (multi-token labels scored as full continuations: one cached step per node
  where labels share a token, e.g. Llama 3's "Ġ" before "1" and "0"). The score of a label that has
  one is then decoded greedily within the trie from the same KV cache (the most probable integer one
  token at a time, not the expected value: Llama 3 writes up to three digits per token, so the
  expected value would need ~100 continuations per row). The answer string is written by the task
  spec, so it is well-formed by construction.

  Prompts of one call share the template's instruction (the longest common prefix of their token
  ids, ~3/4 of a prompt for the bundled templates): its KV cache is computed once and every batch
  prefills only the rest of its prompts on top of it (pads sit between the shared prefix and each
  row's own tokens, masked; positions continue from the prefix), as vLLM / SGLang prefix caching do.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

from labeltune.config import MODES
from labeltune.features import AnswerTrie, pad_ids
from labeltune.metrics import apply_temperature
from labeltune.parse import parse


@dataclass(frozen=True)
class Generation:
    text: str  # decoded tokens before EOS (special tokens kept visible)
    finished: bool  # EOS was generated within max_new_tokens
    label_probs: dict | None = field(default=None)  # constrained mode: label -> probability


TOKEN_BUDGET = 16384  # rows x padded width of one batch


def length_batches(prompt_ids: list[list[int]], batch_size: int, token_budget: int = TOKEN_BUDGET) -> list[list[int]]:
    """Indices in batches of similar length: sorted by length, each batch at most `batch_size` rows
    and `token_budget` padded tokens (a single longer prompt still gets its own batch)."""
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    batches, current = [], []
    for i in order:  # sorted ascending, so the newest row sets the padded width
        if current and (len(current) >= batch_size or (len(current) + 1) * len(prompt_ids[i]) > token_budget):
            batches.append(current)
            current = []
        current.append(i)
    return batches + ([current] if current else [])


MIN_SHARED_PREFIX = 8  # tokens; below this a separate prefix forward costs more than it saves


def common_prefix_length(prompt_ids: list[list[int]]) -> int:
    """Length of the longest token prefix shared by every prompt, leaving each at least one own token."""
    if len(prompt_ids) < 2:
        return 0
    first = prompt_ids[0]
    k = min(len(ids) for ids in prompt_ids) - 1
    for ids in prompt_ids[1:]:
        k = next((j for j in range(k) if ids[j] != first[j]), k)
    return max(k, 0)


def last_position(input_ids):
    """``logits_to_keep`` for the logits of the last column only, as an index tensor: the kept hidden
    states are then a contiguous copy and the LM head one matrix product (the int form ``1`` slices a
    strided view, which CPU matmul runs as one small product per row, ~3x slower here)."""
    import torch

    return torch.tensor([input_ids.shape[1] - 1], device=input_ids.device)


def shared_prefix(model, prompt_ids: list[list[int]], device) -> tuple[int, object]:
    """(length, batch-1 KV cache) of the prompts' common prefix; (0, None) when it is shorter than
    MIN_SHARED_PREFIX."""
    import torch

    k = common_prefix_length(prompt_ids)
    if k < MIN_SHARED_PREFIX:
        return 0, None
    out = model(input_ids=torch.tensor([prompt_ids[0][:k]], device=device), use_cache=True, logits_to_keep=1)
    return k, out.past_key_values


def _expanded(shared_cache, n: int):
    """A fresh cache holding the batch-1 `shared_cache` for `n` rows. The rows are broadcast views, not
    copies: a dynamic cache only concatenates onto its tensors, which materialises them once, in the
    batch's first forward (other cache types get real copies)."""
    cache = copy.deepcopy(shared_cache)
    layers = getattr(cache, "layers", None)
    if not layers or not all(type(layer).__name__ in ("DynamicLayer", "DynamicSlidingWindowLayer") for layer in layers):
        cache.batch_repeat_interleave(n)
        return cache
    for layer in layers:
        layer.keys = layer.keys.expand(n, *layer.keys.shape[1:])
        layer.values = layer.values.expand(n, *layer.values.shape[1:])
    return cache


def prefill_inputs(rows: list[list[int]], shared_len: int, shared_cache, pad: int):
    """One batch's (input_ids, attention mask, position ids, cache) for prompts whose first `shared_len`
    tokens are the shared prefix already in `shared_cache` (None: no sharing): the rows' own tokens,
    left-padded, after a copy of that cache expanded to the batch; the mask spans prefix + own tokens."""
    import torch

    own, attention = pad_ids([r[shared_len:] for r in rows], pad, left=True)
    cache = None
    if shared_cache is not None:
        cache = _expanded(shared_cache, len(rows))
        attention = torch.cat([torch.ones((len(rows), shared_len), dtype=torch.long), attention], dim=1)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)[:, shared_len:]
    return own, attention, positions, cache


def _renormalised(logits_row, allowed: list[int], temperature: float) -> list[float]:
    values = [float(logits_row[t]) / temperature for t in allowed]
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def generate(
    model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int, batch_size: int = 16,
    trie: AnswerTrie | None = None,
) -> list[Generation]:
    """Greedy generation in input order; with a trie, constrained to the task's answers."""
    import torch

    device = next(model.parameters()).device
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    results: list[Generation | None] = [None] * len(prompt_ids)
    with torch.inference_mode():
        for index in length_batches(prompt_ids, batch_size):
            input_ids, attention = pad_ids([prompt_ids[i] for i in index], pad, left=True)
            width = input_ids.shape[1]
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
                    p = _renormalised(out.logits[len(trie.shared)][row], branch, 1.0)
                    probs = {next(iter(trie.labels_under[trie.shared + (t,)])): q for t, q in zip(branch, p)}
                results[i] = Generation(tokenizer.decode(new, skip_special_tokens=False), finished, probs)
    return results  # type: ignore[return-value]


def _multi_step(model, pad: int, chunks: list[list[int]], mask, positions, cache):
    """Feed each row its own list of tokens (left-padded, pads masked, so every row's last token is in the
    last column and only that column goes through the LM head) in one cached call; returns the logits
    after each row's last token, the cache, the grown mask and the rows' last positions."""
    import torch

    device = next(model.parameters()).device
    tokens, real = pad_ids(chunks, pad, left=True)
    mask = torch.cat([mask, real], dim=1)
    tokens = tokens.to(device)
    out = model(
        input_ids=tokens, attention_mask=mask.to(device),
        position_ids=(positions.view(-1, 1) + real.cumsum(-1)).to(device), past_key_values=cache, use_cache=True,
        logits_to_keep=last_position(tokens),
    )
    return out.logits[:, -1].float().cpu(), out.past_key_values, mask, positions + real.sum(-1)


def _prefill(model, rows: list[list[int]], shared_len: int, shared_cache, pad: int):
    """(1) One forward over each row (prompt + the answer's fixed start) after the shared prefix's cache:
    (logits after the last token, cache, attention mask, each row's last position)."""
    device = next(model.parameters()).device
    own, attention, positions, cache = prefill_inputs(rows, shared_len, shared_cache, pad)
    own = own.to(device)
    out = model(
        input_ids=own, attention_mask=attention.to(device), position_ids=positions.to(device),
        past_key_values=cache, use_cache=True, logits_to_keep=last_position(own),
    )
    return out.logits[:, -1, :].float().cpu(), out.past_key_values, attention, attention.sum(-1) - 1


def _label_nodes(model, pad: int, trie: AnswerTrie, logits, cache, attention, last_pos):
    """(2) One cached step per internal node of the label trie (where labels share a token), each visible
    only to its descendants through the mask: (logits at every node, the cache, the column of each fed
    node, the mask over every column)."""
    import torch

    n, base_len = attention.shape[0], attention.shape[1]
    internal = sorted({p[:k] for p in trie.label_path.values() for k in range(1, len(p))}, key=len)
    logits_at, slots, columns = {(): logits}, {}, attention
    for prefix in internal:  # every row feeds this prefix's last token, seeing only its ancestors
        visible = torch.zeros((n, columns.shape[1] - base_len), dtype=torch.long)
        for anc, col in slots.items():
            if prefix[: len(anc)] == anc:
                visible[:, col - base_len] = 1
        before = torch.cat([attention, visible], dim=1)
        logits_at[prefix], cache, mask, _ = _multi_step(model, pad, [[prefix[-1]]] * n, before, last_pos + len(prefix) - 1, cache)
        slots[prefix] = columns.shape[1]
        columns = mask
    return logits_at, cache, slots, columns


def _label_probs(trie: AnswerTrie, logits_at: dict) -> list[dict[str, float]]:
    """Every row's label distribution: log p(label) = sum over its tokens of the log softmax over the
    node's allowed tokens, then normalised over the labels."""
    import torch

    labels = list(trie.label_path)
    logp = torch.zeros((next(iter(logits_at.values())).shape[0], len(labels)))
    for j, path in enumerate(trie.label_path.values()):
        for k, token in enumerate(path):
            allowed = trie.allowed(trie.shared + path[:k])
            logp[:, j] += torch.log_softmax(logits_at[path[:k]][:, allowed], dim=-1)[:, allowed.index(token)]
    return [dict(zip(labels, probs)) for probs in torch.softmax(logp.double(), dim=-1).tolist()]


def _decode_rest(model, pad: int, trie: AnswerTrie, chosen: list[str], cache, slots: dict, attention, columns,
                 last_pos) -> list[tuple]:
    """(3) The chosen label's remaining tokens, then the score, greedy within the trie until EOS: one cached
    call per choice, fed every token decided since the last one, finished rows dropped from the cache.
    Returns each row's answer token ids (from the answer's start, ending with EOS)."""
    import torch

    device = next(model.parameters()).device
    n, base_len = len(chosen), attention.shape[1]
    fed = [max((len(p) for p in slots if trie.label_path[c][: len(p)] == p), default=0) for c in chosen]
    node = [trie.shared + trie.label_path[c][:f] for c, f in zip(chosen, fed)]
    queue = [list(trie.label_path[c][f:]) for c, f in zip(chosen, fed)]
    keep = torch.zeros((n, columns.shape[1] - base_len), dtype=torch.long)
    for row, c in enumerate(chosen):  # each row sees the label-node columns of its own label only
        for anc, col in slots.items():
            if trie.label_path[c][: len(anc)] == anc:
                keep[row, col - base_len] = 1
    mask = torch.cat([attention, keep], dim=1)
    positions = last_pos + torch.tensor(fed)  # of each row's last token in the cache
    done = [False] * n
    logits, alive = None, list(range(n))  # the batch rows in the cache, in cache order
    while True:  # each call feeds every row's decided tokens up to its next real choice
        chunks: list[list[int]] = []
        at = {row: k for k, row in enumerate(alive)}
        for row in range(n):
            if not done[row] and not queue[row]:  # choose the next token from the last call's logits
                allowed = trie.allowed(node[row])
                tok = allowed[int(torch.argmax(logits[at[row], allowed]))] if len(allowed) > 1 else allowed[0]
                queue[row].append(tok)
            if not done[row]:
                node[row] = node[row] + tuple(queue[row])
                rest = trie.forced(node[row])
                if rest is not None or node[row][-1] == trie.eos:  # nothing left to choose
                    node[row] = node[row] + (rest or ())
                    done[row] = True
                    queue[row] = []
                else:  # feed through any single-child run (e.g. "\nscore : "), in the same call
                    while len(nxt := trie.allowed(node[row])) == 1:
                        node[row] = node[row] + (nxt[0],)
                        queue[row].append(nxt[0])
            chunks.append(queue[row])
            queue[row] = []
        live = [row for row in range(n) if chunks[row]]  # finished rows have nothing left to feed
        if not live:
            return node
        if len(live) < len(alive) and hasattr(cache, "batch_select_indices"):
            # drop finished rows from the cache: later calls cost only what is left
            rows = torch.tensor([at[row] for row in live])
            cache.batch_select_indices(rows.to(device))
            mask, positions, alive = mask[rows], positions[rows], live
        logits, cache, mask, positions = _multi_step(model, pad, [chunks[row] for row in alive], mask, positions, cache)


def score_decode(
    model, tokenizer, prompt_ids: list[list[int]], trie: AnswerTrie, batch_size: int = 16
) -> tuple[list[dict[str, float]], list[tuple]]:
    """score mode with one prefill per batch and the prompt's KV cache reused for everything after.

    Per batch: (1) one forward over prompt + the answer's fixed start, keeping the cache (_prefill);
    (2) one cached step per internal node of the label trie (usually none or one), each visible only to
    its descendants through the attention mask, giving every label's probability (_label_nodes,
    _label_probs); (3) for the chosen label, its remaining tokens and then the score, greedy within the
    trie (_decode_rest). Returns label distributions and the chosen answers' token ids (after `shared`),
    in input order.
    """
    import torch

    pad = tokenizer.pad_token_id
    dists: list[dict | None] = [None] * len(prompt_ids)
    answers: list[tuple | None] = [None] * len(prompt_ids)
    with torch.inference_mode():
        shared_len, shared_cache = shared_prefix(model, prompt_ids, next(model.parameters()).device)
        for index in length_batches(prompt_ids, batch_size):
            rows = [prompt_ids[i] + list(trie.shared) for i in index]
            logits, cache, attention, last_pos = _prefill(model, rows, shared_len, shared_cache, pad)
            logits_at, cache, slots, columns = _label_nodes(model, pad, trie, logits, cache, attention, last_pos)
            batch_dists = _label_probs(trie, logits_at)
            chosen = [max(d, key=d.get) for d in batch_dists]
            nodes = _decode_rest(model, pad, trie, chosen, cache, slots, attention, columns, last_pos)
            for i, dist, node in zip(index, batch_dists, nodes):
                dists[i], answers[i] = dist, node[len(trie.shared) :]
    return dists, answers  # type: ignore[return-value]


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



_ALLOCATOR_TUNED = False


def tune_cpu_allocator() -> bool:
    """Keep freed memory in the process for reuse (glibc malloc; once per process; no-op elsewhere).

    CPU decoding allocates and frees MB-sized tensors (each KV-cache concatenation) many times per
    batch; by default glibc serves them with fresh mmap pages and unmaps them on free, so every one is
    page-faulted and zeroed again by the kernel. Raising the mmap and trim thresholds serves them from
    the heap instead (about 10% faster score mode here; peak RSS unchanged). Skipped when the user has
    set MALLOC_* variables. Process-wide, so it is called by entry points (the CLI's decoding verbs, the
    bench), never by the library's predict. Returns whether the thresholds were set."""
    import ctypes
    import os
    import sys

    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED or not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
        ok = (libc.mallopt(m_mmap_threshold, 32 << 20) == 1 and libc.mallopt(m_trim_threshold, 1 << 30) == 1
              and libc.mallopt(m_top_pad, 64 << 20) == 1)
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    _ALLOCATOR_TUNED = ok
    return ok


def predict(
    model, prompter, texts: list, max_new_tokens: int | None = None, batch_size: int = 16,
    mode: str = "generate", temperature: float = 1.0,
) -> list[Prediction]:
    """Label texts: render, decode in `mode`, parse. Empty texts get ok=False without decoding.
    `temperature` rescales label probabilities (see labeltune.calibrate); labels are unaffected."""

    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; available: {', '.join(MODES)}")
    tokenizer, task = prompter.tokenizer, prompter.task
    todo = [i for i, t in enumerate(texts) if t is not None and str(t).strip()]
    encoded = prompter.prompt_ids_many([str(texts[i]) for i in todo])
    prompts = [ids for ids, _ in encoded]
    out = [Prediction(None, None, False, "empty_input", "", False)] * len(texts)
    if mode == "score":
        trie = prompter.answer_trie
        raw_dists, paths = score_decode(model, tokenizer, prompts, trie, batch_size)
        for i, (_, truncated), dist, path in zip(todo, encoded, raw_dists, paths):
            label, score = trie.answers[trie.shared + path]  # the chosen path is one of the task's answers
            answer = task.render_answer(label, score)
            out[i] = Prediction(label, score, True, "", answer, truncated, apply_temperature(dist, temperature))
        return out
    trie = prompter.answer_trie if mode == "constrained" else None
    max_new_tokens = max_new_tokens or prompter.answer_budget + 8
    generations = generate(model, tokenizer, prompts, max_new_tokens, batch_size, trie)
    for i, (_, truncated), gen in zip(todo, encoded, generations):
        parsed = parse(gen.text, task)
        reason = parsed.reason or ("" if gen.finished else "no_eos")
        ok = parsed.ok and gen.finished
        probs = apply_temperature(gen.label_probs, temperature) if gen.label_probs else None
        out[i] = Prediction(parsed.label if ok else None, parsed.score if ok else None, ok, reason, gen.text, truncated, probs)
    return out

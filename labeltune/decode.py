"""Batched decoding in three modes, all with left padding and prompts sorted by length.

- ``generate``: free greedy generation until EOS, then the strict parser (measures format compliance;
  a generation that hits `max_new_tokens` first is reported as ``no_eos``).
- ``constrained``: greedy generation restricted at every step to the task's answer language (an
  ``AnswerTrie`` of the token ids of every well-formed answer + EOS), so only answers the task spec
  accepts can come out, with or without fine-tuning. The LM head runs over the trie's tokens only
  (~120 of a 128k-262k vocabulary), every row is masked at once, and the forced tokens after a choice
  are fed in the same call.
- ``score``: no generation for the label. One batched forward pass over prompt + the answer's fixed
  start (``label : ``) gives the distribution over the tokens where the labels diverge; a label's
  probability is the product of its tokens' probabilities renormalised over the trie's allowed
  tokens at each node (multi-token labels scored as full continuations: one cached step per node
  where labels share a token, e.g. Llama 3's "Ġ" before "1" and "0", fed with the prefill through a 4D
  tree attention mask where the attention takes one). For a label that has a score,
  the exact distribution over its scores comes from the same KV cache: Llama 3 writes every score
  0..100 as one token after ``score : ``, so it is one softmax over 101 token ids at one position (no
  extra step); a one-digit-per-token tokenizer (Gemma 2, the tiny one) needs the logits at the ten
  nodes of the digit tree where a score can go on ("1".."9", "10"), fed in one cached call with a 4D
  tree attention mask (each node sees the row and its own ancestors only; where the attention cannot
  take such a mask, one call per depth, each node in its own copy of the rows). Every call's LM head
  runs over the trie's tokens only (head_logits). The score written is the expected
  value by default (greedy decoding collapses a graded quantity onto its mode), the greedy one is kept beside
  it. The answer string is written by the task spec, so it is well-formed by construction.

  Prompts of one call share the template's instruction (the longest common prefix of their token
  ids, ~3/4 of a prompt for the bundled templates): its KV cache is computed once and every batch
  prefills only the rest of its prompts on top of it (pads sit between the shared prefix and each
  row's own tokens, masked; positions continue from the prefix), as vLLM / SGLang prefix caching do.

Both generation modes run one cached greedy loop (generate): the shared prefix prefilled once, finished
rows dropped from the cache, no per-row logits processors (transformers' generate only for a model
whose generation config sets one).

This module runs the model (torch, the KV cache); what turns its logits into answers (label and score
distributions, the greedy score, parsing a generation) is labeltune.answers, shared with the vLLM engine.
A decode mode is a function in DECODERS (and its name in config.MODES).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from labeltune.answers import (
    Answer,
    DecodeSettings,
    answer_texts,
    branching_nodes,
    check_mode,
    choose_label,
    estimate_score,
    first_token_label_probs,
    generated_answer,
    label_distribution,
    label_nodes,
    one_token_labels,
    score_distribution,
    score_tree,
    scored_answer,
)
from labeltune.config import MODES  # noqa: F401  (decode.MODES: the modes DECODERS serves, all of them)
from labeltune.features import AnswerTrie, pad_ids


@dataclass(frozen=True)
class Generation:
    text: str  # decoded tokens before EOS (special tokens kept visible)
    finished: bool  # EOS was generated within max_new_tokens
    label_probs: dict | None = field(default=None)  # constrained mode: label -> probability


TOKEN_BUDGET = 16384  # rows x padded width of one batch


def length_batches(
    prompt_ids: list[list[int]], batch_size: int, token_budget: int = TOKEN_BUDGET
) -> list[list[int]]:
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


# model_type of the families whose logits are the decoder's last hidden state times the output layer's
# weight (Gemma 2 / 3 then soft-capped): their LM head can run over some token ids only (head_logits)
HEAD_FAMILIES = ("llama", "gemma", "gemma2", "gemma3_text", "mistral", "qwen2", "qwen3")


def restricted_head(model):
    """(decoder, output weight, soft cap or None) of a model whose logits are ``decoder(...)``'s last hidden
    state @ weight.T (then ``tanh(x / cap) * cap`` where the config sets ``final_logit_softcapping``);
    None for any other model (its full forward is used), and where the output layer is not a plain linear
    layer (a PEFT wrapper around a trained head: a LoRA run before merging)."""
    import torch

    if hasattr(model, "get_base_model"):  # PEFT: LoRA lives in the base's layers (disable_adapter works)
        if getattr(model.active_peft_config, "is_prompt_learning", False):
            return None  # prompt tuning changes the inputs the base sees
        model = model.get_base_model()
    head, body = getattr(model, "lm_head", None), getattr(model, "model", None)
    if (
        getattr(model.config, "model_type", None) not in HEAD_FAMILIES
        or type(head) is not torch.nn.Linear  # not a quantised (bitsandbytes) or wrapped one
        or head.bias is not None
        or body is None
    ):
        return None
    return body, head.weight, getattr(model.config, "final_logit_softcapping", None)


class Columns:
    """The token ids an LM head is run over (sorted ascending, so an argmax over them breaks ties as a
    full-vocabulary argmax does) and each one's column in its logits."""

    def __init__(self, ids):
        import torch

        self.ids = sorted(set(ids))
        self.at = {t: j for j, t in enumerate(self.ids)}
        self.index = torch.tensor(self.ids, dtype=torch.long)

    def of(self, ids) -> list[int]:
        return [self.at[t] for t in ids]


def trie_columns(trie: AnswerTrie) -> Columns:
    """Every token the answer trie allows anywhere (EOS included): all score and constrained modes read."""
    return Columns({t for kids in trie.children.values() for t in kids} | {trie.eos})


def head_logits(model, input_ids, columns: Columns | None, keep: list[int] | None = None, **kwargs):
    """(float CPU logits after the last column of `input_ids` (`keep`: after each of those columns, one
    more dimension) over `columns`' token ids (None: the whole vocabulary), the cache). Where
    restricted_head applies, the LM head is one product of the hidden states with the rows of the output
    weight of those ids only: at a 128k-262k vocabulary the full head costs more than the rest of a
    decoding step of a 100M-300M model."""
    import torch

    at = last_position(input_ids) if keep is None else torch.tensor(keep, device=input_ids.device)
    fast = restricted_head(model) if columns is not None else None
    if fast is None:
        out = model(input_ids=input_ids, logits_to_keep=at, **kwargs)
        logits = out.logits[:, -1] if keep is None else out.logits
        if columns is not None:
            logits = logits[..., columns.index.to(logits.device)]
        return logits.float().cpu(), out.past_key_values
    body, weight, cap = fast
    out = body(input_ids=input_ids, **kwargs)
    hidden = out.last_hidden_state[:, at]
    hidden = hidden[:, -1] if keep is None else hidden
    logits = hidden @ weight[columns.index.to(weight.device)].T
    if cap is not None:
        logits = (logits / cap).tanh() * cap
    return logits.float().cpu(), out.past_key_values


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
    if not layers or not all(
        type(layer).__name__ in ("DynamicLayer", "DynamicSlidingWindowLayer") for layer in layers
    ):
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


def _drop_rows(cache, keep: list[int], alive: list[int], device):
    """Keep only the rows of `keep` (batch rows, a subset of `alive`: the rows in the cache, in cache order)
    in the cache; returns the index over the old cache rows, or None where nothing is dropped or the cache
    cannot drop rows (then they stay, fed nothing)."""
    import torch

    if len(keep) == len(alive) or not hasattr(cache, "batch_select_indices"):
        return None
    at = {row: k for k, row in enumerate(alive)}
    select = torch.tensor([at[row] for row in keep], dtype=torch.long)
    cache.batch_select_indices(select.to(device))
    return select


def _greedy_loop(model, pad: int, picker, logits, cache, attention, last_pos) -> None:
    """The loop both generation modes share, over one prefilled batch (`logits`: after each row's prompt):
    ``picker.pick(rows, logits)`` (rows in cache order, their logits over ``picker.columns``) returns the
    tokens each row feeds next ({} or [] for a row that is done); finished rows are dropped from the cache
    (where it can) before every later call, and each call runs the LM head over ``picker.columns`` only."""
    device = next(model.parameters()).device
    alive, mask, positions = list(range(attention.shape[0])), attention, last_pos
    while True:
        chunks = picker.pick(alive, logits)
        keep = [row for row in alive if chunks.get(row)]
        if not keep:
            return
        select = _drop_rows(cache, keep, alive, device)
        if select is not None:
            mask, positions, alive = mask[select], positions[select], keep
        logits, cache, mask, positions = _multi_step(
            model, pad, [chunks.get(row, []) for row in alive], mask, positions, cache, picker.columns
        )


class _FreeGreedy:
    """generate mode: the most probable token of the whole vocabulary, one per call, until EOS or
    `max_new_tokens` (then not finished)."""

    columns = None  # the full LM head

    def __init__(self, n: int, eos: int, max_new_tokens: int):
        self.eos, self.max_new_tokens = eos, max_new_tokens
        self.new: list[list[int]] = [[] for _ in range(n)]
        self.finished = [False] * n

    def pick(self, rows: list[int], logits) -> dict[int, list[int]]:
        out = {}
        for row, token in zip(rows, logits.argmax(-1).tolist()):
            if self.finished[row] or len(self.new[row]) >= self.max_new_tokens:
                continue
            if token == self.eos:
                self.finished[row] = True
                continue
            self.new[row].append(token)
            if len(self.new[row]) < self.max_new_tokens:
                out[row] = [token]
        return out


class _TrieGreedy:
    """constrained mode: at each row's trie node the most probable allowed token, the LM head run over the
    trie's tokens only (trie_columns) and every row masked at once, then the forced tokens after it (nodes
    with one allowed token) fed in the same call; done at EOS. Starts after ``trie.shared`` (prefilled
    with the prompt); where every label is one token, keeps the logits of the label tokens there."""

    def __init__(self, trie: AnswerTrie, n: int):
        self.trie, self.columns = trie, trie_columns(trie)
        self.branch = one_token_labels(trie)
        self.nodes = [trie.shared] * n
        self.label_logits: list[list[float] | None] = [None] * n
        self._masks: dict[tuple, object] = {}

    def _allowed(self, node: tuple):
        import torch

        if node not in self._masks:
            mask = torch.zeros(len(self.columns.ids), dtype=torch.bool)
            mask[self.columns.of(self.trie.allowed(node))] = True
            self._masks[node] = mask
        return self._masks[node]

    def pick(self, rows: list[int], logits) -> dict[int, list[int]]:
        import torch

        trie = self.trie
        todo = [k for k, row in enumerate(rows) if self.nodes[row][-1:] != (trie.eos,)]
        if not todo:
            return {}
        allowed = torch.stack([self._allowed(self.nodes[rows[k]]) for k in todo])
        best = logits[todo].masked_fill(~allowed, float("-inf")).argmax(-1).tolist()
        out = {}
        for k, j in zip(todo, best):
            row, node = rows[k], self.nodes[rows[k]]
            if node == trie.shared and self.branch is not None:
                self.label_logits[row] = logits[k, self.columns.of(self.branch)].tolist()
            chunk = [self.columns.ids[j]]
            while chunk[-1] != trie.eos and len(nxt := trie.allowed(node + tuple(chunk))) == 1:
                chunk.append(nxt[0])
            self.nodes[row] = node + tuple(chunk)
            if chunk[-1] != trie.eos:
                out[row] = chunk
        return out


# generation_config fields that change greedy decoding: generate() falls back to transformers' generate
# (which applies them) where the model's generation config sets any of them
_GREEDY_CHANGERS = (
    "repetition_penalty",
    "no_repeat_ngram_size",
    "bad_words_ids",
    "suppress_tokens",
    "begin_suppress_tokens",
    "min_length",
    "min_new_tokens",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "sequence_bias",
    "encoder_repetition_penalty",
    "exponential_decay_length_penalty",
)


def plain_greedy(model) -> bool:
    """Whether greedy decoding of `model` is the argmax of its logits at each step: its generation config
    sets no logits processor (repetition penalty, suppressed tokens, a minimum length, ...)."""
    config = getattr(model, "generation_config", None)
    if config is None:
        return True
    default = type(config)()
    return all(getattr(config, k, None) == getattr(default, k, None) for k in _GREEDY_CHANGERS)


def generate(
    model,
    tokenizer,
    prompt_ids: list[list[int]],
    max_new_tokens: int,
    batch_size: int = 16,
    trie: AnswerTrie | None = None,
) -> list[Generation]:
    """Greedy generation in input order; with a trie, constrained to the task's answers.

    Each batch is prefilled after the prompts' shared prefix (as score mode does; with a trie, the
    answer's fixed start ``trie.shared`` is prefilled with the prompt), then one cached call per step,
    finished rows dropped from the cache. Free generation takes the argmax of the full LM head once per
    step; constrained generation runs the LM head over the trie's tokens only, masks every row's
    disallowed ones at once and feeds the forced tokens after a choice in the same call (the greedy
    answer is the same: a forced token is the only one allowed). A model whose generation config sets
    a logits processor (repetition penalty, ...) goes through transformers' generate."""
    import torch

    if not plain_greedy(model):
        return _hf_generate(model, tokenizer, prompt_ids, max_new_tokens, batch_size, trie)
    device = next(model.parameters()).device
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    results: list[Generation | None] = [None] * len(prompt_ids)
    start = list(trie.shared) if trie is not None else []
    with torch.inference_mode():
        shared_len, shared_cache = shared_prefix(model, prompt_ids, device)
        for index in length_batches(prompt_ids, batch_size):
            n = len(index)
            picker = _TrieGreedy(trie, n) if trie is not None else _FreeGreedy(n, eos, max_new_tokens)
            rows = [prompt_ids[i] + start for i in index]
            logits, cache, attention, last_pos = _prefill(
                model, rows, shared_len, shared_cache, pad, picker.columns
            )
            _greedy_loop(model, pad, picker, logits, cache, attention, last_pos)
            for row, i in enumerate(index):
                if trie is None:
                    new, finished, probs = picker.new[row], picker.finished[row], None
                else:
                    new, finished = list(picker.nodes[row][:-1]), True  # the trie's answers all end at EOS
                    at = picker.label_logits[row]
                    probs = at and first_token_label_probs(trie, dict(zip(picker.branch, at)))
                results[i] = Generation(tokenizer.decode(new, skip_special_tokens=False), finished, probs)
    return results  # type: ignore[return-value]


def _hf_generate(
    model,
    tokenizer,
    prompt_ids: list[list[int]],
    max_new_tokens: int,
    batch_size: int = 16,
    trie: AnswerTrie | None = None,
) -> list[Generation]:
    """generate() through transformers' generate (its logits processors applied), one batch at a time."""
    import torch

    device = next(model.parameters()).device
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    results: list[Generation | None] = [None] * len(prompt_ids)
    branch = one_token_labels(trie) if trie is not None else None  # label probabilities at one position
    with torch.inference_mode():
        for index in length_batches(prompt_ids, batch_size):
            input_ids, attention = pad_ids([prompt_ids[i] for i in index], pad, left=True)
            width = input_ids.shape[1]
            extra = {}
            if trie is not None:
                extra = dict(
                    prefix_allowed_tokens_fn=lambda _, ids, w=width: trie.allowed(tuple(ids[w:].tolist())),
                    output_logits=True,
                    return_dict_in_generate=True,
                )
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                max_new_tokens=trie.max_len if trie is not None else max_new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=pad,
                **extra,
            )
            sequences = out.sequences if trie is not None else out
            for row, i in enumerate(index):
                new = sequences[row, width:].tolist()
                finished = eos in new
                if finished:
                    new = new[: new.index(eos)]
                probs = None
                if branch is not None and len(new) > len(trie.shared):
                    at = out.logits[len(trie.shared)][row, branch].float().tolist()
                    probs = first_token_label_probs(trie, dict(zip(branch, at)))
                results[i] = Generation(tokenizer.decode(new, skip_special_tokens=False), finished, probs)
    return results  # type: ignore[return-value]


def _multi_step(model, pad: int, chunks: list[list[int]], mask, positions, cache, columns: Columns | None):
    """Feed each row its own list of tokens (left-padded, pads masked, so every row's last token is in the
    last column and only that column goes through the LM head) in one cached call; returns the logits
    after each row's last token over `columns` (head_logits), the cache, the grown mask and the rows' last
    positions."""
    import torch

    device = next(model.parameters()).device
    tokens, real = pad_ids(chunks, pad, left=True)
    mask = torch.cat([mask, real], dim=1)
    logits, cache = head_logits(
        model,
        tokens.to(device),
        columns,
        attention_mask=mask.to(device),
        position_ids=(positions.view(-1, 1) + real.cumsum(-1)).to(device),
        past_key_values=cache,
        use_cache=True,
    )
    return logits, cache, mask, positions + real.sum(-1)


def _prefill(model, rows: list[list[int]], shared_len: int, shared_cache, pad: int, columns: Columns | None):
    """(1) One forward over each row (prompt + the answer's fixed start) after the shared prefix's cache:
    (logits after the last token over `columns`, cache, attention mask, each row's last position)."""
    device = next(model.parameters()).device
    own, attention, positions, cache = prefill_inputs(rows, shared_len, shared_cache, pad)
    logits, cache = head_logits(
        model,
        own.to(device),
        columns,
        attention_mask=attention.to(device),
        position_ids=positions.to(device),
        past_key_values=cache,
        use_cache=True,
    )
    return logits, cache, attention, attention.sum(-1) - 1


def _tree_steps(model, pad: int, prefixes: list[tuple], base_mask, base_pos, cache, columns: Columns):
    """One cached step per prefix of a token tree (shorter first; every prefix's ancestors among them),
    every row feeding the prefix's last token, visible only to the columns of its own ancestors through
    the mask: (logits after each prefix, the cache, the column of each fed prefix, the mask over every
    column). `base_pos`: each row's last position in the cache before the tree."""
    import torch

    n, base_len = base_mask.shape
    logits_at, slots, grown = {}, {}, base_mask
    for prefix in prefixes:
        visible = torch.zeros((n, grown.shape[1] - base_len), dtype=torch.long)
        for anc, col in slots.items():
            if prefix[: len(anc)] == anc:
                visible[:, col - base_len] = 1
        before = torch.cat([base_mask, visible], dim=1)
        logits_at[prefix], cache, mask, _ = _multi_step(
            model, pad, [[prefix[-1]]] * n, before, base_pos + len(prefix) - 1, cache, columns
        )
        slots[prefix] = grown.shape[1]
        grown = mask
    return logits_at, cache, slots, grown


def _label_nodes(model, pad: int, trie: AnswerTrie, logits, cache, attention, last_pos, columns: Columns):
    """(2) One cached step per internal node of the label trie (where labels share a token), each visible
    only to its descendants through the mask: (logits at every node, the cache, the column of each fed
    node, the mask over every column)."""
    internal = sorted({p[:k] for p in trie.label_path.values() for k in range(1, len(p))}, key=len)
    logits_at, cache, slots, fed = _tree_steps(model, pad, internal, attention, last_pos, cache, columns)
    logits_at[()] = logits
    return logits_at, cache, slots, fed


def _prefill_label_nodes(
    model, pad: int, trie: AnswerTrie, rows: list[list[int]], shared_len: int, shared_cache, columns: Columns
):
    """(1) + (2) in one call where the attention takes a 4D mask (tree_in_one_call; else _prefill, then
    _label_nodes): each row's own tokens (prompt + the answer's fixed start, left-padded, after the shared
    prefix's cache), then the token of every internal node of the label trie, each at its depth's position
    and visible to the row's tokens and its own ancestors only (tree attention). Returns (logits at every
    label node, cache, the prefill's attention mask, each row's last position, the column of each fed
    node, the mask over every column)."""
    import torch

    internal = sorted({p[:k] for p in trie.label_path.values() for k in range(1, len(p))}, key=len)
    own, attention, positions, cache = prefill_inputs(rows, shared_len, shared_cache, pad)
    n, w = own.shape
    total, q = attention.shape[1], len(internal)
    if not internal or not tree_in_one_call(model, total + q):
        logits, cache, attention, last_pos = _prefill(model, rows, shared_len, shared_cache, pad, columns)
        logits_at, cache, slots, fed = _label_nodes(
            model, pad, trie, logits, cache, attention, last_pos, columns
        )
        return logits_at, cache, attention, last_pos, slots, fed
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    last_pos = attention.sum(-1) - 1
    causal = torch.tril(torch.ones((w, w), dtype=torch.long)).unsqueeze(0) * attention[:, None, shared_len:]
    own_rows = torch.cat(
        [torch.ones((n, w, shared_len), dtype=torch.long), causal, torch.zeros((n, w, q), dtype=torch.long)],
        dim=2,
    )
    tree = torch.tensor([[int(b == a[: len(b)]) for b in internal] for a in internal], dtype=torch.long)
    node_rows = torch.cat([attention.unsqueeze(1).expand(n, q, total), tree.expand(n, q, q)], dim=2)
    visible = torch.cat([own_rows, node_rows], dim=1)
    mask = torch.zeros(visible.shape, dtype=dtype).masked_fill_(visible == 0, torch.finfo(dtype).min)
    depth = torch.tensor([len(p) for p in internal])
    tokens = torch.cat([own, torch.tensor([[p[-1] for p in internal]] * n, dtype=own.dtype)], dim=1)
    logits, cache = head_logits(
        model,
        tokens.to(device),
        columns,
        keep=list(range(w - 1, w + q)),
        attention_mask=mask.unsqueeze(1).to(device),
        position_ids=torch.cat([positions, last_pos.view(-1, 1) + depth.view(1, -1)], dim=1).to(device),
        past_key_values=cache,
        use_cache=True,
    )
    logits_at = {(): logits[:, 0], **{p: logits[:, 1 + j] for j, p in enumerate(internal)}}
    slots = {p: total + j for j, p in enumerate(internal)}
    fed = torch.cat([attention, torch.ones((n, q), dtype=torch.long)], dim=1)
    return logits_at, cache, attention, last_pos, slots, fed


def _label_probs(trie: AnswerTrie, logits_at: dict, columns: Columns) -> list[dict[str, float]]:
    """Every row's label distribution (answers.label_distribution) from the logits at the label nodes."""
    allowed = {node: trie.allowed(trie.shared + node) for node in label_nodes(trie)}
    rows = {node: logits_at[node][:, columns.of(ids)].tolist() for node, ids in allowed.items()}
    n = next(iter(logits_at.values())).shape[0]
    return [
        label_distribution(trie, {node: dict(zip(ids, rows[node][r])) for node, ids in allowed.items()})
        for r in range(n)
    ]


def _to_score(
    model,
    pad: int,
    trie: AnswerTrie,
    chosen: list[str],
    cache,
    slots: dict,
    attention,
    fed_mask,
    last_pos,
    columns: Columns,
):
    """(3) The chosen label's remaining tokens and the fixed run after them (``\nscore : ``) fed in one
    cached call per step, up to the answer's next branching node (where its score starts) or EOS. Rows
    that end there are dropped from the cache. Returns each row's node (answer token ids from the answer's
    start), the logits at the branching node of each row that has one, and the cache with its mask,
    positions and rows (in cache order: the rows at a branch, and finished ones where the cache cannot
    drop rows)."""
    import torch

    device = next(model.parameters()).device
    n, base_len = len(chosen), attention.shape[1]
    fed = [max((len(p) for p in slots if trie.label_path[c][: len(p)] == p), default=0) for c in chosen]
    node = [trie.shared + trie.label_path[c][:f] for c, f in zip(chosen, fed)]
    queue = [list(trie.label_path[c][f:]) for c, f in zip(chosen, fed)]
    keep = torch.zeros((n, fed_mask.shape[1] - base_len), dtype=torch.long)
    for row, c in enumerate(chosen):  # each row sees the label-node columns of its own label only
        for anc, col in slots.items():
            if trie.label_path[c][: len(anc)] == anc:
                keep[row, col - base_len] = 1
    mask = torch.cat([attention, keep], dim=1)
    positions = last_pos + torch.tensor(fed)  # of each row's last token in the cache
    state = ["feed"] * n  # feed -> branch (logits taken) or done (EOS reached)
    at_branch: dict[int, object] = {}
    alive = list(range(n))  # the batch rows in the cache, in cache order
    while True:
        chunks: list[list[int]] = [[] for _ in range(n)]
        for row in range(n):
            if state[row] != "feed":
                continue
            node[row] = node[row] + tuple(queue[row])
            chunks[row], queue[row] = queue[row], []
            while len(nxt := trie.allowed(node[row])) == 1 and nxt[0] != trie.eos:  # a fixed run: same call
                node[row] = node[row] + (nxt[0],)
                chunks[row].append(nxt[0])
            if trie.allowed(node[row]) == [trie.eos]:
                node[row] = node[row] + (trie.eos,)
                state[row] = "done"  # no score: the answer ends here
            else:
                state[row] = "waiting"  # at a branch once this call has fed its tokens
        keep_rows = [row for row in range(n) if state[row] != "done"]
        if not keep_rows:
            return node, at_branch, cache, mask, positions, []  # no row has a score
        if len(keep_rows) < len(alive) and hasattr(cache, "batch_select_indices"):
            at = {row: k for k, row in enumerate(alive)}
            select = torch.tensor([at[row] for row in keep_rows], dtype=torch.long)
            cache.batch_select_indices(select.to(device))
            mask, positions, alive = mask[select], positions[select], keep_rows
        if not any(chunks[row] for row in alive):
            return node, at_branch, cache, mask, positions, alive
        logits, cache, mask, positions = _multi_step(
            model, pad, [chunks[row] for row in alive], mask, positions, cache, columns
        )
        for k, row in enumerate(alive):
            if state[row] == "waiting":
                at_branch[row], state[row] = logits[k], "branch"


def _tree_levels(
    model, pad: int, prefixes: list[tuple], base_mask, base_pos, cache, columns: Columns
) -> dict:
    """The logits after every prefix of a token tree (every prefix's ancestors among them), one cached
    call per depth: each node of a depth gets its own copy of its parent's rows (the cache's rows
    selected, with repeats), so siblings never see each other and all of them run in one call.
    Returns prefix -> logits of the `n` rows. The cache is consumed."""
    import torch

    device = next(model.parameters()).device
    n = base_mask.shape[0]
    by_depth: dict[int, list[tuple]] = {}
    for prefix in prefixes:
        by_depth.setdefault(len(prefix), []).append(prefix)
    rows_of = {(): list(range(n))}  # node -> its copy of the n rows in the current cache
    mask, positions, logits_at = base_mask, base_pos, {}
    for depth in sorted(by_depth):
        nodes = by_depth[depth]
        select = torch.tensor([rows_of[node[:-1]][r] for node in nodes for r in range(n)], dtype=torch.long)
        cache.batch_select_indices(select.to(device))
        mask, positions = mask[select], positions[select]
        logits, cache, mask, positions = _multi_step(
            model, pad, [[node[-1]] for node in nodes for _ in range(n)], mask, positions, cache, columns
        )
        rows_of = {node: list(range(j * n, (j + 1) * n)) for j, node in enumerate(nodes)}
        logits_at.update({node: logits[j * n : (j + 1) * n] for j, node in enumerate(nodes)})
    return logits_at


def tree_in_one_call(model, kv_length: int) -> bool:
    """Whether a token tree can be fed in one call with a custom 4D attention mask (_tree_flat): attention
    that takes a 4D additive mask as given (sdpa, eager), and no sliding window shorter than the cache."""
    config = model.config
    window = getattr(config, "sliding_window", None)
    return getattr(config, "_attn_implementation", None) in ("sdpa", "eager") and (
        window is None or kv_length < window
    )


def _tree_flat(model, pad: int, prefixes: list[tuple], base_mask, base_pos, cache, columns: Columns) -> dict:
    """The logits after every prefix of a token tree (every prefix's ancestors among them) in one cached
    call: every row feeds the last token of every prefix, each at its depth's position and visible, through
    a 4D attention mask, to the row's cache and its own ancestors only (tree attention, as speculative
    decoders verify token trees); no copy of the cache per node as in _tree_levels. Returns prefix -> the
    logits of the `n` rows. The cache is consumed."""
    import torch

    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    n, q = base_mask.shape[0], len(prefixes)
    tree = torch.tensor([[int(b == a[: len(b)]) for b in prefixes] for a in prefixes], dtype=torch.long)
    visible = torch.cat([base_mask.unsqueeze(1).expand(n, q, -1), tree.expand(n, q, q)], dim=2)
    mask = torch.zeros(visible.shape, dtype=dtype).masked_fill_(visible == 0, torch.finfo(dtype).min)
    depth = torch.tensor([len(p) for p in prefixes])
    logits, _ = head_logits(
        model,
        torch.tensor([[p[-1] for p in prefixes]] * n, device=device),
        columns,
        keep=list(range(q)),
        attention_mask=mask.unsqueeze(1).to(device),
        position_ids=(base_pos.view(-1, 1) + depth.view(1, -1)).to(device),
        past_key_values=cache,
        use_cache=True,
    )
    return {p: logits[:, j] for j, p in enumerate(prefixes)}


def _score_dists(
    model,
    pad: int,
    trie: AnswerTrie,
    node: list[tuple],
    at_branch: dict,
    cache,
    mask,
    positions,
    alive: list[int],
    columns: Columns,
) -> dict[int, tuple[dict[int, float], int]]:
    """(4) The exact distribution of each branching row's score under the answer trie: every node of the
    score tree where the answer branches gets its logits (none for Llama 3, which writes every score
    0..100 as one token; ten nodes for one-digit-per-token tokenizers, fed one call per depth), and
    each row's logits there go to answers.score_distribution: p(score) is the product of the renormalised
    probabilities along its path; the greedy score takes the most probable token at each node, as
    generation would write it.
    Returns row -> ({score: probability}, greedy score)."""
    import torch

    rows = [row for row in alive if row in at_branch]
    if not rows:
        return {}
    trees = {root: score_tree(trie, root) for root in {node[row] for row in rows}}  # one per label
    feed = sorted({p for prefixes, _ in trees.values() for p in prefixes}, key=lambda p: (len(p), p))
    if feed and tree_in_one_call(model, mask.shape[1] + len(feed)):  # the whole tree in one call
        logits_at = _tree_flat(model, pad, feed, mask, positions, cache, columns)
    elif feed and hasattr(cache, "batch_select_indices"):  # one call per depth of the tree
        logits_at = _tree_levels(model, pad, feed, mask, positions, cache, columns)
    else:  # one call per node
        logits_at = _tree_steps(model, pad, feed, mask, positions, cache, columns)[0] if feed else {}
    out = {}
    place = {row: k for k, row in enumerate(alive)}  # each row's place in the cache
    for root in trees:  # the logits at each branching node, as log p of its allowed tokens, for all rows
        mine = [row for row in rows if node[row] == root]
        at: list[dict] = [{} for _ in mine]
        for path in branching_nodes(trie, root):
            ids = trie.allowed(root + path)
            if not path:
                values = torch.stack([at_branch[row] for row in mine])[:, columns.of(ids)]
            else:
                values = logits_at[path][[place[row] for row in mine]][:, columns.of(ids)]
            for row_at, row_values in zip(at, values.double().tolist()):
                row_at[path] = dict(zip(ids, row_values))
        for row, row_at in zip(mine, at):
            out[row] = score_distribution(trie, root, row_at)
    return out


def score_decode(
    model,
    tokenizer,
    prompt_ids: list[list[int]],
    trie: AnswerTrie,
    batch_size: int = 16,
    temperature: float = 1.0,
    label_bias: dict[str, float] | None = None,
    labels: list[str | None] | None = None,
) -> tuple[list[dict[str, float]], list[tuple], list[tuple[dict[int, float], int] | None]]:
    """score mode with one prefill per batch and the prompt's KV cache reused for everything after.

    Per batch: (1) one forward over prompt + the answer's fixed start, keeping the cache (_prefill);
    (2) one cached step per internal node of the label trie (usually none or one), each visible only to
    its descendants through the attention mask, giving every label's probability (_label_nodes,
    _label_probs); (3) the most probable label's remaining tokens up to where its score starts
    (_to_score); (4) the exact distribution over that label's scores (_score_dists). Returns, in input
    order: label distributions, the greedy answers' token ids (after `shared`), and each row's
    ({score: probability}, greedy score), None for a label without a score. The label chosen is the
    most probable after `temperature` and the per-label biases (labeltune.calibrate; none: argmax), or
    the one given in `labels` for that row (the score given a known label: evaluate's gold-label scores).
    """
    import torch

    pad = tokenizer.pad_token_id
    n = len(prompt_ids)
    dists: list = [None] * n
    answers: list = [None] * n
    scores: list = [None] * n
    by_pair = {pair: ids for ids, pair in trie.answers.items()}
    columns = trie_columns(trie)  # every call's LM head runs over the answers' tokens only
    with torch.inference_mode():
        shared_len, shared_cache = shared_prefix(model, prompt_ids, next(model.parameters()).device)
        for index in length_batches(prompt_ids, batch_size):
            rows = [prompt_ids[i] + list(trie.shared) for i in index]
            logits_at, cache, attention, last_pos, slots, fed_mask = _prefill_label_nodes(
                model, pad, trie, rows, shared_len, shared_cache, columns
            )
            batch_dists = _label_probs(trie, logits_at, columns)
            chosen = [
                labels[i]
                if labels is not None and labels[i] is not None
                else choose_label(d, temperature, label_bias)
                for i, d in zip(index, batch_dists)
            ]
            nodes, at_branch, cache, mask, positions, alive = _to_score(
                model, pad, trie, chosen, cache, slots, attention, fed_mask, last_pos, columns
            )
            score_of = _score_dists(
                model, pad, trie, nodes, at_branch, cache, mask, positions, alive, columns
            )
            for row, (i, dist, node) in enumerate(zip(index, batch_dists, nodes)):
                dists[i] = dist
                if row in score_of:
                    scores[i] = score_of[row]
                    node = by_pair[(chosen[row], score_of[row][1])]
                answers[i] = node[len(trie.shared) :]
    return dists, answers, scores


def scores_given_labels(
    model, prompter, texts: list[str], labels: list[str], batch_size: int = 16, estimate: str = "expected"
) -> list[tuple[int, int]]:
    """(estimated, greedy) score of each text when its label is given (each a label with a score): the
    score part of the answer measured apart from the label decision, e.g. on every gold-negative row
    whatever label the model would pick."""
    trie = prompter.answer_trie
    prompts = [ids for ids, _ in prompter.prompt_ids_many([str(t) for t in texts])]
    _, _, scored = score_decode(model, prompter.tokenizer, prompts, trie, batch_size, labels=list(labels))
    if any(s is None for s in scored):
        raise ValueError(f"scores_given_labels: a label without a score among {sorted(set(labels))}")
    return [(estimate_score(probs, greedy, estimate), greedy) for probs, greedy in scored]


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
    if (
        _ALLOCATOR_TUNED
        or not sys.platform.startswith("linux")
        or any(k.startswith("MALLOC_") for k in os.environ)
    ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
        ok = (
            libc.mallopt(m_mmap_threshold, 32 << 20) == 1
            and libc.mallopt(m_trim_threshold, 1 << 30) == 1
            and libc.mallopt(m_top_pad, 64 << 20) == 1
        )
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    _ALLOCATOR_TUNED = ok
    return ok


def _generated(
    model,
    prompter,
    prompts: list[list[int]],
    batch_size: int,
    settings: DecodeSettings,
    trie: AnswerTrie | None = None,
) -> list[Answer]:
    """generate mode: greedy generation until EOS (with `trie`: constrained to the task's answers), parsed."""
    max_new_tokens = settings.max_new_tokens or prompter.answer_budget + 8
    generations = generate(model, prompter.tokenizer, prompts, max_new_tokens, batch_size, trie)
    return [
        generated_answer(g.text, g.finished, prompter.task, g.label_probs, settings.temperature)
        for g in generations
    ]


def _constrained(
    model, prompter, prompts: list[list[int]], batch_size: int, settings: DecodeSettings
) -> list[Answer]:
    return _generated(model, prompter, prompts, batch_size, settings, prompter.answer_trie)


def _scored(
    model, prompter, prompts: list[list[int]], batch_size: int, settings: DecodeSettings
) -> list[Answer]:
    """score mode: score_decode's label and score distributions, the answer written by the task spec."""
    trie = prompter.answer_trie
    dists, paths, scored = score_decode(
        model, prompter.tokenizer, prompts, trie, batch_size, settings.temperature, settings.label_bias
    )
    return [
        scored_answer(trie, prompter.task, trie.answers[trie.shared + path][0], dist, score_dist, settings)
        for dist, path, score_dist in zip(dists, paths, scored)
    ]


# the hf engine's decode modes (config.MODES names them): mode -> fn(model, prompter, prompts, batch_size,
# settings)
DECODERS = {"generate": _generated, "constrained": _constrained, "score": _scored}


def predict(
    model,
    prompter,
    texts: list,
    max_new_tokens: int | None = None,
    batch_size: int = 16,
    mode: str = "generate",
    temperature: float = 1.0,
    score_estimate: str = "expected",
    label_bias: dict[str, float] | None = None,
) -> list[Answer]:
    """Label texts: render, decode in `mode`, parse. Empty texts get ok=False without decoding.
    `temperature` rescales label probabilities (see labeltune.calibrate); labels are unaffected.
    score mode: `score_estimate` picks the score from its distribution (answers.estimate_score), the greedy
    one is kept in Answer.score_greedy; `label_bias` (fitted on dev by labeltune.calibrate) shifts the
    label decision and the probabilities reported."""
    check_mode(mode, "hf", DECODERS)
    settings = DecodeSettings(temperature, score_estimate, label_bias, max_new_tokens)
    return answer_texts(
        prompter, texts, lambda prompts: DECODERS[mode](model, prompter, prompts, batch_size, settings)
    )

"""generate and constrained modes against a brute-force reference: every step a full forward over the
prompt and the tokens so far, the full-vocabulary logits, the disallowed tokens masked, the argmax."""

import pytest

from tests.test_decode import _random_model

TEXTS = [
    "最高の一日だった",
    "電車が遅れて最悪だ、もう二度と乗らない",
    "明日は雨らしい",
    "了解",
    "あいつは本当に無能すぎて話にならない",
    "普通",
    "ありがとう、助かりました!",
]


def _prompts(prompter, seed: int) -> list[list[int]]:
    """The texts' prompts, each ending in a few random tokens of its own: a tiny random model's answer
    hangs on the last tokens, which the template makes the same."""
    import random

    rng = random.Random(seed)
    vocab = len(prompter.tokenizer)
    return [prompter.prompt_ids(t)[0] + rng.sample(range(4, vocab), 1 + i % 4) for i, t in enumerate(TEXTS)]


def _model(family: str, vocab: int, pad: int, seed: int):
    """A random 2-layer Llama or Gemma 2 (soft-capped logits) whose answers hang on the prompt: weights
    drawn wide (initializer_range 0.3, 1.0 for Gemma 2; at the default 0.02 every prompt gets one answer)."""
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

    common = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=pad,
        initializer_range=1.0 if family == "gemma2" else 0.3,
    )
    torch.manual_seed(seed)
    if family == "gemma2":
        return Gemma2ForCausalLM(Gemma2Config(**common, head_dim=8, final_logit_softcapping=30.0)).eval()
    return LlamaForCausalLM(LlamaConfig(**common)).eval()


def _brute(model, prompt: list[int], steps: int, allowed=None, eos=None) -> tuple[list[int], list]:
    """Greedy tokens (up to EOS, kept) and the full logits before each, one whole forward per step; with
    `allowed`, the tokens it does not allow masked (its EOS ends the answer)."""
    import torch

    new, logits_seen = [], []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=torch.tensor([prompt + new])).logits[0, -1].float()
            logits_seen.append(logits)
            if allowed is not None:
                mask = torch.full_like(logits, float("-inf"))
                mask[allowed(tuple(new))] = 0
                logits = logits + mask
            new.append(int(logits.argmax()))
            if new[-1] == (eos if allowed is None else allowed.eos):
                break
    return new, logits_seen


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_constrained_equals_brute_force_masking(family):
    """Same answers and label probabilities as masking the full-vocabulary logits at every step (a model
    vocabulary 4x the tokenizer's), with the LM head run over the trie's tokens only (and, for Gemma 2, its
    soft cap applied to them)."""
    import math

    from labeltune import decode
    from labeltune.answers import first_token_label_probs, one_token_labels

    _, tokenizer, prompter = _random_model(TEXTS, seed=0)
    model = _model(family, 4096, tokenizer.pad_token_id, seed=0)  # ids past the tokenizer's: never allowed
    assert decode.restricted_head(model) is not None  # the fast path is the one under test
    trie = prompter.answer_trie
    prompts = _prompts(prompter, 0)
    got = decode.generate(model, tokenizer, prompts, 0, batch_size=3, trie=trie)

    class Allowed:
        eos = trie.eos

        def __call__(self, new):
            return trie.allowed(new)

    branch = one_token_labels(trie)
    answers = set()
    for prompt, g in zip(prompts, got):
        new, seen = _brute(model, prompt, trie.max_len, Allowed())
        assert new[-1] == trie.eos and g.finished
        assert g.text == tokenizer.decode(new[:-1], skip_special_tokens=False)
        answers.add(trie.answers[tuple(new)])
        if branch is not None:
            expected = first_token_label_probs(trie, {t: float(seen[len(trie.shared)][t]) for t in branch})
            assert g.label_probs == pytest.approx(expected, abs=1e-5)
            assert math.isclose(sum(g.label_probs.values()), 1.0, abs_tol=1e-9)
    assert len(answers) > 1  # the rows do not all give one answer


def test_free_generation_equals_brute_force_greedy():
    """Free greedy generation: the argmax of the full LM head at each step, rows stopped at EOS (some early,
    in other batches than the rest) or at max_new_tokens (then not finished), in input order."""
    from labeltune import decode

    _, tokenizer, prompter = _random_model(TEXTS, seed=0)
    model = _model("llama", len(tokenizer), tokenizer.pad_token_id, seed=1)
    prompts = _prompts(prompter, 1)
    free, _ = _brute(model, prompts[0], 6)
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(free[2])  # row 0 stops by its third token
    eos = tokenizer.eos_token_id
    got = decode.generate(model, tokenizer, prompts, 6, batch_size=3)
    stopped = 0
    for prompt, g in zip(prompts, got):
        new, _ = _brute(model, prompt, 6, eos=eos)
        finished = new[-1] == eos
        stopped += finished
        assert g.finished == finished
        assert g.text == tokenizer.decode(new[:-1] if finished else new, skip_special_tokens=False)
    assert 0 < stopped < len(prompts) or stopped == len(prompts)
    assert got[0].finished


def test_trees_in_one_call_equal_one_call_per_node_or_depth(monkeypatch):
    """The digit tree of the scores fed in one call with a 4D tree mask gives the label and score
    distributions of feeding it one depth at a time (each node in its own copy of the rows); the label
    trie's internal nodes fed with the prefill: test_real_tokenizers' brute-force checks, both ways."""
    from labeltune import decode

    model, tokenizer, prompter = _random_model(TEXTS, seed=1)
    prompts = [prompter.prompt_ids(t)[0] for t in TEXTS]
    labels = ["-1"] * len(TEXTS)  # the label with a score: every row has a score tree
    trie = prompter.answer_trie
    assert any(_feeds(trie))  # the tiny tokenizer writes a score digit by digit: a tree to feed
    flat = decode.score_decode(model, tokenizer, prompts, trie, batch_size=3, labels=labels)
    monkeypatch.setattr(decode, "tree_in_one_call", lambda model, kv_length: False)
    levels = decode.score_decode(model, tokenizer, prompts, trie, batch_size=3, labels=labels)
    assert flat[1] == levels[1]
    for d_flat, d_levels in zip(flat[0], levels[0]):
        assert d_flat == pytest.approx(d_levels, abs=1e-6)
    for (p_flat, g_flat), (p_levels, g_levels) in zip(flat[2], levels[2]):
        assert g_flat == g_levels and max(p_flat.values()) < 0.9  # a spread distribution
        assert list(p_flat.values()) == pytest.approx(list(p_levels.values()), abs=1e-6)


def _feeds(trie):
    from labeltune.answers import score_root, score_tree

    return [score_tree(trie, score_root(trie, label))[0] for label in trie.label_path]

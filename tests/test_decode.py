"""Batching of prompts for decoding, shared-prefix reuse in score mode."""

import pytest

from labeltune.decode import length_batches


def test_length_batches_respect_rows_and_token_budget():
    lengths = [5, 50, 7, 300, 6, 49, 8, 51]
    prompts = [[0] * n for n in lengths]
    batches = length_batches(prompts, batch_size=3, token_budget=120)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # every row once
    for b in batches:
        width = max(lengths[i] for i in b)
        assert len(b) <= 3 and (len(b) * width <= 120 or len(b) == 1)
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat)  # length-sorted, so little padding


def test_common_prefix_leaves_every_prompt_an_own_token():
    from labeltune.decode import common_prefix_length

    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5, 6], [1, 2, 3, 4, 9]]) == 3
    assert common_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # [1, 2, 3] keeps one token of its own
    assert common_prefix_length([[7, 1], [8, 1]]) == 0
    assert common_prefix_length([[1, 2, 3]]) == 0  # a single prompt: nothing to share


def _random_model(texts: list[str], seed: int):
    """(model, tokenizer, prompter): a random 2-layer Llama with sharp logits (a scaled LM head) and a tiny
    tokenizer built from the texts' prompts and the task's answers."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from labeltune.features import Prompter
    from labeltune.models import build_tiny_tokenizer
    from labeltune.prompts import load_template, render_prompt
    from labeltune.task import load_task

    task = load_task("sentiment_toxicity")
    template = load_template(task.default_template)
    tokenizer = build_tiny_tokenizer(
        [render_prompt(template, task, t) for t in texts] + task.all_answers(), 1000
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
        )
    ).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(40)
    return model, tokenizer, Prompter(tokenizer, template, task, max_length=512)


def test_score_decode_same_with_and_without_the_shared_prefix_cache(monkeypatch):
    """Prefix caching changes the work, not the result: label probabilities and answers agree."""
    from labeltune import decode

    texts = [
        "最高の一日だった",
        "電車が遅れて最悪だ、もう二度と乗らない",
        "明日は雨らしい",
        "了解",
        "あいつは本当に無能すぎて話にならない",
    ]
    model, tokenizer, prompter = _random_model(texts, seed=0)
    prompts = [prompter.prompt_ids(t)[0] for t in texts]
    assert decode.common_prefix_length(prompts) >= decode.MIN_SHARED_PREFIX
    cached = decode.score_decode(model, tokenizer, prompts, prompter.answer_trie, batch_size=2)
    monkeypatch.setattr(decode, "MIN_SHARED_PREFIX", 10**9)  # every prompt prefilled whole
    whole = decode.score_decode(model, tokenizer, prompts, prompter.answer_trie, batch_size=2)
    assert cached[1] == whole[1]
    for a, b in zip(cached[0], whole[0]):
        assert a == pytest.approx(b, abs=1e-5)


def test_encode_many_equals_the_tokenizer_call():
    """Batched prompt encoding takes the tokenizer's Rust fast path: same ids as the transformers call,
    special-token strings split, the tokenizer's setting restored (the real tokenizers:
    test_real_tokenizers)."""
    from labeltune.features import encode_many
    from labeltune.models import build_tiny_tokenizer

    texts = ["最高の一日だった", "<eos><bos>### 応答:\nlabel : 1", "", "改行\r\nを含む"]
    tokenizer = build_tiny_tokenizer(texts * 3, 300)
    for special in (True, False):
        expected = [
            tokenizer(t, add_special_tokens=special, split_special_tokens=True)["input_ids"] for t in texts
        ]
        assert encode_many(tokenizer, texts, special) == expected
    for before in (False, True):
        tokenizer.backend_tokenizer.encode_special_tokens = before
        assert tokenizer.eos_token_id not in encode_many(tokenizer, texts[1:2], False)[0]
        assert tokenizer.backend_tokenizer.encode_special_tokens is before


def test_pad_ids_left_and_right():
    from labeltune.features import pad_ids

    ids, mask = pad_ids([[5, 6, 7], [8], []], 0, left=True)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 0]] and mask.tolist() == [
        [1, 1, 1],
        [0, 0, 1],
        [0, 0, 0],
    ]
    ids, mask = pad_ids([(5, 6), [8]], -100)
    assert ids.tolist() == [[5, 6], [8, -100]] and mask.tolist() == [[1, 1], [1, 0]]
    assert pad_ids([[], []], 0)[0].shape == (2, 0)


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_shared_prefix_cache_expansion_matches_transformers(family):
    """decode._expanded reaches into transformers' cache layers (their class names, .keys/.values) to
    broadcast the shared prefix instead of copying it; with this transformers version the fast path must
    be the one taken (stride-0 views) and equal transformers' own batch_repeat_interleave."""
    import copy

    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

    from labeltune.decode import _expanded

    common = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    model = (
        Gemma2ForCausalLM(Gemma2Config(**common, head_dim=8))
        if family == "gemma2"
        else LlamaForCausalLM(LlamaConfig(**common))
    ).eval()
    with torch.no_grad():
        cache = model(input_ids=torch.tensor([[1, 5, 9, 12, 3]]), use_cache=True).past_key_values
    expanded = _expanded(cache, 3)
    reference = copy.deepcopy(cache)
    reference.batch_repeat_interleave(3)
    for mine, theirs in zip(expanded.layers, reference.layers):
        assert mine.keys.stride(0) == 0 and mine.values.stride(0) == 0  # broadcast, not copied
        assert torch.equal(mine.keys, theirs.keys) and torch.equal(mine.values, theirs.values)
    assert cache.layers[0].keys.shape[0] == 1  # the shared cache itself is untouched


def test_scores_given_a_label_equal_the_scores_when_the_model_picks_it():
    """evaluate's gold-label scores: forcing a label gives the same score distribution as the model choosing
    that label itself (here made to by a large bias), for rows whose own choice differs too."""
    from labeltune import decode

    texts = ["最高の一日だった", "電車が遅れて最悪だ", "明日は雨らしい", "了解", "あいつは無能すぎる", "普通"]
    model, tokenizer, prompter = _random_model(texts, seed=1)
    prompts = [prompter.prompt_ids(t)[0] for t in texts]
    own = decode.score_decode(model, tokenizer, prompts, prompter.answer_trie, batch_size=4)
    chosen = [max(d, key=d.get) for d in own[0]]
    assert set(chosen) != {"-1"}  # some rows would pick another label on their own
    picked = decode.score_decode(
        model,
        tokenizer,
        prompts,
        prompter.answer_trie,
        batch_size=4,
        label_bias={"-1": 100.0, "0": 0.0, "1": 0.0},
    )
    forced = decode.score_decode(
        model, tokenizer, prompts, prompter.answer_trie, batch_size=4, labels=["-1"] * len(texts)
    )
    assert forced[0] == own[0]  # the label distribution is reported as it is
    for (p_probs, p_greedy), (f_probs, f_greedy) in zip(picked[2], forced[2]):
        assert f_greedy == p_greedy and set(f_probs) == set(range(101))
        assert list(f_probs.values()) == pytest.approx(list(p_probs.values()), abs=1e-9)
    given = decode.scores_given_labels(model, prompter, texts, ["-1"] * len(texts), batch_size=4)
    assert given == [(decode.estimate_score(p, g, "expected"), g) for p, g in forced[2]]
    with pytest.raises(ValueError, match="without a score"):
        decode.scores_given_labels(model, prompter, texts[:1], ["1"])

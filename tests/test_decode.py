"""Batching of prompts for decoding."""

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

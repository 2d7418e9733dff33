"""Forgetting check: perplexity of the base model and of the tuned adapter on general Japanese text.

Instruction tuning on one narrow task can degrade what the model knew. Perplexity on held-out
general text (not posts, not prompts) is a cheap signal: if the tuned model's perplexity is much
higher than the base model's, the adapter has overwritten general ability. Texts come from a .txt
file (paragraphs separated by blank lines; general_ja.txt is bundled in labeltune/texts/, written for
the project),
a .jsonl file with a ``text`` field, or the livedoor news corpus folder (title + body of articles
sampled evenly across categories).

Perplexity = exp(total negative log-likelihood / total predicted tokens) over all texts (token-
weighted), each text encoded with the tokenizer's BOS and cut to ``max_length`` tokens.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from labeltune.features import pad_ids
from labeltune.sources import read_livedoor

BUNDLED_TEXTS = Path(__file__).resolve().parent / "texts"  # package data: general_ja.txt


def load_general_texts(path: str | Path, limit: int = 200) -> tuple[list[str], str]:
    """(at most `limit` texts, a description of the source). A relative path that does not exist from
    the working directory is looked up among the texts bundled with the package (general_ja.txt)."""
    path = Path(path)
    if not path.is_absolute() and not path.exists() and (BUNDLED_TEXTS / path.name).exists():
        path = BUNDLED_TEXTS / path.name
    if path.is_dir():
        per_category = max(1, limit // 9 + 1)
        examples, _ = read_livedoor(path, per_category, seed=0)
        texts = [ex.text for ex in examples]
        source = f"livedoor news corpus ({path}), {per_category} articles per category"
    elif path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            texts = [json.loads(line)["text"] for line in f if line.strip()]
        source = str(path)
    elif path.is_file():
        paragraphs = path.read_text(encoding="utf-8").split("\n\n")
        texts = [p.strip() for p in paragraphs]
        source = str(path)
    else:
        raise FileNotFoundError(
            f"{path}: no general text for the forgetting check (a .txt, .jsonl or livedoor folder)"
        )
    texts = [t for t in texts if t.strip()][:limit]
    if not texts:
        raise ValueError(f"{path}: no non-empty texts for the forgetting check")
    return texts, source


def perplexity(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 8) -> tuple[float, int]:
    """(token-weighted perplexity of `model` over `texts`, number of predicted tokens)."""
    import torch

    device = next(model.parameters()).device
    encoded = [ids[:max_length] for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]
    encoded = [ids for ids in encoded if len(ids) > 1]
    total_nll, total_tokens = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(encoded), batch_size):
            ids, mask = pad_ids(encoded[start : start + batch_size], tokenizer.pad_token_id)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            target = ids[:, 1:].to(device)
            nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            keep = mask[:, 1:].to(device).bool()
            total_nll += float(nll[keep].sum())
            total_tokens += int(keep.sum())
    if not total_tokens:
        raise ValueError("no tokens to measure perplexity on")
    return math.exp(total_nll / total_tokens), total_tokens


def forgetting_check(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 8) -> dict:
    """Perplexity of the base model (adapter disabled) and of the tuned model on the same texts.

    `model` is a PEFT model (base + adapter); for a merged export there is no base to compare with,
    and ``base_ppl`` is None."""
    tuned, n_tokens = perplexity(model, tokenizer, texts, max_length, batch_size)
    base = None
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            base, _ = perplexity(model, tokenizer, texts, max_length, batch_size)
    return {
        "base_ppl": base,
        "tuned_ppl": tuned,
        "ratio": tuned / base if base else None,
        "n_texts": len(texts),
        "n_tokens": n_tokens,
    }

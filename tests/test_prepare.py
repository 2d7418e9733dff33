"""Dataset adapters: every row accounted for, the documented rules, duplicates, balance."""

import csv
import dataclasses
import json
from pathlib import Path

import pytest

from labeltune import prepare, sources
from labeltune.config import PrepareConfig, resolve
from labeltune.data import Example
from labeltune.splits import normalize_text

ROOT = Path(__file__).resolve().parent.parent
JTOX = ROOT.parent / "shared" / "data" / "japanese-toxic-dataset"
WRIME_COLUMNS = ["Sentence", "UserID", "Datetime", "Train/Dev/Test"] + [
    f"{who}_{what}"
    for who in ("Writer", "Reader1", "Reader2", "Reader3", "Avg. Readers")
    for what in (
        "Joy",
        "Sadness",
        "Anticipation",
        "Surprise",
        "Anger",
        "Fear",
        "Disgust",
        "Trust",
        "Sentiment",
    )
]


def _prepare(tmp_path, **options):
    return prepare.main(resolve(PrepareConfig, None, {"output": str(tmp_path / "out"), **options}))


def test_japanese_toxic_real_file(tmp_path):
    if not (JTOX / "data" / "subset.csv").is_file():
        pytest.skip(f"{JTOX} is absent (../shared/data not beside this checkout)")
    card = _prepare(tmp_path, source="japanese-toxic", path=str(JTOX))
    assert (
        card["input_rows"]
        == 437
        == sum(card["kept_rows"].values())
        + len(card["dropped_rows"])
        + sum(d["action"] == "removed from train" for d in card["duplicates"])
    )
    rows = {
        name: [json.loads(line) for line in open(tmp_path / "out" / f"{name}.jsonl", encoding="utf-8")]
        for name in ("train", "dev", "test")
    }
    for r in rows["train"] + rows["dev"] + rows["test"]:
        nt, hs, t, vt = r["votes"]
        n = r["annotation_num"]
        assert r["label"] == ("-1" if (t + vt) / n >= 0.5 else "0")
        assert r["score"] == (round(100 * (hs / 3 + 2 * t / 3 + vt) / n) if r["label"] == "-1" else 0)
        assert any(k.startswith("category_") for k in r)
    keys = [{normalize_text(r["text"]) for r in rows[name]} for name in ("train", "dev", "test")]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2])
    assert (
        (tmp_path / "out" / "README.md").read_text(encoding="utf-8").startswith("# Data card: japanese-toxic")
    )


def test_japanese_toxic_bad_rows_are_dropped_with_reasons(tmp_path):
    src = tmp_path / "subset.csv"
    src.write_text(
        "id,text,Not Toxic,Hard to Say,Toxic,Very Toxic,category_卑語,annotation_num\n"
        "1,普通の投稿,3,0,0,0,0,3\n2,ひどい投稿,0,1,1,1,2,3\n3,,3,0,0,0,0,3\n4,数が合わない,1,0,0,0,0,3\n",
        encoding="utf-8",
    )
    card = _prepare(tmp_path, source="japanese-toxic", path=str(src), split="1,0,0")
    assert card["input_rows"] == 4 and card["kept_rows"]["train"] == 2
    assert card["dropped"] == {"empty_text": 1, "votes_do_not_sum_to_annotation_num": 1}
    train = [json.loads(line) for line in open(tmp_path / "out" / "train.jsonl", encoding="utf-8")]
    toxic = next(r for r in train if r["text"] == "ひどい投稿")
    assert toxic["label"] == "-1" and toxic["score"] == round(100 * (1 / 3 + 2 / 3 + 1) / 3) == 67


def test_card_carries_the_licence_and_rules_of_its_own_source(tmp_path):
    src = tmp_path / "subset.csv"
    src.write_text(
        "id,text,Not Toxic,Hard to Say,Toxic,Very Toxic,annotation_num\n1,普通の投稿,3,0,0,0,3\n",
        encoding="utf-8",
    )
    card = _prepare(tmp_path, source="japanese-toxic", path=str(src), split="1,0,0")
    source = sources.SOURCES["japanese-toxic"]
    assert card["licence"] == source.licence and card["rules"] == source.rules
    assert source.rules in (tmp_path / "out" / "README.md").read_text(encoding="utf-8")


def test_every_source_is_named_in_the_help_of_source():
    """A new dataset is its reader and one Source entry in labeltune.sources.SOURCES, plus its name here."""
    help_text = next(f for f in dataclasses.fields(PrepareConfig) if f.name == "source").metadata["help"]
    assert [name for name in sources.SOURCES if name not in help_text] == []


def _wrime(path: Path, rows):
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(WRIME_COLUMNS)
        for text, split, writer_s, readers_s in rows:
            values = {c: 0 for c in WRIME_COLUMNS}
            values.update(
                {
                    "Sentence": text,
                    "UserID": 1,
                    "Datetime": "2018/07/31 23:48",
                    "Train/Dev/Test": split,
                    "Writer_Sentiment": writer_s,
                    "Avg. Readers_Sentiment": readers_s,
                }
            )
            writer.writerow([values[c] for c in WRIME_COLUMNS])


def test_wrime_fixture_in_the_real_layout(tmp_path):
    src = tmp_path / "wrime-ver2.tsv"
    _wrime(
        src,
        [
            ("楽しかった", "train", 2, 1.3),
            ("つらい", "train", -1, -0.7),
            ("普通", "dev", 0, 0.0),
            ("微妙", "test", 1, -0.3),
            ("", "train", 0, 0),
            ("謎", "valid", 0, 0),
        ],
    )
    card = _prepare(tmp_path, source="wrime", path=str(src))
    assert card["kept_rows"] == {"train": 2, "dev": 1, "test": 1}
    assert card["dropped"] == {"empty_text": 1, "unknown_split": 1}
    assert card["labels"]["test"] == {"-1": 1}  # readers' average decides
    card = _prepare(tmp_path, source="wrime", path=str(src), label_source="writer", drop_neutral=True)
    assert card["labels"]["test"] == {"1": 1} and card["kept_rows"]["dev"] == 0
    assert card["dropped"]["neutral_dropped"] == 1


def test_annotated_csv_scores_from_flags(tmp_path):
    src = tmp_path / "crawl.csv"
    src.write_text(
        "body,pol,f1,f2,f3\n死ね,-1,3,3,2\n雨でつらい,negative,0,0,0\nいいね,1,1,0,0\n,0,0,0,0\n謎,2,0,0,0\n",
        encoding="utf-8",
    )
    card = _prepare(
        tmp_path,
        source="annotated-csv",
        path=str(src),
        text_column="body",
        label_column="pol",
        flag_columns="f1,f2,f3",
        split="1,0,0",
    )
    train = {r["text"]: r for r in map(json.loads, open(tmp_path / "out" / "train.jsonl", encoding="utf-8"))}
    assert train["死ね"]["score"] == round(100 * 8 / 9) and train["雨でつらい"]["score"] == 0
    assert train["いいね"]["score"] == 0  # positive: no score whatever the flags
    assert card["dropped"] == {"empty_text": 1, "label_not_in_task": 1}
    with pytest.raises(ValueError, match="no column"):
        _prepare(tmp_path, source="annotated-csv", path=str(src), text_column="text", flag_columns="f1")


def test_near_duplicates_removed_from_train_only():
    train = [Example("今日はとても良い天気ですね、散歩に行こう", "1"), Example("全然ちがう文章です", "0")]
    test = [Example("今日はとても良い天気ですね、散歩に行こう！", "1")]
    splits, report = prepare.deduplicate({"train": train, "dev": [], "test": test})
    assert [ex.text for ex in splits["train"]] == ["全然ちがう文章です"]
    assert splits["test"] == test
    assert report[0]["kind"] == "near" and report[0]["jaccard"] >= 0.9


def test_balance():
    rows = [Example(f"a{i}", "1") for i in range(6)] + [Example(f"b{i}", "0") for i in range(2)]
    down = prepare.balance(rows, "downsample", 0)
    up = prepare.balance(rows, "upsample", 0)
    assert sorted(Counter_(down).items()) == [("0", 2), ("1", 2)]
    assert sorted(Counter_(up).items()) == [("0", 6), ("1", 6)]
    assert prepare.balance(rows, "none", 0) == rows


def Counter_(rows):
    from collections import Counter

    return Counter(ex.label for ex in rows)


@pytest.mark.slow
def test_train_and_evaluate_on_prepared_japanese_toxic(tmp_path):
    if not (JTOX / "data" / "subset.csv").is_file():
        pytest.skip(f"{JTOX} is absent")
    from labeltune import evaluate, train
    from labeltune.config import EvalConfig, TrainConfig

    _prepare(tmp_path, source="japanese-toxic", path=str(JTOX))
    run = tmp_path / "run"
    train.main(resolve(TrainConfig, None, {"data": str(tmp_path / "out"), "output": str(run), "epochs": 6}))
    metrics = evaluate.main(resolve(EvalConfig, None, {"run": str(run)}))
    assert metrics["finetuned"]["malformed_rate"] <= 0.05 and metrics["base"]["malformed_rate"] >= 0.5


def test_duplicates_within_train_removed_within_test_reported():
    train = [Example("同じ文です", "1"), Example("同じ 文です", "1"), Example("別の文", "0")]
    test = [Example("テストの文", "0"), Example("テストの文", "0")]
    splits, report = prepare.deduplicate({"train": train, "dev": [], "test": test})
    assert [ex.text for ex in splits["train"]] == ["同じ文です", "別の文"] and len(splits["test"]) == 2
    assert {(r["kind"], r["action"]) for r in report} == {
        ("within_train", "removed from train"),
        ("within_test", "reported"),
    }


def test_livedoor_subset_real_corpus(tmp_path):
    corpus = ROOT.parent / "shared" / "data" / "livedoor-news-corpus"
    if not (corpus / "text").is_dir():
        pytest.skip(f"{corpus} is absent")
    card = _prepare(tmp_path, source="livedoor", path=str(corpus), per_label=6)
    assert card["input_rows"] == 54 and set(card["labels"]["train"]) == {
        "dokujo-tsushin",
        "it-life-hack",
        "kaden-channel",
        "livedoor-homme",
        "movie-enter",
        "peachy",
        "smax",
        "sports-watch",
        "topic-news",
    }
    first = json.loads(open(tmp_path / "out" / "train.jsonl", encoding="utf-8").readline())
    assert first["text"].split("\n", 1)[0] == first["title"] and first["url"].startswith("http")


def test_train_and_dev_per_label_cap_those_splits_only_and_say_so(tmp_path, capsys):
    corpus = ROOT.parent / "shared" / "data" / "livedoor-news-corpus"
    if not (corpus / "text").is_dir():
        pytest.skip(f"{corpus} is absent")
    full = _prepare(tmp_path / "full", source="livedoor", path=str(corpus), per_label=20)
    capped = _prepare(
        tmp_path / "capped",
        source="livedoor",
        path=str(corpus),
        per_label=20,
        train_per_label=3,
        dev_per_label=1,
    )
    assert capped["labels"]["test"] == full["labels"]["test"] and set(capped["labels"]["dev"].values()) == {1}
    assert set(capped["labels"]["train"].values()) == {3} and len(capped["labels"]["train"]) == 9
    removed = 3 * 9 - full["kept_rows"]["train"]
    assert capped["train_rows_changed_by_balance"] == removed and capped["train_per_label"] == 3
    assert (
        f"train {removed:+d} rows by --train-per-label 3, "
        f"dev {9 - full['kept_rows']['dev']:+d} rows by --dev-per-label 1" in capsys.readouterr().out
    )

    def read(d):
        return [json.loads(line) for line in open(tmp_path / d / "out" / "train.jsonl", encoding="utf-8")]

    full_ids = [r["url"] for r in read("full")]
    kept = [r["url"] for r in read("capped")]
    assert kept == [u for u in full_ids if u in set(kept)]  # a subset of the full train split, in its order


def test_livedoor_long_articles_cut_by_tokens_keep_the_answer_header():
    from labeltune.features import Prompter
    from labeltune.models import build_tiny_tokenizer
    from labeltune.prompts import load_template, render_prompt
    from labeltune.task import load_task

    task = load_task("livedoor_category")
    template = load_template(task.default_template)
    corpus = [render_prompt(template, task, "タイトル\n本文の文章です。" * 5)] * 20 + task.all_answers()
    tokenizer = build_tiny_tokenizer(corpus, vocab_size=400)
    prompter = Prompter(tokenizer, template, task, max_length=256)
    ids, truncated = prompter.prompt_ids("長いタイトル\n" + "本文がとても長い記事です。" * 400)
    assert truncated and len(ids) <= 256 - prompter.answer_budget
    assert tokenizer.decode(ids).endswith("### 応答:\n")


@pytest.mark.slow
def test_train_and_evaluate_on_a_livedoor_subset(tmp_path):
    corpus = ROOT.parent / "shared" / "data" / "livedoor-news-corpus"
    if not (corpus / "text").is_dir():
        pytest.skip(f"{corpus} is absent")
    from labeltune import evaluate, train
    from labeltune.config import EvalConfig, TrainConfig

    _prepare(tmp_path, source="livedoor", path=str(corpus), per_label=30)
    run = tmp_path / "run"
    train.main(
        resolve(
            TrainConfig,
            None,
            {
                "data": str(tmp_path / "out"),
                "output": str(run),
                "task": "livedoor_category",
                "max_length": 256,
                "epochs": 5,
            },
        )
    )
    metrics = evaluate.main(resolve(EvalConfig, None, {"run": str(run), "mode": "score"}))
    assert metrics["finetuned"]["malformed_rate"] == 0.0
    assert metrics["finetuned"]["accuracy"] > metrics["majority_baseline"]["accuracy"]


def test_download_checks_the_checksum_and_fails_clearly(tmp_path):
    src = JTOX / "data" / "subset.csv"
    if not src.is_file():
        pytest.skip(f"{JTOX} is absent")
    target = prepare.download(
        "japanese-toxic", tmp_path / "jtox", url=src.resolve().as_uri()
    )  # the real code, a local URL
    assert target.read_bytes() == src.read_bytes()
    bad = tmp_path / "bad.csv"
    bad.write_text("id,text\n", encoding="utf-8")
    with pytest.raises(ValueError, match="sha256"):
        prepare.download("japanese-toxic", tmp_path / "other", url=bad.as_uri())
    assert not (tmp_path / "other" / "data" / "subset.csv").exists()
    with pytest.raises(ValueError, match="could not download"):
        prepare.download("japanese-toxic", tmp_path / "missing", url=(tmp_path / "nope.csv").as_uri())
    with pytest.raises(ValueError, match="rondhuit"):
        prepare.download("livedoor", tmp_path / "ld")


def test_hf_source_from_a_local_folder(tmp_path):
    folder = tmp_path / "hfdata"
    folder.mkdir()
    rows = [{"sentence": f"文{i}", "polarity": ["positive", "negative", "neutral"][i % 3]} for i in range(30)]
    for name, part in (("train", rows[:20]), ("test", rows[20:])):
        with open(folder / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in part)
    card = _prepare(tmp_path, source=f"hf:{folder}", text_column="sentence", label_column="polarity")
    assert card["kept_rows"] == {"train": 20, "dev": 0, "test": 10}
    assert card["labels"]["test"] == {"0": 4, "1": 3, "-1": 3}  # rows 20..29, i % 3 = 2, 0, 1, 2, ...
    with pytest.raises(ValueError, match="unknown source"):
        _prepare(tmp_path, source="wikipedia")


def test_wrime_ver1_sample_is_refused_with_the_reason(tmp_path):
    sample = ROOT.parent / "shared" / "data" / "wrime-sample" / "sample.tsv"
    if not sample.is_file():
        pytest.skip(f"{sample} is absent")
    with pytest.raises(ValueError, match="ver1 layout.*no sentiment polarity"):
        _prepare(tmp_path, source="wrime", path=str(sample))

"""labeltune.data: readers and encodings, examples, score_from_flags, splits, leakage, bundled sample."""

from __future__ import annotations

import codecs
import csv
import io
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from labeltune.data import (
    SPLITS,
    Example,
    detect_encoding,
    iter_rows,
    load_examples,
    read_columns,
    score_from_flags,
    write_jsonl,
)
from labeltune.splits import drop_leaked_from_train, find_leaks, fingerprint, normalize_text, split_examples
from labeltune.task import load_task

ST = load_task("sentiment_toxicity")
PN = load_task("posneg")
SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample.csv"

HEADER = ["id", "text", "label", "score"]
ROWS = [
    ["a1", "今日のお昼の親子丼、卵がとろとろで美味しかった", "1", "0"],
    ["a2", "改行を含む投稿です\n二行目、カンマもあります", "-1", "47"],
    ["a3", "ウイルス対策ソフトの更新をした", "0", "0"],
    ["a4", '"引用符" を含む、投稿', "ネガティブ", "100"],
    ["a5", "半角ｶﾅと全角ＡＢＣ", "-1.0", "7"],
]
EXPECTED = [dict(zip(HEADER, row)) for row in ROWS]


def _csv_text() -> str:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(HEADER)
    writer.writerows(ROWS)
    return buf.getvalue()


ENCODINGS = {
    "utf8": lambda s: s.encode("utf-8"),
    "utf8_bom": lambda s: codecs.BOM_UTF8 + s.encode("utf-8"),
    "cp932": lambda s: s.encode("cp932"),
    "utf16": lambda s: s.encode("utf-16"),  # BOM in native order
    "utf16_le_bom": lambda s: codecs.BOM_UTF16_LE + s.encode("utf-16-le"),
    "utf16_be_bom": lambda s: codecs.BOM_UTF16_BE + s.encode("utf-16-be"),
}


@pytest.fixture(params=sorted(ENCODINGS))
def encoded_csv(request, tmp_path):
    path = tmp_path / f"posts_{request.param}.csv"
    path.write_bytes(ENCODINGS[request.param](_csv_text()))
    return request.param, path


# ---------------------------------------------------------------- reading


def test_csv_text_has_the_awkward_fields():
    text = _csv_text()
    assert '"改行を含む投稿です\n二行目、カンマもあります"' in text
    assert '"""引用符"" を含む、投稿"' in text


def test_detect_encoding_gives_a_working_encoding(encoded_csv):
    kind, path = encoded_csv
    encoding = detect_encoding(path)
    expected = {"utf8": "utf-8", "utf8_bom": "utf-8-sig", "cp932": "cp932"}.get(kind, "utf-16")
    assert codecs.lookup(encoding).name == codecs.lookup(expected).name
    with open(path, encoding=encoding, newline="") as f:
        assert f.read() == _csv_text()


def test_iter_rows_identical_across_encodings(encoded_csv):
    kind, path = encoded_csv
    assert read_columns(path) == HEADER
    assert list(iter_rows(path)) == EXPECTED
    assert list(iter_rows(path, encoding=detect_encoding(path))) == EXPECTED


def test_load_examples_identical_across_encodings(encoded_csv, tmp_path):
    _, path = encoded_csv
    reference = tmp_path / "reference.csv"
    reference.write_text(_csv_text(), encoding="utf-8", newline="")
    examples, dropped = load_examples(path, ST)
    assert dropped == []
    assert examples == load_examples(reference, ST)[0]
    assert [(e.text, e.label, e.score) for e in examples] == [
        (ROWS[0][1], "1", 0),
        (ROWS[1][1], "-1", 47),
        (ROWS[2][1], "0", 0),
        (ROWS[3][1], "-1", 100),
        (ROWS[4][1], "-1", 7),
    ]
    assert [e.meta for e in examples] == [{"id": row[0]} for row in ROWS]


def test_tsv(tmp_path):
    path = tmp_path / "posts.tsv"
    path.write_text("text\tlabel\nカンマ, あり\t1\n", encoding="utf-8")
    assert list(iter_rows(path)) == [{"text": "カンマ, あり", "label": "1"}]


def test_ragged_rows(tmp_path):
    """A short row is read with empty cells and reported with its line; a long one (its extra cells would
    be lost) is refused with its line."""
    from labeltune.data import ReadReport

    path = tmp_path / "ragged.csv"
    path.write_text("text,label\n短い\n普通,0\n", encoding="utf-8")
    report = ReadReport(str(path))
    assert list(iter_rows(path, report=report)) == [
        {"text": "短い", "label": ""},
        {"text": "普通", "label": "0"},
    ]
    assert (
        report.short_rows == [2]
        and "1 rows have fewer cells than the header (lines 2)" in report.warnings()[0]
    )
    path.write_text("text,label\n普通,0\n長い,1,余分\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"ragged\.csv:3: 3 cells but the header has 2"):
        list(iter_rows(path))


def test_jsonl(tmp_path):
    path = tmp_path / "posts.jsonl"
    records = [
        {"text": "楽しかった！", "label": 1, "score": 0, "user": "u1"},
        {"text": "最悪", "label": "-1", "score": 80},
        {"text": "普通", "label": "neutral", "score": None},
    ]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n\n", encoding="utf-8")
    assert list(iter_rows(path)) == records
    assert read_columns(path) == ["text", "label", "score", "user"]
    examples, dropped = load_examples(path, ST)
    assert dropped == []
    assert [(e.text, e.label, e.score) for e in examples] == [
        ("楽しかった！", "1", 0),
        ("最悪", "-1", 80),
        ("普通", "0", None),
    ]
    assert examples[0].meta == {"user": "u1"}


def test_jsonl_roundtrip_with_write_jsonl(tmp_path):
    examples = [Example("改行\nあり", "-1", 33, {"id": "x"}), Example("ふつう", "0", 0)]
    path = tmp_path / "out.jsonl"
    write_jsonl(examples, path)
    assert load_examples(path, ST) == (examples, [])


def test_jsonl_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok", "label": 1}\n{not json\n', encoding="utf-8")
    with pytest.raises(ValueError, match=":2:"):
        list(iter_rows(path))


def test_jsonl_line_that_is_not_an_object(tmp_path):
    # iter_rows promises dicts; a JSON array/string line should be a ValueError, not a crash later.
    path = tmp_path / "array.jsonl"
    path.write_text('{"text": "ok", "label": 1}\n["not", "an", "object"]\n', encoding="utf-8")
    with pytest.raises(ValueError):
        load_examples(path, ST)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        list(iter_rows(tmp_path / "absent.csv"))


def test_undecodable_file(tmp_path):
    path = tmp_path / "bin.csv"
    path.write_bytes(b"text\n\x81\xfd\xfe\n")  # invalid in UTF-8 and in CP932, no BOM
    with pytest.raises(ValueError, match="encoding"):
        detect_encoding(path)


@pytest.mark.parametrize(
    "content,kwargs,missing",
    [
        ("本文,label,text_x\nこんにちは,1,x\n", {}, "text"),
        ("本文,ラベル\nこんにちは,1\n", {"text_column": "本文"}, "label"),
    ],
)
def test_missing_column_names_the_columns_found(tmp_path, content, kwargs, missing):
    path = tmp_path / "posts.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError) as e:
        load_examples(path, ST, **kwargs)
    msg = str(e.value)
    assert repr(missing) in msg
    for column in content.split("\n")[0].split(","):
        assert column in msg


def test_other_column_names(tmp_path):
    path = tmp_path / "posts.csv"
    path.write_text("本文,ラベル,毒性\nこんにちは,ポジティブ,\n死ね,ネガティブ,95\n", encoding="utf-8")
    examples, dropped = load_examples(
        path, ST, text_column="本文", label_column="ラベル", score_column="毒性"
    )
    assert dropped == []
    assert [(e.text, e.label, e.score) for e in examples] == [("こんにちは", "1", None), ("死ね", "-1", 95)]


def test_no_score_column_and_posneg(tmp_path):
    path = tmp_path / "posts.csv"
    path.write_text("text,label,score\nいいね,1,0\nだめ,-1,80\n", encoding="utf-8")
    examples, _ = load_examples(path, ST, score_column=None)
    assert [e.score for e in examples] == [None, None]
    examples, _ = load_examples(path, PN)
    assert [(e.label, e.score) for e in examples] == [("ポジティブ", None), ("ネガティブ", None)]


def test_dropped_rows_with_reasons(tmp_path):
    path = tmp_path / "posts.csv"
    path.write_text(
        "text,label,score\n"
        "良い,1,0\n"  # 0 kept
        ",1,0\n"  # 1 empty text
        "   ,0,0\n"  # 2 whitespace-only text
        "うーん,2,0\n"  # 3 unknown label
        "なし,,0\n"  # 4 empty label
        "ひどい,-1,101\n"  # 5 out of range
        "ひどい2,-1,-5\n"  # 6 out of range
        "ひどい3,-1,abc\n"  # 7 not a number
        "ひどい4,-1,\n"  # 8 kept, score None
        "ひどい5,-1,85.0\n",  # 9 kept, 85
        encoding="utf-8",
    )
    examples, dropped = load_examples(path, ST)
    assert [(e.text, e.score) for e in examples] == [("良い", 0), ("ひどい4", None), ("ひどい5", 85)]
    assert dropped == [
        {"row": 1, "reason": "empty_text"},
        {"row": 2, "reason": "empty_text"},
        {"row": 3, "reason": "label_not_in_task:2"},
        {"row": 4, "reason": "label_not_in_task:"},
        {"row": 5, "reason": "score_out_of_range:101"},
        {"row": 6, "reason": "score_out_of_range:-5"},
        {"row": 7, "reason": "score_not_an_integer:abc"},
    ]


@pytest.mark.parametrize("raw", ["85.5", "0.5", "inf", "-inf", "nan", "1e400"])
def test_non_integer_scores_are_dropped_not_truncated_or_crashing(tmp_path, raw):
    # load_examples: "a score present on a row must be an integer in the task's range".
    path = tmp_path / "posts.csv"
    path.write_text(f"text,label,score\nひどい,-1,{raw}\n", encoding="utf-8")
    examples, dropped = load_examples(path, ST)
    assert examples == []
    assert len(dropped) == 1 and dropped[0]["row"] == 0 and dropped[0]["reason"].startswith("score_")


# ---------------------------------------------------------------- score_from_flags


@pytest.mark.parametrize(
    "flags,score",
    [
        ([0, 0, 0, 0, 0], 0),
        ([3, 3, 3, 3, 3], 100),
        ([1, 0, 0, 0, 0], 7),  # 100 * 1/15 = 6.67
        ([2, 2, 1, 1, 1], 47),  # 100 * 7/15 = 46.67
        ([1, 1, 1, 1, 1], 33),  # 100 * 5/15 = 33.33
        ([2, 2, 2, 2, 2], 67),  # 66.67
        ([3, 0, 0, 0, 0], 20),
        ([3, 3, 3, 2, 0], 73),  # 100 * 11/15 = 73.33
        ([1, 2], 50),  # 100 * 3/6
        ([1], 33),
    ],
)
def test_score_from_flags(flags, score):
    assert score_from_flags(flags) == score


def test_score_from_flags_half_to_even():
    assert score_from_flags([1, 0], max_level=4) == 12  # 12.5 -> 12 (Python's round)
    assert score_from_flags([3, 0], max_level=4) == 38  # 37.5 -> 38
    assert score_from_flags([1], max_level=1) == 100


@pytest.mark.parametrize("flags", [[], [4, 0, 0, 0, 0], [-1, 0, 0, 0, 0], [0, 0, 9]])
def test_score_from_flags_errors(flags):
    with pytest.raises(ValueError):
        score_from_flags(flags)


# ---------------------------------------------------------------- splits


def _synthetic(n_per_label=100) -> list[Example]:
    out = []
    for label in ("1", "0", "-1"):
        for i in range(n_per_label):
            out.append(Example(f"投稿 {label} 番号{i}", label, 0 if label != "-1" else i % 101))
    return out


def _multiset(examples):
    return Counter((e.text, e.label, e.score) for e in examples)


def test_split_is_deterministic():
    examples = _synthetic()
    a, b = split_examples(examples), split_examples(list(examples))
    assert a == b
    assert fingerprint(a) == fingerprint(b)
    assert set(a) == set(SPLITS)
    assert sum(len(v) for v in a.values()) == len(examples)


def test_split_independent_of_input_order():
    examples = _synthetic()
    reference = split_examples(examples, seed=3)
    for shuffle_seed in range(3):
        shuffled = list(examples)
        random.Random(shuffle_seed).shuffle(shuffled)
        out = split_examples(shuffled, seed=3)
        for name in SPLITS:
            assert _multiset(out[name]) == _multiset(reference[name])
            # each split keeps the input order of its examples
            positions = [shuffled.index(e) for e in out[name]]
            assert positions == sorted(positions)


def test_split_seed_changes_split():
    examples = _synthetic()
    assert _multiset(split_examples(examples, seed=0)["test"]) != _multiset(
        split_examples(examples, seed=1)["test"]
    )


@pytest.mark.parametrize("ratios", [(0.8, 0.1, 0.1), (0.7, 0.2, 0.1), (0.6, 0.2, 0.2)])
def test_split_is_stratified(ratios):
    examples = _synthetic(100)  # 300 examples, 100 per label
    out = split_examples(examples, ratios)
    for name, ratio in zip(SPLITS, ratios):
        counts = Counter(e.label for e in out[name])
        for label in ("1", "0", "-1"):
            assert abs(counts[label] - 100 * ratio) <= 1, (name, label, counts)


def test_split_degenerate_ratios():
    examples = _synthetic(10)
    out = split_examples(examples, (1.0, 0.0, 0.0))
    assert len(out["train"]) == 30 and out["dev"] == [] and out["test"] == []


@pytest.mark.parametrize("ratios", [(0.8, 0.1), (0.8, 0.3, 0.1), (1.2, -0.1, -0.1), (0.5, 0.5, 0.5)])
def test_split_bad_ratios(ratios):
    with pytest.raises(ValueError):
        split_examples(_synthetic(5), ratios)


def test_split_keeps_normalised_duplicates_together():
    examples = _synthetic(50)
    dups = []
    for i in range(40):  # 40 duplicate groups, each three spellings of one text
        for text in (f"ＡＢＣ{i}  です", f"abc{i}です", f"ABC{i}\tで す"):
            dups.append(Example(text, "-1", 50))
    examples += dups
    random.Random(0).shuffle(examples)
    out = split_examples(examples)
    where = {}
    for name, split in out.items():
        for e in split:
            where.setdefault(normalize_text(e.text), set()).add(name)
    assert all(len(names) == 1 for names in where.values())
    assert (
        len({next(iter(where[normalize_text(d.text)])) for d in dups}) > 1
    )  # groups do go to several splits
    assert find_leaks(out) == []


def test_split_keeps_duplicates_with_conflicting_labels_together():
    # The same post annotated with two different labels (common with real annotation) must not end
    # up in train and in dev/test: that is exactly the leak find_leaks reports (and leakage=error stops on).
    examples = []
    for t in range(30):
        examples += [Example(f"重複{t}", "1"), Example(f"重複{t}", "-1", 60)]
    examples += [Example(f"p{i}", "1") for i in range(5)]
    examples += [Example(f"n{i}", "-1", 10) for i in range(20)]
    out = split_examples(examples)
    for t in range(30):
        names = {name for name, split in out.items() for e in split if e.text == f"重複{t}"}
        assert len(names) == 1, (f"重複{t}", names)
    assert find_leaks(out) == []


# ---------------------------------------------------------------- leakage


def test_normalize_text():
    assert normalize_text("ＡＢＣ  です") == normalize_text("abcです") == "abcです"
    assert normalize_text("ｶﾀｶﾅ １２３") == normalize_text("カタカナ123")
    assert normalize_text("a\u3000b\n\tc") == "abc"
    assert normalize_text("ﾎﾟｼﾞﾃｨﾌﾞ") == "ポジティブ"


def _leak_splits():
    train = [
        Example("今日は最高の一日！", "1"),
        Example("ＡＢＣ  です", "0"),
        Example("ﾗｰﾒﾝ食べた", "0"),
        Example("ただの訓練データ", "1"),
        Example("なんだこれ\n最悪", "-1", 40),
    ]
    dev = [
        Example("今日は最高の一日！", "1"),  # exact
        Example("開発だけの投稿", "0"),
        Example("abcです", "0"),  # normalised: NFKC + case + whitespace
    ]
    test = [
        Example("ラーメン 食べた", "0"),  # normalised: half-width kana + space
        Example("テストだけの投稿", "1"),
        Example("なんだこれ 最悪", "-1", 40),  # normalised: newline vs space
    ]
    return {"train": train, "dev": dev, "test": test}


def test_find_leaks():
    leaks = find_leaks(_leak_splits())
    assert [(lk.kind, lk.split, lk.index, lk.train_index, lk.text) for lk in leaks] == [
        ("exact", "dev", 0, 0, "今日は最高の一日！"),
        ("normalised", "dev", 2, 1, "abcです"),
        ("normalised", "test", 0, 2, "ラーメン 食べた"),
        ("normalised", "test", 2, 4, "なんだこれ 最悪"),
    ]


def test_find_leaks_none():
    splits = _leak_splits()
    splits["dev"] = [splits["dev"][1]]
    splits["test"] = [splits["test"][1]]
    assert find_leaks(splits) == []
    assert find_leaks({"train": [], "dev": [Example("a", "1")]}) == []


def test_drop_leaked_from_train():
    splits = _leak_splits()
    before = {k: list(v) for k, v in splits.items()}
    out = drop_leaked_from_train(splits, find_leaks(splits))
    assert [e.text for e in out["train"]] == ["ただの訓練データ"]
    assert out["dev"] == before["dev"] and out["test"] == before["test"]  # evaluation rows never dropped
    assert splits == before  # input not modified
    assert find_leaks(out) == []


def test_drop_leaked_from_train_removes_every_copy():
    splits = {
        "train": [Example("同じ", "1"), Example("ほか", "0"), Example("同 じ", "1"), Example("同じ", "1")],
        "dev": [],
        "test": [Example("同じ", "1")],
    }
    out = drop_leaked_from_train(splits, find_leaks(splits))
    assert [e.text for e in out["train"]] == ["ほか"]
    assert out["test"] == splits["test"]


# ---------------------------------------------------------------- bundled sample


@pytest.fixture(scope="module")
def sample_rows():
    return list(iter_rows(SAMPLE))


def test_sample_size_and_labels(sample_rows):
    assert len(sample_rows) >= 600
    counts = Counter(row["label"] for row in sample_rows)
    assert set(counts) == {"1", "0", "-1"}
    assert all(n >= 150 for n in counts.values()), counts


def test_sample_loads_without_drops(sample_rows):
    examples, dropped = load_examples(SAMPLE, ST)
    assert dropped == []
    assert len(examples) == len(sample_rows)


def test_sample_scores_follow_flags(sample_rows):
    for row in sample_rows:
        flags = [int(row[f"a{i}"]) for i in range(1, 6)]
        expected = score_from_flags(flags) if row["label"] == "-1" else 0
        assert int(row["score"]) == expected, row
    # the score is not trivially zero
    assert any(int(row["score"]) > 0 for row in sample_rows)


def test_sample_has_no_normalised_duplicates(sample_rows):
    keys = Counter(normalize_text(row["text"]) for row in sample_rows)
    assert [k for k, n in keys.items() if n > 1] == []
    ids = [row["id"] for row in sample_rows]
    assert len(set(ids)) == len(ids)


def test_sample_split_has_no_leaks():
    examples, _ = load_examples(SAMPLE, ST)
    out = split_examples(examples)
    assert find_leaks(out) == []
    for label in ST.label_values:
        assert all(any(e.label == label for e in out[name]) for name in SPLITS)

"""labeltune.parse: every failure reason from a hand-written case, and properties of the accepted language."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labeltune.parse import REASONS, Parsed, parse
from labeltune.task import load_task

ST = load_task("sentiment_toxicity")
PN = load_task("posneg")


# ---------------------------------------------------------------- hand-written cases

FAILURES = [
    # (text, reason)
    ("", "empty"),
    ("   \n\t\n ", "empty"),
    ("score : 0", "missing_label"),
    ("Label : 1\nscore : 0", "missing_label"),
    ("label: 1\nscore : 0", "missing_label"),
    ("ラベル : 1\nscore : 0", "missing_label"),
    ("1\n0", "missing_label"),
    ("label : 2\nscore : 0", "unknown_label"),
    ("label : positive\nscore : 0", "unknown_label"),  # aliases are for gold data only
    ("label : +1\nscore : 0", "unknown_label"),
    ("label : -1.0\nscore : 0", "unknown_label"),
    ("label :  1\nscore : 0", "unknown_label"),  # two spaces: label is " 1"
    ("label : -1", "missing_score"),
    ("label : -1\n", "missing_score"),
    ("label : -1\nscore: 80", "missing_score"),
    ("label : -1\nlabel : -1", "missing_score"),
    ("label : -1\n\nscore : 80", "missing_score"),
    ("label : -1\nscore : 07", "score_not_integer"),
    ("label : -1\nscore : 8.5", "score_not_integer"),
    ("label : -1\nscore : 八十", "score_not_integer"),
    ("label : -1\nscore : ８０", "score_not_integer"),  # full-width digits
    ("label : -1\nscore : +80", "score_not_integer"),
    ("label : -1\nscore : 80点", "score_not_integer"),
    ("label : -1\nscore :  80", "score_not_integer"),
    ("label : -1\nscore : 1e2", "score_not_integer"),
    ("label : -1\nscore : 101", "score_out_of_range"),
    ("label : -1\nscore : -1", "score_out_of_range"),
    ("label : -1\nscore : 1000", "score_out_of_range"),
    ("label : 1\nscore : 30", "score_not_allowed"),
    ("label : 0\nscore : 100", "score_not_allowed"),
    ("label : 1\nscore : 1", "score_not_allowed"),
    ("label : -1\nscore : 80\nthanks", "extra_text"),
    ("label : 1\nscore : 0\nlabel : 1", "extra_text"),
    ("label : 1\nscore : 0\n\n\nfoo", "extra_text"),
    ("label : -1\nscore : 80\n### 応答:", "extra_text"),
]


@pytest.mark.parametrize("text,reason", FAILURES)
def test_failure_reasons(text, reason):
    assert parse(text, ST) == Parsed(label=None, score=None, ok=False, reason=reason)


def test_every_reason_is_covered_by_a_hand_written_case():
    covered = {reason for _, reason in FAILURES} | {reason for _, reason in POSNEG_FAILURES}
    assert covered == set(REASONS)


@pytest.mark.parametrize(
    "text,label,score",
    [
        ("label : 1\nscore : 0", "1", 0),
        ("label : 0\nscore : 0", "0", 0),
        ("label : -1\nscore : 0", "-1", 0),
        ("label : -1\nscore : 85", "-1", 85),
        ("label : -1\nscore : 100", "-1", 100),
        ("label : -1\nscore : 7", "-1", 7),
    ],
)
def test_ok(text, label, score):
    assert parse(text, ST) == Parsed(label=label, score=score, ok=True, reason="")


@pytest.mark.parametrize(
    "text",
    [
        "label : -1\nscore : 85\n",
        "label : -1\nscore : 85\n\n",
        "label : -1\nscore : 85   ",
        "label : -1\nscore : 85 \n \n\t",
        "\n  label : -1\nscore : 85\n",
        "label : -1\nscore : 85\r\n",
    ],
)
def test_surrounding_whitespace_is_tolerated(text):
    assert parse(text, ST) == Parsed(label="-1", score=85, ok=True, reason="")


def test_negative_zero_is_not_a_plain_integer():
    # "-0" is not what render_answer writes (it writes "0"), like "07" it is a non-canonical integer.
    assert parse("label : -1\nscore : -0", ST).reason == "score_not_integer"


def test_whitespace_inside_the_answer_is_not_accepted():
    # The accepted language is exactly render_answer's output modulo *surrounding* whitespace.
    for text in ("label : 1 \nscore : 0", "label : 1\r\nscore : 0", "label : 1\t\nscore : 0"):
        assert not parse(text, ST).ok, repr(text)


# ---------------------------------------------------------------- posneg (no score)

POSNEG_FAILURES = [
    ("", "empty"),
    ("ポジティブ", "missing_label"),
    ("label : 1", "unknown_label"),
    ("label : positive", "unknown_label"),
    ("label : ポジ", "unknown_label"),
    ("label : ポジティブ\nscore : 0", "extra_text"),
    ("label : ネガティブ\nscore : 80", "extra_text"),
    ("label : ネガティブ\nです", "extra_text"),
]


@pytest.mark.parametrize("text,reason", POSNEG_FAILURES)
def test_posneg_failures(text, reason):
    assert parse(text, PN) == Parsed(None, None, False, reason)


@pytest.mark.parametrize("text", ["label : ポジティブ", "label : ポジティブ\n", " label : ポジティブ \n\n"])
def test_posneg_ok(text):
    assert parse(text, PN) == Parsed(label="ポジティブ", score=None, ok=True, reason="")


def test_posneg_negative_ok():
    assert parse("label : ネガティブ", PN) == Parsed("ネガティブ", None, True, "")


# ---------------------------------------------------------------- properties

VALID = st.one_of(
    st.tuples(st.sampled_from(["1", "0"]), st.just(0)),
    st.tuples(st.just("-1"), st.integers(min_value=0, max_value=100)),
)


@given(VALID)
def test_roundtrip_every_valid_answer(pair):
    label, score = pair
    assert parse(ST.render_answer(label, score), ST) == Parsed(label, score, True, "")


def test_roundtrip_whole_answer_language():
    for task in (ST, PN):
        answers = task.all_answers()
        assert len(set(answers)) == len(answers)
        for answer in answers:
            p = parse(answer, task)
            assert p.ok, answer
            assert task.render_answer(p.label, p.score) == answer


def _check_total(text: str) -> None:
    for task in (ST, PN):
        p = parse(text, task)  # never raises
        assert p.reason in REASONS or p.reason == ""
        assert p.ok == (p.reason == "")
        if p.ok:
            assert task.render_answer(p.label, p.score) == text.strip()
        else:
            assert p.label is None and p.score is None


@given(st.text())
def test_parse_is_total_on_arbitrary_text(text):
    _check_total(text)


# Near-misses of valid answers: the interesting part of the input space, which st.text() rarely reaches.
_PIECES = st.sampled_from(
    [
        "label : ",
        "score : ",
        "label :",
        "score:",
        "\n",
        "\r\n",
        "\r",
        " ",
        "\t",
        "\u3000",
        "-",
        "+",
        "0",
        "1",
        "-1",
        "07",
        "85",
        "100",
        "101",
        "8.5",
        "八十",
        "ポジティブ",
        "ネガティブ",
        "x",
        "\u2028",
        "\x85",
    ]
)


@given(st.lists(_PIECES, max_size=10).map("".join))
@settings(derandomize=True)  # deterministic: a failure here is reproducible, never flaky
def test_parse_is_total_on_near_misses(text):
    _check_total(text)


# Two-line answers with a perturbed label, score and line endings: if the parser accepts one, it must
# be exactly a rendered answer (after stripping the outside).
_WS = st.sampled_from(["", " ", "\t", "\r", "\u3000"])
_STRUCTURED = st.builds(
    lambda lab, ws1, sep, sc, ws2: f"label : {lab}{ws1}{sep}score : {sc}{ws2}",
    st.sampled_from(["1", "0", "-1", "2", "+1", "01"]),
    _WS,
    st.sampled_from(["\n", "\r\n", "\n\n"]),
    st.sampled_from(["0", "-0", "00", "07", "85", "100", "101", "-1", "8.5", "+5", "５"]),
    _WS,
)


@given(_STRUCTURED)
@settings(derandomize=True)
def test_accepted_structured_answers_are_exactly_rendered_answers(text):
    _check_total(text)


@given(VALID, st.sampled_from(["", "\n", " ", "\r\n"]), st.sampled_from(["", "\n", " ", "\n\n"]))
def test_surrounding_whitespace_of_a_valid_answer(pair, before, after):
    label, score = pair
    assert parse(before + ST.render_answer(label, score) + after, ST) == Parsed(label, score, True, "")


_EXTRA_LINE = st.text(min_size=1).filter(lambda s: s.strip() != "")


@given(VALID, st.lists(_EXTRA_LINE, min_size=1, max_size=3), st.sampled_from(["\n", "\n\n", "\r\n"]))
@settings(max_examples=200)
def test_extra_lines_are_never_ok(pair, extra, sep):
    label, score = pair
    text = ST.render_answer(label, score) + sep + "\n".join(extra)
    assert not parse(text, ST).ok


@given(st.sampled_from(PN.label_values), st.lists(_EXTRA_LINE, min_size=1, max_size=3))
def test_posneg_extra_lines_are_never_ok(label, extra):
    text = PN.render_answer(label) + "\n" + "\n".join(extra)
    assert parse(text, PN) == Parsed(None, None, False, "extra_text")

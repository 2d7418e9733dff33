"""The evaluation report (labeltune.report): files, plots, tables and escaping, on hand-made predictions."""

from __future__ import annotations

import shutil
import subprocess
import warnings
from html.parser import HTMLParser

import pytest

from labeltune.answers import Answer
from labeltune.data import Example
from labeltune.metrics import calibration_metrics, majority_baseline, system_metrics
from labeltune.report import (
    cjk_font,
    md_cell,
    plot_confusions,
    report_context,
    write_plots,
    write_report,
)

LABELS = ["1", "0", "-1"]
SCRIPT = "<script>alert('x')</script> 最高"
PIPE = "前半|後半\n次の行"
LONG = "長" * 300


def _pred(label, score=None, probs=None, reason=""):
    return Answer(label, score, label is not None, "" if label is not None else reason, "", False, probs)


def _probs(top: str, p: float) -> dict:
    rest = [lab for lab in LABELS if lab != top]
    return {top: p, rest[0]: (1 - p) / 2, rest[1]: (1 - p) / 2}


# row  text     gold / score   fine-tuned prediction          outcome
#  0   良い      1 / 0          1 / 0    conf 0.90             right
#  1   SCRIPT   1 / 0          0 / 0    conf 0.70             wrong
#  2   PIPE     0 / 0          malformed (no_label)           malformed
#  3   普通      0 / 0          0 / 0    conf 0.80             right
#  4   ひどい    -1 / 80        -1 / 100 conf 0.60             right
#  5   最悪      -1 / 90        1 / 0    conf 0.95             wrong
#  6   微妙      0 / 0          -1 / 40  no probabilities      wrong
#  7   LONG     -1 / 60        malformed (no_eos)             malformed
#
# class  1: tp 1 (row 0), predicted rows 0 5 -> P 1/2; support rows 0 1   -> R 1/2; F1 1/2
# class  0: tp 1 (row 3), predicted rows 1 3 -> P 1/2; support rows 2 3 6 -> R 1/3; F1 2/5
# class -1: tp 1 (row 4), predicted rows 4 6 -> P 1/2; support rows 4 5 7 -> R 1/3; F1 2/5
# error sample: wrong by confidence 5 (0.95), 1 (0.70), 6 (none), then malformed 2, 7
# predicted scores 0 0 0 100 0 40: 4 of 6 are 0 -> 67%, 1 of 6 is 100 -> 17%; gold 0 0 0 0 80 90 0 60: 5 of 8
# are 0 -> 62% (62.5 rounds to even), none is 100
EXAMPLES = [
    Example("良い", "1", 0),
    Example(SCRIPT, "1", 0),
    Example(PIPE, "0", 0),
    Example("普通", "0", 0),
    Example("ひどい", "-1", 80),
    Example("最悪", "-1", 90),
    Example("微妙", "0", 0),
    Example(LONG, "-1", 60),
]
FINETUNED = [
    _pred("1", 0, _probs("1", 0.9)),
    _pred("0", 0, _probs("0", 0.7)),
    _pred(None, reason="no_label"),
    _pred("0", 0, _probs("0", 0.8)),
    _pred("-1", 100, _probs("-1", 0.6)),
    _pred("1", 0, _probs("1", 0.95)),
    _pred("-1", 40),
    _pred(None, reason="no_eos"),
]
BASE = [_pred(None, reason="no_label")] * 6 + [_pred("0"), _pred("1")]  # generate mode: no probabilities


def _metrics(forgetting: bool, preset: str = "tiny") -> dict:
    gold, gold_scores = [ex.label for ex in EXAMPLES], [ex.score for ex in EXAMPLES]
    metrics = {
        "run": "runs/hand",
        "split": "test",
        "task": "sentiment_toxicity",
        "mode": "score",
        "preset": preset,
        "label_names": {"1": "positive", "0": "neutral", "-1": "negative"},
        "score_range": [0, 100],
    }
    metrics["majority_baseline"] = majority_baseline(["0", "0", "1"], gold, LABELS)
    for key, predictions in (("base", BASE), ("finetuned", FINETUNED)):
        metrics[key] = system_metrics(gold, gold_scores, predictions, LABELS)
        metrics[key].update(calibration_metrics(predictions, gold, 0.5))
    if forgetting:
        metrics["forgetting"] = {
            "base_ppl": 20.0,
            "tuned_ppl": 30.0,
            "ratio": 1.5,
            "n_texts": 4,
            "n_tokens": 321,
            "source": "data/general_ja.txt",
        }
    return metrics


class _Page(HTMLParser):
    """Image sources, tags seen, and the text of every table cell by table id."""

    def __init__(self):
        super().__init__()
        self.images, self.tags, self.tables = [], set(), {}
        self._table, self._row, self._cell = None, None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag == "table":
            self._table = self.tables.setdefault(attrs.get("id"), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """(run directory, parsed report.html) of the hand-made metrics; read-only for the tests."""
    tmp_path = tmp_path_factory.mktemp("report")
    write_report(tmp_path, _metrics(forgetting=True), EXAMPLES, {"base": BASE, "finetuned": FINETUNED})
    page = _Page()
    page.feed((tmp_path / "report.html").read_text(encoding="utf-8"))
    return tmp_path, page


def _assert_nontrivial_png(path):
    import matplotlib.image
    import numpy as np

    image = matplotlib.image.imread(path)
    assert image.shape[0] >= 100 and image.shape[1] >= 100, path
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 10, f"{path} is (nearly) one colour"


def test_every_image_exists_and_is_nontrivial(report):
    run_dir, page = report
    assert sorted(page.images) == [
        "confusion_base.png",
        "confusion_finetuned.png",
        "reliability_finetuned.png",
        "scores_finetuned.png",
    ]  # base: no probabilities (no reliability) and no parsed score (no score plot)
    for src in page.images:
        _assert_nontrivial_png(run_dir / src)
    md = (run_dir / "report.md").read_text(encoding="utf-8")
    assert all(f"]({src})" in md for src in page.images)


def test_per_class_table_matches_hand_computed(report):
    _, page = report
    assert page.tables["per-class-finetuned"] == [
        ["class", "precision", "recall", "F1", "support"],
        ["1 (positive)", "0.500", "0.500", "0.500", "2"],
        ["0 (neutral)", "0.500", "0.333", "0.400", "3"],
        ["-1 (negative)", "0.500", "0.333", "0.400", "3"],
    ]
    assert page.tables["malformed-finetuned"][1:] == [["no_eos", "1"], ["no_label", "1"]]
    assert page.tables["malformed-base"][1:] == [["no_label", "6"]]
    assert [row[0] for row in page.tables["summary"]] == [
        "system",
        "majority class",
        "base (untuned)",
        "fine-tuned",
    ]


def test_error_sample_rows_and_order(report):
    _, page = report
    rows = page.tables["errors"][1:]
    assert [r[0] for r in rows] == ["5", "1", "6", "2", "7"]
    assert page.tables["errors"][0][0] == "row"  # the data has no id column: positions
    assert rows[0] == ["5", "最悪", "-1 (negative) / 90", "1 (positive) / 0", "0.950"]
    assert rows[2][3:] == ["-1 (negative) / 40", "-"]
    assert rows[3][3] == "malformed: no_label" and rows[4][3] == "malformed: no_eos"
    assert rows[4][1] == "長" * 200 + "…"


def test_user_html_is_escaped(report):
    run_dir, page = report
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "script" not in page.tags
    assert "&lt;script&gt;" in html
    assert page.tables["errors"][2][1] == SCRIPT  # shown as text, unchanged
    assert "<script>" not in (run_dir / "report.md").read_text(encoding="utf-8")


def test_markdown_cell_with_pipe_and_newline_stays_one_row(report):
    run_dir, _ = report
    lines = (run_dir / "report.md").read_text(encoding="utf-8").split("\n")
    row = next(line for line in lines if "前半" in line)
    assert row.startswith("| 2 | ") and row.count("|") == 6  # 5 cells
    assert "前半&#124;後半<br>次の行" in row
    assert not any(line.startswith("次の行") for line in lines)
    assert md_cell("a\r\nb\rc") == "a<br>b<br>c"


def test_score_collapse_share_is_stated(report):
    run_dir, _ = report
    for name in ("report.md", "report.html"):
        assert "Predicted scores exactly 0: 67%, exactly 100: 17% (gold: 62% and 0%)" in (
            run_dir / name
        ).read_text(encoding="utf-8")


def test_forgetting_section(report, tmp_path_factory):
    run_dir, page = report
    assert page.tables["forgetting-table"] == [
        ["model", "perplexity"],
        ["base (untuned)", "20.00"],
        ["fine-tuned", "30.00"],
    ]
    md = (run_dir / "report.md").read_text(encoding="utf-8")
    assert "1.50x the base model's, much higher" in md and "random-init" in md

    other = tmp_path_factory.mktemp("no-forgetting")
    write_report(other, _metrics(forgetting=False), EXAMPLES, {"base": BASE, "finetuned": FINETUNED})
    assert "Forgetting" not in (other / "report.md").read_text(encoding="utf-8")
    assert "forgetting" not in (other / "report.html").read_text(encoding="utf-8").lower()

    real = tmp_path_factory.mktemp("real-model")
    write_report(real, _metrics(forgetting=True, preset="llama3.1-8b"), EXAMPLES, {"finetuned": FINETUNED})
    assert "random-init" not in (real / "report.md").read_text(encoding="utf-8")


def test_plot_confusions_panels_and_non_ascii_labels(tmp_path):
    import matplotlib.image

    confusion = _metrics(forgetting=False)["finetuned"]["confusion"]
    plot_confusions({"finetuned": confusion}, tmp_path / "one.png")
    plot_confusions({"base": confusion, "finetuned": confusion}, tmp_path / "two.png", "base vs tuned")
    one, two = matplotlib.image.imread(tmp_path / "one.png"), matplotlib.image.imread(tmp_path / "two.png")
    assert two.shape[1] > 1.5 * one.shape[1]
    _assert_nontrivial_png(tmp_path / "two.png")
    posneg = {
        "labels": ["ポジティブ", "ネガティブ"],
        "columns": ["ポジティブ", "ネガティブ", "malformed"],
        "matrix": [[3, 1, 0], [0, 2, 1]],
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing CJK glyph would warn
        plot_confusions(
            {"tuned": posneg},
            tmp_path / "names.png",
            names={"ポジティブ": "positive", "ネガティブ": "negative"},
        )
        plot_confusions({"tuned": posneg}, tmp_path / "escaped.png")
    _assert_nontrivial_png(tmp_path / "names.png")


BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.skipif(BROWSER is None, reason="no chromium / chromium-browser / google-chrome on PATH")
def test_report_renders_in_headless_browser(report):
    """The HTML opens in a real browser with every image decoded (a copy of the report gets a probe
    script that counts loaded images), and the text stays escaped."""
    run_dir, _ = report
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    probe = (
        "<script>window.addEventListener('load', () => document.body.setAttribute('data-loaded', "
        "[...document.images].filter(i => i.complete && i.naturalWidth > 0).length + '/' + "
        "document.images.length));</script>"
    )
    check = run_dir / "report-check.html"
    check.write_text(html.replace("</body>", probe + "</body>"), encoding="utf-8")
    dom = subprocess.run(
        [
            BROWSER,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--allow-file-access-from-files",
            "--dump-dom",
            check.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    n_images = html.count("<img")
    assert n_images >= 3
    assert f'data-loaded="{n_images}/{n_images}"' in dom
    assert "fine-tuned" in dom and "&lt;script&gt;" in dom


def test_evaluate_fails_fast_on_missing_forgetting_text(tmp_path):
    from labeltune import evaluate
    from labeltune.config import EvalConfig, TrainConfig, resolve, save

    save(resolve(TrainConfig, None, {}), tmp_path / "config.yaml")
    (tmp_path / "model.json").write_text(
        '{"base": "base/"}', encoding="utf-8"
    )  # a run whose model is missing
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "test.jsonl").write_text(
        '{"text": "良い", "label": "1", "score": 0}\n', encoding="utf-8"
    )
    cfg = resolve(EvalConfig, None, {"run": str(tmp_path), "forgetting": str(tmp_path / "missing.txt")})
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        evaluate.main(cfg)  # before any model is loaded (this run directory has none)


def test_training_curves_show_the_kept_epoch(tmp_path):
    """A run's training log becomes a training-curves plot with the kept epoch named in the text."""
    log = [{"loss": 2.0 - 0.1 * s, "epoch": s / 4, "step": s} for s in range(1, 13)]
    log += [{"eval_loss": 1.5 - 0.2 * e, "epoch": e, "step": 4 * e} for e in (1, 2, 3)]
    log += [{"dev_macro_f1": f1, "epoch": e, "step": 4 * e} for e, f1 in ((1, 0.3), (2, 0.6), (3, 0.5))]
    best = {"epoch": 2, "why": "best dev macro_f1 0.6000 at epoch 2 (last evaluated epoch 3: 0.5000)"}
    write_report(
        tmp_path,
        _metrics(False),
        EXAMPLES,
        {"base": BASE, "finetuned": FINETUNED},
        {"log": log, "best": best},
    )
    _assert_nontrivial_png(tmp_path / "training_curves.png")
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "Training: 3 epochs; kept epoch 2: best dev macro_f1 0.6000 at epoch 2" in md
    assert "](training_curves.png)" in md and 'src="training_curves.png"' in (
        tmp_path / "report.html"
    ).read_text(encoding="utf-8")


def test_plots_are_written_apart_from_the_context(tmp_path):
    """write_plots writes every PNG and names them; report_context builds the same strings from those names
    alone, writing nothing."""
    metrics, systems = _metrics(False), {"base": BASE, "finetuned": FINETUNED}
    plots = write_plots(tmp_path, metrics, EXAMPLES, systems)
    drawn = sorted(p.name for p in tmp_path.iterdir())
    assert drawn == sorted(name for files in plots.systems.values() for name in files.values())
    assert drawn == [
        "confusion_base.png",
        "confusion_finetuned.png",
        "reliability_finetuned.png",
        "scores_finetuned.png",
    ]
    context = report_context(metrics, EXAMPLES, systems, plots)
    assert [s["confusion_png"] for s in context["systems"]] == [
        "confusion_base.png",
        "confusion_finetuned.png",
    ]
    assert context["training"] is None and sorted(p.name for p in tmp_path.iterdir()) == drawn


def test_html_asks_for_japanese_fonts(report):
    """The page's font stack names Japanese fonts of every platform before the generic family, so CJK text
    does not fall back to whatever the browser picks."""
    from labeltune.report import CSS_FONTS

    run_dir, _ = report
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    body = next(line for line in html.splitlines() if line.startswith("body {"))
    assert f"font-family: {CSS_FONTS};" in body
    for font in (
        "Noto Sans CJK JP",
        "Hiragino Sans",
        "Yu Gothic",
        "Meiryo",
        "Noto Color Emoji",
        "Segoe UI Emoji",
    ):
        assert f'"{font}"' in body
    assert body.index('"Noto Sans CJK JP"') < body.index("sans-serif")


def test_errors_are_named_by_the_data_id_and_a_second_report_points_at_the_plots(tmp_path):
    """Rows with an `id` column are shown by it (not by position); a report written `also_in` another folder
    links the first folder's plots, which exist."""
    from dataclasses import replace

    examples = [replace(ex, meta={"id": f"post-{i:02d}", "user": "u"}) for i, ex in enumerate(EXAMPLES)]
    out, top = tmp_path / "eval" / "test-score-1", tmp_path
    out.mkdir(parents=True)
    write_report(out, _metrics(False), examples, {"finetuned": FINETUNED}, also_in=top)
    for folder in (out, top):
        page = _Page()
        page.feed((folder / "report.html").read_text(encoding="utf-8"))
        assert page.tables["errors"][0][0] == "id"
        assert [r[0] for r in page.tables["errors"][1:]] == [
            "post-05",
            "post-01",
            "post-06",
            "post-02",
            "post-07",
        ]
        for src in page.images:
            _assert_nontrivial_png(folder / src)
    top_page = _Page()
    top_page.feed((top / "report.html").read_text(encoding="utf-8"))
    assert top_page.images and all(src.startswith("eval/test-score-1/") for src in top_page.images)
    assert "](eval/test-score-1/confusion_finetuned.png)" in (top / "report.md").read_text(encoding="utf-8")
    assert not list(top.glob("*.png"))  # the plots stay in their evaluation's folder


def test_confusion_ticks_show_label_names(tmp_path):
    from labeltune.report import _ticks

    names = {"1": "positive", "0": "neutral", "-1": "negative"}
    assert _ticks(["1", "-1", "malformed"], names) == ["1 (positive)", "-1 (negative)", "malformed"]
    posneg = {"ポジティブ": "positive"}
    expected = ["ポジティブ (positive)", "ネガティブ"] if cjk_font() else ["positive", "#2"]
    assert _ticks(["ポジティブ", "ネガティブ"], posneg) == expected


@pytest.mark.skipif(cjk_font() is None, reason="no CJK font installed for matplotlib")
def test_japanese_labels_are_drawn_with_a_cjk_font(tmp_path):
    """With a CJK font installed, Japanese labels are drawn as themselves: no missing-glyph warning, and
    matplotlib's own settings are left as they were."""
    import matplotlib

    before = list(matplotlib.rcParams["font.family"])
    posneg = {
        "labels": ["ポジティブ", "ネガティブ"],
        "columns": ["ポジティブ", "ネガティブ", "malformed"],
        "matrix": [[3, 1, 0], [0, 2, 1]],
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_confusions({"tuned": posneg}, tmp_path / "ja.png", names={"ポジティブ": "positive"})
    _assert_nontrivial_png(tmp_path / "ja.png")
    assert matplotlib.rcParams["font.family"] == before


def test_a_reliability_bin_with_zero_accuracy_is_drawn():
    """A confidence bin holding predictions that were all wrong shows as a point at 0 with its count (a
    bar of height 0 alone showed nothing); empty bins draw nothing."""
    from labeltune.report import _pyplot, draw_reliability

    plt = _pyplot()
    fig, ax = plt.subplots()
    bins = [
        {"lo": 0.5, "hi": 0.6, "n": 7, "acc": 0.0},
        {"lo": 0.6, "hi": 0.7, "n": 0, "acc": None},
        {"lo": 0.9, "hi": 1.0, "n": 3, "acc": 1.0},
    ]
    draw_reliability(ax, bins)
    points = ax.lines[0].get_xydata().tolist()
    assert [[round(x, 3), y] for x, y in points] == [[0.55, 0.0], [0.95, 1.0]]
    assert [t.get_text() for t in ax.texts] == ["7", "3"]
    plt.close(fig)

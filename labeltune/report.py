"""The evaluation report: report.md and report.html in an evaluation's folder, with their plots.

Pure functions over the metrics dict of ``labeltune.evaluate`` (computed by labeltune.metrics) and the
systems' predictions; no model code. Labels are shown with their task names beside them ("-1
(negative)"). The HTML asks for a Japanese-capable font stack (CSS_FONTS); plots draw Japanese labels
with the first installed font of CJK_FONTS, and where none is installed a non-ASCII label is drawn as
its task name (``names``) or its position. User texts appear only in the error sample, escaped for Markdown
and HTML; each error row is named by its ``id`` column where the data has one.
"""

from __future__ import annotations

import contextlib
import csv
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from labeltune.atomic import write_inside
from labeltune.run import REPORT_HTML, REPORT_MD, TRAINING_CURVES

# The HTML's font stack: Japanese fonts of Linux/Android, macOS/iOS and Windows, then the browser's default,
# then colour emoji fonts (SNS posts carry emoji, which no Japanese font has)
CSS_FONTS = (
    '"Noto Sans CJK JP", "Noto Sans JP", "Hiragino Sans", "Hiragino Kaku Gothic ProN", "Yu Gothic", '
    '"Meiryo", system-ui, sans-serif, "Noto Color Emoji", "Apple Color Emoji", "Segoe UI Emoji"'
)
# Fonts matplotlib may draw Japanese with (the first installed one is used, after its default for Latin text)
CJK_FONTS = (
    "Noto Sans CJK JP",
    "Noto Sans JP",
    "IPAexGothic",
    "IPAGothic",
    "Hiragino Sans",
    "Yu Gothic",
    "Meiryo",
    "TakaoGothic",
    "VL Gothic",
    "Source Han Sans JP",
)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@lru_cache(maxsize=1)
def cjk_font() -> str | None:
    """The first of CJK_FONTS installed where matplotlib finds fonts; None when there is none."""
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    return next((name for name in CJK_FONTS if name in installed), None)


def plot_style():
    """Context for drawing a figure: matplotlib's default sans-serif font first, the CJK font as its
    per-glyph fallback when one is installed (nothing changes otherwise, and nothing fails)."""
    import matplotlib

    font = cjk_font()
    if font is None:
        return contextlib.nullcontext()
    return matplotlib.rc_context({"font.family": [*matplotlib.rcParams["font.sans-serif"][:1], font]})


def with_name(value: str, names: dict[str, str] | None) -> str:
    """A label value with its task name beside it: "-1 (negative)"; the value alone when it has no other
    name."""
    name = (names or {}).get(value)
    return value if name in (None, value) else f"{value} ({name})"


def _ticks(labels: list[str], names: dict[str, str] | None) -> list[str]:
    """Tick labels: the value with its name ("-1 (negative)"). Without a CJK font, ASCII only: a
    non-ASCII value is drawn as its ASCII name in `names`, else as its position (#1, #2, ...)."""
    if cjk_font() is not None:
        return [with_name(lab, names) for lab in labels]
    candidates = [(with_name(lab, names), lab, (names or {}).get(lab, "")) for lab in labels]
    return [next((c for c in shown if c and c.isascii()), f"#{i + 1}") for i, shown in enumerate(candidates)]


def _draw_confusion(ax, confusion: dict, title: str, names: dict[str, str] | None):
    """Counts in the cells, colour = share of the gold row; returns the image for a colour bar."""
    matrix = confusion["matrix"]
    shares = [[n / sum(row) if sum(row) else 0.0 for n in row] for row in matrix]
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    for i, row in enumerate(matrix):
        for j, n in enumerate(row):
            colour = "white" if shares[i][j] > 0.5 else "black"
            ax.text(j, i, str(n), ha="center", va="center", fontsize=8, color=colour)
    columns = _ticks(confusion["columns"], names)
    ax.set_xticks(range(len(columns)), columns, rotation=45 if max(map(len, columns)) > 3 else 0, ha="right")
    ax.set_yticks(range(len(matrix)), _ticks(confusion["labels"], names))
    ax.set(xlabel="predicted", ylabel="gold", title=title)
    return image


def plot_confusions(
    confusions: dict[str, dict], path: str | Path, title: str = "", names: dict[str, str] | None = None
) -> None:
    """One confusion panel per system ({system: classification_metrics(...)["confusion"]}), side by side.

    `names` maps label values to the task's names, drawn beside them; without a CJK font a non-ASCII value
    is drawn as its name alone, or as its position (#1, #2, ...) when it has none."""
    plt = _pyplot()
    n_cols = max(len(c["columns"]) for c in confusions.values())
    n_rows = max(len(c["labels"]) for c in confusions.values())
    side = 1.2 + 0.55 * n_cols
    size = (side * len(confusions) + 1.6, 1.6 + 0.4 * n_rows)
    with plot_style():
        fig, axes = plt.subplots(
            1, len(confusions), figsize=size, dpi=110, layout="constrained", squeeze=False
        )
        for ax, (system, confusion) in zip(axes[0], confusions.items()):
            image = _draw_confusion(ax, confusion, system, names)
        fig.colorbar(image, ax=list(axes[0]), label="share of gold row", shrink=0.8)
        if title:
            fig.suptitle(title)
        fig.savefig(path)
    plt.close(fig)


def plot_scores(
    gold: list[int | None], pred: list[int | None], score_range: list[int], path: str | Path, title: str
) -> None:
    """Gold vs predicted score (rows where both exist; marker area grows with repeats) and both histograms."""
    from collections import Counter

    plt = _pyplot()
    lo, hi = score_range
    pad = (hi - lo) * 0.05
    pairs = Counter((g, p) for g, p in zip(gold, pred) if g is not None and p is not None)
    fig, (scatter, hist) = plt.subplots(1, 2, figsize=(8.8, 3.9), dpi=110, layout="constrained")
    scatter.scatter(
        [g for g, _ in pairs], [p for _, p in pairs], s=[14 * n**0.5 for n in pairs.values()], alpha=0.5
    )
    scatter.plot([lo, hi], [lo, hi], "--", color="grey", label="perfect")
    scatter.set(
        xlim=(lo - pad, hi + pad),
        ylim=(lo - pad, hi + pad),
        xlabel="gold score",
        ylabel="predicted score",
        title=f"gold vs predicted (n={sum(pairs.values())})",
    )
    scatter.legend(loc="upper left", fontsize=8)
    bins = [lo + (hi - lo) * i / 10 for i in range(11)]
    hist.hist(
        [[g for g in gold if g is not None], [p for p in pred if p is not None]],
        bins=bins,
        label=["gold", "predicted"],
        color=["#999999", "#4c72b0"],
    )
    hist.set(xlabel="score", ylabel="rows", title="score histograms")
    hist.legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(path)
    plt.close(fig)


def share_at(scores: list[int | None], value: int) -> str:
    """Share of the given scores equal to `value`, as a percentage ("-" without scores)."""
    given = [s for s in scores if s is not None]
    return f"{sum(s == value for s in given) / len(given):.0%}" if given else "-"


def _answer(label: str, score: int | None, names: dict[str, str] | None = None) -> str:
    shown = with_name(label, names)
    return shown if score is None else f"{shown} / {score}"


def row_ids(examples: list) -> tuple[str, list[str]]:
    """(column, each row's id) when every row has an `id` column (any case: id, ID, Id), else ("row",
    positions from 0)."""
    column = next((k for k in (examples[0].meta if examples else {}) if k.lower() == "id"), None)
    if column and all(str(ex.meta.get(column, "")).strip() for ex in examples):
        return column, [str(ex.meta[column]) for ex in examples]
    return "row", [str(i) for i in range(len(examples))]


def error_sample(
    examples: list, predictions: list, k: int = 20, width: int = 200, names: dict[str, str] | None = None
) -> list[dict]:
    """Up to `k` wrong or malformed rows: wrong labels by confidence (highest first, none last), then
    malformed answers; ties in input order. Texts are cut to `width` characters; `row` is the row's id
    (row_ids), labels are shown with their `names`."""
    pairs = list(zip(examples, predictions))
    wrong = [i for i, (ex, p) in enumerate(pairs) if p.label is not None and p.label != ex.label]
    wrong.sort(key=lambda i: (predictions[i].confidence is None, -(predictions[i].confidence or 0.0)))
    malformed = [i for i, p in enumerate(predictions) if p.label is None]
    ids = row_ids(examples)[1]
    rows = []
    for i in (wrong + malformed)[:k]:
        ex, p = examples[i], predictions[i]
        rows.append(
            {
                "row": ids[i],
                "text": ex.text if len(ex.text) <= width else ex.text[:width] + "…",
                "gold": _answer(ex.label, ex.score, names),
                "predicted": f"malformed: {p.reason}"
                if p.label is None
                else _answer(p.label, p.score, names),
                "confidence": "-" if p.confidence is None else f"{p.confidence:.3f}",
            }
        )
    return rows


def forgetting_sentence(forgetting: dict, preset: str | None) -> str:
    """One sentence on the tuned/base perplexity ratio (+ a caveat for the random-init tiny preset)."""
    ratio = forgetting["ratio"]
    if ratio is None:
        return "No base perplexity (the model has no adapter to switch off), so there is nothing to compare."
    if ratio < 0.95:
        verdict = "lower: tuning also fitted general Japanese text better"
    elif ratio <= 1.05:
        verdict = "within 5%: no sign that tuning hurt general ability"
    elif ratio <= 1.25:
        verdict = "mildly higher: some loss of general ability"
    else:
        verdict = (
            "much higher: tuning has hurt general ability "
            "(try a lower learning rate, fewer epochs or a smaller LoRA rank)"
        )
    sentence = f"Tuned perplexity is {ratio:.2f}x the base model's, {verdict}."
    if preset == "tiny":
        sentence += " The tiny preset's base model is random-init, so only the mechanism is meaningful here."
    return sentence


TITLES = {"base": "base (untuned)", "finetuned": "fine-tuned"}


@dataclass
class Plots:
    """What write_plots drew, for report_context. `systems`: each system's PNG file names by kind
    ({"finetuned": {"confusion": "confusion_finetuned.png", "scores": ..., "reliability": ...}}; a kind
    not drawn is absent); `training`: the training curves' PNG and plot_training's one-line text
    ({"png": ..., "text": ...}), None when there was no training log to draw."""

    systems: dict[str, dict[str, str]]
    training: dict | None = None


def write_plots(
    out_dir: str | Path, metrics: dict, examples: list, systems: dict[str, list], training: dict | None = None
) -> Plots:
    """Every PNG of a report in `out_dir`: per system its confusion matrix, its scores (when the task
    scores and the system gave any) and its reliability diagram (when its metrics have one); the
    training curves when `training` (the run's training log and kept epoch: {"log": [...], "best": {...}
    or None}) has a log. Returns their names for report_context."""
    out_dir = Path(out_dir)
    names, drawn = metrics.get("label_names"), {}
    for key in (key for key in TITLES if key in systems):
        m, files = metrics[key], {"confusion": f"confusion_{key}.png"}
        plot_confusions({TITLES[key]: m["confusion"]}, out_dir / files["confusion"], names=names)
        if "score_range" in metrics and m["score_n"]:
            files["scores"] = f"scores_{key}.png"
            gold, pred = [ex.score for ex in examples], [p.score for p in systems[key]]
            title = f"{TITLES[key]} ({metrics['mode']})"
            plot_scores(gold, pred, metrics["score_range"], out_dir / files["scores"], title)
        if "reliability" in m:
            files["reliability"] = f"reliability_{key}.png"
            title = f"{TITLES[key]} ({metrics['mode']}), ECE {m['ece']:.3f}"
            plot_reliability(m["reliability"], out_dir / files["reliability"], title)
        drawn[key] = files
    curves = None
    if training and training["log"]:
        curves = {
            "png": TRAINING_CURVES,
            "text": plot_training(training["log"], training["best"], out_dir / TRAINING_CURVES),
        }
    return Plots(systems=drawn, training=curves)


def _system_section(
    metrics: dict, key: str, examples: list, predictions: list, files: dict[str, str]
) -> dict:
    """What both report formats show for one system (strings only); `files`: its PNGs (Plots.systems)."""

    m, names = metrics[key], metrics.get("label_names")
    section = {
        "key": key,
        "title": TITLES[key],
        "per_class": [
            [
                with_name(lab, names),
                f"{c['precision']:.3f}",
                f"{c['recall']:.3f}",
                f"{c['f1']:.3f}",
                str(c["support"]),
            ]
            for lab, c in m["per_class"].items()
        ],
        "reasons": [
            [reason, str(n)]
            for reason, n in sorted(m["malformed_reasons"].items(), key=lambda r: (-r[1], r[0]))
        ],
        "confusion": m["confusion"],
        "confusion_png": files["confusion"],
    }
    if "scores" in files:
        gold, pred = [ex.score for ex in examples], [p.score for p in predictions]
        lo, hi = metrics["score_range"]
        section["scores_png"] = files["scores"]
        section["scores_text"] = (
            f"Predicted scores exactly {lo}: {share_at(pred, lo)}, exactly {hi}: {share_at(pred, hi)} "
            f"(gold: {share_at(gold, lo)} and {share_at(gold, hi)}); a collapse to the ends of the range "
            "shows as predicted shares well above the gold ones."
        )
    if "reliability" in files:
        section["reliability_png"] = files["reliability"]
        section["reliability_text"] = (
            f"Expected calibration error {m['ece']:.3f} (temperature {m['temperature']:.3f})."
        )
    return section


def report_context(metrics: dict, examples: list, systems: dict[str, list], plots: Plots) -> dict:
    """Everything report.md and report.html show, as strings, from the metrics, the gold rows, each
    system's answers and the names of the plots write_plots drew (it writes nothing)."""

    n = metrics["majority_baseline"]["n"]
    context = {
        "title": f"Evaluation of {metrics['run']} on {metrics['split']} (n={n}, mode {metrics['mode']})",
        "summary_header": summary_header(metrics),
        "summary": summary_rows(metrics),
        "warnings": metrics.get("warnings") or [],
        "systems": [
            _system_section(metrics, key, examples, systems[key], plots.systems[key])
            for key in TITLES
            if key in systems
        ],
        "errors": (
            error_sample(examples, systems["finetuned"], names=metrics.get("label_names"))
            if "finetuned" in systems
            else []
        ),
        "errors_header": [row_ids(examples)[0], "text", "gold", "predicted", "confidence"],
        "label_names": metrics.get("label_names") or {},
        "forgetting": None,
        "training": plots.training,
        "estimate_header": ESTIMATE_HEADER,
        "estimates": estimate_rows(metrics),
        "bias_header": BIAS_HEADER,
        "biases": bias_rows(metrics),
    }
    if "forgetting" in metrics:
        f = metrics["forgetting"]
        context["forgetting"] = {
            "rows": [
                ["base (untuned)", "-" if f["base_ppl"] is None else f"{f['base_ppl']:.2f}"],
                ["fine-tuned", f"{f['tuned_ppl']:.2f}"],
            ],
            "source": f"{f['source']}: {f['n_texts']} texts, {f['n_tokens']} tokens",
            "sentence": forgetting_sentence(f, metrics.get("preset")),
        }
    return context


def md_cell(text: str) -> str:
    """A Markdown table cell that stays one cell of one row: HTML-escaped, `|` as &#124;, line breaks as
    <br>."""
    import html

    return "<br>".join(html.escape(text, quote=False).replace("|", "&#124;").splitlines())


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(map(md_cell, header)) + " |", "|---" * len(header) + "|"]
    return lines + ["| " + " | ".join(map(md_cell, row)) + " |" for row in rows]


def render_markdown(context: dict, assets: str = "") -> str:
    """report.md; `assets` is prefixed to every image (the folder of the plots, relative to the report)."""
    lines = [f"# {context['title']}", "", *md_table(context["summary_header"], context["summary"]), ""]
    if context["warnings"]:
        lines += ["## Warnings", "", *(f"- {md_cell(w)}" for w in context["warnings"]), ""]
    if context["estimates"]:
        lines += [
            "## Score estimates",
            "",
            "The score written (from the model's distribution over every allowed score) "
            "beside the greedy score, on the rows where gold and prediction both carry a score; then both "
            "with the gold label given, on every row whose gold label carries a score.",
            "",
            *md_table(context["estimate_header"], context["estimates"]),
            "",
        ]
    if context["biases"]:
        lines += [
            "## Label biases fitted on dev",
            "",
            "The same decode with and without the per-label biases "
            "`labeltune calibrate` fitted on the dev split (never on this one).",
            "",
            *md_table(context["bias_header"], context["biases"]),
            "",
        ]
    if context["training"]:
        lines += [
            "## Training",
            "",
            context["training"]["text"],
            "",
            f"![training curves]({assets}{context['training']['png']})",
            "",
        ]
    if context["forgetting"]:
        f = context["forgetting"]
        lines += [
            "## Forgetting check: perplexity on general Japanese text",
            "",
            *md_table(["model", "perplexity"], f["rows"]),
            "",
            f"{f['source']}. {f['sentence']}",
            "",
        ]
    for s in context["systems"]:
        conf = s["confusion"]
        lines += [
            f"## {s['title']}",
            "",
            *md_table(["class", "precision", "recall", "F1", "support"], s["per_class"]),
            "",
        ]
        lines += ["Malformed answers: " + (", ".join(f"{r} {n}" for r, n in s["reasons"]) or "none"), ""]
        lines += [
            "Confusion (rows gold, columns predicted):",
            "",
            *md_table(
                ["gold \\ pred", *(with_name(c, context["label_names"]) for c in conf["columns"])],
                [
                    [with_name(g, context["label_names"]), *map(str, row)]
                    for g, row in zip(conf["labels"], conf["matrix"])
                ],
            ),
            "",
            f"![confusion]({assets}{s['confusion_png']})",
            "",
        ]
        if "scores_png" in s:
            lines += [s["scores_text"], "", f"![scores]({assets}{s['scores_png']})", ""]
        if "reliability_png" in s:
            lines += [s["reliability_text"], "", f"![reliability]({assets}{s['reliability_png']})", ""]
    if context["errors"]:
        lines += [
            f"## Errors of the fine-tuned model ({len(context['errors'])} shown)",
            "",
            "Wrong labels by confidence (highest first), then malformed answers.",
            "",
            *md_table(
                context["errors_header"],
                [
                    [e["row"], e["text"], e["gold"], e["predicted"], e["confidence"]]
                    for e in context["errors"]
                ],
            ),
            "",
        ]
    return "\n".join(lines)


def format_cell(column: str, value) -> str:
    """A results-table cell (compare, sweep): None as "-", malformed rates as %, score MAE to 1 place,
    seconds whole, learning rates short, other floats to 3 places."""
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)) and len(value) == 2:  # an interval: macro_f1_ci
        return f"[{value[0]:.3f}, {value[1]:.3f}]"
    if column.endswith("malformed") or column == "malformed_rate":
        return f"{value:.1%}"
    if column == "score_mae":
        return f"{value:.1f}"
    if column == "train_seconds":
        return f"{value:.0f}"
    if column == "posts_per_s":
        return f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:.4g}" if column == "lr" else f"{value:.3f}"
    return str(value)


def render_html(template: str, context: dict) -> str:
    """An HTML page from labeltune/html/<template>; autoescaped, since texts, labels and paths are data.
    Every page gets `css_fonts` (CSS_FONTS) and `assets` (prefix of its images; "" unless given)."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(
        loader=FileSystemLoader(Path(__file__).parent / "html"), autoescape=True, undefined=StrictUndefined
    )
    return env.get_template(template).render(**{"assets": "", **context, "css_fonts": CSS_FONTS})


def write_report(
    out_dir: str | Path,
    metrics: dict,
    examples: list,
    systems: dict[str, list],
    training: dict | None = None,
    also_in: str | Path | None = None,
) -> None:
    """report.md, report.html and their PNGs (confusion_, scores_, reliability_<system>.png,
    training_curves.png) in `out_dir`; with `also_in`, a second report.md/.html there whose images are
    the ones in `out_dir` (the run directory's copy of its latest evaluation).

    `examples` are the gold rows (data.Example), `systems` each system's answers.Answer list, and
    `training` the run's training log and kept epoch (see write_plots)."""
    out_dir = Path(out_dir)
    plots = write_plots(out_dir, metrics, examples, systems, training)
    context = report_context(metrics, examples, systems, plots)
    targets = [(out_dir, "")]
    if also_in is not None:
        targets.append((Path(also_in), Path(os.path.relpath(out_dir, also_in)).as_posix() + "/"))
    for folder, assets in targets:
        write_inside(folder, folder / REPORT_MD, render_markdown(context, assets))  # never through a link
        write_inside(
            folder, folder / REPORT_HTML, render_html("report.html.jinja", {**context, "assets": assets})
        )


def draw_reliability(ax, bins: list[dict]) -> None:
    """Accuracy per confidence bin: a bar and a point for every bin that holds predictions (a bin whose
    accuracy is 0 shows as a point on the axis, not as nothing), its count above it."""
    used = [b for b in bins if b["n"]]
    centers = [(b["lo"] + b["hi"]) / 2 for b in used]
    accuracy = [b["acc"] for b in used]
    ax.bar(centers, accuracy, width=0.09, color="#4c72b0", label="accuracy")
    ax.plot(centers, accuracy, "o", color="#1f3a66", markersize=4, clip_on=False)
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    for x, b in zip(centers, used):
        ax.text(x, min(b["acc"], 0.93) + 0.03, str(b["n"]), ha="center", fontsize=7, color="#333333")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")


def plot_reliability(bins: list[dict], path: str | Path, title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=110)
    draw_reliability(ax, bins)
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_training(log: list[dict], best: dict | None, path: str | Path) -> str:
    """Training curves of a run's train_log.jsonl: train and dev loss (left), dev macro-F1 per epoch
    (right), the kept epoch marked on both; returns a one-line description for the report."""
    plt = _pyplot()
    train = [(r["epoch"], r["loss"]) for r in log if "loss" in r and "epoch" in r]
    dev_loss = [(r["epoch"], r["eval_loss"]) for r in log if "eval_loss" in r]
    dev_f1 = [(r["epoch"], r["dev_macro_f1"]) for r in log if "dev_macro_f1" in r]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.4, 3.4), dpi=110)
    for points, label, style in ((train, "train loss", "-"), (dev_loss, "dev loss", "o-")):
        if points:
            left.plot(*zip(*points), style, label=label, markersize=3)
    left.set(xlabel="epoch", ylabel="loss", title="loss")
    if dev_f1:
        right.plot(*zip(*dev_f1), "o-", color="#55a868", markersize=3, label="dev macro-F1")
    right.set(xlabel="epoch", ylabel="macro-F1", ylim=(0, 1), title="dev macro-F1 (score mode)")
    if best:
        for ax in (left, right):
            ax.axvline(best["epoch"], color="grey", linestyle="--", label=f"kept: epoch {best['epoch']:g}")
    for ax in (left, right):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    epochs = max((e for e, _ in train + dev_loss + dev_f1), default=0)
    return f"Training: {epochs:g} epochs; " + (
        f"kept epoch {best['epoch']:g}: {best['why']}."
        if best
        else "the last weights were kept (no dev evaluation)."
    )


SUMMARY_HEADER = ["system", "n", "accuracy", "macro-F1", "malformed", "score MAE", "score Spearman", "ECE"]
INTERVAL_HEADER = "macro-F1 [95% CI]"  # the macro-F1 column where the metrics carry its bootstrap interval


def _systems(metrics: dict) -> list[tuple[str, dict]]:
    systems = [("majority class", metrics["majority_baseline"])]
    return systems + [
        (name, metrics[key])
        for name, key in (("base (untuned)", "base"), ("fine-tuned", "finetuned"))
        if key in metrics
    ]


def summary_header(metrics: dict) -> list[str]:
    """SUMMARY_HEADER, its macro-F1 column named INTERVAL_HEADER when a system carries macro_f1_interval."""
    if not any(m.get("macro_f1_interval") for _, m in _systems(metrics)):
        return SUMMARY_HEADER
    return [INTERVAL_HEADER if h == "macro-F1" else h for h in SUMMARY_HEADER]


def macro_f1_cell(m: dict) -> str:
    """Macro-F1 to 3 places, with its 95% bootstrap interval (labeltune.metrics.macro_f1_interval) when
    known."""
    interval = m.get("macro_f1_interval")
    return f"{m['macro_f1']:.3f}" + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "")


def summary_rows(metrics: dict) -> list[list[str]]:
    """The before/after table's rows (majority class, base, fine-tuned), formatted, under summary_header."""
    rows = []
    for name, m in _systems(metrics):
        mae, rho, ece = m.get("score_mae"), m.get("score_spearman"), m.get("ece")
        rows.append(
            [
                name,
                str(m["n"]),
                f"{m['accuracy']:.3f}",
                macro_f1_cell(m),
                f"{m['malformed_rate']:.1%}",
                "-" if mae is None else f"{mae:.1f}",
                "-" if rho is None else f"{rho:.3f}",
                "-" if ece is None else f"{ece:.3f}",
            ]
        )
    return rows


ESTIMATE_HEADER = [
    "fine-tuned score",
    "n (gold and predicted score)",
    "score MAE",
    "score Spearman",
    "at 0 or 100",
]


def estimate_rows(metrics: dict) -> list[list[str]]:
    """The fine-tuned model's scores: in score mode the written estimate beside the greedy score; in any
    mode, the scores with each gold-scored row's gold label given (the score apart from the label)."""
    m = metrics.get("finetuned", {})

    def row(name: str, d: dict, prefix: str = "") -> list[str]:
        mae, rho, ends = (
            d.get(prefix + "score_mae"),
            d.get(prefix + "score_spearman"),
            d.get(prefix + "score_at_ends"),
        )
        return [
            name,
            str(d[prefix + "score_n"]),
            "-" if mae is None else f"{mae:.1f}",
            "-" if rho is None else f"{rho:.3f}",
            "-" if ends is None else f"{ends:.1%}",
        ]

    estimate = metrics.get("score_estimate", "expected")
    rows = [row(f"{estimate} (written)", m), row("greedy", m, "greedy_")] if "greedy_score_n" in m else []
    if given := m.get("given_gold_label"):
        rows += [
            row(f"{estimate}, gold label given", given["estimate"]),
            row("greedy, gold label given", given["greedy"]),
        ]
    return rows


BIAS_HEADER = ["fine-tuned", "macro-F1", "accuracy", "recall per class"]


def bias_rows(metrics: dict) -> list[list[str]]:
    """Score mode with dev-fitted label biases: the same decode with and without them (empty otherwise)."""
    m = metrics.get("finetuned", {})
    if "without_biases" not in m:
        return []
    names = metrics.get("label_names", {})
    plain = m["without_biases"]

    def recall(values: dict) -> str:
        return ", ".join(f"{names.get(lab, lab)} {r:.2f}" for lab, r in values.items())

    shifts = ", ".join(f"{names.get(k, k)} {v:+.1f}" for k, v in m["biases"].items())
    return [
        ["without biases", f"{plain['macro_f1']:.3f}", f"{plain['accuracy']:.3f}", recall(plain["recall"])],
        [
            f"with biases ({shifts})",
            f"{m['macro_f1']:.3f}",
            f"{m['accuracy']:.3f}",
            recall({lab: c["recall"] for lab, c in m["per_class"].items()}),
        ],
    ]


def format_table(metrics: dict) -> str:
    """Markdown before/after table (and, in score mode, the score estimates side by side)."""
    lines = ["| " + " | ".join(summary_header(metrics)) + " |", "|---" * len(SUMMARY_HEADER) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in summary_rows(metrics)]
    for header, rows in ((ESTIMATE_HEADER, estimate_rows(metrics)), (BIAS_HEADER, bias_rows(metrics))):
        if rows:
            lines += ["", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
            lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_predictions(path: Path, examples, predictions) -> None:
    """One row per example: its id (the data's `id` column, else its position), text, gold and predicted
    answer."""
    header, ids = row_ids(examples)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                header,
                "text",
                "gold_label",
                "gold_score",
                "label",
                "score",
                "ok",
                "reason",
                "truncated",
                "confidence",
                "raw",
            ]
        )
        for i, ex, p in zip(ids, examples, predictions):
            writer.writerow(
                [
                    i,
                    ex.text,
                    ex.label,
                    ex.score,
                    p.label,
                    p.score,
                    p.ok,
                    p.reason,
                    p.truncated,
                    p.confidence,
                    p.raw,
                ]
            )

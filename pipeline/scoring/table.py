"""The plain-text score table of a `pipeline.scoring.measures.score` report (terminal and report.md).

Languages are rows and measures columns, in three blocks (F1, precision, recall), so the
table grows longer, never wider, with more languages: under 100 characters for any
number of them (neleval's own layout, one column group per language, was ~230 wide for
seven).
"""

from __future__ import annotations

from pipeline.scoring.measures import MEASURES, MICRO_AVERAGE, OVERALL

# Short column heads of `format_table`, in MEASURES order, and the legend that names them.
TABLE_HEADS = ("link", "nil", "all", "t-link", "t-nil", "t-all", "B³", "B³+")
TABLE_LEGEND = """\
micro: kbp2010_micro_average (accuracy, every NIL equal); gold, system: mention counts
link, nil, all: strong_link_match, strong_nil_match, strong_all_match; t-: strong_typed_*
B³: b_cubed; B³+: b_cubed_plus"""


def format_table(report: dict) -> str:
    """Plain-text tables of a `score` report, one row per group, under 100 characters wide.

    Three blocks with the same columns (one per measure, `TABLE_HEADS`): F1 (with the
    KBP2010 micro-average and the gold and system mention counts), precision and recall.
    Rows are "overall" then each language, so more languages make the table longer,
    never wider. A legend under the blocks maps the short heads to neleval's names.
    """
    groups = {OVERALL: report[OVERALL], **report["by_language"]}
    counts = {OVERALL: report["counts"][OVERALL], **report["counts"]["by_language"]}
    label_width = max(len(name) for name in (*groups, "precision"))
    cell = 6  # "0.7424"

    def row(label: str, cells: list[str]) -> str:
        return (label.ljust(label_width) + " " + " ".join(text.rjust(cell) for text in cells)).rstrip()

    lines = [row("F1", ["micro", *TABLE_HEADS, "gold", "system"])]
    for name, measures in groups.items():
        f1 = [f"{measures[measure]['f1']:.4f}" for measure in MEASURES]
        lines.append(row(name, [f"{measures[MICRO_AVERAGE]['micro_average']:.4f}", *f1,
                                str(counts[name]["gold_mentions"]), str(counts[name]["system_mentions"])]))  # fmt: skip
    for key in ("precision", "recall"):
        lines += ["", row(key, ["", *TABLE_HEADS])]
        for name, measures in groups.items():
            lines.append(row(name, ["", *(f"{measures[measure][key]:.4f}" for measure in MEASURES)]))
    return "\n".join([*lines, "", TABLE_LEGEND])


def format_frame(frame) -> str:
    """A small polars frame (triage recall per language and split, link's NIL share) as aligned text:
    right-aligned columns at least 6 wide, floats to 3 decimals."""
    widths = [max(len(column), 6) for column in frame.columns]
    lines = ["  ".join(f"{c:>{w}}" for c, w in zip(frame.columns, widths))]
    for row in frame.iter_rows():
        lines.append("  ".join(f"{v:>{w}.3f}" if isinstance(v, float) else f"{v!s:>{w}}" for v, w in zip(row, widths)))
    return "\n".join(lines)

"""Check a finished run: `xel-cli link` on its evaluation split (gold and split removed) vs evaluate's system.tab.

    python scripts/link_consistency.py RUN_DIR [--out DIR]

Writes the evaluation split's mentions (from `<run>/triage/mentions.parquet`, the ids
triage gave them) as JSONL without gold_kb_id and split, links them with `<run>/model/`
and the run's KB, and prints how many mentions got the same KB id, the same NIL
decision and the same NIL cluster as in `<run>/evaluate/system.tab` and
`predictions.parquet`, and the largest ranker-score difference. Exit 1 on any
difference in links or NIL decisions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.formats.tac import read_tab  # noqa: E402
from pipeline.link.run import LinkOptions, run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="link output folder (default: RUN_DIR/link-consistency)")
    args = parser.parse_args()
    run_dir = args.run_dir.resolve()
    out = args.out or run_dir / "link-consistency"
    split = json.loads((run_dir / "evaluate" / "metrics.json").read_text(encoding="utf-8"))["split"]
    mentions = pl.read_parquet(run_dir / "triage" / "mentions.parquet").filter(pl.col("split") == split)
    evaluated = read_tab(run_dir / "evaluate" / "system.tab")
    mentions = mentions.filter(pl.col("mention_id").is_in(evaluated["mention_id"].implode()))
    corpus = out.parent / f"{out.name}-mentions.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    # doc_start/doc_end keep each mention's place in its document (TAC spans); start/end are into `text`.
    mentions.select(
        pl.col("mention_id").alias("id"),
        "doc_id",
        "lang",
        "mention",
        pl.col("context").alias("text"),
        "start",
        "end",
        "doc_start",
        "doc_end",
        "entity_type",
        "mention_type",
    ).write_ndjson(corpus)
    result = run(LinkOptions(model=run_dir / "model", mentions=corpus, out_dir=out, force=True))
    linked = read_tab(out / "system.tab")
    both = evaluated.join(linked, on="mention_id", suffix="_link")
    nil, nil_link = both["kb_id"].str.starts_with("NIL"), both["kb_id_link"].str.starts_with("NIL")
    same_decision = int((nil == nil_link).sum())
    same_kb = int((~nil & ~nil_link & (both["kb_id"] == both["kb_id_link"])).sum())

    def partition(frame: pl.DataFrame, column: str) -> set[frozenset[str]]:
        nils = frame.filter(pl.col(column).str.starts_with("NIL"))
        return {frozenset(group["mention_id"].to_list()) for _, group in nils.group_by(column)}

    same_clusters = partition(both, "kb_id") == partition(both.select("mention_id", pl.col("kb_id_link")), "kb_id_link")
    scores = pl.read_parquet(run_dir / "evaluate" / "predictions.parquet").join(
        pl.read_parquet(out / "links.parquet"), on="mention_id"
    )
    print(
        f"{run_dir}: {split} split, {evaluated.height} mentions in system.tab, {linked.height} linked "
        f"({result.counts['entities_encoded']} entities encoded)"
    )
    print(
        f"same NIL decision: {same_decision}/{both.height}; same KB id where both link: {same_kb}/{int((~nil).sum())}; "
        f"same NIL clusters: {same_clusters}; largest ranker-score difference: "
        f"{(scores['best_score'] - scores['score']).abs().max():.2e}"
    )
    if (
        same_decision != both.height
        or same_kb != int((~nil).sum())
        or not same_clusters
        or linked.height != evaluated.height
    ):
        sys.exit(1)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Write a small demonstration name-pairs file (paper §7.1) from MEANTIME's training split.

The paper's pairs are Wikidata labels of one entity in two languages; without internet
this stands in: each named Spanish, Italian or Dutch *training* mention's string is
paired with the English KB name of its gold entity (NIL and unknown golds skipped),
de-duplicated. Only the training split is read, so no dev or test label reaches the
ranker. The file is made at run time, never committed:

    python scripts/meantime_name_pairs.py --out artifacts/meantime-pairs.tsv
    xel-cli run --config configs/meantime.toml --set train.name_pairs=artifacts/meantime-pairs.tsv
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import polars as pl

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "meantime"
logger = logging.getLogger("meantime_name_pairs")


def name_pairs(mentions_path: Path, kb_path: Path) -> pl.DataFrame:
    """(foreign, english, lang) of every distinct named non-English training mention with a KB gold."""
    mentions = pl.scan_ndjson(mentions_path, infer_schema_length=None).select(
        "mention", "lang", "split", "gold_kb_id", pl.col("named").fill_null(True)
    )
    kb = pl.scan_ndjson(kb_path, infer_schema_length=None).select(pl.col("kb_id").alias("gold_kb_id"), "name")
    return (
        mentions.filter((pl.col("split") == "train") & (pl.col("lang") != "en") & pl.col("named"))
        .join(kb, on="gold_kb_id")  # drops NIL and golds outside the KB
        .select(
            pl.col("mention").str.replace_all(r"\s+", " ").str.strip_chars().alias("foreign"),
            pl.col("name").alias("english"),
            "lang",
        )
        .filter(pl.col("foreign") != "")
        .unique()
        .sort("lang", "english", "foreign")
        .collect()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mentions", type=Path, default=DATA / "mentions.jsonl")
    parser.add_argument("--kb", type=Path, default=DATA / "kb.jsonl")
    parser.add_argument("--out", type=Path, required=True, help="The .tsv file to write (foreign, english, lang).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    pairs = name_pairs(args.mentions, args.kb)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pairs.write_csv(args.out, separator="\t", quote_style="never")
    logger.info(
        "wrote %d pairs (%s) to %s",
        pairs.height,
        ", ".join(f"{lang} {count}" for lang, count in pairs.group_by("lang").len().sort("lang").iter_rows()),
        args.out,
    )


if __name__ == "__main__":
    main()

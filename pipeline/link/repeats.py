"""Repeated mention ids and spans in a corpus to link: refused, or amended when the user asks.

Real annotated data often gives one id twice or marks one span twice (NEREL's training part has
15 spans with two gold ids; MEANTIME's gold `.tab` repeats ids). A run's config has
`inputs.rename_duplicate_ids` and `inputs.drop_duplicate_spans` for them; `xel-cli link` has
`--rename-duplicate-ids` and `--drop-duplicate-spans`, which do the same over the whole corpus:
the corpus check (`sources.check_corpus`) reads every chunk's ids and spans, decides once what to
rename and drop (`Repeats.amend`, with the run's own W101/W108), and each chunk applies that
decision to its own rows (`Amendments.apply`), so what is linked never depends on the chunk size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl


@dataclass(frozen=True)
class Repeats:
    """What to do with a repeated mention id (`rename_ids`: the repeat gets `id#start-end`) and a
    repeated span (`drop_spans`: the first mention of the span is kept); both off: refused (E104, E115)."""

    rename_ids: bool = False
    drop_spans: bool = False

    def amend(self, table: pl.DataFrame, path: Path, end_inclusive: bool = False) -> tuple[pl.DataFrame, Amendments]:
        """The corpus's key table (columns line, id, doc_id, start, end, doc_start, doc_end, gold_kb_id; one row
        a mention) with the repeats renamed or dropped, warning once each (W101, W108 naming the option), and
        the amendments each chunk applies. A repeated id over the same span is a copy, not a second mention:
        with `rename_ids` alone it is still E115 (as a run's `inputs.rename_duplicate_ids`)."""
        from pipeline.formats.input_checks import check_documents
        from pipeline.formats.inputs import drop_repeated_spans, rename_repeated_ids

        kept = table
        if self.drop_spans:
            kept = drop_repeated_spans(kept, path, setting="--drop-duplicate-spans")
        if self.rename_ids:
            check_documents(kept, path, end_inclusive=end_inclusive)
            kept = rename_repeated_ids(kept, path, setting="--rename-duplicate-ids")
        dropped = table.join(kept.select("line"), on="line", how="anti")["line"]
        renamed = (
            kept.join(table.select("line", pl.col("id").alias("given_id")), on="line")
            .filter(pl.col("id") != pl.col("given_id"))
            .select("line", pl.col("id").alias("renamed_id"))
        )
        return kept, Amendments(dropped, renamed)


@dataclass(frozen=True)
class Amendments:
    """The corpus-wide decision of `Repeats.amend`: the input lines of the mentions dropped, and the new id of
    each renamed mention (columns line, renamed_id)."""

    dropped_lines: pl.Series
    renamed: pl.DataFrame

    def apply(self, chunk: pl.DataFrame) -> pl.DataFrame:
        """A chunk's mentions (with `line` and `mention_id`) without the dropped ones and with the new ids,
        in their order."""
        if self.dropped_lines.len():
            chunk = chunk.filter(~pl.col("line").is_in(self.dropped_lines.implode()))
        if self.renamed.height:
            chunk = (
                chunk.join(self.renamed, on="line", how="left", maintain_order="left")
                .with_columns(pl.coalesce("renamed_id", "mention_id").alias("mention_id"))
                .drop("renamed_id")
            )
        return chunk


NO_AMENDMENTS = Amendments(
    pl.Series("line", [], pl.Int64), pl.DataFrame(schema={"line": pl.Int64, "renamed_id": pl.String})
)

"""The three tables triage hands to every later stage, and their one reader and writer.

`<run>/triage/` holds `mentions.parquet` (`schema.MENTIONS` + `named`), `entities.parquet`
(`schema.ENTITIES`) and `candidates.parquet` (`schema.CANDIDATES`). Every stage, study and
the model folder reads them through `scan`, which checks the columns against the schema
before any data is read (E301/E302 naming the file and the stage that wrote it), so no
other module spells these names.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pipeline.core import schema
from pipeline.core.io import collect_checked, scan_parquet_checked, write_parquet_atomic

MENTIONS = "mentions.parquet"
ENTITIES = "entities.parquet"
CANDIDATES = "candidates.parquet"
FILES = (MENTIONS, ENTITIES, CANDIDATES)
_SCHEMAS = {MENTIONS: schema.MENTIONS, ENTITIES: schema.ENTITIES, CANDIDATES: schema.CANDIDATES}


def path(triage_dir: Path, name: str) -> Path:
    """Where table `name` (one of `FILES`) of a triage folder lives."""
    return triage_dir / name


def scan(triage_dir: Path, name: str) -> pl.LazyFrame:
    """Table `name` (one of `FILES`) of a triage folder, its columns checked (SchemaError otherwise)."""
    return scan_parquet_checked(triage_dir / name, _SCHEMAS[name], "triage")


def read(triage_dir: Path, name: str, *columns: str) -> pl.DataFrame:
    """`scan` collected, with only `columns` when given (a damaged file is a coded error naming it)."""
    frame = scan(triage_dir, name)
    return collect_checked(frame.select(*columns) if columns else frame, triage_dir / name)


def write(out_dir: Path, mentions: pl.DataFrame, candidates: pl.DataFrame) -> None:
    """Write the mentions (the `schema.MENTIONS` columns and `named`) and candidates tables atomically
    (entities.parquet is the KB index's copy, which triage puts in place itself)."""
    write_parquet_atomic(mentions.select(list(schema.MENTIONS) + ["named"]), out_dir / MENTIONS)
    write_parquet_atomic(candidates, out_dir / CANDIDATES)

"""Name normalisation that lets names in different scripts meet.

`fold` keeps the script (NFKC, case folding, accents stripped); `romanise` then writes
it in Latin letters (unidecode), so `Барак Обама`, `باراك أوباما` and `Barack Obama`
share keys or at least come close enough for a fuzzy match.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

import polars as pl
from unidecode import unidecode

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


@lru_cache(maxsize=1 << 16)
def fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text).casefold())
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _NON_WORD.sub(" ", stripped).strip()


@lru_cache(maxsize=1 << 16)
def romanise(text: str) -> str:
    return _NON_WORD.sub(" ", unidecode(fold(text)).lower()).strip()


def add_keys(frame: pl.DataFrame, column: str) -> pl.DataFrame:
    """Add `<column>_fold` and `<column>_roman` keys.

    Runs Python once per *distinct* string (names repeat a lot), then joins back.
    """
    distinct = frame.select(pl.col(column).unique().drop_nulls()).to_series().to_list()
    keys = pl.DataFrame(
        {column: distinct, f"{column}_fold": [fold(s) for s in distinct], f"{column}_roman": [romanise(s) for s in distinct]},
        schema={column: pl.String, f"{column}_fold": pl.String, f"{column}_roman": pl.String},
    )
    return frame.join(keys, on=column, how="left")

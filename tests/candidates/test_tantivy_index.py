"""The tantivy name index: shortlists of names by BM25 over a query's rare four-grams, built on
disk or in memory, the same on every build."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from pipeline.candidates.tantivy_index import TantivyNameIndex, padded_ngrams
from pipeline.core.errors import CacheError

NAMES = pl.Series(
    [
        "barack obama",
        "michelle obama",
        "airbus",
        "airbus group",
        "boeing",
        "",
        None,
        "new york city",
        "new york",
        "york",
    ]
)


def shortlisted(index: TantivyNameIndex, queries: list[str], top_n: int = 3) -> dict[str, list[str]]:
    found = index.shortlist(pl.Series(queries), top_n=top_n).sort("query", "rank")
    out: dict[str, list[str]] = {}
    for query, name in found.select("query", "name").iter_rows():
        out.setdefault(queries[query], []).append(NAMES[name])
    return out


def test_four_grams_are_cut_from_space_padded_text() -> None:
    assert padded_ngrams("abc") == {" abc", "abc "}
    assert padded_ngrams("xy") == {" xy "}
    assert padded_ngrams("z") == set()  # " z " is three characters: no four-gram


def test_a_typo_or_a_missing_word_still_reaches_the_name(tmp_path: Path) -> None:
    index = TantivyNameIndex.build(NAMES, tmp_path)
    found = shortlisted(index, ["barak obama", "airbuss", "new york", "zzzz"])
    assert found["barak obama"][0] == "barack obama"
    assert found["airbuss"][0] in ("airbus", "airbus group")
    assert set(found["new york"][:2]) == {"new york", "new york city"}
    assert "zzzz" not in found  # no four-gram in common: no candidates


def test_rows_are_names_rows_and_rank_counts_from_the_best(tmp_path: Path) -> None:
    index = TantivyNameIndex.build(NAMES, tmp_path)
    found = index.shortlist(pl.Series(["zzzz", "boeing"]), top_n=5)
    assert found.rows() == [(1, 4, 0)]  # query 1, NAMES[4] = "boeing", the best


def test_saved_index_loads_and_shortlists_the_same(tmp_path: Path) -> None:
    queries = pl.Series(["barak obama", "airbuss", "new york", "obama", "york"])
    built = TantivyNameIndex.build(NAMES, tmp_path / "index")
    loaded = TantivyNameIndex.load(tmp_path / "index")
    in_memory = TantivyNameIndex.build(NAMES)
    assert loaded.n_names == built.n_names == in_memory.n_names == len(NAMES)
    expected = built.shortlist(queries, top_n=4)
    # Names sharing a four-gram: 2 obamas, 2 airbuses, 3 yorks, 2 obamas, 3 yorks.
    assert expected.height == 12
    assert loaded.shortlist(queries, top_n=4).equals(expected)
    assert in_memory.shortlist(queries, top_n=4).equals(expected)


def test_an_empty_index_shortlists_nothing() -> None:
    index = TantivyNameIndex.build(pl.Series([], dtype=pl.String))
    assert index.shortlist(pl.Series(["obama"]), top_n=5).height == 0


def test_an_unwritable_index_folder_is_a_cache_error(tmp_path: Path) -> None:
    (tmp_path / "tantivy").write_text("a file where the index folder goes")
    with pytest.raises(CacheError, match=r"E406.*tantivy"):
        TantivyNameIndex.build(NAMES, tmp_path)

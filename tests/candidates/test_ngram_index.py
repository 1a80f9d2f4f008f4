"""The n-gram index: shortlists of names sharing a query's rare four-grams, saved and loaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from bench.ngram_index import N_CODES, NgramIndex, ngram_codes

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


def shortlisted(index: NgramIndex, queries: list[str], top_n: int = 3) -> dict[str, list[str]]:
    found = index.shortlist(pl.Series(queries), top_n=top_n).sort(
        "query", "shared", "name", descending=[False, True, False]
    )
    out: dict[str, list[str]] = {}
    for query, name in found.select("query", "name").iter_rows():
        out.setdefault(queries[query], []).append(NAMES[name])
    return out


def test_four_grams_are_cut_from_space_padded_text() -> None:
    rows, codes = ngram_codes(pl.Series(["abc", None, "xy", "z"]))
    assert rows.tolist() == [0, 0, 2]  # "z" padded is three characters: no four-gram
    letters = "abcdefghijklmnopqrstuvwxyz0123456789 "
    decode = lambda code: "".join(letters[code // 37**p % 37] for p in (3, 2, 1, 0))  # noqa: E731
    assert [decode(c) for c in codes] == [" abc", "abc ", " xy "]
    assert codes.max() < N_CODES


def test_a_typo_or_a_missing_word_still_reaches_the_name() -> None:
    index = NgramIndex.build(NAMES)
    found = shortlisted(index, ["barak obama", "airbuss", "new york", "zzzz"])
    assert found["barak obama"][0] == "barack obama"
    assert found["airbuss"][0] in ("airbus", "airbus group")
    # Both share every looked-up four-gram; telling them apart is the rescoring's job.
    assert set(found["new york"][:2]) == {"new york", "new york city"}
    assert "zzzz" not in found  # no four-gram in common: no candidates


def test_names_sharing_a_single_ngram_are_not_shortlisted() -> None:
    index = NgramIndex.build(NAMES)
    found = shortlisted(index, ["bolt city"], top_n=10)
    assert found["bolt city"] == ["new york city"]  # " cit", "city", "ity "; "boeing" shares nothing


def test_saved_index_loads_equal(tmp_path: Path) -> None:
    index = NgramIndex.build(NAMES)
    index.save(tmp_path / "index")
    loaded = NgramIndex.load(tmp_path / "index")
    assert (
        np.array_equal(index.offsets, loaded.offsets)
        and np.array_equal(index.name_rows, loaded.name_rows)
        and index.n_names == loaded.n_names == len(NAMES)
    )
    assert not list((tmp_path / "index").glob(".*.tmp"))

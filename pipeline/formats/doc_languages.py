"""`doc_languages.tsv`: the language of each document, beside a run's `gold.tab`/`system.tab`.

A TAC KBP 2015 `.tab` line has no language column; the scorers take a document's
language from its id (`ENG_...`, `corpus:lang:...`, see `pipeline.formats.tac.language_of_doc`).
Ids that do not say (`AFP_en_d08`, `doc17`) would score as language "unknown", so
evaluate writes this side file next to the `.tab` files and `xel-cli score` reads it
(from beside the gold file, or `--languages FILE`). The `.tab` files themselves stay
exactly TAC's, for neleval and any other scorer.

Format: UTF-8, a header line `doc_id<TAB>lang`, then one line per document.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pipeline.core.errors import InputError
from pipeline.core.io import write_text_atomic
from pipeline.core.languages import LANGUAGE_TAG_EXPECTED, is_language_tag, normalise_language

FILE_NAME = "doc_languages.tsv"
HEADER = "doc_id\tlang"


def write_doc_languages(languages: pl.DataFrame, path: Path) -> None:
    """Write a `doc_id, lang` frame (one row per document) atomically, sorted by doc_id.

    Raises `InputError` E220 when a doc_id or lang holds a tab or a line break (the file
    would not read back); E406 (from `pipeline.core.io`) when the folder cannot be written.
    """
    rows = languages.select("doc_id", "lang").unique().sort("doc_id")
    bad = rows.filter(pl.any_horizontal(pl.col("doc_id", "lang").str.contains(r"[\t\r\n]")))
    if bad.height:
        raise InputError("E220", path=path, line="-",
                         detail=f"document {bad['doc_id'][0]!r} or its language holds a tab or line break")  # fmt: skip
    body = "".join(f"{doc_id}\t{lang}\n" for doc_id, lang in zip(rows["doc_id"].to_list(), rows["lang"].to_list()))
    write_text_atomic(Path(path), HEADER + "\n" + body)


def read_doc_languages(path: Path) -> pl.DataFrame:
    """Read a `doc_languages.tsv` into a `doc_id, lang` frame (String columns).

    Raises `InputError` E108 (missing), E110 (not UTF-8) or E220 naming the first bad
    line: a wrong header, a line without exactly two tab-separated fields, an empty
    field, a language that is no language tag, or a document listed twice with different
    languages. Languages are read as their primary subtag (`pipeline.core.languages`: en-US -> en).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as err:
        raise InputError("E108", path=path) from err
    except UnicodeDecodeError as err:
        raise InputError("E110", path=path, line="-", detail=err) from err
    lines = text.splitlines()
    if not lines or lines[0].strip() != HEADER:
        raise InputError("E220", path=path, line=1, detail=f"the first line must be the header {HEADER!r}")
    seen: dict[str, tuple[str, int]] = {}
    for number, line in enumerate(lines[1:], start=2):  # one line per document: thousands, not millions
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0] or not fields[1].strip():
            raise InputError("E220", path=path, line=number,
                             detail=f"expected doc_id<TAB>lang, got {line!r}")  # fmt: skip
        doc_id, lang = fields[0], fields[1].strip()
        if not is_language_tag(lang):
            raise InputError(
                "E220", path=path, line=number, detail=f"the language {lang!r} should be {LANGUAGE_TAG_EXPECTED}"
            )
        lang = normalise_language(lang)  # en-US -> en, as the mentions' languages are read
        if doc_id in seen and seen[doc_id][0] != lang:
            raise InputError("E220", path=path, line=number,
                             detail=f"document {doc_id!r} is {lang!r} here and {seen[doc_id][0]!r} on line "
                                    f"{seen[doc_id][1]}")  # fmt: skip
        seen.setdefault(doc_id, (lang, number))
    return pl.DataFrame(
        {"doc_id": list(seen), "lang": [lang for lang, _ in seen.values()]},
        schema={"doc_id": pl.String, "lang": pl.String},
    )


def beside(tab_path: Path) -> Path | None:
    """The `doc_languages.tsv` in the folder of `tab_path`, if there is one."""
    candidate = Path(tab_path).parent / FILE_NAME
    return candidate if candidate.is_file() else None

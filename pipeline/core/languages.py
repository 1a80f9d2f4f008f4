"""Language tags as the inputs give them, and the one code every stage keys languages by.

Thresholds, scores, training selections and a trained model are keyed by language, so
`en`, `EN`, `en-US` and `en_GB` must be one language. Every reader of a language (mentions
JSONL and Parquet, docs files, `doc_languages.tsv`, name pairs) maps a BCP-47-like tag to
its primary language subtag, lower-cased: `en-US` -> `en`, `pt_BR` -> `pt`, `zh-Hant` -> `zh`,
` EN ` -> `en`. A value that is not a language tag at all (empty, digits, inner spaces,
punctuation, a word such as `english`) is refused by the reader with its file and line.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

# Annotations only (the helpers below call methods of the expression they are given): the config
# reads this module, and every command (an E2xx refusal too) would otherwise pay polars' import.
if TYPE_CHECKING:
    import polars as pl

LANGUAGE_TAG_PATTERN = r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*$"
"""A tag: a primary language subtag of 2-3 letters, then any `-` or `_` separated subtags
(script, region, variant: `zh-Hant-TW`, `sr_Latn`, `es-419`). Surrounding spaces are stripped first.
BCP 47 allows 4-8 letters for the primary subtag, but 4 is reserved and no 5-8 letter one is
registered: every language has an ISO 639 code of 2 or 3 letters (`und`, `qaa`-`qtz` included),
so `english` or `unknown` is a word, not a tag, and is refused rather than read as a language
no model has thresholds for."""

LANGUAGE_TAG = "a language tag"
LANGUAGE_TAG_EXAMPLES = (
    "such as 'en', 'EN', 'en-US' or 'pt_BR': a 2-3 letter language code, then optional "
    "'-' or '_' parts, read as that code ('en', 'pt')"
)
LANGUAGE_TAG_EXPECTED = f"{LANGUAGE_TAG} {LANGUAGE_TAG_EXAMPLES}"
LANGUAGE_TAG_HINT = f", {LANGUAGE_TAG_EXAMPLES}"  # E103's hint: "write a language tag there, such as ..."
"""What a message says a language field should be (E103 says `LANGUAGE_TAG` and gives the examples once, after its fix)."""

UNKNOWN_LANGUAGE = "unknown"
"""The language of a TAC document whose id does not say one (`pipeline.formats.tac.language_of_doc`):
the pipeline's own label, not a tag a user writes; language settings may name it."""

_LANGUAGE_TAG_RE = re.compile(LANGUAGE_TAG_PATTERN)


def is_language_tag(tag: object) -> bool:
    """Whether `tag` is a string that `normalise_language` accepts."""
    return isinstance(tag, str) and _LANGUAGE_TAG_RE.match(tag.strip()) is not None


def normalise_language(tag: str) -> str:
    """The lower-cased primary language subtag of `tag` (`en-US` -> `en`); `tag` must pass `is_language_tag`
    (raises ValueError otherwise: readers check first, so that they can name the file and line)."""
    if not is_language_tag(tag):
        raise ValueError(f"not a language tag: {tag!r}")
    return re.split(r"[-_]", tag.strip(), maxsplit=1)[0].lower()


def is_language_tag_expr(tag: pl.Expr) -> pl.Expr:
    """`is_language_tag` over a String column (null stays null)."""
    return tag.str.strip_chars().str.contains(LANGUAGE_TAG_PATTERN)


def language_expr(tag: pl.Expr) -> pl.Expr:
    """`normalise_language` over a String column of checked tags (null stays null)."""
    return tag.str.strip_chars().str.replace(r"[-_].*$", "").str.to_lowercase()

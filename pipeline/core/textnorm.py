"""Name normalisation that lets names in different scripts meet.

`fold` keeps the script (NFKC, case folding, accents stripped); `romanise` then writes
it in Latin letters (unidecode), so `Барак Обама`, `باراك أوباما` and `Barack Obama`
share keys or at least come close enough for a fuzzy match. Both drop a leading article
(`el Banco Mundial`, `de Wereldbank`, `the GAO`): mentions carry them, KB names do not.
`acronym` gives a name's initials (`Government Accountability Office` -> `gao`), which is
how many organisations are mentioned.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

import polars as pl
from unidecode import unidecode

from pipeline.core.progress import progress

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
# Leading definite and indefinite articles of the languages linkers meet most, and the
# prepositions fused with them (`del`, `degli`); one is dropped. A lone article stays.
ARTICLES = (
    "the a an "  # en
    "el la los las lo un una unos unas del "  # es
    "il lo la i gli le l un uno una degli della dello dei delle "  # it
    "de het een "  # nl
    "le la les l un une des du "  # fr
    "der die das den dem des ein eine einen "  # de
    "o a os as um uma "  # pt
).split()
_ARTICLE = "|".join(sorted(set(ARTICLES), key=len, reverse=True))
# Keys are stripped, so an article followed by a space is always followed by a word.
_LEADING_ARTICLE = re.compile(r"^(?:%s) " % _ARTICLE)
# Function words left out of acronyms: "Bank of England" -> "be", as written.
_ACRONYM_SKIP = frozenset("of and the for de del la le di da van von und et y e".split())


def drop_article(text: pl.Expr) -> pl.Expr:
    """The text without a leading article, in any case (`The GAO` -> `GAO`, `L'Oréal` -> `Oréal`)."""
    return text.str.strip_chars().str.replace(r"(?i)^(?:%s)(?: +|')(\w)" % _ARTICLE, "$1")


def _drop_article(folded: str) -> str:
    return _LEADING_ARTICLE.sub("", folded)


# Combining marks that writers leave out, so folding drops them: the accents of Latin, Greek
# and Cyrillic (the general combining blocks, Cyrillic titlo), Arabic harakat and Hebrew
# points and cantillation. Every other mark is a letter of its script and is kept: Brahmic and
# Southeast Asian vowel signs and viramas (राम / रोम / रीमा are three words), Japanese voicing
# marks (か / が). Ranges of code points; only their nonspacing marks (Mn) are dropped.
OMITTED_MARKS = (
    (0x0300, 0x036F),
    (0x1AB0, 0x1AFF),
    (0x1DC0, 0x1DFF),
    (0x20D0, 0x20FF),
    (0xFE20, 0xFE2F),  # general
    (0x0483, 0x0489),  # Cyrillic
    (0x0591, 0x05C7),  # Hebrew
    (0x0610, 0x061A),
    (0x064B, 0x065F),
    (0x0670, 0x0670),
    (0x06D6, 0x06ED),  # Arabic
)


# Characters that shape how a word is drawn, not what it says, so folding drops them rather than
# breaking the word there: every format character (Unicode category Cf: zero-width non-joiner and
# joiner U+200C/U+200D, which Persian writes inside words (`نورد‌بانک` is `نوردبانک`), zero-width
# space U+200B, word joiner U+2060, soft hyphen U+00AD, the byte order mark U+FEFF, direction
# marks), and the letters that only stretch a word: Arabic tatweel U+0640 and NKo lajanyalan U+07FA.
STRETCHING_LETTERS = frozenset("\u0640\u07fa")


# Letters written two ways for the same sound, by keyboard and region rather than spelling: Persian
# keyboards type keheh U+06A9 and Farsi yeh U+06CC where Arabic ones type kaf U+0643 and yeh U+064A,
# and Arabic writes final yeh as alef maksura U+0649 as often as not. Folding writes the Arabic kaf
# and yeh (`محمد کریمی` matches `محمد كريمي`).
LETTER_VARIANTS = {"\u06a9": "\u0643", "\u06cc": "\u064a", "\u0649": "\u064a"}


def _invisible(ch: str, category: str) -> bool:
    return category == "Cf" or ch in STRETCHING_LETTERS


def _omitted(ch: str) -> bool:
    point = ord(ch)
    return any(low <= point <= high for low, high in OMITTED_MARKS)


@lru_cache(maxsize=1 << 16)
def fold(text: str) -> str:
    """Case-folded, NFKC text with the marks writers omit (`OMITTED_MARKS`), invisible format
    characters and tatweel (`STRETCHING_LETTERS`) dropped, the Arabic script's regional letter
    forms made one (`LETTER_VARIANTS`) and every run of characters other than letters, digits
    and kept marks made one space; composed again (NFC), a leading article dropped. Never
    merges words that differ by a letter of their script, only by how a letter is typed."""
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text).casefold())
    kept = []
    for ch in decomposed:
        category = unicodedata.category(ch)
        if _invisible(ch, category):
            continue
        if category[0] in "LN" or (category[0] == "M" and not (category == "Mn" and _omitted(ch))):
            kept.append(LETTER_VARIANTS.get(ch, ch))
        elif category[0] != "M":
            kept.append(" ")
    folded = unicodedata.normalize("NFC", " ".join("".join(kept).split()))
    return _drop_article(folded)


@lru_cache(maxsize=1 << 16)
def romanise(text: str) -> str:
    return _drop_article(_NON_WORD.sub(" ", unidecode(fold(text)).lower()).strip())


def acronym(roman: pl.Expr) -> pl.Expr:
    """Initials of a romanised name of two or more words (function words left out), else ""."""
    words = roman.str.split(" ").list.eval(pl.element().filter(~pl.element().is_in(list(_ACRONYM_SKIP))))
    return (
        pl.when(words.list.len() >= 2)
        .then(words.list.eval(pl.element().str.slice(0, 1)).list.join(""))
        .otherwise(pl.lit(""))
    )


# Articles and prepositions: dropped before fuzzy matching, where a shared `de` would
# otherwise make `Banco de Inglaterra` look like every name that has a `de`.
FUNCTION_WORDS = (
    frozenset(ARTICLES)
    | _ACRONYM_SKIP
    | frozenset(
        "in on at to by with from en op bij met voor per para por con su sul nel al au aux zu im vom zum zur".split()
    )
)
_FUNCTION_WORD = r"\b(?:%s)\b" % "|".join(sorted(FUNCTION_WORDS))


def content_words(roman: pl.Expr) -> pl.Expr:
    """A romanised key without its function words; the key itself if nothing else is left."""
    content = roman.str.replace_all(_FUNCTION_WORD, "").str.replace_all(" +", " ").str.strip_chars()
    return pl.when(content == "").then(roman).otherwise(content)


# Non-ASCII strings keyed between two progress updates (`add_keys`).
KEYS_BLOCK = 10_000


def add_keys(frame: pl.DataFrame, column: str) -> pl.DataFrame:
    """Add `<column>_fold` and `<column>_roman` keys.

    Plain-ASCII strings (all of a multi-million-title English KB) take a vectorised path
    that gives the same keys; others run Python once per *distinct* string, then join back.
    """
    distinct = frame.select(pl.col(column).unique().drop_nulls())
    ascii_only = pl.col(column).str.contains(r"^[\x00-\x7f]*$")
    ascii_keys = distinct.filter(ascii_only).with_columns(
        pl.col(column)
        .str.to_lowercase()
        .str.replace_all(r"[^a-z0-9]+", " ")
        .str.strip_chars()
        .str.replace(_LEADING_ARTICLE.pattern, "")
        .alias(f"{column}_fold")
    )
    ascii_keys = ascii_keys.with_columns(pl.col(f"{column}_fold").alias(f"{column}_roman"))
    other = distinct.filter(~ascii_only)[column].to_list()
    folded, romanised = [], []
    with progress(len(other), "triage: name keys", "names", delay=2.0) as counter:
        for start in range(0, len(other), KEYS_BLOCK):
            block = other[start : start + KEYS_BLOCK]
            folded += [fold(s) for s in block]
            romanised += [romanise(s) for s in block]
            counter.update(len(block))
    other_keys = pl.DataFrame(
        {column: other, f"{column}_fold": folded, f"{column}_roman": romanised}, schema=ascii_keys.schema
    )
    return frame.join(pl.concat([ascii_keys, other_keys]), on=column, how="left")

"""Name folding over the scripts people link from (issue 13 items 2 and 3).

Folding may drop what writers omit (Latin, Greek and Cyrillic accents, Arabic harakat,
Hebrew points) but must keep every letter of a script: two words that differ by a vowel
sign or a virama stay two words. A string with nothing left after folding (`--`) is no
name: it matches nothing exactly and its NIL cluster is its own.
"""

from __future__ import annotations

import unicodedata

import polars as pl
import pytest

from pipeline.candidates.sources import kb_name_candidates, prior_candidates
from pipeline.core import schema
from pipeline.core.textnorm import add_keys, fold, romanise
from pipeline.model.aliases import alias_table
from pipeline.model.nil import cluster_nils

# Words of one script that differ only by a vowel sign, virama or other mark of that script.
DISTINCT = {
    "Devanagari": ["राम", "रोम", "रीमा", "रम", "क्षत्रिय", "कषतरय"],
    "Bengali": ["কাল", "কল", "কিল", "কুল"],
    "Tamil": ["கல்", "கால்", "கல", "கிளி", "கிள்ளி"],
    "Telugu": ["కల", "కాల", "కిల", "కల్"],
    "Thai": ["กา", "กิ", "กี", "กู", "ก่า", "ก้า"],
    "Khmer": ["កា", "កិ", "កុ", "ក្ក"],
    "Myanmar": ["ကာ", "ကိ", "ကု", "က်"],
    "Japanese kana": ["か", "が", "は", "ぱ", "ば"],
}
# The same word written with and without marks writers omit: one key.
SAME = {
    "Latin": ["Éléonore Müller", "Eleonore Muller", "ELEONORE MÜLLER"],
    "Vietnamese": ["Hà Nội", "Ha Noi", "HÀ NỘI"],
    "Cyrillic": ["Москва́", "Москва", "МОСКВА"],
    "Greek": ["Αθήνα", "Αθηνα", "ΑΘΉΝΑ"],
    "Arabic harakat": ["مُحَمَّد", "محمد", "مُحمّد"],
    "Hebrew niqqud": ["יְרוּשָׁלַיִם", "ירושלים"],
}


@pytest.mark.parametrize("script", sorted(DISTINCT))
def test_folding_keeps_letters_of_every_script(script: str) -> None:
    words = DISTINCT[script]
    keys = [fold(word) for word in words]
    assert len(set(keys)) == len(words), dict(zip(words, keys))
    for word, key in zip(words, keys):
        assert key == unicodedata.normalize("NFC", word)  # nothing dropped, nothing split
        assert " " not in key


@pytest.mark.parametrize("script", sorted(SAME))
def test_folding_drops_marks_writers_omit(script: str) -> None:
    keys = {fold(word) for word in SAME[script]}
    assert len(keys) == 1, keys


def test_folding_examples() -> None:
    assert fold("क्षत्रिय") == "क्षत्रिय"  # not `कषतर य`
    assert fold("Hà Nội") == "ha noi" and fold("Αθήνα") == "αθηνα" and fold("مُحَمَّد") == "محمد"
    assert fold("El Banco_Mundial") == "banco mundial"  # the article and the underscore as before
    assert fold("--") == "" and fold("...") == "" and romanise("--") == ""


def _mentions(rows: list[tuple[str, str, str]]) -> pl.DataFrame:
    frame = pl.DataFrame(rows, schema=["mention_id", "mention", "gold_kb_id"], orient="row")
    return add_keys(frame, "mention")


def test_hindi_namesakes_do_not_meet_rome() -> None:
    surfaces = add_keys(
        pl.DataFrame({"surface": ["Rome", "रोम", "--"], "kb_id": ["Q1", "Q1", "Q2"]}), "surface"
    ).with_columns(pl.lit("").alias("surface_acronym"))
    mentions = _mentions([("m1", "राम", "NIL"), ("m2", "रीमा", "NIL"), ("m3", "रोम", "Q1"), ("m4", "--", "NIL")])
    found = kb_name_candidates(mentions, surfaces).sort("mention_id")
    assert found.select("mention_id", "kb_id").rows() == [("m3", "Q1")]


def test_empty_keys_give_no_prior() -> None:
    training = _mentions([("t1", "--", "Q2"), ("t2", "Rome", "Q1")])
    mentions = _mentions([("m1", "...", "NIL"), ("m2", "Rome", "Q1")])
    priors = prior_candidates(mentions, alias_table(training))
    assert priors.select("mention_id", "kb_id").unique().rows() == [("m2", "Q1")]


def test_nil_clusters_keep_script_letters_and_empty_keys_apart() -> None:
    decided = pl.DataFrame(
        {
            "mention_id": ["a", "b", "c", "d", "e", "f"],
            "mention": ["राम", "रीमा", "राम", "--", "...", "Rome"],
            "is_nil": [True, True, True, True, True, False],
            "kb_id": [schema.NIL_ID] * 5 + ["Q1"],
        }
    )
    clusters = dict(zip(*cluster_nils(decided, "name").select("mention_id", "system_id").to_dict().values()))
    assert clusters["a"] == clusters["c"]  # the same name across documents: one cluster
    assert len({clusters["a"], clusters["b"], clusters["d"], clusters["e"]}) == 4
    assert clusters["f"] == "Q1"


# Invisible characters inside a word (format characters, category Cf) and the tatweel that only
# stretches it: one key with the word written without them, never a word break (issue 21 item 5).
INVISIBLE = {
    "Persian ZWNJ": ("نورد\u200cبانک", "نوردبانک"),
    "zero-width joiner": ("क्\u200dष", "क्ष"),
    "Arabic tatweel": ("بنـــك", "بنك"),
    "zero-width space": ("Nord\u200bbank", "Nordbank"),
    "word joiner": ("Nord\u2060bank", "Nordbank"),
    "soft hyphen": ("Nord\u00adbank", "Nordbank"),
    "byte order mark": ("\ufeffNordbank", "Nordbank"),
    "right-to-left mark": ("نوردبانک\u200f", "نوردبانک"),
}


@pytest.mark.parametrize("kind", sorted(INVISIBLE))
def test_invisible_characters_fold_away_without_breaking_the_word(kind: str) -> None:
    written, plain = INVISIBLE[kind]
    assert fold(written) == fold(plain) and " " not in fold(written)
    assert romanise(written) == romanise(plain)


def test_a_persian_mention_with_zwnj_meets_its_alias_exactly() -> None:
    surfaces = add_keys(pl.DataFrame({"surface": ["نوردبانک"], "kb_id": ["Q1"]}), "surface").with_columns(
        pl.lit("").alias("surface_acronym")
    )
    mentions = _mentions([("m1", "نورد\u200cبانک", "Q1"), ("m2", "نوردبـانک", "Q1")])
    found = kb_name_candidates(mentions, surfaces).sort("mention_id")
    assert found.select("mention_id", "kb_id").rows() == [("m1", "Q1"), ("m2", "Q1")]


def test_persian_and_arabic_kaf_and_yeh_fold_to_one_letter_each() -> None:
    """Fresh-user report F11: keheh U+06A9 / kaf U+0643 and Farsi yeh U+06CC / yeh U+064A / alef maksura U+0649
    are one letter each, typed on a Persian or an Arabic keyboard; they fold to the Arabic kaf and yeh."""
    assert fold("\u06a9") == fold("\u0643") == "\u0643"
    assert fold("\u06cc") == fold("\u064a") == fold("\u0649") == "\u064a"
    assert fold("محمد کریمی") == fold("محمد كريمي") == "محمد كريمي"
    assert fold("مصطفى") == fold("مصطفي")
    assert fold("كريم") != fold("كريمة")  # other letters still differ


def test_a_mention_typed_on_an_arabic_keyboard_meets_a_persian_alias_exactly() -> None:
    surfaces = add_keys(pl.DataFrame({"surface": ["محمد کریمی"], "kb_id": ["Q1"]}), "surface").with_columns(
        pl.lit("").alias("surface_acronym")
    )
    mentions = _mentions([("m1", "محـــمد كريمي", "Q1")])
    found = kb_name_candidates(mentions, surfaces)
    assert found.select("mention_id", "kb_id").rows() == [("m1", "Q1")]

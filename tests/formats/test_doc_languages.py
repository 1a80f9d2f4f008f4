"""`doc_languages.tsv` (pipeline/formats/doc_languages.py): written by evaluate, read by `xel-cli score`.

The run-level behaviour (a run's own gold.tab/system.tab scored per language) is in
tests/cli/test_cli.py; here the file format, its errors through the CLI (one line, code,
file and line, exit 2) and the W220 warning.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from cli import main
from pipeline.core.errors import InputError
from pipeline.formats.doc_languages import beside, read_doc_languages, write_doc_languages

GOLD = ("gold\tM1\tObama\tAFP_d08:0-4\tQ1\tPER\tNAM\t1.0\n"
        "gold\tM2\tPutin\tTASS_d02:0-4\tQ2\tPER\tNAM\t1.0\n"
        "gold\tM3\tMerkel\tENG_NW_1:0-5\tQ3\tPER\tNAM\t1.0\n")  # fmt: skip
SYSTEM = GOLD.replace("gold\tM2\tPutin\tTASS_d02:0-4\tQ2", "xel\tM2\tPutin\tTASS_d02:0-4\tNIL1")


def test_round_trip_sorted_with_header(tmp_path: Path) -> None:
    path = tmp_path / "doc_languages.tsv"
    write_doc_languages(pl.DataFrame({"doc_id": ["b", "a", "b"], "lang": ["ru", "fr", "ru"]}), path)
    assert path.read_text(encoding="utf-8") == "doc_id\tlang\na\tfr\nb\tru\n"
    assert read_doc_languages(path).rows() == [("a", "fr"), ("b", "ru")]
    assert beside(tmp_path / "gold.tab") == path
    assert beside(tmp_path / "sub" / "gold.tab") is None


def test_a_tab_in_a_doc_id_is_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="E220"):
        write_doc_languages(pl.DataFrame({"doc_id": ["a\tb"], "lang": ["fr"]}), tmp_path / "doc_languages.tsv")
    assert list(tmp_path.iterdir()) == []


def _score(tmp_path: Path, languages: str | None, *extra: str, quiet: tuple[str, ...] = ()):
    (tmp_path / "gold.tab").write_text(GOLD, encoding="utf-8")
    (tmp_path / "system.tab").write_text(SYSTEM, encoding="utf-8")
    if languages is not None:
        (tmp_path / "doc_languages.tsv").write_text(languages, encoding="utf-8")
    return CliRunner().invoke(main, [*quiet, "score", str(tmp_path / "gold.tab"), str(tmp_path / "system.tab"), *extra])


def test_score_takes_languages_from_beside_the_gold(tmp_path: Path) -> None:
    result = _score(tmp_path, "doc_id\tlang\nAFP_d08\tfr\nTASS_d02\tru\n", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    # ENG_NW_1 still takes its language from the id; the other two from the file.
    assert sorted(report["by_language"]) == ["en", "fr", "ru"]
    assert report["by_language"]["ru"]["kbp2010_micro_average"]["micro_average"] == 0.0
    assert report["by_language"]["fr"]["kbp2010_micro_average"]["micro_average"] == 1.0
    assert "W220" not in result.stderr


def test_documents_without_language_are_warned_about(tmp_path: Path) -> None:
    result = _score(tmp_path, "doc_id\tlang\nAFP_d08\tfr\n", "--json")
    assert result.exit_code == 0, result.output
    assert "[W220] 1 document(s)" in result.stderr and "'TASS_d02'" in result.stderr


@pytest.mark.parametrize(
    ("content", "line", "what"),
    [
        ("doc\tlanguage\nAFP_d08\tfr\n", 1, "header"),
        ("doc_id\tlang\nAFP_d08\tfr\nTASS_d02\n", 3, "expected doc_id<TAB>lang"),
        ("doc_id\tlang\nAFP_d08\t \n", 2, "expected doc_id<TAB>lang"),
        ("doc_id\tlang\nAFP_d08\tfr\nAFP_d08\tes\n", 3, "and 'fr' on line 2"),
    ],
    ids=["wrong-header", "one-field", "empty-lang", "two-languages"],
)
def test_bad_languages_file_is_one_coded_line(tmp_path: Path, content: str, line: int, what: str) -> None:
    result = _score(tmp_path, content, quiet=("--quiet",))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: [E220] {tmp_path / 'doc_languages.tsv'}:{line}: ")
    assert what in lines[0] and "Traceback" not in result.output

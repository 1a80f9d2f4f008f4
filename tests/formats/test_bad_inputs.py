"""Bad-input catalogue: one table of malformed inputs, each run through the real CLI.

Every error case runs `xel-cli --quiet <command>` (CliRunner, tiny encoder) and checks
the contract of README "Errors": exit code 2; output is exactly one line, starting
`Error: [E` with the expected code and naming the offending file (and line, where there
is one); no traceback; nothing already written is lost (files of other stages, and
files of the failing stage other than its manifest, keep their bytes) and no temporary
file is left behind. Accepted cases (`code=None`: a BOM, CRLF, unknown tokens, outside
candidates of other mentions, a checkpoint of another architecture) must exit 0.

Kinds already covered elsewhere, one test each, not repeated here (they count towards
the catalogue; see README "Bad input"):

- mentions (tests/formats/test_inputs.py): bad JSON line and a line that is not an object
  (E101), missing field (E102), four wrong types (E103), neither offsets nor doc
  (E111), duplicate mention id (E104), two offsets outside the text and doc offsets
  outside the doc (E105), offsets not covering the mention (E106), empty and all-blank
  file (E107), missing file (E108), unknown doc (E109), non-UTF-8 (E110), BOM + CRLF
  accepted; through the CLI: E106 with file and line.
- docs (tests/formats/test_inputs.py): duplicate doc id (E104).
- KB (tests/formats/test_inputs.py, tests/cli/test_cli.py): duplicate kb_id (E104, no file left),
  alias object without text (E103), missing name through the CLI (E102).
- TAC (tests/formats/test_inputs.py): .tab offsets missing the mention (E106), missing source
  document (E108).
- config (tests/core/test_config.py): unknown key and top-level key (E201), unknown section
  in the file and in --set (E204), invalid TOML (E202), missing file (E108), fourteen
  bad values (E203), no KB (E203), six malformed --set overrides, out-of-range --set.
- artifacts (tests/cli/test_cli.py): a stage before its upstream (E401), a manifest that is
  not JSON (E402).
- name pairs (tests/train/test_name_matching.py): too few and too many columns, an empty
  name in .tsv and .jsonl (E113), empty and header-only file (E107), non-UTF-8 (E110),
  missing field, wrong type and bad JSON in .jsonl (E102, E103, E101); through the CLI:
  E113 with file and line, a missing file (E108), a name_pairs.h5 of another pairs file
  (E407); BOM + CRLF + header accepted.
- `xel-cli link` (tests/link/test_link.py): a model folder without model.json and with a
  foreign one (E701), model.json not JSON, a changed model.pt, a missing alias table
  (E702), a newer format (E703), an encoder that is gone (E704), a --kb-map that carries no
  alias-table id into the KB (E705; a KB lacking some is linked, W710), malformed --kb-map
  lines (E730, E731), an unknown mention file type (E707), a .tab without --docs
  (E708), --score without gold (E709), a mention id repeated across chunks (E104, before any chunk is linked), bad
  offsets in a chunk (E105); gold without --score and an unseen language accepted.

Added here: the kinds above lacked non-UTF-8 and BOM/CRLF for KB and docs, empty and
blank KB, malformed alias lists, unknown-token mentions, bad .tab lines and source
documents, outside candidate files, config types and ranges through the CLI, damaged
Parquet/HDF5/checkpoints/models/manifests (Parquet also with an intact footer and
damaged data pages, including damage that makes polars panic), and a full disk. Issue 13
added blank strings and empty spans, unknown splits, repeated spans (also after
`rename_duplicate_ids`), ids a TAC file cannot hold, documents with two languages,
discontinuous mentions (`fragments`), NFC/NFD mismatches, a mention longer than the
context window, KB records without a name or with blank ids, names and aliases, TAC spans
shown as the file gives them, 11-column `.tab` files, repeated outside candidates and
unknown KB ids, and E601's `--lenient` advice.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import polars as pl
import pytest
import tomllib
from click.testing import CliRunner

import pipeline.core.io
from cli import main
from conftest import TINY_KB, tiny_mention_records, write_jsonl, write_run_config, write_toml


@dataclass
class Env:
    """What a case builds on: a fresh folder, the tiny encoder and a finished base run."""

    tmp: Path
    encoder: Path
    base_run: Path
    monkeypatch: pytest.MonkeyPatch

    def config(self, **sections: dict) -> Path:
        """A run config over tmp/data (the tiny inputs unless a case wrote its own)."""
        return write_run_config(self.tmp, self.encoder, **sections)

    def tac_config(self, tab: Path, source: Path) -> Path:
        """A run config reading TAC gold + sources instead of JSONL mentions."""
        path = self.config()
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        raw["inputs"] = {"kb": raw["inputs"]["kb"], "tac_train": str(tab), "tac_source": str(source)}
        top = {k: v for k, v in raw.items() if not isinstance(v, dict)}
        return write_toml(path, top, {k: v for k, v in raw.items() if isinstance(v, dict)})

    def run_copy(self) -> Path:
        """A copy of the finished base run, to damage."""
        run_dir = self.tmp / "run"
        shutil.copytree(self.base_run, run_dir)
        return run_dir


@dataclass(frozen=True)
class Invocation:
    args: list[str]
    names: list[str]  # substrings the error line must hold: file name, ":line:", field
    stage: str | None = None  # the stage that fails; its manifest may go, nothing else
    check: Callable[[Path, str], None] | None = None  # extra check on (run dir, output)


@dataclass(frozen=True)
class Case:
    id: str
    kind: str
    code: str | None  # None: accepted
    build: Callable[[Env], Invocation]
    marks: tuple = field(default=())


def cli(config: Path, *args: str) -> list[str]:
    return [*args, "--config", str(config)]


# --- input builders -------------------------------------------------------------------------


def data(env: Env) -> Path:
    folder = env.tmp / "data"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def jsonl_bytes(records: list) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def write_kb_bytes(env: Env, content: bytes) -> Path:
    write_jsonl(data(env) / "mentions.jsonl", tiny_mention_records())
    (data(env) / "kb.jsonl").write_bytes(content)
    return env.config()


def kb_case(content: Callable[[], bytes], names: list[str]) -> Callable[[Env], Invocation]:
    return lambda env: Invocation(cli(write_kb_bytes(env, content()), "triage"), ["kb.jsonl", *names], "triage")


def kb_with(line: int, **fields) -> bytes:
    records = [dict(r) for r in TINY_KB]
    records[line - 1].update(fields)
    return jsonl_bytes(records)


def bom_crlf(content: bytes) -> bytes:
    return b"\xef\xbb\xbf" + content.replace(b"\n", b"\r\n")


def entities_count(expected: int) -> Callable[[Path, str], None]:
    def check(run_dir: Path, output: str) -> None:
        assert pl.read_parquet(run_dir / "triage" / "entities.parquet").height == expected

    return check


DOC_TEXT = "Barack Obama met Angela Merkel in Berlin on Monday."


def docs_case(docs_content: bytes, names: list[str]) -> Callable[[Env], Invocation]:
    def build(env: Env) -> Invocation:
        (data(env) / "docs.jsonl").write_bytes(docs_content)
        mentions = write_jsonl(
            data(env) / "doc-mentions.jsonl",
            [
                {
                    "id": "m1",
                    "doc_id": "d1",
                    "lang": "en",
                    "mention": "Barack Obama",
                    "doc_start": 0,
                    "doc_end": 12,
                    "gold_kb_id": "Q1",
                    "split": "test",
                }
            ],
        )
        config = env.config(inputs={"mentions": mentions, "docs": data(env) / "docs.jsonl"})
        check = None if names else context_is(DOC_TEXT)
        return Invocation(cli(config, "triage"), ["docs.jsonl", *names], "triage", check)

    return build


def context_is(text: str) -> Callable[[Path, str], None]:
    def check(run_dir: Path, output: str) -> None:
        assert pl.read_parquet(run_dir / "triage" / "mentions.parquet")["context"].to_list() == [text]

    return check


DOCS = [{"doc_id": "d1", "lang": "en", "text": DOC_TEXT}, {"doc_id": "d2", "lang": "es", "text": "París."}]

# A Thai mention: the tiny WordPiece vocabulary has no Thai, so every token is [UNK].
THAI_TEXT = "กรุงเทพมหานครเป็นเมืองหลวง"


def unknown_tokens(env: Env) -> Invocation:
    surface = "กรุงเทพมหานคร"
    records = tiny_mention_records() + [
        {
            "id": "th-1",
            "doc_id": "th-d1",
            "lang": "th",
            "text": THAI_TEXT,
            "start": 0,
            "end": len(surface),
            "mention": surface,
            "split": "test",
        }
    ]
    write_jsonl(data(env) / "mentions.jsonl", records)
    write_jsonl(data(env) / "kb.jsonl", TINY_KB)
    from transformers import AutoTokenizer

    tokens = AutoTokenizer.from_pretrained(env.encoder).tokenize(THAI_TEXT)
    assert tokens and set(tokens) == {"[UNK]"}  # the case is what it claims to be
    config = env.config()
    assert CliRunner().invoke(main, cli(config, "--quiet", "triage")).exit_code == 0

    def check(run_dir: Path, output: str) -> None:
        with h5py.File(run_dir / "encode" / "vectors.h5", "r") as handle:
            ids = [v.decode() for v in handle["mentions"]["id"][:]]
            assert "th-1" in ids  # encoded like any other mention: all-[UNK] input is still input
            assert np.isfinite(handle["mentions"]["name"][:]).all()

    return Invocation(cli(config, "encode"), [], "encode", check)


# --- TAC ---------------------------------------------------------------------------------

TAC_DOC = '<doc id="ENG_NW_0001">\n<text>\nBarack Obama arrived in Paris.\n</text>\n</doc>\n'


def tac_line(surface: str, kb_id: str = "Q1", mention_id: str = "EDL_1") -> str:
    start = TAC_DOC.index(surface)
    return f"gold\t{mention_id}\t{surface}\tENG_NW_0001:{start}-{start + len(surface) - 1}\t{kb_id}\tPER\tNAM\t1.0"


def tac_case(
    tab: bytes | None = None, source: bytes | None = None, names: list[str] = ()
) -> Callable[[Env], Invocation]:
    def build(env: Env) -> Invocation:
        write_jsonl(data(env) / "kb.jsonl", TINY_KB)
        write_jsonl(data(env) / "mentions.jsonl", tiny_mention_records())
        source_dir = data(env) / "source"
        source_dir.mkdir(exist_ok=True)
        (source_dir / "ENG_NW_0001.xml").write_bytes(source if source is not None else TAC_DOC.encode())
        tab_path = data(env) / "train.tab"
        good = (tac_line("Barack Obama") + "\n" + tac_line("Paris", "Q4", "EDL_2") + "\n").encode()
        tab_path.write_bytes(tab if tab is not None else good)
        return Invocation(cli(env.tac_config(tab_path, source_dir), "triage"), list(names), "triage")

    return build


# --- outside candidates ------------------------------------------------------------------------


def candidates_case(text: str, names: list[str], check=None, **sections: dict) -> Callable[[Env], Invocation]:
    def build(env: Env) -> Invocation:
        path = data(env) / "outside.csv"
        path.write_text(text, encoding="utf-8")
        write_jsonl(data(env) / "mentions.jsonl", tiny_mention_records())
        write_jsonl(data(env) / "kb.jsonl", TINY_KB)
        return Invocation(
            cli(env.config(inputs={"candidates": path}, **sections), "triage"), ["outside.csv", *names], "triage", check
        )

    return build


def warned_and_kept(run_dir: Path, output: str) -> None:
    assert "outside.csv: ignoring 1 candidate row(s)" in output and "'nobody'" in output
    candidates = pl.read_parquet(run_dir / "triage" / "candidates.parquet")
    assert "nobody" not in candidates["mention_id"].to_list()
    assert candidates.filter(pl.col("sources").list.contains("external"))["mention_id"].to_list() == ["en-1"]


# --- config ------------------------------------------------------------------------------


def config_case(named: str, **sections: dict) -> Callable[[Env], Invocation]:
    return lambda env: Invocation(cli(env.config(**sections), "triage"), ["run.toml", named])


# --- damaged artifacts -------------------------------------------------------------------------


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def damaged(
    relative: str, damage: Callable[[Path], None], command: list[str], stage: str, names: list[str] = (), check=None
) -> Callable[[Env], Invocation]:
    """Damage `relative` in a copy of the finished base run, then run `command` on it."""

    def build(env: Env) -> Invocation:
        run_dir = env.run_copy()
        damage(run_dir / relative)
        return Invocation(
            [*command, "--config", str(env.config()), "--run-dir", str(run_dir)],
            [str(run_dir / relative), *names],
            stage,
            check,
        )

    return build


def then_train(damage: Callable[[Path], None]) -> Callable[[Path], None]:
    """Damage, and drop train's manifest so a plain `train` (no --force, which would
    discard the checkpoint) re-runs: the checkpoint must survive the error."""

    def both(path: Path) -> None:
        damage(path)
        (path.parents[1] / "train" / "manifest.json").unlink()

    return both


def column_chunks(path: Path) -> list[tuple[int, int]]:
    """(first byte, length) of every column chunk's pages: data between the header and the footer."""
    import pyarrow.parquet as pq

    metadata = pq.ParquetFile(path).metadata
    chunks = []
    for group in range(metadata.num_row_groups):
        for column in range(metadata.num_columns):
            chunk = metadata.row_group(group).column(column)
            first = chunk.dictionary_page_offset or chunk.data_page_offset
            chunks.append((first, chunk.total_compressed_size))
    return chunks


def damaged_pages(path: Path) -> None:
    """Overwrite every column's pages with 0xff; the footer (schema, offsets) stays intact."""
    content = bytearray(path.read_bytes())
    for first, length in column_chunks(path):
        content[first : first + length] = b"\xff" * length
    path.write_bytes(bytes(content))
    pl.scan_parquet(path).collect_schema()  # the footer still reads: only collecting fails


def pages_that_panic(path: Path) -> None:
    """Damage pages so that polars panics (a Rust assertion) instead of raising an error.

    Such damage depends on the bytes, so it is searched for: six 0xff bytes at each
    offset of each column chunk until reading the file panics.
    """
    from pipeline.core.io import _stderr_held

    original = path.read_bytes()
    for first, length in column_chunks(path):
        for offset in range(first, first + length - 6):
            content = bytearray(original)
            content[offset : offset + 6] = b"\xff" * 6
            path.write_bytes(bytes(content))
            with _stderr_held() as held:
                held.discard()  # the panic's backtrace
                try:
                    pl.scan_parquet(path).collect()
                except pl.exceptions.PanicException:
                    return
                except pl.exceptions.PolarsError:
                    continue
    raise AssertionError(f"no damage of {path} makes polars panic; this polars handles them all")


def nan_vectors(path: Path) -> None:
    with h5py.File(path, "r+") as handle:
        handle["entities"]["name"][0, 0] = np.nan


def manifest_as(text: str) -> Callable[[Path], None]:
    return lambda path: path.write_text(text, encoding="utf-8")


def checkpoint_ignored(run_dir: Path, output: str) -> None:
    assert "ignoring checkpoint" in output and "resuming" not in output
    assert (run_dir / "train" / "manifest.json").is_file()


def checkpoint_of_the_finished_run(path: Path) -> None:
    """A checkpoint of the finished train's key, as a run killed before deleting it leaves (a finished
    stage deletes its checkpoint once its manifest is written)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((path.parents[1] / "manifest.json").read_text(encoding="utf-8"))
    torch.save({"key": manifest["key"], "epoch": 1}, path)


def drop_manifest_and_garble(path: Path) -> None:
    (path.parent.parent / "manifest.json").unlink()  # so train re-runs and reads its checkpoint
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a checkpoint")


# --- disk full -----------------------------------------------------------------------------------


def disk_full(env: Env) -> Invocation:
    """The Parquet writer fills the disk half-way: E406, no file under the final name."""
    real = pl.DataFrame.write_parquet

    def half_then_enospc(frame, file, *args, **kwargs):
        real(frame, file, *args, **kwargs)
        truncate(Path(file))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    env.monkeypatch.setattr(pl.DataFrame, "write_parquet", half_then_enospc)

    def check(run_dir: Path, output: str) -> None:
        named = Path(output.split("] ", 1)[1].split(":", 1)[0])
        assert named.suffix == ".parquet" and not named.exists()
        assert os.strerror(errno.ENOSPC) in output

    return Invocation(cli(env.config(), "triage"), ["cannot write"], "triage", check)


def rename_fails(env: Env) -> Invocation:
    """The final rename fails (disk full) while re-running evaluate: old outputs stay whole."""
    run_dir = env.run_copy()
    real_replace = os.replace

    def replace(source, target, *args, **kwargs):
        if str(target).endswith("scores.parquet"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(source, target, *args, **kwargs)

    env.monkeypatch.setattr(pipeline.core.io.os, "replace", replace)
    return Invocation(
        ["evaluate", "--force", "--config", str(env.config()), "--run-dir", str(run_dir)],
        [str(run_dir / "evaluate" / "scores.parquet"), "cannot write"],
        "evaluate",
    )


# --- issue 13: inputs that used to break a later stage or skew its result --------------------


def record(mention_id: str, doc_id: str, text: str, surface: str, **extra) -> dict:
    """A test-split NIL mention of `surface` in `text` (offsets computed), fields overridable."""
    start = text.index(surface)
    return {
        "id": mention_id,
        "doc_id": doc_id,
        "lang": "en",
        "text": text,
        "start": start,
        "end": start + len(surface),
        "mention": surface,
        "gold_kb_id": "NIL",
        "split": "test",
        **extra,
    }


TINY_LINES = len(tiny_mention_records())  # extra records start on the line after these


def mentions_case(
    extra: Callable[[], list[dict]], names: list[str], check=None, kb: list | None = None, **sections: dict
) -> Callable[[Env], Invocation]:
    """The tiny mentions plus `extra` (from line TINY_LINES + 1), triaged."""

    def build(env: Env) -> Invocation:
        write_jsonl(data(env) / "mentions.jsonl", tiny_mention_records() + extra())
        write_jsonl(data(env) / "kb.jsonl", TINY_KB if kb is None else kb)
        named = ["mentions.jsonl", *names] if names else []
        return Invocation(cli(env.config(**sections), "triage"), named, "triage", check)

    return build


def extra_line(offset: int = 1) -> str:
    return f"mentions.jsonl:{TINY_LINES + offset}:"


def no_exact_match(mention_ids: list[str], warning: str) -> Callable[[Path, str], None]:
    def check(run_dir: Path, output: str) -> None:
        assert warning in output, output
        candidates = pl.read_parquet(run_dir / "triage" / "candidates.parquet").filter(
            pl.col("mention_id").is_in(mention_ids)
        )
        assert not candidates.filter(
            pl.col("sources").list.contains("kb_name") | pl.col("sources").list.contains("prior")
        ).height, candidates

    return check


def entity_named(kb_id: str, name: str, warning: str) -> Callable[[Path, str], None]:
    def check(run_dir: Path, output: str) -> None:
        assert warning in output, output
        entities = pl.read_parquet(run_dir / "triage" / "entities.parquet")
        assert entities.filter(pl.col("kb_id") == kb_id)["name"].to_list() == [name]

    return check


RU_TEXT = "Он стал чемпионом мира и Европы, а потом чемпион мира и Европы уехал."
CHAMPION = RU_TEXT.index("чемпион мира")
EUROPE = RU_TEXT.index("Европы", CHAMPION)


def discontinuous(**extra) -> dict:
    """`чемпион Европы` over `чемпион мира и Европы` (a brat-style discontinuous mention)."""
    return {
        **record("ru-9", "ru-d9", RU_TEXT, "чемпион мира и Европы", lang="ru"),
        "mention": "чемпион Европы",
        **extra,
    }


def covering_span_kept(run_dir: Path, output: str) -> None:
    row = (
        pl.read_parquet(run_dir / "triage" / "mentions.parquet")
        .filter(pl.col("mention_id") == "ru-9")
        .row(0, named=True)
    )
    assert (row["mention"], row["start"], row["end"]) == ("чемпион Европы", CHAMPION, EUROPE + len("Европы"))


LONG_NAME = "Nordic Association of Independent Regional Coastal Ferry and Harbour Operators and Licensed Pilots"


def long_mention(env: Env) -> Invocation:
    """A mention of more sub-words than max_context_tokens = 16 holds: encoded, finite."""
    write_jsonl(
        data(env) / "mentions.jsonl",
        tiny_mention_records() + [record("en-long", "en-d9", f"The {LONG_NAME} met on Monday.", LONG_NAME)],
    )
    write_jsonl(data(env) / "kb.jsonl", TINY_KB)
    from transformers import AutoTokenizer

    assert len(AutoTokenizer.from_pretrained(env.encoder).tokenize(LONG_NAME)) > 16  # the case is what it claims
    config = env.config(encoder={"max_context_tokens": 16})
    assert CliRunner().invoke(main, cli(config, "--quiet", "triage")).exit_code == 0

    def check(run_dir: Path, output: str) -> None:
        with h5py.File(run_dir / "encode" / "vectors.h5", "r") as handle:
            assert "en-long" in [v.decode() for v in handle["mentions"]["id"][:]]
            assert np.isfinite(handle["mentions"]["name"][:]).all()

    return Invocation(cli(config, "encode"), [], "encode", check)


def external_kept_once(run_dir: Path, output: str) -> None:
    assert "outside.csv: 2 candidate row(s) repeat" in output and "kept the highest score" in output, output
    candidates = pl.read_parquet(run_dir / "triage" / "candidates.parquet").filter(
        (pl.col("mention_id") == "en-8") & (pl.col("kb_id") == "Q1")
    )
    assert candidates.select("score", "sources").rows() == [(0.8, ["external"])]


def unknown_kb_warned(run_dir: Path, output: str) -> None:
    assert "outside.csv: ignoring 1 candidate row(s) whose kb_id is not in the KB (first on line 3: 'Q404')" in output
    assert "Q404" not in pl.read_parquet(run_dir / "triage" / "candidates.parquet")["kb_id"].to_list()


def tab_extra_columns(line: str) -> str:
    return line + "\thttp://example.org/search\twiki text\t0"


def mismatched_tab_files(env: Env) -> Invocation:
    """`xel-cli score` on files whose mention sets differ: E601 names the --lenient flag."""
    gold = data(env) / "gold.tab"
    system = data(env) / "system.tab"
    lines = [tac_line("Barack Obama"), tac_line("Paris", "Q4", "EDL_2")]
    gold.write_text("\n".join(lines) + "\n", encoding="utf-8")
    system.write_text(lines[0] + "\n", encoding="utf-8")
    return Invocation(["score", str(gold), str(system)], ["system.tab", "--lenient"])


# --- the catalogue -------------------------------------------------------------------------

TRIAGE = ["triage", "--force"]
CASES = [
    # KB
    Case(
        "kb-non-utf8",
        "KB",
        "E110",
        kb_case(lambda: kb_with(3, name="MoscXXw").replace(b"XX", b"\xff"), ["kb.jsonl:3:"]),
    ),
    Case(
        "kb-bom-crlf-accepted",
        "KB",
        None,
        lambda env: Invocation(
            cli(write_kb_bytes(env, bom_crlf(jsonl_bytes(TINY_KB))), "triage"),
            [],
            "triage",
            entities_count(len(TINY_KB)),
        ),
    ),
    Case("kb-empty", "KB", "E107", kb_case(lambda: b"", ["file is empty"])),
    Case("kb-all-blank", "KB", "E107", kb_case(lambda: b"\n   \n\t\r\n\n", ["file is empty"])),
    Case("kb-aliases-a-string", "KB", "E103", kb_case(lambda: kb_with(4, aliases="París"), ["kb.jsonl:4:", "aliases"])),
    Case(
        "kb-aliases-an-object",
        "KB",
        "E103",
        kb_case(lambda: kb_with(2, aliases={"text": "Merkel"}), ["kb.jsonl:2:", "aliases"]),
    ),
    Case(
        "kb-alias-a-number",
        "KB",
        "E103",
        kb_case(lambda: kb_with(5, aliases=[{"text": "ONU"}, 7]), ["kb.jsonl:5:", "aliases"]),
    ),
    # docs
    Case(
        "docs-non-utf8",
        "docs",
        "E110",
        docs_case(jsonl_bytes(DOCS).replace("París".encode(), b"Par\xeds"), ["docs.jsonl:2:"]),
    ),
    Case("docs-bom-crlf-accepted", "docs", None, docs_case(bom_crlf(jsonl_bytes(DOCS)), [])),
    Case("docs-all-blank", "docs", "E107", docs_case(b"\r\n \r\n", ["file is empty"])),
    # mentions
    Case("mention-all-unknown-tokens-accepted", "mentions", None, unknown_tokens),
    # TAC .tab
    Case(
        "tab-non-utf8",
        "TAC .tab",
        "E110",
        tac_case(
            tab=(tac_line("Barack Obama") + "\n").encode() + b"gold\tEDL_2\tPar\xeds\tENG_NW_0001:1-2\tQ4\tGPE\tNAM\n",
            names=["train.tab:2:"],
        ),
    ),
    Case(
        "tab-wrong-column-count",
        "TAC .tab",
        "E112",
        tac_case(tab=(tac_line("Barack Obama") + "\ngold\tEDL_2\tParis\tQ4\n").encode(), names=["train.tab:2:"]),
    ),
    Case(
        "tab-bad-span",
        "TAC .tab",
        "E112",
        tac_case(tab=(tac_line("Barack Obama").replace(":", "@") + "\n").encode(), names=["train.tab:1:"]),
    ),
    Case("tab-empty", "TAC .tab", "E107", tac_case(tab=b"\n", names=["train.tab", "file is empty"])),
    Case(
        "tab-bom-crlf-accepted",
        "TAC .tab",
        None,
        tac_case(tab=bom_crlf((tac_line("Barack Obama") + "\n" + tac_line("Paris", "Q4", "EDL_2") + "\n").encode())),
    ),
    # TAC source documents
    Case(
        "source-non-utf8",
        "TAC source",
        "E110",
        tac_case(source=TAC_DOC.encode().replace(b"arrived", b"arriv\xe9"), names=["ENG_NW_0001.xml:3:"]),
    ),
    # outside candidates
    Case(
        "candidates-missing-column",
        "outside candidates",
        "E112",
        candidates_case("mention_id,kb_id\nen-1,Q1\n", ["outside.csv:1:", "'score'"]),
    ),
    Case(
        "candidates-non-numeric-score",
        "outside candidates",
        "E112",
        candidates_case("mention_id,kb_id,score\nen-1,Q1,0.9\nen-2,Q2,high\n", ["outside.csv:3:", "numeric score"]),
    ),
    Case(
        "candidates-empty-kb-id",
        "outside candidates",
        "E112",
        candidates_case("mention_id,kb_id,score\nen-1,,0.9\n", ["outside.csv:2:"]),
    ),
    Case(
        "candidates-unknown-mention-ids-warned",
        "outside candidates",
        None,
        candidates_case("mention_id,kb_id,score\nen-1,Q1,0.9\nnobody,Q2,0.8\n", [], warned_and_kept),
    ),
    # config
    Case("config-list-given-a-number", "config", "E203", config_case("name_hidden = 16", train={"name_hidden": 16})),
    Case("config-negative-k", "config", "E203", config_case("k = -3", triage={"k": -3})),
    Case("config-string-for-a-number", "config", "E203", config_case("batch_tokens", encoder={"batch_tokens": "lots"})),
    Case("config-unknown-section", "config", "E204", config_case("[trainer]", trainer={"epochs": 3})),
    # damaged artifacts of a finished run
    Case(
        "truncated-candidates-parquet",
        "artifacts",
        "E302",
        damaged("triage/candidates.parquet", truncate, ["encode", "--force"], "encode"),
    ),
    Case(
        "truncated-mentions-parquet-at-train",
        "artifacts",
        "E302",
        damaged("triage/mentions.parquet", then_train(truncate), ["train"], "train"),
    ),
    Case(
        "damaged-data-pages-candidates-parquet",
        "artifacts",
        "E302",
        damaged("triage/candidates.parquet", damaged_pages, ["encode", "--force"], "encode", ["data page"]),
    ),
    Case(
        "damaged-data-pages-entities-parquet-at-evaluate",
        "artifacts",
        "E302",
        damaged("triage/entities.parquet", damaged_pages, ["evaluate", "--force"], "evaluate", ["data page"]),
    ),
    Case(
        "data-pages-that-panic-polars-mentions-parquet",
        "artifacts",
        "E302",
        damaged("triage/mentions.parquet", then_train(pages_that_panic), ["train"], "train", ["data page"]),
    ),
    Case(
        "truncated-vectors-h5",
        "artifacts",
        "E302",
        damaged("encode/vectors.h5", then_train(truncate), ["train"], "train"),
    ),
    Case(
        "nan-in-vectors-h5",
        "artifacts",
        "E302",
        damaged("encode/vectors.h5", then_train(nan_vectors), ["train"], "train", ["NaN"]),
    ),
    Case(
        "checkpoint-of-another-architecture-ignored",
        "artifacts",
        None,
        damaged(
            "train/checkpoints/last.pt",
            checkpoint_of_the_finished_run,
            ["train", "--set", "train.name_hidden=24"],
            "train",
            check=checkpoint_ignored,
        ),
    ),
    Case(
        "garbled-checkpoint",
        "artifacts",
        "E402",
        damaged("train/checkpoints/last.pt", drop_manifest_and_garble, ["train"], "train", ["checkpoint"]),
    ),
    Case(
        "truncated-model-pt",
        "artifacts",
        "E402",
        damaged("train/model.pt", truncate, ["evaluate", "--force"], "evaluate"),
    ),
    Case(
        "garbled-model-pt",
        "artifacts",
        "E402",
        damaged(
            "train/model.pt", lambda path: path.write_bytes(b"\x80\x04garbage"), ["evaluate", "--force"], "evaluate"
        ),
    ),
    Case(
        "manifest-a-json-list",
        "artifacts",
        "E402",
        damaged("encode/manifest.json", manifest_as("[1, 2]\n"), ["train"], "train"),
    ),
    Case(
        "manifest-without-key",
        "artifacts",
        "E402",
        damaged("triage/manifest.json", manifest_as('{"outputs": []}\n'), ["encode"], "encode"),
    ),
    Case(
        "manifest-truncated",
        "artifacts",
        "E402",
        damaged("train/manifest.json", lambda path: truncate(path), ["evaluate"], "evaluate"),
    ),
    # writing
    Case("disk-full-while-writing", "disk full", "E406", disk_full),
    Case("disk-full-at-rename-keeps-old-output", "disk full", "E406", rename_fails),
    # issue 13: mentions
    Case(
        "mention-blank-string",
        "mentions",
        "E103",
        mentions_case(
            lambda: [{**record("x-1", "x-d1", "Paris is big.", " "), "mention": " "}],
            [extra_line(), "'mention'", "non-blank"],
        ),
    ),
    Case(
        "mention-no-break-space",
        "mentions",
        "E103",
        mentions_case(lambda: [record("x-1", "x-d1", "Paris\u00a0is big.", "\u00a0")], [extra_line(), "'mention'"]),
    ),
    Case(
        "mention-empty-string-empty-span",
        "mentions",
        "E103",
        mentions_case(
            lambda: [{**record("x-1", "x-d1", "Paris is big today.", "Paris"), "start": 5, "end": 5, "mention": ""}],
            [extra_line(), "'mention'", "non-blank"],
        ),
    ),
    Case(  # replay: polars raised a TypeError for an offset no Int64 column holds
        "mention-offset-past-int64",
        "mentions",
        "E103",
        mentions_case(
            lambda: [{**record("x-1", "x-d1", "Paris is big today.", "Paris"), "start": 2**63, "end": 2**63 + 5}],
            [extra_line(), "'start'", "from -9223372036854775808 to 9223372036854775807"],
        ),
    ),
    Case(
        "mention-empty-span",
        "mentions",
        "E114",
        mentions_case(
            lambda: [{**record("x-1", "x-d1", "Paris is big today.", "Paris"), "start": 5, "end": 5}],
            [extra_line(), "5-5", "cover no character", "empty span"],
        ),
    ),
    Case(
        "mention-punctuation-only-accepted",
        "mentions",
        None,
        mentions_case(
            lambda: [
                record("x-1", "x-d1", "He said -- nothing.", "--"),
                record("x-2", "x-d2", "Then ... silence.", "..."),
            ],
            [],
            no_exact_match(["x-1", "x-2"], "kb.jsonl: skipped 1 empty or blank alias(es) (first: KB id 'Q9')"),
            kb=TINY_KB + [{"kb_id": "Q9", "name": "--", "aliases": [""]}],
        ),
    ),
    Case(
        "mention-unknown-split",
        "mentions",
        "E103",
        mentions_case(
            lambda: [record("x-1", "x-d1", "Paris is big.", "Paris", split="dev2")],
            [extra_line(), "'split'", "'dev2'", "'train', 'dev' or 'test'"],
        ),
    ),
    Case(
        "mention-same-span-twice",
        "mentions",
        "E115",
        mentions_case(
            lambda: [{**tiny_mention_records()[6], "id": "en-7-copy", "gold_kb_id": "NIL"}],
            [extra_line(), "'en-7-copy'", "'en-7' on line 7", "en-d4:4-18", "gold 'Q5' there, 'NIL' here"],
        ),
    ),
    Case(
        "mention-same-span-renamed-duplicate-id",
        "mentions",
        "E115",
        mentions_case(
            lambda: [tiny_mention_records()[6]],
            [extra_line(), "'en-7' on line 7"],
            inputs={"rename_duplicate_ids": True},
        ),
    ),
    Case(
        "mention-doc-id-with-spaces",
        "mentions",
        "E116",
        mentions_case(
            lambda: [
                record("x-1", "AFP 2015 en-d08", "Paris is big.", "Paris"),
                record("x-2", "AFP 2015 en-d08", "Paris is big.", "big"),
            ],
            [extra_line(), "'AFP 2015 en-d08'", "whitespace", "1 more line(s)"],
        ),
    ),
    Case(
        "mention-id-with-tab",
        "mentions",
        "E116",
        mentions_case(lambda: [record("x\t1", "x-d1", "Paris is big.", "Paris")], [extra_line(), "tab or line break"]),
    ),
    Case(
        "mention-document-with-two-languages",
        "mentions",
        "E117",
        mentions_case(
            lambda: [record("x-1", "en-d4", "Nueva York es grande.", "Nueva York", lang="es")],
            [extra_line(), "'en-d4'", "'es'", "line 7 says 'en'"],
        ),
    ),
    Case(
        "mention-discontinuous-fragments-accepted",
        "mentions",
        None,
        mentions_case(
            lambda: [
                discontinuous(fragments=[[CHAMPION, CHAMPION + len("чемпион")], [EUROPE, EUROPE + len("Европы")]])
            ],
            [],
            covering_span_kept,
        ),
    ),
    Case(
        "mention-discontinuous-without-fragments",
        "mentions",
        "E106",
        mentions_case(
            lambda: [discontinuous(), {**discontinuous(), "id": "ru-10", "doc_id": "ru-d10"}],
            [extra_line(), "'чемпион Европы'", "fragments", "1 more line(s) like it"],
        ),
    ),
    Case(
        "mention-overlapping-fragments",
        "mentions",
        "E118",
        mentions_case(
            lambda: [discontinuous(fragments=[[CHAMPION, EUROPE], [EUROPE - 2, EUROPE + len("Европы")]])],
            [extra_line(), "'ru-9'", "starts before the previous one ends"],
        ),
    ),
    Case(
        "mention-nfd-string-nfc-text",
        "mentions",
        "E106",
        mentions_case(
            lambda: [{**record("x-1", "x-d1", "Bogotá es grande.", "Bogotá"), "mention": "Bogota\u0301"}],
            [extra_line(), "differ only by Unicode normalisation"],
        ),
    ),
    Case("mention-longer-than-context-window-accepted", "mentions", None, long_mention),
    # issue 13: KB
    Case("kb-blank-name", "KB", "E103", kb_case(lambda: kb_with(3, name="  "), ["kb.jsonl:3:", "'name'", "non-blank"])),
    Case("kb-empty-kb-id", "KB", "E103", kb_case(lambda: kb_with(2, kb_id=""), ["kb.jsonl:2:", "'kb_id'"])),
    Case("kb-id-with-line-break", "KB", "E116", kb_case(lambda: kb_with(2, kb_id="Q\n2"), ["kb.jsonl:2:", "KB id"])),
    Case(
        "kb-no-name-first-alias-taken",
        "KB",
        None,
        mentions_case(
            lambda: [],
            [],
            entity_named("Q3", "Москва", "kb.jsonl: 1 KB record(s) have no name (first on line 3: 'Q3')"),
            kb=[r if r["kb_id"] != "Q3" else {k: v for k, v in r.items() if k != "name"} for r in TINY_KB],
        ),
    ),
    Case(
        "kb-no-name-no-alias",
        "KB",
        "E102",
        kb_case(
            lambda: jsonl_bytes([*TINY_KB[:1], {"kb_id": "Q2", "aliases": [""]}]), ["kb.jsonl:2:", "'name'", "alias"]
        ),
    ),
    # issue 13: TAC
    Case(
        "tab-offsets-shown-as-the-file-says",
        "TAC .tab",
        "E106",
        tac_case(
            tab=(tac_line("Barack Obama").replace("Barack Obama", "Barack Obam", 1) + "\n").encode(),
            names=["train.tab:1:", f"{TAC_DOC.index('Barack')}-{TAC_DOC.index('Barack') + 11} (end inclusive)"],
        ),
    ),
    Case(
        "tab-same-span-twice",
        "TAC .tab",
        "E115",
        tac_case(
            tab=(tac_line("Barack Obama") + "\n" + tac_line("Barack Obama", "NIL1", "EDL_9") + "\n").encode(),
            names=[
                "train.tab:2:",
                "'EDL_1' on line 1",
                f"ENG_NW_0001:{TAC_DOC.index('Barack')}-{TAC_DOC.index('Barack') + 11}",
            ],
        ),
    ),
    Case(
        "tab-eleven-columns-accepted",
        "TAC .tab",
        None,
        tac_case(
            tab=(
                tab_extra_columns(tac_line("Barack Obama"))
                + "\n"
                + tab_extra_columns(tac_line("Paris", "Q4", "EDL_2"))
                + "\n"
            ).encode()
        ),
    ),
    # issue 13: outside candidates
    Case(
        "candidates-repeated-rows-kept-once",
        "outside candidates",
        None,
        candidates_case(
            "mention_id,kb_id,score\nen-8,Q1,0.8\nen-8,Q1,0.8\nen-8,Q1,0.5\n",
            [],
            external_kept_once,
            triage={"use_dense": False},
        ),
    ),
    Case(
        "candidates-unknown-kb-id-warned",
        "outside candidates",
        None,
        candidates_case("mention_id,kb_id,score\nen-1,Q1,0.9\nen-1,Q404,0.8\n", [], unknown_kb_warned),
    ),
    # issue 13: scoring
    Case("score-mention-sets-differ", "scoring", "E601", mismatched_tab_files),
]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("bad-inputs-base")
    result = CliRunner().invoke(main, ["--quiet", "run", "--config", str(write_run_config(folder, tiny_encoder_dir))])
    assert result.exit_code == 0, result.output
    return folder / "run"


def snapshot(run_dir: Path) -> dict[str, str]:
    if not run_dir.is_dir():
        return {}
    return {
        str(p.relative_to(run_dir)): hashlib.blake2b(p.read_bytes(), digest_size=8).hexdigest()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name != ".xel.lock"
    }


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(
    case: Case, tmp_path: Path, tiny_encoder_dir: Path, base_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = Env(tmp_path, tiny_encoder_dir, base_run, monkeypatch)
    invocation = case.build(env)
    run_dir = (
        Path(invocation.args[invocation.args.index("--run-dir") + 1])
        if "--run-dir" in invocation.args
        else tmp_path / "run"
    )
    before = snapshot(run_dir)
    quiet = ["--quiet"] if case.code else []  # accepted cases may check info lines
    result = CliRunner().invoke(main, [*quiet, *invocation.args])
    monkeypatch.undo()
    output = result.output
    assert "Traceback" not in output
    if case.code is None:
        assert result.exit_code == 0, output + repr(result.exception)
    else:
        assert result.exit_code == 2, output + repr(result.exception)
        # Coded warnings of the stages that ran before the failure (the tiny run's dev split is
        # too small for trusted NIL thresholds: W603-W605) may precede the one error line.
        lines = [line for line in output.strip().splitlines() if not re.match(r"WARNING \S+: \[W\d{3}\] ", line)]
        assert len(lines) == 1 and lines[0].startswith(f"Error: [{case.code}] "), output
        for name in invocation.names:
            assert name in lines[0], (name, lines[0])
        # Nothing written before is lost: every stage checks what it reads before it removes its old
        # manifest, so that goes only when writing itself fails (a full disk); and the run folder's
        # own config.json records the latest command's config.
        after = snapshot(run_dir)
        may_go = {"config.json", *([f"{invocation.stage}/manifest.json"] if case.kind == "disk full" else [])}
        kept = {name: digest for name, digest in before.items() if name not in may_go}
        assert {name: after.get(name) for name in kept} == kept
    assert not list(run_dir.rglob("*.tmp")), "a temporary file was left behind"
    if invocation.check:
        invocation.check(run_dir, output)


def test_catalogue_has_the_kinds_the_issue_asks_for() -> None:
    kinds = {case.kind for case in CASES}
    assert {
        "KB",
        "docs",
        "mentions",
        "TAC .tab",
        "TAC source",
        "outside candidates",
        "config",
        "artifacts",
        "disk full",
    } <= kinds
    assert len({case.id for case in CASES}) == len(CASES)

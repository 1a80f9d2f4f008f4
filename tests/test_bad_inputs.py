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

- mentions (tests/test_inputs.py): bad JSON line and a line that is not an object
  (E101), missing field (E102), four wrong types (E103), neither offsets nor doc
  (E111), duplicate mention id (E104), three offsets outside the text and doc offsets
  outside the doc (E105), offsets not covering the mention (E106), empty and all-blank
  file (E107), missing file (E108), unknown doc (E109), non-UTF-8 (E110), BOM + CRLF
  accepted; through the CLI: E106 with file and line.
- docs (tests/test_inputs.py): duplicate doc id (E104).
- KB (tests/test_inputs.py, tests/test_cli.py): duplicate kb_id (E104, no file left),
  alias object without text (E103), missing name through the CLI (E102).
- TAC (tests/test_inputs.py): .tab offsets missing the mention (E106), missing source
  document (E108).
- config (tests/test_config.py): unknown key and top-level key (E201), unknown section
  in the file and in --set (E204), invalid TOML (E202), missing file (E108), fourteen
  bad values (E203), no KB (E203), six malformed --set overrides, out-of-range --set.
- artifacts (tests/test_cli.py): a stage before its upstream (E401), a manifest that is
  not JSON (E402).
- name pairs (tests/test_name_matching.py): too few and too many columns, an empty
  name in .tsv and .jsonl (E113), empty and header-only file (E107), non-UTF-8 (E110),
  missing field, wrong type and bad JSON in .jsonl (E102, E103, E101); through the CLI:
  E113 with file and line, a missing file (E108), a name_pairs.h5 of another pairs file
  (E407); BOM + CRLF + header accepted.
- `xel-cli link` (tests/test_link.py): a model folder without model.json and with a
  foreign one (E701), model.json not JSON, a changed model.pt, a missing alias table
  (E702), a newer format (E703), an encoder that is gone (E704), a KB lacking an entity
  of the alias table (E705), an unknown mention file type (E707), a .tab without --docs
  (E708), --score without gold (E709), a mention id repeated across chunks (E710), bad
  offsets in a chunk (E105); gold without --score and an unseen language accepted.

Added here: the kinds above lacked non-UTF-8 and BOM/CRLF for KB and docs, empty and
blank KB, malformed alias lists, unknown-token mentions, bad .tab lines and source
documents, outside candidate files, config types and ranges through the CLI, damaged
Parquet/HDF5/checkpoints/models/manifests (Parquet also with an intact footer and
damaged data pages, including damage that makes polars panic), and a full disk.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

import pipeline.io
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
        mentions = write_jsonl(data(env) / "doc-mentions.jsonl", [
            {"id": "m1", "doc_id": "d1", "lang": "en", "mention": "Barack Obama", "doc_start": 0, "doc_end": 12,
             "gold_kb_id": "Q1", "split": "test"}])
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
    records = tiny_mention_records() + [{"id": "th-1", "doc_id": "th-d1", "lang": "th", "text": THAI_TEXT,
                                         "start": 0, "end": len(surface), "mention": surface, "split": "test"}]
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


def tac_case(tab: bytes | None = None, source: bytes | None = None, names: list[str] = ()) -> Callable[[Env], Invocation]:
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

def candidates_case(text: str, names: list[str], check=None) -> Callable[[Env], Invocation]:
    def build(env: Env) -> Invocation:
        path = data(env) / "outside.csv"
        path.write_text(text, encoding="utf-8")
        write_jsonl(data(env) / "mentions.jsonl", tiny_mention_records())
        write_jsonl(data(env) / "kb.jsonl", TINY_KB)
        return Invocation(cli(env.config(inputs={"candidates": path}), "triage"), ["outside.csv", *names], "triage", check)
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


def damaged(relative: str, damage: Callable[[Path], None], command: list[str], stage: str,
            names: list[str] = (), check=None) -> Callable[[Env], Invocation]:
    """Damage `relative` in a copy of the finished base run, then run `command` on it."""
    def build(env: Env) -> Invocation:
        run_dir = env.run_copy()
        damage(run_dir / relative)
        return Invocation([*command, "--config", str(env.config()), "--run-dir", str(run_dir)],
                          [str(run_dir / relative), *names], stage, check)
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
        content[first:first + length] = b"\xff" * length
    path.write_bytes(bytes(content))
    pl.scan_parquet(path).collect_schema()  # the footer still reads: only collecting fails


def pages_that_panic(path: Path) -> None:
    """Damage pages so that polars panics (a Rust assertion) instead of raising an error.

    Such damage depends on the bytes, so it is searched for: six 0xff bytes at each
    offset of each column chunk until reading the file panics.
    """
    from pipeline.io import _stderr_held

    original = path.read_bytes()
    for first, length in column_chunks(path):
        for offset in range(first, first + length - 6):
            content = bytearray(original)
            content[offset:offset + 6] = b"\xff" * 6
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


def drop_manifest_and_garble(path: Path) -> None:
    (path.parent.parent / "manifest.json").unlink()  # so train re-runs and reads its checkpoint
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

    env.monkeypatch.setattr(pipeline.io.os, "replace", replace)
    return Invocation(["evaluate", "--force", "--config", str(env.config()), "--run-dir", str(run_dir)],
                      [str(run_dir / "evaluate" / "scores.parquet"), "cannot write"], "evaluate")


# --- the catalogue -------------------------------------------------------------------------

TRIAGE = ["triage", "--force"]
CASES = [
    # KB
    Case("kb-non-utf8", "KB", "E110", kb_case(lambda: kb_with(3, name="MoscXXw").replace(b"XX", b"\xff"),
                                              ["kb.jsonl:3:"])),
    Case("kb-bom-crlf-accepted", "KB", None,
         lambda env: Invocation(cli(write_kb_bytes(env, bom_crlf(jsonl_bytes(TINY_KB))), "triage"), [], "triage",
                                entities_count(len(TINY_KB)))),
    Case("kb-empty", "KB", "E107", kb_case(lambda: b"", ["file is empty"])),
    Case("kb-all-blank", "KB", "E107", kb_case(lambda: b"\n   \n\t\r\n\n", ["file is empty"])),
    Case("kb-aliases-a-string", "KB", "E103", kb_case(lambda: kb_with(4, aliases="París"), ["kb.jsonl:4:", "aliases"])),
    Case("kb-aliases-an-object", "KB", "E103",
         kb_case(lambda: kb_with(2, aliases={"text": "Merkel"}), ["kb.jsonl:2:", "aliases"])),
    Case("kb-alias-a-number", "KB", "E103", kb_case(lambda: kb_with(5, aliases=[{"text": "ONU"}, 7]),
                                                    ["kb.jsonl:5:", "aliases"])),
    # docs
    Case("docs-non-utf8", "docs", "E110",
         docs_case(jsonl_bytes(DOCS).replace("París".encode(), b"Par\xeds"), ["docs.jsonl:2:"])),
    Case("docs-bom-crlf-accepted", "docs", None, docs_case(bom_crlf(jsonl_bytes(DOCS)), [])),
    Case("docs-all-blank", "docs", "E107", docs_case(b"\r\n \r\n", ["file is empty"])),
    # mentions
    Case("mention-all-unknown-tokens-accepted", "mentions", None, unknown_tokens),
    # TAC .tab
    Case("tab-non-utf8", "TAC .tab", "E110",
         tac_case(tab=(tac_line("Barack Obama") + "\n").encode() + b"gold\tEDL_2\tPar\xeds\tENG_NW_0001:1-2\tQ4\tGPE\tNAM\n",
                  names=["train.tab:2:"])),
    Case("tab-wrong-column-count", "TAC .tab", "E112",
         tac_case(tab=(tac_line("Barack Obama") + "\ngold\tEDL_2\tParis\tQ4\n").encode(), names=["train.tab:2:"])),
    Case("tab-bad-span", "TAC .tab", "E112",
         tac_case(tab=(tac_line("Barack Obama").replace(":", "@") + "\n").encode(), names=["train.tab:1:"])),
    Case("tab-empty", "TAC .tab", "E107", tac_case(tab=b"\n", names=["train.tab", "file is empty"])),
    Case("tab-bom-crlf-accepted", "TAC .tab", None,
         tac_case(tab=bom_crlf((tac_line("Barack Obama") + "\n" + tac_line("Paris", "Q4", "EDL_2") + "\n").encode()))),
    # TAC source documents
    Case("source-non-utf8", "TAC source", "E110",
         tac_case(source=TAC_DOC.encode().replace(b"arrived", b"arriv\xe9"), names=["ENG_NW_0001.xml:3:"])),
    # outside candidates
    Case("candidates-missing-column", "outside candidates", "E112",
         candidates_case("mention_id,kb_id\nen-1,Q1\n", ["outside.csv:1:", "'score'"])),
    Case("candidates-non-numeric-score", "outside candidates", "E112",
         candidates_case("mention_id,kb_id,score\nen-1,Q1,0.9\nen-2,Q2,high\n", ["outside.csv:3:", "numeric score"])),
    Case("candidates-empty-kb-id", "outside candidates", "E112",
         candidates_case("mention_id,kb_id,score\nen-1,,0.9\n", ["outside.csv:2:"])),
    Case("candidates-unknown-mention-ids-warned", "outside candidates", None,
         candidates_case("mention_id,kb_id,score\nen-1,Q1,0.9\nnobody,Q2,0.8\n", [], warned_and_kept)),
    # config
    Case("config-list-given-a-number", "config", "E203", config_case("name_hidden = 16", train={"name_hidden": 16})),
    Case("config-negative-k", "config", "E203", config_case("k = -3", triage={"k": -3})),
    Case("config-string-for-a-number", "config", "E203", config_case("batch_tokens", encoder={"batch_tokens": "lots"})),
    Case("config-unknown-section", "config", "E204", config_case("[trainer]", trainer={"epochs": 3})),
    # damaged artifacts of a finished run
    Case("truncated-candidates-parquet", "artifacts", "E302",
         damaged("triage/candidates.parquet", truncate, ["encode", "--force"], "encode")),
    Case("truncated-mentions-parquet-at-train", "artifacts", "E302",
         damaged("triage/mentions.parquet", then_train(truncate), ["train"], "train")),
    Case("damaged-data-pages-candidates-parquet", "artifacts", "E302",
         damaged("triage/candidates.parquet", damaged_pages, ["encode", "--force"], "encode", ["data page"])),
    Case("damaged-data-pages-entities-parquet-at-evaluate", "artifacts", "E302",
         damaged("triage/entities.parquet", damaged_pages, ["evaluate", "--force"], "evaluate", ["data page"])),
    Case("data-pages-that-panic-polars-mentions-parquet", "artifacts", "E302",
         damaged("triage/mentions.parquet", then_train(pages_that_panic), ["train"], "train", ["data page"])),
    Case("truncated-vectors-h5", "artifacts", "E302",
         damaged("encode/vectors.h5", then_train(truncate), ["train"], "train")),
    Case("nan-in-vectors-h5", "artifacts", "E302",
         damaged("encode/vectors.h5", then_train(nan_vectors), ["train"], "train", ["NaN"])),
    Case("checkpoint-of-another-architecture-ignored", "artifacts", None,
         damaged("train/checkpoints/last.pt", lambda path: None,
                 ["train", "--set", "train.name_hidden=24"], "train", check=checkpoint_ignored)),
    Case("garbled-checkpoint", "artifacts", "E402",
         damaged("train/checkpoints/last.pt", drop_manifest_and_garble, ["train"], "train", ["checkpoint"])),
    Case("truncated-model-pt", "artifacts", "E402",
         damaged("train/model.pt", truncate, ["evaluate", "--force"], "evaluate")),
    Case("garbled-model-pt", "artifacts", "E402",
         damaged("train/model.pt", lambda path: path.write_bytes(b"\x80\x04garbage"), ["evaluate", "--force"], "evaluate")),
    Case("manifest-a-json-list", "artifacts", "E402",
         damaged("encode/manifest.json", manifest_as("[1, 2]\n"), ["train"], "train")),
    Case("manifest-without-key", "artifacts", "E402",
         damaged("triage/manifest.json", manifest_as('{"outputs": []}\n'), ["encode"], "encode")),
    Case("manifest-truncated", "artifacts", "E402",
         damaged("train/manifest.json", lambda path: truncate(path), ["evaluate"], "evaluate")),
    # writing
    Case("disk-full-while-writing", "disk full", "E406", disk_full),
    Case("disk-full-at-rename-keeps-old-output", "disk full", "E406", rename_fails),
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
    return {str(p.relative_to(run_dir)): hashlib.blake2b(p.read_bytes(), digest_size=8).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != ".xel.lock"}


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case: Case, tmp_path: Path, tiny_encoder_dir: Path, base_run: Path,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    env = Env(tmp_path, tiny_encoder_dir, base_run, monkeypatch)
    invocation = case.build(env)
    run_dir = Path(invocation.args[invocation.args.index("--run-dir") + 1]) if "--run-dir" in invocation.args \
        else tmp_path / "run"
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
        lines = output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"Error: [{case.code}] "), output
        for name in invocation.names:
            assert name in lines[0], (name, lines[0])
        # Nothing written before is lost: only the failing stage's manifest may go (and the
        # run folder's own config.json, which records the latest command's config).
        after = snapshot(run_dir)
        kept = {name: digest for name, digest in before.items()
                if name not in (f"{invocation.stage}/manifest.json", "config.json")}
        assert {name: after.get(name) for name in kept} == kept
    assert not list(run_dir.rglob("*.tmp")), "a temporary file was left behind"
    if invocation.check:
        invocation.check(run_dir, output)


def test_catalogue_has_the_kinds_the_issue_asks_for() -> None:
    kinds = {case.kind for case in CASES}
    assert {"KB", "docs", "mentions", "TAC .tab", "TAC source", "outside candidates", "config", "artifacts",
            "disk full"} <= kinds
    assert len({case.id for case in CASES}) == len(CASES)

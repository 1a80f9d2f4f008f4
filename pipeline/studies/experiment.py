"""experiment: the paper's Tables 1-3 on one run's data, averaged over seeds.

- Table 1, per language L: NN (the nearest-neighbour baseline), Mono (trained on L),
  MultiDS (every language, down-sampled to L's size), Multi (every language) and
  Multi+Or (the Multi model with oracle triage: the gold always among the candidates).
- Table 2, zero-shot: a model trained on each language, scored on each language (the
  diagonal is Table 1's Mono).
- Table 3, feature ablations of the model trained on `ablation_language` (English):
  name; name + context; name + context + type (= Table 2's English row); and, with
  `triage_row`, + triage (our triage-evidence feature, not the paper's).
- Table 4, with `reader_row` (beyond the paper, docs/reader.md): per language, the Multi
  ranker alone (Table 1's Multi) and with the reader, which a sub-run per seed fine-tunes
  on that seed's Multi ranker (its train/ folder linked, as Multi+Or's is) and which then
  decides link and NIL (`evaluate.nil_method = "reader"`). The paper's models never run
  the reader, whatever `[rerank] enabled` says.

Every cell is the KBP2010 micro-average on the run's evaluation split (test), NIL
thresholds tuned on dev, as mean ± standard deviation (n - 1) over `seeds` training
seeds (the config's seed, +1, +2, ...). Models use the paper's features (name,
context, type) unless a Table 3 row says otherwise.

How the work is shared. triage and encode run once, in the run folder. Each distinct
model is a sub-run (`pipeline.studies.subrun`) in `<run>/experiment/<model>/seed-<s>/` whose
triage/ and encode/ link to the run's, and each is trained once however many cells
read it: one Mono-en model per seed serves Table 1 (Mono, en), Table 2's en row and
Table 3's paper-features row, because every sub-run is evaluated on every language
(a language's micro-average does not depend on which other languages are scored).
The NN baseline trains nothing and draws nothing at random, so it runs once. Multi+Or
needs triage with oracle candidates: that triage runs once in
`<run>/experiment/oracle/`, and its sub-runs link it, the run's encode (the oracle adds
only gold entities, which encode always covers; checked) and the Multi model of the
same seed (its train/ folder): oracle triage changes what is scored, not the model,
so no extra encode and no extra training.

Resuming. Sub-runs are visited seed by seed (every model of the first seed, then the
second, ...), so a stopped experiment has whole first seeds. A finished sub-run skips
itself through its stage manifests; an interrupted training resumes from its
checkpoint. `cells.parquet` and `tables.md` are rewritten after every sub-run from the
finished ones, with missing cells marked, so they are current even while it runs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch

from pipeline.core.config import RunConfig, check_setting, language_settings
from pipeline.core.errors import CacheError, ConfigError
from pipeline.core.io import write_parquet_atomic, write_text_atomic
from pipeline.core.languages import is_language_tag, normalise_language
from pipeline.core.manifest import StageResult
from pipeline.core.progress import track
from pipeline.formats import triage_tables
from pipeline.formats.vectors import VECTORS, read_vector_ids
from pipeline.stages import run_stage
from pipeline.studies import subrun

logger = logging.getLogger(__name__)

STAGE = "experiment"
PAPER_FEATURES = ("name", "context", "type")
ORACLE_FOLDER = "oracle"
TABLE_1_COLUMNS = ("NN", "Mono", "MultiDS", "Multi", "Multi+Or")
TABLE_4_ROWS = ("ranker", "ranker + reader")
# Tables whose columns are languages (`--only 2:es`).
LANGUAGE_TABLES = (2, 3, 4)


@dataclass(frozen=True)
class ExperimentConfig:
    """Which tables to fill and how many seeds."""

    seeds: int = 3
    # Languages of the tables; empty = every language with training mentions.
    languages: tuple[str, ...] = ()
    # Table 3's training language (the paper's English).
    ablation_language: str = "en"
    # Add Table 3's "+ triage" row (our triage-evidence feature).
    triage_row: bool = True
    # Add Table 4: the Multi ranker alone and with the reader ([rerank] settings), per language.
    reader_row: bool = False
    # Fill only these cells: (table, column or None for the whole table); empty = every table.
    # E.g. ((1, "Multi"),) trains one model per seed: the seed spread of the Multi setting.
    only: tuple[tuple[int, str | None], ...] = ()

    def __post_init__(self) -> None:
        check_setting("experiment", "seeds", self.seeds, 1 <= self.seeds <= 100, "must be between 1 and 100")
        # Read as the inputs' languages are (en-US -> en), so a table language matches the mentions'.
        # dict.fromkeys: EN and en are one table language, listed once.
        object.__setattr__(
            self, "languages", tuple(dict.fromkeys(language_settings("experiment", "languages", self.languages)))
        )
        object.__setattr__(
            self, "ablation_language", language_settings("experiment", "ablation_language", [self.ablation_language])[0]
        )
        # Tables 2-4 have languages as columns: `--only 2:ES` is Table 2's es column.
        object.__setattr__(
            self,
            "only",
            tuple(
                (table, normalise_language(column) if table in LANGUAGE_TABLES and is_language_tag(column) else column)
                for table, column in self.only
            ),
        )
        for table, column in self.only:
            check_setting(
                "experiment",
                "only",
                f"{table}" + (f":{column}" if column else ""),
                table in (1, 2, 3, 4) and not (table == 1 and column is not None and column not in TABLE_1_COLUMNS),
                f"must be 1, 2, 3 or 4, optionally :COLUMN (Table 1: {', '.join(TABLE_1_COLUMNS)}; "
                "Tables 2-4: a language)",
            )

    def wants(self, cell: "Cell") -> bool:
        """Whether `only` keeps this cell (it keeps every cell when empty)."""
        return not self.only or any(cell.selected_by(entry) for entry in self.only)


def parse_languages(text: str | None) -> tuple[str, ...]:
    """`--languages` L1,L2,... -> (L1, L2, ...); None (not given) is () (every language); E203 for an
    empty entry (`''`, `en,,es`), a slip rather than "every language" (`ExperimentConfig` checks the tags)."""
    if text is None:
        return ()
    codes = tuple(code.strip() for code in text.split(","))
    if not all(codes):
        raise ConfigError(
            "E203",
            where="--languages",
            field="languages",
            value=text,
            reason="has an empty entry; give L1,L2,... (leave out --languages for every language)",
        )
    return codes


def parse_only(texts: tuple[str, ...]) -> tuple[tuple[int, str | None], ...]:
    """`--only` values TABLE[:COLUMN] -> ((table, column or None), ...); E203 when a table is not a number
    (`ExperimentConfig` checks the numbers and Table 1's columns)."""
    cells = []
    for text in texts:
        table, colon, column = text.partition(":")
        if not table.strip().isdigit() or (colon and not column.strip()):
            raise ConfigError(
                "E203",
                where="--only",
                field="only",
                value=text,
                reason="must be TABLE or TABLE:COLUMN (one of each per --only), e.g. 1:Multi or 2",
            )
        cells.append((int(table), column.strip() or None))
    return tuple(cells)


@dataclass(frozen=True)
class Model:
    """One model of the experiment: a trained ranker, or the NN baseline. Seeds are separate sub-runs."""

    train_languages: tuple[str, ...] = ()
    downsample_to: str = ""
    features: tuple[str, ...] = PAPER_FEATURES
    baseline: str = "none"
    # Scored with oracle triage; the model itself is the same model without the oracle.
    oracle: bool = False
    # The reader fine-tuned over this model's ranker, deciding link and NIL (Table 4).
    reader: bool = False

    @property
    def folder(self) -> str:
        """Sub-run folder name: what sets this model apart, e.g. mono-en, multids-es, multi-oracle, mono-en-name."""
        if self.baseline != "none":
            name = self.baseline
        elif self.downsample_to:
            name = f"multids-{self.downsample_to}"
        elif self.train_languages:
            name = "mono-" + "-".join(self.train_languages)
        else:
            name = "multi"
        if self.features != PAPER_FEATURES and self.baseline == "none":
            name += "-" + "-".join(self.features)
        return name + ("-oracle" if self.oracle else "") + ("-reader" if self.reader else "")

    @property
    def seeded(self) -> bool:
        """The NN baseline has nothing random: one run stands for every seed."""
        return self.baseline == "none"

    @property
    def linked(self) -> bool:
        """Whether this model scores another sub-run's ranker (`trained()`) instead of training its own."""
        return self.oracle or self.reader

    def trained(self) -> Model:
        """The model whose ranker weights this one scores with: itself, or the same model without the oracle
        and the reader."""
        return dataclasses.replace(self, oracle=False, reader=False)


@dataclass(frozen=True)
class Cell:
    """One table cell: `model` scored on `language`."""

    table: int
    row: str
    column: str
    model: Model
    language: str

    def selected_by(self, entry: tuple[int, str | None]) -> bool:
        """Whether an `ExperimentConfig.only` entry (table, column or None for the whole table) names this cell."""
        table, column = entry
        return self.table == table and column in (None, self.column)


def plan(languages: list[str], experiment: ExperimentConfig) -> list[Cell]:
    """Every cell of Tables 1-3, in table order."""
    cells = []
    for language in languages:
        models = (
            Model(baseline="nn"),
            Model(train_languages=(language,)),
            Model(downsample_to=language),
            Model(),
            Model(oracle=True),
        )
        cells += [Cell(1, language, column, model, language) for column, model in zip(TABLE_1_COLUMNS, models)]
    for trained_on in languages:
        cells += [Cell(2, trained_on, scored, Model(train_languages=(trained_on,)), scored) for scored in languages]
    feature_rows = [("name",), ("name", "context"), PAPER_FEATURES] + (
        [(*PAPER_FEATURES, "triage")] if experiment.triage_row else []
    )
    for features in feature_rows:
        row = " + ".join(features)
        model = Model(train_languages=(experiment.ablation_language,), features=features)
        cells += [Cell(3, row, scored, model, scored) for scored in languages]
    if experiment.reader_row:
        for row, model in zip(TABLE_4_ROWS, (Model(), Model(reader=True))):
            cells += [Cell(4, row, scored, model, scored) for scored in languages]
    return [cell for cell in cells if experiment.wants(cell)]


def check_only(languages: list[str], experiment: ExperimentConfig) -> None:
    """E203 for an `only` entry that selects no cell (e.g. 2:Multi: Table 2's columns are languages)."""
    every = plan(languages, dataclasses.replace(experiment, only=()))
    for table, column in experiment.only:
        check_setting(
            "--only",
            "only",
            f"{table}" + (f":{column}" if column else ""),
            table != 4 or experiment.reader_row,
            "Table 4 is the reader's: add --reader-row (or set rerank.enabled = true)",
        )
        if not any(cell.selected_by((table, column)) for cell in every):
            columns = sorted({cell.column for cell in every if cell.table == table}, key=str)
            raise ConfigError(
                "E203",
                where="--only",
                field="only",
                value=f"{table}:{column}",
                reason=f"Table {table} has no column {column!r}; its columns are {', '.join(columns)}",
            )


def sub_runs(cells: list[Cell], seeds: list[int]) -> list[tuple[Model, int]]:
    """Distinct (model, seed) pairs, seed-major, each model in order of first use; unseeded models once.

    A Multi+Or or Multi + reader model comes after its Multi model in every seed, which its
    sub-run links to.
    """
    # A Multi+Or or reader cell scores the Multi model's weights: that model is planned (and trained)
    # too, first, even when `--only` asks for no Multi cell.
    models = list(
        dict.fromkeys(
            model for cell in cells for model in ([cell.model.trained()] if cell.model.linked else []) + [cell.model]
        )
    )
    pairs = [(model, seeds[0]) for model in models if not model.seeded]
    pairs += [(model, seed) for seed in seeds for model in models if model.seeded]
    return pairs


def sub_run_dir(run_dir: Path, model: Model, seed: int) -> Path:
    return run_dir / STAGE / model.folder / (f"seed-{seed}" if model.seeded else "once")


def training_languages(triage_dir: Path) -> list[str]:
    """Languages with training-split mentions, sorted."""
    mentions = triage_tables.scan(triage_dir, triage_tables.MENTIONS)
    return sorted(
        mentions.filter(pl.col("split") == "train").select(pl.col("lang").unique()).collect()["lang"].to_list()
    )


def oracle_triage(config: RunConfig) -> Path:
    """Run triage with oracle candidates once in <run>/experiment/oracle/; its folder.

    Checks that every oracle candidate was encoded by the run's encode (E411 otherwise),
    since the Multi+Or sub-runs reuse those vectors.
    """
    oracle_config = dataclasses.replace(
        config,
        run_dir=config.run_dir / STAGE / ORACLE_FOLDER,
        name=f"{config.name}-oracle",
        triage=dataclasses.replace(config.triage, oracle=True),
        train=dataclasses.replace(config.train, features=PAPER_FEATURES),
    )
    run_stage("triage", oracle_config, check_upstream=False)  # triage reads no stage
    triage_dir = oracle_config.stage_dir("triage")
    vectors = config.stage_dir("encode") / VECTORS
    encoded = pl.DataFrame({"kb_id": read_vector_ids(vectors, "entities")}, schema={"kb_id": pl.String})
    candidates = triage_tables.scan(triage_dir, triage_tables.CANDIDATES).select("kb_id")
    missing = candidates.unique().collect().join(encoded, on="kb_id", how="anti")
    if missing.height:
        raise CacheError(
            "E411",
            path=vectors,
            detail=f"lacks {missing.height} entity(ies) of the oracle triage "
            f"(first {missing['kb_id'][0]!r}); re-run `xel-cli encode --force`",
        )
    return triage_dir


def cell_table(cells: list[Cell], results: pl.DataFrame) -> pl.DataFrame:
    """One row per cell and seed that has a result: table, row, column, seed, micro_average."""
    rows = [
        {
            "table": cell.table,
            "row": cell.row,
            "column": cell.column,
            "folder": cell.model.folder,
            "language": cell.language,
        }
        for cell in cells
    ]
    frame = pl.DataFrame(
        rows,
        schema={"table": pl.Int64, "row": pl.String, "column": pl.String, "folder": pl.String, "language": pl.String},
    )
    return frame.join(results, on=["folder", "language"], how="inner").sort("table", "row", "column", "seed")


def format_cell(values: list[float], expected: int) -> str:
    """mean ± sample standard deviation; (k/n) when only k of n seeds have finished; — when none."""
    if not values:
        return "—"
    mean = sum(values) / len(values)
    text = f"{mean:.3f}"
    if len(values) > 1:
        std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
        text += f" ± {std:.3f}"
    if len(values) < expected:
        text += f" ({len(values)}/{expected})"
    return text


@dataclass(frozen=True)
class Study:
    """One experiment as planned: the run's config, the experiment's settings, the table languages, the
    training seeds and the cells to fill (`plan`); `make_study` makes it."""

    config: RunConfig
    experiment: ExperimentConfig
    languages: list[str]
    seeds: list[int]
    cells: list[Cell]

    @property
    def out_dir(self) -> Path:
        """`<run>/experiment/`: cells.parquet, tables.md and the sub-runs."""
        return self.config.run_dir / STAGE


def make_study(config: RunConfig, experiment: ExperimentConfig) -> Study:
    """The study of a run whose triage has run: its table languages (`_table_languages`, E203), seeds (the
    config's train seed, +1, +2, ...) and cells."""
    languages = _table_languages(config, experiment)
    seeds = [config.train.seed + offset for offset in range(experiment.seeds)]
    return Study(config, experiment, languages, seeds, plan(languages, experiment))


def _table_languages(config: RunConfig, experiment: ExperimentConfig) -> list[str]:
    """The tables' languages: `experiment.languages`, or every language with training mentions; E203 for
    one without training mentions, an ablation language not among them, or an `only` that selects nothing."""
    known = training_languages(config.stage_dir("triage"))
    languages = list(experiment.languages) or known
    check_setting(
        "experiment",
        "ablation_language",
        experiment.ablation_language,
        experiment.ablation_language in languages,
        f"must be one of the table languages {languages}",
    )
    unknown = sorted(set(languages) - set(known))
    check_setting(
        "--languages",
        "languages",
        ",".join(unknown),
        not unknown,
        f"no training mentions in that language; the run's are {', '.join(known)}",
    )
    check_only(languages, experiment)
    return languages


def tables_markdown(study: Study, finished: pl.DataFrame, seconds: float) -> str:
    """tables.md: the paper's three tables (and Table 4 with the reader) from the cells that have finished
    (`cell_table`), with a preamble that says what each value is and what ran it; `seconds`: the sub-runs'
    time in this invocation."""
    values: dict[tuple[int, str, str], list[float]] = {}
    for row in finished.iter_rows(named=True):
        values.setdefault((row["table"], row["row"], row["column"]), []).append(row["micro_average"])
    expected = {(c.table, c.row, c.column): len(study.seeds) if c.model.seeded else 1 for c in study.cells}

    def table(number: int, corner: str, rows: list[str], columns: list[str]) -> list[str]:
        return _table_lines(number, corner, rows, columns, values, expected)

    languages = study.languages
    feature_rows = list(dict.fromkeys(c.row for c in study.cells if c.table == 3))
    lines = [
        *_preamble(study, sum(len(v) for v in values.values()), seconds),
        "",
        "## Table 1: settings per language",
        "",
        *table(1, "language", languages, list(TABLE_1_COLUMNS)),
        "",
        "## Table 2: zero-shot (row: trained on; column: scored on)",
        "",
        *table(2, "trained on", languages, languages),
        "",
        f"## Table 3: feature ablations, trained on {study.experiment.ablation_language}",
        "",
        *table(3, "features", feature_rows, languages),
        "",
    ]
    if study.experiment.reader_row:
        lines += ["## Table 4: the reader (beyond the paper)", "", *_reader_note(study.config), ""]
        lines += [*table(4, "Multi", list(TABLE_4_ROWS), languages), ""]
    return "\n".join(lines)


def _table_lines(
    number: int,
    corner: str,
    rows: list[str],
    columns: list[str],
    values: dict[tuple[int, str, str], list[float]],
    expected: dict[tuple[int, str, str], int],
) -> list[str]:
    """Table `number` in Markdown: `values` (the finished seeds' micro-averages) of its planned cells, each
    out of the `expected` seed count (`format_cell`). Only planned rows and columns (`--only` may leave out
    some); a cell not planned is blank."""
    rows = [row for row in rows if any((number, row, column) in expected for column in columns)]
    columns = [column for column in columns if any((number, row, column) in expected for row in rows)]
    if not rows:
        return ["(not asked for: see --only)"]
    lines = ["| " + " | ".join([corner, *columns]) + " |", "|" + " --- |" * (len(columns) + 1)]
    for row in rows:
        cells = [
            format_cell(values.get((number, row, column), []), expected[(number, row, column)])
            if (number, row, column) in expected
            else ""
            for column in columns
        ]
        lines.append("| " + " | ".join([row, *cells]) + " |")
    return lines


def _preamble(study: Study, done: int, seconds: float) -> list[str]:
    """tables.md's title and what its values are: measure, split, NIL method (of the sub-runs without the
    reader), seeds, the ranker's settings, the machine, how many values there are and the sub-runs' time in
    this invocation."""
    config, seeds, train = study.config, study.seeds, study.config.train
    return [
        f"# The paper's tables on {config.name}",
        "",
        f"KBP2010 micro-average on the {config.evaluate.eval_split} split, NIL decided as evaluate.nil_method = "
        f'"{_ranker_nil_method(config)}" says, fitted on {config.evaluate.tune_split}; '
        f"mean ± standard deviation over {len(seeds)} training seed(s) "
        f"({', '.join(map(str, seeds))}); (k/n): only k of n seeds finished; —: not finished. "
        f"Features name, context, type (the paper's) unless a Table 3 row says otherwise.",
        f"Ranker: name {list(train.name_hidden)}, context {list(train.context_hidden)}, type {list(train.type_hidden)}, "
        f"final {list(train.final_hidden)}, dropout {train.dropout}, lr {train.learning_rate}, "
        f"epochs ≤ {train.epochs}, patience {train.patience}, eval every {train.eval_every}. "
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}; "
        f"{done} cell value(s); sub-run time this invocation {seconds / 60:.1f} min.",
    ]


def _reader_note(config: RunConfig) -> list[str]:
    """What Table 4's rows are, with the reader's settings."""
    rerank = config.rerank
    return [
        "The Multi ranker alone (Table 1's Multi), and with the reader fine-tuned over it (one per seed, "
        f"seeded {rerank.seed} + the seed's offset), the reader deciding link and NIL "
        f'(evaluate.nil_method = "reader"). Reader: {rerank.encoder or config.encoder.name}, {rerank.form}, '
        f"top {rerank.top_k} of the {rerank.candidates}'s candidates, {rerank.max_seq_tokens} sub-words "
        f"({rerank.max_context_tokens} of context), {rerank.epochs} epoch(s), lr {rerank.learning_rate}, "
        f"batch {rerank.batch_mentions} × {rerank.grad_accumulation}, NIL-hidden share {rerank.nil_hidden_share}, "
        f"{rerank.encoder_layers or 'all'} encoder layer(s) kept, {rerank.freeze_layers} frozen.",
    ]


def run(config: RunConfig, experiment: ExperimentConfig) -> StageResult:
    """Triage and encode once, then every sub-run (skipping finished ones), then the tables."""
    started = time.time()
    shared = subrun.run_shared_stages(config)
    study = make_study(config, experiment)
    pairs = sub_runs(study.cells, study.seeds)
    assert pairs, "plan() always has Table 1's cells"
    oracle_dir = oracle_triage(config) if any(model.oracle for model, _ in pairs) else None
    results: list[dict] = []
    trained = 0
    seconds = 0.0
    for model, seed in track(pairs, "experiment", "sub-runs", postfix=lambda pair: f"{pair[0].folder} seed {pair[1]}"):
        sub_config = _sub_run_config(study, model, seed, shared, oracle_dir)
        outcome = subrun.train_and_evaluate(sub_config, train_too=not model.linked)
        trained += outcome["trained"]
        seconds += outcome["seconds"]
        results += _sub_run_results(study, model, seed, outcome)
        # Rewritten after every sub-run, so a killed experiment leaves its partial tables.
        finished = write_outputs(study, results, seconds)
    return StageResult(
        STAGE,
        study.out_dir,
        skipped=False,
        seconds=time.time() - started,
        counts={"sub_runs": len(pairs), "trained": trained, "cell_values": finished.height},
        summary={"tables": study.out_dir / "tables.md"},
    )


def _ranker_nil_method(config: RunConfig) -> str:
    """The NIL method of the sub-runs without the reader: the config's, with "reader" read as "auto"."""
    return "auto" if config.evaluate.nil_method == "reader" else config.evaluate.nil_method


def _sub_run_config(
    study: Study, model: Model, seed: int, shared: dict[str, Path], oracle_dir: Path | None
) -> RunConfig:
    """The config of `model`'s sub-run with `seed` (`subrun.prepare`): scored on every language, linked to the
    run's triage and encode (`shared`). A linked model (Multi+Or, the reader) links the same seed's trained
    model's train/ folder, the oracle its own triage too; only the reader's sub-run has the reader on, with
    the seed's offset added to its own seed."""
    config = study.config
    sources = dict(shared)
    if model.linked:
        sources["train"] = sub_run_dir(config.run_dir, model.trained(), seed) / "train"
    sections = {
        "evaluate": dataclasses.replace(
            config.evaluate, languages=(), nil_method="reader" if model.reader else _ranker_nil_method(config)
        ),
        "train": dataclasses.replace(
            config.train,
            train_languages=model.train_languages,
            downsample_to_language=model.downsample_to,
            features=model.features,
            baseline=model.baseline,
            seed=seed,
        ),
        "rerank": dataclasses.replace(
            config.rerank, enabled=model.reader, seed=config.rerank.seed + seed - config.train.seed
        ),
    }
    if model.oracle:
        sources["triage"] = oracle_dir
        sections["triage"] = dataclasses.replace(config.triage, oracle=True)  # so config.json says what it links
    return subrun.prepare(config, sub_run_dir(config.run_dir, model, seed), sources, **sections)


def _sub_run_results(study: Study, model: Model, seed: int, outcome: dict) -> list[dict]:
    """`RESULTS_SCHEMA` rows of a sub-run's `outcome` (`subrun.train_and_evaluate`): its micro-average on
    each table language that has one (logged)."""
    scores = {language: subrun.micro_average(outcome["metrics"], language) for language in study.languages}
    scores = {language: score for language, score in scores.items() if score is not None}
    logger.info(
        "%s seed %d: micro-average %s%s",
        model.folder,
        seed,
        ", ".join(f"{language} {score:.3f}" for language, score in scores.items()),
        "" if outcome["trained"] or outcome["evaluated"] else " (already done)",
    )
    sub_run = str(sub_run_dir(study.config.run_dir, model, seed).relative_to(study.config.run_dir))
    return [
        {"folder": model.folder, "seed": seed, "language": language, "micro_average": score, "sub_run": sub_run}
        for language, score in scores.items()
    ]


# One row per sub-run and language: the results `cell_table` places in the tables.
RESULTS_SCHEMA = {
    "folder": pl.String,
    "seed": pl.Int64,
    "language": pl.String,
    "micro_average": pl.Float64,
    "sub_run": pl.String,
}


def write_outputs(study: Study, results: list[dict], seconds: float) -> pl.DataFrame:
    """cells.parquet (one row per cell and seed) and tables.md from the results so far."""
    finished = cell_table(study.cells, pl.DataFrame(results, schema=RESULTS_SCHEMA))
    write_parquet_atomic(finished, study.out_dir / "cells.parquet")
    write_text_atomic(study.out_dir / "tables.md", tables_markdown(study, finished, seconds))
    return finished

"""evaluate: score every candidate, decide NIL, cluster NILs, write and score TAC output.

Outputs (in the run's `evaluate/` folder):
- `scores.parquet`: every scored candidate (mention_id, rank, kb_id, score);
- `predictions.parquet`: per mention the best and runner-up candidate, the margin, the
  NIL option's score (`nil_score`, only when the ranker has one), the language's
  threshold, the NIL flag and the system id (KB id or NIL cluster);
- `nil.json`: the NIL decision (method, thresholds with the dev counts they rest on,
  the learned classifier's parameters), applied by `pipeline.model.nil.decide_nil`;
- `sweep.parquet` + `thresholds.png`: micro-average against threshold per language on
  the tuning split (when thresholds are tuned);
- `gold.tab` / `system.tab`: TAC KBP 2015 EDL files of the evaluation split, and
  `doc_languages.tsv`, each document's language (`xel-cli score` reads it);
- `analysis.parquet` + `confusions.parquet`: the error analysis (`pipeline.evaluate.error_analysis`);
- `metrics.json` and `report.md`: the TAC measures overall and per language, each NIL
  method (threshold, classifier, nota when the ranker has a NIL option, reader when the run
  has the rerank stage's reader) side by side with their errors by kind per language, and
  the error analysis.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from pipeline.core import schema
from pipeline.core.config import EvaluateConfig, RunConfig, to_dict
from pipeline.core.devices import pick_device
from pipeline.core.errors import ConfigError, InputError, warn
from pipeline.core.io import atomic_path, write_json_atomic, write_parquet_atomic, write_text_atomic
from pipeline.core.manifest import StageIdentity, StageResult, StageRun, upstream_key
from pipeline.evaluate import error_analysis, nil_choice
from pipeline.evaluate.evaluation import Evaluation
from pipeline.evaluate.report import report_markdown
from pipeline.formats import triage_tables
from pipeline.formats.doc_languages import FILE_NAME as DOC_LANGUAGES_FILE
from pipeline.formats.doc_languages import write_doc_languages
from pipeline.formats.tac import write_tab
from pipeline.model import mention_prior
from pipeline.model.model_file import load_model
from pipeline.model.model_folder import write_model_folder
from pipeline.model.nil import cluster_nils, decide_nil, decided_by, thresholds_decide
from pipeline.model.nil_classifier import add_evidence, decision_reads_prior
from pipeline.model.predict import predict
from pipeline.model.reader import PREDICTION_COLUMNS as READER_COLUMNS
from pipeline.model.ties import TIED_SHARE_WARN, tie_advice, tied_best
from pipeline.scoring.decisions import GOLD_TAB, METRICS_JSON, SYSTEM_TAB, score_decisions
from pipeline.scoring.measures import MICRO_AVERAGE

if TYPE_CHECKING:  # features needs torch, imported once the stage has work to do (not when up to date)
    from pipeline.model.features import RankerInputs

logger = logging.getLogger(__name__)

STAGE = "evaluate"
# 2: writes doc_languages.tsv beside gold.tab; 3: thresholds at the middle of a flat optimum,
# the learned NIL classifier, error analysis.
STAGE_VERSION = (
    6  # 4: the mention's NIL prior (evaluate.nil_mention_prior); 5: nil_probability, nil_cut; 6: nil.reader_cut
)
NIL_ARTIFACT = "nil.json"
# Settings added after the first runs, with their defaults: left out of the stage key while
# at the default, so runs made before they existed stay up to date.
LATER_SETTINGS = {"languages": [], "popularity_rerank": False}


def training_popularity(inputs: RankerInputs, train_mention_ids: list[str]) -> np.ndarray:
    """(n_entities,) how many of the ranker's training mentions have each entity as gold."""
    from pipeline.model.features import gold_rows

    trained = inputs.mentions.filter(pl.col("mention_id").is_in(train_mention_ids))["row"].to_numpy()
    gold = gold_rows(inputs, trained)
    return np.bincount(gold[gold >= 0], minlength=inputs.entity_name.shape[0])


def plot_sweep(sweep_table: pl.DataFrame, thresholds: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for lang in sorted(sweep_table["lang"].unique().to_list()):
        part = sweep_table.filter(pl.col("lang") == lang).sort("threshold")
        axis.plot(
            part["threshold"].to_numpy(), part["micro_average"].to_numpy(), label=f"{lang} (t={thresholds[lang]:.2f})"
        )
    axis.set_xlabel("NIL threshold")
    axis.set_ylabel("micro-average (tuning split)")
    axis.legend()
    figure.tight_layout()
    with atomic_path(path) as temp_path:
        figure.savefig(temp_path, format="png", dpi=100)
    plt.close(figure)


def decided_by_method(
    predictions: pl.DataFrame, evaluated: pl.DataFrame, artifact: dict, variants: dict[str, dict] | None = None
) -> dict[str, pl.DataFrame]:
    """The evaluated mentions decided by each NIL method the artifact can apply (nota with the ranker's NIL
    option, reader with the reader's scores), and by each classifier variant (`nil_choice.choose`: with
    and without the mention NIL prior): {method: `decide_nil`'s table}."""
    artifacts = {"threshold": {**artifact, "method": "threshold"}}
    for name, classifier in (
        variants or ({"classifier": artifact["classifier"]} if artifact.get("classifier") else {})
    ).items():
        artifacts[name] = {**artifact, "method": "classifier", "classifier": classifier}
    wanted = predictions.filter(pl.col("mention_id").is_in(evaluated["mention_id"].implode()))
    if nil_choice.has_nil_scores(predictions):
        artifacts["nota"] = {**artifact, "method": "nota"}
    if nil_choice.has_reader_scores(wanted):
        artifacts["reader"] = {**artifact, "method": "reader"}
    return {name: decide_nil(wanted, decision) for name, decision in artifacts.items()}


def outcome_by_method(decisions: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """`error_analysis.outcome_scores` of each method's decisions (`decided_by_method`), with a `method` column."""
    return pl.concat(
        [
            error_analysis.outcome_scores(decided).with_columns(pl.lit(name).alias("method"))
            for name, decided in decisions.items()
        ]
    ).select("method", pl.exclude("method"))


def with_reader(predictions: pl.DataFrame, rerank_dir: Path) -> pl.DataFrame:
    """predictions with the reader's columns (`reader.reader_predictions`), null for mentions it did not read."""
    from pipeline.model.reader import SCORES_FILE, read_scores, reader_predictions

    return predictions.join(reader_predictions(read_scores(rerank_dir / SCORES_FILE)), on="mention_id", how="left")


def fit_mention_prior(inputs: RankerInputs, seed: int) -> tuple[dict | None, pl.DataFrame | None]:
    """(the mention NIL prior's parameters, (mention_id, mention_nil_logit) of every mention), fitted
    on the training split's mentions with gold (`pipeline.model.mention_prior`); (None, None) when
    that split has too few NIL or linked mentions."""
    table = inputs.mentions
    name, context = inputs.mention_name.float().cpu().numpy(), inputs.mention_context.float().cpu().numpy()
    training = table.filter((pl.col("split") == "train") & pl.col("gold_kb_id").is_not_null())
    rows = training["row"].to_numpy()
    params = mention_prior.fit(name[rows], context[rows], (training["gold_kb_id"] == schema.NIL_ID).to_numpy(), seed)
    if params is None:
        logger.info(
            "no mention NIL prior: the training split has under %d NIL or linked mentions", mention_prior.MIN_EXAMPLES
        )
        return None, None
    every = table["row"].to_numpy()
    return params, pl.DataFrame(
        {
            "mention_id": table["mention_id"],
            mention_prior.COLUMN: mention_prior.logits(params, name[every], context[every]),
        }
    )


def check_gold_splits(mentions_path: Path, evaluate: EvaluateConfig) -> None:
    """Refuse, before a finished evaluation is touched, splits that leave nothing to tune or score:
    E112 when the tuning split (with thresholds swept on it) or the evaluation split has no
    mention with gold; E203 naming evaluate.languages when only those languages lack it."""
    gold = (
        pl.scan_parquet(mentions_path)
        .filter(pl.col("gold_kb_id").is_not_null())
        .group_by("split", "lang")
        .agg(pl.len())
        .collect()
    )
    splits = set(gold["split"].to_list())
    if evaluate.threshold_mode == "dev" and evaluate.tune_split not in splits:
        raise InputError(
            "E112",
            path=mentions_path,
            line="-",
            detail=f"no {evaluate.tune_split} mention has a gold id to tune NIL thresholds on; "
            'give some mentions that split, or set evaluate.threshold_mode = "fixed"',
        )
    if evaluate.eval_split not in splits:
        raise InputError(
            "E112",
            path=mentions_path,
            line="-",
            detail=f"no {evaluate.eval_split} mention has a gold id; set evaluate.eval_split to a split with gold",
        )
    scored = sorted(gold.filter(pl.col("split") == evaluate.eval_split)["lang"].unique().to_list())
    if evaluate.languages and not set(evaluate.languages) & set(scored):
        raise ConfigError(
            "E203",
            where="[evaluate]",
            field="languages",
            value=list(evaluate.languages),
            reason=f"no {evaluate.eval_split} mention with gold is in those languages; "
            f"the {evaluate.eval_split} split has {', '.join(scored)}",
        )


def identity(config: RunConfig) -> StageIdentity:
    """What evaluate's key hashes: the keys of triage, encode, train (and rerank, with the reader on: a run
    without it keeps its key) and the [evaluate] settings not at a default added later."""
    inputs_keys = {stage: upstream_key(config.stage_dir(stage), stage) for stage in ("triage", "encode", "train")}
    if config.rerank.enabled:  # the reader's scores
        inputs_keys["rerank"] = upstream_key(config.stage_dir("rerank"), "rerank")
    settings = {k: v for k, v in to_dict(config.evaluate).items() if LATER_SETTINGS.get(k, Ellipsis) != v}
    return StageIdentity(STAGE, STAGE_VERSION, settings, inputs_keys)


def run(config: RunConfig, force: bool = False) -> StageResult:
    """Score every candidate with the trained ranker (and the reader's scores when `[rerank]` is on), choose
    and apply the NIL decision on the tuning split, cluster NILs, score the evaluation split as TAC KBP
    does, and write the outputs the module doc lists plus `<run>/model/`. Skipped when up to date."""
    out_dir = config.stage_dir(STAGE)
    triage_dir, encode_dir, train_dir = (config.stage_dir(s) for s in ("triage", "encode", "train"))
    expected = identity(config)
    stage_run = StageRun(out_dir, STAGE, STAGE_VERSION, expected.settings, expected.inputs, force)
    if stage_run.up_to_date:
        return stage_run.skipped()
    check_gold_splits(triage_tables.path(triage_dir, triage_tables.MENTIONS), config.evaluate)

    # Everything is read, decided and measured before the old outputs are touched: a refused run
    # (a damaged model, a NIL method the model cannot apply) leaves a finished evaluate as it was.
    evaluation = Evaluation(config, out_dir, triage_dir)
    _score(evaluation, encode_dir, train_dir)
    _decide(evaluation)
    _measure(evaluation)
    _analyse(evaluation)
    stage_run.begin()
    outputs = _write(evaluation)
    evaluated, artifact = evaluation.evaluated, evaluation.artifact
    split = config.evaluate.eval_split
    counts = {  # scored: every split's mentions; the evaluation split's, named by it (test_predicted_nil)
        "mentions_scored": int(len(evaluation.rows)),
        "candidates_scored": evaluation.score_table.height,
        f"{split}_mentions": evaluated.height,
        f"{split}_predicted_nil": int(evaluated["is_nil"].sum()),
    }
    return stage_run.finish(
        counts,
        outputs,
        summary={"metrics": evaluation.metrics, "micro_average_key": MICRO_AVERAGE},
        extra={"thresholds": evaluation.metrics["thresholds"], "nil_method": artifact["method"], "eval_split": split},
    )


def _score(evaluation: Evaluation, encode_dir: Path, train_dir: Path) -> None:
    """The ranker's scores and predictions of every mention, with the reader's and the mention NIL prior's
    columns when they are on."""
    from pipeline.model.features import candidate_matrix, load_inputs, score_candidates, score_nil

    config, evaluate, triage_dir = evaluation.config, evaluation.config.evaluate, evaluation.triage_dir
    device = pick_device(config.train.device, "[train]")
    model, saved = load_model(train_dir, device)
    inputs, _, _ = load_inputs(triage_dir, encode_dir, saved["mention_types"], saved["entity_types"], 0, device)
    candidates = triage_tables.read(
        triage_dir, triage_tables.CANDIDATES, "mention_id", "rank", "kb_id", "score", "sources"
    )
    if "triage" in model.features:
        inputs.attach_triage(candidates)
    mentions = inputs.mentions
    rows = mentions["row"].to_numpy()
    matrix = candidate_matrix(candidates, inputs, rows)
    scores = score_candidates(model, inputs, rows, matrix)
    popularity = training_popularity(inputs, saved.get("train_mention_ids", [])) if evaluate.popularity_rerank else None
    score_table, predictions = predict(
        mentions, rows, matrix, scores, inputs.entity_ids["kb_id"].to_list(), popularity, score_nil(model, inputs, rows)
    )
    predictions = mentions.drop("row").join(predictions, on="mention_id")
    if config.rerank.enabled:
        predictions = with_reader(predictions, config.stage_dir("rerank"))
    # The seed the model was trained with (train's key holds it), not the config's: evaluate's own
    # key holds no train setting, so `--set train.seed=...` on evaluate alone must not change its result.
    seed = int(saved.get("config", {}).get("seed", config.train.seed))
    prior, prior_column = fit_mention_prior(inputs, seed) if evaluate.nil_mention_prior else (None, None)
    if prior_column is not None:
        predictions = predictions.join(prior_column, on="mention_id", how="left")
    evaluation.candidates, evaluation.mentions, evaluation.rows, evaluation.saved = candidates, mentions, rows, saved
    evaluation.seed = seed
    evaluation.score_table, evaluation.prior = score_table, prior
    evaluation.predictions = add_evidence(predictions, candidates)


def _decide(evaluation: Evaluation) -> None:
    """The NIL decision chosen on the tuning split (`nil_choice.choose`), applied and clustered; the
    evaluation split's mentions with gold."""
    evaluate, predictions = evaluation.config.evaluate, evaluation.predictions
    tuning = predictions.filter(pl.col("split") == evaluate.tune_split)
    artifact, sweep_table, validation, variants = nil_choice.choose(
        tuning, evaluate, predictions["lang"].unique().to_list(), evaluation.seed
    )
    if evaluation.prior is not None:
        artifact["mention_prior"] = (
            evaluation.prior
        )  # link computes mention_nil_logit with it when the classifier reads it
    decided = cluster_nils(decide_nil(predictions, artifact), evaluate.nil_clustering)
    in_split = decided.filter(pl.col("split") == evaluate.eval_split)
    if evaluate.languages:  # some of them have gold (check_gold_splits)
        in_split = in_split.filter(pl.col("lang").is_in(list(evaluate.languages)))
    evaluated = in_split.filter(pl.col("gold_kb_id").is_not_null())
    gold_tab, system_tab, languages, metrics = score_decisions(evaluated)
    metrics["unscored_mentions"] = in_split.height - evaluated.height  # no gold_kb_id: left out, as link --score does
    evaluation.artifact, evaluation.sweep_table, evaluation.validation, evaluation.variants = (
        artifact,
        sweep_table,
        validation,
        variants,
    )
    evaluation.decided, evaluation.evaluated, evaluation.metrics = decided, evaluated, metrics
    evaluation.tabs = (gold_tab, system_tab, languages)


def _measure(evaluation: Evaluation) -> None:
    """metrics.json beyond the TAC measures: every NIL method side by side, errors by kind, the tuning
    split's cross-validation, the mention prior's ROC AUC and ties (W502)."""
    evaluate, metrics, artifact = evaluation.config.evaluate, evaluation.metrics, evaluation.artifact
    evaluated, predictions, prior = evaluation.evaluated, evaluation.predictions, evaluation.prior
    # The thresholds where they decide; what decides, in words, whatever the method (null thresholds: none did).
    metrics["thresholds"] = artifact["thresholds"] if thresholds_decide(artifact) else None
    metrics["split"] = evaluate.eval_split
    metrics["nil_method"] = artifact["method"]
    metrics["nil_reads_prior"] = decision_reads_prior(artifact)
    metrics["nil_decided_by"] = decided_by(artifact, metrics["nil_reads_prior"])
    # Every NIL method on the evaluation split (only the chosen one's decisions are written out).
    decisions = decided_by_method(predictions, evaluated, artifact, evaluation.variants)
    evaluation.on_eval = outcome_by_method(decisions)
    metrics["nil_methods"] = evaluation.on_eval.to_dicts()
    # Ranker and reader side by side: each method's errors by kind, per language.
    evaluation.error_kinds = error_analysis.error_kinds(decisions, evaluation.candidates)
    metrics["error_kinds"] = evaluation.error_kinds.to_dicts()
    # The tuning split's cross-validation (what `auto` and the prior's use were chosen by), as report.md shows it.
    validation = evaluation.validation
    metrics["nil_validation"] = validation.to_dicts() if validation is not None else []
    if evaluate.nil_mention_prior and prior is None:
        metrics["mention_prior"] = None  # asked for, not fitted: too few training NILs (report.md says so)
    if prior is not None:  # how well the prior alone tells NIL from linked, on the tuning and evaluation splits
        metrics["mention_prior"] = {
            **prior["fitted_on"],
            "roc_auc": {
                split: mention_prior.roc_auc(
                    part[mention_prior.COLUMN].to_numpy(), (part["gold_kb_id"] == schema.NIL_ID).to_numpy()
                )
                for split in (evaluate.tune_split, evaluate.eval_split)
                for part in [predictions.filter((pl.col("split") == split) & pl.col("gold_kb_id").is_not_null())]
            },
        }
    metrics["tied_best"] = tied_best(evaluated)
    # The reader links its own most probable candidate: the ranker's ties then link nothing (W502 would be wrong).
    if metrics["tied_best"]["share"] > TIED_SHARE_WARN and artifact["method"] != "reader":
        ties = metrics["tied_best"]
        warn(
            logger,
            "W502",
            split=evaluate.eval_split,
            tied=ties["tied"],
            mentions=ties["mentions"],
            percent=f"{ties['share']:.0%}",
            advice=tie_advice(ties),
        )


def _analyse(evaluation: Evaluation) -> None:
    """The error analysis of the evaluated mentions (`error_analysis.analyse`): seen in training or not is
    by the gold of the mentions the ranker trained on; confusions show the KB's names."""
    train_ids = evaluation.saved.get("train_mention_ids", [])
    seen = evaluation.mentions.filter(pl.col("mention_id").is_in(train_ids))["gold_kb_id"].unique()
    names = triage_tables.scan(evaluation.triage_dir, triage_tables.ENTITIES)
    evaluation.analysis, evaluation.confusions = error_analysis.analyse(
        evaluation.evaluated, evaluation.candidates, seen.drop_nulls().to_list(), names
    )


# predictions.parquet's columns; those of the NIL option, the mention prior and the reader where the run has them.
PREDICTION_COLUMNS = (
    "mention_id",
    "doc_id",
    "lang",
    "split",
    "mention",
    "gold_kb_id",
    "best_kb_id",
    "best_score",
    "second_kb_id",
    "second_score",
    "margin",
    "nil_score",
    mention_prior.COLUMN,
    *READER_COLUMNS,
    "threshold",
    "nil_probability",
    "nil_cut",
    "is_nil",
    "system_id",
)
_OPTIONAL_PREDICTION_COLUMNS = ("nil_score", mention_prior.COLUMN, *READER_COLUMNS)


def _write(evaluation: Evaluation) -> list[str]:
    """Write every output (atomically) and `<run>/model/`; the outputs' names, for the manifest."""
    out_dir, decided, artifact = evaluation.out_dir, evaluation.decided, evaluation.artifact
    write_parquet_atomic(evaluation.score_table, out_dir / "scores.parquet")
    absent = set(_OPTIONAL_PREDICTION_COLUMNS) - set(decided.columns)  # no NIL option, prior or reader
    write_parquet_atomic(
        decided.select([name for name in PREDICTION_COLUMNS if name not in absent]), out_dir / "predictions.parquet"
    )
    write_json_atomic(out_dir / NIL_ARTIFACT, artifact)
    write_parquet_atomic(evaluation.analysis, out_dir / "analysis.parquet")
    write_parquet_atomic(evaluation.confusions, out_dir / "confusions.parquet")
    outputs = [
        "scores.parquet",
        "predictions.parquet",
        NIL_ARTIFACT,
        "analysis.parquet",
        "confusions.parquet",
        GOLD_TAB,
        SYSTEM_TAB,
        DOC_LANGUAGES_FILE,
        METRICS_JSON,
        "report.md",
    ]
    for leftover in ("sweep.parquet", "thresholds.png"):
        (out_dir / leftover).unlink(missing_ok=True)  # from an earlier run with tuned thresholds
    if evaluation.sweep_table is not None:
        write_parquet_atomic(evaluation.sweep_table, out_dir / "sweep.parquet")
        plot_sweep(evaluation.sweep_table, artifact["thresholds"], out_dir / "thresholds.png")
        outputs += ["sweep.parquet", "thresholds.png"]
    gold_tab, system_tab, languages = evaluation.tabs
    write_tab(gold_tab, out_dir / GOLD_TAB)
    write_tab(system_tab, out_dir / SYSTEM_TAB)
    write_doc_languages(languages, out_dir / DOC_LANGUAGES_FILE)  # `xel-cli score` reads it beside gold.tab
    write_json_atomic(out_dir / METRICS_JSON, evaluation.metrics)
    write_text_atomic(out_dir / "report.md", report_markdown(evaluation))
    # <run>/model/: the trained linker `xel-cli link` applies.
    write_model_folder(evaluation.config, artifact, evaluation.metrics, evaluation.saved)
    return outputs

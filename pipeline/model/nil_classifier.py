"""The learned NIL decision: a small calibrated classifier over the ranker's evidence.

The paper decides NIL by a per-language threshold on the best candidate's score. That
uses one number and is tuned for micro-average on dev, where NILs are few, so it ends
where almost nothing is NIL. Here a multinomial logistic regression (scikit-learn)
reads the evidence the ranker and triage leave for each mention — best and runner-up
score, their margin, the best candidate's triage score, rank and sources, how many
candidates there are, the mention's type, the ranker's NIL score when it has a NIL
option, and the mention's NIL prior when evaluate fitted one (`pipeline.model.mention_prior`)
— and gives three probabilities: the gold is
NIL, the best candidate is right, the best candidate is wrong (gold another entity).
A mention is NIL when P(NIL) > P(right): of the two answers that can be right, the
more likely one, which maximises the expected micro-average.

It is fitted on the tuning split (dev) only: the ranker never trained on those
mentions, so their scores look like test scores (training mentions' scores do not:
the ranker has fitted them). Test is never touched. The fitted parameters are a small
JSON-able dict (`fit`); `probabilities` applies them with numpy alone, so whoever
reads a saved model (evaluate, link) needs no pickled object.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.core import schema
from pipeline.core.schema import TRIAGE_SOURCES
from pipeline.model import mention_prior

# Numeric evidence per mention, in this order; see `add_evidence` for their meaning.
NUMERIC = (
    "has_candidate",
    "best_score",
    "second_score",
    "margin",
    "candidates",
    "best_triage_score",
    "best_triage_rank",
    *(f"best_from_{source}" for source in TRIAGE_SOURCES),
    "mention_words",
    "mention_has_comma",
)
# Two more when the ranker has a NIL option (a `nil_score` column): its score, and the best
# candidate's score minus it (what the "nota" method thresholds at 0).
NOTA_NUMERIC = ("nil_score", "best_minus_nil")
# One more when the mentions carry their NIL prior (`pipeline.model.mention_prior`).
PRIOR_NUMERIC = (mention_prior.COLUMN,)
# The columns `add_evidence` adds (the rest of NUMERIC is computed from the predictions).
EVIDENCE = (
    "candidates",
    "best_triage_score",
    "best_triage_rank",
    *(f"best_from_{source}" for source in TRIAGE_SOURCES),
)
# Labels of the three classes.
NIL, RIGHT, WRONG = "nil", "right", "wrong"
# Regularisation of the logistic regression (scikit-learn's default); dev splits are small.
C = 1.0
VERSION = 1


def add_evidence(predictions: pl.DataFrame, candidates: pl.DataFrame) -> pl.DataFrame:
    """Add the classifier's evidence columns to predictions (one row per mention).

    predictions needs mention_id, mention, best_kb_id, best_score, second_score; candidates is
    triage's table (mention_id, rank, kb_id, score, sources). Adds `candidates` (how
    many), `best_triage_score`, `best_triage_rank` and `best_from_<source>` (1.0 when
    that source proposed the best candidate); a mention without candidates gets zeros.
    """
    counts = candidates.group_by("mention_id").agg(pl.len().cast(pl.Float64).alias("candidates"))
    best = candidates.select(
        "mention_id",
        pl.col("kb_id").alias("best_kb_id"),
        pl.col("score").cast(pl.Float64).alias("best_triage_score"),
        pl.col("rank").cast(pl.Float64).alias("best_triage_rank"),
        *(
            pl.col("sources").list.contains(source).cast(pl.Float64).alias(f"best_from_{source}")
            for source in TRIAGE_SOURCES
        ),
    )
    drop = list(EVIDENCE)
    out = (
        predictions.drop(drop, strict=False)
        .join(counts, on="mention_id", how="left")
        .join(best, on=["mention_id", "best_kb_id"], how="left")
    )
    return out.with_columns(pl.col(drop).fill_null(0.0))


def numeric_features(predictions: pl.DataFrame) -> tuple[str, ...]:
    """The numeric features the classifier reads of these predictions: NUMERIC, plus NOTA_NUMERIC with
    nil_score, plus PRIOR_NUMERIC with mention_nil_logit."""
    return (
        *NUMERIC,
        *(NOTA_NUMERIC if "nil_score" in predictions.columns else ()),
        *(PRIOR_NUMERIC if mention_prior.COLUMN in predictions.columns else ()),
    )


def reads_prior(params: dict | None) -> bool:
    """Whether a fitted classifier (`fit`'s parameters) reads the mention NIL prior (PRIOR_NUMERIC)."""
    return bool(params) and any(name in params["features"] for name in PRIOR_NUMERIC)


def decision_reads_prior(artifact: dict) -> bool:
    """Whether a NIL decision (`nil.json`) reads the mention NIL prior: the classifier decides and reads it."""
    return artifact["method"] == "classifier" and reads_prior(artifact.get("classifier"))


def feature_matrix(predictions: pl.DataFrame, types: list[str], numeric_names: tuple[str, ...] = NUMERIC) -> np.ndarray:
    """(n_mentions, len(numeric_names) + len(types)) float64 features of mentions with evidence.

    No candidate: best score -2 (below the ranker's tanh range); no runner-up: second
    score -2 and the margin to it best + 2. Types not in `types` are all-zero. The
    mention string adds its length in words (log(1 + words)) and whether it holds a
    comma: lists and descriptions ("India, China, Britain", "the manufacturer of the
    iPhone") are often NIL while their best candidate is one of their parts. NOTA_NUMERIC
    (in `numeric_names` only for a ranker with a NIL option) reads the nil_score column.
    """
    has = predictions["best_score"].is_not_null()
    best = predictions["best_score"].fill_null(-2.0)
    second = predictions["second_score"].fill_null(-2.0)
    mention = predictions["mention"].fill_null("")
    columns = {
        "has_candidate": has.cast(pl.Float64),
        "best_score": best,
        "second_score": second,
        "margin": best - second,
        "mention_words": (mention.str.split(" ").list.len().cast(pl.Float64) + 1).log(),
        "mention_has_comma": mention.str.contains(",", literal=True).cast(pl.Float64),
    }
    if "nil_score" in numeric_names:
        nil_score = predictions["nil_score"].cast(pl.Float64).fill_null(0.0)
        columns.update({"nil_score": nil_score, "best_minus_nil": best - nil_score})
    numeric = [
        columns[name].to_numpy() if name in columns else predictions[name].cast(pl.Float64).to_numpy()
        for name in numeric_names
    ]
    mention_type = (
        predictions["entity_type"] if "entity_type" in predictions.columns else pl.Series([None] * predictions.height)
    )
    type_columns = [(mention_type == value).fill_null(False).cast(pl.Float64).to_numpy() for value in types]
    return np.stack(numeric + type_columns, axis=1).astype(np.float64)


def labels(predictions: pl.DataFrame) -> np.ndarray:
    """(n,) class of each mention with gold: NIL, RIGHT (best candidate is the gold) or WRONG."""
    gold_nil = (predictions["gold_kb_id"] == schema.NIL_ID).to_numpy()
    right = (predictions["best_kb_id"] == predictions["gold_kb_id"]).fill_null(False).to_numpy()
    return np.where(gold_nil, NIL, np.where(right, RIGHT, WRONG))


def fit(tuning: pl.DataFrame, seed: int = 0) -> dict:
    """Fit the classifier on tuning mentions with gold and evidence; its parameters as a JSON-able dict.

    With a nil_score column (a ranker with a NIL option) it also reads NOTA_NUMERIC, with a
    mention_nil_logit column (the mention's NIL prior) PRIOR_NUMERIC.
    Features are standardised (mean/scale saved) before scikit-learn's
    LogisticRegression (lbfgs, multinomial, C = `C`). Types are those of the tuning
    mentions. Raises ValueError when the mentions do not hold both NIL and right links.
    """
    from sklearn.linear_model import LogisticRegression

    y = labels(tuning)
    if not ((y == NIL).any() and (y == RIGHT).any()):
        raise ValueError("the tuning mentions need both NIL golds and right links")
    types = sorted(tuning["entity_type"].drop_nulls().unique().to_list()) if "entity_type" in tuning.columns else []
    numeric_names = numeric_features(tuning)
    x = feature_matrix(tuning, types, numeric_names)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    model = LogisticRegression(C=C, max_iter=2000, random_state=seed).fit((x - mean) / scale, y)
    coef, intercept = model.coef_, model.intercept_
    if len(model.classes_) == 2:  # scikit-learn keeps one row for two classes: the second's logit
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    return {
        "version": VERSION,
        "features": [*numeric_names, *(f"type={t}" for t in types)],
        "types": types,
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "classes": model.classes_.tolist(),
        "coef": coef.tolist(),
        "intercept": intercept.tolist(),
        "C": C,
        "fitted_on": {"mentions": int(len(y)), **{label: int((y == label).sum()) for label in (NIL, RIGHT, WRONG)}},
    }


def probabilities(params: dict, predictions: pl.DataFrame) -> dict[str, np.ndarray]:
    """Class -> (n,) probability per mention, from `fit`'s parameters (numpy softmax, no scikit-learn)."""
    numeric_names = tuple(name for name in params["features"] if not name.startswith("type="))
    x = (feature_matrix(predictions, params["types"], numeric_names) - np.asarray(params["mean"])) / np.asarray(
        params["scale"]
    )
    logits = x @ np.asarray(params["coef"]).T + np.asarray(params["intercept"])
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    p = exp / exp.sum(axis=1, keepdims=True)
    out = {label: p[:, i] for i, label in enumerate(params["classes"])}
    for label in (NIL, RIGHT, WRONG):
        out.setdefault(label, np.zeros(predictions.height))
    return out


def decision(params: dict, predictions: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(P(NIL), P(right), is_nil), each (n,): NIL when P(NIL) > P(right), or with no candidate at all.
    P(right) is the cut P(NIL) must pass, which links.parquet shows beside it (`nil_cut`)."""
    p = probabilities(params, predictions)
    return p[NIL], p[RIGHT], (p[NIL] > p[RIGHT]) | predictions["best_kb_id"].is_null().to_numpy()


def says_nil(params: dict, predictions: pl.DataFrame) -> np.ndarray:
    """(n,) bool: P(NIL) > P(right), or no candidate at all (`decision`)."""
    return decision(params, predictions)[2]

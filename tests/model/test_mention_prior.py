"""The mention's NIL prior (`pipeline.model.mention_prior`) and how evaluate offers it to the classifier."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from test_nil import evidence_table  # the same package folder

from pipeline.core.config import EvaluateConfig
from pipeline.evaluate import nil_choice
from pipeline.model import mention_prior, nil_classifier
from pipeline.model.nil import decide_nil

H = 8


def vectors(is_nil: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(name, context) (n, H): NIL mentions point along unit 0, linked ones along unit 1, plus noise."""
    rng = np.random.default_rng(seed)
    direction = np.where(is_nil[:, None], np.eye(H)[0], np.eye(H)[1])
    return direction + 0.1 * rng.normal(size=(len(is_nil), H)), direction + 0.1 * rng.normal(size=(len(is_nil), H))


def test_prior_separates_nil_mentions_and_equals_scikit_learn() -> None:
    from sklearn.linear_model import LogisticRegression

    is_nil = np.arange(60) % 3 == 0
    name, context = vectors(is_nil, seed=0)
    params = mention_prior.fit(name, context, is_nil)
    assert params["fitted_on"] == {"mentions": 60, "nil": 20} and len(params["coef"]) == 2 * H
    held_nil = np.arange(30) % 2 == 0
    held_name, held_context = vectors(held_nil, seed=1)
    logits = mention_prior.logits(params, held_name, held_context)
    assert ((logits > 0) == held_nil).all()  # NIL-like mentions get a positive logit
    reference = LogisticRegression(C=mention_prior.C, max_iter=3000, class_weight="balanced", random_state=0).fit(
        mention_prior.features(name, context), is_nil
    )
    np.testing.assert_allclose(
        logits, reference.decision_function(mention_prior.features(held_name, held_context)), atol=1e-9
    )


def test_no_prior_from_too_few_nils_and_none_for_other_vectors() -> None:
    is_nil = np.arange(60) < 9  # 9 NILs, under MIN_EXAMPLES
    assert mention_prior.fit(*vectors(is_nil, seed=0), is_nil) is None
    is_nil = np.arange(60) % 3 == 0
    params = mention_prior.fit(*vectors(is_nil, seed=0), is_nil)
    with pytest.raises(ValueError, match="width 8"):
        mention_prior.logits(params, np.ones((2, 4)), np.ones((2, 4)))


def tuning_table(n: int, seed: int) -> pl.DataFrame:
    """n dev mentions whose ranker scores say nothing (a third NIL, all scored -0.9..0.9 alike)
    and whose mention NIL prior says which are NIL."""
    rng = np.random.default_rng(seed)
    rows = [
        (f"m{i}", "en", f"Q{i}", float(rng.uniform(-0.9, 0.9)), -0.95, "NIL" if i % 3 == 0 else f"Q{i}")
        for i in range(n)
    ]
    prior = [(3.0 if i % 3 == 0 else -3.0) + float(rng.normal(0, 0.5)) for i in range(n)]
    return evidence_table(rows).with_columns(pl.Series("mention_nil_logit", prior))


def test_choose_lets_the_classifier_read_the_prior_when_dev_says_it_helps() -> None:
    tuning = tuning_table(90, seed=0)
    artifact, _, validation, variants = nil_choice.choose(tuning, EvaluateConfig(), ["en"], seed=0)
    overall = {
        row["method"]: row["micro_average"] for row in validation.filter(pl.col("lang") == "all").iter_rows(named=True)
    }
    assert overall[nil_choice.PRIOR_VARIANT] == 1.0 and overall["classifier"] < 0.9
    assert artifact["method"] == "classifier" and nil_classifier.reads_prior(artifact["classifier"])
    assert set(variants) == {"classifier", nil_choice.PRIOR_VARIANT}
    held = tuning_table(30, seed=1)
    assert decide_nil(held, artifact)["is_nil"].to_list() == (held["gold_kb_id"] == "NIL").to_list()


def test_without_the_prior_column_there_is_no_prior_variant() -> None:
    tuning = tuning_table(90, seed=0).drop("mention_nil_logit")
    artifact, _, validation, variants = nil_choice.choose(tuning, EvaluateConfig(), ["en"], seed=0)
    assert nil_choice.PRIOR_VARIANT not in validation["method"].to_list()
    assert not nil_classifier.reads_prior(artifact["classifier"])

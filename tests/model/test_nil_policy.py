"""The saved NIL decision (`pipeline.model.nil_policy.NilPolicy`) as read from a model folder."""

from __future__ import annotations

from pipeline.model.nil_policy import NilPolicy


def test_thresholds_of_a_model_saved_with_whole_language_tags_are_keyed_as_inputs_are() -> None:
    # A model saved before inputs read en-US as en keyed its thresholds by the whole tag.
    artifact = {
        "method": "threshold",
        "default_threshold": -1.0,
        "thresholds": {"en-us": -0.5, "en": -0.9, "PT_br": -0.7, "es": -0.8},
    }
    policy = NilPolicy.from_artifact(artifact, "name")
    # The plain tag wins over a regional one of the same language.
    assert policy.thresholds == {"en": -0.9, "es": -0.8, "pt": -0.7}
    assert policy.fallback == -0.8  # the median of the three


def test_a_classifier_that_reads_the_mention_prior_needs_the_prior() -> None:
    import pytest

    classifier = {
        "features": ["best_score", "mention_nil_logit"],
        "types": [],
        "mean": [0, 0],
        "scale": [1, 1],
        "classes": ["nil", "right"],
        "coef": [[0, 0], [1, -1]],
        "intercept": [0, 0],
    }
    artifact = {"method": "classifier", "default_threshold": -1.0, "thresholds": {"en": -0.9}, "classifier": classifier}
    with pytest.raises(ValueError, match="mention NIL prior"):
        NilPolicy.from_artifact(artifact, "name")
    prior = {"coef": [0.0] * 4, "intercept": 0.5}
    assert NilPolicy.from_artifact({**artifact, "mention_prior": prior}, "name").artifact["mention_prior"] == prior


def test_a_malformed_mention_prior_is_refused_at_load() -> None:
    import pytest

    classifier = {
        "features": ["best_score", "mention_nil_logit"],
        "types": [],
        "mean": [0, 0],
        "scale": [1, 1],
        "classes": ["nil", "right"],
        "coef": [[0, 0], [1, -1]],
        "intercept": [0, 0],
    }
    artifact = {"method": "classifier", "default_threshold": -1.0, "thresholds": {"en": -0.9}, "classifier": classifier}
    for prior in (
        {},
        {"coef": [0.0] * 3, "intercept": 0.0},
        {"coef": [0.0] * 4, "intercept": None},
        {"coef": "abc", "intercept": 0.0},
        {"coef": [0.0, float("nan")], "intercept": 0.0},
        {"coef": [0.0] * 4, "intercept": 0.0, "version": 99},
    ):
        with pytest.raises(ValueError, match="mention NIL prior"):
            NilPolicy.from_artifact({**artifact, "mention_prior": prior}, "name")
    # Not read by the decision (thresholds decide): not checked, and never applied.
    policy = NilPolicy.from_artifact({**artifact, "method": "threshold", "mention_prior": {}}, "name")
    assert not policy.reads_prior


def test_a_classifier_of_a_newer_format_is_refused() -> None:
    import pytest

    classifier = {
        "version": 99,
        "features": ["best_score"],
        "types": [],
        "mean": [0],
        "scale": [1],
        "classes": ["nil", "right"],
        "coef": [[0], [1]],
        "intercept": [0, 0],
    }
    with pytest.raises(ValueError, match="newer than this xel's"):
        NilPolicy.from_artifact(
            {"method": "classifier", "default_threshold": -1.0, "thresholds": {}, "classifier": classifier}, "name"
        )


def test_w701_warns_of_a_fallback_threshold_only_where_a_threshold_decides(caplog) -> None:
    import polars as pl

    unseen = pl.DataFrame({"lang": ["de", "en"]})
    threshold = NilPolicy.from_artifact(
        {"method": "threshold", "default_threshold": -1.0, "thresholds": {"en": -0.5}}, "name"
    )
    reader = NilPolicy.from_artifact(
        {"method": "reader", "default_threshold": -1.0, "thresholds": {"en": -0.5}}, "name"
    )
    nota = NilPolicy.from_artifact({"method": "nota", "default_threshold": -1.0, "thresholds": {"en": -0.5}}, "name")
    assert threshold.warn_unseen(unseen) == ["de"] and "[W701]" in caplog.text
    caplog.clear()
    assert reader.warn_unseen(unseen) == ["de"] and "[W701]" not in caplog.text
    assert nota.warn_unseen(unseen) == ["de"] and "[W701]" not in caplog.text  # nota's NIL score decides


def test_model_json_fallback_is_honoured_and_w701_names_its_source(caplog) -> None:
    """fresh21 F3, F4: a hand-edited nil.fallback was read and ignored (the median recomputed), and a
    model with no per-language threshold was said to use their median."""
    import polars as pl

    unseen = pl.DataFrame({"lang": ["de"], "mention": ["x"]})
    saved = {
        "method": "threshold",
        "default_threshold": -1.0,
        "thresholds": {"en": -0.5, "es": -0.7},
        "clustering": "name",
    }
    as_written = NilPolicy.from_json({**saved, "fallback": -0.6})  # the median, as evaluate writes it
    assert as_written.fallback == -0.6 and as_written.fallback_source().startswith("the median")
    edited = NilPolicy.from_json({**saved, "fallback": 0.9})
    assert edited.fallback == 0.9 and edited.fallback_source() == "model.json's nil.fallback"
    edited.warn_unseen(unseen)
    assert "fallback NIL threshold 0.9 (model.json's nil.fallback)" in caplog.text
    assert edited.with_unseen_threshold(0.2).fallback == 0.2  # --fallback-threshold still wins
    assert NilPolicy.from_json({**saved, "fallback": None}).fallback == -0.6
    caplog.clear()
    none = NilPolicy.from_json({**saved, "thresholds": {}})
    none.warn_unseen(unseen)
    assert none.fallback == -1.0 and "median" not in caplog.text
    assert "fallback NIL threshold -1.0 (the model's default threshold nil.default_threshold" in caplog.text


def test_a_fallback_threshold_out_of_range_names_the_option_to_change() -> None:
    """E203 of link's --fallback-threshold says to give the option another value: link takes no config file
    (before: "change it in the config file or on the command line"; fresh21b 7c)."""
    import pytest

    from pipeline.core.errors import ConfigError

    policy = NilPolicy.from_artifact({"method": "threshold", "default_threshold": -1.0, "thresholds": {}}, "name")
    with pytest.raises(ConfigError) as caught:
        policy.with_unseen_threshold(5)
    assert caught.value.format_message() == (
        "[E203] --fallback-threshold: fallback_threshold = 5 is invalid: must be a number in [-1, 1], the ranker's "
        "score range; give --fallback-threshold another value on the command line"
    )

"""The mention's NIL prior: how NIL-like a mention reads, learned from the training split's NILs.

The ranker never trains on NIL-gold mentions, and its scores cannot be fitted on the
training split (it has fitted those mentions). The encoder, though, is frozen: a training
mention's name and context vectors look like a test mention's. So a logistic regression
over them (scikit-learn's LogisticRegression, C = 1, classes balanced), fitted on every
training mention with gold (NIL against linked), gives each mention a logit of being NIL
that reads nothing of the ranker. It is the "link probability" of Wikify! (Mihalcea and
Csomai, 2007: how often a phrase is linked) learned over the multilingual encoder's
vectors instead of counted per string, so it carries to mentions and languages no
training string matched. The NIL classifier (`pipeline.model.nil_classifier`) reads the
logit as one more feature (`mention_nil_logit`).

On MEANTIME it separates NIL from linked test mentions with ROC AUC 0.81 (dev 0.84). With
it the classifier's test micro-average rose in each of four trained models, but dev
cross-validation preferred it in only one, so evaluate offers it and dev decides per run
(`pipeline.evaluate.nil_choice`; `bench/nil_prior.py`, docs/results.md). The fitted
parameters are a JSON-able dict; `logits` applies them with numpy, so evaluate and link
decide alike without a pickled object.
"""

from __future__ import annotations

import numpy as np

# Fewer training NILs (or linked mentions) than this: no prior is fitted.
MIN_EXAMPLES = 10
# Regularisation: scikit-learn's default; the vectors are L2-normalised first.
C = 1.0
VERSION = 1
# The column of each mention's logit in predictions, where the NIL classifier reads it.
COLUMN = "mention_nil_logit"


def features(name: np.ndarray, context: np.ndarray) -> np.ndarray:
    """(n, 2H) float64: each mention's name and context vectors, (n, H) each, L2-normalised and side by side."""

    def unit(vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float64)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms > 0, norms, 1.0)

    return np.hstack([unit(name), unit(context)])


def fit(name: np.ndarray, context: np.ndarray, is_nil: np.ndarray, seed: int = 0) -> dict | None:
    """Fit the prior on training mentions: name and context (n, H) vectors, is_nil (n,) bool.

    Returns the parameters as a JSON-able dict, or None when there are fewer than
    MIN_EXAMPLES NIL or linked mentions (the classifier then goes without the feature).
    """
    from sklearn.linear_model import LogisticRegression

    is_nil = np.asarray(is_nil, dtype=bool)
    nils, linked = int(is_nil.sum()), int((~is_nil).sum())
    if nils < MIN_EXAMPLES or linked < MIN_EXAMPLES:
        return None
    model = LogisticRegression(C=C, max_iter=3000, class_weight="balanced", random_state=seed)
    model.fit(features(name, context), is_nil)
    return {
        "version": VERSION,
        "coef": model.coef_[0].tolist(),
        "intercept": float(model.intercept_[0]),
        "C": C,
        "fitted_on": {"mentions": nils + linked, "nil": nils},
    }


def logits(params: dict, name: np.ndarray, context: np.ndarray) -> np.ndarray:
    """(n,) float64 logit of NIL per mention, from `fit`'s parameters; ValueError when the
    vectors' width is not the one the prior was fitted on (another encoder)."""
    x = features(name, context)
    coef = np.asarray(params["coef"], dtype=np.float64)
    if x.shape[1] != coef.shape[0]:
        raise ValueError(
            f"the NIL prior was fitted on vectors of width {coef.shape[0] // 2}, these are {x.shape[1] // 2}"
        )
    return x @ coef + float(params["intercept"])


def roc_auc(logits: np.ndarray, is_nil: np.ndarray) -> float | None:
    """ROC AUC of the logits against NIL golds (scikit-learn's roc_auc_score); None without both classes."""
    from sklearn.metrics import roc_auc_score

    is_nil = np.asarray(is_nil, dtype=bool)
    return float(roc_auc_score(is_nil, logits)) if 0 < is_nil.sum() < len(is_nil) else None

"""bench/nil_ceiling.py: the scores it prints for an upper bound on the NIL decision (README, Results)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "nil_ceiling.py"
spec = importlib.util.spec_from_file_location("nil_ceiling", SCRIPT)
nil_ceiling = importlib.util.module_from_spec(spec)
spec.loader.exec_module(nil_ceiling)

# Five mentions: two NIL golds, two whose best candidate is the gold, one whose best is wrong.
LABELS = np.array(["nil", "nil", "right", "right", "wrong"])


def test_scores_count_nil_for_nil_gold_and_best_candidate_otherwise() -> None:
    says_nil = np.array([True, False, False, True, True])
    micro, f1 = nil_ceiling.scores(says_nil, LABELS)
    # Right: mention 0 (NIL for NIL) and mention 2 (best = gold); 2 of 5.
    assert micro == pytest.approx(0.4)
    # NIL precision 1/3, recall 1/2: F1 = 2 * (1/6) / (5/6) = 0.4.
    assert f1 == pytest.approx(0.4)


def test_nil_f1_is_zero_without_any_nil_hit() -> None:
    assert nil_ceiling.nil_f1(np.zeros(5, bool), LABELS == "nil") == 0.0


def test_best_cut_takes_the_cut_with_the_best_nil_f1() -> None:
    p_nil = np.array([0.9, 0.6, 0.1, 0.7, 0.2])
    # Cut 0.6 says NIL for mentions 0, 1, 3: NIL F1 = 2 * (2/3 * 1) / (5/3) = 0.8, micro 3/5
    # (mentions 0, 1, 2); cut 0.9 gives F1 2/3, cut 0.7 gives 0.5.
    micro, f1 = nil_ceiling.best_cut(p_nil, LABELS)
    assert (micro, f1) == (pytest.approx(0.6), pytest.approx(0.8))

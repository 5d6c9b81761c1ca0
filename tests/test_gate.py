"""The gate's arithmetic: paired counts, McNemar's test (against scipy), the decision."""

from __future__ import annotations

import numpy as np
import pytest

from digitbatch.gate import EXACT_BELOW, GateResult, decide, mcnemar, paired_counts


def test_paired_counts_skip_unknown_targets():
    target = np.array([0, 1, 2, 3, -1, 5])
    a = np.array([0, 1, 9, 9, 4, 5])  # right on 0, 1, 5
    b = np.array([0, 9, 2, 9, 4, 9])  # right on 0, 2
    assert paired_counts(target, a, b).tolist() == [5, 3, 2, 2, 1]
    assert paired_counts(target, a, None).tolist() == [5, 3, 0, 0, 0]
    # summed over chunks they are the counts of the whole
    halves = paired_counts(target[:3], a[:3], b[:3]) + paired_counts(target[3:], a[3:], b[3:])
    assert halves.tolist() == [5, 3, 2, 2, 1]


@pytest.mark.parametrize("b,c", [(0, 1), (1, 0), (3, 9), (9, 3), (0, 12), (12, 12), (5, 19),
                                 (11, 13)])
def test_mcnemar_exact_is_scipys_binomial_test(b, c):
    stats = pytest.importorskip("scipy.stats")
    assert b + c < EXACT_BELOW
    r = mcnemar(b, c)
    assert r["method"] == "exact" and (r["b"], r["c"]) == (b, c)
    assert r["p"] == pytest.approx(stats.binomtest(min(b, c), b + c, 0.5).pvalue, rel=1e-12)


@pytest.mark.parametrize("b,c", [(13, 12), (40, 20), (20, 40), (100, 131), (655, 0), (1, 30)])
def test_mcnemar_chi_square_with_continuity(b, c):
    stats = pytest.importorskip("scipy.stats")
    assert b + c >= EXACT_BELOW
    r = mcnemar(b, c)
    chi2 = (abs(b - c) - 1) ** 2 / (b + c)  # statsmodels' mcnemar(exact=False, correction=True)
    assert r["method"].startswith("chi-square") and r["statistic"] == pytest.approx(chi2)
    assert r["p"] == pytest.approx(stats.chi2.sf(chi2, 1), rel=1e-9, abs=1e-300)


def test_mcnemar_without_discordant_rows_is_no_evidence():
    assert mcnemar(0, 0)["p"] == 1.0
    assert mcnemar(30, 30)["p"] == 1.0  # (|b - c| - 1 clipped at 0: no difference, p 1)


def _gate(cand, champ, b, c, n=1000):
    return GateResult(store="/g.zarr", checksum="x", rows="all", n=n, candidate_accuracy=cand,
                      champion_accuracy=champ, test=None if champ is None else mcnemar(b, c))


def test_a_significantly_better_candidate_passes():
    d = decide(_gate(0.95, 0.93, 40, 20))
    assert d.promote and d.verdict == "better"
    assert "0.9500" in d.reason and "0.9300" in d.reason and "b=40" in d.reason


def test_a_candidate_worse_beyond_the_tolerance_is_refused_even_without_significance():
    d = decide(_gate(0.929, 0.930, 3, 4))  # one row worse, p = 1
    assert not d.promote and d.verdict == "worse" and "worse by 0.0010" in d.reason
    d = decide(_gate(0.90, 0.93, 5, 35), tolerance=0.02)
    assert not d.promote and d.verdict == "worse" and "beyond the tolerance 0.0200" in d.reason


def test_a_tie_is_not_a_win():
    # identical predictions: equal accuracy, no discordant row
    d = decide(_gate(0.93, 0.93, 0, 0))
    assert not d.promote and d.verdict == "tie" and "a tie is not a win" in d.reason
    # ahead by a few rows, not significant: still a tie
    d = decide(_gate(0.932, 0.930, 6, 4))
    assert not d.promote and d.verdict == "tie"
    # with a tolerance the user accepts a tie, and it is recorded as one
    d = decide(_gate(0.93, 0.93, 0, 0), tolerance=0.005)
    assert d.promote and d.verdict == "tie" and "not a win" in d.reason
    # significantly worse, but within the stated tolerance
    d = decide(_gate(0.928, 0.930, 0, 20, n=10_000), tolerance=0.005)
    assert d.promote and d.verdict == "within-tolerance"


def test_no_champion_and_the_accuracy_floor():
    assert decide(_gate(0.5, None, 0, 0)).verdict == "first"
    d = decide(_gate(0.5, None, 0, 0), min_accuracy=0.9)
    assert not d.promote and d.verdict == "below-floor" and "0.5000" in d.reason
    # the floor holds with a champion too
    d = decide(_gate(0.95, 0.80, 150, 0), min_accuracy=0.96)
    assert not d.promote and d.verdict == "below-floor" and "champion 0.8000" in d.reason

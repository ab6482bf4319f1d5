"""The verdict rule of the tables (tools/stats.py): a paired difference over seeds against its noise."""
import math

import pytest

from tools import stats


def test_mean_sd_and_binomial_se_by_hand():
    assert stats.mean([1, 2, 3]) == 2 and stats.sd([1, 2, 3]) == pytest.approx(1.0) and stats.sd([5]) == 0
    assert stats.binomial_se(0.5, 2500) == pytest.approx(0.01)
    assert stats.binomial_se(0.5, None) is None
    assert stats.se_of_mean([0.3, 0.4]) == pytest.approx(0.25)  # sqrt(0.09 + 0.16) / 2


def test_a_difference_beyond_twice_its_noise_holds_or_fails_and_within_it_is_noise():
    # d = 1, 1.2, 0.8: mean 1, sd 0.2 -> u = 0.2 / sqrt(3) = 0.115; 1 > 2u
    assert stats.verdict([11, 11.2, 10.8], [10])[0] == "holds"
    assert stats.verdict([10], [11, 11.2, 10.8])[0] == "fails"
    # the same mean difference with a large evaluation s.e. (0.5 each: u ~ 0.72) is within noise
    assert stats.verdict([11, 11.2, 10.8], [10], se_a=0.5, se_b=0.5)[0] == "within noise"
    # seeds that disagree: d = +3, -2, +2 -> mean 1, sd 2.65 -> u = 1.53
    word, text = stats.verdict([13, 8, 12], [10, 10, 10])
    assert word == "within noise" and "3 seeds" in text


def test_pairs_are_formed_seed_by_seed():
    # A and B both move with the seed: the paired differences are all 1 (no spread), although each side spreads
    assert stats.verdict([5, 15, 25], [4, 14, 24])[0] == "holds"
    with pytest.raises(ValueError, match="cannot pair 3 seeds with 2"):
        stats.verdict([1, 2, 3], [1, 2])


def test_lower_is_better_and_a_single_seed_uses_the_evaluation_noise_alone():
    assert stats.verdict([0.4], [0.7], lower_is_better=True)[0] == "holds"
    word, text = stats.verdict([51.0], [50.0], se_a=1.0, se_b=1.0)  # u = sqrt(2) = 1.41
    assert word == "within noise" and "1 seed, no seed spread" in text
    assert math.isclose(stats.VERDICT_Z, 2.0)

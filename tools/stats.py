"""Spread over seeds, the evaluation's standard error, and the verdict rule every claim of the tables is judged by.

A cell of a table is a list of values, one per seed (a single value for the pre-trained CLIP, which has no seed).
    mean ± sd            the mean over seeds and their sample standard deviation (ddof = 1)
    binomial_se(p, n)    standard error of an accuracy p measured on n test items: sqrt(p(1 − p)/n)
The verdict rule (docs/results.md), for a claim "A is above B" (or "A keeps B"):
    d_s = A_s − B_s, paired by seed (B without a seed is the same value for every s); d̄ = mean of the d_s
    u   = sqrt(sd(d)² / k + se_eval²)     seed spread of the mean difference, plus the evaluation's noise
          (se_eval = sqrt(se_A² + se_B²): the two evaluations' s.e., as if independent, which is conservative
          for two models scored on the same test items; binomial for an accuracy, a bootstrap of the evaluation's
          pairs for a gap statistic, evaluate.gap_standard_errors)
    holds if d̄ > 2u, fails if d̄ < −2u, within noise otherwise.
With k = 1 seed the seed spread is unknown and only se_eval counts: the verdict says so.
"""
import math

VERDICT_Z = 2.0  # about a 95% two-sided band under a normal approximation


def mean(values):
    return sum(values) / len(values)


def sd(values):
    """Sample standard deviation (ddof = 1); 0 for a single value."""
    if len(values) < 2:
        return 0.0
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def binomial_se(p, n):
    """S.e. of an accuracy p (a fraction) measured on n items; None when n is unknown."""
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else None


def se_of_mean(ses):
    """S.e. of the mean of independent measurements with these s.e. (a mean over tasks or directions)."""
    if any(s is None for s in ses):
        return None
    return math.sqrt(sum(s * s for s in ses)) / len(ses)


def paired_differences(a, b):
    """A − B per seed; a single value (no seed) is paired with every seed of the other side."""
    if len(a) == 1 or len(b) == 1 or len(a) == len(b):
        k = max(len(a), len(b))
        return [(a[i] if len(a) > 1 else a[0]) - (b[i] if len(b) > 1 else b[0]) for i in range(k)]
    raise ValueError(f"cannot pair {len(a)} seeds with {len(b)}: evaluate the same seeds for every row")


def verdict(a, b, se_a=0.0, se_b=0.0, lower_is_better=False):
    """-> (word, text): the rule of the module docstring for the claim "A is better than B"."""
    d = paired_differences(a, b)
    if lower_is_better:
        d = [-x for x in d]
    k = len(d)
    se_eval = math.sqrt((se_a or 0.0) ** 2 + (se_b or 0.0) ** 2)
    u = math.sqrt(sd(d) ** 2 / k + se_eval ** 2) if k > 1 else se_eval
    d_bar = mean(d)
    if u == 0:
        word = "holds" if d_bar > 0 else "fails" if d_bar < 0 else "within noise"
    else:
        word = "holds" if d_bar > VERDICT_Z * u else "fails" if d_bar < -VERDICT_Z * u else "within noise"
    seeds = f"{k} seeds" if k > 1 else "1 seed, no seed spread"
    return word, f"{word} (difference {d_bar:+.3g} ± {u:.2g}, {seeds})"

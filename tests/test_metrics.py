"""Tests for common/metrics.py against hand-computed values (docs/methods.md §1/§2 evaluation, §3)."""
import json
import math

import pytest
import torch

from common import metrics
from common.metrics import (alignment, centroid_distance, centroid_sqdist_per_dim, modality_gap_stats,
                            pair_distance, relative_gap, retrieval_metrics, separability, uniformity,
                            zero_shot_metrics)


def at_angles(*degrees):
    """Unit vectors in 2-D at the given angles, so cosine similarity = cos(angle difference)."""
    radians = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([radians.cos(), radians.sin()], dim=1)


# ---------------------------------------------------------------- zero-shot

def test_zero_shot_imbalanced_hand_counted():
    logits = torch.tensor([
        [9., 1, 2, 3, 4, 5],  # target 0: right
        [9., 1, 2, 3, 4, 5],  # target 0: right
        [9., 1, 2, 3, 4, 5],  # target 0: right
        [9., 1, 2, 3, 4, 5],  # target 0: right
        [5., 0, 9, 4, 3, 2],  # target 1: wrong, and class 1 is ranked last (6th) -> top-5 miss
        [9., 1, 8, 2, 3, 4],  # target 2: wrong, class 2 ranked 2nd -> top-5 hit
    ])
    targets = torch.tensor([0, 0, 0, 0, 1, 2])
    result = zero_shot_metrics(logits, targets)
    assert result["acc1"] == pytest.approx(4 / 6)
    assert result["acc5"] == pytest.approx(5 / 6)
    # recall per present class: class 0 4/4, class 1 0/1, class 2 0/1; classes 3-5 are absent and not counted
    assert result["mean_per_class_recall"] == pytest.approx(1 / 3)


def test_zero_shot_no_acc5_below_five_classes():
    logits = torch.tensor([[1., 2, 3], [3., 2, 1], [1., 3, 2]])
    result = zero_shot_metrics(logits, torch.tensor([2, 1, 1]))  # right, wrong, right
    assert "acc5" not in result
    assert result["acc1"] == pytest.approx(2 / 3)
    assert result["mean_per_class_recall"] == pytest.approx((1 + 1 / 2) / 2)  # class 2: 1/1, class 1: 1/2


def test_zero_shot_rejects_out_of_range_targets():
    with pytest.raises(ValueError, match="targets"):
        zero_shot_metrics(torch.zeros(2, 3), torch.tensor([0, 3]))


# ---------------------------------------------------------------- retrieval

@pytest.mark.parametrize("chunk_size", [1, 2, 1024])
def test_retrieval_multi_caption(chunk_size):
    images = at_angles(0, 90, 180)
    texts = at_angles(150, 5, 78, 95, 230, 300)  # two captions per image
    text_to_image = torch.tensor([0, 0, 1, 1, 2, 2])
    # text->image, rank of the right image (angular distances to images at 0/90/180):
    #   t0 150: 150/60/30 -> 3rd;  t1 5: 1st;  t2 78: 1st;  t3 95: 1st;  t4 230: 130/140/50 -> 1st;
    #   t5 300: 60/150/120 -> 2nd.   R@1 = 4/6, R@2 = 5/6, R@3 = 1
    # image->text, best texts: img0 (0°): t1 (5°), the SECOND caption of img0 -> hit@1 (its first caption t0 is last);
    #   img1 (90°): t3 (5°) -> hit@1;  img2 (180°): t0 (30°, img0's) then t4 (50°) -> hit@2.   R@1 = 2/3, R@2 = 1
    # k = 10 exceeds both candidate counts (3 images, 6 texts) and is clamped -> 1
    result = retrieval_metrics(3 * images, texts, text_to_image, ks=(1, 2, 3, 10), chunk_size=chunk_size)
    expected = {"image_retrieval_recall@1": 4 / 6, "image_retrieval_recall@2": 5 / 6,
                "image_retrieval_recall@3": 1.0, "image_retrieval_recall@10": 1.0,
                "text_retrieval_recall@1": 2 / 3, "text_retrieval_recall@2": 1.0,
                "text_retrieval_recall@3": 1.0, "text_retrieval_recall@10": 1.0}
    assert result == pytest.approx(expected)


def test_retrieval_one_to_one():
    images = at_angles(0, 90, 180)
    texts = at_angles(10, 165, 200)
    # text->image: t0: 1st; t1 165: 165/75/15 -> 2nd; t2 200: 1st.             R@1 = 2/3, R@5 (clamped) = 1
    # image->text: img0: t0 (10°) hit; img1: t1 (75°) before t0 (80°) hit; img2: t1 (15°) before t2 (20°) -> 2nd
    result = retrieval_metrics(images, texts, torch.tensor([0, 1, 2]), ks=(1, 5))
    assert result == pytest.approx({"image_retrieval_recall@1": 2 / 3, "image_retrieval_recall@5": 1.0,
                                    "text_retrieval_recall@1": 2 / 3, "text_retrieval_recall@5": 1.0})


def test_retrieval_rejects_bad_image_index():
    with pytest.raises(ValueError, match="text_to_image"):
        retrieval_metrics(torch.randn(2, 4), torch.randn(3, 4), torch.tensor([0, 1, 2]))


# ---------------------------------------------------------------- gap statistics

def test_gap_zero_for_identical_features():
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    assert centroid_distance(x, x) == pytest.approx(0, abs=1e-12)
    assert centroid_sqdist_per_dim(x, x) == pytest.approx(0, abs=1e-12)
    assert pair_distance(x, x) == pytest.approx(0, abs=1e-12)
    assert alignment(x, x) == pytest.approx(0, abs=1e-12)
    assert relative_gap(x, x) == pytest.approx(0, abs=1e-12)


def test_gap_stats_hand_computed_2d():
    x = torch.tensor([[1., 0], [0, 1]])
    y = torch.tensor([[-1., 0], [0, -1]])
    # c_x = (.5, .5), c_y = (-.5, -.5): c_x - c_y = (1, 1) -> centroid_distance √2, squared / D = 2 / 2 = 1
    # x_i - y_i = (2, 0), (0, 2): pair_distance 2, alignment 4
    # d(x_i, y_i) = (1 - (-1)) / 2 = 1 -> M = 1; d(x_1, x_2) = d(y_1, y_2) = (1 - 0) / 2 = .5 -> RMG = 1 / 1.5
    # pooled {(±1, 0), (0, ±1)}: 6 distinct pairs, 4 at squared distance 2 and 2 (opposite) at 4
    #   -> uniformity = log((4 e^-4 + 2 e^-8) / 6)
    expected = {"centroid_distance": math.sqrt(2), "centroid_sqdist_per_dim": 1.0, "pair_distance": 2.0,
                "relative_gap": 2 / 3, "alignment": 4.0,
                "uniformity": math.log((4 * math.exp(-4) + 2 * math.exp(-8)) / 6)}
    stats = modality_gap_stats(5 * x, 0.5 * y)  # scaling checks the normalisation inside
    assert set(stats) == set(expected) | {"separability"}
    assert {k: stats[k] for k in expected} == pytest.approx(expected)
    assert all(type(v) is float for v in stats.values())
    json.dumps(stats)


def test_uniformity_of_resamples_is_uniformity_of_each_resample():
    from common.metrics import uniformity_of_resamples

    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 8, generator=generator), torch.randn(50, 8, generator=generator) + 0.5
    picks = [torch.randint(50, (50,), generator=generator) for _ in range(4)] + [torch.arange(50)]
    expected = [uniformity(x[pick], y[pick]) for pick in picks]
    assert uniformity_of_resamples(x, y, picks, chunk_size=16) == pytest.approx(expected, rel=1e-12)
    assert len(set(expected)) == len(expected)  # the resamples differ: the check can fail


def test_uniformity_tiny_set_and_against_pdist():
    # one pair: (1, 0) and (0, 1) at squared distance 2 -> log exp(-4) = -4 (a u==v term would add exp(0) = 1)
    assert uniformity(torch.tensor([[1., 0]]), torch.tensor([[0., 1]])) == pytest.approx(-4.0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(30, 5, generator=g, dtype=torch.float64), torch.randn(30, 5, generator=g, dtype=torch.float64)
    pooled = torch.nn.functional.normalize(torch.cat([x, y]), dim=1)
    wang_isola = torch.pdist(pooled).pow(2).mul(-2).exp().mean().log().item()  # Wang & Isola's reference form
    assert uniformity(x, y, chunk_size=7) == pytest.approx(wang_isola, rel=1e-10)


def test_relative_gap_against_brute_force():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(20, 6, generator=g, dtype=torch.float64), torch.randn(20, 6, generator=g, dtype=torch.float64)
    xn, yn = torch.nn.functional.normalize(x, dim=1), torch.nn.functional.normalize(y, dim=1)
    off_diagonal = ~torch.eye(20, dtype=torch.bool)
    m = ((1 - (xn * yn).sum(1)) / 2).mean()
    d_x = ((1 - xn @ xn.T) / 2)[off_diagonal].mean()
    d_y = ((1 - yn @ yn.T) / 2)[off_diagonal].mean()
    assert relative_gap(x, y) == pytest.approx((m / (m + (d_x + d_y) / 2)).item(), rel=1e-10)


def test_separability_separated_and_identical_distributions():
    g = torch.Generator().manual_seed(3)
    near_e0 = torch.eye(8)[0] + 0.1 * torch.randn(200, 8, generator=g)
    near_e1 = torch.eye(8)[1] + 0.1 * torch.randn(200, 8, generator=g)
    assert separability(near_e0, near_e1) >= 0.99
    same_a, same_b = torch.randn(500, 16, generator=g), torch.randn(500, 16, generator=g)
    chance = separability(same_a, same_b, seed=1)
    assert abs(chance - 0.5) < 0.1
    assert separability(same_a, same_b, seed=1) == chance  # seeded split -> deterministic


def test_gap_stats_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        alignment(torch.randn(3, 4), torch.randn(4, 4))


# ---------------------------------------------------------------------------------------------------------------
# probes (docs/methods.md §5), on hand-made features
def test_pair_both_correct_needs_each_caption_to_pick_its_own_image():
    e = torch.eye(3)
    image_a, image_b = e[[0, 0, 0, 0]], e[[1, 1, 1, 1]]
    # pair 0: both right; pair 1: caption a picks b; pair 2: caption b picks a; pair 3: a tie for caption a
    text_a = torch.stack([e[0], e[1], e[0], e[2]])
    text_b = torch.stack([e[1], e[1], e[0], e[1]])
    assert metrics.pair_both_correct(image_a, image_b, text_a, text_b).tolist() == [True, False, False, False]


def test_pair_scores_average_the_patterns_not_the_pairs():
    correct = torch.tensor([True, True, True, False, True, False])  # colour 3/4, count 1/2
    result = metrics.pair_scores(correct, ["color"] * 4 + ["count"] * 2)
    assert result["per_pattern"] == {"color": 75.0, "count": 50.0} and result["score"] == pytest.approx(62.5)
    assert result["per_pattern_n"] == {"color": 4, "count": 2} and result["num_pairs"] == 6
    assert result["score_se"] == pytest.approx(100 * math.sqrt(0.75 * 0.25 / 4 + 0.5 * 0.5 / 2) / 2)


def test_hard_negative_accuracy_and_the_image_blind_score():
    e = torch.eye(3)
    images = torch.stack([e[0], e[0], e[1], e[1]])
    positives = torch.stack([e[0], e[0] + e[2], e[1], e[2]])
    negatives = torch.stack([e[1], e[2], e[0], e[1]])
    # cos(v, p) > cos(v, n): item 0 yes, 1 yes (0.71 > 0), 2 yes, 3 no (0 < 1)
    assert metrics.hard_negative_accuracy(images, positives, negatives) == pytest.approx(0.75)
    # mean image (e0 + e1)/2: p·m vs n·m = 0.5 vs 0.5 (tie, ½), 0.35 vs 0 (yes), 0.5 vs 0.5 (½), 0 vs 0.5 (no)
    assert metrics.blind_accuracy(images, positives, negatives) == pytest.approx((0.5 + 1 + 0.5 + 0) / 4)


def test_text_to_text_recall_counts_the_own_translation_first():
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    candidates = torch.tensor([[1.0, 0.0], [1.0, 0.1], [1.0, 1.2]])  # query 1's best is candidate 2
    assert metrics.text_to_text_recall(queries, candidates) == pytest.approx(2 / 3)

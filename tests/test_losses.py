"""Tests for common/losses.py, pinned to hand-computed values or independent computations (CPU, instant)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common.losses import (
    ema_update,
    hycd_loss,
    m2mix_loss,
    proclip_instance_loss,
    proclip_structure_loss,
    rafa_loss,
    raw_infonce_loss,
    sample_beta,
    sample_rafa_reference,
    self_kd_loss,
    slerp,
)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- RaFA


def test_rafa_zero_when_features_equal_reference():
    r = torch.randn(4, 8, generator=_gen(0))
    assert rafa_loss(r.clone(), r.clone(), r).item() == 0.0


def test_rafa_hand_computed_2x2():
    z_i = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    z_t = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    r = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # z_i - r = [[0,2],[3,3]] -> (0+4+9+9)/4 = 5.5 ;  z_t - r = [[-1,0],[1,0]] -> (1+0+1+0)/4 = 0.5
    assert rafa_loss(z_i, z_t, r).item() == pytest.approx(6.0)


def test_rafa_sgd_step_moves_both_modalities_toward_shared_reference():
    g = _gen(1)
    z_i = torch.randn(3, 5, generator=g).requires_grad_()
    z_t = torch.randn(3, 5, generator=g).requires_grad_()
    r = torch.randn(3, 5, generator=g)
    rafa_loss(z_i, z_t, r).backward()
    lr = 0.5
    with torch.no_grad():
        new_i, new_t = z_i - lr * z_i.grad, z_t - lr * z_t.grad
    # d/dz mean((z-r)^2) = 2(z-r)/(B*D), so one step scales (z - r) by exactly 1 - 2*lr/15.
    shrink = 1 - 2 * lr / 15
    torch.testing.assert_close(new_i - r, shrink * (z_i.detach() - r))
    torch.testing.assert_close(new_t - r, shrink * (z_t.detach() - r))
    assert (new_i - r).norm() < (z_i - r).norm() and (new_t - r).norm() < (z_t - r).norm()


def test_rafa_rejects_mismatched_reference():
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="reference"):
        rafa_loss(z, z, torch.zeros(3))


def test_reference_shape_and_seeded_reproducibility():
    a = sample_rafa_reference((4, 6), generator=_gen(7))
    b = sample_rafa_reference((4, 6), generator=_gen(7))
    c = sample_rafa_reference((4, 6), generator=_gen(8))
    assert a.shape == (4, 6)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_reference_std_sample_mean_and_std():
    r = sample_rafa_reference((4000, 10), mean=2.0, std=3.0, generator=_gen(0))
    assert r.mean().item() == pytest.approx(2.0, abs=0.05)
    assert r.std().item() == pytest.approx(3.0, abs=0.05)


def test_reference_precomputed_per_dimension_stats():
    stats = {"mean": torch.tensor([-1.0, 0.0, 5.0]), "std": torch.tensor([0.1, 1.0, 2.0])}
    r = sample_rafa_reference((20000, 3), prior="precomputed_sample", precomputed=stats, generator=_gen(0))
    torch.testing.assert_close(r.mean(0), stats["mean"], atol=0.05, rtol=0)
    torch.testing.assert_close(r.std(0), stats["std"], atol=0.05, rtol=0.02)
    fixed = sample_rafa_reference((2, 3), prior="precomputed_fixed", precomputed=stats)
    assert torch.equal(fixed, stats["mean"].expand(2, 3))


def test_reference_uniform_follows_official_low_high():
    r = sample_rafa_reference((5000, 4), prior="uniform_sample", mean=-1.0, std=3.0, generator=_gen(0))
    assert r.min().item() >= -1.0 and r.max().item() < 3.0
    assert r.mean().item() == pytest.approx(1.0, abs=0.05)  # midpoint of U(-1, 3)
    with pytest.raises(ValueError, match="mean < std"):
        sample_rafa_reference((2, 2), prior="uniform_sample", mean=1.0, std=1.0)


def test_reference_bad_prior_and_missing_stats():
    with pytest.raises(ValueError, match="std_sample.*uniform_sample.*precomputed_sample"):
        sample_rafa_reference((2, 2), prior="gaussian")
    with pytest.raises(ValueError, match="precomputed"):
        sample_rafa_reference((2, 2), prior="precomputed_sample")
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        wrong_dim = {"mean": torch.zeros(3), "std": torch.ones(3)}
        sample_rafa_reference((2, 2), prior="precomputed_sample", precomputed=wrong_dim)


# ---------------------------------------------------------------- HyCD / Self-KD


def _features(seed, b=4, d=6):
    g = _gen(seed)
    return [torch.randn(b, d, generator=g) for _ in range(4)]


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_hycd_alpha_one_is_cross_entropy_on_raw_logits(tau):
    zi, zt, ti, tt = _features(0)
    s = zi @ zt.T
    labels = torch.arange(4)
    expected = tau**2 * (F.cross_entropy(s / tau, labels) + F.cross_entropy(s.T / tau, labels)) / 2
    torch.testing.assert_close(hycd_loss(zi, zt, ti, tt, alpha=1.0, tau=tau), expected)


def test_hycd_alpha_zero_student_equals_teacher_is_zero():
    zi, zt, _, _ = _features(1)
    assert hycd_loss(zi, zt, zi.clone(), zt.clone(), alpha=0.0).item() == pytest.approx(0.0, abs=1e-6)


def test_hycd_matches_hand_written_kl_for_two_samples():
    zi = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    zt = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    ti = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    tt = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    S = [[1.0, 0.0], [2.0, 2.0]]  # zi @ zt.T
    T = [[2.0, 2.0], [0.0, 1.0]]  # ti @ tt.T

    def softmax(row):
        e = [math.exp(v) for v in row]
        return [v / sum(e) for v in e]

    def direction(S, T):
        total = 0.0
        for i in range(2):
            q, pt = softmax(S[i]), softmax(T[i])
            p = [0.5 * (i == j) + 0.5 * pt[j] for j in range(2)]
            total += sum(p[j] * math.log(p[j] / q[j]) for j in range(2))
        return total / 2  # batch mean

    transpose = lambda m: [[m[0][0], m[1][0]], [m[0][1], m[1][1]]]
    expected = (direction(S, T) + direction(transpose(S), transpose(T))) / 2
    assert hycd_loss(zi, zt, ti, tt, alpha=0.5, tau=1.0).item() == pytest.approx(expected, rel=1e-5)


def test_hycd_and_self_kd_give_no_gradient_to_teacher():
    zi, zt, ti, tt = [t.requires_grad_() for t in _features(2)]
    (hycd_loss(zi, zt, ti, tt) + self_kd_loss(zi, zt, ti, tt, logit_scale=10.0)).backward()
    assert ti.grad is None and tt.grad is None
    assert zi.grad is not None and zi.grad.abs().sum() > 0


def test_self_kd_zero_when_student_equals_teacher():
    zi, zt, _, _ = _features(3)
    assert self_kd_loss(zi, zt, zi.clone(), zt.clone(), logit_scale=100.0).item() == pytest.approx(0.0, abs=1e-5)


def test_self_kd_matches_independent_kl_on_normalised_scaled_logits():
    zi, zt, ti, tt = _features(4)
    scale = 20.0
    S = scale * (zi / zi.norm(dim=1, keepdim=True)) @ (zt / zt.norm(dim=1, keepdim=True)).T
    T = scale * (ti / ti.norm(dim=1, keepdim=True)) @ (tt / tt.norm(dim=1, keepdim=True)).T

    def kl_rows(student, teacher):  # mean_i sum_j p_ij (log p_ij - log q_ij)
        p, log_p, log_q = teacher.softmax(1), teacher.log_softmax(1), student.log_softmax(1)
        return (p * (log_p - log_q)).sum(1).mean()

    expected = (kl_rows(S, T) + kl_rows(S.T, T.T)) / 2
    torch.testing.assert_close(self_kd_loss(zi, zt, ti, tt, logit_scale=scale), expected)


def test_raw_infonce_hand_computed_on_unnormalised_features():
    # Official CLIP-Refine InfoNCE: logits s·z_i·z_t, NOT normalised. z_i = (1,0),(0,2); z_t = (2,0),(1,1); s = 0.5
    # s·z_i z_tᵀ = [[1, 0.5], [0, 1]]: image rows CE = log(1+e^-0.5), log(1+e^-1); text rows (columns) [[1,0],[0.5,1]]
    zi, zt = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    ce = lambda d: math.log1p(math.exp(-d))  # CE of a 2-way row whose positive leads by d
    expected = ((ce(0.5) + ce(1.0)) / 2 + (ce(1.0) + ce(0.5)) / 2) / 2
    assert raw_infonce_loss(zi, zt, 0.5).item() == pytest.approx(expected, rel=1e-6)
    # scaling the features by c scales the logits by c²: the raw form is not invariant to the feature norm
    assert raw_infonce_loss(3 * zi, 3 * zt, 0.5).item() != pytest.approx(expected, rel=1e-3)


def test_self_kd_feature_mse_is_the_official_fd_loss():
    zi, zt, ti, tt = _features(6)
    expected = ((zi - ti) ** 2).mean() + ((zt - tt) ** 2).mean()  # mean over B·D entries, per modality
    torch.testing.assert_close(self_kd_loss(zi, zt, ti, tt, logit_scale=100.0, form="feature_mse"), expected)
    with pytest.raises(ValueError, match="form='fd'.*logit_kl, feature_mse"):
        self_kd_loss(zi, zt, ti, tt, logit_scale=100.0, form="fd")


# ---------------------------------------------------------------- slerp / m²-mix


def test_slerp_endpoints_unit_norm_and_orthogonal_midpoint():
    g = _gen(5)
    a = F.normalize(torch.randn(6, 8, generator=g), dim=1)
    b = F.normalize(torch.randn(6, 8, generator=g), dim=1)
    torch.testing.assert_close(slerp(a, b, 0.0), a, atol=1e-5, rtol=0)
    torch.testing.assert_close(slerp(a, b, 1.0), b, atol=1e-5, rtol=0)
    torch.testing.assert_close(slerp(a, b, 0.3).norm(dim=1), torch.ones(6))
    e1, e2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    h = 1 / math.sqrt(2)
    torch.testing.assert_close(slerp(e1, e2, 0.5), torch.tensor([[h, h]]))
    # a third of the way along the 90° arc is the 30° direction
    torch.testing.assert_close(slerp(e1, e2, 1 / 3), torch.tensor([[math.sqrt(3) / 2, 0.5]]))


def test_slerp_of_equal_vectors_is_finite():
    a = torch.tensor([[0.6, 0.8]], requires_grad=True)
    out = slerp(a, a.detach().clone(), 0.4)
    out.sum().backward()
    torch.testing.assert_close(out.detach(), a.detach(), atol=1e-4, rtol=0)
    assert torch.isfinite(a.grad).all()


def _unit(degrees, length=1.0):
    rad = math.radians(degrees)
    return [length * math.cos(rad), length * math.sin(rad)]


def test_m2mix_two_sample_batch_matches_hand_computation():
    # Angles on the unit circle: x1=0°, y1=60°, x2=90°, y2=180°. With λ=0.5 the mixed negatives are the arc
    # midpoints m1=30°, m2=135°. Inputs are given with non-unit length to check the normalisation inside.
    image = torch.tensor([_unit(0, 2.0), _unit(90, 0.5)])
    text = torch.tensor([_unit(60, 3.0), _unit(180, 1.0)])
    s, s_m = 2.0, 3.0
    cos = lambda deg: math.cos(math.radians(deg))
    softplus = lambda v: math.log1p(math.exp(v))  # -log(e^p / (e^p + e^n)) = log(1 + e^(n - p))
    img_1 = softplus(s_m * cos(135 - 0) - s * cos(60))  # x1: pos y1 (60°), neg m2 (135°)
    img_2 = softplus(s_m * cos(90 - 30) - s * cos(90))  # x2: pos y2 (90° apart), neg m1 (30°)
    txt_1 = softplus(s_m * cos(135 - 60) - s * cos(60))  # y1: pos x1, neg m2
    txt_2 = softplus(s_m * cos(180 - 30) - s * cos(90))  # y2: pos x2, neg m1
    expected = (img_1 + img_2 + txt_1 + txt_2) / 4
    got = m2mix_loss(image, text, logit_scale=s, lam=0.5, mix_logit_scale=s_m)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_m2mix_official_form_scales_positives_and_sums_the_directions():
    # Same geometry as above; official: every logit of the mixed rows (positives too) at s_m, sum of the directions.
    image = torch.tensor([_unit(0, 2.0), _unit(90, 0.5)])
    text = torch.tensor([_unit(60, 3.0), _unit(180, 1.0)])
    s_m = 1 / 0.07
    cos = lambda deg: math.cos(math.radians(deg))
    softplus = lambda v: math.log1p(math.exp(v))
    img = softplus(s_m * (cos(135) - cos(60))) + softplus(s_m * (cos(60) - cos(90)))
    txt = softplus(s_m * (cos(75) - cos(60))) + softplus(s_m * (cos(150) - cos(90)))
    expected = img / 2 + txt / 2  # mean over rows in each direction, then summed
    got = m2mix_loss(image, text, logit_scale=100.0, lam=0.5, mix_logit_scale=s_m, scale_positives=True,
                     reduction="sum")
    assert got.item() == pytest.approx(expected, rel=1e-5)
    mean_form = m2mix_loss(image, text, logit_scale=100.0, lam=0.5, mix_logit_scale=s_m, scale_positives=True)
    assert got.item() == pytest.approx(2 * mean_form.item(), rel=1e-6)
    with pytest.raises(ValueError, match="reduction='total'"):
        m2mix_loss(image, text, 100.0, lam=0.5, reduction="total")


def test_m2mix_lambda_sampling_is_seeded_and_beta_shaped():
    image, text = torch.randn(3, 4, generator=_gen(0)), torch.randn(3, 4, generator=_gen(1))
    a = m2mix_loss(image, text, 10.0, generator=_gen(9))
    b = m2mix_loss(image, text, 10.0, generator=_gen(9))
    assert torch.equal(a, b)
    g = _gen(0)
    lams = torch.tensor([sample_beta(0.5, g) for _ in range(4000)])
    assert ((lams > 0) & (lams < 1)).all()
    assert lams.mean().item() == pytest.approx(0.5, abs=0.03)
    assert lams.var().item() == pytest.approx(1 / 8, abs=0.01)  # Var Beta(a, a) = 1 / (4 (2a + 1))


# ---------------------------------------------------------------- ProCLIP

# Student rows (normalised): s0=(0.6,0.8) from (3,4), s1=(1,0), s2=(0,1) from (0,2), s3=(-1,0).
# Teacher rows (normalised): t0=(1,0), t1=(1,0), t2=(0,-1) from (0,-5), t3=(1,0).
STUDENT = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])
TEACHER = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, -5.0], [1.0, 0.0]])
# L_ins: |(-0.4,0.8)|²=0.8, 0, |(0,2)|²=4, |(-2,0)|²=4  -> 8.8
L_INS = 8.8
# pdist(student): 01 √0.8, 02 √0.4, 03 √3.2, 12 √2, 13 2, 23 √2
# pdist(teacher): 01 0,    02 √2,   03 0,    12 √2, 13 0, 23 √2
# smooth-L1 (β=1): 01 d=√0.8<1 -> 0.4 ; 02 d=√0.4-√2 -> 0.5(2.4-2√0.8)=1.2-√0.8 ; 03 d=√3.2>1 -> √3.2-0.5 ;
# 12 -> 0 ; 13 d=2 -> 1.5 ; 23 -> 0.   Sum = 2.6 - √0.8 + √3.2 = 2.6 + √0.8
L_STRUCT = 2.6 + math.sqrt(0.8)


def test_proclip_instance_loss_hand_computed():
    assert proclip_instance_loss(STUDENT, TEACHER).item() == pytest.approx(L_INS, rel=1e-6)


def test_proclip_structure_loss_hand_computed():
    assert proclip_structure_loss(STUDENT, TEACHER).item() == pytest.approx(L_STRUCT, rel=1e-6)


def test_proclip_distill_is_sum_and_teacher_gets_no_gradient():
    student, teacher = STUDENT.clone().requires_grad_(), TEACHER.clone().requires_grad_()
    loss = proclip_instance_loss(student, teacher) + proclip_structure_loss(student, teacher)
    assert loss.item() == pytest.approx(L_INS + L_STRUCT, rel=1e-6)
    loss.backward()
    assert teacher.grad is None and torch.isfinite(student.grad).all()


def test_proclip_structure_gradient_finite_with_duplicate_rows():
    student = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]], requires_grad=True)
    proclip_structure_loss(student, torch.eye(3, 2)).backward()
    assert torch.isfinite(student.grad).all()


# ---------------------------------------------------------------- EMA


def _tiny(weight, bias, running_mean):
    model = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([weight]))
        model[0].bias.copy_(torch.tensor([bias]))
        model[1].running_mean.copy_(torch.tensor([running_mean]))
    return model


def test_ema_update_matches_manual_computation():
    teacher = _tiny([1.0, 2.0], 3.0, 0.0)
    student = _tiny([3.0, -2.0], 1.0, 7.0)
    ema_update(teacher, student, momentum=0.75)
    # 0.75*[1,2] + 0.25*[3,-2] = [1.5, 1.0] ; 0.75*3 + 0.25*1 = 2.5 ; buffers are copied
    torch.testing.assert_close(teacher[0].weight, torch.tensor([[1.5, 1.0]]))
    torch.testing.assert_close(teacher[0].bias, torch.tensor([2.5]))
    torch.testing.assert_close(teacher[1].running_mean, torch.tensor([7.0]))
    torch.testing.assert_close(student[0].weight, torch.tensor([[3.0, -2.0]]))  # the student is untouched


def test_ema_update_rejects_mismatched_modules_and_bad_momentum():
    with pytest.raises(ValueError, match="do not match"):
        ema_update(nn.Linear(2, 1), nn.Sequential(nn.Linear(2, 1)), 0.999)
    with pytest.raises(ValueError, match="momentum"):
        ema_update(nn.Linear(2, 1), nn.Linear(2, 1), 1.5)

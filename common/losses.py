"""Every training loss of postclip, as small pure functions of feature tensors.

Notation follows docs/methods.md: z_i, z_t are projected image/text features BEFORE L2
normalisation; x, y the same features after it. Each function returns a differentiable scalar tensor.
Symmetric InfoNCE on normalised features is open_clip's ``ClipLoss`` (used by the callers); ``raw_infonce_loss``
below is the official CLIP-Refine code's form on unnormalised features. Where the official code and a plain
reading of the paper differ (docs/methods.md §4), both forms are here and the docstring says which is which.
With several ranks, a loss over the whole batch runs on the rows of every rank (``gather_with_grad``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

RAFA_PRIORS = ("std_sample", "uniform_sample", "precomputed_sample", "precomputed_fixed", "uniform_fixed")


def _check_same_shape(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must both be [batch, dim] with the same shape; "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def gather_with_grad(tensor: Tensor, world_size: int) -> Tensor:
    """The rows of every rank, concatenated in rank order, with gradient (open_clip's ClipLoss gather_with_grad).

    A batch-wide loss computed by every rank on the gathered global batch then trains exactly the 1-process
    objective: the all-gather's backward sums each rank's gradient for a rank's rows (N copies of ∂L/∂f_r), and
    the average of the gradients over the N ranks (common/train.py) divides it back, leaving ∇L. The loss value on
    every rank is the global one. With one process: the tensor itself.
    """
    if world_size == 1:
        return tensor
    import torch.distributed.nn  # noqa: F401  (registers torch.distributed.nn.all_gather)
    return torch.cat(torch.distributed.nn.all_gather(tensor), dim=0)


# --------------------------------------------------------------------------------------------------
# CLIP-Refine (docs/methods.md §1)
# --------------------------------------------------------------------------------------------------


def sample_rafa_reference(
    shape,
    prior: str = "std_sample",
    mean: float = 0.0,
    std: float = 1.0,
    generator: torch.Generator | None = None,
    precomputed: dict | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw the RaFA reference r of ``shape`` = (B, D): one row r_k per image-caption pair (docs/methods.md §1).

    Priors (names and meanings as in the official CLIP-Refine code, updater/contrastive.py):
      - ``std_sample``: r ~ N(mean, std²) element-wise (the default; N(0, I) in the paper).
      - ``uniform_sample``: r ~ U(low=mean, high=std) element-wise. The official code passes (mu, sigma) as
        the interval ends, so the defaults give U(0, 1) (mean 0.5, std 0.29), NOT a mean-0/std-1 prior.
      - ``precomputed_sample``: r_kd ~ N(mean_d, std_d²) per dimension, ``precomputed={"mean": [D], "std": [D]}``.
      - ``precomputed_fixed``: r_k = mean_d for every k (no randomness).
      - ``uniform_fixed``: r = ``mean`` everywhere (no randomness), as the official code does.
    Randomness comes only from ``generator`` (so a checkpointed generator state resumes exactly). Samples are
    drawn on ``device`` (default: the generator's device, else CPU).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2:
        raise ValueError(f"RaFA reference shape must be (batch, dim), got {shape}")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")

    if prior == "std_sample":
        if std < 0:
            raise ValueError(f"RaFA prior std must be >= 0, got {std}")
        return mean + std * torch.randn(shape, generator=generator, device=device)
    if prior == "uniform_sample":
        low, high = float(mean), float(std)
        if not low < high:
            raise ValueError(
                f"uniform_sample uses mean as the low end and std as the high end (as the official code); "
                f"need mean < std, got mean={low}, std={high}"
            )
        return low + (high - low) * torch.rand(shape, generator=generator, device=device)
    if prior == "uniform_fixed":
        return torch.full(shape, float(mean), device=device)
    if prior in ("precomputed_sample", "precomputed_fixed"):
        mean_d, std_d = _precomputed_stats(precomputed, shape[1], device)
        if prior == "precomputed_fixed":
            return mean_d.expand(shape).clone()
        return mean_d + std_d * torch.randn(shape, generator=generator, device=device)
    raise ValueError(f"unknown RaFA prior {prior!r}; valid priors are: {', '.join(RAFA_PRIORS)}")


def _precomputed_stats(precomputed: dict | None, dim: int, device) -> tuple[Tensor, Tensor]:
    if not isinstance(precomputed, dict) or "mean" not in precomputed or "std" not in precomputed:
        raise ValueError(
            'the precomputed RaFA priors need precomputed={"mean": Tensor[D], "std": Tensor[D]} '
            "(per-dimension statistics of the pre-trained model's features)"
        )
    mean_d = torch.as_tensor(precomputed["mean"], dtype=torch.float32, device=device)
    std_d = torch.as_tensor(precomputed["std"], dtype=torch.float32, device=device)
    if mean_d.shape != (dim,) or std_d.shape != (dim,):
        raise ValueError(
            f"precomputed RaFA mean/std must have shape ({dim},) to match the feature dim; "
            f"got {tuple(mean_d.shape)} and {tuple(std_d.shape)}"
        )
    if (std_d < 0).any():
        raise ValueError("precomputed RaFA std has negative entries")
    return mean_d, std_d


def rafa_loss(z_image: Tensor, z_text: Tensor, reference: Tensor) -> Tensor:
    """RaFA (docs/methods.md §1): mean((z_i − r)²) + mean((z_t − r)²) on UNNORMALISED features.

    Each mean runs over all B·D entries (the official code's F.mse_loss); the paper's per-sample form
    (1/2B) Σ(‖z_i−r‖² + ‖z_t−r‖²) is this times D/2. The same r is used for an image and its caption.
    """
    _check_same_shape(z_image, z_text, "z_image", "z_text")
    if reference.shape != z_image.shape:
        raise ValueError(
            f"RaFA reference must have the features' shape {tuple(z_image.shape)}, got {tuple(reference.shape)}"
        )
    reference = reference.to(device=z_image.device, dtype=z_image.dtype)
    return F.mse_loss(z_image, reference) + F.mse_loss(z_text, reference)


def _distill_one_direction(student_logits: Tensor, teacher_logits: Tensor, alpha: float, tau: float) -> Tensor:
    # KL(P || softmax(S/τ)) with P = α·I + (1−α)·softmax(T/τ); batch-mean reduction, times τ² (docs/methods.md §1).
    identity = torch.eye(student_logits.shape[0], device=student_logits.device, dtype=student_logits.dtype)
    target = alpha * identity + (1.0 - alpha) * F.softmax(teacher_logits / tau, dim=1)
    log_student = F.log_softmax(student_logits / tau, dim=1)
    return F.kl_div(log_student, target, reduction="batchmean") * tau**2


def hycd_loss(
    student_image: Tensor,
    student_text: Tensor,
    teacher_image: Tensor,
    teacher_text: Tensor,
    alpha: float = 0.5,
    tau: float = 1.0,
) -> Tensor:
    """HyCD, hybrid contrastive-distillation (docs/methods.md §1).

    S = z_i z_tᵀ and T = z_i' z_t'ᵀ are raw dot products of UNNORMALISED features (no logit scale).
    image→text: KL(α·I + (1−α)·softmax(T/τ) ‖ softmax(S/τ)), batch-mean, times τ²;
    text→image: the same on Sᵀ, Tᵀ. Returns the mean of the two directions. The teacher gets no gradient.
    """
    _check_same_shape(student_image, student_text, "student_image", "student_text")
    _check_same_shape(teacher_image, teacher_text, "teacher_image", "teacher_text")
    _check_same_shape(student_image, teacher_image, "student_image", "teacher_image")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"HyCD alpha must be in [0, 1], got {alpha}")
    if tau <= 0:
        raise ValueError(f"HyCD temperature tau must be > 0, got {tau}")
    student_logits = student_image @ student_text.T
    teacher_logits = teacher_image.detach() @ teacher_text.detach().T
    image_to_text = _distill_one_direction(student_logits, teacher_logits, alpha, tau)
    text_to_image = _distill_one_direction(student_logits.T, teacher_logits.T, alpha, tau)
    return (image_to_text + text_to_image) / 2


def raw_infonce_loss(z_image: Tensor, z_text: Tensor, logit_scale: Tensor | float) -> Tensor:
    """Symmetric InfoNCE of the official CLIP-Refine code (its Contrastive and Self-KD baselines, Table 1).

        L = ½ [CE(s·z_i z_tᵀ, I) + CE(s·z_t z_iᵀ, I)],   s = ``logit_scale`` (already exp'd)
    on UNNORMALISED features: the official model returns the towers' raw outputs and a fresh logit scale
    initialised to ln 100, so its logits are 100 × raw dot products (updater/contrastive.py ``clip_loss``).
    The plain reading of the paper (``infonce_form=normalised``, open_clip's ClipLoss, docs/methods.md §1
    "Baselines") uses s·x_i x_tᵀ on L2-normalised features. With ViT-B/32 feature norms of ~10 the raw
    logits are ~100× larger, so the raw softmax is nearly one-hot and the two losses differ by orders of magnitude.
    """
    _check_same_shape(z_image, z_text, "z_image", "z_text")
    logits = logit_scale * z_image @ z_text.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


SELF_KD_FORMS = ("logit_kl", "feature_mse")


def self_kd_loss(
    student_image: Tensor,
    student_text: Tensor,
    teacher_image: Tensor,
    teacher_text: Tensor,
    logit_scale: Tensor | float,
    form: str = "logit_kl",
) -> Tensor:
    """Distillation term of the Self-KD baseline (CLIP-Refine Table 1; docs/methods.md §1 "Baselines").

    ``form="feature_mse"`` (the official CLIPUpdater's default ``distill_loss="fd"``): on UNNORMALISED features,
        L = mean((z_i − z_i')²) + mean((z_t − z_t')²)
    each mean over all B·D entries (F.mse_loss), ``logit_scale`` unused.
    ``form="logit_kl"`` (the plain reading of the paper): with x = normalise(z) and s = ``logit_scale`` (already
    exp'd, e.g. 100), student logits S = s·x_i x_tᵀ and teacher logits T = s·x_i' x_t'ᵀ (the teacher is the
    frozen starting model, detached):
        L = ½ [ KL(softmax(T) ‖ softmax(S)) + KL(softmax(Tᵀ) ‖ softmax(Sᵀ)) ],
    softmax over each row, KL with batch-mean reduction. The caller adds the InfoNCE part (open_clip ClipLoss).
    """
    _check_same_shape(student_image, student_text, "student_image", "student_text")
    _check_same_shape(teacher_image, teacher_text, "teacher_image", "teacher_text")
    _check_same_shape(student_image, teacher_image, "student_image", "teacher_image")
    if form == "feature_mse":
        return F.mse_loss(student_image, teacher_image.detach()) + F.mse_loss(student_text, teacher_text.detach())
    if form != "logit_kl":
        raise ValueError(f"self_kd form={form!r}: use one of {', '.join(SELF_KD_FORMS)}")
    student_logits = logit_scale * F.normalize(student_image, dim=-1) @ F.normalize(student_text, dim=-1).T
    with torch.no_grad():
        teacher_logits = logit_scale * F.normalize(teacher_image, dim=-1) @ F.normalize(teacher_text, dim=-1).T
    # alpha = 0, tau = 1 of the HyCD direction is exactly KL(softmax(T) || softmax(S)), batch-mean.
    image_to_text = _distill_one_direction(student_logits, teacher_logits, alpha=0.0, tau=1.0)
    text_to_image = _distill_one_direction(student_logits.T, teacher_logits.T, alpha=0.0, tau=1.0)
    return (image_to_text + text_to_image) / 2


# --------------------------------------------------------------------------------------------------
# m²-mix baseline (Oh et al., NeurIPS 2023, "Geodesic Multi-Modal Mixup for Robust Fine-Tuning")
# --------------------------------------------------------------------------------------------------


def slerp(a: Tensor, b: Tensor, lam: Tensor | float) -> Tensor:
    """Geodesic interpolation between unit vectors (row-wise): lam=0 gives a, lam=1 gives b.

    slerp(a, b, λ) = sin((1−λ)θ)/sin θ · a + sin(λθ)/sin θ · b, with θ = arccos(a·b).
    cos θ is clamped just inside (−1, 1) so that (nearly) equal vectors give a finite result ≈ a and finite
    gradients; antipodal vectors have no unique geodesic and give an arbitrary but finite point.
    """
    cos_theta = (a * b).sum(dim=-1, keepdim=True).clamp(-1.0 + 1e-6, 1.0 - 1e-6)
    theta = torch.acos(cos_theta)
    sin_theta = torch.sin(theta)
    lam = torch.as_tensor(lam, dtype=a.dtype, device=a.device)
    return torch.sin((1.0 - lam) * theta) / sin_theta * a + torch.sin(lam * theta) / sin_theta * b


def sample_beta(alpha: float, generator: torch.Generator | None = None) -> float:
    """One λ ~ Beta(alpha, alpha), reproducible from a torch.Generator (torch's Beta sampler takes none)."""
    if alpha <= 0:
        raise ValueError(f"Beta concentration must be > 0, got {alpha}")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def m2mix_loss(
    image_features: Tensor,
    text_features: Tensor,
    logit_scale: Tensor | float,
    lam: float | None = None,
    beta_alpha: float = 0.5,
    generator: torch.Generator | None = None,
    mix_logit_scale: Tensor | float | None = None,
    scale_positives: bool = False,
    reduction: str = "mean",
) -> Tensor:
    """The m²-mix term (Oh et al. 2023, Sec. "Geodesic Multi-Modal Mixup"); the caller adds plain InfoNCE.

    The paper trains on L_CLIP + w·L_m²-mix (its code weights the term with ``--mmmix``), so this returns only
    L_m²-mix. With x_i, y_i the L2-normalised image/text features (normalised here), one λ ~ Beta(α, α) per
    batch (α = 0.5 in the authors' scripts), and hard negatives m_j = slerp(x_j, y_j, λ) on the geodesic
    between an image and its own caption:
        ℓ_img(i) = −log  e^{s·x_i·y_i} / (e^{s·x_i·y_i} + Σ_{j≠i} e^{s_m·x_i·m_j})
        ℓ_txt(i) = −log  e^{s·y_i·x_i} / (e^{s·y_i·x_i} + Σ_{j≠i} e^{s_m·y_i·m_j})
        L_m²-mix = (1/2B) Σ_i [ℓ_img(i) + ℓ_txt(i)]                       (reduction="mean", the plain reading)
        L_m²-mix = (1/B) Σ_i ℓ_img(i) + (1/B) Σ_i ℓ_txt(i)               (reduction="sum", the official code)
    i.e. the positive stays the true pair and the B−1 negatives of each row are replaced by mixed embeddings.
    s = ``logit_scale`` (exp'd), s_m = ``mix_logit_scale`` (default: s). The official code (main.py, ``--mmmix``
    default 0.01 on the SUM of both directions; scripts/m2mix.sh passes ``--sep_scale``) multiplies EVERY logit of
    the mixed rows, positives included, by 1/τ2 = 1/0.07: that is ``scale_positives=True`` (positives at s_m too)
    with ``mix_logit_scale=1/0.07`` and ``reduction="sum"``. The authors' slerp weights the first argument by sin(λθ); since Beta(α, α)
    is symmetric the distribution of m_j is the same. Pass ``lam`` to fix λ (tests); else it is sampled.
    """
    _check_same_shape(image_features, text_features, "image_features", "text_features")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"m2mix reduction={reduction!r}: use mean (of the two directions) or sum")
    if lam is None:
        lam = sample_beta(beta_alpha, generator)
    if mix_logit_scale is None:
        mix_logit_scale = logit_scale
    x = F.normalize(image_features, dim=-1)
    y = F.normalize(text_features, dim=-1)
    mixed = slerp(x, y, lam)

    identity = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    positive_scale = mix_logit_scale if scale_positives else logit_scale
    positive = positive_scale * (x * y).sum(dim=-1)  # x_i·y_i, shared by both directions
    logits_image = torch.where(identity, positive[:, None], mix_logit_scale * x @ mixed.T)
    logits_text = torch.where(identity, positive[:, None], mix_logit_scale * y @ mixed.T)
    labels = torch.arange(x.shape[0], device=x.device)
    both = F.cross_entropy(logits_image, labels) + F.cross_entropy(logits_text, labels)
    return both if reduction == "sum" else both / 2


# --------------------------------------------------------------------------------------------------
# ProCLIP (docs/methods.md §2)
# --------------------------------------------------------------------------------------------------


def proclip_instance_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """L_ins (docs/methods.md §2) = Σ_k ‖s_k − t_k‖², sum reduction, on L2-normalised features; teacher detached.

    Stage 1 of the official ProCLIP code (training/train.py) adds this term a second time for the long ("noise")
    caption of every pair, whose teacher embedding is CLIP's text tower on the truncated long caption; L_struct
    stays on the short captions. proclip_stage1.py does that with ``instance_long_captions=true``.
    """
    _check_same_shape(student, teacher, "student", "teacher")
    s = F.normalize(student, dim=-1)
    t = F.normalize(teacher.detach(), dim=-1)
    return F.mse_loss(s, t, reduction="sum")


def proclip_structure_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """L_struct (docs/methods.md §2) = Σ smooth-L1_{β=1}(pdist(s) − pdist(t)) over all in-batch pairs, sum reduction.

    pdist is the Euclidean distance of every pair k < l of the L2-normalised features; teacher detached.
    """
    _check_same_shape(student, teacher, "student", "teacher")
    s = F.normalize(student, dim=-1)
    t = F.normalize(teacher.detach(), dim=-1)
    return F.smooth_l1_loss(torch.pdist(s), torch.pdist(t), beta=1.0, reduction="sum")


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """ProCLIP's EMA teacher (docs/methods.md §2, α = 0.999): θ_t ← m·θ_t + (1−m)·θ_s in place; buffers are copied."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
    for kind, teacher_items, student_items in (
        ("parameters", teacher.named_parameters(), student.named_parameters()),
        ("buffers", teacher.named_buffers(), student.named_buffers()),
    ):
        teacher_dict, student_dict = dict(teacher_items), dict(student_items)
        if teacher_dict.keys() != student_dict.keys():
            missing = sorted(teacher_dict.keys() ^ student_dict.keys())[:5]
            raise ValueError(
                f"EMA teacher and student {kind} do not match (e.g. {missing}); build the teacher as a copy of "
                "the student and unwrap DistributedDataParallel (.module) before calling ema_update"
            )
        for name, teacher_tensor in teacher_dict.items():
            student_tensor = student_dict[name].to(teacher_tensor.device)
            if kind == "parameters":
                student_tensor = student_tensor.to(teacher_tensor.dtype)
                teacher_tensor.mul_(momentum).add_(student_tensor, alpha=1.0 - momentum)
            else:
                teacher_tensor.copy_(student_tensor)

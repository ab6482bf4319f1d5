"""Evaluation metrics as pure functions on tensors (docs/methods.md §1/§2 evaluation, §3 gap statistics, §5 probes).

Every function returns plain Python floats (or a dict of them), so results go straight into JSON.
"""
import numpy as np
import torch
import torch.nn.functional as F

_CHUNK = 1024  # rows of a similarity matrix held at once: 1024 x 25k floats is ~100 MB


# ---------------------------------------------------------------------------------------------------------------
# Zero-shot classification (§1 "Evaluation", §2 "Evaluation and numbers")
# ---------------------------------------------------------------------------------------------------------------

def zero_shot_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict:
    """Top-1, top-5 (only when there are at least 5 classes) and mean-per-class recall.

    mean_per_class_recall averages the recall of each class that occurs in `targets`; classes with no samples are
    left out rather than counted as 0 (the usual "mean per class" of CLIP_benchmark / sklearn balanced accuracy).
    """
    if logits.ndim != 2 or targets.ndim != 1 or len(logits) != len(targets) or len(targets) == 0:
        raise ValueError(f"zero_shot_metrics needs logits [N, C] and targets [N] with N > 0; "
                         f"got logits {tuple(logits.shape)} and targets {tuple(targets.shape)}")
    num_classes = logits.shape[1]
    targets = targets.long().to(logits.device)
    if targets.min() < 0 or targets.max() >= num_classes:
        raise ValueError(f"targets must lie in [0, {num_classes}) (the number of logit columns); "
                         f"got values from {targets.min().item()} to {targets.max().item()}")
    correct1 = logits.argmax(dim=1) == targets
    result = {"acc1": correct1.double().mean().item()}
    if num_classes >= 5:
        top5 = logits.topk(5, dim=1).indices
        result["acc5"] = (top5 == targets[:, None]).any(dim=1).double().mean().item()
    hits_per_class = torch.bincount(targets, weights=correct1.double(), minlength=num_classes)
    samples_per_class = torch.bincount(targets, minlength=num_classes)
    present = samples_per_class > 0
    result["mean_per_class_recall"] = (hits_per_class[present] / samples_per_class[present]).mean().item()
    return result


# ---------------------------------------------------------------------------------------------------------------
# Retrieval (§1 COCO R@1/5/10; §2 Flickr/COCO multi-caption and long-caption 1:1 sets)
# ---------------------------------------------------------------------------------------------------------------

def retrieval_metrics(image_features: torch.Tensor, text_features: torch.Tensor, text_to_image: torch.Tensor,
                      ks=(1, 5, 10), chunk_size: int = _CHUNK) -> dict:
    """Recall@k in both directions, as CLIP_benchmark's zeroshot_retrieval, with cosine similarity.

    image_retrieval_recall@k: text->image, fraction of texts whose image is among the top-k images.
    text_retrieval_recall@k:  image->text, fraction of images with ANY of their captions among the top-k texts.
    text_to_image[t] is the index of the image caption t belongs to (several captions per image, or 1:1).
    A k above the number of candidates is clamped to it. Ties are broken by torch.topk, as in CLIP_benchmark.
    """
    if image_features.ndim != 2 or text_features.ndim != 2 or image_features.shape[1] != text_features.shape[1]:
        raise ValueError(f"retrieval_metrics needs image_features [N_img, D] and text_features [N_txt, D] with the "
                         f"same D; got {tuple(image_features.shape)} and {tuple(text_features.shape)}")
    if text_to_image.shape != (len(text_features),):
        raise ValueError(f"text_to_image must have one image index per text, shape ({len(text_features)},); "
                         f"got {tuple(text_to_image.shape)}")
    num_images, num_texts = len(image_features), len(text_features)
    if num_images == 0 or num_texts == 0:
        raise ValueError("retrieval_metrics needs at least one image and one text")
    text_to_image = text_to_image.long().to(image_features.device)
    if text_to_image.min() < 0 or text_to_image.max() >= num_images:
        raise ValueError(f"text_to_image values must lie in [0, {num_images}) (the number of images); "
                         f"got values from {text_to_image.min().item()} to {text_to_image.max().item()}")
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be a non-empty list of positive integers; got {ks}")
    images = F.normalize(image_features.float(), dim=1)
    texts = F.normalize(text_features.float().to(images.device), dim=1)

    # text -> image: for each text, is its image among the top-k images? (topk indices are sorted best first)
    k_img = min(max(ks), num_images)
    text_hits = []  # [N_txt, k_img] bool: is the j-th best image the right one
    for rows, owner in zip(texts.split(chunk_size), text_to_image.split(chunk_size)):
        best = (rows @ images.T).topk(k_img, dim=1).indices
        text_hits.append(best == owner[:, None])
    text_hits = torch.cat(text_hits)

    # image -> text: for each image, is any of its captions among the top-k texts?
    k_txt = min(max(ks), num_texts)
    image_hits = []  # [N_img, k_txt] bool: does the j-th best text belong to this image
    for start, rows in zip(range(0, num_images, chunk_size), images.split(chunk_size)):
        best = (rows @ texts.T).topk(k_txt, dim=1).indices
        own_index = torch.arange(start, start + len(rows), device=images.device)
        image_hits.append(text_to_image[best] == own_index[:, None])
    image_hits = torch.cat(image_hits)

    result = {}
    for k in ks:
        result[f"image_retrieval_recall@{k}"] = text_hits[:, :k].any(dim=1).double().mean().item()
        result[f"text_retrieval_recall@{k}"] = image_hits[:, :k].any(dim=1).double().mean().item()
    return result


# ---------------------------------------------------------------------------------------------------------------
# Modality-gap statistics (§3). x: image features, y: text features of N matched pairs; normalised here, float64.
# Cost: everything is O(N*D) except uniformity and separability; no subsampling is needed for N up to ~10k.
# ---------------------------------------------------------------------------------------------------------------

def _normalised_pairs(x: torch.Tensor, y: torch.Tensor, min_pairs: int = 1):
    if x.ndim != 2 or x.shape != y.shape or len(x) < min_pairs:
        raise ValueError(f"gap statistics need image and text features of the same shape [N, D] with N >= "
                         f"{min_pairs} matched pairs; got {tuple(x.shape)} and {tuple(y.shape)}")
    x = F.normalize(x.detach().double(), dim=1)
    return x, F.normalize(y.detach().double().to(x.device), dim=1)


def centroid_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """‖c_x − c_y‖ (§3, Liang et al. 2022)."""
    x, y = _normalised_pairs(x, y)
    return (x.mean(dim=0) - y.mean(dim=0)).norm().item()


def centroid_sqdist_per_dim(x: torch.Tensor, y: torch.Tensor) -> float:
    """‖c_x − c_y‖² / D (§3, what CLIP-Refine's code logs)."""
    x, y = _normalised_pairs(x, y)
    return ((x.mean(dim=0) - y.mean(dim=0)).pow(2).sum() / x.shape[1]).item()


def pair_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """mean_i ‖x_i − y_i‖ (§3)."""
    x, y = _normalised_pairs(x, y)
    return (x - y).norm(dim=1).mean().item()


def _mean_offdiag_cosine(x: torch.Tensor) -> torch.Tensor:
    # mean over i≠j of x_i·x_j, using Σ_{i≠j} x_i·x_j = ‖Σ_i x_i‖² − Σ_i ‖x_i‖²  (O(N·D) instead of an N×N matrix)
    n = len(x)
    return (x.sum(dim=0).pow(2).sum() - x.pow(2).sum()) / (n * (n - 1))


def relative_gap(x: torch.Tensor, y: torch.Tensor) -> float:
    """RMG = M / (M + (D_x + D_y)/2) with d(u, v) = (1 − cos(u, v))/2 (§3, Schrodi et al. 2025).

    M = mean_i d(x_i, y_i); D_x, D_y = mean over i≠j of d within each modality. NaN only if all 2N features coincide.
    """
    x, y = _normalised_pairs(x, y, min_pairs=2)
    matched = ((1 - (x * y).sum(dim=1)) / 2).mean()
    within_x = (1 - _mean_offdiag_cosine(x)) / 2
    within_y = (1 - _mean_offdiag_cosine(y)) / 2
    return (matched / (matched + (within_x + within_y) / 2)).item()


def alignment(x: torch.Tensor, y: torch.Tensor) -> float:
    """mean_i ‖x_i − y_i‖² (§3, Wang & Isola 2020 with α = 2)."""
    x, y = _normalised_pairs(x, y)
    return (x - y).pow(2).sum(dim=1).mean().item()


def uniformity(x: torch.Tensor, y: torch.Tensor, chunk_size: int = _CHUNK) -> float:
    """log mean exp(−2‖u − v‖²) over the POOLED set of 2N image and text features (§3, Wang & Isola 2020, t = 2).

    As in Wang & Isola's `torch.pdist(z).pow(2).mul(-2).exp().mean().log()`, the mean runs over distinct pairs
    u≠v only (u==v is excluded). It is computed in row chunks of the Gram matrix, using ‖u − v‖² = 2 − 2u·v for
    unit vectors: same value, bounded memory, and ~7x faster than float64 pdist on CPU.
    """
    x, y = _normalised_pairs(x, y)
    pooled = torch.cat([x, y])
    n = len(pooled)
    total = sum((-2 * (2 - 2 * rows @ pooled.T).clamp_min(0)).exp().sum() for rows in pooled.split(chunk_size))
    # the full sum counts each distinct pair twice and each u==v once, with exp(0) = 1
    return ((total - n) / (n * (n - 1))).log().item()


def uniformity_of_resamples(x: torch.Tensor, y: torch.Tensor, picks: list, chunk_size: int = _CHUNK) -> list:
    """[uniformity(x[pick], y[pick]) for pick in picks]: the uniformity of bootstrap resamples of the pairs (§3).

    A resample's sum over its position pairs is a sum over pairs of the original 2N points, each counted c_u·c_v
    times (c: how often the resample draws each point), i.e. cᵀKc with K_uv = exp(−2‖u − v‖²): one pass over K for
    all the resamples instead of one (2N)² Gram matrix per resample. Same values up to float64 rounding.
    """
    x, y = _normalised_pairs(x, y)
    pooled = torch.cat([x, y])
    counts = torch.stack([torch.bincount(pick, minlength=len(x)) for pick in picks], dim=1).double()  # [N, R]
    counts = torch.cat([counts, counts])  # a drawn pair brings its image and its text
    totals = torch.zeros(len(picks), dtype=torch.float64)
    for start in range(0, len(pooled), chunk_size):
        kernel = (-2 * (2 - 2 * pooled[start:start + chunk_size] @ pooled.T).clamp_min(0)).exp()
        totals += (counts[start:start + chunk_size] * (kernel @ counts)).sum(0)
    n = 2 * torch.tensor([len(pick) for pick in picks], dtype=torch.float64)  # points in each resample
    return ((totals - n) / (n * (n - 1))).log().tolist()  # as uniformity: the n self-pairs, exp(0) = 1, left out


def separability(x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> float:
    """Held-out accuracy of a logistic regression telling image (x) from text (y) features (§3).

    Classes are balanced (N each); split 50/50, stratified by modality, with `seed`. Classifier: sklearn
    LogisticRegression(C=1.0, L2 penalty, solver="lbfgs", max_iter=1000) on the normalised features, unscaled.
    0.5 means the modalities are indistinguishable to a linear probe; 1.0 means perfectly separable.
    """
    from sklearn.linear_model import LogisticRegression  # here: the other statistics need no sklearn (its import
    from sklearn.model_selection import train_test_split  # takes about a second, in every training process)

    x, y = _normalised_pairs(x, y, min_pairs=2)
    features = torch.cat([x, y]).cpu().numpy()
    is_text = np.repeat([0, 1], len(x))
    train_x, test_x, train_y, test_y = train_test_split(features, is_text, test_size=0.5, stratify=is_text,
                                                        random_state=seed)
    probe = LogisticRegression(C=1.0, solver="lbfgs", max_iter=1000).fit(train_x, train_y)
    return float(probe.score(test_x, test_y))


def modality_gap_stats(x: torch.Tensor, y: torch.Tensor, probe: bool = True) -> dict:
    """All seven §3 statistics, keyed by their function names; probe=False leaves out separability, the one that
    trains a classifier (the held-out score during training)."""
    stats = (centroid_distance, centroid_sqdist_per_dim, pair_distance, relative_gap, alignment, uniformity,
             *([separability] if probe else []))
    return {stat.__name__: stat(x, y) for stat in stats}


# ---------------------------------------------------------------------------------------------------------------
# Probes beyond the two tables (§5): fine-grained pairs and compositional hard negatives
# ---------------------------------------------------------------------------------------------------------------

def _cosines(images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    """Row-wise cos(images_i, texts_i), float64."""
    if images.ndim != 2 or images.shape != texts.shape:
        raise ValueError(f"need image and text features of the same shape [N, D]; got {tuple(images.shape)} and "
                         f"{tuple(texts.shape)}")
    return (F.normalize(images.double(), dim=1) * F.normalize(texts.double().to(images.device), dim=1)).sum(dim=1)


def pair_both_correct(image_a: torch.Tensor, image_b: torch.Tensor, text_a: torch.Tensor,
                      text_b: torch.Tensor) -> torch.Tensor:
    """[N] bool: pair i counts when each caption picks its own image (MMVP-VLM's both-correct rule, §5).

    The benchmark's own evaluation takes, for each statement, the softmax over the pair's two images and picks
    image 1 when its probability is > 0.5; the pair counts when statement 1 picks image 1 and statement 2 picks image 2.
    With cosines: cos(t_a, v_a) > cos(t_a, v_b) and cos(t_b, v_b) > cos(t_b, v_a). A tie counts as wrong for both
    statements (MMVP's counts it wrong for the first one only).
    """
    a_picks_a = _cosines(image_a, text_a) > _cosines(image_b, text_a)
    b_picks_b = _cosines(image_b, text_b) > _cosines(image_a, text_b)
    return a_picks_a & b_picks_b


def pair_scores(correct: torch.Tensor, patterns: list) -> dict:
    """MMVP-VLM's score (§5) from the pairs' both-correct flags and their patterns, in percent (0-100).

    per_pattern[p] = 100 · mean of `correct` over the pairs of pattern p; score = mean over the P patterns of
    per_pattern (each pattern weighs the same, whatever its size); score_se = sqrt(Σ_p se_p²) / P with the
    binomial se_p = 100 · sqrt(q_p (1 − q_p) / n_p), q_p = per_pattern[p] / 100.
    """
    if correct.ndim != 1 or len(correct) != len(patterns) or len(patterns) == 0:
        raise ValueError(f"pair_scores needs one flag per pair and one pattern per pair (N > 0); got "
                         f"{tuple(correct.shape)} flags and {len(patterns)} patterns")
    names = list(dict.fromkeys(patterns))
    flags = {p: [bool(c) for c, q in zip(correct.tolist(), patterns) if q == p] for p in names}
    per_pattern = {p: 100.0 * sum(f) / len(f) for p, f in flags.items()}
    variances = [(v / 100) * (1 - v / 100) / len(flags[p]) for p, v in per_pattern.items()]
    return {"score": sum(per_pattern.values()) / len(names),
            "score_se": 100.0 * sum(variances) ** 0.5 / len(names),
            "per_pattern": per_pattern, "per_pattern_n": {p: len(f) for p, f in flags.items()},
            "num_pairs": len(patterns)}


def hard_negative_accuracy(images: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> float:
    """SugarCrepe's accuracy (§5): the fraction of items whose image is closer to the positive caption than to the
    negative one, mean_i [cos(v_i, p_i) > cos(v_i, n_i)] (a tie counts as wrong)."""
    return (_cosines(images, positives) > _cosines(images, negatives)).double().mean().item()


def blind_accuracy(images: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> float:
    """The same choice made without the image (§5): every caption against m, the mean of the set's normalised image
    features, mean_i ([cos(m, p_i) > cos(m, n_i)] + ½ [cos(m, p_i) = cos(m, n_i)]). It measures how far caption
    plausibility alone picks the positive: 0.5 when the negatives give no such shortcut."""
    mean_image = F.normalize(images.double(), dim=1).mean(dim=0, keepdim=True).expand(len(images), -1)
    pos, neg = _cosines(mean_image, positives), _cosines(mean_image, negatives)
    return ((pos > neg).double() + 0.5 * (pos == neg).double()).mean().item()


def text_to_text_recall(queries: torch.Tensor, candidates: torch.Tensor) -> float:
    """R@1 of text i -> text i (§5, the embedder's cross-lingual ceiling): the fraction of queries q_i whose most
    cosine-similar candidate is c_i, argmax_j cos(q_i, c_j) = i (ties: torch.argmax's first index)."""
    if queries.ndim != 2 or queries.shape != candidates.shape:
        raise ValueError(f"need queries and candidates of the same shape [N, D]; got {tuple(queries.shape)} and "
                         f"{tuple(candidates.shape)}")
    similarity = F.normalize(queries.double(), dim=1) @ F.normalize(candidates.double(), dim=1).T
    return (similarity.argmax(dim=1) == torch.arange(len(queries))).double().mean().item()

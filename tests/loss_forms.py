"""The official loss forms against the plain reading of the papers (docs/methods.md §4), on the same inputs.

    python tests/loss_forms.py          (CPU, seconds; not a test: prints a table)

Inputs: seeded stand-ins for OpenAI ViT-B/32 features, batch 512, dim 512, unnormalised norms ~10 (image 10, text 8), matched pairs at cosine ~0.3 and others ~0.15 with a modality gap, as real CLIP features.
The frozen teacher is the same features before a small drift. Logit scale s = 100 (OpenAI's ln 100).
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from open_clip import ClipLoss  # noqa: E402

from common.losses import (hycd_loss, m2mix_loss, proclip_instance_loss, proclip_structure_loss,  # noqa: E402
                           raw_infonce_loss, self_kd_loss)

B, D, S, RANKS = 512, 512, 100.0, 8


def features(seed=0):
    """CLIP-like features: z = norm · (α·content_k + β·modality direction + γ·shared direction + noise).
    content_k of a pair lies in one of 64 clusters (in-cluster cosine ~0.8: semantic hard negatives), so matched
    pairs are at cosine ~0.3 and the others at ~0.15-0.25, with a modality gap (β) as in CLIP."""
    g = torch.Generator().manual_seed(seed)
    unit = lambda *shape: F.normalize(torch.randn(*shape, generator=g), dim=-1)
    centres = unit(64, D)[torch.randint(0, 64, (B,), generator=g)]
    content = F.normalize(2.0 * centres + unit(B, D), dim=-1)
    image_dir, text_dir, shared = unit(3, D)

    def tower(direction, norm):
        z = 0.39 * content + 0.55 * direction + 0.39 * shared + 0.63 * unit(B, D)
        return norm * F.normalize(z, dim=-1)

    t_image, t_text = tower(image_dir, 10.0), tower(text_dir, 8.0)
    drift = lambda z: z + 0.05 * torch.randn(B, D, generator=g)  # the student after some steps
    return drift(t_image), drift(t_text), t_image, t_text


def per_rank(loss_fn, *tensors):
    """Mean over RANKS ranks of the loss on each rank's B/RANKS rows (what per-rank negatives optimise)."""
    chunks = [t.chunk(RANKS) for t in tensors]
    return sum(loss_fn(*parts) for parts in zip(*chunks)) / RANKS


def main():
    z_i, z_t, t_i, t_t = features()
    x_i, x_t = F.normalize(z_i, dim=-1), F.normalize(z_t, dim=-1)
    sim = x_i @ x_t.T
    off = sim[~torch.eye(B, dtype=torch.bool)]
    print(f"inputs: B={B}, D={D}, |z_image|={z_i.norm(dim=-1).mean():.1f}, |z_text|={z_t.norm(dim=-1).mean():.1f}, "
          f"cos matched {sim.diag().mean():.2f}, others {off.mean():.2f} (max {off.max():.2f}), s={S:g}\n")
    clip = ClipLoss()
    nce_norm, nce_raw = clip(x_i, x_t, S).item(), raw_infonce_loss(z_i, z_t, S).item()
    kd_kl, kd_fd = self_kd_loss(z_i, z_t, t_i, t_t, S).item(), self_kd_loss(z_i, z_t, t_i, t_t, S, "feature_mse").item()
    lam = 0.3  # one draw of Beta(0.5, 0.5), fixed so that both forms see the same mixed negatives
    mix_proj = 1.0 * m2mix_loss(z_i, z_t, S, lam).item()
    mix_off = 0.01 * m2mix_loss(z_i, z_t, S, lam, mix_logit_scale=1 / 0.07, scale_positives=True,
                                reduction="sum").item()

    # ProCLIP stage 1: student = adapter output, teacher = CLIP text tower; short and long captions of one batch.
    g = torch.Generator().manual_seed(1)
    teach_short, teach_long = torch.randn(B, D, generator=g), torch.randn(B, D, generator=g)
    stud_short = teach_short + 0.5 * torch.randn(B, D, generator=g)
    stud_long = teach_long + 0.7 * torch.randn(B, D, generator=g)  # long captions: further from the teacher
    ins_short = proclip_instance_loss(stud_short, teach_short).item()
    ins_long = proclip_instance_loss(stud_long, teach_long).item()
    struct = proclip_structure_loss(stud_short, teach_short).item()
    adapter_params = lambda depth, e, d=4096, out=512: depth * (2 * d * e * d + e * d + d + 2 * d) + 2 * d + d * out + out

    rows = [
        ("1a Contrastive: InfoNCE", "ClipLoss, normalised x, s·x_i·x_t", nce_norm,
         "CE of s·z_i·z_t, raw z", nce_raw),
        ("1b Self-KD: distillation", "KL of softmax(s·x x'ᵀ)", kd_kl, "MSE(z, z') per modality, summed", kd_fd),
        ("1b Self-KD: whole loss", "InfoNCE + KL", nce_norm + kd_kl, "raw InfoNCE + MSE", nce_raw + kd_fd),
        ("1c m²-mix term × weight", "1.0 × mean of 2 dirs, s=100", mix_proj,
         "0.01 × sum of 2 dirs, all ×1/0.07", mix_off),
        ("1d ProCLIP stage 1 loss", "L_ins(short) + L_struct", ins_short + struct,
         "L_ins(short) + L_ins(long) + L_struct", ins_short + ins_long + struct),
        ("1d adapter, params (d=4096)", "N=4, e=2 (LLM2CLIP)", adapter_params(4, 2), "N=1, e=8 (ProCLIP)",
         adapter_params(1, 8)),
    ]
    # Item 2: per-rank negatives (8 ranks × 64) against the global batch of 512 (official, and what refine.py does).
    hycd = lambda a, b, c, d: hycd_loss(a, b, c, d)
    rows += [
        ("2 HyCD, 8 ranks", "per-rank (8 × 64)", per_rank(hycd, z_i, z_t, t_i, t_t).item(), "global 512",
         hycd(z_i, z_t, t_i, t_t).item()),
        ("2 Self-KD KL, 8 ranks", "per-rank (8 × 64)",
         per_rank(lambda *a: self_kd_loss(*a, S), z_i, z_t, t_i, t_t).item(), "global 512", kd_kl),
        ("2 m²-mix (plain form), 8 ranks", "per-rank (8 × 64)",
         per_rank(lambda a, b: m2mix_loss(a, b, S, lam), z_i, z_t).item(), "global 512", mix_proj),
        ("2 m²-mix (official), 8 ranks", "per-rank (8 × 64)",
         0.01 * per_rank(lambda a, b: m2mix_loss(a, b, S, lam, mix_logit_scale=1 / 0.07, scale_positives=True,
                                                 reduction="sum"), z_i, z_t).item(), "global 512", mix_off),
    ]
    print("| item | plain reading or per rank | value | official form or global | value | ratio |")
    print("|---|---|---:|---|---:|---:|")
    for item, old_name, old, new_name, new in rows:
        fmt = (lambda v: f"{v:,.0f}") if "params" in item else (lambda v: f"{v:.4g}")
        print(f"| {item} | {old_name} | {fmt(old)} | {new_name} | {fmt(new)} | {new / old:.3g} |")


if __name__ == "__main__":
    main()

"""CLIP-Refine (CVPR 2025) and its baselines: one short run of "post-pre-training" on a caption dataset.

Objectives (docs/methods.md §1; CLIP-Refine Table 1):
    clip_refine   RaFA + HyCD (the method; default)       rafa / hycd   its ablations
    contrastive   plain symmetric InfoNCE fine-tuning     self_kd       InfoNCE + distillation from the start model
    m2mix         InfoNCE + geodesic multi-modal mixup (Oh et al. 2023)
The same file pre-trains the toy CLIP from scratch (objective=contrastive, pretrained="").

Run (toy preset, CPU, minutes):
    python refine.py --config configs/toy/pretrain.yaml                      # the toy "pre-trained" CLIP
    python refine.py --config configs/toy/refine.yaml objective=clip_refine run_dir=runs/toy/refine/clip_refine
Paper preset (ViT-B/32 on COCO; GPU; see slurm/ for clusters):
    python refine.py --config configs/paper/refine.yaml train_data=/data/coco/annotations/captions_train2017.json \
        train_images=/data/coco/train2017
Any config key can be overridden as key=value or --key value. Outputs in run_dir: config.yaml, log.jsonl,
checkpoint.pt (while running; resumed automatically), model.pt (open_clip-loadable: pretrained=run_dir/model.pt).
"""
import argparse
import copy
import math
import os

import torch
import torch.nn.functional as F
from open_clip import ClipLoss

from common.config import load_config
from common.data import CocoCaptions, CsvPairs, WebDatasetShards
from common.distributed import init_distributed
from common.losses import hycd_loss, m2mix_loss, rafa_loss, sample_rafa_reference, self_kd_loss
from common.models import build_clip, load_checkpoint_file, save_clip_checkpoint
from common.train import TRAIN_DEFAULTS, train

# -----------------------------------------------------------------------------
# config: the paper's defaults (docs/methods.md §1); presets in configs/{toy,paper}/ override them
DEFAULTS = dict(
    TRAIN_DEFAULTS,
    run_dir="",                   # required: where config.yaml, log.jsonl, checkpoint.pt and model.pt go
    objective="clip_refine",      # clip_refine | rafa | hycd | contrastive | self_kd | m2mix
    arch="ViT-B-32-quickgelu",    # any open_clip architecture, or ToyCLIP
    pretrained="openai",          # open_clip tag, a checkpoint file, or "" for random init
    force_quick_gelu=False,
    train_format="coco",          # coco (captions JSON + image folder) | csv (image-text pairs) | webdataset
    train_data="",                # COCO captions JSON, CSV/TSV file, or tar shards (folder, glob, {000..099}.tar)
    train_images="",              # image folder (coco format only)
    csv_image_key="filepath",
    csv_caption_keys=["title"],   # one caption is drawn per image per epoch
    wds_caption_keys=["txt"],     # webdataset: "txt" = KEY.txt, other names = fields of KEY.json
    wds_index_dir="",             # webdataset: keep each shard's scan here (later runs skip it); "" = scan each run
    holdout_fraction=0.01,        # held out for validation, seed 42 (docs/methods.md §1); not trained on
    rafa_weight=1.0,
    rafa_prior="std_sample",      # std_sample | uniform_sample | precomputed_sample | precomputed_fixed | uniform_fixed
    rafa_prior_mean=0.0,
    rafa_prior_std=1.0,
    rafa_prior_file="",           # precomputed_*: a torch file {"mean": [D], "std": [D]} (see prior_stats below)
    hycd_weight=1.0,
    hycd_alpha=0.5,
    hycd_tau=1.0,
    infonce_weight=1.0,           # only for the objectives that use InfoNCE; clip_refine logs it with weight 0
    self_kd_weight=1.0,
    m2mix_weight=1.0,
    m2mix_beta_alpha=0.5,
    max_logit_scale=100.0,        # CLIP clamps its learnable temperature at 100
)
LOSS_TERMS = {  # which terms each objective sums (each with its *_weight)
    "clip_refine": ("rafa", "hycd"),
    "rafa": ("rafa",),
    "hycd": ("hycd",),
    "contrastive": ("infonce",),
    "self_kd": ("infonce", "self_kd"),
    "m2mix": ("infonce", "m2mix"),
}


def get_args_parser(add_help=True):
    parser = argparse.ArgumentParser("refine.py", add_help=add_help, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML preset, e.g. configs/toy/refine.yaml")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value (see DEFAULTS in refine.py)")
    return parser


# -----------------------------------------------------------------------------
# the objective: student CLIP, frozen teacher (for HyCD / Self-KD), and the losses of docs/methods.md §1
class RefineObjective(torch.nn.Module):
    def __init__(self, cfg, model, tokenizer, prior_stats=None, env=None):
        super().__init__()
        self.cfg, self.model, self.tokenizer, self.terms = cfg, model, tokenizer, LOSS_TERMS[cfg.objective]
        self.prior_stats = prior_stats
        # The teacher is a frozen copy of the starting model, never updated (HyCD, Self-KD).
        self.teacher = None
        if {"hycd", "self_kd"} & set(self.terms):
            self.teacher = copy.deepcopy(model).requires_grad_(False).eval()
        env = env or init_distributed("cpu")
        self.rank, self.world_size = env.rank, env.world_size
        # InfoNCE over the global batch when distributed (open_clip's gather).
        self.clip_loss = ClipLoss(local_loss=True, gather_with_grad=True, rank=env.rank, world_size=env.world_size)

    def train(self, mode=True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen: no dropout, no batch-norm updates
        return self

    def forward(self, batch, generator):
        cfg, images = self.cfg, batch["images"]
        tokens = self.tokenizer(batch["captions"]).to(images.device)
        z_image, z_text = self.model.encode_image(images), self.model.encode_text(tokens)  # unnormalised
        x_image, x_text = F.normalize(z_image, dim=-1), F.normalize(z_text, dim=-1)
        logit_scale = self.model.logit_scale.exp()
        infonce = self.clip_loss(x_image, x_text, logit_scale)
        logs = {"infonce": infonce.detach(), "logit_scale": logit_scale.detach(),
                "image_norm": z_image.detach().norm(dim=-1).mean(), "text_norm": z_text.detach().norm(dim=-1).mean()}
        if self.teacher is not None:
            with torch.no_grad():
                t_image, t_text = self.teacher.encode_image(images), self.teacher.encode_text(tokens)

        loss = torch.zeros((), device=images.device)
        if "infonce" in self.terms:
            loss = loss + cfg.infonce_weight * infonce
        if "rafa" in self.terms:  # RaFA: pull raw features toward a random r shared by the pair (§1)
            # One r per pair of the GLOBAL batch (every rank draws the same rows), this rank takes its own.
            batch, dim = z_image.shape
            reference = sample_rafa_reference((self.world_size * batch, dim), cfg.rafa_prior, cfg.rafa_prior_mean,
                                              cfg.rafa_prior_std, generator, self.prior_stats)
            reference = reference[self.rank * batch:(self.rank + 1) * batch].to(z_image.device)
            logs["rafa"] = rafa_loss(z_image, z_text, reference)
            loss = loss + cfg.rafa_weight * logs["rafa"]
        if "hycd" in self.terms:  # HyCD: KL to α·I + (1−α)·softmax(teacher logits), raw dot products (§1)
            logs["hycd"] = hycd_loss(z_image, z_text, t_image, t_text, cfg.hycd_alpha, cfg.hycd_tau)
            loss = loss + cfg.hycd_weight * logs["hycd"]
        if "self_kd" in self.terms:
            logs["self_kd"] = self_kd_loss(z_image, z_text, t_image, t_text, logit_scale)
            loss = loss + cfg.self_kd_weight * logs["self_kd"]
        if "m2mix" in self.terms:
            lam = None  # drawn from Beta(α, α) with the trainer's generator, so resume is exact
            logs["m2mix"] = m2mix_loss(z_image, z_text, logit_scale, lam, cfg.m2mix_beta_alpha, generator)
            loss = loss + cfg.m2mix_weight * logs["m2mix"]
        return loss, {k: v.detach() for k, v in logs.items()}

    def after_optimizer_step(self):
        with torch.no_grad():  # CLIP's clamp of its learnable temperature
            self.model.logit_scale.clamp_(0, math.log(self.cfg.max_logit_scale))


# -----------------------------------------------------------------------------
def build_train_set(cfg, transform):
    if cfg.train_format == "coco":
        dataset = CocoCaptions(cfg.train_data, cfg.train_images, transform, seed=cfg.seed)
    elif cfg.train_format == "csv":
        dataset = CsvPairs(cfg.train_data, transform, cfg.csv_image_key, cfg.csv_caption_keys, seed=cfg.seed)
    elif cfg.train_format == "webdataset":
        dataset = WebDatasetShards(cfg.train_data, transform, cfg.wds_caption_keys, cfg.seed, cfg.wds_index_dir)
    else:
        raise ValueError(f"train_format={cfg.train_format!r}: use coco, csv or webdataset")
    return dataset.holdout(cfg.holdout_fraction, seed=42)[0]


def load_prior_stats(cfg):
    if not cfg.rafa_prior.startswith("precomputed"):
        return None
    if not cfg.rafa_prior_file:
        raise ValueError(f"rafa_prior={cfg.rafa_prior} needs rafa_prior_file=FILE with per-dimension mean/std "
                         f"(write one with `python evaluate.py --prior_stats FILE ...`)")
    stats = load_checkpoint_file(cfg.rafa_prior_file)
    return {"mean": stats["mean"], "std": stats["std"]}


def main(argv=None):
    args, unknown = get_args_parser().parse_known_args(argv)
    cfg = load_config(DEFAULTS, args.config, args.overrides + unknown)
    if cfg.objective not in LOSS_TERMS:
        raise ValueError(f"objective={cfg.objective!r}; valid: {', '.join(LOSS_TERMS)}")
    if not cfg.run_dir:
        raise ValueError("run_dir is not set: pass run_dir=PATH (e.g. runs/toy/refine/clip_refine)")
    env = init_distributed(cfg.device)
    if env.is_main:
        print(f"refine.py objective={cfg.objective} arch={cfg.arch} pretrained={cfg.pretrained or '(random init)'}")
    torch.manual_seed(cfg.seed)  # a random init (toy pre-training) is reproducible too
    model, _, preprocess_eval, tokenizer = build_clip(cfg.arch, cfg.pretrained, cfg.force_quick_gelu)
    dataset = build_train_set(cfg, preprocess_eval)  # eval transform only: no augmentation (§1)
    objective = RefineObjective(cfg, model, tokenizer, load_prior_stats(cfg), env)

    def export(objective, path):
        save_clip_checkpoint(path, objective.model, arch=cfg.arch, objective=cfg.objective,
                             started_from=cfg.pretrained, train_data=cfg.train_data)

    return train(cfg, objective, dataset, cfg.run_dir, export, env=env)


if __name__ == "__main__":
    main()

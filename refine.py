r"""CLIP-Refine (CVPR 2025) and its baselines: one short run of "post-pre-training" on a caption dataset.

The method (docs/methods.md §1), on projected features BEFORE L2 normalisation (z_i image, z_t text; B pairs):
    L = λ_rafa·RaFA + λ_hycd·HyCD                                            (λ_rafa = λ_hycd = 1; InfoNCE weight 0)
    RaFA = mean((z_i − r)²) + mean((z_t − r)²),  r ~ N(0, I) drawn per pair, shared by the image and its caption
    HyCD = ½[KL(P ‖ softmax(S/τ)) + KL(Pᵀ ‖ softmax(Sᵀ/τ))]·τ²,  S = z_i z_tᵀ (student), T = z_i' z_t'ᵀ (frozen
           starting model), P = α·I + (1−α)·softmax(T/τ), α = 0.5, τ = 1, KL averaged over the batch
Objectives (CLIP-Refine Table 1): the losses are in common/losses.py, and OBJECTIVES says which each one sums:
    clip_refine   RaFA + HyCD (the method; default)       rafa / hycd   its ablations
    contrastive   plain symmetric InfoNCE fine-tuning     self_kd       InfoNCE + distillation from the start model
    m2mix         InfoNCE + geodesic multi-modal mixup (Oh et al. 2023)
The baselines' loss forms default to the official code's (docs/methods.md §4). The same file pre-trains the toy
CLIP from scratch (objective=contrastive, pretrained="").

Run (toy preset, CPU, minutes):
    python refine.py --config configs/toy/pretrain.yaml                      # the toy "pre-trained" CLIP
    python refine.py --config configs/toy/refine.yaml objective=clip_refine run_dir=runs/toy/refine/clip_refine
    python refine.py --config configs/toy/refine.yaml objective=rafa 'seeds=[0,1,2]' \
        'run_dir=runs/toy/refine/rafa/seed{seed}'                       # a row's seeds, in turn, in one process
Paper preset (ViT-B/32 on COCO; GPU; see slurm/ for clusters):
    python refine.py --config configs/paper/refine.yaml train_data=/data/coco/annotations/captions_train2017.json \
        train_images=/data/coco/train2017
Any config key of DEFAULTS can be overridden as key=value. Outputs in run_dir: config.yaml, log.jsonl,
checkpoint.pt (while running; resumed automatically), model.pt (open_clip-loadable: pretrained=run_dir/model.pt).
"""
import copy

import torch
import torch.nn.functional as F
from open_clip import ClipLoss

from common.checkpoints import load_checkpoint_file
from common.config import ConfigError, KeysHelpParser, configs_of_seeds, load_config, run_cli
from common.data import check_images, open_caption_dataset
from common.distributed import init_distributed
from common.losses import (SELF_KD_FORMS, gather_with_grad, hycd_loss, m2mix_loss, rafa_loss, raw_infonce_loss,
                           sample_rafa_reference, self_kd_loss)
from common.models import build_clip, save_clip_checkpoint
from common.train import TRAIN_DEFAULTS, Objective, clamp_logit_scale, train

# -----------------------------------------------------------------------------
# config: the paper's defaults (docs/methods.md §1); presets in configs/{toy,paper}/ override them
DEFAULTS = dict(
    TRAIN_DEFAULTS,
    run_dir="",                   # required: where config.yaml, log.jsonl, checkpoint.pt and model.pt go
    objective="clip_refine",      # a name of OBJECTIVES (below in refine.py; the list at the top of its --help)
    arch="ViT-B-32-quickgelu",    # any open_clip architecture, or ToyCLIP
    pretrained="openai",          # open_clip tag, a checkpoint file, or "" for random init
    force_quick_gelu=False,
    train_format="coco",          # coco (captions JSON + image folder) | csv (image-text pairs) | webdataset
    train_data="",                # COCO captions JSON, CSV/TSV file, or tar shards (folder, glob, {000..099}.tar)
    train_images="",              # image folder (coco format only)
    csv_image_key="filepath",
    csv_caption_keys=["title"],   # one caption is drawn per image per epoch
    wds_caption_keys=["txt"],     # webdataset: "txt" = KEY.txt, other names = fields of KEY.json
    data_index="cache/data_index",  # where the corpus index lives (common/corpus_index.py): built once, reused
    holdout_fraction=0.01,        # held out for validation, seed 42 (docs/methods.md §1); not trained on, scored
                                  #   after each epoch (loss and gap statistics in log.jsonl, docs/watching.md)
    rafa_weight=1.0,
    rafa_prior="std_sample",      # std_sample | uniform_sample | precomputed_sample | precomputed_fixed | uniform_fixed
    rafa_prior_mean=0.0,
    rafa_prior_std=1.0,
    rafa_prior_file="",           # precomputed_*: a torch file {"mean": [D], "std": [D]} (evaluate.py prior_stats_file=FILE writes one)
    hycd_weight=1.0,
    hycd_alpha=0.5,
    hycd_tau=1.0,
    infonce_weight=1.0,           # only for the objectives that use InfoNCE; clip_refine logs it with weight 0
    # The baselines' forms: the official code's, which gave the paper's numbers (docs/methods.md §4; the docstrings
    # of common/losses.py say how each differs from the plain reading of the paper, the other choice).
    infonce_form="raw",           # raw (official CLIP-Refine code: s·z_i·z_t on unnormalised features) | normalised
                                  #   (open_clip ClipLoss, s·x_i·x_t). m2mix always uses normalised, as Oh et al.'s
                                  #   code does
    self_kd_weight=1.0,
    self_kd_form="feature_mse",   # feature_mse (official distill_loss="fd") | logit_kl (KL of normalised logits)
    m2mix_weight=0.01,            # official --mmmix
    m2mix_reduction="sum",        # sum of the two directions (official) | mean
    m2mix_logit_scale=14.285714,  # >0: this fixed scale for every logit of the mixed rows, positives too (official
                                  #   --sep_scale: 1/0.07); 0: CLIP's learnable scale s for every logit
    m2mix_beta_alpha=0.5,
    max_logit_scale=100.0,        # CLIP clamps its learnable temperature at 100
)
# The objectives, in the order of their rows in the CLIP-Refine table: name -> (the loss terms it sums, each with
# its *_weight; its row label in the tables). One entry per line.
OBJECTIVES = {
    "contrastive": (("infonce",), "Contrastive"),
    "self_kd": (("infonce", "self_kd"), "Self-KD"),
    "m2mix": (("infonce", "m2mix"), "m²-mix"),
    "rafa": (("rafa",), "RaFA only"),
    "hycd": (("hycd",), "HyCD only"),
    "clip_refine": (("rafa", "hycd"), "CLIP-Refine"),
}
FORM_CHOICES = {"infonce_form": ("raw", "normalised"), "self_kd_form": SELF_KD_FORMS,
                "m2mix_reduction": ("sum", "mean")}


def check_forms(cfg):
    if cfg.objective not in OBJECTIVES:
        raise ConfigError(f"objective={cfg.objective!r}; valid: {', '.join(OBJECTIVES)}")
    for key, choices in FORM_CHOICES.items():
        if getattr(cfg, key) not in choices:
            raise ConfigError(f"{key}={getattr(cfg, key)!r}: use one of {', '.join(choices)}")
    if cfg.m2mix_logit_scale < 0:
        raise ConfigError(f"m2mix_logit_scale={cfg.m2mix_logit_scale}: use 0 (CLIP's scale) or a positive scale")


def get_args_parser(add_help=True):
    parser = KeysHelpParser("refine.py", add_help=add_help, description=__doc__, defaults=DEFAULTS,
                            path=__file__)  # --help lists every key of DEFAULTS
    parser.add_argument("--config", default=None, help="YAML preset, e.g. configs/toy/refine.yaml")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value (the keys are listed below)")
    return parser


# -----------------------------------------------------------------------------
# the objective: student CLIP, frozen teacher (for HyCD / Self-KD), and the losses of docs/methods.md §1
class RefineObjective(Objective):
    gap_features = ("z_image", "z_text")  # the held-out score includes their modality gap (docs/methods.md §3)

    def __init__(self, cfg, model, tokenizer, prior_stats=None, env=None):
        super().__init__()
        check_forms(cfg)
        self.cfg, self.model, self.tokenizer = cfg, model, tokenizer
        self.terms = OBJECTIVES[cfg.objective][0]
        self.prior_stats = prior_stats
        # The teacher is a frozen copy of the starting model, never updated (HyCD, Self-KD).
        self.teacher = None
        if {"hycd", "self_kd"} & set(self.terms):
            self.teacher = self.freeze(copy.deepcopy(model))
        env = env or init_distributed("cpu")
        self.rank, self.world_size = env.rank, env.world_size
        # InfoNCE over the global batch when distributed (open_clip's gather).
        self.clip_loss = ClipLoss(local_loss=True, gather_with_grad=True, rank=env.rank, world_size=env.world_size)

    # forward (common/train.py Objective) = loss_from_features(encode(batch) + encode_teacher(batch))
    def encode(self, batch):
        images = batch["images"]
        tokens = self.tokenizer(batch["captions"]).to(images.device)
        return {"z_image": self.model.encode_image(images), "z_text": self.model.encode_text(tokens),  # unnormalised
                "logit_scale": self.model.logit_scale.exp()}

    @torch.no_grad()
    def encode_teacher(self, batch):
        if self.teacher is None:
            return {}
        images = batch["images"]
        tokens = self.tokenizer(batch["captions"]).to(images.device)
        return {"t_image": self.teacher.encode_image(images), "t_text": self.teacher.encode_text(tokens)}

    def loss_from_features(self, features, generator):
        cfg = self.cfg
        z_image, z_text, logit_scale = features["z_image"], features["z_text"], features["logit_scale"]
        # HyCD, Self-KD, m²-mix (and raw InfoNCE) run on the GLOBAL batch with several ranks: every rank gathers
        # all rows with gradient, so N ranks train the 1-process objective (common/losses.py gather_with_grad).
        gather = lambda t: gather_with_grad(t, self.world_size)
        if cfg.infonce_form == "raw" and cfg.objective != "m2mix":  # official CLIP-Refine (losses.raw_infonce_loss)
            infonce = raw_infonce_loss(gather(z_image), gather(z_text), logit_scale)
        else:
            x_image, x_text = F.normalize(z_image, dim=-1), F.normalize(z_text, dim=-1)
            infonce = self.clip_loss(x_image, x_text, logit_scale)
        logs = {"infonce": infonce.detach(), "logit_scale": logit_scale.detach(),
                "image_norm": z_image.detach().norm(dim=-1).mean(), "text_norm": z_text.detach().norm(dim=-1).mean()}
        if self.teacher is not None:
            t_image, t_text = gather(features["t_image"]), gather(features["t_text"])
            g_image, g_text = gather(z_image), gather(z_text)

        loss = torch.zeros((), device=z_image.device)
        if "infonce" in self.terms:
            loss = loss + cfg.infonce_weight * infonce
        if "rafa" in self.terms:  # RaFA: pull raw features toward a random r shared by the pair (§1)
            # One r per pair of the GLOBAL batch (every rank draws the same rows), this rank takes its own.
            local_batch, dim = z_image.shape
            reference = sample_rafa_reference((self.world_size * local_batch, dim), cfg.rafa_prior,
                                              cfg.rafa_prior_mean, cfg.rafa_prior_std, generator, self.prior_stats)
            reference = reference[self.rank * local_batch:(self.rank + 1) * local_batch].to(z_image.device)
            logs["rafa"] = rafa_loss(z_image, z_text, reference)
            loss = loss + cfg.rafa_weight * logs["rafa"]
        if "hycd" in self.terms:  # HyCD: KL to α·I + (1−α)·softmax(teacher logits), raw dot products (§1)
            logs["hycd"] = hycd_loss(g_image, g_text, t_image, t_text, cfg.hycd_alpha, cfg.hycd_tau)
            loss = loss + cfg.hycd_weight * logs["hycd"]
        if "self_kd" in self.terms:
            logs["self_kd"] = self_kd_loss(g_image, g_text, t_image, t_text, logit_scale, cfg.self_kd_form)
            loss = loss + cfg.self_kd_weight * logs["self_kd"]
        if "m2mix" in self.terms:
            lam = None  # drawn from Beta(α, α) with the trainer's generator, so resume is exact
            mix_scale = cfg.m2mix_logit_scale or None  # official: 1/0.07 on every mixed-row logit
            logs["m2mix"] = m2mix_loss(gather(z_image), gather(z_text), logit_scale, lam, cfg.m2mix_beta_alpha,
                                       generator, mix_scale, scale_positives=mix_scale is not None,
                                       reduction=cfg.m2mix_reduction)
            loss = loss + cfg.m2mix_weight * logs["m2mix"]
        return loss, {k: v.detach() for k, v in logs.items()}

    def after_optimizer_step(self):
        clamp_logit_scale(self.model.logit_scale, self.cfg.max_logit_scale)


# -----------------------------------------------------------------------------
def load_prior_stats(cfg):
    if not cfg.rafa_prior.startswith("precomputed"):
        return None
    if not cfg.rafa_prior_file:
        raise ConfigError(f"rafa_prior={cfg.rafa_prior} needs rafa_prior_file=FILE with per-dimension mean/std "
                          f"(write one with `python evaluate.py ... prior_stats_file=FILE`)")
    stats = load_checkpoint_file(cfg.rafa_prior_file, "RaFA prior file")
    return {"mean": stats["mean"], "std": stats["std"]}


def main(argv=None):
    args, unknown = get_args_parser().parse_known_args(argv)  # unknown: key=value after --config, or a --flag
    row = load_config(DEFAULTS, args.config, args.overrides + unknown)  # a --flag is refused, naming key=value
    check_forms(row)
    if not row.run_dir:
        raise ConfigError("run_dir is not set: pass run_dir=PATH (e.g. runs/toy/refine/clip_refine)")
    runs = configs_of_seeds(row, "run_dir", ("run_dir", "pretrained"))  # seeds=[...]: a row's runs, in turn
    env = init_distributed(row.device)
    paths = [train_run(cfg, env) for cfg in runs]
    return paths if row.seeds else paths[0]


def train_run(cfg, env):
    """One run: cfg's objective from cfg.pretrained on cfg's data, into cfg.run_dir. -> the path of its model.pt."""
    if env.is_main:
        print(f"refine.py objective={cfg.objective} seed={cfg.seed} arch={cfg.arch} "
              f"pretrained={cfg.pretrained or '(random init)'}")
    # the data first, then the model (which may download weights): 1% of the images held out with seed 42
    # (docs/methods.md §1), scored before the first step and after each epoch (common/train.py score_holdout)
    corpus = open_caption_dataset(cfg, transform=None)
    check_images(corpus)
    prior_stats = load_prior_stats(cfg)
    dataset, held_out = corpus.holdout(cfg.holdout_fraction, seed=42)
    torch.manual_seed(cfg.seed)  # a random init (toy pre-training) is reproducible too
    # trim_text_padding: encode_text skips the columns that are padding in every caption (the same features, up to
    # float rounding, at about half the cost; common/models.py)
    model, _, preprocess_eval, tokenizer = build_clip(cfg.arch, cfg.pretrained, cfg.force_quick_gelu,
                                                      trim_text_padding=True)
    dataset.transform = held_out.transform = preprocess_eval  # eval transform only: no augmentation
    objective = RefineObjective(cfg, model, tokenizer, prior_stats, env)

    def export(objective, path):
        save_clip_checkpoint(path, objective.model, arch=cfg.arch, objective=cfg.objective,
                             started_from=cfg.pretrained, train_data=cfg.train_data)

    return train(cfg, objective, dataset, cfg.run_dir, export, env=env, held_out=held_out)


if __name__ == "__main__":
    run_cli(main)

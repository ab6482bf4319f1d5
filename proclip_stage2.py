r"""ProCLIP stage 2, contrastive tuning with self-distillation (docs/methods.md §2), and the LLM2CLIP baseline.

Trained: the whole CLIP image tower (projection included), the adapter and the logit scale; the embedder E
stays frozen and its outputs come from the embedding cache. Loss (docs/methods.md §2):
    L = L_info + λ·L_reg,   λ = 4e-4 (calibrated to sum reductions over a per-GPU batch of 512)
    L_info = symmetric InfoNCE between normalise(image features) and normalise(adapter(E(caption))), with a
             learnable logit scale clamped at 100
    L_reg  = L_ins + L_struct (as in stage 1) between the student's image features and the EMA teacher's
The EMA teacher starts as the pre-trained image tower, sees the same batch without gradients, and follows the
student with momentum α after every optimiser step. One caption (short or long) is drawn per image per epoch.
LLM2CLIP baseline: adapter="" (fresh adapter, no stage 1) and reg_weight=0 (no EMA teacher).

Run (toy preset, CPU, about a minute; stage 1 first):
    python proclip_stage2.py --config configs/toy/proclip_stage2.yaml pretrained=runs/toy/pretrain/model.pt \
        adapter=runs/toy/proclip/stage1/model.pt run_dir=runs/toy/proclip/stage2
    python proclip_stage2.py --config configs/toy/proclip_stage2.yaml pretrained=runs/toy/pretrain/model.pt \
        adapter= reg_weight=0 run_dir=runs/toy/llm2clip                                       # LLM2CLIP
Outputs in run_dir as refine.py's; model.pt holds image tower + adapter + logit scale (evaluate.py
model_type=proclip proclip_checkpoint=RUN_DIR/model.pt).
"""
import copy
import os

import torch
import torch.nn.functional as F
from open_clip import ClipLoss

from common.config import ConfigError, KeysHelpParser, configs_of_seeds, load_config, run_cli
from common.data import check_images
from common.distributed import init_distributed
from common.losses import ema_update, proclip_instance_loss, proclip_structure_loss
from common.embedder import embedder_name
from common.models import build_clip
from common.proclip import (PROCLIP_DEFAULTS, Adapter, ProCLIP, adapter_config, clip_embed_dim, clip_metadata,
                            fill_command, load_adapter, open_training_cache, save_proclip_checkpoint,
                            split_training_set)
from common.train import TRAIN_DEFAULTS, Objective, clamp_logit_scale, train

# -----------------------------------------------------------------------------
# config: the paper's defaults (docs/methods.md §2); presets in configs/{toy,paper}/ override them.
# Model and data keys (arch, embedder, embedding_cache, train_data, adapter_depth, ...): PROCLIP_DEFAULTS.
DEFAULTS = dict(
    TRAIN_DEFAULTS | PROCLIP_DEFAULTS,
    run_dir="",                   # required: where config.yaml, log.jsonl, checkpoint.pt and model.pt go
    adapter="",                   # stage 1's model.pt to start the adapter from; "" = fresh adapter (LLM2CLIP)
    reg_weight=4e-4,              # λ, calibrated to sum reductions over a per-GPU batch of 512 (§2)
    ema_momentum=0.999,           # α of the EMA teacher
    max_logit_scale=100.0,        # the learnable temperature is clamped at ln(100)
    augment=False,                # True: open_clip's train transform (resume is then exact only with num_workers=0)
    epochs=4,
    batch_size=4096,              # global
    lr=1e-5,
    schedule="cosine",
    weight_decay=0.05,
    beta1=0.9,
    beta2=0.98,
    eps=1e-6,
)


def get_args_parser(add_help=True):
    parser = KeysHelpParser("proclip_stage2.py", add_help=add_help, description=__doc__, defaults=DEFAULTS,
                            path=__file__)  # --help lists every key of DEFAULTS
    parser.add_argument("--config", default=None, help="YAML preset, e.g. configs/toy/proclip_stage2.yaml")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value (the keys are listed below)")
    return parser


# -----------------------------------------------------------------------------
# the objective: ProCLIP model (student), EMA teacher of its image tower, and the losses of docs/methods.md §2
class Stage2Objective(Objective):
    gap_features = ("z_image", "z_text")  # the held-out score includes their modality gap (docs/methods.md §3)

    def __init__(self, cfg, model, cache, env=None):
        super().__init__()
        self.cfg, self.model, self.cache = cfg, model, cache
        # EMA teacher: the pre-trained image tower (incl. projection); none for λ = 0 (LLM2CLIP). It gets no
        # gradients and moves only by the EMA update.
        self.teacher = None
        if cfg.reg_weight > 0:
            self.teacher = self.freeze(copy.deepcopy(model.visual))
        env = env or init_distributed("cpu")
        self.clip_loss = ClipLoss(local_loss=True, gather_with_grad=True, rank=env.rank, world_size=env.world_size)

    # forward (common/train.py Objective) = loss_from_features(encode(batch) + encode_teacher(batch))
    def encode(self, batch):
        images = batch["images"]
        embeddings = self.cache.lookup(batch["captions"]).to(images.device)
        return {"z_image": self.model.encode_image(images), "z_text": self.model.encode_text(embeddings),
                "logit_scale": self.model.logit_scale.exp()}

    @torch.no_grad()
    def encode_teacher(self, batch):
        return {} if self.teacher is None else {"t_image": self.teacher(batch["images"])}

    def loss_from_features(self, features, generator):
        z_image, z_text, logit_scale = features["z_image"], features["z_text"], features["logit_scale"]
        infonce = self.clip_loss(F.normalize(z_image, dim=-1), F.normalize(z_text, dim=-1), logit_scale)
        logs = {"infonce": infonce.detach(), "logit_scale": logit_scale.detach()}
        loss = infonce
        if self.teacher is not None:  # L_reg = L_ins + L_struct against the EMA teacher (§2), per rank as official
            t_image = features["t_image"]
            logs["instance"] = proclip_instance_loss(z_image, t_image)
            logs["structure"] = proclip_structure_loss(z_image, t_image)
            loss = loss + self.cfg.reg_weight * (logs["instance"] + logs["structure"])
        return loss, {k: v.detach() for k, v in logs.items()}

    def after_optimizer_step(self):
        clamp_logit_scale(self.model.logit_scale, self.cfg.max_logit_scale)
        if self.teacher is not None:
            ema_update(self.teacher, self.model.visual, self.cfg.ema_momentum)


def build_model(cfg, cache):
    """-> (ProCLIP with the pre-trained image tower and logit scale, its adapter's config, the training transform
    (augment), the eval transform)."""
    torch.manual_seed(cfg.seed)  # pretrained=random: the image tower's random weights are reproducible too
    clip, preprocess_train, preprocess_eval, tokenizer = build_clip(cfg.arch, cfg.pretrained, cfg.force_quick_gelu)
    config = adapter_config(cfg, in_dim=cache.dim, embed_dim=clip_embed_dim(clip, tokenizer))
    if cfg.adapter:
        adapter, record = load_adapter(cfg.adapter)
        trained_for = embedder_name(record["embedder"], record.get("embedder_chat_template", "auto"))
        uses = embedder_name(cfg.embedder, cfg.embedder_chat_template)
        if trained_for != uses or record["adapter_config"]["embed_dim"] != config["embed_dim"]:
            raise ConfigError(f"adapter={cfg.adapter} was trained for embedder {trained_for!r} and CLIP "
                              f"dimension {record['adapter_config']['embed_dim']}; this run uses {uses!r} and "
                              f"{config['embed_dim']}: pass the stage-1 run of the same embedder and CLIP")
        if record["clip_pretrained"] != cfg.pretrained:
            print(f"WARNING: the adapter was distilled from {record['clip_pretrained']}, the image tower is "
                  f"{cfg.pretrained}")
        config = record["adapter_config"]
    else:
        torch.manual_seed(cfg.seed)  # a fresh adapter (LLM2CLIP), initialised reproducibly
        adapter = Adapter(**config)
    model = ProCLIP(clip.visual, adapter, clip.logit_scale.item())
    return model, config, (preprocess_train if cfg.augment else preprocess_eval), preprocess_eval


def main(argv=None):
    args, unknown = get_args_parser().parse_known_args(argv)  # unknown: key=value after --config, or a --flag
    row = load_config(DEFAULTS, args.config, args.overrides + unknown)  # a --flag is refused, naming key=value
    if not row.run_dir:
        raise ConfigError("run_dir is not set: pass run_dir=PATH (e.g. runs/toy/proclip/stage2)")
    if row.reg_weight < 0 or not 0 <= row.ema_momentum <= 1:
        raise ConfigError(f"reg_weight={row.reg_weight} must be >= 0 and ema_momentum={row.ema_momentum} in [0, 1]")
    # seeds=[...]: a row's runs, in turn; stage 2 of seed S starts from stage 1 of seed S (adapter=.../seed{seed}/...)
    runs = configs_of_seeds(row, "run_dir", ("run_dir", "pretrained", "adapter"))
    missing = [cfg.adapter for cfg in runs if cfg.adapter and not os.path.isfile(cfg.adapter)]
    if missing:  # every seed's, before any model is built (a download, maybe)
        raise FileNotFoundError(f"adapter={missing[0]} not found: run proclip_stage1.py first (make proclip-stage1), "
                                f"or pass adapter= for a fresh adapter (the LLM2CLIP baseline)")
    env = init_distributed(row.device)
    fill = fill_command("stage2", args.config, args.overrides + unknown)  # printed when a text is not in the cache
    paths = [train_run(cfg, env, fill) for cfg in runs]
    return paths if row.seeds else paths[0]


def train_run(cfg, env, fill):
    """One run: cfg's image tower and adapter tuned into cfg.run_dir. -> the path of its model.pt."""
    dataset, held_out = split_training_set(cfg, transform=None)
    check_images(dataset)
    cache = open_training_cache(cfg, [dataset, held_out], fill)  # a missing text: the command that fills it
    model, config, transform, preprocess_eval = build_model(cfg, cache)
    dataset.transform = transform  # the corpus was read first: the cache is checked before the model is built
    held_out.transform = preprocess_eval  # scored without augmentation
    objective = Stage2Objective(cfg, model, cache, env)
    if env.is_main:
        print(f"proclip_stage2.py: seed {cfg.seed}, image tower {cfg.arch} {cfg.pretrained}, adapter "
              f"{cfg.adapter or '(fresh: LLM2CLIP baseline)'}, λ={cfg.reg_weight}, {len(dataset)} images")

    def export(objective, path):
        save_proclip_checkpoint(path, objective.model.adapter, config, model=objective.model, stage="stage2",
                                adapter_init=cfg.adapter, reg_weight=cfg.reg_weight, **clip_metadata(cfg))

    return train(cfg, objective, dataset, cfg.run_dir, export, env=env, held_out=held_out)


if __name__ == "__main__":
    run_cli(main)

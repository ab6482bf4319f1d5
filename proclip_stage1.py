"""ProCLIP stage 1, representation inheritance (docs/methods.md §2): distil CLIP's text tower into an adapter on a
frozen LLM-based embedder, from text alone.

Teacher: CLIP's own frozen text tower, given SHORT captions only (it truncates at its context length).
Student: adapter(E(caption)) with E frozen; E's outputs come from the embedding cache, never from E itself.
Loss, with s = normalise(student), t = normalise(teacher) over a batch of B captions (docs/methods.md §2):
    L = L_ins + L_struct,   L_ins = Σ_k ‖s_k − t_k‖²,   L_struct = Σ_{k<l} smooth-L1_{β=1}(‖s_k − s_l‖ − ‖t_k − t_l‖)
With instance_long_captions=true (the official code; the default) L_ins also covers each image's long caption,
whose teacher embedding is the text tower on the truncated long caption; L_struct stays on the short captions.
Only the adapter trains.

Run (toy preset, CPU, about a minute; `make embed-cache` first):
    python proclip_stage1.py --config configs/toy/proclip_stage1.yaml pretrained=runs/toy/pretrain/model.pt
Outputs in run_dir as refine.py's; model.pt holds the adapter, its shape and the CLIP it was distilled from.
Stage 2 starts from it: proclip_stage2.py adapter=RUN_DIR/model.pt.
"""
import types

import torch

from common.config import ConfigError, KeysHelpParser, configs_of_seeds, load_config, run_cli
from common.data import CaptionsOnly, ShortAndLongCaptions, collate_captions, collate_short_and_long
from common.distributed import init_distributed
from common.losses import proclip_instance_loss, proclip_structure_loss
from common.models import build_clip
from common.proclip import (PROCLIP_DEFAULTS, Adapter, adapter_config, clip_embed_dim, clip_metadata, fill_command,
                            open_training_cache, save_proclip_checkpoint, split_training_set)
from common.train import TRAIN_DEFAULTS, Objective, train

# -----------------------------------------------------------------------------
# config: the paper's defaults (docs/methods.md §2); presets in configs/{toy,paper}/ override them.
# Model and data keys (arch, embedder, embedding_cache, train_data, adapter_depth, ...): PROCLIP_DEFAULTS.
DEFAULTS = dict(
    TRAIN_DEFAULTS | PROCLIP_DEFAULTS,
    run_dir="",                   # required: where config.yaml, log.jsonl, checkpoint.pt and model.pt go
    csv_caption_keys=["short"],   # the teacher sees short captions only (but see instance_long_captions)
    wds_caption_keys=["short"],   # (the same, for train_format=webdataset)
    instance_long_captions=True,  # true: L_ins also on the long caption of every pair (official ProCLIP code; needs
                                  #   train_format=csv); false: short captions only (docs/methods.md §2)
    long_caption_key="long",      # csv column of the long captions (instance_long_captions)
    epochs=4,
    batch_size=1024,
    lr=1e-5,
    schedule="cosine",
    weight_decay=0.05,
    beta1=0.9,
    beta2=0.98,
    eps=1e-6,
    teacher_memo=False,           # embed every training caption with the frozen teacher once, before the first
                                  # step, instead of every epoch; memory: captions x embed_dim floats
)


def get_args_parser(add_help=True):
    parser = KeysHelpParser("proclip_stage1.py", add_help=add_help, description=__doc__, defaults=DEFAULTS,
                            path=__file__)  # --help lists every key of DEFAULTS
    parser.add_argument("--config", default=None, help="YAML preset, e.g. configs/toy/proclip_stage1.yaml")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value (the keys are listed below)")
    return parser


# -----------------------------------------------------------------------------
# the objective: trainable adapter (student), CLIP's frozen text tower (teacher)
class Stage1Objective(Objective):
    def __init__(self, adapter, clip, tokenizer, cache, memo_captions=None):
        super().__init__()
        self.adapter, self.tokenizer, self.cache = adapter, tokenizer, cache
        clip.visual = torch.nn.Identity()  # the teacher is the text tower alone; no image is seen in stage 1
        self.teacher = self.freeze(clip)
        self.memo_captions, self.memo = memo_captions, None  # teacher_memo: caption -> teacher embedding

    @torch.no_grad()
    def teacher_embeddings(self, captions, device):
        if self.memo_captions is None:
            return self.teacher.encode_text(self.tokenizer(captions).to(device))
        if self.memo is None:  # every caption once, in a fixed order and batching: the same values after a resume
            texts = sorted(set(self.memo_captions))
            self.memo = {}
            for start in range(0, len(texts), 256):
                chunk = texts[start:start + 256]
                self.memo.update(zip(chunk, self.teacher.encode_text(self.tokenizer(chunk).to(device))))
        others = [c for c in dict.fromkeys(captions) if c not in self.memo]  # held-out captions: not memoised
        other = dict(zip(others, self.teacher.encode_text(self.tokenizer(others).to(device)))) if others else {}
        return torch.stack([self.memo[c] if c in self.memo else other[c] for c in captions])

    # forward (common/train.py Objective) = loss_from_features(encode(batch) + encode_teacher(batch))
    def encode(self, batch):
        device = self.adapter.projection.weight.device
        features = {"student": self.adapter(self.cache.lookup(batch["captions"]).to(device))}
        if "long_captions" in batch:
            features["long_student"] = self.adapter(self.cache.lookup(batch["long_captions"]).to(device))
        return features

    @torch.no_grad()
    def encode_teacher(self, batch):
        device = self.adapter.projection.weight.device
        features = {"teacher": self.teacher_embeddings(batch["captions"], device)}
        if "long_captions" in batch:
            features["long_teacher"] = self.teacher_embeddings(batch["long_captions"], device)
        return features

    def loss_from_features(self, features, generator):
        student, teacher = features["student"], features["teacher"]
        instance = proclip_instance_loss(student, teacher)    # Σ‖s − t‖², normalised (§2)
        structure = proclip_structure_loss(student, teacher)  # Σ smooth-L1(pdist(s) − pdist(t)) (§2)
        if "long_student" in features:  # official: + Σ‖s − t‖² of the long captions (losses.proclip_instance_loss)
            instance = instance + proclip_instance_loss(features["long_student"], features["long_teacher"])
        logs = {"instance": instance.detach(), "structure": structure.detach(),
                "cosine": torch.nn.functional.cosine_similarity(student, teacher).mean().detach()}
        return instance + structure, logs


def training_captions(cfg):
    """-> (text-only dataset, its collate function, the same for its held-out part, the caption corpora whose
    texts the first yields, and those of the held-out part: together, what the embedding cache must hold)."""
    if cfg.instance_long_captions and cfg.train_format != "csv":
        raise ValueError(f"instance_long_captions=true needs train_format=csv with a {cfg.long_caption_key!r} "
                         f"column; got train_format={cfg.train_format}: set instance_long_captions=false")
    short, short_held = split_training_set(cfg, transform=None)
    if not cfg.instance_long_captions:
        return CaptionsOnly(short), collate_captions, CaptionsOnly(short_held), [short], [short_held]
    long, long_held = split_training_set(
        types.SimpleNamespace(**{**vars(cfg), "csv_caption_keys": [cfg.long_caption_key]}), transform=None)
    return (ShortAndLongCaptions(short, long), collate_short_and_long, ShortAndLongCaptions(short_held, long_held),
            [short, long], [short_held, long_held])


def main(argv=None):
    args, unknown = get_args_parser().parse_known_args(argv)  # unknown: key=value after --config, or a --flag
    row = load_config(DEFAULTS, args.config, args.overrides + unknown)  # a --flag is refused, naming key=value
    if not row.run_dir:
        raise ConfigError("run_dir is not set: pass run_dir=PATH (e.g. runs/toy/proclip/stage1)")
    runs = configs_of_seeds(row, "run_dir", ("run_dir", "pretrained"))  # seeds=[...]: a row's runs, in turn
    env = init_distributed(row.device)
    fill = fill_command("stage1", args.config, args.overrides + unknown)  # printed when a text is not in the cache
    paths = [train_run(cfg, env, fill) for cfg in runs]
    return paths if row.seeds else paths[0]


def train_run(cfg, env, fill):
    """One run: cfg's adapter distilled from cfg.pretrained's text tower, into cfg.run_dir. -> its model.pt."""
    captions, collate, held_out, corpora, held_out_corpora = training_captions(cfg)  # text only: no image is read
    cache = open_training_cache(cfg, corpora + held_out_corpora, fill)  # a missing text: the command that fills it
    # the teacher's encode_text skips the columns that are padding in every caption (common/models.py)
    torch.manual_seed(cfg.seed)  # pretrained=random: the teacher's random weights are reproducible too
    clip, _, _, tokenizer = build_clip(cfg.arch, cfg.pretrained, cfg.force_quick_gelu, trim_text_padding=True)
    config = adapter_config(cfg, in_dim=cache.dim, embed_dim=clip_embed_dim(clip, tokenizer))
    torch.manual_seed(cfg.seed)  # the adapter's initialisation
    objective = Stage1Objective(Adapter(**config), clip, tokenizer, cache,
                                # teacher_memo: every training caption, as strings (a small corpus's option)
                                [text for corpus in corpora for text in corpus.captions]
                                if cfg.teacher_memo else None)
    if env.is_main:
        print(f"proclip_stage1.py: seed {cfg.seed}, adapter {config} distilled from {cfg.arch} {cfg.pretrained}, "
              f"{len(captions)} captions, cache {cfg.embedding_cache} ({len(cache)} texts)")

    def export(objective, path):
        save_proclip_checkpoint(path, objective.adapter, config, stage="stage1", **clip_metadata(cfg))

    return train(cfg, objective, captions, cfg.run_dir, export, collate_fn=collate, env=env, held_out=held_out)


if __name__ == "__main__":
    run_cli(main)

"""ProCLIP's model (docs/methods.md §2): a CLIP image tower, a frozen text embedder and a trainable adapter.

The frozen embedder plays the part of CLIP's tokenizer: `EmbedderTokenizer` turns texts into embedder outputs
(read from the EmbeddingCache), and `ProCLIP.encode_text` is the adapter. So a ProCLIP model has open_clip's
interface (encode_image, encode_text, logit_scale) and evaluate.py / open_clip's zero-shot classifier use it as is.

Shared by proclip_stage1.py, proclip_stage2.py and evaluate.py (model_type=proclip). Also here:
    python -m common.proclip fill-cache --stage-configs S1.yaml S2.yaml --eval-config EVAL.yaml   (make embed-cache)
The ProCLIP tables are in common/tables.py (python evaluate.py table proclip results/toy).
"""
import argparse
import logging
import os
import sys
import types

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from common.config import parse_overrides
from common.data import CocoCaptions, CsvPairs, first_images
from common.embedder import (Adapter, MissingEmbeddingError, embed_texts, fill_cache, load_embedder,
                             open_filled_cache, read_texts, zeroshot_prompts)
from common.models import atomic_torch_save, build_clip, load_checkpoint_file

# Keys both stages accept (merged into each stage's DEFAULTS), with the paper's defaults (docs/methods.md §2).
PROCLIP_DEFAULTS = dict(
    arch="ViT-B-32-quickgelu",      # the CLIP whose image tower ProCLIP keeps (open_clip architecture or ToyCLIP)
    pretrained="openai",            # its weights: open_clip tag or checkpoint file
    force_quick_gelu=False,
    embedder="",                    # required: sentence-transformers name or folder, or "toy" (offline MiniLM)
    embedding_cache="",             # required: folder of the embedder's outputs (fill it: make embed-cache)
    train_format="csv",             # csv: images with short and long captions (recaptioned CC3M) | coco
    train_data="",                  # CSV/TSV file, or COCO captions JSON
    train_images="",                # image folder (coco format only)
    csv_image_key="filepath",
    csv_caption_keys=["short", "long"],  # one caption is drawn per image per epoch
    max_images=0,                   # >0: only the first N images of train_data (a quick preset's smaller corpus)
    holdout_fraction=0.0,           # held out (seed 42), not trained on
    adapter_depth=4,                # N residual blocks (the LLM2CLIP adapter)
    adapter_expansion=2,            # e
    adapter_dropout=0.0,
    # optimisation shared by both stages (docs/methods.md §2); each stage sets its own batch_size
    epochs=4,
    lr=1e-5,
    schedule="cosine",
    weight_decay=0.05,
    beta1=0.9,
    beta2=0.98,
    eps=1e-6,
)


def build_training_set(cfg, transform):
    """The stage's image-caption corpus; `transform=None` when only the captions are needed."""
    if cfg.train_format == "csv":
        dataset = CsvPairs(cfg.train_data, transform, cfg.csv_image_key, cfg.csv_caption_keys, seed=cfg.seed)
    elif cfg.train_format == "coco":
        dataset = CocoCaptions(cfg.train_data, cfg.train_images, transform, seed=cfg.seed)
    else:
        raise ValueError(f"train_format={cfg.train_format!r}: use csv or coco")
    return first_images(dataset, cfg.max_images).holdout(cfg.holdout_fraction, seed=42)[0]


def open_training_cache(cfg, captions):
    """The filled embedding cache, checked to hold every training caption before the first step."""
    for key in ("embedder", "embedding_cache"):
        if not getattr(cfg, key):
            raise ValueError(f"{key} is not set: pass {key}=... (see configs/toy/proclip_stage1.yaml)")
    cache = open_filled_cache(cfg.embedding_cache, cfg.embedder)
    missing = [text for text in dict.fromkeys(captions) if text not in cache]
    if missing:
        raise MissingEmbeddingError(
            f"{len(missing)} training captions are not in the embedding cache {cfg.embedding_cache} (first: "
            f"{missing[0]!r}); fill it with `make embed-cache` or `python -m common.proclip fill-cache ...`")
    return cache


# -----------------------------------------------------------------------------
# the model
class ProCLIP(nn.Module):
    """CLIP image tower (incl. projection) + adapter on frozen-embedder outputs, with open_clip's interface."""

    def __init__(self, visual, adapter, logit_scale):
        super().__init__()
        self.visual, self.adapter = visual, adapter
        self.logit_scale = nn.Parameter(torch.as_tensor(float(logit_scale)))  # log of the scale, as open_clip

    def encode_image(self, images, normalize=False):
        features = self.visual(images)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, embeddings, normalize=False):
        """`embeddings` are the frozen embedder's outputs, from EmbedderTokenizer (the cache)."""
        features = self.adapter(embeddings)
        return F.normalize(features, dim=-1) if normalize else features


@torch.no_grad()
def clip_embed_dim(clip, tokenizer):
    """CLIP's joint embedding dimension, which the adapter keeps (512 for ViT-B, 64 for ToyCLIP)."""
    return clip.encode_text(tokenizer(["a photo"])).shape[-1]


def adapter_config(cfg, in_dim, embed_dim):
    return dict(in_dim=in_dim, embed_dim=embed_dim, depth=cfg.adapter_depth, expansion=cfg.adapter_expansion,
                dropout=cfg.adapter_dropout)


def clip_metadata(cfg):
    """What the checkpoints record about where they came from (plain types: loadable with weights_only)."""
    return dict(clip_arch=cfg.arch, clip_pretrained=cfg.pretrained, force_quick_gelu=cfg.force_quick_gelu,
                embedder=cfg.embedder, embedding_cache=cfg.embedding_cache, train_data=cfg.train_data)


def save_proclip_checkpoint(path, adapter, config, model=None, **metadata):
    """Stage 1: the adapter alone (its image tower is the CLIP named in clip_pretrained).
    Stage 2 (`model` given): image tower, adapter and logit scale."""
    record = {"adapter": adapter.state_dict(), "adapter_config": config, **metadata}
    if model is not None:
        record.update(visual=model.visual.state_dict(), logit_scale=model.logit_scale.item())
    atomic_torch_save(record, path)


def load_adapter(path):
    """-> (Adapter with the weights of a ProCLIP checkpoint, the checkpoint's record)."""
    record = load_checkpoint_file(path)
    if "adapter" not in record or "adapter_config" not in record:
        raise ValueError(f"{path} is not a ProCLIP checkpoint (no adapter); pass the model.pt of "
                         f"proclip_stage1.py or proclip_stage2.py")
    adapter = Adapter(**record["adapter_config"])
    adapter.load_state_dict(record["adapter"])
    return adapter, record


def load_proclip(path, device="cpu", image_tower=""):
    """-> (ProCLIP, eval preprocess, record). A stage-1 checkpoint gets the image tower and logit scale of the
    CLIP it was distilled from, or of `image_tower` (a CLIP checkpoint) when given ("ProCLIP stage 1 only")."""
    adapter, record = load_adapter(path)
    trained_tower = "visual" in record
    if trained_tower and image_tower:
        raise ValueError(f"{path} is a stage-2 checkpoint with its own image tower; do not pass another "
                         f"({image_tower}) — that is only for stage-1 checkpoints")
    clip_weights = "" if trained_tower else (image_tower or record["clip_pretrained"])
    if trained_tower:  # only the architecture is built here: silence open_clip's "initialized randomly" warning
        logging.disable(logging.WARNING)
    try:
        clip, _, preprocess, _ = build_clip(record["clip_arch"], clip_weights, record["force_quick_gelu"])
    finally:
        logging.disable(logging.NOTSET)
    visual, logit_scale = clip.visual, clip.logit_scale.item()
    if trained_tower:
        visual.load_state_dict(record["visual"])
        logit_scale = record["logit_scale"]
    return ProCLIP(visual, adapter, logit_scale).to(device), preprocess, record


class EmbedderTokenizer:
    """ProCLIP's "tokenizer": texts -> the frozen embedder's outputs, float32 [N, d] on CPU.

    Texts are read from the EmbeddingCache. For evaluation only, texts the cache lacks (or all, without a cache)
    are embedded by the embedder itself, loaded on first need; training never gets here (open_training_cache).
    """

    def __init__(self, embedder, cache=None, device="cpu"):
        self.embedder, self.cache, self.device, self._model = embedder, cache, device, None

    def __call__(self, texts):
        texts = list(texts)
        missing = [t for t in dict.fromkeys(texts) if self.cache is None or t not in self.cache]
        if not missing:
            return self.cache.lookup(texts)
        if self._model is None:
            print(f"embedding {len(missing)}+ texts that are not in the cache with {self.embedder!r}")
            self._model = load_embedder(self.embedder, self.device)
        fresh = dict(zip(missing, embed_texts(self._model, missing)))
        return torch.stack([fresh[t] if t in fresh else self.cache.lookup([t])[0] for t in texts])


def load_for_evaluation(checkpoint, device="cpu", image_tower="", embedding_cache=""):
    """-> (model, preprocess, tokenizer) as evaluate.load_model returns them, for a ProCLIP checkpoint.
    The cache defaults to the one the checkpoint was trained with."""
    if not checkpoint:
        raise ValueError("model_type=proclip needs proclip_checkpoint=PATH (model.pt of proclip_stage1/2.py)")
    model, preprocess, record = load_proclip(checkpoint, device, image_tower)
    folder, cache = embedding_cache or record.get("embedding_cache", ""), None
    if embedding_cache or (folder and os.path.isfile(os.path.join(folder, "meta.json"))):
        cache = open_filled_cache(folder, record["embedder"])
    else:
        print(f"no embedding cache ({folder or 'none recorded'}): every text is embedded now")
    return model, preprocess, EmbedderTokenizer(record["embedder"], cache, device)


# -----------------------------------------------------------------------------
# fill-cache: every text the ProCLIP runs and their evaluations need
def _proclip_config(path, overrides):
    with open(path) as f:
        from_file = yaml.safe_load(f) or {}
    picked = {k: v for k, v in {**from_file, **overrides}.items() if k in PROCLIP_DEFAULTS or k == "seed"}
    return types.SimpleNamespace(**{**PROCLIP_DEFAULTS, "seed": 0, **picked})


def evaluation_texts(eval_config, data_root=None):
    """Retrieval captions and zero-shot prompts of an evaluate.py config (its data_root, or the one given; zeroshot,
    retrieval)."""
    with open(eval_config) as f:
        cfg = yaml.safe_load(f) or {}
    root = cfg.get("data_root", "") if data_root is None else data_root
    texts = []
    for task_root in cfg.get("zeroshot", {}).values():
        texts += zeroshot_prompts(os.path.join(root, task_root), cfg.get("zeroshot_templates") or None)
    for spec in cfg.get("retrieval", {}).values():
        texts += read_texts(os.path.join(root, spec["annotations"]), [])
    return texts


def fill_cache_main(argv):
    parser = argparse.ArgumentParser("python -m common.proclip fill-cache",
                                     description="Embed every caption and prompt the ProCLIP runs need, once.")
    parser.add_argument("--stage-configs", nargs="+", required=True, help="proclip_stage1/2 YAML presets")
    parser.add_argument("--eval-config", default="", help="evaluate.py preset whose texts are embedded too")
    parser.add_argument("overrides", nargs="*", help="key=value for the stage configs, e.g. train_data=...; "
                                                     "data_root=... is the eval config's")
    args = parser.parse_args(argv)
    overrides = parse_overrides(args.overrides)
    configs = [_proclip_config(path, overrides) for path in args.stage_configs]
    targets = {(c.embedder, c.embedding_cache) for c in configs}
    if len(targets) != 1 or not all(next(iter(targets))):
        raise ValueError(f"{args.stage_configs} must all set the same embedder and embedding_cache; got {targets}")
    embedder, folder = targets.pop()
    texts = [text for c in configs for text in build_training_set(c, None).captions]
    if args.eval_config:
        texts += evaluation_texts(args.eval_config, overrides.get("data_root"))
    fill_cache(embedder, folder, texts)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["fill-cache"]:
        return fill_cache_main(argv[1:])
    raise SystemExit("usage: python -m common.proclip fill-cache --stage-configs ... [--eval-config ...] [key=value]")


if __name__ == "__main__":
    main()

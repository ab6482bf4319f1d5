"""ProCLIP's model (docs/methods.md §2): a CLIP image tower, a frozen text embedder and a trainable adapter.

The frozen embedder plays the part of CLIP's tokenizer: `EmbedderTokenizer` turns texts into embedder outputs
(read from the EmbeddingCache), and `ProCLIP.encode_text` is the adapter. So a ProCLIP model has open_clip's
interface (encode_image, encode_text, logit_scale) and evaluate.py / open_clip's zero-shot classifier use it as is.

Shared by proclip_stage1.py, proclip_stage2.py and evaluate.py (model_type=proclip). Also here, the one command that
fills the embedding cache with every text the runs and their evaluations need (what `make embed-cache` runs):
    python -m common.proclip fill-cache --stage-configs S1.yaml S2.yaml --eval-config EVAL.yaml [key=value ...]
The ProCLIP tables are in common/tables.py (python evaluate.py table proclip results/toy).
"""
import argparse
import logging
import os
import sys
import types

import torch
import torch.nn.functional as F
from torch import nn

from common.checkpoints import atomic_torch_save, load_checkpoint_file
from common.config import parse_overrides, read_yaml, run_cli
from common.data import CocoCaptions, first_images, open_caption_dataset, read_prompt_files
from common.embedder import MissingEmbeddingError, embed_texts, fill_cache, load_embedder, open_filled_cache
from common.models import build_clip

# The model and data keys both stages accept (merged into each stage's DEFAULTS, where the optimisation
# hyper-parameters of the stage are), with the paper's defaults (docs/methods.md §2).
PROCLIP_DEFAULTS = dict(
    arch="ViT-B-32-quickgelu",      # the CLIP whose image tower ProCLIP keeps (open_clip architecture or ToyCLIP)
    pretrained="openai",            # its weights: open_clip tag or checkpoint file
    force_quick_gelu=False,
    embedder="",                    # required: sentence-transformers name or folder, "toy" (offline MiniLM), or
                                    # llm2vec:NAME_OR_FOLDER (the paper's LLM2CLIP-Llama-3-8B-CC; common/embedder.py)
    embedding_cache="",             # required: folder of the embedder's outputs (fill it: make embed-cache)
    embedding_cache_dtype="float32",  # float32 | float16: how fill-cache stores the vectors (float16: half the disk)
    embedder_trust_remote_code=False,  # fill-cache may run the embedder repository's own Python code (only if true)
    train_format="csv",             # csv: images with short and long captions (recaptioned CC3M) | coco | webdataset
    train_data="",                  # CSV/TSV file, COCO captions JSON, or tar shards (folder, glob, {000..099}.tar)
    train_images="",                # image folder (coco format only)
    csv_image_key="filepath",
    csv_caption_keys=["short", "long"],  # one caption is drawn per image per epoch
    wds_caption_keys=["short", "long"],  # webdataset: fields of KEY.json ("txt" = KEY.txt), as csv_caption_keys
    wds_index_dir="",               # webdataset: keep each shard's scan here (later runs skip it); "" = scan each run
    max_images=0,                   # >0: only the first N images of train_data (a quick preset's smaller corpus)
    holdout_fraction=0.0,           # held out (seed 42), not trained on
    adapter_depth=1,                # N residual blocks: the ProCLIP repository's adapter (TextProj: N=1, e=8);
    adapter_expansion=8,            # e   LLM2CLIP's adapter is N=4, e=2 (docs/methods.md §2, §4)
    adapter_dropout=0.0,
)


def build_training_set(cfg, transform):
    """The stage's image-caption corpus; `transform=None` when only the captions are needed."""
    dataset = open_caption_dataset(cfg, transform)
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
# the adapter (docs/methods.md §2)

class ResidualMLPBlock(nn.Module):
    """x + Linear(e·d→d)(Dropout(GELU(Linear(d→e·d)(LayerNorm(x))))) (docs/methods.md §2)."""

    def __init__(self, dim, expansion, dropout):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.expand = nn.Linear(dim, expansion * dim)
        self.activation = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.contract = nn.Linear(expansion * dim, dim)

    def forward(self, x):
        return x + self.contract(self.dropout(self.activation(self.expand(self.norm(x)))))


class Adapter(nn.Module):
    """Maps embedder outputs into CLIP's embedding space (docs/methods.md §2, the LLM2CLIP adapter).

    L2-normalise the input, `depth` residual MLP blocks, then LayerNorm and Linear(in_dim → embed_dim).
    The output is not normalised: callers normalise it, as they do CLIP's encode_text.
    """

    def __init__(self, in_dim, embed_dim, depth=4, expansion=2, dropout=0.0):
        super().__init__()
        for name, value in (("in_dim", in_dim), ("embed_dim", embed_dim), ("expansion", expansion)):
            if value < 1:
                raise ValueError(f"Adapter {name} must be >= 1, got {value}")
        if depth < 0:
            raise ValueError(f"Adapter depth must be >= 0, got {depth}")
        self.in_dim = in_dim
        self.blocks = nn.Sequential(*[ResidualMLPBlock(in_dim, expansion, dropout) for _ in range(depth)])
        self.final_norm = nn.LayerNorm(in_dim)
        self.projection = nn.Linear(in_dim, embed_dim)

    def forward(self, embeddings):
        if embeddings.shape[-1] != self.in_dim:
            raise ValueError(f"Adapter expects embeddings of dimension {self.in_dim}, got shape "
                             f"{tuple(embeddings.shape)}: was the cache built with another embedder?")
        x = F.normalize(embeddings, dim=-1)  # E's output is L2-normalised first (docs/methods.md §2)
        return self.projection(self.final_norm(self.blocks(x)))


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

    def forward(self, image=None, text=None):
        """open_clip's CLIP.forward: (normalised image features, normalised text features, logit scale), either
        feature None when its input is. open_clip's helpers (build_zero_shot_classifier) may call model(text=...)."""
        return (None if image is None else self.encode_image(image, normalize=True),
                None if text is None else self.encode_text(text, normalize=True), self.logit_scale.exp())


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
    from_file = read_yaml(path)
    stage1_keys = {"seed": 0, "instance_long_captions": False, "long_caption_key": "long"}  # proclip_stage1.py
    picked = {k: v for k, v in {**from_file, **overrides}.items() if k in PROCLIP_DEFAULTS or k in stage1_keys}
    return types.SimpleNamespace(**{**PROCLIP_DEFAULTS, **stage1_keys, **picked})


def evaluation_texts(eval_config, data_root=None):
    """Retrieval captions and zero-shot prompts of an evaluate.py config (its data_root, or the one given; zeroshot,
    retrieval)."""
    cfg = read_yaml(eval_config)
    root = cfg.get("data_root", "") if data_root is None else data_root
    texts = []
    for task_root in cfg.get("zeroshot", {}).values():  # the prompts exactly as evaluate.py writes them
        classnames, templates = read_prompt_files(os.path.join(root, task_root))
        texts += [t.format(c=c) for c in classnames for t in cfg.get("zeroshot_templates") or templates]
    for name, spec in cfg.get("retrieval", {}).items():  # the captions exactly as evaluate.py reads them
        if not isinstance(spec, dict) or not {"annotations", "images"} <= spec.keys():
            raise ValueError(f"{eval_config}: retrieval set {name!r} needs annotations: and images: paths")
        annotations, images = os.path.join(root, spec["annotations"]), os.path.join(root, spec["images"])
        texts += CocoCaptions(annotations, images, None).captions
    return texts


def fill_cache_main(argv):
    parser = argparse.ArgumentParser("python -m common.proclip fill-cache",
                                     description="Embed every caption and prompt the ProCLIP runs need, once.")
    parser.add_argument("--stage-configs", nargs="+", required=True, help="proclip_stage1/2 YAML presets")
    parser.add_argument("--eval-config", default="", help="evaluate.py preset whose texts are embedded too")
    parser.add_argument("--device", default="auto", help="auto (the GPU if there is one) | cpu | cuda | cuda:K")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="the embedder's weights; auto = bf16 on a GPU, fp32 on CPU")
    parser.add_argument("--batch-size", type=int, default=0, help="texts per forward pass; 0 = 256 on GPU, 64 on CPU")
    parser.add_argument("--part", type=int, default=0, help="this process embeds part K of --num-parts ...")
    parser.add_argument("--num-parts", type=int, default=1,
                        help="N parallel writers (GPUs or SLURM array tasks), each with its own --part K in 0..N-1; "
                             "run the same command with every K, at once or one after the other")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let the embedder's repository run its own Python (= embedder_trust_remote_code=true)")
    parser.add_argument("--cache-dtype", choices=["float32", "float16"], default=None,
                        help="storage of the vectors (default: the configs' embedding_cache_dtype)")
    parser.add_argument("overrides", nargs="*", help="key=value for the stage configs, e.g. train_data=...; "
                                                     "data_root=... is the eval config's")
    # key=value may come anywhere, also right after --stage-configs (whose nargs="+" would swallow it)
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    args = parser.parse_args([a for a in argv if a not in overrides])
    overrides = parse_overrides(args.overrides + overrides)
    configs = [_proclip_config(path, overrides) for path in args.stage_configs]
    targets = {(c.embedder, c.embedding_cache) for c in configs}
    if len(targets) != 1 or not all(next(iter(targets))):
        raise ValueError(f"{args.stage_configs} must all set the same embedder and embedding_cache; got {targets}")
    embedder, folder = targets.pop()
    texts = [text for c in configs for text in build_training_set(c, None).captions]
    for c in configs:  # stage 1's L_ins on the long captions too (instance_long_captions)
        if c.instance_long_captions:
            long = types.SimpleNamespace(**{**vars(c), "csv_caption_keys": [c.long_caption_key]})
            texts += build_training_set(long, None).captions
    if args.eval_config:
        texts += evaluation_texts(args.eval_config, overrides.get("data_root"))
    fill_cache(embedder, folder, texts, device=args.device, batch_size=args.batch_size, precision=args.precision,
               trust_remote_code=args.trust_remote_code or any(c.embedder_trust_remote_code for c in configs),
               store_dtype=args.cache_dtype or configs[0].embedding_cache_dtype, part=args.part,
               num_parts=args.num_parts)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["fill-cache"]:
        return fill_cache_main(argv[1:])
    raise SystemExit("usage: python -m common.proclip fill-cache --stage-configs S1.yaml S2.yaml [--eval-config "
                     "EVAL.yaml] [key=value ...]")


if __name__ == "__main__":
    run_cli(main, "python -m common.proclip")

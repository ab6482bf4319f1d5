"""ProCLIP's model (docs/methods.md §2): a CLIP image tower, a frozen text embedder and a trainable adapter.

The frozen embedder plays the part of CLIP's tokenizer: `EmbedderTokenizer` turns texts into embedder outputs
(read from the EmbeddingCache), and `ProCLIP.encode_text` is the adapter. So a ProCLIP model has open_clip's
interface (encode_image, encode_text, logit_scale) and evaluate.py / open_clip's zero-shot classifier use it as is.

Shared by proclip_stage1.py, proclip_stage2.py and evaluate.py (model_type=proclip). The embedding cache is filled
by tools/fill_cache.py (make embed-cache).
"""
import logging
import os
import shlex

import torch
import torch.nn.functional as F
from torch import nn

from common.checkpoints import atomic_torch_save, load_checkpoint_file, recorded_path
from common.config import ConfigError
from common.data import first_images, open_caption_dataset
from common.embedder import MissingEmbeddingError, TextSource, embed_texts, load_embedder, open_filled_cache
from common.models import build_clip

# The model and data keys both stages accept (merged into each stage's DEFAULTS, where the optimisation
# hyper-parameters of the stage are), with the paper's defaults (docs/methods.md §2).
PROCLIP_DEFAULTS = dict(
    arch="ViT-B-32-quickgelu",      # the CLIP whose image tower ProCLIP keeps (open_clip architecture or ToyCLIP)
    pretrained="openai",            # its weights: open_clip tag or checkpoint file
    force_quick_gelu=False,
    embedder="",                    # required: sentence-transformers name or folder, "toy" (offline MiniLM), or
                                    # llm2vec:NAME_OR_FOLDER (the paper's LLM2CLIP-Llama-3-8B-CC; common/embedder.py)
    embedder_chat_template="auto",  # llm2vec: the wrapper around each text: llama3 (Llama-3's user turn, which
                                    #   LLM2CLIP's embedding always has) | none | auto: llama3 when the name holds
                                    #   "Llama-3" and "Instruct" (llm2vec's rule); recorded in the cache's identity
    embedding_cache="",             # required: folder of the embedder's outputs (fill it: make embed-cache)
    embedding_cache_dtype="float32",  # float32 | float16: how fill-cache stores the vectors (float16: half the disk)
    embedder_trust_remote_code=False,  # fill-cache may run the embedder repository's own Python code (only if true)
    train_format="csv",             # csv: images with short and long captions (recaptioned CC3M) | coco | webdataset
    train_data="",                  # CSV/TSV file, COCO captions JSON, or tar shards (folder, glob, {000..099}.tar)
    train_images="",                # image folder (coco format only)
    csv_image_key="filepath",
    csv_caption_keys=["short", "long"],  # one caption is drawn per image per epoch
    wds_caption_keys=["short", "long"],  # webdataset: fields of KEY.json ("txt" = KEY.txt), as csv_caption_keys
    data_index="cache/data_index",  # where the corpus index lives (common/corpus_index.py): built once, reused
    max_images=0,                   # >0: only the first N images of train_data (a quick preset's smaller corpus)
    holdout_fraction=0.0,           # held out (seed 42), not trained on, scored after each epoch (docs/watching.md)
    adapter_depth=1,                # N residual blocks: ProCLIP's adapter (TextProj) has N=1, e=8, LLM2CLIP's N=4,
                                    #   e=2 (docs/methods.md §2, §4)
    adapter_expansion=8,            # e: each block's hidden layer is e times the embedder's dimension
    adapter_dropout=0.0,
)


def split_training_set(cfg, transform):
    """-> (the stage's image-caption corpus, its held-out part: holdout_fraction of the images, seed 42, never
    trained on); `transform=None` when only the captions are needed."""
    dataset = open_caption_dataset(cfg, transform)
    return first_images(dataset, cfg.max_images).holdout(cfg.holdout_fraction, seed=42)


def build_training_set(cfg, transform):
    """The stage's image-caption corpus, without its held-out part."""
    return split_training_set(cfg, transform)[0]


def fill_command(stage, config, overrides):
    """The command that embeds what this stage run reads: tools.fill_cache with the run's own config and key=value,
    so that it reads the same corpus (your own data too) into the same cache."""
    return " ".join(["python -m tools.fill_cache", *([f"--{stage}-config", config] if config else [f"--{stage}"]),
                     *map(shlex.quote, overrides)])


def open_training_cache(cfg, datasets, fill=""):
    """The filled embedding cache, checked to hold every caption of `datasets` (the training corpus and its
    held-out part) before the first step: by their hashes, from the corpus index, so no list of captions is made.
    `fill`: the command that fills it for this run (fill_command), named when something is missing."""
    for key in ("embedder", "embedding_cache"):
        if not getattr(cfg, key):
            raise ValueError(f"{key} is not set: pass {key}=... (see configs/toy/proclip_stage1.yaml)")
    how = (f"fill it with `{fill}` (the presets' own data: make embed-cache)" if fill
           else "fill it with `make embed-cache` or `python -m tools.fill_cache ...`")
    if not os.path.isfile(os.path.join(cfg.embedding_cache, "meta.json")):
        raise MissingEmbeddingError(f"the embedding cache {cfg.embedding_cache} does not exist or was never filled; "
                                    f"{how}")
    cache = open_filled_cache(cfg.embedding_cache, cfg.embedder, cfg.embedder_chat_template)
    missing = cache.missing([TextSource.of_dataset(dataset) for dataset in datasets])
    if missing:
        number, position = missing[0]
        first = TextSource.of_dataset(datasets[number]).text_at(position)
        raise MissingEmbeddingError(f"{len(missing)} training captions are not in the embedding cache "
                                    f"{cfg.embedding_cache} (first: {first!r}); {how}")
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
                embedder=cfg.embedder, embedder_chat_template=cfg.embedder_chat_template,
                embedding_cache=cfg.embedding_cache, train_data=cfg.train_data)


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
    clip_weights = "" if trained_tower else (image_tower or recorded_path(record["clip_pretrained"], path))
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

    Texts are read from the EmbeddingCache; evaluate.py refuses a text the cache lacks (`missing`, filled by
    tools/fill_cache.py from the eval config). Without a cache every text is embedded by the embedder itself,
    loaded on first need; training never gets here (open_training_cache).
    """

    def __init__(self, embedder, cache=None, device="cpu", chat_template="auto"):
        self.embedder, self.cache, self.device, self._model = embedder, cache, device, None
        self.chat_template = chat_template

    def missing(self, texts):
        """The texts a cache lacks (none without a cache: then every text is embedded)."""
        return [] if self.cache is None else [t for t in dict.fromkeys(texts) if t not in self.cache]

    def __call__(self, texts):
        texts = list(texts)
        missing = [t for t in dict.fromkeys(texts) if self.cache is None or t not in self.cache]
        if not missing:
            return self.cache.lookup(texts)
        if self._model is None:
            print(f"embedding {len(missing)}+ texts that are not in the cache with {self.embedder!r}")
            self._model = load_embedder(self.embedder, self.device, chat_template=self.chat_template)
        fresh = dict(zip(missing, embed_texts(self._model, missing)))
        return torch.stack([fresh[t] if t in fresh else self.cache.lookup([t])[0] for t in texts])


def load_for_evaluation(checkpoint, device="cpu", image_tower="", embedding_cache="", embed_missing_texts=False):
    """-> (model, preprocess, tokenizer) as evaluate.load_model returns them, for a ProCLIP checkpoint.
    The cache defaults to the one the checkpoint was trained with (a relative path found from the checkpoint's
    folder). A cache that is not there is refused, naming the command that fills it, unless embed_missing_texts:
    then the embedder embeds every text."""
    if not checkpoint:
        raise ValueError("model_type=proclip needs proclip_checkpoint=PATH (model.pt of proclip_stage1/2.py)")
    model, preprocess, record = load_proclip(checkpoint, device, image_tower)
    folder = embedding_cache or recorded_path(record.get("embedding_cache", ""), checkpoint)
    template = record.get("embedder_chat_template", "auto")  # what a checkpoint that records none was trained with
    try:
        cache = open_filled_cache(folder, record["embedder"], template) if folder else None
    except FileNotFoundError as error:
        if not embed_missing_texts:
            raise ConfigError(f"{checkpoint}: {error} Or pass embed_missing_texts=true to embed every text with "
                              f"the embedder {record['embedder']!r} now (slow at scale).") from None
        cache = None
    if cache is None and not embed_missing_texts:
        raise ConfigError(f"{checkpoint} records no embedding cache: pass embedding_cache=FOLDER (fill it with "
                          f"`make embed-cache`), or embed_missing_texts=true to embed every text now")
    if cache is None:
        print(f"no embedding cache ({folder or 'none recorded'}): every text is embedded by {record['embedder']!r}")
    return model, preprocess, EmbedderTokenizer(record["embedder"], cache, device, template)

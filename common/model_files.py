"""Every form a trained postclip model takes on disk, and the one function that loads any of them from anywhere.

    model, preprocess, tokenizer = load_any(path)   # then, as in open_clip:
    model.encode_image(preprocess(image)[None]), model.encode_text(tokenizer(["a caption"]))

The forms (tools/export.py writes the two folders; hubconf.py calls load_any for torch.hub.load):
- a CLIP checkpoint: the model.pt of refine.py ({"state_dict", "arch", ...}, open_clip's `pretrained=` layout);
- a ProCLIP checkpoint: the model.pt of proclip_stage1.py or proclip_stage2.py ({"adapter", ...});
- an open_clip folder: open_clip_config.json + open_clip_model.safetensors, open_clip's own format, which
  `open_clip.create_model_and_transforms("local-dir:FOLDER")` reads without this repository (the architecture is in
  the JSON file);
- a ProCLIP folder: proclip_config.json (the CLIP architecture, the adapter's shape, the embedder) +
  proclip_model.safetensors (the image tower, the adapter and the logit scale: ProCLIP's state_dict).
For ProCLIP the "tokenizer" is the frozen embedder (common/proclip.py EmbedderTokenizer): texts in the embedding
cache are read from it, any other text is embedded by the embedder.
"""
import json
import logging
import os
from pathlib import Path

import open_clip
import safetensors.torch
from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME
from open_clip.push_to_hf_hub import save_config_for_hf, save_for_hf

from common.checkpoints import load_checkpoint_file
from common.config import UserError, read_yaml
from common.embedder import open_filled_cache
from common.models import build_clip, recorded_arch
from common.proclip import Adapter, EmbedderTokenizer, ProCLIP, load_for_evaluation

PROCLIP_CONFIG = "proclip_config.json"
PROCLIP_WEIGHTS = "proclip_model.safetensors"
PROCLIP_FORMAT = "postclip-proclip"  # the proclip_config.json's "format", checked when read


def run_config(checkpoint):
    """The config.yaml of the run directory that holds `checkpoint` ({} when it has none)."""
    path = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "config.yaml")
    settings = read_yaml(path) if os.path.isfile(path) else {}
    return settings if isinstance(settings, dict) else {}


def kind_of(path):
    """"clip" | "proclip" (a checkpoint file) | "open_clip_folder" | "proclip_folder"; a UserError for anything else."""
    if os.path.isdir(path):
        for name, kind in ((HF_CONFIG_NAME, "open_clip_folder"), (PROCLIP_CONFIG, "proclip_folder")):
            if os.path.isfile(os.path.join(path, name)):
                return kind
        raise UserError(f"{path} is a folder without {HF_CONFIG_NAME} or {PROCLIP_CONFIG}: pass a run's model.pt "
                        f"or a folder that `make export` wrote")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no model at {path}: pass a run's model.pt (e.g. runs/toy/refine/clip_refine/seed0/"
                                f"model.pt) or a folder that `make export` wrote")
    record = load_checkpoint_file(path, "model")
    if isinstance(record, dict) and "adapter" in record:
        return "proclip"
    if isinstance(record, dict) and "state_dict" in record and "optimizer" not in record:
        return "clip"
    raise UserError(f"{path} is not a trained model (a model.pt of refine.py, proclip_stage1.py or "
                    f"proclip_stage2.py): a run's checkpoint.pt is its resumable state, its model.pt the model")


def load_any(path, device="cpu", embedding_cache=""):
    """-> (model in eval mode, its image preprocessing, its tokenizer) for any form of the module docstring.

    A ProCLIP checkpoint reads the embedding cache it records (found from its own folder, not the current one) or
    `embedding_cache`; texts the cache lacks, and every text of an exported ProCLIP folder without
    `embedding_cache`, are embedded by the embedder."""
    kind = kind_of(path)
    if kind == "open_clip_folder":
        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{path}", device=device)
        tokenizer = open_clip.get_tokenizer(f"local-dir:{path}")
    elif kind == "proclip_folder":
        model, preprocess, tokenizer = load_proclip_folder(path, device, embedding_cache)
    elif kind == "proclip":
        model, preprocess, tokenizer = load_for_evaluation(path, device, embedding_cache=embedding_cache,
                                                           embed_missing_texts=True)
    else:
        arch = recorded_arch(path)
        if not arch:
            raise UserError(f"{path} records no arch (no metadata, no config.yaml next to it)")
        quick_gelu = bool(run_config(path).get("force_quick_gelu", False))
        model, _, preprocess, tokenizer = build_clip(arch, path, quick_gelu, device)
    return model.eval(), preprocess, tokenizer


# -----------------------------------------------------------------------------
# open_clip's own format (a CLIP checkpoint of refine.py)

def save_open_clip_folder(model, tokenizer, model_config, folder):
    """open_clip_config.json (the architecture and preprocessing) + open_clip_model.safetensors, written by open_clip's
    own save_for_hf; open_clip's built-in BPE tokenizer has no files to save, so for it save_for_hf's two parts are
    called without the tokenizer's."""
    if hasattr(tokenizer, "save_pretrained"):  # a Hugging Face tokenizer: its files go into the folder too
        save_for_hf(model, tokenizer, model_config, folder, safe_serialization=True)
        return
    save_config_for_hf(model, Path(folder) / HF_CONFIG_NAME, model_config)
    safetensors.torch.save_file(model.state_dict(), os.path.join(folder, HF_SAFE_WEIGHTS_NAME))


def open_clip_model_config(arch, quick_gelu):
    """The open_clip config of `arch` (ToyCLIP's from common/model_configs), as open_clip_config.json holds it."""
    config = open_clip.get_model_config(arch)
    if config is None:
        raise UserError(f"arch {arch!r} has no open_clip config: add a JSON file to common/model_configs/")
    return {**config, "quick_gelu": True} if quick_gelu else config


# -----------------------------------------------------------------------------
# the ProCLIP folder

def save_proclip_folder(model, record, folder):
    """proclip_config.json + proclip_model.safetensors of a loaded ProCLIP model and its checkpoint's record."""
    config = dict(format=PROCLIP_FORMAT, clip_arch=record["clip_arch"], force_quick_gelu=record["force_quick_gelu"],
                  adapter_config=record["adapter_config"], embedder=record["embedder"],
                  embedder_dim=record["adapter_config"]["in_dim"], embed_dim=record["adapter_config"]["embed_dim"])
    with open(os.path.join(folder, PROCLIP_CONFIG), "w") as f:
        json.dump(config, f, indent=2)
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                                os.path.join(folder, PROCLIP_WEIGHTS))


def load_proclip_folder(folder, device="cpu", embedding_cache=""):
    """-> (ProCLIP, preprocess, EmbedderTokenizer) of a folder save_proclip_folder wrote."""
    with open(os.path.join(folder, PROCLIP_CONFIG)) as f:
        config = json.load(f)
    if not isinstance(config, dict) or config.get("format") != PROCLIP_FORMAT:
        raise UserError(f"{folder}/{PROCLIP_CONFIG} is not a postclip ProCLIP config (format {PROCLIP_FORMAT!r})")
    logging.disable(logging.WARNING)  # only the architecture is built: silence "initialized randomly"
    try:
        clip, _, preprocess, _ = build_clip(config["clip_arch"], "", config["force_quick_gelu"])
    finally:
        logging.disable(logging.NOTSET)
    model = ProCLIP(clip.visual, Adapter(**config["adapter_config"]), 0.0)
    model.load_state_dict(safetensors.torch.load_file(os.path.join(folder, PROCLIP_WEIGHTS)))  # strict: every key
    cache = open_filled_cache(embedding_cache, config["embedder"]) if embedding_cache else None
    return model.to(device), preprocess, EmbedderTokenizer(config["embedder"], cache, device)


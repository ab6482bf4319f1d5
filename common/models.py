"""Build an open_clip model from a config, and save/load checkpoints that open_clip itself can read.

The toy architecture lives in common/model_configs/*.json and is registered through open_clip's own
model-config registry, so `open_clip.create_model_and_transforms("ToyCLIP", pretrained=PATH)` works for it
exactly as for "ViT-B-32".
"""
import os

import open_clip
import torch

from common.checkpoints import atomic_torch_save, load_checkpoint_file
from common.weights import FETCH_COMMAND, WeightsMissingError, open_clip_weight, require_local

MODEL_CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_configs")
open_clip.add_model_config(MODEL_CONFIG_DIR)


def build_clip(arch, pretrained="", force_quick_gelu=False, device="cpu", trim_text_padding=False):
    """-> (model, preprocess_train, preprocess_eval, tokenizer).

    pretrained: "" or "random" for random init, a checkpoint file, or an open_clip tag such as "openai" (downloads,
    or read from the weights folder offline: common/weights.py).
    OpenAI weights need a `-quickgelu` arch or force_quick_gelu=True, or results are silently wrong.
    trim_text_padding: the model's encode_text skips the token columns that are padding in every caption of the
    batch (PaddingTrimmedCLIP): the same features up to float rounding, for about half the text tower's cost.
    """
    pretrained = "" if pretrained == "random" else pretrained
    if arch not in open_clip.list_models():
        raise ValueError(f"unknown arch {arch!r}; open_clip knows e.g. ViT-B-32, ViT-B-32-quickgelu, ToyCLIP "
                         f"(see open_clip.list_models() or add a JSON config to {MODEL_CONFIG_DIR})")
    if pretrained and os.path.isfile(pretrained):
        check_clip_weights(pretrained)
    if pretrained and not os.path.isfile(pretrained):
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if pretrained not in tags:
            looks_like_path = os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))
            hint = "build it first (see `make help`)" if looks_like_path else f"valid tags for {arch}: {tags}"
            raise FileNotFoundError(f"pretrained={pretrained!r} is neither a checkpoint file nor a tag; {hint}")
    if pretrained == "openai" and not force_quick_gelu and "quickgelu" not in arch.lower():
        raise ValueError(f"OpenAI weights use QuickGELU: use arch {arch}-quickgelu or force_quick_gelu=true")
    hub_weight = open_clip_weight(arch, pretrained)
    require_local([hub_weight])  # offline: one line at once, not a download's retries
    try:
        model, preprocess_train, preprocess_eval = open_clip.create_model_and_transforms(
            arch, pretrained=pretrained or None, force_quick_gelu=force_quick_gelu, device=device)
    except (AssertionError, RuntimeError) as e:
        shapes = isinstance(e, AssertionError) or "state_dict" in str(e)  # open_clip's and torch's shape checks
        if os.path.isfile(pretrained) and shapes:  # the weights are of another architecture
            recorded = recorded_arch(pretrained)
            hint = f"it records arch={recorded}: pass arch={recorded}" if recorded and recorded != arch else \
                "pass the arch it was trained with"
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ValueError(f"pretrained={pretrained} does not fit arch={arch} ({first}); {hint}") from None
        if hub_weight is None or "Failed to download" not in str(e):
            raise
        raise WeightsMissingError(f"could not download {hub_weight.name} ({hub_weight.repo}): no network? Fetch it "
                                  f"where there is network: {FETCH_COMMAND.format(dir='DIR')}, then run with "
                                  f"WEIGHTS_DIR=DIR (or HF_HUB_CACHE=DIR HF_HUB_OFFLINE=1)") from None
    tokenizer = open_clip.get_tokenizer(arch)
    if trim_text_padding and type(model) is open_clip.CLIP and _pools_a_causal_text_tower(model):
        model.__class__ = PaddingTrimmedCLIP  # the same module and weights; only encode_text differs
    return model, preprocess_train, preprocess_eval, tokenizer


def recorded_arch(path):
    """The arch a checkpoint file was trained with: its metadata (save_clip_checkpoint's arch=), else the arch of
    its run directory's config.yaml; "" when neither says."""
    from common.config import read_yaml

    record = load_checkpoint_file(path, "pretrained weights")
    if isinstance(record, dict) and isinstance(record.get("arch"), str):
        return record["arch"]
    run_config = os.path.join(os.path.dirname(os.path.abspath(path)), "config.yaml")
    settings = read_yaml(run_config) if os.path.isfile(run_config) else {}
    return settings.get("arch", "") if isinstance(settings, dict) else ""


def check_clip_weights(path):
    """A file passed as pretrained= is readable, intact (checksum) and holds CLIP weights, not something else."""
    record = load_checkpoint_file(path, "pretrained weights")
    if isinstance(record, dict) and {"objective", "optimizer"} <= record.keys():
        raise ValueError(f"pretrained={path} is a resumable training checkpoint, not a model: pass the model.pt "
                         f"of that run directory (written when the run finishes)")
    if isinstance(record, dict) and "adapter" in record:
        raise ValueError(f"pretrained={path} is a ProCLIP checkpoint: evaluate it with model_type=proclip "
                         f"proclip_checkpoint={path}")


def save_clip_checkpoint(path, model, **metadata):
    """{"state_dict": ..., plain metadata}: the layout open_clip's `pretrained=PATH` loads unchanged."""
    atomic_torch_save({"state_dict": model.state_dict(), **metadata}, path)


def _pools_a_causal_text_tower(model):
    return (isinstance(model, open_clip.CLIP) and getattr(model, "attn_mask", None) is not None
            and getattr(model, "text_pool_type", None) in ("argmax", "eos"))


def encode_text(model, tokens):
    """model.encode_text(tokens) without the padding columns that follow every caption of the batch.

    open_clip's CLIP text tower is causal and pools at the end-of-text token, so no position after a caption's
    last token changes its features: dropping the columns that are padding in every row leaves the result the
    same up to float rounding (about 1e-6), and toy captions use ~20 of the 32 positions, so the text tower costs
    about half. Any other model (a causal mask absent, another pooling, ProCLIP's adapter) runs unchanged.
    """
    if not _pools_a_causal_text_tower(model):
        return model.encode_text(tokens)
    length = max(int((tokens != 0).sum(dim=1).max()), 1) if tokens.ndim == 2 else None  # pad id 0, as open_clip
    if length is None or length == tokens.shape[1]:
        return open_clip.CLIP.encode_text(model, tokens)
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
    x = open_clip.transformer.text_global_pool(x, tokens, model.text_pool_type,
                                               eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else \
            x @ model.text_projection
    return x


class PaddingTrimmedCLIP(open_clip.CLIP):
    """open_clip's CLIP whose encode_text is `encode_text` above (build_clip(..., trim_text_padding=True))."""

    def encode_text(self, text, normalize=False):
        features = encode_text(self, text)
        return torch.nn.functional.normalize(features, dim=-1) if normalize else features

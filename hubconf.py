"""torch.hub's entry point into postclip (the convention of scripts repositories such as DINO): any trained postclip
model, loaded from any working directory, without this folder on the Python path.

    import torch
    model, preprocess, tokenizer = torch.hub.load("/path/to/postclip", "postclip_model", source="local",
                                                  path="runs/toy/refine/clip_refine/seed0/model.pt")
    model.encode_image(preprocess(image)[None]); model.encode_text(tokenizer(["a caption"]))

`path`: a model.pt of refine.py, proclip_stage1.py or proclip_stage2.py, or a folder that `make export` wrote;
relative to the current directory, else to this repository. What each form holds: common/model_files.py.
"""
import os
import sys

dependencies = ["torch", "open_clip"]  # torch.hub checks that these import

REPO = os.path.dirname(os.path.abspath(__file__))
if REPO not in sys.path:  # common/ is imported from here, wherever the caller runs
    sys.path.insert(0, REPO)


def postclip_model(path, device="cpu", embedding_cache=""):
    """-> (model in eval mode, image preprocessing, tokenizer), used as open_clip's: model.encode_image(
    preprocess(image)[None]), model.encode_text(tokenizer(texts)). For ProCLIP the tokenizer is the frozen
    embedder, which reads the run's embedding cache (or `embedding_cache`) and embeds the texts the cache lacks."""
    from common.model_files import load_any

    if not os.path.isabs(path) and not os.path.exists(path):
        path = os.path.join(REPO, path)
    return load_any(path, device, embedding_cache)

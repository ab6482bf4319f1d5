"""Speed benchmarks (not tests): `make bench` runs every bench_* function; each prints one JSON line.

They use the real toy preset (the toy world, the toy CLIP, the filled MiniLM cache): build them first with
`make embed-cache toy-clip`. A benchmark whose inputs are missing prints a JSON line saying so.
"""
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _missing(name, paths):
    absent = [p for p in paths if not os.path.exists(os.path.join(ROOT, p))]
    if absent:
        print(json.dumps({"bench": name, "skipped": f"missing {absent}; run `make embed-cache toy-clip` first"}))
    return absent


def bench_stage2_epoch_cache_vs_inline(config="configs/toy/proclip_stage2.yaml"):
    """One ProCLIP stage-2 epoch (toy preset, the shared training loop) reading caption embeddings from the cache,
    versus embedding each batch's captions with MiniLM inside the loop (what the cache avoids)."""
    name = "stage2_epoch_cache_vs_inline"
    if _missing(name, ["data/toy/recaption.csv", "runs/toy/pretrain/model.pt", "cache/toy/minilm/meta.json"]):
        return
    os.chdir(ROOT)
    import torch

    import proclip_stage2
    from common.config import load_config
    from common.embedder import embed_texts, load_embedder
    from common.proclip import build_training_set, open_training_cache
    from common.train import train

    class EmbedInLoop:
        """The cache's lookup interface, but running the frozen embedder on every batch."""

        def __init__(self, embedder):
            self.embedder = embedder

        def lookup(self, texts):
            return embed_texts(self.embedder, texts)

    cfg = load_config(proclip_stage2.DEFAULTS, config, ["epochs=1", "adapter=", "log_every=1000", "device=cpu"])
    dataset = build_training_set(cfg, transform=None)
    cache = open_training_cache(cfg, dataset.captions)
    embedder = load_embedder(cfg.embedder)  # loaded before timing: only the per-batch embedding is measured
    seconds = {}
    for mode, lookup in (("cached", cache), ("inline", EmbedInLoop(embedder))):
        torch.manual_seed(0)
        model, _, transform = proclip_stage2.build_model(cfg, cache)
        dataset.transform = transform
        objective = proclip_stage2.Stage2Objective(cfg, model, cache)
        objective.cache = lookup
        with tempfile.TemporaryDirectory() as run_dir:
            start = time.perf_counter()
            train(cfg, objective, dataset, run_dir, export=lambda objective, path: None)
            seconds[mode] = time.perf_counter() - start
    print(json.dumps({"bench": name, "images": len(dataset), "steps": len(dataset) // cfg.batch_size,
                      "batch_size": cfg.batch_size, "threads": torch.get_num_threads(),
                      "cached_s": round(seconds["cached"], 2), "inline_s": round(seconds["inline"], 2),
                      "speedup": round(seconds["inline"] / seconds["cached"], 2)}))


if __name__ == "__main__":
    for function_name, function in list(globals().items()):
        if function_name.startswith("bench_") and callable(function):
            function()

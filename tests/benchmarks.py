"""Speed benchmarks (not tests): `make bench` runs every bench_* function; each prints one JSON line.
`python tests/benchmarks.py gpu` (make bench BENCH=gpu) runs only those whose name contains "gpu".

bench_stage2_epoch_cache_vs_inline uses the real toy preset (the toy world, the toy CLIP, the filled MiniLM
cache): build them first with `make embed-cache toy-clip`. bench_gpu_train_step_vit_b32 needs a GPU and nothing
else. A benchmark whose inputs are missing prints a JSON line saying so.
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


def bench_gpu_train_step_vit_b32(batch_size=512, steps=20, warmup=5, device="cuda", arch="ViT-B-32-quickgelu"):
    """Training steps per second of ViT-B/32 on one GPU at the paper's batch: 512 (CLIP-Refine's batch, and
    ProCLIP stage 2's 4096 over 8 GPUs), bf16 autocast, fused AdamW. The step is refine.py's objective (forward,
    tokenisation of the batch's captions included; for clip_refine the frozen teacher's forward too), backward and
    optimiser step; no data loading (synthetic 224x224 images and captions), random init (no download).
    device="cpu" and another arch are only for the test that runs this code without a GPU (test_benchmarks.py)."""
    name = "gpu_train_step_vit_b32"
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"bench": name, "skipped": "no GPU: skipped"}))
        return
    import refine
    from common.config import load_config
    from common.distributed import init_distributed
    from common.models import build_clip
    from common.train import train_step

    env = init_distributed(device)
    synchronize = torch.cuda.synchronize if env.device.type == "cuda" else (lambda: None)
    words = "a photo of red blue green small large dog cat car tree house on the grass near water".split()
    captions = [" ".join(words[(i * 7 + j) % len(words)] for j in range(5 + i % 12)) for i in range(batch_size)]
    for objective_name in ("contrastive", "clip_refine"):
        cfg = load_config(refine.DEFAULTS, None, [f"objective={objective_name}", f"arch={arch}",
                                                  "pretrained=", f"batch_size={batch_size}", f"device={device}"])
        torch.manual_seed(0)
        model, _, _, tokenizer = build_clip(cfg.arch, "", cfg.force_quick_gelu)
        objective = refine.RefineObjective(cfg, model, tokenizer, None, env).to(env.device).train()
        params = [p for p in objective.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                      weight_decay=cfg.weight_decay, fused=True)
        images = torch.randn(batch_size, 3, *model.visual.image_size, device=env.device)
        batch = {"images": images, "captions": captions}
        generator = torch.Generator().manual_seed(0)

        def step(objective=objective, optimizer=optimizer, params=params, batch=batch, generator=generator):
            autocast = torch.autocast(env.device.type, dtype=torch.bfloat16)
            train_step(objective, objective, optimizer, params, batch, generator, autocast=autocast)  # refine.py's

        for _ in range(warmup):
            step()
        synchronize()
        if env.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize()
        seconds = (time.perf_counter() - start) / steps
        gpu = env.device.type == "cuda"
        print(json.dumps({"bench": name, "objective": objective_name, "arch": arch,
                          "device": torch.cuda.get_device_name() if gpu else "cpu",
                          "batch_size": batch_size, "precision": "bf16", "optimizer": "AdamW(fused=True)",
                          "ms_per_step": round(1000 * seconds, 1), "steps_per_s": round(1 / seconds, 2),
                          "images_per_s": round(batch_size / seconds), "steps_timed": steps,
                          "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if gpu else None}))
        del objective, optimizer, model, batch, images
        if gpu:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    wanted = sys.argv[1:]  # substrings of benchmark names; none = all
    for function_name, function in list(globals().items()):
        if function_name.startswith("bench_") and callable(function):
            if not wanted or any(part in function_name for part in wanted):
                function()

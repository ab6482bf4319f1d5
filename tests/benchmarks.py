"""Speed benchmarks (not tests): `make bench` runs every bench_* function but bench_reproduce; each prints one JSON
line. `python tests/benchmarks.py gpu` (make bench BENCH=gpu) runs only those whose name contains "gpu".
`make bench-reproduce` times the whole reproduction from a fresh clone (about 10 minutes).

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
    cache = open_training_cache(cfg, [dataset])
    embedder = load_embedder(cfg.embedder)  # loaded before timing: only the per-batch embedding is measured
    seconds = {}
    for mode, lookup in (("cached", cache), ("inline", EmbedInLoop(embedder))):
        torch.manual_seed(0)
        model, _, transform, _ = proclip_stage2.build_model(cfg, cache)
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
        model, _, _, tokenizer = build_clip(cfg.arch, "", cfg.force_quick_gelu, trim_text_padding=True)  # refine.py's
        objective = refine.RefineObjective(cfg, model, tokenizer, None, env).to(env.device).train()
        params = [p for p in objective.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                      weight_decay=cfg.weight_decay, fused=True)
        images = torch.randn(batch_size, 3, *model.visual.image_size, device=env.device)
        batch = {"images": images, "captions": captions}
        generator = torch.Generator().manual_seed(0)

        def step(objective=objective, optimizer=optimizer, batch=batch, generator=generator):
            autocast = torch.autocast(env.device.type, dtype=torch.bfloat16)
            train_step(objective, optimizer, batch, generator, autocast=autocast)  # refine.py's

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


# -----------------------------------------------------------------------------------------------------------------
# training throughput: this project's loop against open_clip_train, side by side
THROUGHPUT_STEPS, THROUGHPUT_EPOCHS, THROUGHPUT_REPEATS = 40, 2, 2


def bench_training_throughput_vs_open_clip_train(steps=THROUGHPUT_STEPS, epochs=THROUGHPUT_EPOCHS,
                                                 repeats=THROUGHPUT_REPEATS):
    """Toy CLIP pre-training, the same ToyCLIP from the same random init, the same first steps x 128 rows of
    data/toy/pretrain.csv, batch 128, fp32, no DataLoader workers, `epochs` epochs (pre-training runs 2), the
    optimiser and schedule of configs/toy/pretrain.yaml, on the threads of this process (OMP_NUM_THREADS; the
    Makefile sets THREADS=1). Each side runs in a fresh process, alternating, `repeats` times; samples/s is
    training samples over the wall time of the training call (ours: `common.train.train`, including decoding
    the images once into an empty cache and writing checkpoints; open_clip_train: its train_one_epoch calls).
    open_clip_train applies its train transform (RandomResizedCrop) where ours uses the eval transform."""
    name = "training_throughput_vs_open_clip_train"
    if _missing(name, ["data/toy/pretrain.csv"]):
        return
    import csv
    import statistics
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        subset = os.path.join(tmp, "pretrain_subset.csv")  # absolute paths: open_clip reads them from the cwd
        with open(os.path.join(ROOT, "data/toy/pretrain.csv"), newline="") as f:
            rows = list(csv.DictReader(f))[:steps * 128]
        with open(subset, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["filepath", "title"])
            writer.writerows([os.path.join(ROOT, "data/toy", r["filepath"]), r["title"]] for r in rows)
        runs = {"postclip": [], "open_clip_train": []}
        for repeat in range(repeats):
            for side in (["postclip", "open_clip_train"] if repeat % 2 == 0 else ["open_clip_train", "postclip"]):
                out = subprocess.run([sys.executable, __file__, "_throughput", side, subset, str(epochs),
                                      os.path.join(tmp, f"{side}{repeat}")], cwd=ROOT, capture_output=True, text=True)
                if out.returncode != 0:
                    print(json.dumps({"bench": name, "failed": side, "stderr": out.stderr[-2000:]}))
                    return
                runs[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
    ours = statistics.median(r["samples_per_s"] for r in runs["postclip"])
    theirs = statistics.median(r["samples_per_s"] for r in runs["open_clip_train"])
    print(json.dumps({"bench": name, "steps_per_epoch": steps, "epochs": epochs, "batch_size": 128,
                      "threads": runs["postclip"][0]["threads"], "postclip_samples_per_s": round(ours, 1),
                      "open_clip_train_samples_per_s": round(theirs, 1), "ratio": round(ours / theirs, 3),
                      "runs": runs}))


def _throughput_side(side, csv_file, epochs, work_dir):
    """One side of the throughput benchmark, in this (fresh) process: prints {samples_per_s, ...}."""
    import torch

    from common.models import MODEL_CONFIG_DIR  # noqa: F401 (registers ToyCLIP with open_clip)

    epochs = int(epochs)
    with open(csv_file) as f:
        samples = (sum(1 for _ in f) - 1) // 128 * 128 * epochs
    if side == "postclip":
        import refine
        from common import train as train_module

        timed = _timed(train_module.train)
        refine.train = timed  # refine.main calls train() by this name
        refine.main(["--config", "configs/toy/pretrain.yaml", f"train_data={csv_file}", f"epochs={epochs}",
                     f"run_dir={work_dir}/run", f"image_cache={work_dir}/images", "log_every=1000", "device=cpu"])
    else:
        from open_clip_train import main as oc_main

        timed = _timed(oc_main.train_one_epoch)
        oc_main.train_one_epoch = timed
        oc_main.main(["--model", "ToyCLIP", "--train-data", csv_file, "--dataset-type", "csv", "--csv-separator",
                      ",", "--csv-img-key", "filepath", "--csv-caption-key", "title", "--batch-size", "128",
                      "--epochs", str(epochs), "--precision", "fp32", "--workers", "0", "--device", "cpu",
                      "--lr", "1e-3", "--wd", "0.1", "--warmup", "50", "--beta2", "0.98", "--eps", "1e-6",
                      "--seed", "0", "--save-frequency", "0", "--zeroshot-frequency", "0", "--report-to", "",
                      "--log-every-n-steps", "1000", "--logs", work_dir, "--name", "bench"])
    print(json.dumps({"side": side, "samples": samples, "seconds": round(timed.seconds, 3),
                      "samples_per_s": samples / timed.seconds, "threads": torch.get_num_threads()}))


def bench_two_jobs_vs_two_threads(steps=20):
    """The Makefile's default (JOBS=2 THREADS=1): two toy runs at once on one thread each, against the same two
    runs one after the other on two threads each. Each run: `steps` steps of toy CLIP pre-training at batch 128."""
    name = "two_jobs_vs_two_threads"
    if _missing(name, ["data/toy/pretrain.csv"]):
        return
    import subprocess

    def command(run_dir):
        return [sys.executable, "refine.py", "--config", "configs/toy/pretrain.yaml", f"run_dir={run_dir}",
                f"max_steps={steps}", "log_every=1000", "device=cpu", f"image_cache={run_dir}/../images"]

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(command(f"{tmp}/warm"), cwd=ROOT, check=True, capture_output=True)  # decodes the images
        seconds = {}
        start = time.perf_counter()
        for k in range(2):
            subprocess.run(command(f"{tmp}/serial{k}"), cwd=ROOT, check=True, capture_output=True,
                           env={**os.environ, "OMP_NUM_THREADS": "2"})
        seconds["one_after_the_other_2_threads_s"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        jobs = [subprocess.Popen(command(f"{tmp}/parallel{k}"), cwd=ROOT, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
                for k in range(2)]
        if any(job.wait() for job in jobs):
            raise RuntimeError("a parallel run failed")
        seconds["two_at_once_1_thread_s"] = round(time.perf_counter() - start, 2)
    print(json.dumps({"bench": name, "steps_per_run": steps, **seconds,
                      "speedup": round(seconds["one_after_the_other_2_threads_s"] / seconds["two_at_once_1_thread_s"],
                                       3)}))


# -----------------------------------------------------------------------------------------------------------------
# the whole reproduction, from a fresh clone (minutes: `make bench-reproduce`, not part of `make bench`)
STEP_KINDS = [  # (step, what its command holds), first match wins
    ("make reading the Makefile", "gap_investigation.txt"),  # the $(shell ...) that lists investigate-gap's runs
    ("make reading the Makefile", "OBJECTIVES"),  # the $(shell ...) that lists refine.py's objectives
    ("world", "tools.toyworld"), ("toy CLIP pre-training", "configs/toy/pretrain.yaml"),
    ("embedding cache (MiniLM)", "tools.fill_cache"), ("CLIP-Refine / baseline run", "refine.py"),
    ("ProCLIP stage 1", "proclip_stage1.py"), ("LLM2CLIP baseline", "reg_weight=0"),
    ("ProCLIP stage 2", "proclip_stage2.py"), ("tables and figure", "tools.tables"),
    ("evaluation (a model, or a row's seeds)", "evaluate.py --config"),
]


def matmul_gflops(n=1024, repeats=20):
    """This machine's single-thread float32 matmul speed (GFLOP/s, the best of `repeats` n×n products): the scale by
    which another CPU's time for the toy reproduction can be estimated from this one's."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return 2 * n ** 3 / best / 1e9


def cpu_name():
    """The CPU's model name (/proc/cpuinfo on Linux, else what platform knows)."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bench_reproduce(make_args=()):
    """`make reproduce-table1` in a fresh clone of this commit (no data, runs, results or cache; the install step
    excluded: PYTHON is this interpreter), every command timed by tests/timed_sh. Prints the CPU, its single-thread
    matmul speed (measured first, on a machine still idle), the wall time, and per kind of step the number of
    processes, their summed wall and CPU seconds and the longest one; writes the same as Markdown to
    results/toy/bench_reproduce.md (the wall-time block of docs/results.md)."""
    import subprocess

    cpu, gflops = cpu_name(), matmul_gflops()
    print(json.dumps({"bench": "reproduce", "cpu": cpu, "cpus": os.cpu_count(),
                      "single_thread_matmul_gflops": round(gflops, 1)}), flush=True)

    keep = os.environ.get("POSTCLIP_BENCH_DIR")  # set: clone into this new folder and keep it (its results)
    with tempfile.TemporaryDirectory() as tmp:
        if keep:
            os.makedirs(keep)  # a new folder: never a clone over the results of another run
        tmp = keep or tmp
        clone = os.path.join(tmp, "postclip")
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        subprocess.run(["git", "clone", "-q", "--no-hardlinks", ROOT, clone], check=True)
        subprocess.run(["git", "-C", clone, "checkout", "-q", head], check=True)
        timing_log = os.path.join(tmp, "timing.tsv")
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
        env["TIMING_LOG"] = timing_log
        start = time.time()
        done = subprocess.run(["make", "--no-print-directory", "reproduce-table1", f"PYTHON={sys.executable}",
                               f"SHELL={os.path.join(clone, 'tests', 'timed_sh')}", *make_args], cwd=clone, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.time() - start
        steps = {}
        for line in open(timing_log):
            t0, t1, rc, cpu_seconds, command = line.rstrip("\n").split("\t", 4)
            kind = next((k for k, pattern in STEP_KINDS if pattern in command), "other")
            seconds = float(t1) - float(t0)
            entry = steps.setdefault(kind, {"processes": 0, "seconds": 0.0, "longest_s": 0.0, "cpu_s": 0.0})
            entry["processes"] += 1
            entry["seconds"] = round(entry["seconds"] + seconds, 1)
            entry["longest_s"] = round(max(entry["longest_s"], seconds), 1)
            entry["cpu_s"] = round(entry["cpu_s"] + float(cpu_seconds), 1)
        cpu_s = sum(v["cpu_s"] for v in steps.values())
        result = {"bench": "reproduce", "commit": head[:12], "ok": done.returncode == 0, "wall_s": round(wall, 1),
                  "cpu_s": round(cpu_s, 1), "make_args": list(make_args), "cpus": os.cpu_count(), "cpu": cpu,
                  "single_thread_matmul_gflops": round(gflops, 1), "steps": steps}
        if done.returncode:
            result["stderr"] = done.stderr[-2000:]
        print(json.dumps(result))
    if done.returncode == 0:  # the README's wall-time block (make readme-results)
        lines = [f"`make reproduce-table1` {' '.join(make_args)} in a fresh clone of {head[:12]}, {os.cpu_count()} "
                 f"CPUs ({cpu}, single-thread float32 matmul {gflops:.0f} GFLOP/s): **{int(wall // 60)} min "
                 f"{int(wall % 60):02d} s** wall time, {cpu_s:,.0f} CPU seconds, install excluded.", "",
                 "| step | processes | summed wall seconds | longest | summed CPU seconds |", "|---|---|---|---|---|"]
        lines += [f"| {kind} | {v['processes']} | {v['seconds']:.0f} s | {v['longest_s']:.0f} s | {v['cpu_s']:.0f} s |"
                  for kind, v in steps.items()]
        os.makedirs(os.path.join(ROOT, "results", "toy"), exist_ok=True)
        with open(os.path.join(ROOT, "results", "toy", "bench_reproduce.md"), "w") as f:
            f.write("\n".join(lines) + "\n")


def _timed(function):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            wrapper.seconds += time.perf_counter() - start
    wrapper.seconds = 0.0
    return wrapper


if __name__ == "__main__":
    if sys.argv[1:2] == ["_throughput"]:
        _throughput_side(*sys.argv[2:])
    elif sys.argv[1:2] == ["reproduce"]:
        bench_reproduce(sys.argv[2:])
    else:
        for function_name, function in list(globals().items()):
            if function_name.startswith("bench_") and function_name != "bench_reproduce" and callable(function) and \
                    (len(sys.argv) < 2 or any(part in function_name for part in sys.argv[1:])):
                function()

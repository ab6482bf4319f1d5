"""make bench-scale: memory and start-up of the training data path against corpus size (a benchmark, not a test).

For each size of SCALE_TEXTS (texts; half as many pairs, each with a short and a long caption) it writes a synthetic
corpus in the project's own formats under SCALE_DIR: a CSV (1000 distinct 32x32 JPEGs, each named by many rows),
webdataset shards of 10k samples (KEY.jpg + KEY.json; sizes up to SCALE_WDS_MAX texts, for disk), and a float16
embedding cache of dimension 384 (50k texts a shard). It indexes each corpus once (common/corpus_index.py), then
runs every training stage for 5 steps (ToyCLIP, batch 256, 2 DataLoader workers, the CPU) and the fill no-op, each
in a process of its own, and prints one JSON line per run:

    texts, stage, format    the run
    anon_gb                 peak Pss_Anon of the process and its DataLoader workers together: memory of their own
    file_gb                 peak Pss_File: pages of memory-mapped files, the OS's cache shared by every process
    open_s                  seconds to open the data (corpus index and embedding cache), in a process of its own
    first_step_s            seconds from the start of the process to the end of its first step
    seconds                 the whole run

then, per stage, the memory of an 8-rank node at 60M texts (ProCLIP's largest setting), from a linear fit over the
sizes. SCALE_EPOCH=TEXTS also runs one whole stage-2 epoch on the corpus of that size (e.g. 1000000), to see that
the workers' own memory stays flat over an epoch (pages copied on write would show there, not in 5 steps).

    make bench-scale                                   # SCALE_TEXTS="100000 1000000 10000000"
    make bench-scale SCALE_TEXTS="100000 1000000"      # about 5 minutes on 2 cores
"""
import csv
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

EMBEDDER = "bench-embedder"  # the cache's identity: training never loads an embedder, the fill no-op neither
DIM = 384
IMAGES = 1000
WDS_PER_SHARD = 10_000
STEPS = 5


def caption_pair(i):
    return (f"a short caption of synthetic pair {i}",
            f"a longer caption of synthetic pair number {i}, which describes its small picture in a few more words")


def write_images(folder):
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = random.Random(0)
    for i in range(IMAGES):
        path = os.path.join(folder, f"{i:04d}.jpg")
        if not os.path.exists(path):
            Image.frombytes("RGB", (32, 32), bytes(rng.randrange(256) for _ in range(32 * 32 * 3))).save(path)


def write_csv(path, pairs):
    temp = path + ".tmp"
    with open(temp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "short", "long"])
        for i in range(pairs):
            writer.writerow([f"images/{i % IMAGES:04d}.jpg", *caption_pair(i)])
    os.replace(temp, path)


def write_shards(folder, pairs, images):
    os.makedirs(folder, exist_ok=True)
    jpegs = [open(os.path.join(images, f"{i:04d}.jpg"), "rb").read() for i in range(IMAGES)]
    for shard, first in enumerate(range(0, pairs, WDS_PER_SHARD)):
        path = os.path.join(folder, f"{shard:05d}.tar")
        with tarfile.open(path + ".tmp", "w") as tar:
            for i in range(first, min(first + WDS_PER_SHARD, pairs)):
                short, long = caption_pair(i)
                for name, data in ((f"{i:09d}.jpg", jpegs[i % IMAGES]),
                                   (f"{i:09d}.json", json.dumps({"short": short, "long": long}).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        os.replace(path + ".tmp", path)


def fill_random_cache(folder, csv_file, index_dir):
    """The cache of every caption of the CSV, random float16 vectors, written by the cache's own fill."""
    import numpy as np
    import torch

    from common.data import CsvPairs
    from common.embedder import EmbeddingCache, TextSource

    corpus = CsvPairs(csv_file, None, caption_keys=["short", "long"], index_dir=index_dir)
    cache = EmbeddingCache(folder, f"{EMBEDDER}, dim {DIM}")
    rng = np.random.default_rng(0)
    cache.fill_missing([TextSource.of_dataset(corpus)],
                       lambda batch: torch.from_numpy(rng.standard_normal((len(batch), DIM), dtype=np.float32)),
                       batch_size=50_000, store_dtype="float16", show_progress=False)


def prepare(size, root):
    """The corpus of `size` texts in every format (written once, kept in root/size), and its index."""
    folder = os.path.join(root, str(size))
    pairs = size // 2
    write_images(os.path.join(root, "images"))
    with_shards = size <= float(os.environ.get("SCALE_WDS_MAX", 2e6))
    corpus = {"csv": os.path.join(folder, "pairs.csv"), "images": os.path.join(root, "images"),
              "cache": os.path.join(folder, "cache"), "index": os.path.join(folder, "index"),
              "webdataset": os.path.join(folder, "shards") if with_shards else None}
    started = time.time()
    if not os.path.exists(corpus["csv"]):
        os.makedirs(folder, exist_ok=True)
        os.symlink(corpus["images"], os.path.join(folder, "images"))
        write_csv(corpus["csv"], pairs)
    if corpus["webdataset"] and not os.path.exists(os.path.join(corpus["webdataset"], "done")):
        write_shards(corpus["webdataset"], pairs, corpus["images"])
        open(os.path.join(corpus["webdataset"], "done"), "w").close()
    if not os.path.exists(os.path.join(corpus["cache"], "meta.json")):
        fill_random_cache(corpus["cache"], corpus["csv"], corpus["index"])
    written = time.time() - started
    for fmt in ("csv", "webdataset"):  # the prepare step: each stage's corpus indexed once, in a process of its own
        if corpus[fmt]:
            index = measure([sys.executable, __file__, "_index", fmt, json.dumps(corpus)])
            print(json.dumps({"texts": size, "stage": "index", "format": fmt, **index,
                              "corpus_written_s": round(written, 1)}), flush=True)
    return corpus


# --- one run, measured -------------------------------------------------------------------------------------------
def stage_args(stage, fmt, corpus, run_dir):
    data = {"csv": [f"train_data={corpus['csv']}", "train_format=csv"],
            "webdataset": [f"train_data={corpus['webdataset']}", "train_format=webdataset"]}[fmt]
    common = ["arch=ToyCLIP", "pretrained=random", "device=cpu", "num_workers=2", "image_cache=", "holdout_fraction=0",
              f"max_steps={STEPS}", "batch_size=256", "log_every=1", "checkpoint_every=100000", f"run_dir={run_dir}",
              f"data_index={corpus['index']}", "precision=fp32"]
    proclip = [f"embedder={EMBEDDER}", f"embedding_cache={corpus['cache']}", "adapter_depth=1", "adapter_expansion=2"]
    if stage == "refine":
        return ["refine.py", *common, *data, "objective=clip_refine", "csv_caption_keys=[short,long]",
                "wds_caption_keys=[short,long]"]
    if stage == "proclip_stage1":
        return ["proclip_stage1.py", *common, *proclip, *data, "csv_caption_keys=[short]",
                "instance_long_captions=true"]
    return ["proclip_stage2.py", *common, *proclip, *data, "adapter=", "reg_weight=4e-4"]


def _memory(pid):
    """Pss_Anon and Pss_File (bytes) of pid and every process below it."""
    anon = file = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            with open(f"/proc/{current}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss_Anon:"):
                        anon += int(line.split()[1]) * 1024
                    elif line.startswith("Pss_File:"):
                        file += int(line.split()[1]) * 1024
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    pending += [int(child) for child in f.read().split()]
        except (OSError, ValueError):
            continue  # the process ended between two reads
    return anon, file


def measure(argv, log_file=None, cwd=ROOT):
    """Run argv; -> {anon_gb, file_gb, seconds, first_step_s (when log_file gets a train line)}."""
    started = time.time()
    process = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    peak_anon = peak_file = 0
    first_step = None
    output = []
    import threading

    reader = threading.Thread(target=lambda: output.extend(process.stdout), daemon=True)
    reader.start()
    while process.poll() is None:
        anon, file = _memory(process.pid)
        peak_anon, peak_file = max(peak_anon, anon), max(peak_file, file)
        if first_step is None and log_file and os.path.exists(log_file):
            with open(log_file) as f:
                if any('"split": "train"' in line for line in f):
                    first_step = time.time() - started
        time.sleep(0.05)
    reader.join()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed ({process.returncode}):\n{''.join(output[-20:])}")
    result = {"anon_gb": round(peak_anon / 1e9, 3), "file_gb": round(peak_file / 1e9, 3),
              "seconds": round(time.time() - started, 1)}
    if first_step is not None:
        result["first_step_s"] = round(first_step, 1)
    reported = [json.loads(line) for line in output if line.startswith("{\"open_s\"")]
    return {**result, **(reported[0] if reported else {})}


def run_stage(size, stage, fmt, corpus, work):
    run_dir = os.path.join(work, f"{stage}-{fmt}-{size}")
    subprocess.run(["rm", "-rf", run_dir], check=True)
    args = stage_args(stage, fmt, corpus, run_dir)
    opened = measure([sys.executable, __file__, "_open", stage, json.dumps(args)])
    result = measure([sys.executable, *args], log_file=os.path.join(run_dir, "log.jsonl"))
    return {"texts": size, "stage": stage, "format": fmt, "anon_gb": result["anon_gb"],
            "file_gb": result["file_gb"], "open_s": opened["open_s"], "first_step_s": result.get("first_step_s"),
            "seconds": result["seconds"]}


def run_fill_noop(size, corpus):
    started = time.time()
    result = measure([sys.executable, "-m", "tools.fill_cache", "--stage2-config", "configs/paper/proclip_stage2.yaml",
                      f"train_data={corpus['csv']}", f"embedder={EMBEDDER}", f"embedding_cache={corpus['cache']}",
                      f"data_index={corpus['index']}"])
    return {"texts": size, "stage": "fill_noop", "format": "csv", "anon_gb": result["anon_gb"],
            "file_gb": result["file_gb"], "seconds": round(time.time() - started, 1)}


# --- in the measured child process: open the data as the stage does, timed --------------------------------------
def _open_data(stage, args):
    from common.config import load_config

    module = __import__({"refine": "refine", "proclip_stage1": "proclip_stage1"}.get(stage, "proclip_stage2"))
    cfg = load_config(module.DEFAULTS, None, args[1:])
    started = time.time()
    if stage == "refine":
        from common.data import open_caption_dataset

        open_caption_dataset(cfg, None).holdout(cfg.holdout_fraction, seed=42)
    else:
        from common.proclip import open_training_cache, split_training_set

        corpora = (sum(module.training_captions(cfg)[3:], []) if stage == "proclip_stage1"
                   else list(split_training_set(cfg, None)))
        open_training_cache(cfg, corpora)
    print(json.dumps({"open_s": round(time.time() - started, 2)}), flush=True)


def _index(fmt, corpus):
    from common.data import CsvPairs, WebDatasetShards

    started = time.time()
    if fmt == "csv":  # the three corpora the stages read: refine and stage 2 (short, long), stage 1's short and long
        for keys in (["short", "long"], ["short"], ["long"]):
            CsvPairs(corpus["csv"], None, caption_keys=keys, index_dir=corpus["index"])
    else:
        WebDatasetShards(corpus["webdataset"], None, ["short", "long"], index_dir=corpus["index"])
    print(json.dumps({"open_s": round(time.time() - started, 2)}), flush=True)


# --- the benchmark -----------------------------------------------------------------------------------------------
def project(results, texts=60_000_000, ranks=8):
    """Per stage: anon_gb at `texts` from a least-squares line through the sizes measured, times the ranks."""
    for stage in sorted({(r["stage"], r["format"]) for r in results if r["stage"] not in ("index", "fill_noop")}):
        points = [(r["texts"], r["anon_gb"]) for r in results if (r["stage"], r["format"]) == stage]
        if len(points) < 2:
            continue
        n = len(points)
        mean_x, mean_y = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
        slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x, _ in points)
        per_rank = mean_y + slope * (texts - mean_x)
        print(json.dumps({"projection": f"{stage[0]} {stage[1]}", "texts": texts, "ranks": ranks,
                          "anon_gb_per_kilotext": round(slope * 1e3, 6), "anon_gb_per_rank": round(per_rank, 2),
                          "anon_gb_node": round(per_rank * ranks, 1)}), flush=True)


def main():
    sizes = [int(float(s)) for s in os.environ.get("SCALE_TEXTS", "100000 1000000 10000000").split()]
    root = os.path.abspath(os.environ.get("SCALE_DIR", os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                                                     "postclip-scale")))
    work = os.path.join(root, "runs")
    results = []
    for size in sizes:
        corpus = prepare(size, root)
        runs = [("refine", "csv"), ("proclip_stage1", "csv"), ("proclip_stage2", "csv")]
        if corpus["webdataset"]:
            runs.append(("proclip_stage2", "webdataset"))
        for stage, fmt in runs:
            results.append(run_stage(size, stage, fmt, corpus, work))
            print(json.dumps(results[-1]), flush=True)
        results.append(run_fill_noop(size, corpus))
        print(json.dumps(results[-1]), flush=True)
    if os.environ.get("SCALE_EPOCH"):  # the workers over a whole epoch
        size = int(float(os.environ["SCALE_EPOCH"]))
        corpus = prepare(size, root)
        run_dir = os.path.join(work, f"epoch-{size}")
        subprocess.run(["rm", "-rf", run_dir], check=True)
        args = [a if not a.startswith("max_steps=") else "max_steps=0"
                for a in stage_args("proclip_stage2", "csv", corpus, run_dir)] + ["epochs=1", "log_every=200"]
        result = measure([sys.executable, *args], log_file=os.path.join(run_dir, "log.jsonl"))
        print(json.dumps({"texts": size, "stage": "proclip_stage2", "format": "csv", "whole_epoch": True,
                          **result}), flush=True)
    project(results)


if __name__ == "__main__":
    if sys.argv[1:2] == ["_open"]:
        _open_data(sys.argv[2], json.loads(sys.argv[3]))
    elif sys.argv[1:2] == ["_index"]:
        _index(sys.argv[2], json.loads(sys.argv[3]))
    else:
        main()

"""The kill campaign (`make test-faults`): each training stage is killed with SIGKILL at random moments while it
trains and writes checkpoints, and run again with the same command until it finishes. Every resumed run must end
bit-identical to an uninterrupted one, leave no temp file behind, and leave no DataLoader worker alive.

Marked `faults` and skipped by `make test`, because it starts dozens of processes (a few minutes). KILLS=N sets the
kills per stage (default 4), KILL_SEED the draw of the moments.
"""
import csv
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from common.checkpoints import TEMP_MARK, load_checkpoint_file
from common.embedder import EmbeddingCache
from tools.fill_cache import evaluation_texts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KILLS = int(os.environ.get("KILLS", "4"))
pytestmark = [pytest.mark.faults,
              pytest.mark.skipif(not os.environ.get("POSTCLIP_FAULT_TESTS"),
                                 reason="the kill campaign runs with `make test-faults` (POSTCLIP_FAULT_TESTS=1)")]


@pytest.fixture(scope="module")
def stages(tiny_world, tiny_clip, tmp_path_factory):
    """name -> the command line of a short run of that stage (24 steps, a checkpoint after every step)."""
    root = tmp_path_factory.mktemp("kills")
    refine = ["refine.py", "--config", "configs/toy/refine.yaml", f"pretrained={tiny_clip}",
              f"train_data={tiny_world}/coco/captions_train.json", f"train_images={tiny_world}/coco/train",
              "batch_size=8", "holdout_fraction=0.0", "epochs=4", "log_every=1", "checkpoint_every=1",
              "num_workers=2"]
    cache = root / "cache"  # a stub embedder's cache: the stages only read it, they never load an embedder
    proclip = [f"train_data={tiny_world}/recaption.csv", "max_images=48", "arch=ToyCLIP", f"pretrained={tiny_clip}",
               "embedder=stub", f"embedding_cache={cache}", "batch_size=8", "lr=1e-3", "log_every=1",
               "checkpoint_every=1", "adapter_depth=1", "device=cpu", "epochs=4"]
    with open(tiny_world / "recaption.csv", newline="") as f:
        texts = [row[k] for row in list(csv.DictReader(f))[:48] for k in ("short", "long")]
    eval_config = root / "eval.yaml"
    eval_config.write_text(yaml.safe_dump({"data_root": str(tiny_world), "zeroshot": {}, "retrieval": {}}))
    texts += evaluation_texts(eval_config)
    generator = torch.Generator().manual_seed(0)
    EmbeddingCache(cache, "stub, dim 16").fill(texts, lambda b: torch.randn(len(b), 16, generator=generator),
                                                show_progress=False)
    stage1 = ["proclip_stage1.py", *proclip, "num_workers=0"]
    stage1_model = root / "stage1_for_stage2"
    subprocess.run([sys.executable, *stage1, f"run_dir={stage1_model}"], cwd=ROOT, check=True, capture_output=True)
    return {"clip_refine": [*refine, "objective=clip_refine"], "m2mix": [*refine, "objective=m2mix"],
            "proclip_stage1": stage1,
            "proclip_stage2": ["proclip_stage2.py", *proclip, f"adapter={stage1_model}/model.pt", "num_workers=2"]}


def model_state(run_dir):
    record = load_checkpoint_file(os.path.join(run_dir, "model.pt"))
    return {f"{part}.{k}": v for part in ("state_dict", "adapter", "visual") if part in record
            for k, v in record[part].items()}


def processes_mentioning(marker):
    """Live processes whose command line holds `marker` (the run_dir: the trainer and its DataLoader workers)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    with open(f"/proc/{pid}/stat") as s:
                        if s.read().split(")")[-1].split()[0] != "Z":  # zombies are dead
                            found.append(int(pid))
        except OSError:
            pass
    return found


@pytest.mark.parametrize("stage", ["clip_refine", "m2mix", "proclip_stage1", "proclip_stage2"])
def test_killed_runs_resume_bit_identical_and_leave_nothing(stage, stages, tmp_path):
    command = [sys.executable, *stages[stage]]
    straight = tmp_path / "straight"
    subprocess.run([*command, f"run_dir={straight}"], cwd=ROOT, check=True, capture_output=True, timeout=600)

    run_dir = str(tmp_path / "killed")
    draw = random.Random(f"{os.environ.get('KILL_SEED', '0')}-{stage}")
    kills = 0
    for attempt in range(KILLS + 10):
        process = subprocess.Popen([*command, f"run_dir={run_dir}"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE)
        log = os.path.join(run_dir, "log.jsonl")
        lines_before = sum(1 for _ in open(log)) if os.path.exists(log) else 0
        if kills < KILLS:  # wait until it has trained 1-3 more steps (log lines), then kill it a moment later
            deadline, target = time.time() + 120, lines_before + draw.randint(1, 3)
            while process.poll() is None and time.time() < deadline:
                if os.path.exists(log) and sum(1 for _ in open(log)) >= target:
                    break
                time.sleep(0.02)
            time.sleep(draw.uniform(0.0, 0.2))
            if process.poll() is None:
                process.kill()  # SIGKILL: no handler runs, nothing is flushed
                kills += 1
        _, stderr = process.communicate(timeout=600)
        assert process.returncode in (0, -signal.SIGKILL), stderr.decode()[-2000:]
        time.sleep(0.3)  # the kernel delivers the workers' parent-death signal
        assert processes_mentioning(run_dir) == [], "a process of the killed run outlived it"
        if process.returncode == 0:
            break
    assert kills == KILLS, f"the run finished before {KILLS} kills"
    assert os.path.exists(os.path.join(run_dir, "model.pt"))
    reference, resumed = model_state(straight), model_state(run_dir)
    assert reference.keys() == resumed.keys()
    for key in reference:
        assert torch.equal(reference[key], resumed[key]), key
    leftovers = [name for name in os.listdir(run_dir) if TEMP_MARK in name or name == "checkpoint.pt"]
    assert leftovers == []

"""Shared fixtures: a tiny toy world and a tiny random-init ToyCLIP checkpoint, made once per test session."""
import os
import sys
from types import SimpleNamespace

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download anything
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Big enough to train a few steps at batch 16, small enough to generate in about a second.
TINY_WORLD = {"n_pretrain": 96, "n_coco_train": 48, "n_coco_val": 12, "zeroshot_per_class": 2,
              "zeroshot_min_per_task": 8, "zeroshot_fine_per_class": 1, "probe_pairs_per_pattern": 4,
              "probe_negatives_per_subset": 12, "workers": 1}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~10 s (a real model load)")
    config.addinivalue_line("markers", "slurm: needs a real SLURM (sbatch on the PATH)")
    config.addinivalue_line("markers", "faults: the kill campaign (make test-faults)")
    config.addinivalue_line("markers", "paper: checks the tables of `make test-paper` (results/paper_smoke)")


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    from tools import toyworld

    root = tmp_path_factory.mktemp("world") / "toy"
    toyworld.generate_world(root, SimpleNamespace(**{**toyworld.WORLD_DEFAULTS, **TINY_WORLD}))
    return root


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """A random-init ToyCLIP saved as an open_clip checkpoint: the 'pre-trained' model of the tests."""
    import torch
    from common.models import build_clip, save_clip_checkpoint

    torch.manual_seed(0)
    model = build_clip("ToyCLIP")[0]
    path = tmp_path_factory.mktemp("clip") / "toyclip.pt"
    save_clip_checkpoint(str(path), model, arch="ToyCLIP")
    return str(path)

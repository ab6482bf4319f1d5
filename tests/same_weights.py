"""The weights of a finished run, and the check that two runs ended with exactly the same ones."""
import os

import torch

from common.checkpoints import load_checkpoint_file


def weights(run_dir):
    return load_checkpoint_file(os.path.join(run_dir, "model.pt"))["state_dict"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key

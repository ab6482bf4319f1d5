"""Data-parallel training on CPU with 2 gloo processes, against 1 process on the same global batch.

What must hold (README "Running on SLURM"):
- contrastive (InfoNCE, open_clip ClipLoss with local_loss + gather_with_grad): the mean of the ranks' losses and the
  rank-averaged gradients equal the loss and gradients of 1 process on the whole global batch;
- HyCD, Self-KD's distillation and m²-mix gather every rank's features with gradient and are computed on the
  GLOBAL batch, and RaFA's references are one draw for the whole global batch, each rank taking its rows: so every
  objective, in the plain-reading loss forms and in the official ones (refine.py's DEFAULTS), has the loss and
  gradients of 1 process on the global batch;
- the training loop (refine.py main) with 2 ranks shards the global batch, writes logs and checkpoints from rank 0
  only, and resumes a killed 2-rank run to the same weights.
"""
import json
import os
import socket
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import refine
from common.distributed import init_distributed
from common.checkpoints import load_checkpoint_file
from common.models import build_clip
from common.train import average_gradients
from crashes import SimulatedCrash, crash_before_step

pytestmark = pytest.mark.slow  # starts 2 processes (about a minute on 2 cores)

GLOBAL_BATCH = 8
CAPTIONS = ["a red circle", "a small blue square", "two green triangles", "a big yellow star",
            "a purple heart at the top", "three orange circles", "a cyan square on noise", "a white triangle"]
OBJECTIVE_SEED = 7  # the trainer's generator (RaFA's r, m²-mix's λ) at the step under test
# The plain reading of the papers (configs/toy/refine.yaml) and the official code's forms (refine.py's DEFAULTS).
PLAIN_FORMS = dict(infonce_form="normalised", self_kd_form="logit_kl", m2mix_weight=1.0, m2mix_reduction="mean",
                   m2mix_logit_scale=0.0)
PAPER_FORMS = dict(infonce_form="raw", self_kd_form="feature_mse", m2mix_weight=0.01, m2mix_reduction="sum",
                   m2mix_logit_scale=1 / 0.07)
FORMS = {"plain_forms": PLAIN_FORMS, "official_forms": PAPER_FORMS}
CASES = [(objective, forms) for forms in FORMS for objective in refine.OBJECTIVES]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join_process_group(rank, world_size, port):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    return init_distributed("cpu")


def _objective(objective, env, **overrides):
    """RefineObjective around the same seeded random-init ToyCLIP in every process."""
    torch.manual_seed(0)
    model, _, _, tokenizer = build_clip("ToyCLIP")
    cfg = SimpleNamespace(**{**refine.DEFAULTS, "objective": objective, **overrides})
    return refine.RefineObjective(cfg, model, tokenizer, None, env)


def _global_batch():
    images = torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return {"images": images, "captions": list(CAPTIONS)}


def _rows(batch, start, stop):
    return {"images": batch["images"][start:stop], "captions": batch["captions"][start:stop]}


def _grads(objective):
    return {name: p.grad.clone() for name, p in objective.named_parameters() if p.grad is not None}


# ---------------------------------------------------------------------------------------------------------------
# the 2-rank side of both tests, in one pair of processes (starting one costs seconds of imports)
def _two_rank_worker(rank, world_size, port, world, clip, out_dir):
    env = _join_process_group(rank, world_size, port)
    # one forward/backward of every objective on this rank's share of the global batch, gradients averaged over
    # the ranks as common/train.py train_step does
    share = GLOBAL_BATCH // world_size
    batch = _rows(_global_batch(), rank * share, (rank + 1) * share)
    results = {}
    for objective, forms in CASES:
        module = _objective(objective, env, **FORMS[forms])
        loss, _ = module(batch, torch.Generator().manual_seed(OBJECTIVE_SEED))
        loss.backward()
        average_gradients(list(module.parameters()))
        results[f"{objective}-{forms}"] = {"loss": loss.detach(), "grads": _grads(module)}
    torch.save(results, os.path.join(out_dir, f"step_rank{rank}.pt"))

    # the training loop: refine.py main, as torchrun or the SLURM launcher would start it on each rank
    run = lambda name, *extra: refine.main(_refine_args(world, clip, os.path.join(out_dir, name), *extra))
    run("contrastive", "objective=contrastive", "max_steps=3")
    run("clip_refine", "objective=clip_refine", "max_steps=4")  # RaFA/HyCD leave logit_scale without a gradient
    run("clip_refine_accum", "objective=clip_refine", "max_steps=4", "accum_steps=2")  # gradients averaged by hand
    try:
        with crash_before_step(3):
            run("clip_refine_killed", "objective=clip_refine", "max_steps=4")
    except SimulatedCrash:
        pass
    run("clip_refine_killed", "objective=clip_refine", "max_steps=4")  # resumes from the step-2 checkpoint
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tiny_world, tiny_clip, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("two_ranks")
    mp.spawn(_two_rank_worker, args=(2, _free_port(), str(tiny_world), tiny_clip, str(out_dir)), nprocs=2,
             join=True)
    return out_dir


def _reference(objective, forms, env):
    """1 process: (loss, grads) of the whole global batch."""
    module = _objective(objective, env, **FORMS[forms])
    loss_global, _ = module(_global_batch(), torch.Generator().manual_seed(OBJECTIVE_SEED))
    loss_global.backward()
    return loss_global.detach(), _grads(module)


def _max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("objective,forms", CASES)
def test_two_gloo_ranks_optimise_the_global_batch_objective(objective, forms, two_ranks):
    env = init_distributed("cpu")
    loss_global, grads_global = _reference(objective, forms, env)
    rank0, rank1 = [torch.load(two_ranks / f"step_rank{r}.pt", weights_only=True)[f"{objective}-{forms}"]
                    for r in range(2)]
    loss_ranks = (rank0["loss"] + rank1["loss"]) / 2  # what the log reports: the mean over ranks
    assert set(rank0["grads"]) == set(grads_global)
    assert _max_diff(rank0["grads"], rank1["grads"]) == 0, "every rank is left the same averaged gradient"

    grad_scale = max(g.abs().max().item() for g in grads_global.values())
    print(f"\n{objective} ({forms}): vs 1 process on the global batch: "
          f"|loss diff| = {abs(loss_ranks - loss_global).item():.2e}, "
          f"max |grad diff| = {_max_diff(rank0['grads'], grads_global):.2e} (max |grad| {grad_scale:.2e})")
    torch.testing.assert_close(loss_ranks, loss_global, rtol=1e-5, atol=1e-6)
    for name in grads_global:
        torch.testing.assert_close(rank0["grads"][name], grads_global[name], rtol=1e-4, atol=1e-6 * grad_scale,
                                   msg=lambda m: f"{objective} {forms} {name}: {m}")


# ---------------------------------------------------------------------------------------------------------------
# the training loop: refine.py main with 2 ranks
def _refine_args(world, clip, run_dir, *extra):
    return ["--config", "configs/toy/refine.yaml", f"run_dir={run_dir}", f"pretrained={clip}",
            f"train_data={world}/coco/captions_train.json", f"train_images={world}/coco/train",
            f"batch_size={GLOBAL_BATCH}", "holdout_fraction=0.0", "log_every=1", "checkpoint_every=2", "lr=1e-4",
            "eps=1e-3", "num_workers=0", "device=cpu", *extra]
# eps=1e-3: Adam moves every weight by about lr whatever the size of its gradient, so a gradient that is zero up to
# float noise (e.g. the attention key biases) would move by ±lr on a coin flip; a larger eps leaves those in place.


def test_refine_with_two_gloo_ranks(tiny_world, tiny_clip, two_ranks):
    refine.main(_refine_args(tiny_world, tiny_clip, two_ranks / "contrastive_1proc", "objective=contrastive",
                             "max_steps=3"))
    weights = lambda name: load_checkpoint_file(two_ranks / name / "model.pt")["state_dict"]
    logs = lambda name: [json.loads(line) for line in open(two_ranks / name / "log.jsonl")]

    two, one = weights("contrastive"), weights("contrastive_1proc")
    diff = max((two[k] - one[k]).abs().max().item() for k in one)
    print(f"\ncontrastive, 3 steps: max |weight diff| 2 ranks vs 1 = {diff:.2e}; "
          f"logged losses 2 ranks {[r['loss'] for r in logs('contrastive')]} "
          f"1 rank {[r['loss'] for r in logs('contrastive_1proc')]}")
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-6, msg=lambda m: f"{key}: {m}")
    # rank 0 alone logs, once per step, the mean over ranks: the loss of the global batch
    assert [r["step"] for r in logs("contrastive")] == [1, 2, 3]
    for two_rank, one_rank in zip(logs("contrastive"), logs("contrastive_1proc")):
        assert two_rank["loss"] == pytest.approx(one_rank["loss"], rel=1e-5)

    assert [r["step"] for r in logs("clip_refine")] == [1, 2, 3, 4]
    # accum_steps=2 on 2 ranks: the same weights as without
    accumulated = weights("clip_refine_accum")
    for key in accumulated:
        torch.testing.assert_close(accumulated[key], weights("clip_refine")[key], rtol=1e-4, atol=1e-6,
                                   msg=lambda m: f"{key}: {m}")
    straight, resumed = weights("clip_refine"), weights("clip_refine_killed")
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    assert not (two_ranks / "clip_refine_killed" / "checkpoint.pt").exists()

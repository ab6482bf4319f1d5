"""Gradient accumulation (common/train.py accumulated_backward, `accum_steps`): the same update as the big batch.

For every refine.py objective, in the plain-reading loss forms and in the official ones (refine.py's DEFAULTS),
and for both ProCLIP stages (L_struct's pairwise distances, the EMA teacher), accum_steps=2 at batch 8 must leave
the same loss and gradients as one forward/backward of the batch of 8, and two training steps through refine.main
the same weights. Objectives without a feature-caching path, and active dropout, are refused.
"""
from types import SimpleNamespace

import pytest
import torch

import proclip_stage1
import proclip_stage2
import refine
from common.distributed import DistEnv
from common.proclip import Adapter
from common.checkpoints import load_checkpoint_file
from common.models import build_clip
from common.proclip import ProCLIP
from common.train import TRAIN_DEFAULTS, accumulated_backward, train

# The plain reading of the papers (configs/toy/refine.yaml) and the official code's forms (refine.py's DEFAULTS).
PLAIN_FORMS = dict(infonce_form="normalised", self_kd_form="logit_kl", m2mix_weight=1.0, m2mix_reduction="mean",
                   m2mix_logit_scale=0.0)
PAPER_FORMS = dict(infonce_form="raw", self_kd_form="feature_mse", m2mix_weight=0.01, m2mix_reduction="sum",
                   m2mix_logit_scale=1 / 0.07)
CAPTIONS = ["a red circle", "a small blue square", "two green triangles", "a big yellow star",
            "a purple heart at the top", "three orange circles", "a cyan square on noise", "a white triangle"]


def _objective(objective, forms):
    torch.manual_seed(0)
    model, _, _, tokenizer = build_clip("ToyCLIP")
    cfg = SimpleNamespace(**{**refine.DEFAULTS, "objective": objective, **forms})
    return refine.RefineObjective(cfg, model, tokenizer, None, DistEnv())


def _batch():
    return {"images": torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1)),
            "captions": list(CAPTIONS), "skipped": 0}


def _grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("forms", [PLAIN_FORMS, PAPER_FORMS], ids=["plain_forms", "official_forms"])
@pytest.mark.parametrize("objective", list(refine.OBJECTIVES))
def test_two_micro_batches_give_the_gradient_of_the_whole_batch(objective, forms):
    whole = _objective(objective, forms)
    loss, _ = whole(_batch(), torch.Generator().manual_seed(7))
    loss.backward()
    accumulated = _objective(objective, forms)
    generator = torch.Generator().manual_seed(7)
    loss_acc, logs = accumulated_backward(accumulated, _batch(), generator, accum_steps=2)

    torch.testing.assert_close(loss_acc, loss.detach(), rtol=1e-5, atol=1e-6)
    expected, got = _grads(whole), _grads(accumulated)
    assert set(got) == set(expected) and expected, "the same parameters get gradients"
    scale = max(g.abs().max().item() for g in expected.values())
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6 * scale,
                                   msg=lambda m: f"{objective} {name}: {m}")
    # the generator advanced exactly as in one un-accumulated step (RaFA's r / m²-mix's λ drawn once)
    reference = torch.Generator().manual_seed(7)
    whole(_batch(), reference)
    assert torch.equal(generator.get_state(), reference.get_state())


class StubCache:
    """The embedding cache's lookup, from a fixed random embedding per caption."""

    def lookup(self, texts):
        return torch.stack([torch.randn(16, generator=torch.Generator().manual_seed(CAPTIONS.index(t)))
                            for t in texts])


def _proclip_objective(stage, dropout=0.0):
    torch.manual_seed(0)
    clip, _, _, tokenizer = build_clip("ToyCLIP")
    adapter = Adapter(16, 64, depth=1, expansion=2, dropout=dropout)
    if stage == 1:
        return proclip_stage1.Stage1Objective(adapter, clip, tokenizer, StubCache())
    cfg = SimpleNamespace(**{**proclip_stage2.DEFAULTS, "reg_weight": 1.0})  # L_reg as large as InfoNCE
    objective = proclip_stage2.Stage2Objective(cfg, ProCLIP(clip.visual, adapter, clip.logit_scale.item()),
                                               StubCache(), DistEnv())
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # an EMA teacher some steps behind: L_ins and L_struct are not at their minimum
        for p in objective.teacher.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return objective


@pytest.mark.parametrize("stage", [1, 2])
def test_proclip_stages_accumulate_to_the_whole_batch_gradient(stage):
    batch = _batch()
    if stage == 1:
        batch = {"captions": batch["captions"], "long_captions": batch["captions"][::-1], "skipped": 0}
    whole = _proclip_objective(stage).train()
    loss, _ = whole(batch, None)
    loss.backward()
    accumulated = _proclip_objective(stage).train()
    loss_acc, _ = accumulated_backward(accumulated, batch, torch.Generator(), accum_steps=2)
    torch.testing.assert_close(loss_acc, loss.detach(), rtol=1e-5, atol=1e-6)
    expected, got = _grads(whole), _grads(accumulated)
    assert set(got) == set(expected) and expected
    scale = max(g.abs().max().item() for g in expected.values())
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6 * scale,
                                   msg=lambda m: f"stage {stage} {name}: {m}")


def test_dropout_and_objectives_without_feature_caching_are_refused(tmp_path):
    with pytest.raises(ValueError, match="accum_steps=2 with active dropout.*adapter_dropout=0"):
        accumulated_backward(_proclip_objective(1, dropout=0.1).train(), {"captions": CAPTIONS}, None, 2)

    class Plain(torch.nn.Module):  # forward(batch, generator) only
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

    cfg = SimpleNamespace(**{**TRAIN_DEFAULTS, "accum_steps": 2, "device": "cpu"})
    with pytest.raises(ValueError, match="accum_steps=2: Plain has no feature-caching path"):
        train(cfg, Plain(), None, str(tmp_path), None, env=DistEnv())


def test_a_wrong_split_is_refused():
    with pytest.raises(ValueError, match="accum_steps=3 must divide the per-rank batch of 8"):
        accumulated_backward(_objective("contrastive", PLAIN_FORMS), _batch(), torch.Generator(), accum_steps=3)


def _args(world, clip, run_dir, *extra):
    return ["--config", "configs/toy/refine.yaml", f"run_dir={run_dir}", f"pretrained={clip}",
            f"train_data={world}/coco/captions_train.json", f"train_images={world}/coco/train", "batch_size=8",
            "holdout_fraction=0.0", "log_every=1", "lr=1e-4", "eps=1e-3", "num_workers=0", "device=cpu",
            "max_steps=2", *extra]


def test_refine_with_accum_steps_trains_the_same_weights(tiny_world, tiny_clip, tmp_path):
    for name, accum in (("plain", 1), ("accum", 2)):
        refine.main(_args(tiny_world, tiny_clip, tmp_path / name, "objective=clip_refine", f"accum_steps={accum}"))
    plain = load_checkpoint_file(tmp_path / "plain/model.pt")["state_dict"]
    accum = load_checkpoint_file(tmp_path / "accum/model.pt")["state_dict"]
    start = load_checkpoint_file(tiny_clip)["state_dict"]
    assert any(not torch.equal(start[k], plain[k]) for k in plain), "weights moved"
    for key in plain:
        torch.testing.assert_close(accum[key], plain[key], rtol=1e-4, atol=1e-6, msg=lambda m: f"{key}: {m}")

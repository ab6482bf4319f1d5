"""refine.py end to end on a tiny world: every objective trains, a killed run resumes bit-identically,
and a non-finite loss stops the run with the last good checkpoint kept."""
import json
import os

import pytest
import torch
import yaml

import refine
from common.checkpoints import load_checkpoint_file
from common.train import NonFiniteLossError
from crashes import SimulatedCrash, crash_before_step
from same_weights import assert_same_weights, weights


def args(tiny_world, tiny_clip, run_dir, *extra):
    return ["--config", "configs/toy/refine.yaml", f"run_dir={run_dir}", f"pretrained={tiny_clip}",
            f"train_data={tiny_world}/coco/captions_train.json", f"train_images={tiny_world}/coco/train",
            "batch_size=8", "holdout_fraction=0.0", "log_every=1", "checkpoint_every=2", "lr=1e-4", *extra]


@pytest.mark.parametrize("objective", list(refine.OBJECTIVES))
def test_every_objective_trains_and_exports_an_open_clip_checkpoint(objective, tiny_world, tiny_clip, tmp_path):
    run_dir = tmp_path / objective
    refine.main(args(tiny_world, tiny_clip, run_dir, f"objective={objective}", "max_steps=2"))
    start, end = load_checkpoint_file(tiny_clip)["state_dict"], load_checkpoint_file(run_dir / "model.pt")
    assert end["objective"] == objective
    assert any(not torch.equal(start[k], v) for k, v in end["state_dict"].items()), "weights moved"
    logs = [json.loads(line) for line in open(run_dir / "log.jsonl")]
    assert [r["step"] for r in logs] == [1, 2]
    for term in refine.OBJECTIVES[objective][0]:
        assert term in logs[0]
    assert not (run_dir / "checkpoint.pt").exists(), "the resumable state is removed once model.pt is written"


def test_killed_run_resumes_to_bit_identical_weights(tiny_world, tiny_clip, tmp_path):
    # 48 images / batch 8 = 6 steps per epoch, 2 epochs: the crash is mid-epoch 1, after the step-6 checkpoint
    common = ["objective=clip_refine", "epochs=2", "num_workers=1"]
    refine.main(args(tiny_world, tiny_clip, tmp_path / "straight", *common))
    with crash_before_step(9), pytest.raises(SimulatedCrash):
        refine.main(args(tiny_world, tiny_clip, tmp_path / "killed", *common))
    assert load_checkpoint_file(tmp_path / "killed/checkpoint.pt")["step"] == 8
    refine.main(args(tiny_world, tiny_clip, tmp_path / "killed", *common))  # same command, resumes
    straight = load_checkpoint_file(tmp_path / "straight/model.pt")["state_dict"]
    resumed = load_checkpoint_file(tmp_path / "killed/model.pt")["state_dict"]
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    steps = [json.loads(line)["step"] for line in open(tmp_path / "killed/log.jsonl")]
    assert steps[-1] == 12 and 9 in steps


def test_a_rows_seeds_in_one_process_train_what_each_seed_trains_alone(tiny_world, tiny_clip, tmp_path, capsys):
    """seeds=[...] (what make runs: one process per row): each seed's model.pt and config.yaml are those of a run
    of that seed alone, a seed already done is skipped, and run_dir must hold "{seed}"."""
    common = ["objective=rafa", "max_steps=3"]  # RaFA draws from the run's generator: the seed shows
    refine.main(args(tiny_world, tiny_clip, tmp_path / "alone", *common, "seed=1"))
    (tmp_path / "row/seed0").mkdir(parents=True)
    (tmp_path / "row/seed0/model.pt").write_bytes(b"done before")
    paths = refine.main(args(tiny_world, tiny_clip, f"{tmp_path}/row/seed{{seed}}", *common, "seeds=[0,1,2]"))
    assert paths == [f"{tmp_path}/row/seed{s}/model.pt" for s in range(3)]
    assert (tmp_path / "row/seed0/model.pt").read_bytes() == b"done before"  # skipped, not trained again
    assert "row/seed0/model.pt exists: run already finished, skipping" in capsys.readouterr().out
    assert_same_weights(weights(tmp_path / "alone"), weights(tmp_path / "row/seed1"))
    assert any(not torch.equal(a, b) for a, b in zip(weights(tmp_path / "row/seed1").values(),
                                                     weights(tmp_path / "row/seed2").values()))
    configs = [yaml.safe_load(open(tmp_path / folder / "config.yaml")) for folder in ("alone", "row/seed1")]
    for config in configs:
        del config["_command"], config["_time"], config["run_dir"]
    assert configs[0] == configs[1] and configs[1]["seed"] == 1 and configs[1]["seeds"] == []
    with pytest.raises(ValueError, match=r'seeds=\[0, 1\] with run_dir=.*/x: every seed would write there; put '
                                         r'"\{seed\}" in it, e.g. run_dir=.*/x/seed\{seed\}'):
        refine.main(args(tiny_world, tiny_clip, tmp_path / "x", *common, "seeds=[0,1]"))
    with pytest.raises(ValueError, match=r"seeds=\[0, 0\]: give distinct integers"):
        refine.main(args(tiny_world, tiny_clip, f"{tmp_path}/x/seed{{seed}}", *common, "seeds=[0,0]"))


def test_exploding_run_stops_and_writes_no_poisoned_checkpoint(tiny_world, tiny_clip, tmp_path):
    # lr=1e30: the first update sends the weights to ~1e30, whose loss is not finite. No weights were ever shown to
    # be good, so no checkpoint may be written (the old guard kept the poisoned weights of step 1).
    run_dir = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match="loss is (nan|inf).*No checkpoint was written"):
        refine.main(args(tiny_world, tiny_clip, run_dir, "objective=rafa", "lr=1e30", "checkpoint_every=1",
                         "epochs=3"))
    assert not (run_dir / "checkpoint.pt").exists() and not (run_dir / "model.pt").exists()


def test_non_finite_loss_keeps_the_last_good_checkpoint_and_resumes_from_it(tiny_world, tiny_clip, tmp_path,
                                                                            monkeypatch):
    common = ["objective=clip_refine", "checkpoint_every=2"]  # 48 images / batch 8 = 6 steps
    refine.main(args(tiny_world, tiny_clip, tmp_path / "straight", *common))
    forward, calls = refine.RefineObjective.forward, []

    def nan_at_sixth_step(self, batch, generator):
        loss, logs = forward(self, batch, generator)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 6 else loss), logs

    monkeypatch.setattr(refine.RefineObjective, "forward", nan_at_sixth_step)
    run_dir = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match=r"step 5: loss is nan.*last good checkpoint is .*checkpoint.pt "
                                                 r"\(step 4\)"):
        refine.main(args(tiny_world, tiny_clip, run_dir, *common))
    ckpt = load_checkpoint_file(run_dir / "checkpoint.pt")
    assert ckpt["step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["objective"].values() if v.is_floating_point())
    monkeypatch.setattr(refine.RefineObjective, "forward", forward)
    refine.main(args(tiny_world, tiny_clip, run_dir, *common))  # the same command resumes from step 4
    straight = load_checkpoint_file(tmp_path / "straight/model.pt")["state_dict"]
    resumed = load_checkpoint_file(run_dir / "model.pt")["state_dict"]
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_finished_run_is_skipped(tiny_world, tiny_clip, tmp_path, capsys):
    run = args(tiny_world, tiny_clip, tmp_path / "once", "objective=contrastive", "max_steps=1")
    refine.main(run)
    mtime = os.path.getmtime(tmp_path / "once/model.pt")
    refine.main(run)
    assert "already finished" in capsys.readouterr().out
    assert os.path.getmtime(tmp_path / "once/model.pt") == mtime


def test_bad_objective_and_missing_run_dir(tiny_world, tiny_clip, tmp_path):
    with pytest.raises(ValueError, match="objective='clip_refin'; valid: contrastive, .*, clip_refine$"):
        refine.main(args(tiny_world, tiny_clip, tmp_path / "x", "objective=clip_refin"))
    with pytest.raises(ValueError, match="run_dir is not set"):
        refine.main(args(tiny_world, tiny_clip, "", "run_dir="))
    with pytest.raises(ValueError, match=r"'--lr' is not an option; config keys are given as key=value \(lr=VALUE\)"):
        refine.main(args(tiny_world, tiny_clip, tmp_path / "x", "--lr", "1e-5"))
    with pytest.raises(ValueError, match=r"'--max-steps=2' is not an option; .* \(max_steps=VALUE\)"):
        refine.main(args(tiny_world, tiny_clip, tmp_path / "x", "--max-steps=2"))

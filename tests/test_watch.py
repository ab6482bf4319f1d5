"""What a user sees of a run (docs/watching.md) and finds on the command line: --help lists every config key with
its default and comment; log.jsonl carries time stamps, the step count and the current rate; the output in a file
is plain lines; the held-out split is scored per epoch without changing a bit of the training; TensorBoard only
when asked, and one clear line without the package."""
import datetime
import io
import json
import os
import re
import subprocess
import sys
import types

import pytest
import torch

import evaluate
import proclip_stage1
import proclip_stage2
import refine
from common import train as train_module
from common import watch
from common.config import ConfigError, load_config, show_value
from common.train import TRAIN_DEFAULTS, Objective, score_holdout
from crashes import SimulatedCrash, crash_before_step
from same_weights import assert_same_weights, weights
from slurm import launcher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = {"refine": refine, "proclip_stage1": proclip_stage1, "proclip_stage2": proclip_stage2,
          "evaluate": evaluate}
MERGED = {"common/train.py": "TRAIN_DEFAULTS", "common/proclip.py": "PROCLIP_DEFAULTS"}


def help_of(main, argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def flat(text):
    return " ".join(text.split())


def line_comments(path):
    """{key: the comment at the end of its `key=value,  # comment` line}, read with a plain regex (not the code
    under test)."""
    found = {}
    for line in open(os.path.join(ROOT, path), encoding="utf-8"):
        match = re.match(r"\s+(\w+)=.*?,\s+#\s*(.+)$", line)
        if match:
            found.setdefault(match.group(1), match.group(2).strip())
    return found


# --- every key discoverable -------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", list(STAGES))
def test_help_lists_every_key_with_its_default_and_the_comment_of_its_line(stage, capsys):
    module = STAGES[stage]
    out = help_of(module.main, [], capsys)
    lines = out.splitlines()
    own = line_comments(f"{stage}.py")
    merged = [path for path, name in MERGED.items() if name in open(module.__file__, encoding="utf-8").read()]
    for key, default in module.DEFAULTS.items():
        setting = f"  {key}={show_value(default)}"
        matches = [line for line in lines if line == setting or line.startswith(setting + " ")]
        assert len(matches) == 1, f"{key}: {len(matches)} lines start with {setting!r}"
        comment = own.get(key) or next((line_comments(p)[key] for p in merged if key in line_comments(p)), None)
        if comment:
            assert flat(comment) in flat(out), f"{key}: its comment {comment!r} is not in --help"
    for path in merged:  # each merged dict in a group of its own, after the stage's own keys
        heading = f"{path} {MERGED[path]}"
        assert heading in out and out.index("  run_dir=") < out.index(heading)
    expected = [] if stage == "evaluate" else ["common/train.py"] if stage == "refine" else list(MERGED)
    assert merged == expected


def test_a_key_the_stage_sets_again_is_listed_once_with_the_stage_value_and_the_inherited_comment(capsys):
    out = help_of(proclip_stage2.main, [], capsys)
    group = out[out.index("proclip_stage2.py DEFAULTS"):out.index("common/train.py TRAIN_DEFAULTS")]
    assert "  epochs=4 " in group and "passes over the training set" in group  # comment from TRAIN_DEFAULTS
    assert "  batch_size=4096 " in group and "global" in group  # the stage's own comment wins
    assert out.count("  epochs=") == 1 and "  epochs=1" not in out


def test_slurm_options_say_what_their_values_mean(capsys):
    out = flat(help_of(launcher.main, ["refine"], capsys))
    assert re.search(r"--tasks-per-node VALUE processes \(DDP ranks\) per node; 0 = one per GPU .*\(default 0\)", out)
    assert re.search(r"--mem-gb VALUE memory per node in GB; 0 = .*partition's default memory \(default 0\)", out)
    for key, comment in line_comments("slurm/cluster.py").items():
        assert flat(comment) in out, key
    assert "  lr=1e-06" in help_of(launcher.main, ["refine"], capsys)  # and the stage's config keys


# --- a run you can watch ----------------------------------------------------------------------------------------
def refine_args(world, clip, run_dir, *extra):
    return ["--config", "configs/toy/refine.yaml", f"run_dir={run_dir}", f"pretrained={clip}",
            f"train_data={world}/coco/captions_train.json", f"train_images={world}/coco/train", "batch_size=8",
            "log_every=1", "checkpoint_every=2", "lr=1e-4", "num_workers=0", *extra]


def records(run_dir, split=None):
    lines = [json.loads(line) for line in open(os.path.join(run_dir, "log.jsonl"))]
    return [r for r in lines if split is None or r["split"] == split]


def test_log_lines_have_time_stamps_total_steps_and_the_current_rate(tiny_world, tiny_clip, tmp_path, monkeypatch):
    # The log's clock advances only with the steps: 0.1 s each, except a slow third step of 1 s. A rate since the
    # start would carry that step to the end of the run; the rate since the previous line forgets it.
    durations, now = [0.1, 0.1, 1.0, 0.1, 0.1, 0.1], [1.7e9]
    real = train_module.train_step

    def timed_step(*args, **kwargs):
        now[0] += durations[0]
        durations.pop(0)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", timed_step)
    monkeypatch.setattr(watch, "time", types.SimpleNamespace(time=lambda: now[0]))
    refine.main(refine_args(tiny_world, tiny_clip, tmp_path, "holdout_fraction=0.0", "max_steps=6"))
    logs = records(tmp_path)
    assert [r["step"] for r in logs] == [1, 2, 3, 4, 5, 6] and {r["split"] for r in logs} == {"train"}
    for key in ("loss", "lr", "epoch", "skipped_images", "steps_per_s"):  # the keys tools and tests read
        assert all(key in r for r in logs), key
    assert [r["total_steps"] for r in logs] == [6] * 6
    assert [r["steps_per_s"] for r in logs] == pytest.approx([10, 10, 1, 10, 10, 10])
    assert [r["elapsed_s"] for r in logs] == pytest.approx([0.1, 0.2, 1.2, 1.3, 1.4, 1.5])
    assert [r["eta_s"] for r in logs] == pytest.approx([0.5, 0.4, 3.0, 0.2, 0.1, 0.0])
    stamps = [datetime.datetime.fromisoformat(r["time"]) for r in logs]
    assert all(s.tzinfo is not None for s in stamps)
    assert [round((s - stamps[0]).total_seconds()) for s in stamps] == [0, 0, 1, 1, 1, 1]


def test_output_to_a_file_is_plain_lines_one_per_log_step(tiny_world, tiny_clip, tmp_path):
    out = tmp_path / "out.txt"
    with open(out, "wb") as f:
        subprocess.run([sys.executable, "refine.py", *refine_args(tiny_world, tiny_clip, tmp_path / "run",
                                                                  "holdout_fraction=0.25", "log_every=2")],
                       cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, check=True, timeout=300)
    text = out.read_bytes()
    assert b"\r" not in text and b"\x1b" not in text
    steps = re.findall(rb"^step (\d+)/4 \(\d+%\)  epoch 1/1 .* steps/s  ETA \d:\d\d:\d\d$", text, flags=re.M)
    assert steps == [b"2", b"4"]
    assert re.search(rb"^holdout before the first step \(step 0/4, 12 items", text, flags=re.M)
    assert re.search(rb"^holdout after epoch 1/1 \(step 4/4, 12 items, .*centroid_distance", text, flags=re.M)


def test_a_run_says_how_many_items_each_epoch_leaves_out(tiny_world, tiny_clip, tmp_path, capsys):
    refine.main(refine_args(tiny_world, tiny_clip, tmp_path / "a", "holdout_fraction=0.0", "max_steps=1"))
    whole = capsys.readouterr().out
    items = int(re.search(r"for 1 steps \((\d+)/epoch, global batch 8", whole).group(1)) * 8
    assert "leaves out" not in whole  # batch_size 8 divides the tiny world's images
    refine.main(refine_args(tiny_world, tiny_clip, tmp_path / "b", "holdout_fraction=0.0", "max_steps=1",
                            "batch_size=7"))
    lines = capsys.readouterr().out.splitlines()
    said = [line for line in lines if "leaves out" in line]
    assert said == [f"each epoch leaves out {items % 7} of the {items} training items (the last, partial batch of "
                    f"its shuffle at batch_size=7)"]
    assert items % 7 and lines.index(said[0]) == 1 + next(i for i, l in enumerate(lines) if l.startswith("training "))


def test_a_terminal_gets_a_progress_line_redrawn_in_place(tmp_path, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(watch.RunLog, "REDRAW_S", 0.0)
    log = watch.RunLog(str(tmp_path), total_steps=10, steps_per_epoch=5, start_step=0, stream=terminal)
    log.step_done(1)
    log.train(2, 0, 1e-4, {"loss": 1.5}, 0)
    log.step_done(3)
    log.close()
    text = terminal.getvalue()
    assert text.startswith("\rstep 1/10 (10%)  ") and "ETA" in text.split("\r\x1b[K")[0]
    assert "\r\x1b[K" + "step 2/10 (20%)  epoch 1/2  loss 1.5  lr 0.0001" in text  # the bar cleared first
    assert text.endswith("\r\x1b[K")  # nothing left behind


def test_progress_bars_in_a_file_are_plain_lines(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    assert list(watch.progress_bar(range(5), desc="texts", plain_every_s=0)) == list(range(5))
    text = stream.getvalue()
    assert text and "\r" not in text and "\x1b" not in text and "texts: 100%" in text


def test_a_progress_bar_done_within_its_interval_writes_nothing_to_a_file(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    assert list(watch.progress_bar(range(5), desc="texts coco_val", leave=False)) == list(range(5))
    assert list(watch.progress_bar(range(5), desc="images")) == list(range(5))
    assert stream.getvalue() == ""  # no "texts coco_val:   0%|" line left behind


# --- the held-out split -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("objective", ["clip_refine", "m2mix"])  # RaFA's and m²-mix's draws, a frozen teacher
def test_holdout_is_scored_per_epoch_and_changes_no_bit_of_the_training(objective, tiny_world, tiny_clip, tmp_path,
                                                                       monkeypatch):
    # 48 images, 12 held out, 36 / batch 8 = 4 steps per epoch, 2 epochs; scored per epoch and every 3 steps
    argv = lambda run_dir, every=3: refine_args(tiny_world, tiny_clip, run_dir, f"objective={objective}",
                                                "epochs=2", "holdout_fraction=0.25", f"holdout_every={every}")
    refine.main(argv(tmp_path / "scored"))
    holdout = records(tmp_path / "scored", "holdout")
    assert [(r["step"], r["epoch"]) for r in holdout] == [(0, 0), (3, 0), (4, 0), (6, 1), (8, 1)]
    for r in holdout:
        assert r["holdout_items"] == 12 and r["total_steps"] == 8 and r["loss"] > 0 and "time" in r
        assert 0 < r["centroid_distance"] < 2 and -4 <= r["uniformity"] <= 0  # docs/methods.md §3
    assert holdout[0]["loss"] != holdout[2]["loss"], "the score follows the weights"
    assert [r["step"] for r in records(tmp_path / "scored", "train")] == list(range(1, 9))

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "score_holdout", lambda *a, **k: None)
        refine.main(argv(tmp_path / "unscored"))
    assert records(tmp_path / "unscored", "holdout") == []
    assert_same_weights(weights(tmp_path / "scored"), weights(tmp_path / "unscored"))
    refine.main(argv(tmp_path / "per_epoch", every=0))  # the scores of the epoch ends alone: the same file
    assert [r["step"] for r in records(tmp_path / "per_epoch", "holdout")] == [0, 4, 8]
    assert (tmp_path / "per_epoch" / "model.pt").read_bytes() == (tmp_path / "scored" / "model.pt").read_bytes()

    if objective == "clip_refine":  # killed after the step-4 score, resumed from step 4: the same scores
        with crash_before_step(6), pytest.raises(SimulatedCrash):
            refine.main(argv(tmp_path / "killed"))
        refine.main(argv(tmp_path / "killed"))
        assert_same_weights(weights(tmp_path / "scored"), weights(tmp_path / "killed"))
        strip = lambda r: {k: v for k, v in r.items() if k not in ("time", "elapsed_s", "holdout_s")}
        # a score of a step trained again after the resume is logged again (the same numbers): the last one counts
        killed = {r["step"]: strip(r) for r in records(tmp_path / "killed", "holdout")}
        assert list(killed.values()) == [strip(r) for r in holdout]


def test_a_negative_holdout_every_is_one_clear_error(tiny_world, tiny_clip, tmp_path):
    with pytest.raises(ConfigError, match=r"holdout_every=-1 must not be negative"):
        refine.main(refine_args(tiny_world, tiny_clip, tmp_path / "run", "holdout_every=-1"))
    assert not (tmp_path / "run" / "log.jsonl").exists(), "refused before training"


class NoisyNet(Objective):
    """Draws from the global RNG (as dropout would) and has BatchNorm: what scoring must leave untouched."""
    gap_features = ("image", "text")

    def __init__(self):
        super().__init__()
        self.norm, self.proj = torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 4)

    def encode(self, batch):
        x = self.norm(batch["images"]) + 0.01 * torch.randn(len(batch["images"]), 4)
        return {"image": self.proj(x), "text": self.proj(x.flip(1))}

    def loss_from_features(self, features, generator):
        noise = torch.rand((), generator=generator)
        return (features["image"] - features["text"]).pow(2).mean() + noise, {"noise": noise}


def test_scoring_restores_rng_states_train_mode_and_batchnorm_statistics():
    from common.data import collate_pairs
    from common.distributed import DistEnv

    objective = NoisyNet().train()
    held_out = [(torch.randn(4), f"caption {i}") for i in range(10)]
    cfg = load_config(TRAIN_DEFAULTS, None, ["batch_size=4", "num_workers=0", "seed=3"])
    before = {k: v.clone() for k, v in objective.state_dict().items()}
    torch.manual_seed(123)
    first = score_holdout(objective, held_out, cfg, DistEnv(), collate_pairs)
    after_scoring = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after_scoring, torch.rand(3)), "the global RNG is where it was"
    assert objective.training and all(m.training for m in objective.modules())
    for key, value in objective.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed"  # BatchNorm's running statistics too
    assert first["holdout_items"] == 10 and "centroid_distance" in first and "separability" not in first
    assert score_holdout(objective, held_out, cfg, DistEnv(), collate_pairs)["noise"] == first["noise"]
    assert score_holdout(objective, [], cfg, DistEnv(), collate_pairs) is None


def test_scoring_in_row_chunks_with_accum_steps_gives_the_same_numbers(tiny_world, tiny_clip):
    from common.data import open_caption_dataset
    from common.distributed import DistEnv
    from common.models import build_clip

    argv = refine_args(tiny_world, tiny_clip, "unused", "batch_size=12")[2:]
    cfg = load_config(refine.DEFAULTS, "configs/toy/refine.yaml", argv)
    model, _, preprocess, tokenizer = build_clip("ToyCLIP", tiny_clip)
    held_out = open_caption_dataset(cfg, preprocess).holdout(0.25, seed=42)[1]
    objective = refine.RefineObjective(cfg, model, tokenizer)
    whole = score_holdout(objective, held_out, cfg, DistEnv())
    chunked = score_holdout(objective, held_out, load_config(refine.DEFAULTS, "configs/toy/refine.yaml",
                                                             [*argv, "accum_steps=3"]),
                            DistEnv())
    assert whole.keys() == chunked.keys() and whole["holdout_items"] == 12
    for key in whole:
        assert chunked[key] == pytest.approx(whole[key], rel=1e-5, abs=1e-6), key


# --- TensorBoard ------------------------------------------------------------------------------------------------
def test_tensorboard_without_the_package_is_one_clear_error(tiny_world, tiny_clip, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(ConfigError, match=r"report_to=tensorboard needs the tensorboard package.*pip install "
                                          r"tensorboard"):
        refine.main(refine_args(tiny_world, tiny_clip, tmp_path / "run", "report_to=tensorboard", "max_steps=1"))
    assert not (tmp_path / "run" / "log.jsonl").exists(), "refused before training"
    with pytest.raises(ConfigError, match="report_to='wandb': use tensorboard"):
        refine.main(refine_args(tiny_world, tiny_clip, tmp_path / "run", "report_to=wandb", "max_steps=1"))


def test_tensorboard_gets_the_scalars_of_the_log_when_asked(tiny_world, tiny_clip, tmp_path, monkeypatch):
    written, writers = [], []

    class SummaryWriter:
        def __init__(self, log_dir):
            self.log_dir, self.closed = log_dir, False
            writers.append(self)

        def add_scalar(self, tag, value, step):
            written.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            self.closed = True

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = SummaryWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    run_dir = tmp_path / "run"
    refine.main(refine_args(tiny_world, tiny_clip, run_dir, "report_to=tensorboard", "holdout_fraction=0.25"))
    assert [w.log_dir for w in writers] == [str(run_dir / "tensorboard")] and writers[0].closed
    logged = {(r["split"], r["step"]): r for r in records(run_dir)}
    for split, step in logged:
        assert (f"{split}/loss", logged[split, step]["loss"], step) in written
    assert ("holdout/centroid_distance", logged["holdout", 4]["centroid_distance"], 4) in written
    assert ("train/steps_per_s", logged["train", 2]["steps_per_s"], 2) in written

    refine.main(refine_args(tiny_world, tiny_clip, tmp_path / "off", "max_steps=1"))  # off by default
    assert len(writers) == 1 and not (tmp_path / "off" / "tensorboard").exists()

"""Fault injection, fast cases: nothing silently wrong, nothing lost, and one clear line for every error a user can
cause. The kill -9 campaign is in tests/test_kills.py (`make test-faults`)."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

import evaluate
import refine
from common import run_dir as run_dir_module
from common.checkpoints import DiskFullError, atomic_torch_save, atomic_write, load_checkpoint_file
from common.config import ConfigError, load_config
from common.data import CsvPairs, ZeroShotTask
from crashes import SimulatedCrash, crash_before_step
from same_weights import assert_same_weights, weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def refine_args(world, clip, run_dir, *extra):
    """clip_refine on the 48 images of the tiny world: 6 steps of 8 per epoch, a checkpoint every 2."""
    return ["--config", "configs/toy/refine.yaml", f"run_dir={run_dir}", f"pretrained={clip}",
            f"train_data={world}/coco/captions_train.json", f"train_images={world}/coco/train", "batch_size=8",
            "holdout_fraction=0.0", "log_every=1", "checkpoint_every=2", "num_workers=0", *extra]


@pytest.fixture(scope="module")
def straight(tiny_world, tiny_clip, tmp_path_factory):
    """The uninterrupted reference run."""
    run_dir = tmp_path_factory.mktemp("straight")
    refine.main(refine_args(tiny_world, tiny_clip, run_dir))
    return weights(run_dir)


def crash_at(world, clip, run_dir, step, *extra):
    with crash_before_step(step), pytest.raises(SimulatedCrash):
        refine.main(refine_args(world, clip, run_dir, *extra))


# --- a run directory is owned by one run -------------------------------------------------------------------------
def test_resume_with_another_config_is_refused_and_names_the_keys(tiny_world, tiny_clip, tmp_path):
    crash_at(tiny_world, tiny_clip, tmp_path, 3)
    with pytest.raises(ConfigError, match=r"another configuration.*lr: 3e-05 -> 0\.001.*resume=force"):
        refine.main(refine_args(tiny_world, tiny_clip, tmp_path, "lr=1e-3"))
    with pytest.raises(ConfigError, match=r"batch_size: 8 -> 16"):
        refine.main(refine_args(tiny_world, tiny_clip, tmp_path, "batch_size=16"))
    with pytest.raises(ConfigError, match=r"objective: 'clip_refine' -> 'm2mix'"):  # another objective's state
        refine.main(refine_args(tiny_world, tiny_clip, tmp_path, "objective=m2mix"))
    assert "lr: 3.0e-05" in (tmp_path / "config.yaml").read_text()  # not overwritten by the refused runs
    refine.main(refine_args(tiny_world, tiny_clip, tmp_path, "lr=1e-3", "resume=force"))  # on purpose
    assert (tmp_path / "model.pt").exists()


def test_changed_training_data_is_refused(tiny_world, tiny_clip, tmp_path):
    data = tmp_path / "captions.json"
    shutil.copy(tiny_world / "coco/captions_train.json", data)
    crash_at(tiny_world, tiny_clip, tmp_path / "run", 3, f"train_data={data}")
    data.write_text(data.read_text().replace("A ", "One ", 1))
    with pytest.raises(ConfigError, match=r"train_data \(sha256\)"):
        refine.main(refine_args(tiny_world, tiny_clip, tmp_path / "run", f"train_data={data}"))


def test_second_process_on_a_run_dir_is_refused(tiny_world, tiny_clip, tmp_path):
    import fcntl
    tmp_path.mkdir(exist_ok=True)
    with open(tmp_path / ".lock", "w") as held:  # another process holds the lock (a second open file counts)
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 4242 on node7 since today\n")
        held.flush()
        with pytest.raises(run_dir_module.RunDirBusyError, match=r"in use by pid 4242 on node7.*use another run_dir"):
            refine.main(refine_args(tiny_world, tiny_clip, tmp_path))
    assert not (tmp_path / "log.jsonl").exists()


# --- writes leave nothing behind --------------------------------------------------------------------------------
def test_stale_temp_files_of_a_killed_writer_are_removed_at_start(tiny_world, tiny_clip, tmp_path):
    tmp_path.mkdir(exist_ok=True)
    stale = tmp_path / ".checkpoint.pt.tmp-99999-abcd"
    stale.write_bytes(b"x" * 1000)
    refine.main(refine_args(tiny_world, tiny_clip, tmp_path, "max_steps=1"))
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "config.yaml", "log.jsonl", "model.pt"]


def test_full_disk_names_the_file_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "model.pt"

    def torch_save_to_a_full_disk(_file):  # torch's own error for ENOSPC, from the real /dev/full
        with open("/dev/full", "wb") as full:
            torch.save({"w": torch.zeros(100_000)}, full)

    with pytest.raises(DiskFullError, match=r"cannot write .*model.pt: the disk is full \(\d+ MiB free"):
        atomic_write(target, torch_save_to_a_full_disk)

    def enospc(_file):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match="the disk is full"):
        atomic_write(target, enospc)
    assert list(tmp_path.iterdir()) == []


def test_failed_export_loses_nothing(tiny_world, tiny_clip, tmp_path, straight, monkeypatch):
    def disk_full(*args, **kwargs):
        raise DiskFullError(errno.ENOSPC, "cannot write model.pt: the disk is full")

    monkeypatch.setattr(refine, "save_clip_checkpoint", disk_full)
    with pytest.raises(DiskFullError):
        refine.main(refine_args(tiny_world, tiny_clip, tmp_path))
    assert load_checkpoint_file(tmp_path / "checkpoint.pt")["step"] == 6  # the last step, saved before the export
    monkeypatch.undo()
    refine.main(refine_args(tiny_world, tiny_clip, tmp_path))
    assert_same_weights(weights(tmp_path), straight)


def test_ctrl_c_saves_at_the_next_step_boundary_and_resumes_exactly(tiny_world, tiny_clip, tmp_path, straight,
                                                                   monkeypatch):
    forward, calls = refine.RefineObjective.forward, []

    def interrupted_during_step_4(self, batch, generator):
        calls.append(1)
        if len(calls) == 4:
            signal.raise_signal(signal.SIGINT)  # the real handler of common/run_dir.py runs here
        return forward(self, batch, generator)

    monkeypatch.setattr(refine.RefineObjective, "forward", interrupted_during_step_4)
    with pytest.raises(run_dir_module.StoppedForRequeue, match="stopped at step 4/6"):
        refine.main(refine_args(tiny_world, tiny_clip, tmp_path))
    assert load_checkpoint_file(tmp_path / "checkpoint.pt")["step"] == 4
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    monkeypatch.undo()
    refine.main(refine_args(tiny_world, tiny_clip, tmp_path))
    assert_same_weights(weights(tmp_path), straight)


# --- corrupted or wrong files -----------------------------------------------------------------------------------
def test_damaged_pretrained_files_are_named(tiny_world, tiny_clip, tmp_path):
    flipped = tmp_path / "flipped.pt"
    record = load_checkpoint_file(tiny_clip)
    atomic_torch_save(record, flipped)
    data = bytearray(flipped.read_bytes())
    weights_at = data.index(record["state_dict"]["logit_scale"].numpy().tobytes())  # a weight's raw bytes
    data[weights_at] ^= 0x01
    flipped.write_bytes(bytes(data))
    truncated, empty = tmp_path / "truncated.pt", tmp_path / "empty.pt"
    truncated.write_bytes(open(tiny_clip, "rb").read()[:5000])
    empty.write_bytes(b"")
    for path, message in ((flipped, "is corrupted: its tensors do not match the checksum"),
                          (truncated, "cannot read pretrained weights .*truncated.pt: it is truncated"),
                          (empty, "empty.pt is empty")):
        with pytest.raises(ValueError, match=message) as error:
            refine.main(refine_args(tiny_world, tiny_clip, tmp_path / path.stem, f"pretrained={path}"))
        assert "weights_only=False" not in str(error.value)


def test_checkpoint_passed_as_pretrained_is_refused(tiny_world, tiny_clip, tmp_path):
    crash_at(tiny_world, tiny_clip, tmp_path / "run", 3)
    with pytest.raises(ValueError, match="resumable training checkpoint, not a model: pass the model.pt"):
        refine.main(refine_args(tiny_world, tiny_clip, tmp_path / "b", f"pretrained={tmp_path}/run/checkpoint.pt"))


# --- bad data: found before training, with a count -------------------------------------------------------------
def write_coco(path, captions, image="x.png"):
    path.write_text(json.dumps({"images": [{"id": i, "file_name": image} for i in range(len(captions))],
                                "annotations": [{"image_id": i, "caption": c} for i, c in enumerate(captions)]}))


def test_bad_captions_fail_before_training_with_a_count(tiny_world, tiny_clip, tmp_path, capsys):
    images = tiny_world / "coco/train"
    image = sorted(os.listdir(images))[0]
    null = tmp_path / "null.json"
    write_coco(null, ["a red circle", None, 7], image)
    with pytest.raises(ValueError, match=r"null.json: 2 annotation\(s\) have no caption text.*annotations\[1\]"):
        refine.main(refine_args(tiny_world, tiny_clip, tmp_path / "a", f"train_data={null}"))
    blank = tmp_path / "pairs.csv"
    blank.write_text(f"filepath,short,long\n{images / image},a red circle,\n{images / image},,\n"
                     f"{images / image}, ,\n")
    with pytest.raises(ValueError, match=r"pairs.csv: 2 data row\(s\) have no non-empty caption \(first: data row 3\)"):
        CsvPairs(str(blank), None, caption_keys=["short", "long"])
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [{"id": 0, "file_name": image}, {"id": 1, "file_name": image}],
                                 "annotations": [{"image_id": 0, "caption": "a red circle"},
                                                 {"image_id": 0, "caption": ""},
                                                 {"image_id": 1, "caption": "a blue square"}]}))
    assert [c for caps in refine.open_caption_dataset(
        load_config(refine.DEFAULTS, None, [f"train_data={empty}", f"train_images={images}"]), None
    ).captions_per_image for c in caps] == ["a red circle", "a blue square"]
    assert "1 empty caption(s) ignored" in capsys.readouterr().out


def test_non_utf8_and_unreadable_images(tiny_world, tiny_clip, tmp_path):
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("filepath,title\nx.png,caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.csv: not UTF-8 text \(byte \d+\)"):
        CsvPairs(str(latin1), None)
    missing = tmp_path / "missing.json"
    write_coco(missing, ["a", "b"], "nope.png")
    with pytest.raises(FileNotFoundError, match=r"none of its 2 images exists \(first: .*nope.png\)"):
        refine.main(refine_args(tiny_world, tiny_clip, tmp_path / "m", f"train_data={missing}"))
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "x.png").write_bytes(b"not an image")
    junk = tmp_path / "junk.json"
    write_coco(junk, ["a"] * 16)
    with pytest.raises(ValueError, match="step 0: every image of the batch was unreadable"):
        refine.main(refine_args(tiny_world, tiny_clip, tmp_path / "j", f"train_data={junk}",
                                f"train_images={garbage}"))


def test_loop_settings_that_train_nothing_are_refused(tiny_world, tiny_clip, tmp_path):
    for bad, message in (("epochs=0", "epochs=0 must be at least 1 \\(epochs=0 would train nothing\\)"),
                         ("batch_size=0", "batch_size=0 must be at least 1"), ("log_every=0", "log_every=0"),
                         ("checkpoint_every=0", "checkpoint_every=0"), ("resume=maybe", "use auto or force")):
        with pytest.raises(ConfigError, match=message):
            refine.main(refine_args(tiny_world, tiny_clip, tmp_path / "r", bad))
    assert not (tmp_path / "r" / "model.pt").exists()


def test_duplicate_yaml_key_is_an_error(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("lr: 1.0e-5\nepochs: 2\nlr: 3.0e-5\n")
    with pytest.raises(ConfigError, match=r"c.yaml: key 'lr' appears twice \(line 3\)"):
        load_config(refine.DEFAULTS, str(config))


# --- evaluation -----------------------------------------------------------------------------------------------
def test_evaluate_needs_weights_tasks_and_whole_retrieval_specs(tiny_world, tiny_clip, tmp_path):
    base = ["--config", "configs/toy/eval.yaml", f"data_root={tiny_world}", f"out_dir={tmp_path}/e",
            "num_workers=0"]
    with pytest.raises(ConfigError, match="pretrained is not set.*pretrained=random"):
        evaluate.main(base)
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        evaluate.main(base + [f"pretrained={tiny_clip}", "zeroshot={}", "retrieval={}", "pairs={}",
                              "hard_negatives={}"])
    with pytest.raises(ConfigError, match="retrieval set 'coco_val' needs annotations"):
        evaluate.main(base + [f"pretrained={tiny_clip}", "retrieval={coco_val: {annotations: a.json}}"])
    assert not (tmp_path / "e" / "done").exists()
    evaluate.main(base + ["pretrained=random", "arch=ToyCLIP", "zeroshot={size: zeroshot/size}", "retrieval={}",
                          "gap_sets=[]"])  # on purpose; random init has no file to read the arch from
    assert (tmp_path / "e" / "done").exists()


def test_template_with_another_field_is_an_error(tiny_world, tmp_path):
    task = tmp_path / "shape"
    shutil.copytree(tiny_world / "zeroshot/shape", task)
    (task / "templates.txt").write_text("a photo of a {c}.\na {0} of {c}\n")
    with pytest.raises(ValueError, match=r"templates.txt: template 'a \{0\} of \{c\}' must hold \{c\}"):
        ZeroShotTask(str(task), None)


# --- on the command line: one line, no traceback -----------------------------------------------------------------
@pytest.mark.parametrize("debug", ["", "1"])
def test_command_line_errors_are_one_line(tmp_path, debug):
    env = dict(os.environ, POSTCLIP_DEBUG=debug)
    result = subprocess.run([sys.executable, "refine.py", "--config", "configs/toy/refine.yaml", "run_dir=",
                             "pretrained="], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    if debug:
        assert "Traceback" in result.stderr and "run_dir is not set" in result.stderr
    else:
        assert result.stderr.strip() == ("refine.py: error: run_dir is not set: pass run_dir=PATH (e.g. "
                                         "runs/toy/refine/clip_refine)")
        assert result.returncode == 2

"""The figures `make reproduce-table1` leaves beside the tables, made by the Makefile's own commands on a tiny
reproduction: the training curves of every run (tools/curves.py) and the gap figures of every row on one PCA
(tools/tables.py modality_gap_figure), each with one panel per row and the tables' numbers in its titles."""
import json
import os
import shlex
import shutil
import statistics
import subprocess

import pytest
from PIL import Image

import evaluate
import refine
from common.checkpoints import atomic_torch_save, load_checkpoint_file
from common.metrics import modality_gap_stats
from tools import curves, tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = (0, 1)
PROCLIP_FIGURE_ROWS = ["pretrained", "llm2clip", "proclip_stage1", "proclip"]
GAP_KEYS = ["centroid_distance", "centroid_sqdist_per_dim", "pair_distance", "relative_gap", "alignment",
            "uniformity"]  # the held-out score's statistics (docs/watching.md)


def fake_rows(results):
    """Every post-trained row of both papers, per seed, from the tiny CLIP's evaluation: its texts moved a share
    (a different one per row and seed) of the way to the images' centroid, and the gap statistics of those."""
    base = load_checkpoint_file(results / "pretrained" / "coco_val_pair_features.pt")
    rows = [*refine.OBJECTIVES, *PROCLIP_FIGURE_ROWS[1:]]
    for i, row in enumerate(rows):
        for seed in SEEDS:
            out = results / row / f"seed{seed}"
            shutil.copytree(results / "pretrained", out)
            share = 0.1 * ((3 * i) % len(rows)) + 0.03 * seed  # rows not in the order of their gaps
            text = base["text"] + share * (base["image"].mean(0) - base["text"].mean(0))
            atomic_torch_save({"image": base["image"], "text": text}, out / "coco_val_pair_features.pt")
            record = json.load(open(out / "coco_val_modality_gap.json"))
            record["metrics"].update(modality_gap_stats(base["image"], text, probe=False))
            json.dump(record, open(out / "coco_val_modality_gap.json", "w"))


def pretrain_log(run_dir):
    """A run without seeds, resumed once (steps 20 and 30 logged twice: the second line counts) and killed while
    writing its last line."""
    os.makedirs(run_dir)
    lines = [{"split": "train", "step": step, "loss": loss, "logit_scale": 10.0 + step, "lr": 1e-3}
             for step, loss in ((10, 4.0), (20, 3.0), (30, 2.5), (20, 2.9), (30, 2.4), (40, 2.0))]
    with open(os.path.join(run_dir, "log.jsonl"), "w") as f:
        f.write("".join(json.dumps(line) + "\n" for line in lines) + '{"split": "train", "st')


def makefile_commands(runs, results, *modules):
    """The Makefile's commands of reproduce-table1 that run these modules, with RUNS and RESULTS set (make -n)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    out = subprocess.run(["make", "--no-print-directory", "-n", "-B", "reproduce-table1", "PYTHON=python",
                          f"SEEDS={' '.join(map(str, SEEDS))}", f"RUNS={runs}", f"RESULTS={results}"], cwd=ROOT,
                         env=env, capture_output=True, text=True, check=True).stdout
    argvs = [shlex.split(line) for line in out.replace("\\\n", " ").splitlines() if line.strip()]
    return [argv for argv in argvs if argv[:3] in (["python", "-m", m] for m in modules)]


@pytest.fixture(scope="module")
def reproduced(tiny_world, tiny_clip, tmp_path_factory):
    """A tiny reproduction's runs and results, then the Makefile's figure and curve commands run on them."""
    root = tmp_path_factory.mktemp("reproduced")
    runs, results = root / "runs", root / "results"
    evaluate.main(["--config", "configs/toy/eval.yaml", f"data_root={tiny_world}", f"pretrained={tiny_clip}",
                   f"out_dir={results / 'pretrained'}", "batch_size=64", "num_workers=0"])
    fake_rows(results)
    tables.refine_table(str(results), seeds=list(SEEDS))
    for seed in SEEDS:  # 48 images, 12 held out, batch 8: 4 steps, the held-out split scored every 2
        refine.main(["--config", "configs/toy/refine.yaml", f"run_dir={runs}/refine/clip_refine/seed{seed}",
                     f"pretrained={tiny_clip}", f"train_data={tiny_world}/coco/captions_train.json",
                     f"train_images={tiny_world}/coco/train", "batch_size=8", "max_steps=4", "log_every=1",
                     "holdout_fraction=0.25", "holdout_every=2", "lr=1e-4", "num_workers=0", f"seed={seed}"])
    pretrain_log(runs / "pretrain")
    commands = makefile_commands(runs, results, "tools.tables", "tools.curves")
    for argv in commands:
        if argv[3] == "figure":
            tables.main(argv[3:])
        elif argv[2] == "tools.curves":
            curves.main(argv[3:])
    return runs, results, commands


def read_log(run_dir):
    return [json.loads(line) for line in open(os.path.join(run_dir, "log.jsonl"))]


def test_the_makefile_draws_the_curves_and_three_gap_figures(reproduced):
    runs, results, commands = reproduced
    assert [argv for argv in commands if argv[2] == "tools.curves"] == [
        ["python", "-m", "tools.curves", str(runs), f"{results}/curves"]]
    names = [argv[argv.index("--name") + 1] if "--name" in argv else "modality_gap" for argv in commands
             if argv[3] == "figure"]
    assert names == ["modality_gap", "modality_gap_refine", "modality_gap_proclip"]


def test_every_run_has_its_curves_with_a_panel_per_number_of_its_log(reproduced):
    runs, results, _ = reproduced
    for row in ("refine/clip_refine", "pretrain"):
        with Image.open(results / "curves" / f"{row}.png") as image:
            assert image.format == "PNG" and image.size[0] > 1000
    drawn = json.load(open(results / "curves" / "refine" / "clip_refine.json"))
    assert drawn["runs"] == [f"{runs}/refine/clip_refine/seed{s}" for s in SEEDS]
    titles = [panel["title"] for panel in drawn["panels"]]
    terms = ["infonce", "logit_scale", "image_norm", "text_norm", "rafa", "hycd"]  # refine.py's logs, in order
    assert titles == ["loss", *terms, "lr", *GAP_KEYS]
    panels = {panel["title"]: panel for panel in drawn["panels"]}
    logs = [read_log(runs / "refine" / "clip_refine" / f"seed{s}") for s in SEEDS]
    for title, split, steps in (("loss", "train", [1, 2, 3, 4]), ("loss", "holdout", [0, 2, 4]),
                                ("hycd", "holdout", [0, 2, 4]), ("centroid_distance", "holdout", [0, 2, 4])):
        curve = panels[title][split]
        assert curve["step"] == steps and curve["seeds"] == [2] * len(steps)
        for i, step in enumerate(steps):
            values = [r[title] for log in logs for r in log if r["split"] == split and r["step"] == step]
            assert curve["mean"][i] == pytest.approx(statistics.mean(values), rel=1e-12)
            assert (curve["low"][i], curve["high"][i]) == (min(values), max(values))
    assert "holdout" not in panels["lr"] and "train" not in panels["centroid_distance"]

    one = json.load(open(results / "curves" / "pretrain.json"))
    assert [panel["title"] for panel in one["panels"]] == ["loss", "logit_scale", "lr"]
    assert one["panels"][0]["train"]["step"] == [10, 20, 30, 40]
    assert one["panels"][0]["train"]["mean"] == [4.0, 2.9, 2.4, 2.0]  # the resumed run's lines count


def markdown_row(path, label):
    for line in open(path, encoding="utf-8"):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "Method":
            columns = cells
        elif cells[0] == label:
            return dict(zip(columns, cells))
    raise AssertionError(f"no row {label!r} in {path}")


def test_the_gap_of_every_clip_refine_row_is_titled_with_the_tables_cells(reproduced):
    _, results, _ = reproduced
    drawn = json.load(open(results / "modality_gap_refine.json"))
    assert [panel["row"] for panel in drawn["panels"]] == ["pretrained", *refine.OBJECTIVES]
    for panel in drawn["panels"]:
        cells = markdown_row(results / "table1_refine.md", panel["label"])
        assert panel["title"] == (f"centroid distance {cells['centroid_distance']}\n"
                                  f"relative gap {cells['relative_gap']}")
    assert "±" in drawn["panels"][1]["title"]  # the seeds' spread, as in the table
    with Image.open(results / "modality_gap_refine.png") as image:  # 7 panels: 2 lines of 4
        assert image.format == "PNG" and image.size[0] > image.size[1] > 700
    assert [panel["row"] for panel in json.load(open(results / "modality_gap.json"))["panels"]] == [
        "pretrained", "clip_refine"]


def test_the_proclip_rows_gap_figure_and_its_caption_read_the_evaluations(reproduced):
    _, results, _ = reproduced
    drawn = json.load(open(results / "modality_gap_proclip.json"))
    assert [panel["row"] for panel in drawn["panels"]] == PROCLIP_FIGURE_ROWS
    distances = {}
    for panel in drawn["panels"][1:]:
        values = [json.load(open(results / panel["row"] / f"seed{s}" / "coco_val_modality_gap.json"))["metrics"]
                  for s in SEEDS]
        for key in ("centroid_distance", "relative_gap"):
            mean, sd = statistics.mean(v[key] for v in values), statistics.stdev(v[key] for v in values)
            assert f"{key.replace('_', ' ')} {mean:.3f} ± {sd:.3f}" in panel["title"]
        distances[panel["label"]] = statistics.mean(v["centroid_distance"] for v in values)
    closest, farthest = min(distances, key=distances.get), max(distances, key=distances.get)
    assert f"{closest} the most ({distances[closest]:.3f}," in drawn["caption"]
    assert f"while {farthest} closes the gap least ({distances[farthest]:.3f}," in drawn["caption"]


def test_a_row_without_results_or_runs_without_logs_is_one_clear_error(reproduced, tmp_path):
    _, results, _ = reproduced
    with pytest.raises(FileNotFoundError, match=r"no results in .*nothing.*make reproduce-table1"):
        tables.main(["figure", str(results), "--rows", "pretrained,nothing", "--name", "x"])
    with pytest.raises(FileNotFoundError, match=r"no run with a log.jsonl under .*make reproduce-table1"):
        curves.main([str(tmp_path), str(tmp_path / "curves")])
    (tmp_path / "started").mkdir()
    (tmp_path / "started" / "log.jsonl").write_text("")  # a run that has only started: left out, said
    assert curves.draw_all(str(tmp_path), str(tmp_path / "curves")) == {"started": None}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "log.jsonl").write_text('{"split": "train", "st\n{"split": "train", "step": 1}\n')
    with pytest.raises(ValueError, match=r"run/log.jsonl, line 1: not a JSON line"):  # only the last may be cut
        curves.main([str(tmp_path), str(tmp_path / "curves")])

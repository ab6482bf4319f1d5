"""evaluate.py on a tiny world and a tiny CLIP: the CLIP_benchmark-style JSON files, and the tables."""
import csv
import json
import shutil

import pytest
from PIL import Image

import evaluate
from common import tables


def test_evaluate_writes_one_json_per_dataset_and_task(tiny_world, tiny_clip, tmp_path):
    out = tmp_path / "results" / "pretrained"
    evaluate.main(["--config", "configs/toy/eval.yaml", f"data_root={tiny_world}", f"pretrained={tiny_clip}",
                   f"out_dir={out}", "batch_size=64", "num_workers=0"])
    names = sorted(p.name for p in out.glob("*.json"))
    tasks = ["color", "count", "position", "shape", "shape_color", "shape_shifted", "size"]
    assert names == sorted([f"{t}_zeroshot_classification.json" for t in tasks]
                           + [f"{s}_zeroshot_retrieval.json" for s in ("coco_val", "long_val", "paraphrase_val")]
                           + ["coco_val_modality_gap.json"])
    record = json.load(open(out / "shape_zeroshot_classification.json"))
    # CLIP_benchmark's keys, plus the metric the table reads (zeroshot_metric; top-1 unless the suite says otherwise)
    assert set(record) == {"dataset", "model", "pretrained", "task", "metrics", "language", "main_metric"}
    assert record["model"] == "pretrained" and record["task"] == "zeroshot_classification"
    assert record["main_metric"] == "acc1"
    assert set(record["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert "acc5" not in json.load(open(out / "size_zeroshot_classification.json"))["metrics"]  # 2 classes
    retrieval = json.load(open(out / "coco_val_zeroshot_retrieval.json"))["metrics"]
    assert retrieval["image_retrieval_recall@10"] >= retrieval["image_retrieval_recall@1"]
    gap = json.load(open(out / "coco_val_modality_gap.json"))["metrics"]
    assert set(gap) == set(tables.GAP_STATISTICS)
    assert (out / "done").exists() and (out / "eval_config.yaml").exists()

    # the gap figure reads the saved pair features of two rows
    shutil.copytree(out, tmp_path / "results" / "clip_refine")
    png = tables.modality_gap_figure(str(tmp_path / "results"))
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > image.size[1] > 300
    first = open(png, "rb").read()
    assert open(tables.modality_gap_figure(str(tmp_path / "results")), "rb").read() == first  # deterministic


def test_unknown_gap_set_is_refused(tiny_world, tiny_clip, tmp_path):
    with pytest.raises(ValueError, match=r"gap_sets \['coco'\] are not retrieval sets"):
        evaluate.main(["--config", "configs/toy/eval.yaml", f"data_root={tiny_world}", f"pretrained={tiny_clip}",
                       f"out_dir={tmp_path}", "gap_sets=[coco]"])


def fake_result(folder, dataset, task, metrics):
    folder.mkdir(parents=True, exist_ok=True)
    record = {"dataset": dataset, "model": folder.name, "pretrained": "", "task": task, "metrics": metrics,
              "language": "en"}
    (folder / f"{dataset}_{task}.json").write_text(json.dumps(record))


def test_refine_table_is_built_from_the_files_and_states_the_claims(tmp_path):
    for i, (row, _) in enumerate(tables.REFINE_ROWS):
        folder = tmp_path / row
        fake_result(folder, "shape", "zeroshot_classification", {"acc1": 0.5 + 0.01 * i})
        fake_result(folder, "color", "zeroshot_classification", {"acc1": 0.7})
        fake_result(folder, "coco_val", "zeroshot_retrieval",
                    {"image_retrieval_recall@1": 0.25, "text_retrieval_recall@1": 0.5})
        fake_result(folder, "coco_val", "modality_gap", {s: 1.0 - 0.1 * i for s in tables.GAP_STATISTICS})
    text = tables.refine_table(str(tmp_path))
    rows = list(csv.reader(open(tmp_path / "table1_refine.csv")))
    assert rows[0][:4] == ["Method", "color", "shape", "mean zero-shot"]
    assert [r[0] for r in rows[1:]] == [label for _, label in tables.REFINE_ROWS]
    clip_refine = rows[-1]  # i = 6: shape 56%, color 70%, mean 63%
    assert float(clip_refine[2]) == pytest.approx(56.0) and float(clip_refine[3]) == pytest.approx(63.0)
    assert float(clip_refine[4]) == pytest.approx(25.0) and float(clip_refine[5]) == pytest.approx(50.0)
    assert "shrinks the gap — holds" in text and "keeps mean zero-shot — holds" in text
    assert "52.74" in text, "the paper's numbers stand beside ours"
    assert (tmp_path / "table1_refine.md").read_text() == text


def test_table_with_a_missing_row_is_an_error_not_a_table(tmp_path):
    fake_result(tmp_path / "pretrained", "shape", "zeroshot_classification", {"acc1": 0.5})
    with pytest.raises(FileNotFoundError, match="no results in .*contrastive"):
        tables.refine_table(str(tmp_path))
    assert not (tmp_path / "table1_refine.md").exists()

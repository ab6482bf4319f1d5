"""common/data.py on generated files: the toy world's real formats, and every bad-input error."""
import csv
import json
import re
import shutil

import pytest
from torchvision import transforms

from common.data import CocoCaptions, CsvPairs, ZeroShotTask, collate_pairs

TO_TENSOR = transforms.ToTensor()


def test_coco_captions_one_caption_per_image_per_epoch(tiny_world):
    ds = CocoCaptions(str(tiny_world / "coco/captions_train.json"), str(tiny_world / "coco/train"), TO_TENSOR)
    coco = json.load(open(tiny_world / "coco/captions_train.json"))
    assert len(ds) == len(coco["images"]) == 48
    assert len(ds.captions) == 5 * 48 and ds.text_to_image.tolist() == [i for i in range(48) for _ in range(5)]
    image, caption = ds[3]
    assert image.shape == (3, 32, 32) and caption in ds.captions_per_image[3]
    epoch0 = [ds[i][1] for i in range(48)]
    assert epoch0 == [ds[i][1] for i in range(48)], "same epoch, same captions (resume-safe)"
    ds.set_epoch(1)
    assert epoch0 != [ds[i][1] for i in range(48)], "a new epoch draws other captions"


def test_csv_pairs_with_several_caption_columns(tiny_world):
    ds = CsvPairs(str(tiny_world / "recaption.csv"), TO_TENSOR, caption_keys=["short", "long"])
    rows = list(csv.DictReader(open(tiny_world / "recaption.csv")))
    assert len(ds) == len(rows) == 96
    drawn = [ds[i][1] for i in range(len(ds))]
    assert all(c in (r["short"], r["long"]) for c, r in zip(drawn, rows))
    assert any(c == r["short"] for c, r in zip(drawn, rows)) and any(c == r["long"] for c, r in zip(drawn, rows))


def test_holdout_is_disjoint_and_seeded(tiny_world):
    ds = CsvPairs(str(tiny_world / "pretrain.csv"), TO_TENSOR)
    train, val = ds.holdout(0.25, seed=42)
    assert len(train) == 72 and len(val) == 24
    assert not set(train.image_paths) & set(val.image_paths)
    assert ds.holdout(0.25, seed=42)[1].image_paths == val.image_paths


def test_corrupt_image_is_skipped_and_counted_in_training_but_an_error_in_evaluation(tiny_world, tmp_path):
    root = tmp_path / "coco"
    shutil.copytree(tiny_world / "coco", root)
    coco = json.load(open(root / "captions_train.json"))
    bad = root / "train" / coco["images"][2]["file_name"]
    bad.write_bytes(b"\x89PNG truncated")
    ds = CocoCaptions(str(root / "captions_train.json"), str(root / "train"), TO_TENSOR)
    batch = collate_pairs([ds[i] for i in range(4)])
    assert batch["skipped"] == 1 and batch["images"].shape[0] == 3 and len(batch["captions"]) == 3
    with pytest.raises(ValueError, match=f"cannot read image .*{bad.name}"):
        ds.load_eval_image(2)


def test_missing_files_columns_and_empty_splits(tiny_world, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json not found"):
        CocoCaptions(str(tmp_path / "nope.json"), str(tiny_world / "coco/train"), TO_TENSOR)
    with pytest.raises(FileNotFoundError, match="image folder .*missing"):
        CocoCaptions(str(tiny_world / "coco/captions_train.json"), str(tmp_path / "missing"), TO_TENSOR)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['caption'\]; columns found: \['filepath', 'title'\]"):
        CsvPairs(str(tiny_world / "pretrain.csv"), TO_TENSOR, caption_keys=["caption"])
    with pytest.raises(ValueError, match=r"Set csv_image_key=COLUMN .* and csv_caption_keys=\[COLUMN,...\]"):
        CsvPairs(str(tiny_world / "pretrain.csv"), TO_TENSOR, image_key="image")
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(ValueError, match="empty.json: no image-caption pairs"):
        CocoCaptions(str(empty), str(tiny_world / "coco/train"), TO_TENSOR)
    not_coco = tmp_path / "list.json"
    not_coco.write_text("[1, 2]")
    with pytest.raises(ValueError, match="list.json: not a COCO captions file"):
        CocoCaptions(str(not_coco), str(tiny_world / "coco/train"), TO_TENSOR)


def test_zero_shot_task_reads_classnames_templates_and_folders(tiny_world, tmp_path):
    task = ZeroShotTask(str(tiny_world / "zeroshot/shape"), TO_TENSOR)
    assert len(task.classnames) == len(task.images.classes) == 6
    assert [c.replace(" ", "_") for c in task.classnames] == task.images.classes
    image, label = task.images[0]
    assert image.shape == (3, 32, 32) and label == 0
    broken = tmp_path / "shape"
    shutil.copytree(tiny_world / "zeroshot/shape", broken)
    lines = (broken / "classnames.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == task.images.classes  # the `folder<TAB>name` form
    (broken / "classnames.txt").write_text("\n".join(lines[:2]) + "\n")
    with pytest.raises(ValueError, match=f"2 lines for 6 class folders in test/: class folder "
                                         f"'{task.images.classes[2]}' has no line"):
        ZeroShotTask(str(broken), TO_TENSOR)
    # same count, another order: caught by name, naming the file and the first line that differs
    (broken / "classnames.txt").write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{broken}/classnames.txt:1: '{task.images.classes[1]}' does "
                                                   f"not match class folder 1 of test/ ('{task.images.classes[0]}'")):
        ZeroShotTask(str(broken), TO_TENSOR)
    # plain names are accepted where they spell the folder (spaces as `_`), and checked the same way
    plain = [line.split("\t")[1] for line in lines]
    (broken / "classnames.txt").write_text("\n".join(plain) + "\n")
    assert ZeroShotTask(str(broken), TO_TENSOR).classnames == task.classnames
    (broken / "classnames.txt").write_text("\n".join(plain[:-1] + ["not a shape"]) + "\n")
    with pytest.raises(ValueError, match="classnames.txt:6: 'not a shape' does not match class folder 6"):
        ZeroShotTask(str(broken), TO_TENSOR)
    (broken / "templates.txt").unlink()
    with pytest.raises(FileNotFoundError, match="templates.txt"):
        ZeroShotTask(str(broken), TO_TENSOR)
    bad_image = next((tiny_world / "zeroshot/color/test").rglob("*.png"))
    copy = tmp_path / "color"
    shutil.copytree(tiny_world / "zeroshot/color", copy)
    (copy / bad_image.relative_to(tiny_world / "zeroshot/color")).write_bytes(b"garbage")
    task = ZeroShotTask(str(copy), TO_TENSOR)
    with pytest.raises(ValueError, match=f"cannot read image .*{bad_image.name}"):
        [task.images[i] for i in range(len(task.images))]

"""tools/paper_data.py on fake copies of the datasets in their distributed formats (tests/paper_fakes.py)."""
import csv
import json
import os
import shutil
import sys

import pytest
import yaml

from tools import paper_data
from common.data import ZeroShotTask, read_classnames

sys.path.insert(0, os.path.dirname(__file__))
import paper_fakes  # noqa: E402


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Fakes of every dataset, converted: (data_root, what prepare printed)."""
    root = tmp_path_factory.mktemp("paper") / "data"
    paper_fakes.main(str(root))
    log = tmp_path_factory.mktemp("log") / "prepare.txt"
    with open(log, "w") as out:
        paper_data.prepare(str(root), skip_checksums=True, out=out)
    return root, log.read_text()


def test_every_dataset_is_converted_and_every_path_checks(prepared):
    root, log = prepared
    for key in paper_data.DATASETS:
        assert f"{key}: " in log
    assert paper_data.data_problems(str(root)) == []


def test_zero_shot_sets_keep_the_real_class_names_in_label_order(prepared):
    root, _ = prepared
    names = {key: [n for _, n in read_classnames(root / "zeroshot" / key / "classnames.txt")] for key in
             ("imagenet", "pets", "caltech101", "birds", "ucf101", "sun397")}
    assert names["imagenet"] == ["tench", "goldfish", "great white shark"]          # CLIP_benchmark's names
    assert names["pets"] == ["Abyssinian", "American Bulldog", "American Pit Bull Terrier"]
    assert names["caltech101"] == ["background", "off-center face", "centered face"]
    assert names["birds"] == ["Black footed Albatross", "Laysan Albatross", "Sooty Albatross"]
    assert names["ucf101"] == ["Apply Eye Makeup", "Apply Lipstick", "Archery"]
    assert names["sun397"] == ["abbey", "airplane cabin", "balcony exterior"]
    task = ZeroShotTask(str(root / "zeroshot/imagenet"), None)
    assert len(task.images) == 3 * paper_fakes.PER_CLASS and len(task.templates) == 80  # CLIP's ImageNet ensemble
    # CUB: only the test split (train_test_split.txt = 0); the fakes put 1 of 3 images per class in train
    assert len(ZeroShotTask(str(root / "zeroshot/birds"), None).images) == 3 * paper_fakes.PER_CLASS


def test_retrieval_sets_are_coco_json_of_the_test_split(prepared):
    root, _ = prepared
    coco = json.loads((root / "retrieval/coco_5k/captions.json").read_text())
    n = paper_fakes.N_RETRIEVAL
    assert len(coco["images"]) == n and len(coco["annotations"]) == 5 * n  # Karpathy test only, 5 captions each
    assert all((root / "retrieval/coco_5k/images" / im["file_name"]).is_file() for im in coco["images"])
    for key in ("sharegpt4v_1k", "urban_1k", "docci", "dci"):  # long captions: 1:1
        coco = json.loads((root / "retrieval" / key / "captions.json").read_text())
        assert len(coco["images"]) == len(coco["annotations"]) == n, key
    first = json.loads((root / "retrieval/sharegpt4v_1k/captions.json").read_text())["annotations"][0]["caption"]
    assert first.startswith("A long fake description 0.")  # the gpt turn, not the human prompt


def test_imagenet_variants_have_imagenets_names_masked_to_their_classes(prepared):
    root, log = prepared
    names = {key: [n for _, n in read_classnames(root / "zeroshot" / key / "classnames.txt")] for key in
             ("imagenet_v2", "imagenet_a", "imagenet_r", "imagenet_sketch")}
    assert names["imagenet_v2"] == ["tench", "goldfish", "great white shark"]      # folders 0, 1, 2
    assert names["imagenet_a"] == ["stingray", "goldfinch", "junco"]               # the first wnids of ImageNet-A
    assert names["imagenet_r"] == ["goldfish", "great white shark", "hammerhead shark"]
    assert names["imagenet_sketch"] == ["tench", "goldfish", "great white shark"]
    assert "imagenet_a: 3 images, 3 classes (197 of 200 classes" in log              # CLIP_benchmark's 200 wnids
    assert "imagenet_r: 3 images, 3 classes (197 of 200 classes" in log
    assert "imagenet_v2: 3 images, 3 classes (997 of 1000 classes" in log
    for key in names:  # the README beside ImageNet-A's folders is not an image; ImageNet's 80 prompts
        task = ZeroShotTask(str(root / "zeroshot" / key), None)
        assert len(task.images) == 3 * paper_fakes.PER_CLASS and len(task.templates) == 80, key


def test_xm3600_is_one_set_per_language_on_one_image_folder(prepared):
    root, _ = prepared
    languages = paper_data.xm3600_languages()
    assert len(languages) == 36 and "no" in languages and "quz" in languages
    sets = yaml.safe_load(open("configs/paper/eval_proclip.yaml"))["retrieval"]
    xm = {name: spec for name, spec in sets.items() if name.startswith("xm3600_")}
    assert [spec["language"] for spec in xm.values()] == languages  # strings: "no" is not a boolean
    assert {spec["images"] for spec in xm.values()} == {"retrieval/xm3600/images"}
    lines = [json.loads(line) for line in open(root / "downloads/xm3600/captions.jsonl", encoding="utf-8")]
    for name, spec in xm.items():
        coco = json.loads((root / spec["annotations"]).read_text(encoding="utf-8"))
        assert [im["file_name"] for im in coco["images"]] == [f"{e['image/key']}.jpg" for e in lines]
        assert [a["caption"] for a in coco["annotations"]] == [e[spec["language"]]["caption"][0] for e in lines]
        assert [a["image_id"] for a in coco["annotations"]] == [im["id"] for im in coco["images"]]  # 1:1
    assert all((root / "retrieval/xm3600/images" / f"{e['image/key']}.jpg").is_file() for e in lines)


def test_mmvp_vlm_pairs_are_read_as_evaluate_vlm_reads_them(prepared, tmp_path):
    root, _ = prepared
    pairs = json.loads((root / "pairs/mmvp_vlm/pairs.json").read_text())["pairs"]
    rows = list(csv.DictReader(open(root / "downloads/mmvp_vlm/Questions.csv", newline="")))
    assert [p["pattern"] for p in pairs] == paper_fakes.MMVP_PATTERNS
    for pair, first, second in zip(pairs, rows[::2], rows[1::2]):  # consecutive rows; statement k -> image k
        assert pair["captions"] == ["a photo of " + first["Statement"], "a photo of " + second["Statement"]]
        assert [os.path.basename(i) for i in pair["images"]] == [f"{first['Question ID']}.jpg",
                                                                 f"{second['Question ID']}.jpg"]
        assert all((root / "pairs/mmvp_vlm/images" / i).is_file() for i in pair["images"])
    assert "," in pairs[0]["captions"][0]  # a quoted CSV field with a comma stays whole
    # rows out of their order: the pair rule cannot hold, so nothing is written
    sources = tmp_path / "downloads"
    shutil.copytree(root / "downloads/mmvp_vlm", sources / "mmvp_vlm")
    lines = (sources / "mmvp_vlm/Questions.csv").read_text().splitlines()
    (sources / "mmvp_vlm/Questions.csv").write_text("\n".join([lines[0], lines[2], lines[1], *lines[3:]]) + "\n")
    with pytest.raises(paper_data.DataError) as error:
        paper_data.prepare(str(tmp_path), only=["mmvp_vlm"], out=open(os.devnull, "w"))
    lines = str(error.value).splitlines()  # the header, the problem, then how many datasets are ready
    assert "rows 2 and 1 are not a pair" in lines[1] and len(lines) == 3 and " ready under " in lines[2]
    assert not (tmp_path / "pairs/mmvp_vlm").exists()


def test_sugarcrepe_subsets_are_items_on_coco_val2017(prepared):
    root, _ = prepared
    sets = yaml.safe_load(open("configs/paper/eval_refine.yaml"))["hard_negatives"]
    assert sets == yaml.safe_load(open("configs/paper/eval_proclip.yaml"))["hard_negatives"]  # both papers' rows
    assert sorted(sets) == [f"sugarcrepe_{s}" for s in paper_data.SUGARCREPE_SUBSETS]
    for subset in paper_data.SUGARCREPE_SUBSETS:
        source = json.load(open(root / f"downloads/sugar-crepe/data/{subset}.json"))
        items = json.loads((root / f"hard_negatives/sugarcrepe/{subset}.json").read_text())["items"]
        assert items == [{"image": e["filename"], "positive": e["caption"], "negative": e["negative_caption"]}
                         for e in source.values()]
        assert all((root / sets[f"sugarcrepe_{subset}"]["images"] / it["image"]).is_file() for it in items)


def test_the_probe_sets_are_read_without_clip_benchmarks_builders_or_the_network(tmp_path, monkeypatch):
    """Those builders download whenever a file is missing, whatever download= says: they are never called."""
    import socket

    from clip_benchmark.datasets import builder

    def refuse(*args, **kwargs):
        raise AssertionError("nothing may download")
    monkeypatch.setattr(builder, "build_dataset", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    root = tmp_path / "data"
    paper_fakes.main(str(root))
    keys = ["imagenet_v2", "imagenet_a", "imagenet_r", "imagenet_sketch", "xm3600", "mmvp_vlm", "sugarcrepe"]
    paper_data.prepare(str(root), only=keys, out=open(os.devnull, "w"))
    assert all((root / paper_data.converted(key)).is_dir() for key in keys)
    shutil.rmtree(root / "downloads")  # now every download is missing: one line each, nothing fetched
    for key in keys:
        shutil.rmtree(root / paper_data.converted(key))
    with pytest.raises(paper_data.DataError) as error:
        paper_data.prepare(str(root), only=keys, out=open(os.devnull, "w"))
    lines = str(error.value).splitlines()  # the header, one line per dataset, how many are ready
    assert len(lines) == 1 + len(keys) + 1 and " ready under " in lines[-1]
    assert "xm3600/captions.jsonl" in str(error.value) and "mmvp_vlm/Questions.csv" in str(error.value)


def test_a_missing_probe_file_is_one_line_from_check_data(prepared, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(prepared[0], root, symlinks=True, ignore=shutil.ignore_patterns("downloads"))
    (root / "pairs/mmvp_vlm/pairs.json").unlink()
    shutil.rmtree(root / "retrieval/xm3600")          # read by 36 sets: still one line
    shutil.rmtree(root / "hard_negatives/sugarcrepe")  # read by 7 sets
    with pytest.raises(SystemExit) as error:
        paper_data.main(["check", "--data-root", str(root)])
    lines = str(error.value).splitlines()
    assert lines[0] == f"tools.paper_data: 3 data problem(s) under {root} (nothing was started):", lines
    redo = f'convert it again: make data PRESET=paper DATA_ROOT={root} DATA_ARGS="--only mmvp_vlm"'
    assert f"  pairs mmvp_vlm: {root}/pairs/mmvp_vlm/pairs.json not found; {redo}" in lines  # its folder is there
    for key, folder in (("xm3600", "retrieval/xm3600"), ("sugarcrepe", "hard_negatives/sugarcrepe")):
        assert any(line.startswith(f"  {key}: {root}/{folder} not found; run `make data") for line in lines), key
    (root / "pairs/mmvp_vlm/pairs.json").write_text(json.dumps({"pairs": [{"pattern": "Orientation", "images": [
        "a.jpg", "b.jpg", "c.jpg"], "captions": ["a", "b"]}]}))  # three images for two captions
    assert [p for p in paper_data.data_problems(str(root), ["refine"]) if "mmvp" in p] == [
        f"pairs mmvp_vlm: {root}/pairs/mmvp_vlm/pairs.json is not a pairs file {{\"pairs\": [{{\"pattern\", "
        f"\"images\": [2], \"captions\": [2]}}, ...]}}; {redo}"]


def test_check_lists_every_problem_at_once_with_its_fix(prepared, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(prepared[0], root, symlinks=True, ignore=shutil.ignore_patterns("downloads"))
    shutil.rmtree(root / "zeroshot/dtd")
    shutil.rmtree(root / "coco/train2017")
    lines = (root / "zeroshot/pets/classnames.txt").read_text().splitlines()
    (root / "zeroshot/pets/classnames.txt").write_text("\n".join([lines[1], lines[0], lines[2]]) + "\n")
    problems = paper_data.data_problems(str(root))
    assert len(problems) == 3, problems
    assert any("coco/train2017 not found" in p and "train2017.zip" in p for p in problems)
    assert any(p.startswith("zero-shot dtd:") and "make data PRESET=paper" in p for p in problems)
    assert any(f"{root}/zeroshot/pets/classnames.txt:1: '0001_American_Bulldog' does not match class folder 1" in p
               for p in problems)
    with pytest.raises(paper_data.DataError, match="3 data problem"):
        paper_data.require_data(str(root))
    assert paper_data.data_problems(str(root), papers=["proclip"]) != problems  # only ProCLIP's paths
    assert not any("train2017" in p for p in paper_data.data_problems(str(root), papers=["proclip"]))


def test_check_of_a_data_root_that_does_not_exist_lists_every_problem_too(tmp_path, capsys):
    root = tmp_path / "data"
    with pytest.raises(SystemExit) as missing:
        paper_data.main(["check", "--data-root", str(root)])
    root.mkdir()
    with pytest.raises(SystemExit) as empty:
        paper_data.main(["check", "--data-root", str(root)])
    missing, empty = str(missing.value).splitlines(), str(empty.value).splitlines()
    assert len(empty) > 20 and missing[2:] == empty[1:]  # the same problems, each with its fix
    assert missing[:2] == [f"tools.paper_data: {len(empty)} data problem(s) under {root} (nothing was started):",
                           f"  DATA_ROOT {root} does not exist; create it and run `make data PRESET=paper "
                           f"DATA_ROOT={root}` (docs/paper_preset.md)"]


def test_prepare_names_each_missing_download_and_where_it_goes(tmp_path):
    with pytest.raises(paper_data.DataError) as error:
        paper_data.prepare(str(tmp_path), only=["dtd", "docci"], out=open(os.devnull, "w"))
    lines = str(error.value).splitlines()
    assert lines[0].startswith("2 dataset(s) not converted")
    assert f"it must give {tmp_path}/downloads/dtd/dtd/dtd/labels/test1.txt" in lines[1]
    assert "docci_descriptions.jsonlines" in lines[2]
    with pytest.raises(paper_data.DataError, match="unknown"):
        paper_data.prepare(str(tmp_path), only=["imagenet21k"])


def test_tables_read_the_metric_each_task_names(tmp_path):
    """ProCLIP's Table 2 takes mean-per-class recall where the suite says so, top-1 elsewhere; CLIP from `clip`."""
    from tools.tables import PROCLIP_ROWS, proclip_tables

    for row in ["clip"] + [r for r, _ in PROCLIP_ROWS if r != "pretrained"]:
        os.makedirs(tmp_path / row)
        records = [("aircraft", "zeroshot_classification", {"acc1": 0.5, "mean_per_class_recall": 0.25},
                    "mean_per_class_recall"),
                   ("food101", "zeroshot_classification", {"acc1": 0.75, "mean_per_class_recall": 0.1}, "acc1"),
                   ("coco_5k", "zeroshot_retrieval", {"text_retrieval_recall@1": 0.5, "image_retrieval_recall@1": 0.4},
                    None)]
        for dataset, task, metrics, main in records:
            record = {"dataset": dataset, "task": task, "metrics": metrics, **({"main_metric": main} if main else {})}
            (tmp_path / row / f"{dataset}_{task}.json").write_text(json.dumps(record))
    text = proclip_tables(str(tmp_path), clip_row="clip")
    assert "mean-per-class recall for aircraft, top-1 for the others" in text
    cells = [r for r in csv.DictReader(open(tmp_path / "table2_proclip.csv")) if r["row"] == "CLIP (pre-trained)"]
    assert [(c["column"], float(c["mean"])) for c in cells] == [("aircraft", 25.0), ("food101", 75.0), ("mean", 50.0)]


def test_evaluate_refuses_a_metric_for_an_unknown_task_or_name(tmp_path):
    import evaluate

    with pytest.raises(ValueError, match="zeroshot_metric .*imagenet.*top1"):
        evaluate.main(["--config", "configs/paper/eval_proclip.yaml", f"out_dir={tmp_path}",
                       "zeroshot_metric={imagenet: top1}"])


def test_make_data_says_what_is_true(prepared, tmp_path, capfd):
    """A broken converted set: check names the command that redoes it and prepare redoes it (not "done already");
    the last line counts ready and missing sets of the chosen papers, also with --only; a download that fails its
    md5 is one line naming the file, without torchvision's download=True hint."""
    root = tmp_path / "data"
    shutil.copytree(prepared[0], root, symlinks=True)
    (root / "zeroshot/dtd/classnames.txt").unlink()
    problems = paper_data.data_problems(str(root))
    assert problems == [f"zero-shot dtd: {root}/zeroshot/dtd has no classnames.txt; convert it again: make data "
                        f"PRESET=paper DATA_ROOT={root} DATA_ARGS=\"--only dtd\""]
    shutil.rmtree(root / "zeroshot/cifar10")
    shutil.rmtree(root / "downloads/cifar10")
    paper_data.main(["prepare", "--data-root", str(root), "--only", "dtd", "--skip-checksums"])
    out = capfd.readouterr().out.splitlines()
    assert out[0].startswith("dtd: the converted set is broken") and "converting it again" in out[0]
    total = len(paper_data.paper_datasets())
    assert out[-1] == (f"{total - 1} of {total} datasets of refine and proclip ready under {root}; missing: cifar10 "
                       f"(make data-sources: what to fetch; make check-data: every problem)")
    assert not any(p.startswith("zero-shot dtd") for p in paper_data.data_problems(str(root)))
    paper_data.main(["prepare", "--data-root", str(root), "--only", "pets", "--papers", "refine"])
    assert capfd.readouterr().out.splitlines()[-1].startswith(
        f"{len(paper_data.paper_datasets(['refine']))} of {len(paper_data.paper_datasets(['refine']))} datasets of "
        f"refine ready")  # cifar10 is ProCLIP's only
    # the fakes are re-packed copies: their md5 is not the official archives'
    shutil.copytree(prepared[0] / "downloads/cifar10", root / "downloads/cifar10")
    with pytest.raises(SystemExit) as error:
        paper_data.main(["prepare", "--data-root", str(root), "--only", "cifar10"])
    message = str(error.value)
    assert "cifar10: " in message and "cifar-10-batches-py" in message and "is missing or corrupted" in message
    assert "DATA_ARGS=--skip-checksums" in message and "download=True" not in message
    assert message.splitlines()[-1].endswith("missing: cifar10 (make data-sources: what to fetch; make check-data: "
                                             "every problem)")

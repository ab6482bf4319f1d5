"""train_format=webdataset (common/data.py WebDatasetShards) on tiny tar shards written here from the toy world:
the same samples as the COCO / CSV formats, so refine.py and both ProCLIP stages train bit-identically on either
format, and a killed run resumes bit-identically."""
import csv
import io
import json
import tarfile

import pytest
import torch
from torchvision import transforms

import proclip_stage1
import proclip_stage2
import refine
from common.data import CocoCaptions, WebDatasetShards, collate_pairs, expand_shards
from common.embedder import EmbeddingCache
from common.checkpoints import load_checkpoint_file
from crashes import SimulatedCrash, crash_before_step

TO_TENSOR = transforms.ToTensor()


def write_shards(folder, samples, per_shard):
    """samples: (key, {extension: bytes}) -> folder/00000.tar, ... in open_clip's layout (KEY.EXT members)."""
    folder.mkdir(parents=True, exist_ok=True)
    for number, start in enumerate(range(0, len(samples), per_shard)):
        with tarfile.open(folder / f"{number:05d}.tar", "w") as tar:
            for key, members in samples[start:start + per_shard]:
                for extension, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{extension}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return folder


def coco_shards(world, folder, per_shard=20):
    """The COCO training split as shards: KEY.png + KEY.json {"captions": [5 captions]}, in CocoCaptions' order."""
    coco = json.load(open(world / "coco/captions_train.json"))
    captions = {}
    for annotation in coco["annotations"]:
        captions.setdefault(annotation["image_id"], []).append(annotation["caption"])
    files = {image["id"]: image["file_name"] for image in coco["images"]}
    samples = [(f"sample{i:06d}", {"png": (world / "coco/train" / files[i]).read_bytes(),
                                   "json": json.dumps({"captions": captions[i]}).encode()})
               for i in sorted(files) if i in captions]
    return write_shards(folder, samples, per_shard)


def recaption_shards(world, folder, per_shard=12):
    """recaption.csv (filepath, short, long) as shards: KEY.jpg-like image + KEY.txt (short) + KEY.json."""
    with open(world / "recaption.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    samples = [(f"{i:06d}", {"png": (world / row["filepath"]).read_bytes(), "txt": row["short"].encode(),
                             "json": json.dumps({"short": row["short"], "long": row["long"]}).encode()})
               for i, row in enumerate(rows)]
    return write_shards(folder, samples, per_shard)


# ---------------------------------------------------------------- the dataset

def test_shards_hold_the_same_samples_as_the_coco_files(tiny_world, tmp_path):
    shards = coco_shards(tiny_world, tmp_path / "wds")
    wds = WebDatasetShards(str(shards), TO_TENSOR, ["captions"])
    coco = CocoCaptions(str(tiny_world / "coco/captions_train.json"), str(tiny_world / "coco/train"), TO_TENSOR)
    assert len(wds.shards) == 3 and len(wds) == len(coco) == 48
    assert wds.captions_per_image == coco.captions_per_image  # a JSON list: every caption is an option
    for index in (0, 19, 20, 47):  # the first and last sample of a shard
        image, caption = wds[index]
        assert torch.equal(image, coco[index][0]) and caption == coco[index][1]
    wds.set_epoch(3), coco.set_epoch(3)
    assert [wds[i][1] for i in range(48)] == [coco[i][1] for i in range(48)]


def test_txt_and_json_fields_incomplete_samples_and_a_corrupt_image(tiny_world, tmp_path):
    image = next((tiny_world / "coco/train").iterdir()).read_bytes()
    shards = write_shards(tmp_path / "wds", [
        ("dir/a", {"jpg": image, "txt": b" a red circle \n", "json": b'{"short": "red", "long": ["x", "y", ""]}'}),
        ("dir/b", {"png": image}),                                 # no caption: left out
        ("dir/c", {"txt": b"no image"}),                           # no image: left out
        ("dir/d", {"png": b"\x89PNG truncated", "txt": b"broken"}),  # unreadable: skipped in training
    ], per_shard=10)
    ds = WebDatasetShards(str(shards / "00000.tar"), TO_TENSOR, ["txt", "short", "long"])
    assert ds.incomplete == 2 and ds.captions_per_image == [["a red circle", "red", "x", "y"], ["broken"]]
    assert WebDatasetShards(str(shards), TO_TENSOR, ["long"]).captions_per_image == [["x", "y"]]
    batch = collate_pairs([ds[0], ds[1]])
    assert batch["skipped"] == 1 and batch["images"].shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="cannot read image dir/d of shard .*00000.tar"):
        ds.load_eval_image(1)


def test_shard_specs_and_bad_shards(tmp_path):
    for number in range(3):
        (tmp_path / f"shard-{number:03d}.tar").touch()
    as_range = expand_shards(f"{tmp_path}/shard-{{000..002}}.tar")
    assert as_range == [str(tmp_path / f"shard-{n:03d}.tar") for n in range(3)]
    assert expand_shards(str(tmp_path)) == as_range == expand_shards(f"{tmp_path}/shard-*.tar")
    assert expand_shards(f"{tmp_path}/shard-000.tar::{tmp_path}/shard-002.tar") == [as_range[0], as_range[2]]
    with pytest.raises(FileNotFoundError, match="shard .*shard-003.tar not found"):
        expand_shards(f"{tmp_path}/shard-{{000..003}}.tar")
    with tarfile.open(tmp_path / "zipped.tar.gz", "w:gz") as tar:
        tar.addfile(tarfile.TarInfo("a.txt"), io.BytesIO(b""))
    with pytest.raises(ValueError, match="zipped.tar.gz .*uncompressed .tar"):
        WebDatasetShards(str(tmp_path / "zipped.tar.gz"), TO_TENSOR)


# ---------------------------------------------------------------- training on shards

def refine_args(tiny_world, tiny_clip, run_dir, *extra):
    return ["--config", "configs/toy/refine.yaml", f"run_dir={run_dir}", f"pretrained={tiny_clip}",
            f"train_data={tiny_world}/coco/captions_train.json", f"train_images={tiny_world}/coco/train",
            "batch_size=8", "holdout_fraction=0.0", "log_every=1", "checkpoint_every=2", "lr=1e-4",
            "objective=clip_refine", "num_workers=1", *extra]


def assert_same_weights(first, second, key="state_dict"):
    a, b = load_checkpoint_file(first)[key], load_checkpoint_file(second)[key]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_refine_on_shards_equals_refine_on_coco_files_and_resumes_exactly(tiny_world, tiny_clip, tmp_path):
    shards = coco_shards(tiny_world, tmp_path / "wds")
    wds = [f"train_data={shards}", "train_format=webdataset", "wds_caption_keys=[captions]", "epochs=2"]
    refine.main(refine_args(tiny_world, tiny_clip, tmp_path / "coco", "epochs=2", "max_steps=10"))
    refine.main(refine_args(tiny_world, tiny_clip, tmp_path / "wds", *wds, "max_steps=10"))
    assert_same_weights(tmp_path / "coco/model.pt", tmp_path / "wds/model.pt")
    # killed mid-epoch 1 (6 steps per epoch) after the step-8 checkpoint, then the same command again
    with crash_before_step(9), pytest.raises(SimulatedCrash):
        refine.main(refine_args(tiny_world, tiny_clip, tmp_path / "killed", *wds, "max_steps=10"))
    assert load_checkpoint_file(tmp_path / "killed/checkpoint.pt")["step"] == 8
    refine.main(refine_args(tiny_world, tiny_clip, tmp_path / "killed", *wds, "max_steps=10"))
    assert_same_weights(tmp_path / "wds/model.pt", tmp_path / "killed/model.pt")


def test_both_proclip_stages_train_on_shards_as_on_the_csv(tiny_world, tiny_clip, tmp_path):
    shards = recaption_shards(tiny_world, tmp_path / "wds")
    common = [f"pretrained={tiny_clip}", "arch=ToyCLIP", "embedder=stub-embedder",
              f"embedding_cache={tmp_path / 'cache'}", "batch_size=8", "num_workers=0", "lr=1e-3", "log_every=1",
              "adapter_depth=1", "device=cpu", "max_images=24", "max_steps=3"]
    with open(tiny_world / "recaption.csv", newline="") as f:
        texts = [row[k] for row in csv.DictReader(f) for k in ("short", "long")]
    EmbeddingCache(tmp_path / "cache", "stub-embedder, dim 8").fill(
        texts, lambda batch: torch.stack([torch.tensor([float(len(t) % (d + 2)) for d in range(8)]) for t in batch]),
        show_progress=False)
    formats = {"csv": [f"train_data={tiny_world / 'recaption.csv'}"],
               "wds": [f"train_data={shards}", "train_format=webdataset"]}
    for name, data in formats.items():
        proclip_stage1.main([f"run_dir={tmp_path / name / 'stage1'}", "instance_long_captions=false", *common, *data])
        proclip_stage2.main([f"run_dir={tmp_path / name / 'stage2'}", f"adapter={tmp_path / name / 'stage1/model.pt'}",
                             *common, *data])
    assert_same_weights(tmp_path / "csv/stage1/model.pt", tmp_path / "wds/stage1/model.pt", key="adapter")
    assert_same_weights(tmp_path / "csv/stage2/model.pt", tmp_path / "wds/stage2/model.pt", key="visual")
    assert_same_weights(tmp_path / "csv/stage2/model.pt", tmp_path / "wds/stage2/model.pt", key="adapter")


def test_index_dir_keeps_the_scan_until_a_shard_changes(tiny_world, tmp_path, monkeypatch):
    shards = coco_shards(tiny_world, tmp_path / "wds")
    scanned = WebDatasetShards(str(shards), TO_TENSOR, ["captions"], index_dir=str(tmp_path / "index"))
    assert len(list((tmp_path / "index").glob("wds-*/meta.json"))) == 1

    def no_tar(*args, **kwargs):
        raise AssertionError("a shard was scanned again")

    monkeypatch.setattr(tarfile, "open", no_tar)
    reused = WebDatasetShards(str(shards), TO_TENSOR, ["captions"], index_dir=str(tmp_path / "index"))
    assert reused.image_paths == scanned.image_paths and reused.captions_per_image == scanned.captions_per_image
    assert torch.equal(reused[5][0], scanned[5][0])
    monkeypatch.undo()
    with tarfile.open(shards / "00002.tar", "a") as tar:  # a shard changes: the corpus is indexed again
        info = tarfile.TarInfo("extra.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"extra"))
    assert WebDatasetShards(str(shards), TO_TENSOR, ["captions"], index_dir=str(tmp_path / "index")).incomplete == 1

"""Images decoded once (common/imagecache.py) are the transform's own pixels, bit for bit, and bad files behave
as without the cache."""
import json
import os

import pytest
import torch

from common.data import CocoCaptions, open_rgb
from common.imagecache import DecodedImages, decode_once, split_transform
from common.models import build_clip


@pytest.fixture(scope="module")
def transforms():
    _, train, evaluation, _ = build_clip("ToyCLIP")
    return train, evaluation


def test_cached_pixels_equal_the_transform_and_are_read_back_from_disk(tiny_world, transforms, tmp_path):
    paths = sorted(str(p) for p in (tiny_world / "coco" / "val").glob("*.png"))
    decoded = DecodedImages(paths, transforms[1], tmp_path, open_rgb)
    for i, path in enumerate(paths):
        assert torch.equal(decoded[i], transforms[1](open_rgb(path)))
    assert torch.equal(decoded.batch(slice(0, 3)), torch.stack([decoded[i] for i in range(3)]))
    assert len(list(tmp_path.glob("*.pt"))) == 1
    again = DecodedImages(paths, transforms[1], tmp_path, lambda p: pytest.fail("decoded again"))
    assert torch.equal(again.pixels, decoded.pixels)


def test_augmentation_is_never_cached(transforms, tmp_path):
    assert split_transform(transforms[0]) is None  # RandomResizedCrop
    assert decode_once(["x.png"], transforms[0], str(tmp_path), open_rgb) is None


def test_an_unreadable_image_is_skipped_in_training_and_an_error_in_evaluation(tiny_world, transforms, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    coco = json.loads((tiny_world / "coco" / "captions_val.json").read_text())
    min(coco["images"], key=lambda image: image["id"])["file_name"] = str(broken)  # the first sample's image
    (tmp_path / "captions.json").write_text(json.dumps(coco))
    dataset = CocoCaptions(str(tmp_path / "captions.json"), str(tiny_world / "coco" / "val"), transforms[1])
    dataset.decode_once(str(tmp_path / "cache"))
    assert dataset[0] is None and dataset[1] is not None  # skipped (and counted by collate_pairs)
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        dataset.load_eval_image(0)
    os.utime(broken, ns=(1, 1))  # another mtime: another key, so an edited file is decoded again
    assert len({p.name for p in (tmp_path / "cache").glob("*.pt")}) == 1
    dataset.decode_once(str(tmp_path / "cache"))
    assert len({p.name for p in (tmp_path / "cache").glob("*.pt")}) == 2


def test_the_cache_is_on_only_in_the_toy_configs_and_refuses_a_set_too_large(tiny_world, tiny_clip, tmp_path):
    """Off by default (data of unknown size), on in the toy YAMLs (32x32 images); above image_cache_max_gb it
    refuses with the estimate: images x 3xHxW bytes at the transform's output size."""
    import evaluate
    import refine
    import torchvision.transforms as T
    from common.config import read_yaml
    from common.train import TRAIN_DEFAULTS

    assert TRAIN_DEFAULTS["image_cache"] == evaluate.DEFAULTS["image_cache"] == ""
    for name in ("pretrain", "refine", "proclip_stage2", "eval"):
        assert read_yaml(f"configs/toy/{name}.yaml")["image_cache"] == "cache/images", name
    at_224 = T.Compose([T.Resize(224), T.CenterCrop(224), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])
    cc3m = [f"{i}.jpg" for i in range(3_000_000)]  # refused before any file is opened
    with pytest.raises(ValueError, match=r"3000000 images once would take about 451.6 GB .* image_cache_max_gb=4"):
        decode_once(cc3m, at_224, str(tmp_path), open_rgb, max_gb=4)
    with pytest.raises(ValueError, match=r"image_cache_max_gb=1e-06; set image_cache=\"\""):
        refine.main(["--config", "configs/toy/refine.yaml", f"train_data={tiny_world}/coco/captions_train.json",
                     f"train_images={tiny_world}/coco/train", f"image_cache={tmp_path}/images",
                     "image_cache_max_gb=1e-6", f"pretrained={tiny_clip}", "batch_size=16", "max_steps=1", f"run_dir={tmp_path}/run"])
    with pytest.raises(ValueError, match=r"image_cache_max_gb=1e-06; set image_cache=\"\""):  # a probe set's images too
        evaluate.main(["--config", "configs/toy/eval.yaml", f"data_root={tiny_world}", f"out_dir={tmp_path}/e",
                       f"image_cache={tmp_path}/images", "image_cache_max_gb=1e-6", f"pretrained={tiny_clip}",
                       "zeroshot={}", "retrieval={}", "gap_sets=[]", "hard_negatives={}", "device=cpu"])
    assert not (tmp_path / "images").exists()

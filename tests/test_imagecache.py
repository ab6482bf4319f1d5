"""Images decoded once (common/imagecache.py) are the transform's own pixels, bit for bit, and bad files behave
as without the cache."""
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
    dataset = CocoCaptions(str(tiny_world / "coco" / "captions_val.json"), str(tiny_world / "coco" / "val"),
                           transforms[1])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    dataset.image_paths = [str(broken), *dataset.image_paths[1:]]
    dataset.decode_once(str(tmp_path / "cache"))
    assert dataset[0] is None and dataset[1] is not None  # skipped (and counted by collate_pairs)
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        dataset.load_eval_image(0)
    os.utime(broken, ns=(1, 1))  # another mtime: another key, so an edited file is decoded again
    assert len({p.name for p in (tmp_path / "cache").glob("*.pt")}) == 1
    dataset.decode_once(str(tmp_path / "cache"))
    assert len({p.name for p in (tmp_path / "cache").glob("*.pt")}) == 2

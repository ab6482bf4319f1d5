"""Decode every image once. A deterministic transform (resize, centre crop, RGB, to-tensor, normalise: the eval
transform every toy run uses) turns a file into the same pixels on every epoch, in every run and every evaluation,
so its PIL steps are run once per image and the uint8 result is kept on disk (`cache/images/<key>.pt`, a few bytes
per pixel: 30k 32x32 images are 92 MB). Reading an item is then the transform's last two steps on that uint8
tensor, the very operations ToTensor and Normalize apply, so the float pixels are bit-identical to the transform's.

The key hashes the transform's steps and each file's path, size and modification time: an edited image, another
image size or another transform makes a new cache file. A transform with random steps (augmentation) is never
cached. An unreadable image is remembered as such and raises (or is skipped) exactly as without the cache.
"""
import hashlib
import os

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF

from common.checkpoints import atomic_torch_save, load_checkpoint_file

_DETERMINISTIC = (T.Resize, T.CenterCrop)


def split_transform(transform):
    """-> (the PIL steps, the Normalize step) of [deterministic PIL steps..., ToTensor, Normalize], else None."""
    steps = list(getattr(transform, "transforms", []))
    if len(steps) < 2 or not isinstance(steps[-1], T.Normalize) or "ToTensor" not in type(steps[-2]).__name__:
        return None
    pil_steps = steps[:-2]
    for step in pil_steps:  # open_clip's MaybeConvertMode only converts the mode: deterministic too
        if not (isinstance(step, _DETERMINISTIC) or type(step).__name__ == "MaybeConvertMode"):
            return None
    return pil_steps, steps[-1]


def cache_key(paths, pil_steps):
    digest = hashlib.sha256(repr(pil_steps).encode())
    for path in paths:
        try:
            st = os.stat(path)
            digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()[:24]


class DecodedImages:
    """The images of `paths` through `transform`, decoded once. images[i] -> float tensor [3, H, W], or ValueError
    (naming the file) for an unreadable image; batch(indices) -> [B, 3, H, W] for the readable ones."""

    def __init__(self, paths, transform, cache_dir, open_image):
        pil_steps, self.normalize = split_transform(transform)
        path = os.path.join(cache_dir, f"{cache_key(paths, pil_steps)}.pt")
        if os.path.exists(path):
            record = load_checkpoint_file(path, "decoded-image cache")
        else:
            record = self._decode(paths, pil_steps, open_image)
            os.makedirs(cache_dir, exist_ok=True)
            atomic_torch_save(record, path)
        self.pixels, self.errors = record["pixels"], record["errors"]

    @staticmethod
    def _decode(paths, pil_steps, open_image):
        pixels, errors, shape = [None] * len(paths), {}, None
        for i, path in enumerate(paths):
            try:
                image = open_image(path)
            except ValueError as e:
                errors[i] = str(e)
                continue
            for step in pil_steps:
                image = step(image)
            pixels[i] = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()
            shape = shape or pixels[i].shape
        if shape is None:
            shape = (3, 1, 1)
        blank = torch.zeros(shape, dtype=torch.uint8)
        return {"pixels": torch.stack([p if p is not None else blank for p in pixels]), "errors": errors}

    def __len__(self):
        return len(self.pixels)

    def readable(self, index):
        return index not in self.errors

    def __getitem__(self, index):
        if index in self.errors:
            raise ValueError(self.errors[index])
        return self._to_float(self.pixels[index])

    def batch(self, indices):
        return self._to_float(self.pixels[indices])

    def _to_float(self, pixels):  # ToTensor's `.to(float32).div(255)`, then the transform's own Normalize
        return TF.normalize(pixels.to(torch.float32).div(255), self.normalize.mean, self.normalize.std)


def decoded_bytes(count, pil_steps):
    """Bytes of `count` images decoded once: count × 3×H×W (uint8), H×W the size the PIL steps end with (their last
    CenterCrop, else a Resize to a fixed H×W); None when the steps do not fix it."""
    for step in reversed(pil_steps):
        size = getattr(step, "size", None)
        if isinstance(step, T.CenterCrop) or (isinstance(step, T.Resize) and not isinstance(size, int)):
            height, width = (size, size) if isinstance(size, int) else (tuple(size) * 2)[:2]
            return count * 3 * height * width
    return None


def decode_once(paths, transform, cache_dir, open_image, max_gb=0.0):
    """DecodedImages when the transform is deterministic and cache_dir is set; None otherwise (decode per item).
    max_gb > 0: refuses (ValueError, with the estimate) when the decoded images would take more than max_gb GB."""
    if not cache_dir or split_transform(transform) is None:
        return None
    size = decoded_bytes(len(paths), split_transform(transform)[0])
    if max_gb > 0 and size is not None and size > max_gb * 1e9:
        raise ValueError(f"image_cache={cache_dir}: decoding the {len(paths)} images once would take about "
                         f"{size / 1e9:.1f} GB (images x 3xHxW bytes) in memory and on disk, more than "
                         f"image_cache_max_gb={max_gb:g}; set image_cache=\"\" (decode per item) or raise "
                         f"image_cache_max_gb")
    return DecodedImages(paths, transform, cache_dir, open_image)

"""Datasets in the formats real data comes in, used for the toy world and for COCO / CC3M / ImageNet alike.

- `CocoCaptions`: COCO-captions JSON + image folder. Training draws one caption per image per epoch;
  retrieval uses all captions (`captions`, `text_to_image`).
- `CsvPairs`: image-text pairs in a CSV/TSV (open_clip's CsvDataset convention: `filepath` + `title` columns;
  several caption columns, e.g. `short,long`, mean one is drawn per image per step).
- `ZeroShotTask`: an ImageFolder tree `root/test/<class>/...` with `classnames.txt` and `templates.txt`.

Items are (image tensor, caption string); the stage turns captions into tokens or cached embeddings.
In training, an unreadable image is skipped and counted (`skipped` in the batch, logged by the trainer).
The caption drawn for an item depends only on (seed, epoch, index), so a resumed run sees the same data.
"""
import copy
import csv
import json
import os
import random

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

IMAGE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError)


def _require_file(path, what, hint):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path} not found; {hint}")


def open_rgb(path):
    """Open an image as RGB, or raise a ValueError that names the file."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except IMAGE_ERRORS as e:
        raise ValueError(f"cannot read image {path} ({type(e).__name__}: {e}); replace the file or remove it "
                         f"from the annotation file") from e


class CaptionDataset(Dataset):
    """Shared by the two training formats: images[i] with one or more captions_per_image[i]."""

    def __init__(self, image_paths, captions_per_image, transform, seed=0, source=""):
        if len(image_paths) == 0:
            raise ValueError(f"{source}: no image-caption pairs (empty split); check the file and the split name")
        self.image_paths, self.captions_per_image = image_paths, captions_per_image
        self.transform, self.seed, self.epoch, self.source = transform, seed, 0, source
        self.decoded = None  # set by decode_once: the images decoded once (common/imagecache.py)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def holdout(self, fraction, seed=42):
        """Split off `fraction` of the images for validation (seeded); returns (train, val)."""
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed)).tolist()
        n_val = int(round(fraction * len(self)))
        return self._subset(sorted(order[n_val:])), self._subset(sorted(order[:n_val]))

    def _subset(self, indices):
        part = copy.copy(self)
        part.image_paths = [self.image_paths[i] for i in indices]
        part.captions_per_image = [self.captions_per_image[i] for i in indices]
        part.decoded = None  # other indices: decode the subset once again if wanted
        return part

    def decode_once(self, cache_dir):
        """Decode every image once (a deterministic transform only; cached in cache_dir): same pixels, no decode
        per epoch. Call it after the transform is set."""
        from common.imagecache import decode_once
        self.decoded = decode_once(self.image_paths, self.transform, cache_dir, open_rgb)
        return self

    def __len__(self):
        return len(self.image_paths)

    def draw_caption(self, index):
        options = self.captions_per_image[index]
        return options[random.Random(f"{self.seed}-{self.epoch}-{index}").randrange(len(options))]

    def __getitem__(self, index):
        caption = self.draw_caption(index)
        try:
            image = self.load_eval_image(index)
        except ValueError:
            return None  # counted by collate_pairs; see the module docstring
        return image, caption

    # Retrieval view: every caption, with the index of its image.
    @property
    def captions(self):
        return [c for caps in self.captions_per_image for c in caps]

    @property
    def text_to_image(self):
        return torch.tensor([i for i, caps in enumerate(self.captions_per_image) for _ in caps])

    def load_eval_image(self, index):
        """For evaluation a bad image is an error, not a skip: numbers must cover the whole set."""
        if self.decoded is not None:
            return self.decoded[index]
        return self.transform(open_rgb(self.image_paths[index]))


class CocoCaptions(CaptionDataset):
    def __init__(self, annotation_file, image_dir, transform, seed=0):
        _require_file(annotation_file, "COCO captions file", "check the path (for the toy world: `make world`)")
        if not os.path.isdir(image_dir):
            raise FileNotFoundError(f"image folder {image_dir} (for {annotation_file}) not found; check the path")
        try:
            with open(annotation_file, encoding="utf-8") as f:
                coco = json.load(f)
            file_names = {img["id"]: img["file_name"] for img in coco["images"]}
            captions, bad = {}, []
            for row, ann in enumerate(coco["annotations"]):
                if not isinstance(ann.get("caption"), str):
                    bad.append(row)
                    continue
                captions.setdefault(ann["image_id"], []).append(ann["caption"].strip())
        except UnicodeDecodeError as e:
            raise ValueError(f"{annotation_file}: not UTF-8 text (byte {e.start}); re-save it as UTF-8") from None
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{annotation_file}: not a COCO captions file ({type(e).__name__}: {e}); it needs "
                             f"'images' [{{id, file_name}}] and 'annotations' [{{image_id, caption}}]") from None
        if bad:
            raise ValueError(f"{annotation_file}: {len(bad)} annotation(s) have no caption text (null or not a "
                             f"string; first: annotations[{bad[0]}]); fix or remove them")
        ids = sorted(i for i in file_names if i in captions)
        super().__init__([os.path.join(image_dir, file_names[i]) for i in ids],
                         _without_empty([captions[i] for i in ids], annotation_file, "image id", ids),
                         transform, seed, source=annotation_file)


class CsvPairs(CaptionDataset):
    """CSV (comma) or TSV (tab, chosen by the .tsv extension). Relative paths are relative to the file's folder."""

    def __init__(self, csv_file, transform, image_key="filepath", caption_keys=("title",), seed=0):
        _require_file(csv_file, "image-text CSV", "check the path (for the toy world: `make world`)")
        caption_keys = [caption_keys] if isinstance(caption_keys, str) else list(caption_keys)
        try:
            with open(csv_file, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f, delimiter="\t" if csv_file.endswith(".tsv") else ",")
                missing = [k for k in [image_key, *caption_keys] if k not in (reader.fieldnames or [])]
                if missing:
                    raise ValueError(f"{csv_file}: missing column(s) {missing}; columns found: {reader.fieldnames}. "
                                     f"Set image_key / caption_keys in the config to the right names")
                rows = list(reader)
        except UnicodeDecodeError as e:
            raise ValueError(f"{csv_file}: not UTF-8 text (byte {e.start}); re-save it as UTF-8") from None
        root = os.path.dirname(os.path.abspath(csv_file))
        captions = [[r[k] or "" for k in caption_keys] for r in rows]
        super().__init__([os.path.join(root, r[image_key] or "") for r in rows],
                         _without_empty(captions, csv_file, "data row", range(2, len(rows) + 2)), transform, seed,
                         source=csv_file)


def _without_empty(captions_per_image, source, what, names):
    """Drop empty captions (with a warning: a model must not learn from ""); an image left with none is an error,
    reported for every such row at once, before training starts."""
    kept = [[c for c in caps if c.strip()] for caps in captions_per_image]
    dropped = sum(len(caps) for caps in captions_per_image) - sum(len(caps) for caps in kept)
    empty = [name for name, caps in zip(names, kept) if not caps]
    if empty:
        raise ValueError(f"{source}: {len(empty)} {what}(s) have no non-empty caption (first: {what} {empty[0]}); "
                         f"fill in or remove those rows")
    if dropped:
        print(f"WARNING: {source}: {dropped} empty caption(s) ignored")
    return kept


def open_caption_dataset(cfg, transform):
    """The training corpus of a stage from its config (train_format, train_data, train_images, csv_*_key(s)).
    transform=None: the captions alone (no image is read)."""
    if cfg.train_format == "coco":
        dataset = CocoCaptions(cfg.train_data, cfg.train_images, transform, seed=cfg.seed)
    elif cfg.train_format == "csv":
        dataset = CsvPairs(cfg.train_data, transform, cfg.csv_image_key, cfg.csv_caption_keys, seed=cfg.seed)
    else:
        raise ValueError(f"train_format={cfg.train_format!r}: use coco or csv")
    if transform is not None:
        missing = [path for path in dataset.image_paths if not os.path.isfile(path)]
        if len(missing) == len(dataset):
            raise FileNotFoundError(f"{dataset.source}: none of its {len(missing)} images exists (first: "
                                    f"{missing[0]}); check train_images / the image paths")
        if missing:
            print(f"WARNING: {dataset.source}: {len(missing)} of {len(dataset)} images do not exist (first: "
                  f"{missing[0]}); they are skipped and counted as skipped_images")
    return dataset


def collate_pairs(items):
    """Stack images, keep captions as strings; drop unreadable items and count them."""
    good = [it for it in items if it is not None]
    images = torch.stack([im for im, _ in good]) if good else torch.empty(0)
    return {"images": images, "captions": [c for _, c in good], "skipped": len(items) - len(good)}


class ZeroShotTask:
    """ImageFolder tree + class names + prompt templates (line i of classnames.txt = i-th sorted class folder)."""

    def __init__(self, root, transform, split="test"):
        from torchvision.datasets import ImageFolder

        if not os.path.isdir(os.path.join(root, split)):
            raise FileNotFoundError(f"zero-shot split {os.path.join(root, split)} not found")
        self.classnames, self.templates = read_prompt_files(root)
        try:
            self.images = ImageFolder(os.path.join(root, split), transform=transform, loader=open_rgb)
        except FileNotFoundError as e:  # torchvision's message for an empty tree
            raise ValueError(f"zero-shot split {os.path.join(root, split)} has no images ({e})") from e
        if len(self.images.classes) != len(self.classnames):
            raise ValueError(f"{root}: classnames.txt has {len(self.classnames)} lines but "
                             f"{split}/ has {len(self.images.classes)} class folders; they must match one to one")


def read_prompt_files(root):
    """-> (class names, templates) of a zero-shot task folder: classnames.txt and templates.txt, one per line.
    A template holds {c} where the class name goes, and no other {} field."""
    classnames, templates = (_read_lines(os.path.join(root, name)) for name in ("classnames.txt", "templates.txt"))
    for template in templates:
        if "{c}" not in template or "{" in template.replace("{c}", "").replace("{{", "").replace("}}", ""):
            raise ValueError(f"{root}/templates.txt: template {template!r} must hold {{c}} (where the class name "
                             f"goes) and no other {{...}} field")
    return classnames, templates


def _read_lines(path):
    _require_file(path, "zero-shot file", f"every task folder needs {os.path.basename(path)}")
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f if line.strip()]
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}); re-save it as UTF-8") from None


# --- ProCLIP (docs/methods.md §2) ----------------------------------------------------------------------------------
def first_images(dataset, count):
    """The first `count` images of a CaptionDataset with their captions (all of them if count <= 0):
    a smaller corpus for a quick preset, read from the top of the same file."""
    return dataset._subset(list(range(min(count, len(dataset))))) if count > 0 else dataset


class CaptionsOnly(Dataset):
    """Text-only view of a CaptionDataset (ProCLIP stage 1 trains on text): the same caption drawn per image
    and epoch, and no image is decoded. Batch with `collate_captions`."""

    def __init__(self, dataset):
        self.dataset, self.source = dataset, dataset.source

    def set_epoch(self, epoch):
        self.dataset.set_epoch(epoch)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return self.dataset.draw_caption(index)


def collate_captions(items):
    return {"captions": list(items), "skipped": 0}

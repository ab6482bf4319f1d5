"""Datasets in the formats real data comes in, used for the toy world and for COCO / CC3M / ImageNet alike.

- `CocoCaptions`: COCO-captions JSON + image folder. Training draws one caption per image per epoch;
  retrieval uses all captions (`captions`, `text_to_image`).
- `CsvPairs`: image-text pairs in a CSV/TSV (open_clip's CsvDataset convention: `filepath` + `title` columns;
  several caption columns, e.g. `short,long`, mean one is drawn per image per step).
- `ZeroShotTask`: an ImageFolder tree `root/test/<class>/...` with `classnames.txt` (`folder<TAB>name` per line,
  checked against the folders by name) and `templates.txt`.

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
        return part

    def __len__(self):
        return len(self.image_paths)

    def draw_caption(self, index):
        options = self.captions_per_image[index]
        return options[random.Random(f"{self.seed}-{self.epoch}-{index}").randrange(len(options))]

    def __getitem__(self, index):
        caption = self.draw_caption(index)
        try:
            image = self.transform(open_rgb(self.image_paths[index]))
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
        return self.transform(open_rgb(self.image_paths[index]))


class CocoCaptions(CaptionDataset):
    def __init__(self, annotation_file, image_dir, transform, seed=0):
        _require_file(annotation_file, "COCO captions file", "check the path (for the toy world: `make world`)")
        if not os.path.isdir(image_dir):
            raise FileNotFoundError(f"image folder {image_dir} (for {annotation_file}) not found; check the path")
        try:
            with open(annotation_file) as f:
                coco = json.load(f)
            file_names = {img["id"]: img["file_name"] for img in coco["images"]}
            captions = {}
            for ann in coco["annotations"]:
                captions.setdefault(ann["image_id"], []).append(ann["caption"].strip())
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{annotation_file}: not a COCO captions file ({type(e).__name__}: {e}); it needs "
                             f"'images' [{{id, file_name}}] and 'annotations' [{{image_id, caption}}]") from e
        ids = sorted(i for i in file_names if i in captions)
        super().__init__([os.path.join(image_dir, file_names[i]) for i in ids], [captions[i] for i in ids],
                         transform, seed, source=annotation_file)


class CsvPairs(CaptionDataset):
    """CSV (comma) or TSV (tab, chosen by the .tsv extension). Relative paths are relative to the file's folder."""

    def __init__(self, csv_file, transform, image_key="filepath", caption_keys=("title",), seed=0):
        _require_file(csv_file, "image-text CSV", "check the path (for the toy world: `make world`)")
        caption_keys = [caption_keys] if isinstance(caption_keys, str) else list(caption_keys)
        with open(csv_file, newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if csv_file.endswith(".tsv") else ",")
            missing = [k for k in [image_key, *caption_keys] if k not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{csv_file}: missing column(s) {missing}; columns found: {reader.fieldnames}. "
                                 f"Set image_key / caption_keys in the config to the right names")
            rows = list(reader)
        root = os.path.dirname(os.path.abspath(csv_file))
        super().__init__([os.path.join(root, r[image_key]) for r in rows],
                         [[r[k] for k in caption_keys if r[k]] for r in rows], transform, seed, source=csv_file)


def collate_pairs(items):
    """Stack images, keep captions as strings; drop unreadable items and count them."""
    good = [it for it in items if it is not None]
    images = torch.stack([im for im, _ in good]) if good else torch.empty(0)
    return {"images": images, "captions": [c for _, c in good], "skipped": len(items) - len(good)}


class ZeroShotTask:
    """ImageFolder tree + class names + prompt templates. classnames.txt has one line per class folder, in sorted
    folder order: `folder<TAB>class name`, or just the name when the folder is that name (spaces may be `_`).
    Lines are matched to folders by name, so a file in another order is an error, never a silent 0%."""

    def __init__(self, root, transform, split="test"):
        from torchvision.datasets import ImageFolder

        for name in ("classnames.txt", "templates.txt"):
            _require_file(os.path.join(root, name), "zero-shot file", f"every task folder needs {name}")
        if not os.path.isdir(os.path.join(root, split)):
            raise FileNotFoundError(f"zero-shot split {os.path.join(root, split)} not found")
        self.templates = _read_lines(os.path.join(root, "templates.txt"))
        bad = [t for t in self.templates if "{c}" not in t]
        if bad:
            raise ValueError(f"{root}/templates.txt: templates must contain {{c}}: {bad}")
        try:
            self.images = ImageFolder(os.path.join(root, split), transform=transform, loader=open_rgb)
        except FileNotFoundError as e:  # torchvision's message for an empty tree
            raise ValueError(f"zero-shot split {os.path.join(root, split)} has no images ({e})") from e
        self.classnames = check_classnames(os.path.join(root, "classnames.txt"), self.images.classes, split)


def read_classnames(path):
    """classnames.txt -> [(folder, class name)]; a line without a tab names a folder spelled like the class."""
    pairs = []
    for line in _read_lines(path):
        folder, _, name = line.partition("\t")
        pairs.append((folder, name) if name else (None, folder))
    return pairs


def check_classnames(path, folders, split="test"):
    """The class names of `path`, checked line by line against the sorted class `folders` by name."""
    pairs = read_classnames(path)
    for line_no, ((folder, name), expected) in enumerate(zip(pairs, folders), 1):
        if expected not in ((folder,) if folder is not None else (name, name.replace(" ", "_"))):
            raise ValueError(f"{path}:{line_no}: {folder or name!r} does not match class folder {line_no} of "
                             f"{split}/ ({expected!r}, sorted order); write one `folder<TAB>class name` line per "
                             f"class folder, in sorted folder order")
    if len(pairs) != len(folders):
        extra = (f"line {len(folders) + 1} ({pairs[len(folders)][1]!r}) has no class folder" if len(pairs) > len(folders)
                 else f"class folder {folders[len(pairs)]!r} has no line")
        raise ValueError(f"{path}: {len(pairs)} lines for {len(folders)} class folders in {split}/: {extra}; they "
                         f"must match one to one")
    return [name for _, name in pairs]


def _read_lines(path):
    with open(path) as f:
        return [line.rstrip("\n") for line in f if line.strip()]


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

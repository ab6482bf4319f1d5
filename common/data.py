"""Datasets in the formats real data comes in, used for the toy world and for COCO / CC3M / ImageNet alike.

- `CocoCaptions`: COCO-captions JSON + image folder. Training draws one caption per image per epoch;
  retrieval uses all captions (`captions`, `text_to_image`).
- `CsvPairs`: image-text pairs in a CSV/TSV (open_clip's CsvDataset convention: `filepath` + `title` columns;
  several caption columns, e.g. `short,long`, mean one is drawn per image per step).
- `WebDatasetShards`: tar shards in open_clip's webdataset layout (KEY.jpg + KEY.txt / KEY.json), read by index.
- `read_pairs` / `read_hard_negatives`: the probes' JSON files (docs/methods.md §5): image pairs with a caption
  each, and images with a positive and a negative caption.
- `ZeroShotTask`: an ImageFolder tree `root/test/<class>/...` with `classnames.txt` (`folder<TAB>name` per line,
  checked against the folders by name) and `templates.txt`.

Items are (image tensor, caption string); the stage turns captions into tokens or cached embeddings.
In training, an unreadable image is skipped and counted (`skipped` in the batch, logged by the trainer).
The caption drawn for an item depends only on (seed, epoch, index), so a resumed run sees the same data.
"""
import copy
import csv
import io
import json
import os
import random

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from common.corpus_index import build_index_in_memory, open_index

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
    """Shared by the training formats: the samples `rows` of a corpus index (common/corpus_index.py), each an image
    with one or more captions. Nothing here grows with the corpus but `rows` (8 bytes a sample)."""

    def __init__(self, index, transform, seed=0, source="", rows=None):
        if index.num_samples == 0:
            raise ValueError(f"{source}: no image-caption pairs (empty split); check the file and the split name")
        self.index, self.rows = index, np.arange(index.num_samples) if rows is None else rows
        self.transform, self.seed, self.epoch, self.source = transform, seed, 0, source
        self.decoded = None  # set by decode_once: the images decoded once (common/imagecache.py)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def holdout(self, fraction, seed=42):
        """Split off `fraction` of the images for validation (seeded); returns (train, val)."""
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed)).numpy()
        n_val = int(round(fraction * len(self)))
        return self._subset(np.sort(order[n_val:])), self._subset(np.sort(order[:n_val]))

    def _subset(self, positions):
        part = copy.copy(self)
        part.rows = self.rows[positions]
        part.decoded = None  # other indices: decode the subset once again if wanted
        return part

    def decode_once(self, cache_dir, max_gb=0.0):
        """Decode every image once (a deterministic transform only; cached in cache_dir): same pixels, no decode
        per epoch; refused above max_gb GB (common/imagecache.py). Call it after the transform is set."""
        from common.imagecache import decode_once
        self.decoded = decode_once(self.image_paths, self.transform, cache_dir, open_rgb, max_gb)
        return self

    def __len__(self):
        return len(self.rows)

    def draw_caption(self, index):
        row = self.rows[index]
        first, count = int(self.index.caption_ranges[row]), self.index.caption_count(row)
        return self.index.captions[first + random.Random(f"{self.seed}-{self.epoch}-{index}").randrange(count)]

    def __getitem__(self, index):
        caption = self.draw_caption(index)
        try:
            image = self.load_eval_image(index)
        except ValueError:
            return None  # counted by collate_pairs; see the module docstring
        return image, caption

    # Retrieval and small sets: lists of Python strings (not for a training corpus, where they would grow with it).
    @property
    def image_paths(self):
        return [self.index.images[row] for row in self.rows]

    @property
    def captions_per_image(self):
        return [self.index.captions_of(row) for row in self.rows]

    @property
    def captions(self):
        return [c for captions in self.captions_per_image for c in captions]

    @property
    def text_to_image(self):
        counts = self.index.caption_ranges[self.rows + 1] - self.index.caption_ranges[self.rows]
        return torch.repeat_interleave(torch.arange(len(self.rows)), torch.from_numpy(counts))

    # Training corpora: arrays.
    def caption_rows(self):
        """The index rows of every caption of these samples (int64 array)."""
        return self.index.caption_rows(self.rows)

    def caption_hashes(self):
        """common.corpus_index.text_hashes of every caption of these samples: what the embedding cache is keyed by."""
        return self.index.caption_hashes[self.caption_rows()]

    def load_eval_image(self, index):
        """For evaluation a bad image is an error, not a skip: numbers must cover the whole set."""
        if self.decoded is not None:
            return self.decoded[index]
        return self.transform(open_rgb(self.index.images[self.rows[index]]))


def _open_corpus(index_dir, identity, sources, build):
    """The corpus index: kept in index_dir (built once, reused while its sources are unchanged), or with
    index_dir="" built in memory for this process."""
    if index_dir:
        return open_index(index_dir, identity, sources, build)
    return build_index_in_memory(identity, build)


class _EmptyCaptions:
    """Empty captions, one sample at a time: drop empty captions (a model must not learn from ""),
    and report every sample left with none at once, before training starts."""

    def __init__(self, source, what):
        self.source, self.what, self.dropped, self.empty, self.first = source, what, 0, 0, None

    def kept(self, captions, name):
        kept = [c for c in captions if c.strip()]
        self.dropped += len(captions) - len(kept)
        if not kept:
            self.empty += 1
            self.first = name if self.first is None else self.first
        return kept

    def check(self):
        if self.empty:
            raise ValueError(f"{self.source}: {self.empty} {self.what}(s) have no non-empty caption (first: "
                             f"{self.what} {self.first}); fill in or remove those rows")
        return {"dropped_empty": self.dropped}


def _note_build(dataset):
    """The warnings a corpus's index recorded, printed on every open (an index is built once)."""
    if dataset.index.meta.get("dropped_empty"):
        print(f"WARNING: {dataset.source}: {dataset.index.meta['dropped_empty']} empty caption(s) ignored")


def _add_image(builder, path, captions):
    builder.add(path, captions)
    if not os.path.isfile(path):
        builder.image_missing(builder.num_samples - 1)


class CocoCaptions(CaptionDataset):
    def __init__(self, annotation_file, image_dir, transform, seed=0, index_dir=""):
        _require_file(annotation_file, "COCO captions file", "check the path (for the toy world: `make world`)")
        if not os.path.isdir(image_dir):
            raise FileNotFoundError(f"image folder {image_dir} (for {annotation_file}) not found; check the path")

        def build(builder):
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
            empty = _EmptyCaptions(annotation_file, "image id")
            for i in sorted(i for i in file_names if i in captions):
                _add_image(builder, os.path.join(image_dir, file_names[i]), empty.kept(captions[i], i))
            return empty.check()

        identity = {"format": "coco", "data": os.path.abspath(annotation_file), "images": os.path.abspath(image_dir)}
        super().__init__(_open_corpus(index_dir, identity, [annotation_file], build), transform, seed,
                         source=annotation_file)
        _note_build(self)


def _read_probe_file(path, key, fields, what):
    _require_file(path, f"{what} file", "check the path (for the toy world: `make world`)")
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)[key]
        bad = next((i for i, e in enumerate(entries) if not isinstance(e, dict) or not fields <= e.keys()), None)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}); re-save it as UTF-8") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a {what} file ({type(e).__name__}: {e}); it needs {{{key!r}: [...]}}") from None
    if bad is not None or not entries:
        raise ValueError(f"{path}: {key}[{bad or 0}] " + ("is missing" if not entries else "lacks a key") +
                         f"; every entry needs {sorted(fields)}")
    return entries


def read_pairs(path, image_dir):
    """A pairs file (docs/methods.md §5) -> (patterns, [(image a, image b)], [(caption a, caption b)]), with image
    paths joined to image_dir: {"pairs": [{"pattern", "images": [a, b], "captions": [of a, of b]}, ...]}."""
    pairs = _read_probe_file(path, "pairs", {"pattern", "images", "captions"}, "pairs")
    odd = next((i for i, p in enumerate(pairs) if len(p["images"]) != 2 or len(p["captions"]) != 2), None)
    if odd is not None:
        raise ValueError(f"{path}: pairs[{odd}] needs exactly 2 images and 2 captions")
    return ([p["pattern"] for p in pairs], [tuple(os.path.join(image_dir, i) for i in p["images"]) for p in pairs],
            [tuple(c.strip() for c in p["captions"]) for p in pairs])


def read_hard_negatives(path, image_dir):
    """A hard-negatives file (docs/methods.md §5) -> ([image path], [positive], [negative]):
    {"items": [{"image", "positive", "negative"}, ...]}."""
    items = _read_probe_file(path, "items", {"image", "positive", "negative"}, "hard-negatives")
    return ([os.path.join(image_dir, i["image"]) for i in items], [i["positive"].strip() for i in items],
            [i["negative"].strip() for i in items])


class CsvPairs(CaptionDataset):
    """CSV (comma) or TSV (tab, chosen by the .tsv extension). Relative paths are relative to the file's folder."""

    def __init__(self, csv_file, transform, image_key="filepath", caption_keys=("title",), seed=0, index_dir=""):
        _require_file(csv_file, "image-text CSV", "check the path (for the toy world: `make world`)")
        caption_keys = [caption_keys] if isinstance(caption_keys, str) else list(caption_keys)
        root = os.path.dirname(os.path.abspath(csv_file))

        def build(builder):
            empty = _EmptyCaptions(csv_file, "data row")
            try:
                with open(csv_file, newline="", encoding="utf-8") as f:
                    reader = csv.DictReader(f, delimiter="\t" if csv_file.endswith(".tsv") else ",")
                    missing = [k for k in [image_key, *caption_keys] if k not in (reader.fieldnames or [])]
                    if missing:
                        raise ValueError(f"{csv_file}: missing column(s) {missing}; columns found: "
                                         f"{reader.fieldnames}. Set csv_image_key=COLUMN (the image paths) and "
                                         f"csv_caption_keys=[COLUMN,...] (the captions) to the right names")
                    for line, r in enumerate(reader, 2):
                        _add_image(builder, os.path.join(root, r[image_key] or ""),
                                   empty.kept([r[k] or "" for k in caption_keys], line))
            except UnicodeDecodeError as e:
                raise ValueError(f"{csv_file}: not UTF-8 text (byte {e.start}); re-save it as UTF-8") from None
            return empty.check()

        identity = {"format": "csv", "data": os.path.abspath(csv_file), "image_key": image_key,
                    "caption_keys": caption_keys}
        super().__init__(_open_corpus(index_dir, identity, [csv_file], build), transform, seed, source=csv_file)
        _note_build(self)


def open_caption_dataset(cfg, transform):
    """The training corpus of a stage from its config (train_format, train_data, train_images, csv_*_key(s)).
    transform=None: the captions alone (no image is read)."""
    if cfg.train_format == "coco":
        dataset = CocoCaptions(cfg.train_data, cfg.train_images, transform, cfg.seed, cfg.data_index)
    elif cfg.train_format == "csv":
        dataset = CsvPairs(cfg.train_data, transform, cfg.csv_image_key, cfg.csv_caption_keys, cfg.seed,
                           cfg.data_index)
    elif cfg.train_format == "webdataset":
        dataset = WebDatasetShards(cfg.train_data, transform, cfg.wds_caption_keys, cfg.seed, cfg.data_index)
    else:
        raise ValueError(f"train_format={cfg.train_format!r}: use coco, csv or webdataset")
    if transform is not None:
        check_images(dataset)
    return dataset


def check_images(dataset):
    """Every image of a caption corpus exists (none: an error; some: a warning, they are skipped), before any model
    is built. The index recorded which were missing when it was built; only those are looked at again. Webdataset
    shards were scanned already."""
    if isinstance(dataset, WebDatasetShards):
        return
    was_missing = dataset.index.missing_images[np.isin(dataset.index.missing_images, dataset.rows)]
    missing = [dataset.index.images[row] for row in was_missing if not os.path.isfile(dataset.index.images[row])]
    if len(missing) == len(dataset):
        raise FileNotFoundError(f"{dataset.source}: none of its {len(missing)} images exists (first: "
                                f"{missing[0]}); check train_images / the image paths")
    if missing:
        print(f"WARNING: {dataset.source}: {len(missing)} of {len(dataset)} images do not exist (first: "
              f"{missing[0]}); they are skipped and counted as skipped_images")


# --- webdataset shards (open_clip's training format for CC3M / CC12M / LAION) ------------------------------------
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")


def expand_shards(spec):
    """Shard paths of `spec`: a folder (every .tar in it, sorted), a glob, or open_clip's brace range
    "/data/cc3m/{00000..00331}.tar"; several specs joined by "::". Each path is checked to exist."""
    import glob
    import re

    paths = []
    for part in str(spec).split("::"):
        if os.path.isdir(part):
            found = sorted(glob.glob(os.path.join(part, "*.tar")))
        else:
            match = re.search(r"\{(\d+)\.\.(\d+)\}", part)
            if match:  # zero-padded to the width of the first number, as braceexpand does
                first, last = match.group(1), match.group(2)
                found = [part[:match.start()] + str(i).zfill(len(first)) + part[match.end():]
                         for i in range(int(first), int(last) + 1)]
            else:
                found = sorted(glob.glob(part)) if any(c in part for c in "*?[") else [part]
        paths += found
    missing = [p for p in paths if not os.path.isfile(p)]
    if not paths or missing:
        problem = f"shard {missing[0]} not found" if missing else "no .tar shard found"
        raise FileNotFoundError(f"train_data={spec!r}: {problem}; give a folder of .tar files, a glob, or a range "
                                f"like /data/cc3m/{{00000..00331}}.tar")
    return list(dict.fromkeys(paths))


def _scan_shard(path):
    """{KEY: {"image": [offset, size], "txt": str, "json": object}} of one tar, in tar order. Member names follow
    webdataset: dir/KEY.EXT."""
    import tarfile

    samples = {}
    try:
        with tarfile.open(path, "r:") as tar:  # "r:": uncompressed, so images can be read back by offset
            for member in tar:
                if not member.isfile():
                    continue
                folder, _, base = member.name.rpartition("/")
                stem, dot, extension = base.partition(".")
                if not dot:
                    continue
                sample = samples.setdefault(f"{folder}/{stem}" if folder else stem, {})
                extension = extension.lower()
                if extension in IMAGE_EXTENSIONS:
                    sample["image"] = [member.offset_data, member.size]
                elif extension in ("txt", "json"):
                    text = tar.extractfile(member).read().decode("utf-8")
                    sample[extension] = text if extension == "txt" else json.loads(text)
    except (tarfile.TarError, OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read webdataset shard {path} ({type(e).__name__}: {e}); it must be an "
                         f"uncompressed .tar of KEY.jpg/png + KEY.txt and/or KEY.json. Fix or remove it") from e
    return samples


def _select_captions(samples, caption_keys):
    """-> [(key, [offset, size], [captions])] of the samples with an image and a caption, and how many lack one.
    "txt" is KEY.txt; any other name is that field of KEY.json (a string, or a list of them)."""
    kept, incomplete = [], 0
    for key, sample in samples.items():
        fields = sample.get("json") if isinstance(sample.get("json"), dict) else {}
        captions = []
        for name in caption_keys:
            value = sample.get("txt") if name == "txt" else fields.get(name)
            captions += [c.strip() for c in ([value] if isinstance(value, str) else value or []) if isinstance(c, str)]
        captions = [c for c in captions if c]
        if "image" in sample and captions:
            kept.append((key, sample["image"], captions))
        else:
            incomplete += 1
    return kept, incomplete


class WebDatasetShards(CaptionDataset):
    """Tar shards in open_clip's webdataset layout (KEY.jpg/png + KEY.txt, or KEY.json with several captions),
    read by index rather than streamed: the shards are scanned once into the corpus index (tar order; captions and
    each image's byte offset), then an image is one seek + read. So sampling, the caption drawn, DDP splits and
    resume are those of every other CaptionDataset: exact. `caption_keys`: "txt" for KEY.txt, other names are
    KEY.json fields. Samples without an image or a caption are left out and counted (`incomplete`)."""

    decode_once = None  # read by offset from the shards: not cached (train.py checks for it)

    def __init__(self, shards, transform, caption_keys=("txt",), seed=0, index_dir=""):
        caption_keys = [caption_keys] if isinstance(caption_keys, str) else list(caption_keys)
        self.shards = expand_shards(shards)

        def build(builder):
            incomplete = 0
            for number, path in enumerate(self.shards):
                kept, left_out = _select_captions(_scan_shard(path), caption_keys)
                incomplete += left_out
                for key, (offset, size), captions in kept:
                    builder.add(key, captions, (number, offset, size))
            return {"incomplete": incomplete}

        identity = {"format": "webdataset", "data": str(shards), "caption_keys": caption_keys}
        super().__init__(_open_corpus(index_dir, identity, self.shards, build), transform, seed, source=str(shards))
        self.incomplete = self.index.meta["incomplete"]
        if self.incomplete:
            print(f"{shards}: {self.incomplete} samples without an image or a caption ({caption_keys}) left out")

    def open_image(self, index):
        row = self.rows[index]
        number, offset, size = (int(v) for v in self.index.image_locations[row])
        try:
            with open(self.shards[number], "rb") as f:
                f.seek(offset)
                with Image.open(io.BytesIO(f.read(size))) as img:
                    return img.convert("RGB")
        except IMAGE_ERRORS as e:
            raise ValueError(f"cannot read image {self.index.images[row]} of shard {self.shards[number]} "
                             f"({type(e).__name__}: {e}); replace or remove that sample") from e

    def __getitem__(self, index):
        caption = self.draw_caption(index)
        try:
            image = self.transform(self.open_image(index))
        except ValueError:
            return None  # counted by collate_pairs, as for the other formats
        return image, caption

    def load_eval_image(self, index):
        return self.transform(self.open_image(index))


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

        if not os.path.isdir(os.path.join(root, split)):
            raise FileNotFoundError(f"zero-shot split {os.path.join(root, split)} not found")
        _, self.templates = read_prompt_files(root)
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


def read_prompt_files(root):
    """-> (class names, templates) of a zero-shot task folder: classnames.txt and templates.txt, one per line.
    A template holds {c} where the class name goes, and no other {} field."""
    classnames = [name for _, name in read_classnames(os.path.join(root, "classnames.txt"))]
    templates = _read_lines(os.path.join(root, "templates.txt"))
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
    return dataset._subset(np.arange(min(count, len(dataset)))) if count > 0 else dataset


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


class ShortAndLongCaptions(Dataset):
    """ProCLIP stage 1 in the official form (instance_long_captions): the short caption drawn per image and epoch,
    and the same image's long caption. Batch with `collate_short_and_long`."""

    def __init__(self, short, long):
        if len(short) != len(long):
            raise ValueError(f"{short.source}: {len(short)} short and {len(long)} long captions; they must pair up")
        self.short, self.long, self.source = CaptionsOnly(short), CaptionsOnly(long), short.source

    def set_epoch(self, epoch):
        self.short.set_epoch(epoch)
        self.long.set_epoch(epoch)

    def __len__(self):
        return len(self.short)

    def __getitem__(self, index):
        return self.short[index], self.long[index]


def collate_short_and_long(items):
    return {"captions": [s for s, _ in items], "long_captions": [l for _, l in items], "skipped": 0}

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
import hashlib
import io
import json
import os
import random

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from common.checkpoints import atomic_write_text

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
    elif cfg.train_format == "webdataset":
        dataset = WebDatasetShards(cfg.train_data, transform, cfg.wds_caption_keys, cfg.seed, cfg.wds_index_dir)
    else:
        raise ValueError(f"train_format={cfg.train_format!r}: use coco, csv or webdataset")
    if transform is not None and cfg.train_format != "webdataset":  # shards were scanned already
        missing = [path for path in dataset.image_paths if not os.path.isfile(path)]
        if len(missing) == len(dataset):
            raise FileNotFoundError(f"{dataset.source}: none of its {len(missing)} images exists (first: "
                                    f"{missing[0]}); check train_images / the image paths")
        if missing:
            print(f"WARNING: {dataset.source}: {len(missing)} of {len(dataset)} images do not exist (first: "
                  f"{missing[0]}); they are skipped and counted as skipped_images")
    return dataset


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


def _scan_shard_cached(path, index_dir):
    """_scan_shard, kept in index_dir (when given) as one JSON per shard, reused while the shard's path, size and
    modification time are unchanged: later runs, their resumes and the other ranks skip the scan."""
    if not index_dir:
        return _scan_shard(path)
    stat = os.stat(path)
    stamp = [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]
    name = hashlib.sha1(stamp[0].encode()).hexdigest()[:12] + "-" + os.path.basename(path) + ".json"
    index = os.path.join(index_dir, name)
    try:
        with open(index) as f:
            record = json.load(f)
        if record["shard"] == stamp:
            return record["samples"]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent, stale or unreadable: scan again
    samples = _scan_shard(path)
    # several ranks may write it at once: each writes its own temp file, and each rename is whole
    atomic_write_text(index, json.dumps({"shard": stamp, "samples": samples}))
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
    read by index rather than streamed: the shards are scanned once (tar order; headers, captions and each image's
    byte offset), then an image is one seek + read. So sampling, the caption drawn, DDP splits and resume are
    those of every other CaptionDataset: exact. `caption_keys`: "txt" for KEY.txt, other names are KEY.json fields.
    Samples without an image or a caption are left out and counted (`incomplete`). `index_dir`: keep each
    shard's scan there, so that later runs do not scan again."""

    decode_once = None  # read by offset from the shards: not cached (train.py checks for it)

    def __init__(self, shards, transform, caption_keys=("txt",), seed=0, index_dir=""):
        caption_keys = [caption_keys] if isinstance(caption_keys, str) else list(caption_keys)
        self.shards, locations, captions, self.incomplete = expand_shards(shards), [], [], 0
        for number, path in enumerate(self.shards):
            kept, incomplete = _select_captions(_scan_shard_cached(path, index_dir), caption_keys)
            self.incomplete += incomplete
            locations += [(number, offset, size, key) for key, (offset, size), _ in kept]
            captions += [sample_captions for _, _, sample_captions in kept]
        if self.incomplete:
            print(f"{shards}: {self.incomplete} samples without an image or a caption ({caption_keys}) left out")
        super().__init__(locations, captions, transform, seed, source=str(shards))

    def open_image(self, index):
        number, offset, size, key = self.image_paths[index]
        try:
            with open(self.shards[number], "rb") as f:
                f.seek(offset)
                with Image.open(io.BytesIO(f.read(size))) as img:
                    return img.convert("RGB")
        except IMAGE_ERRORS as e:
            raise ValueError(f"cannot read image {key} of shard {self.shards[number]} ({type(e).__name__}: {e}); "
                             f"replace or remove that sample") from e

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


class ShortAndLongCaptions(Dataset):
    """ProCLIP stage 1 in the official form (instance_long_captions): the short caption drawn per image and epoch,
    and the same image's long caption. Batch with `collate_short_and_long`."""

    def __init__(self, short, long, long_key):
        if len(short) != len(long):
            raise ValueError(f"{short.source}: {len(short)} short and {len(long)} long captions; they must pair up")
        empty = [i for i, caps in enumerate(long.captions_per_image) if not caps]
        if empty:
            raise ValueError(f"{short.source}: row {empty[0]} has an empty {long_key!r} caption; fill it or set "
                             f"instance_long_captions=false")
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

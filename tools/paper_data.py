"""The paper preset's data: turn each dataset, as it is distributed, into what evaluate.py reads, and check it all.

    python -m tools.paper_data prepare --data-root DATA_ROOT [--sources DIR] [--only cifar10,coco_5k] [--papers refine]
    python -m tools.paper_data check --data-root DATA_ROOT [--papers refine proclip]      (make check-data)
    python -m tools.paper_data sources [--data-root DATA_ROOT]       what to fetch by hand, and where to put it

`make data PRESET=paper DATA_ROOT=...` runs `prepare`, with DATA_ARGS="..." added to its options (e.g.
DATA_ARGS="--only cifar10,coco_5k"; DATA_ARGS=--skip-checksums for re-packed CIFAR / Flowers102 archives whose md5
differs from the official ones). Its last line counts the chosen papers' datasets that are ready and names the
missing ones. Downloads are never made here: each dataset is read from
SOURCES/<key>/ (default DATA_ROOT/downloads) in the layout its distribution unpacks to, and `sources` prints the
address and the target folder of every one. What `prepare` writes under DATA_ROOT:
    zeroshot/<key>/test/<NNNN_class>/...  classnames.txt (`folder<TAB>name`)  templates.txt     (common/data.py)
    retrieval/<key>/captions.json (COCO captions) + images/; XM3600: captions_<language>.json, one per language
    pairs/mmvp_vlm/pairs.json + images/                      (evaluate.py `pairs`)
    hard_negatives/sugarcrepe/<subset>.json, on DATA_ROOT/coco/val2017 (evaluate.py `hard_negatives`)
COCO 2017 (CLIP-Refine's training set and retrieval set) and ProCLIP's recaptioned CSV are read as they are, from
DATA_ROOT/coco/ and DATA_ROOT/recaption/train.csv; `check` checks them with the rest.

Reused, not rewritten: CLIP_benchmark's `build_dataset` (torchvision's dataset classes for the official test
splits, CLIP_benchmark's class names) and its prompt ensembles (en_zeroshot_classification_templates.json).
Written here: CUB-200 and UCF-101 (neither library has them), the Karpathy split JSON, ShareGPT4V, Urban-1k,
DOCCI and DCI readers, and readers of XM3600, SugarCrepe and the ImageNet variants that do what CLIP_benchmark's
builders do without calling them: those builders download whatever `download=` says when a file is missing, and
nothing here may download. Their class names, prompts, wnid lists and XM3600's languages are CLIP_benchmark's.
"""
import argparse
import csv
import dataclasses
import json
import os
import re
import shutil
import sys

import yaml

from common.data import check_classnames

CONFIGS = {"refine": "configs/paper/eval_refine.yaml", "proclip": "configs/paper/eval_proclip.yaml"}
COCO_TRAIN = ("coco/annotations/captions_train2017.json", "coco/train2017")   # CLIP-Refine training (§1)
RECAPTION_CSV = "recaption/train.csv"                                         # ProCLIP training (§2)
RECAPTION_COLUMNS = ("filepath", "short", "long")


class DataError(ValueError):
    """Every data problem found, one line each with its fix."""


@dataclasses.dataclass
class Source:
    marker: str        # what must exist under SOURCES/<key>/ once the download is unpacked ("a|b": either)
    fetch: str         # where to get it (and its licence, where there is one)
    note: str = ""     # the split that is used, where that is a choice


# Zero-shot sets. cb: the CLIP_benchmark dataset name (its builder + class names + templates); None = written here.
ZEROSHOT = {
    "cifar10": ("cifar10", Source("cifar-10-batches-py/test_batch",
                                  "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, unpacked here")),
    "cifar100": ("cifar100", Source("cifar-100-python/test",
                                    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz, unpacked here")),
    "food101": ("food101", Source("food-101/meta/test.json",
                                  "http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz, unpacked here")),
    "sun397": ("sun397", Source("SUN397/ClassName.txt",
                                "http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz, unpacked here",
                                "no official test split: every image, as CLIP_benchmark")),
    "cars": ("cars", Source("stanford_cars/cars_test_annos_withlabels.mat",
                            "Stanford Cars (the original site is gone; e.g. Kaggle 'stanford-cars-dataset' + "
                            "cars_test_annos_withlabels.mat): cars_test/, devkit/ and that .mat into stanford_cars/")),
    "aircraft": ("fgvc_aircraft", Source("fgvc-aircraft-2013b/data/images_variant_test.txt",
                                         "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/"
                                         "fgvc-aircraft-2013b.tar.gz, unpacked here")),
    "dtd": ("dtd", Source("dtd/dtd/labels/test1.txt",
                          "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz, unpacked into dtd/",
                          "partition 1 test split")),
    "pets": ("pets", Source("oxford-iiit-pet/annotations/test.txt",
                            "https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz and annotations.tar.gz, "
                            "unpacked into oxford-iiit-pet/")),
    "caltech101": ("caltech101", Source("caltech101/101_ObjectCategories",
                                        "https://data.caltech.edu/records/mzrjq-6wc02 (caltech-101.zip): "
                                        "101_ObjectCategories.tar.gz unpacked into caltech101/",
                                        "no official test split: every image incl. background, as CLIP_benchmark")),
    "flowers": ("flowers", Source("flowers-102/setid.mat",
                                  "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/: 102flowers.tgz (jpg/), "
                                  "imagelabels.mat, setid.mat, into flowers-102/")),
    "imagenet": ("imagenet1k", Source("ILSVRC2012_devkit_t12.tar.gz|meta.bin",
                                      "https://image-net.org (account and licence): ILSVRC2012_devkit_t12.tar.gz and "
                                      "ILSVRC2012_img_val.tar, here as they are (torchvision unpacks them once)",
                                      "the 50,000 validation images")),
    "eurosat": ("eurosat", Source("eurosat/2750",
                                  "https://madm.dfki.de/files/sentinel/EuroSAT.zip (RGB), unpacked into eurosat/",
                                  "no official test split: every image, as CLIP_benchmark")),
    "birds": (None, Source("CUB_200_2011/train_test_split.txt",
                           "https://data.caltech.edu/records/65de6-vp158 (CUB_200_2011.tgz), unpacked here",
                           "the official test split (train_test_split.txt = 0)")),
    "ucf101": (None, Source("split_zhou_UCF101.json",
                            "CoOp's UCF-101-midframes.zip (unpacked here) and split_zhou_UCF101.json, links in "
                            "github.com/KaiyangZhou/CoOp DATASETS.md",
                            "the middle frame of each test video, CoOp's split (CLIP's protocol)")),
    # ImageNet's robustness variants, each with ImageNet's class names masked to its classes (CLIP_benchmark's)
    "imagenet_v2": (None, Source("imagenetv2-matched-frequency-format-val",
                                 "huggingface.co/datasets/vaishaal/ImageNetV2 (imagenetv2-matched-frequency.tar.gz), "
                                 "unpacked here", "matched-frequency, 10,000 images; folder N is ImageNet class N")),
    "imagenet_a": (None, Source("imagenet-a",
                                "https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar, unpacked here",
                                "200 classes (a folder per wnid)")),
    "imagenet_r": (None, Source("imagenet-r",
                                "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar, unpacked here",
                                "200 classes (a folder per wnid)")),
    "imagenet_sketch": (None, Source("sketch",
                                     "ImageNet-Sketch.zip (github.com/HaohanWang/ImageNet-Sketch, or huggingface.co/"
                                     "datasets/songweig/imagenet_sketch data/ImageNet-Sketch.zip), unpacked here",
                                     "1,000 classes (a folder per wnid)")),
}
# Prompt ensembles for the two sets CLIP_benchmark lacks (CLIP's own, from its notebook of prompts).
EXTRA_TEMPLATES = {
    "birds": ["a photo of a {c}, a type of bird."],
    "ucf101": ["a photo of a person {c}.", "a video of a person {c}.", "a example of a person {c}.",
               "a demonstration of a person {c}.", "a photo of the person {c}.", "a video of the person {c}.",
               "a example of the person {c}.", "a demonstration of the person {c}.", "a photo of a person using {c}.",
               "a video of a person using {c}.", "a example of a person using {c}.",
               "a demonstration of a person using {c}.", "a photo of the person using {c}.",
               "a video of the person using {c}.", "a example of the person using {c}.",
               "a demonstration of the person using {c}.", "a photo of a person doing {c}.",
               "a video of a person doing {c}.", "a example of a person doing {c}.",
               "a demonstration of a person doing {c}.", "a photo of the person doing {c}.",
               "a video of the person doing {c}.", "a example of the person doing {c}.",
               "a demonstration of the person doing {c}.", "a photo of a person during {c}.",
               "a video of a person during {c}.", "a example of a person during {c}.",
               "a demonstration of a person during {c}.", "a photo of the person during {c}.",
               "a video of the person during {c}.", "a example of the person during {c}.",
               "a demonstration of the person during {c}.", "a photo of a person performing {c}.",
               "a video of a person performing {c}.", "a example of a person performing {c}.",
               "a demonstration of a person performing {c}.", "a photo of the person performing {c}.",
               "a video of the person performing {c}.", "a example of the person performing {c}.",
               "a demonstration of the person performing {c}.", "a photo of a person practicing {c}.",
               "a video of a person practicing {c}.", "a example of a person practicing {c}.",
               "a demonstration of a person practicing {c}.", "a photo of the person practicing {c}.",
               "a video of the person practicing {c}.", "a example of the person practicing {c}.",
               "a demonstration of the person practicing {c}."],
}

# Retrieval sets (ProCLIP, docs/methods.md §2). Long-caption sets keep one caption per image (1:1).
RETRIEVAL = {
    "coco_5k": Source("karpathy/dataset_coco.json",
                      "Karpathy's splits (caption_datasets.zip, https://cs.stanford.edu/people/karpathy/deepimagesent/"
                      ") into karpathy/; COCO val2014 images (http://images.cocodataset.org/zips/val2014.zip) "
                      "unpacked into coco2014/", "the 5,000 'test' images of dataset_coco.json, 5 captions each"),
    "flickr30k_1k": Source("karpathy/dataset_flickr30k.json",
                           "Karpathy's splits (as for coco_5k) into karpathy/; Flickr30k images (licence form: "
                           "https://shannon.cs.illinois.edu/DenotationGraph/) into flickr30k/flickr30k-images/",
                           "the 1,000 'test' images of dataset_flickr30k.json, 5 captions each"),
    "sharegpt4v_1k": Source("sharegpt4v/share-captioner_coco_lcs_sam_1246k_1107.json",
                            "huggingface.co/datasets/Lin-Chen/ShareGPT4V: that JSON into sharegpt4v/, and the images "
                            "it names (SAM, COCO, ...) under sharegpt4v/data/ as in ShareGPT4V's docs",
                            "the first 1,000 entries, as Long-CLIP"),
    "urban_1k": Source("urban1k/Urban1k/caption",
                       "huggingface.co/datasets/BeichenZhang/Urban1k (Urban1k.zip), unpacked into urban1k/"),
    "docci": Source("docci/docci_descriptions.jsonlines",
                    "https://google.github.io/docci: docci_descriptions.jsonlines and docci_images.tar.gz (images/) "
                    "into docci/", "the 'test' split"),
    "dci": Source("dci/densely_captioned_images/annotations",
                  "github.com/facebookresearch/DCI (SA-1B licence): densely_captioned_images/ with annotations/ and "
                  "photos/ into dci/", "every annotated image; caption = short_caption + extra_caption"),
    "xm3600": Source("xm3600/captions.jsonl",
                     "https://google.github.io/crossmodal-3600/web-data/captions.zip unpacked into xm3600/, and "
                     "https://open-images-dataset.s3.amazonaws.com/crossmodal-3600/images.tgz unpacked into "
                     "xm3600/images/", "3,600 images; per language the first caption of each image (1:1), as "
                     "CLIP_benchmark's crossmodal3600"),
}
# ProCLIP's other claims (docs/paper_preset.md, "Beyond the two tables"): multilingual retrieval (a RETRIEVAL set
# above), fine-grained pairs and compositional hard negatives; the ImageNet variants are ZEROSHOT sets.
PAIRS = {
    "mmvp_vlm": Source("mmvp_vlm/Questions.csv",
                       "huggingface.co/datasets/MMVP/MMVP_VLM (in the downloads folder: `hf download MMVP/MMVP_VLM "
                       "--repo-type dataset --local-dir mmvp_vlm`): Questions.csv and "
                       "'MLLM_VLM Images/<Type>/<id>.jpg' into mmvp_vlm/",
                       "9 patterns x 15 pairs; consecutive rows are a pair, prompt 'a photo of ' + statement "
                       "(docs/methods.md §5)"),
}
HARD_NEGATIVES = {
    "sugarcrepe": Source("sugar-crepe/data/swap_obj.json",
                         "github.com/RAIVNLab/sugar-crepe (git clone, or its data/*.json) into sugar-crepe/; the "
                         "images are COCO val2017 at DATA_ROOT/coco/val2017 (as for CLIP-Refine)",
                         "the 7 subsets of data/ (the refined negatives)"),
}
SUGARCREPE_SUBSETS = ["add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj"]
KINDS = {"zeroshot": ZEROSHOT, "retrieval": RETRIEVAL, "pairs": PAIRS, "hard_negatives": HARD_NEGATIVES}
DATASETS = [key for sets in KINDS.values() for key in sets]
TRAINING = {
    "coco": "COCO 2017 (http://images.cocodataset.org/zips/train2017.zip, val2017.zip, annotations/"
            "annotations_trainval2017.zip) unpacked into DATA_ROOT/coco/ as distributed (train2017/, val2017/, "
            "annotations/); no conversion",
    "recaption": "a CSV with columns filepath,short,long (image path relative to the CSV, a short and a long "
                 "caption, e.g. DreamLIP's recaptions of CC3M) at DATA_ROOT/recaption/train.csv",
}


def default_sources(data_root):
    return os.path.join(data_root, "downloads")


def kind_of(key):
    return next(kind for kind, sets in KINDS.items() if key in sets)


def source_of(key):
    return ZEROSHOT[key][1] if key in ZEROSHOT else KINDS[kind_of(key)][key]


def converted(key):
    """The folder `prepare` writes for a dataset, relative to DATA_ROOT."""
    return os.path.join(kind_of(key), key)


def _download_folder(key, sources):
    """Where a download's marker is: SOURCES/<key>/ for zero-shot sets, SOURCES/ (the marker names its folder)."""
    return os.path.join(sources, key) if key in ZEROSHOT else sources


def fetch_line(key, sources):
    source = source_of(key)
    return (f"{key}: fetch {source.fetch}; it must give "
            f"{os.path.join(_download_folder(key, sources), source.marker.split('|')[0])}")


# -----------------------------------------------------------------------------------------------------------------
# writing: atomic per dataset (a folder built under .tmp and renamed), images hard-linked where possible
def _link(src, dst):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system, or no hard links: copy
        shutil.copy2(src, dst)


def _slug(name):
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")[:60] or "class"


def _write_zeroshot(out, key, items, classes, templates):
    """items: [(label, source path or PIL image)]; classes: label -> name. Class folders `NNNN_name` sort by label."""
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    folders = {}
    for i, (label, image) in enumerate(items):
        folder = folders.setdefault(label, f"{label:04d}_{_slug(classes[label])}")
        if isinstance(image, str):
            _link(image, os.path.join(tmp, "test", folder, f"{i:06d}{os.path.splitext(image)[1].lower()}"))
        else:  # decoded in memory (CIFAR): lossless PNG
            os.makedirs(os.path.join(tmp, "test", folder), exist_ok=True)
            image.convert("RGB").save(os.path.join(tmp, "test", folder, f"{i:06d}.png"))
    with open(os.path.join(tmp, "classnames.txt"), "w") as f:
        f.writelines(f"{folders[label]}\t{classes[label]}\n" for label in sorted(folders))
    with open(os.path.join(tmp, "templates.txt"), "w") as f:
        f.writelines(f"{t}\n" for t in templates)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    missing = len(classes) - len(folders)
    return f"{key}: {len(items)} images, {len(folders)} classes" + (
        f" ({missing} of {len(classes)} classes have no test image and are left out)" if missing else "")


def _clip_benchmark_items(cb_name, root, skip_checksums):
    """(items, class names, templates) through CLIP_benchmark's builder (torchvision datasets), download=False."""
    import warnings

    from clip_benchmark.datasets.builder import build_dataset
    from torchvision.datasets import cifar, flowers102, utils

    failed = []  # the files these two md5-check and find wrong, for a message naming them

    def check_integrity(fpath, md5=None):
        ok = os.path.isfile(fpath) if skip_checksums else utils.check_integrity(fpath, md5)
        if not ok:
            failed.append(fpath)
        return ok

    # skip_checksums: only for re-packed copies (and the smoke test's fakes)
    cifar.check_integrity = flowers102.check_integrity = check_integrity
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "split argument ignored" for the sets without a test split (noted above)
            ds = build_dataset(cb_name, root=root, split="test", download=False)
    except RuntimeError as e:  # torchvision's "Dataset not found or corrupted. You can use download=True ..."
        if "download=True" not in str(e):
            raise
        key = os.path.basename(os.path.normpath(root))
        if failed:
            raise DataError(f"{key}: {failed[0]} is missing or corrupted (its md5 is not the official archive's); "
                            f"fetch and unpack it again ({ZEROSHOT[key][1].fetch}), or for a re-packed copy you "
                            f"trust: make data ... DATA_ARGS=--skip-checksums") from None
        raise DataError(f"{key}: torchvision finds no complete dataset under {root} (a file missing or corrupted); "
                        f"{fetch_line(key, os.path.dirname(os.path.normpath(root)))}") from None
    paths = labels = None
    if hasattr(ds, "samples") or hasattr(ds, "_samples"):      # ImageFolder (ImageNet, EuroSAT), StanfordCars
        samples = getattr(ds, "samples", None) or ds._samples
        paths, labels = [str(p) for p, _ in samples], [y for _, y in samples]
    elif hasattr(ds, "_labels") and (hasattr(ds, "_image_files") or hasattr(ds, "_images")):
        paths, labels = [str(p) for p in getattr(ds, "_image_files", None) or ds._images], list(ds._labels)
    elif hasattr(ds, "categories") and hasattr(ds, "index"):   # CLIP_benchmark's Caltech101
        paths = [os.path.join(ds.root, "101_ObjectCategories", ds.categories[y], f"image_{i:04d}.jpg")
                 for i, y in zip(ds.index, ds.y)]
        labels = list(ds.y)
    if paths is None:  # in-memory datasets (CIFAR): decode
        items = [(int(y), image) for image, y in (ds[i] for i in range(len(ds)))]
    else:
        fix = ds.target_transform or (lambda y: y)
        items = [(int(fix(y)), p) for p, y in zip(paths, labels)]
    return items, dict(enumerate(ds.classes)), list(ds.templates)


def _cub_items(root):
    base = os.path.join(root, "CUB_200_2011")

    def table(name):
        with open(os.path.join(base, name)) as f:
            return dict(line.split(maxsplit=1) for line in f.read().splitlines() if line.strip())
    images, labels, is_train = table("images.txt"), table("image_class_labels.txt"), table("train_test_split.txt")
    classes = {int(k) - 1: v.split(".", 1)[-1].replace("_", " ") for k, v in table("classes.txt").items()}
    items = [(int(labels[i]) - 1, os.path.join(base, "images", images[i]))
             for i in sorted(images, key=int) if is_train[i].strip() == "0"]
    return items, classes, EXTRA_TEMPLATES["birds"]


def _coop_items(root, split_file, image_dir, key):
    """CoOp's split_zhou_*.json: {"test": [[relative path, label, class name], ...]}."""
    with open(os.path.join(root, split_file)) as f:
        test = json.load(f)["test"]
    classes = {int(y): name.replace("_", " ") for _, y, name in test}
    items = [(int(y), os.path.join(root, image_dir, path)) for path, y, _ in test]
    return items, classes, EXTRA_TEMPLATES[key]


def _clip_benchmark_file(name):
    from clip_benchmark.datasets import builder
    with open(os.path.join(os.path.dirname(builder.__file__), name), encoding="utf-8") as f:
        return json.load(f)


def _masked_wnids(variable):
    """CLIP_benchmark's wnid list of ImageNet-A or -R: a literal inside its build_dataset, read from the source."""
    import ast
    import inspect

    from clip_benchmark.datasets import builder
    for node in ast.walk(ast.parse(inspect.getsource(builder))):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == variable:
            return set(ast.literal_eval(node.value))
    raise DataError(f"{variable} not found in {builder.__file__}: the CLIP_benchmark version differs from "
                    f"requirements.lock's")


IMAGENET_MASKS = {"imagenet_a": "imagenet_a_wnids", "imagenet_r": "imagenet_r_wnids"}


def _imagenet_variant_items(root, key):
    """ImageNet-V2 (folder N = ImageNet class N, as CLIP_benchmark's ImageNetV2Dataset), -A and -R (a folder per
    wnid; the label is its place among the set's 200 wnids, in ImageNet's order, as CLIP_benchmark's mask), -Sketch (a
    folder per wnid, all 1,000): ImageNet's class names (CLIP_benchmark's) masked to the set's classes, and its
    ImageNet prompts."""
    from clip_benchmark.datasets.builder import all_imagenet_wordnet_ids as wnids
    names = _clip_benchmark_file("en_classnames.json")["imagenet1k"]
    base = os.path.join(root, ZEROSHOT[key][1].marker)
    if key == "imagenet_v2":
        label_of, classes = {str(i): i for i in range(len(wnids))}, dict(enumerate(names))
    else:
        kept = [w for w in wnids if w in _masked_wnids(IMAGENET_MASKS[key])] if key in IMAGENET_MASKS else wnids
        label_of = {w: i for i, w in enumerate(kept)}
        classes = {i: names[wnids.index(w)] for i, w in enumerate(kept)}
    folders = sorted(e.name for e in os.scandir(base) if e.is_dir())
    unknown = [f for f in folders if f not in label_of]
    if unknown:
        raise DataError(f"{key}: {os.path.join(base, unknown[0])} is not a class folder of {key} (expected "
                        f"{'0..999' if key == 'imagenet_v2' else 'its wnids, e.g. ' + next(iter(label_of))}); "
                        f"unpack the archive as it is distributed")
    items = [(label_of[f], os.path.join(base, f, name)) for f in folders
             for name in sorted(os.listdir(os.path.join(base, f))) if not name.startswith(".")]
    return items, classes, _clip_benchmark_file("en_zeroshot_classification_templates.json")["imagenet1k"]


# The zero-shot sets read here (ZEROSHOT's without a CLIP_benchmark name): root (SOURCES/<key>) -> items, classes,
# templates.
ZEROSHOT_READERS = {
    "birds": _cub_items,
    "ucf101": lambda root: _coop_items(root, "split_zhou_UCF101.json", "UCF-101-midframes", "ucf101"),
    **{key: (lambda root, key=key: _imagenet_variant_items(root, key))
       for key in ("imagenet_v2", "imagenet_a", "imagenet_r", "imagenet_sketch")},
}


def prepare_zeroshot(key, sources, data_root, skip_checksums=False, max_templates=0):
    root = os.path.join(sources, key)
    cb_name = ZEROSHOT[key][0]
    if cb_name:
        items, classes, templates = _clip_benchmark_items(cb_name, root, skip_checksums)
    else:
        items, classes, templates = ZEROSHOT_READERS[key](root)
    templates = templates[:max_templates] if max_templates > 0 else templates
    return _write_zeroshot(os.path.join(data_root, "zeroshot", key), key, items, classes, templates)


# retrieval: -> [(relative image path, source image path, [captions])]
def _karpathy(sources, json_name, image_root, with_filepath):
    with open(os.path.join(sources, "karpathy", json_name)) as f:
        images = json.load(f)["images"]
    out = []
    for im in images:
        if im["split"] != "test":
            continue
        rel = os.path.join(im["filepath"], im["filename"]) if with_filepath else im["filename"]
        out.append((rel, os.path.join(sources, image_root, rel), [s["raw"].strip() for s in im["sentences"]]))
    return out


def _sharegpt4v(sources, count=1000):
    with open(os.path.join(sources, RETRIEVAL["sharegpt4v_1k"].marker)) as f:
        entries = json.load(f)[:count]
    return [(e["image"], os.path.join(sources, "sharegpt4v", "data", e["image"]),
             [next(t["value"] for t in e["conversations"] if t["from"] == "gpt").strip()]) for e in entries]


def _urban1k(sources):
    base = os.path.join(sources, "urban1k", "Urban1k")
    out = []
    for name in sorted(os.listdir(os.path.join(base, "caption")), key=lambda n: (len(n), n)):
        stem = os.path.splitext(name)[0]
        with open(os.path.join(base, "caption", name)) as f:
            caption = f.read().strip()
        out.append((f"{stem}.jpg", os.path.join(base, "image", f"{stem}.jpg"), [caption]))
    return out


def _docci(sources):
    out = []
    with open(os.path.join(sources, RETRIEVAL["docci"].marker)) as f:
        for line in f:
            if line.strip():
                e = json.loads(line)
                if e["split"] == "test":
                    out.append((e["image_file"], os.path.join(sources, "docci", "images", e["image_file"]),
                                [e["description"].strip()]))
    return out


def _dci(sources):
    base = os.path.join(sources, "dci", "densely_captioned_images")
    out = []
    for name in sorted(os.listdir(os.path.join(base, "annotations"))):
        with open(os.path.join(base, "annotations", name)) as f:
            e = json.load(f)
        caption = " ".join(p.strip() for p in (e.get("short_caption"), e.get("extra_caption")) if p and p.strip())
        if not caption:
            raise DataError(f"{os.path.join(base, 'annotations', name)}: no short_caption or extra_caption")
        out.append((e["image"], os.path.join(base, "photos", e["image"]), [caption]))
    return out


RETRIEVAL_READERS = {
    "coco_5k": lambda s: _karpathy(s, "dataset_coco.json", "coco2014", with_filepath=True),
    "flickr30k_1k": lambda s: _karpathy(s, "dataset_flickr30k.json", os.path.join("flickr30k", "flickr30k-images"),
                                        with_filepath=False),
    "sharegpt4v_1k": _sharegpt4v, "urban_1k": _urban1k, "docci": _docci, "dci": _dci,
}


def _write_folder(out, write):
    """Build a dataset's folder as out.tmp with write(tmp) -> message, then put it in place: all of it or nothing."""
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        message = write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return message


def _require_images(key, paths, sources):
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(f"{key}: {len(missing)} of {len(paths)} images are missing, e.g. {missing[0]}; "
                        f"{fetch_line(key, sources)}")


def _write_json(path, content):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(content, f, ensure_ascii=False)


def prepare_retrieval(key, sources, data_root):
    pairs = RETRIEVAL_READERS[key](sources)
    _require_images(key, [src for _, src, _ in pairs], sources)

    def write(tmp):
        coco = {"images": [], "annotations": []}
        for image_id, (rel, src, captions) in enumerate(pairs):
            _link(src, os.path.join(tmp, "images", rel))
            coco["images"].append({"id": image_id, "file_name": rel})
            coco["annotations"] += [{"id": len(coco["annotations"]), "image_id": image_id, "caption": c}
                                    for c in captions]
        _write_json(os.path.join(tmp, "captions.json"), coco)
        return f"{key}: {len(pairs)} images, {len(coco['annotations'])} captions"
    return _write_folder(os.path.join(data_root, converted(key)), write)


def xm3600_languages():
    """The 36 languages of XM3600, in CLIP_benchmark's list (its crossmodal3600.SUPPORTED_LANGUAGES)."""
    from clip_benchmark.datasets.crossmodal3600 import SUPPORTED_LANGUAGES
    return list(SUPPORTED_LANGUAGES)


def _xm3600(sources, tmp):
    """captions.jsonl (a line per image: {"image/key": K, "<language>": {"caption": [...]}, ...}; images/K.jpg) ->
    captions_<language>.json (COCO captions) per language with each image's first caption (1:1, as CLIP_benchmark's
    crossmodal3600.create_annotation_file), all on one images/ folder, so evaluate.py encodes the images once."""
    base = os.path.join(sources, "xm3600")
    with open(os.path.join(base, "captions.jsonl"), encoding="utf-8") as f:
        entries = [json.loads(line) for line in f if line.strip()]
    names = [f"{e['image/key']}.jpg" for e in entries]
    _require_images("xm3600", [os.path.join(base, "images", n) for n in names], sources)
    languages = xm3600_languages()
    absent = next(((e["image/key"], lang) for e in entries for lang in languages
                   if not (e.get(lang) or {}).get("caption")), None)
    if absent:
        raise DataError(f"xm3600: image {absent[0]} of {os.path.join(base, 'captions.jsonl')} has no {absent[1]!r} "
                        f"caption; use the released captions.zip as it is")
    for name in names:
        _link(os.path.join(base, "images", name), os.path.join(tmp, "images", name))
    images = [{"id": i, "file_name": n} for i, n in enumerate(names)]
    for lang in languages:
        _write_json(os.path.join(tmp, f"captions_{lang}.json"), {"images": images, "annotations": [
            {"id": i, "image_id": i, "caption": e[lang]["caption"][0].strip()} for i, e in enumerate(entries)]})
    return f"xm3600: {len(names)} images, one caption each in {len(languages)} languages"


MMVP_COLUMNS = ("Question ID", "Type", "Statement")


def _mmvp_vlm(sources, tmp):
    """Questions.csv (Question ID, Type, Statement) + 'MLLM_VLM Images/<Type>/<Question ID>.jpg' -> pairs.json,
    read as the benchmark's own evaluation reads them (docs/methods.md §5): consecutive rows are a pair (odd id, the
    next), both images from the first row's Type folder, caption k = "a photo of " + statement k, and statement k
    belongs to image k. The pattern of a pair is its Type."""
    base = os.path.join(sources, "mmvp_vlm")
    path = os.path.join(base, "Questions.csv")
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        absent = [c for c in MMVP_COLUMNS if c not in (reader.fieldnames or [])]
        rows = list(reader)
    if absent or not rows or len(rows) % 2:
        raise DataError(f"mmvp_vlm: {path} must have the columns {', '.join(MMVP_COLUMNS)} and an even number of "
                        f"rows (has {reader.fieldnames}, {len(rows)} rows); use the released file as it is")
    pairs, sources_of = [], {}
    for first, second in zip(rows[::2], rows[1::2]):
        ids = (int(first["Question ID"]), int(second["Question ID"]))
        if ids[0] % 2 != 1 or ids[1] != ids[0] + 1 or first["Type"] != second["Type"]:
            raise DataError(f"mmvp_vlm: {path}: rows {ids[0]} and {ids[1]} are not a pair (an odd Question ID, the "
                            f"next one, the same Type); use the released file as it is")
        images = [f"{_slug(first['Type'])}/{i}.jpg" for i in ids]
        sources_of.update({rel: os.path.join(base, "MLLM_VLM Images", first["Type"], f"{i}.jpg")
                           for rel, i in zip(images, ids)})
        pairs.append({"pattern": first["Type"], "images": images,
                      "captions": ["a photo of " + row["Statement"] for row in (first, second)]})
    _require_images("mmvp_vlm", list(sources_of.values()), sources)
    for rel, src in sources_of.items():
        _link(src, os.path.join(tmp, "images", rel))
    _write_json(os.path.join(tmp, "pairs.json"), {"pairs": pairs})
    return f"mmvp_vlm: {len(pairs)} pairs in {len({p['pattern'] for p in pairs})} patterns"


def _sugarcrepe(sources, tmp):
    """data/<subset>.json ({"<i>": {filename, caption, negative_caption}}) -> <subset>.json {"items": [{image,
    positive, negative}]} per subset, in the file's order; the images stay in DATA_ROOT/coco/val2017."""
    base = os.path.join(sources, "sugar-crepe", "data")
    missing = [s for s in SUGARCREPE_SUBSETS if not os.path.isfile(os.path.join(base, f"{s}.json"))]
    if missing:
        raise DataError(f"sugarcrepe: {os.path.join(base, missing[0] + '.json')} not found; "
                        f"{fetch_line('sugarcrepe', sources)}")
    counts = []
    for subset in SUGARCREPE_SUBSETS:
        with open(os.path.join(base, f"{subset}.json"), encoding="utf-8") as f:
            entries = json.load(f).values()
        _write_json(os.path.join(tmp, f"{subset}.json"), {"items": [
            {"image": e["filename"], "positive": e["caption"], "negative": e["negative_caption"]} for e in entries]})
        counts.append(f"{subset} {len(entries)}")
    return f"sugarcrepe: items per subset: {', '.join(counts)} (images: COCO val2017 in DATA_ROOT/coco/val2017)"


WRITERS = {"xm3600": _xm3600, "mmvp_vlm": _mmvp_vlm, "sugarcrepe": _sugarcrepe}  # sources, folder -> message


def convert(key, sources, data_root, skip_checksums=False, max_templates=0):
    if key in ZEROSHOT:
        return prepare_zeroshot(key, sources, data_root, skip_checksums, max_templates)
    if key in WRITERS:
        return _write_folder(os.path.join(data_root, converted(key)), lambda tmp: WRITERS[key](sources, tmp))
    return prepare_retrieval(key, sources, data_root)


def _annotation_paths(cfg):
    """Every dataset path an eval config reads: zero-shot roots and each other set's annotations."""
    return [*cfg.get("zeroshot", {}).values(),
            *(spec["annotations"] for kind in ("retrieval", "pairs", "hard_negatives")
              for spec in cfg.get(kind, {}).values())]


def paper_datasets(papers=("refine", "proclip"), configs=None):
    """-> the keys of the datasets that the chosen papers' evaluation suites read, in DATASETS order."""
    read = set()
    for paper in papers:
        with open((configs or CONFIGS)[paper]) as f:
            read.update(_dataset_of(path) for path in _annotation_paths(yaml.safe_load(f) or {}))
    return [key for key in DATASETS if key in read]


def prepare(data_root, sources=None, only=None, skip_checksums=False, out=None, max_templates=0,
            papers=("refine", "proclip")):
    """Convert every dataset of the chosen papers whose download is in place (or those of `only`); then raise a
    DataError that lists, one line each, every dataset still missing with where to fetch it. Datasets done before are
    kept."""
    sources, out = sources or default_sources(data_root), out or sys.stdout
    unknown = [k for k in only or [] if k not in DATASETS]
    if unknown:
        raise DataError(f"--only {unknown}: unknown; datasets: {', '.join(DATASETS)}")
    problems = []
    keys = only or paper_datasets(papers)
    for key in keys:
        folder = os.path.join(data_root, converted(key))
        if os.path.isdir(folder):
            broken = converted_problems(key, data_root)
            if not broken:
                out.write(f"{key}: done already ({folder}; delete it to convert again)\n")
                continue
            out.write(f"{key}: the converted set is broken ({broken[0].split('; ')[0]}): converting it again\n")
        base = _download_folder(key, sources)
        if not any(os.path.exists(os.path.join(base, m)) for m in source_of(key).marker.split("|")):
            problems.append(fetch_line(key, sources))
            continue
        try:
            out.write(convert(key, sources, data_root, skip_checksums, max_templates) + "\n")
        except DataError as e:
            problems.append(str(e))
        except (OSError, KeyError, ValueError, RuntimeError, json.JSONDecodeError) as e:
            problems.append(f"{key}: cannot convert {base} ({type(e).__name__}: {e}); {fetch_line(key, sources)}")
        out.flush()
    coco = "refine" in papers or "sugarcrepe" in keys  # SugarCrepe's images are COCO val2017
    for name in ("coco",) * coco + ("recaption",) * ("proclip" in papers):
        out.write(f"{name} (read as it is, not converted): {TRAINING[name]}\n")
    if problems:
        raise DataError(f"{len(problems)} dataset(s) not converted; fetch them, then rerun the same command:\n  "
                        + "\n  ".join(problems) + "\n" + readiness(data_root, papers))


def converted_problems(key, data_root, configs=None):
    """-> the problems of the converted folder of dataset `key`, those check reports for the evaluation sets that
    read it; [] when it is sound."""
    folder = os.path.join(data_root, converted(key))
    if key in ZEROSHOT:
        return _check_zeroshot(key, folder, data_root)
    problems = []
    for path in (configs or CONFIGS).values():
        with open(path) as f:
            cfg = yaml.safe_load(f) or {}
        for kind in ANNOTATIONS:
            for name, spec in cfg.get(kind, {}).items():
                if _dataset_of(spec["annotations"]) == key:
                    paths = (os.path.join(data_root, spec[k]) for k in ("annotations", "images"))
                    problems += _check_set(kind, name, *paths, data_root)
    return list(dict.fromkeys(problems))


def readiness(data_root, papers):
    """The last line of `prepare`: how many of the chosen papers' datasets are converted and sound, and which not."""
    keys = paper_datasets(papers)
    missing = [k for k in keys if converted_problems(k, data_root)]
    line = f"{len(keys) - len(missing)} of {len(keys)} datasets of {' and '.join(papers)} ready under {data_root}"
    return line + (f"; missing: {', '.join(missing)} (make data-sources: what to fetch; make check-data: every "
                   f"problem)" if missing else "")


# -----------------------------------------------------------------------------------------------------------------
# checking: every path the chosen papers read, all problems at once, before any weight is downloaded
def _dataset_of(path):
    parts = os.path.normpath(path).split(os.sep)
    return next((p for p in parts if p in DATASETS), None)


def _fix(key, data_root):
    if key is None:
        return "fix the path in the eval config"
    if os.path.isdir(os.path.join(data_root, converted(key))):  # converted, broken since: make data converts again
        return f"convert it again: make data PRESET=paper DATA_ROOT={data_root} DATA_ARGS=\"--only {key}\""
    return (f"run `make data PRESET=paper DATA_ROOT={data_root}` (python -m tools.paper_data sources: what to "
            f"fetch for {key})")


def _check_zeroshot(name, root, data_root):
    fix = _fix(_dataset_of(root), data_root)
    missing = [n for n in ("classnames.txt", "templates.txt", "test") if not os.path.exists(os.path.join(root, n))]
    if missing:
        return [f"zero-shot {name}: {root} has no {', '.join(missing)}; {fix}"]
    folders = sorted(e.name for e in os.scandir(os.path.join(root, "test")) if e.is_dir())
    try:
        check_classnames(os.path.join(root, "classnames.txt"), folders)
    except ValueError as e:
        return [f"zero-shot {name}: {e}"]
    empty = next((f for f in folders if not any(os.scandir(os.path.join(root, "test", f)))), None)
    return [f"zero-shot {name}: class folder {os.path.join(root, 'test', empty)} is empty; {fix}"] if empty else []


def _coco_images(content):
    assert isinstance(content["annotations"], list)
    return [im["file_name"] for im in content["images"]]


def _pair_images(content):
    assert all(len(p["images"]) == len(p["captions"]) == 2 and p["pattern"] for p in content["pairs"])
    return [im for p in content["pairs"] for im in p["images"]]


def _item_images(content):
    assert all(it["positive"] and it["negative"] for it in content["items"])
    return [it["image"] for it in content["items"]]


# What each kind's annotation file is, and the images it names (relative to the set's image folder).
ANNOTATIONS = {
    "retrieval": ("a COCO captions file with images and annotations", _coco_images),
    "pairs": ('a pairs file {"pairs": [{"pattern", "images": [2], "captions": [2]}, ...]}', _pair_images),
    "hard_negatives": ('a hard-negatives file {"items": [{"image", "positive", "negative"}, ...]}', _item_images),
}


def _check_set(kind, name, annotations, images, data_root, sample=20):
    """An evaluation set of one kind: its dataset's folder, its annotation file and the first `sample` images. A
    dataset's folder or an image folder that is missing is one line, however many sets read it."""
    key = _dataset_of(annotations)
    fix = _fix(key, data_root) if key else f"put {TRAINING['coco']}"
    if key and not os.path.isdir(os.path.join(data_root, converted(key))):
        return [f"{key}: {os.path.join(data_root, converted(key))} not found; {fix}"]
    if not os.path.isfile(annotations):
        return [f"{kind} {name}: {annotations} not found; {fix}"]
    if not os.path.isdir(images):
        image_key = _dataset_of(images)
        return [f"image folder {images} not found; "
                f"{_fix(image_key, data_root) if image_key else 'put ' + TRAINING['coco']}"]
    what, image_files = ANNOTATIONS[kind]
    try:
        with open(annotations, encoding="utf-8") as f:
            files = image_files(json.load(f))
        assert files
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        return [f"{kind} {name}: {annotations} is not {what}; {fix}"]
    absent = [f for f in files[:sample] if not os.path.isfile(os.path.join(images, f))]
    return [f"{kind} {name}: {len(absent)} of the first {min(sample, len(files))} images of {annotations} are missing "
            f"from {images} (e.g. {absent[0]}); {fix}"] if absent else []


def _check_coco_json(name, annotations, images, fix, sample=20):
    if not os.path.isfile(annotations):
        return [f"{name}: {annotations} not found; {fix}"]
    if not os.path.isdir(images):
        return [f"{name}: image folder {images} not found; {fix}"]
    try:
        with open(annotations) as f:
            coco = json.load(f)
        files = [im["file_name"] for im in coco["images"]]
        assert isinstance(coco["annotations"], list) and files
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        return [f"{name}: {annotations} is not a COCO captions file with images and annotations; {fix}"]
    absent = [f for f in files[:sample] if not os.path.isfile(os.path.join(images, f))]
    return [f"{name}: {len(absent)} of the first {min(sample, len(files))} images of {annotations} are missing from "
            f"{images} (e.g. {absent[0]}); {fix}"] if absent else []


def _check_recaption(path, sample=20):
    fix = f"put {TRAINING['recaption']}"
    if not os.path.isfile(path):
        return [f"ProCLIP training data: {path} not found; {fix}"]
    with open(path, newline="") as f:
        reader = csv.DictReader(f, delimiter="\t" if path.endswith(".tsv") else ",")
        absent_columns = [c for c in RECAPTION_COLUMNS if c not in (reader.fieldnames or [])]
        if absent_columns:
            return [f"ProCLIP training data: {path} lacks column(s) {absent_columns} (has {reader.fieldnames}); {fix}"]
        rows = [row for _, row in zip(range(sample), reader)]
    base = os.path.dirname(os.path.abspath(path))
    absent = [r["filepath"] for r in rows if not os.path.isfile(os.path.join(base, r["filepath"]))]
    return [f"ProCLIP training data: {len(absent)} of the first {len(rows)} images of {path} are missing (e.g. "
            f"{os.path.join(base, absent[0])}); paths are relative to the CSV's folder"] if absent else []


def data_problems(data_root, papers=("refine", "proclip"), configs=None):
    """-> one line per problem (with its fix) in everything the chosen papers' stages and evaluations read."""
    configs = configs or CONFIGS
    problems = []
    if not os.path.isdir(data_root):  # then every path below is missing too, each with its own fix
        problems.append(f"DATA_ROOT {data_root} does not exist; create it and run `make data PRESET=paper "
                        f"DATA_ROOT={data_root}` (docs/paper_preset.md)")
    if "refine" in papers:
        fix = f"put {TRAINING['coco']}"
        problems += _check_coco_json("CLIP-Refine training data", *(os.path.join(data_root, p) for p in COCO_TRAIN),
                                     fix)
    if "proclip" in papers:
        problems += _check_recaption(os.path.join(data_root, RECAPTION_CSV))
    for paper in papers:
        with open(configs[paper]) as f:
            cfg = yaml.safe_load(f) or {}
        for name, rel in cfg.get("zeroshot", {}).items():
            problems += _check_zeroshot(name, os.path.join(data_root, rel), data_root)
        for kind in ANNOTATIONS:
            for name, spec in cfg.get(kind, {}).items():
                problems += _check_set(kind, name, *(os.path.join(data_root, spec[k]) for k in ("annotations",
                                                                                               "images")), data_root)
    return list(dict.fromkeys(problems))  # a set both papers read is reported once


def require_data(data_root, papers=("refine", "proclip")):
    """Raise a DataError listing every problem (one line each, with its fix); nothing is downloaded or submitted."""
    problems = data_problems(data_root, papers)
    if problems:
        raise DataError(f"{len(problems)} data problem(s) under {data_root} (nothing was started):\n  "
                        + "\n  ".join(problems))


# -----------------------------------------------------------------------------------------------------------------
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser("python -m tools.paper_data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="convert the downloaded datasets into DATA_ROOT")
    p.add_argument("--data-root", required=True)
    p.add_argument("--sources", default="", help="where the downloads are (default DATA_ROOT/downloads)")
    p.add_argument("--only", default="", help="comma-separated dataset keys (default: all)")
    p.add_argument("--skip-checksums", action="store_true",
                   help="accept CIFAR / Flowers102 files whose md5 differs from the official archives (a re-packed "
                        "copy you trust; make data DATA_ARGS=--skip-checksums)")
    p.add_argument("--max-templates", type=int, default=0,
                   help="keep only the first N prompts per set (smoke tests: every prompt is embedded; 0 = all)")
    p.add_argument("--papers", nargs="+", default=["refine", "proclip"], choices=list(CONFIGS),
                   help="convert only the datasets these papers read (default: both)")
    c = sub.add_parser("check", help="check every path the paper preset reads; list every problem")
    c.add_argument("--data-root", required=True)
    c.add_argument("--papers", nargs="+", default=["refine", "proclip"], choices=list(CONFIGS))
    s = sub.add_parser("sources", help="print what to fetch by hand for each dataset, and where to put it")
    s.add_argument("--data-root", default="DATA_ROOT")
    args = parser.parse_args(argv)
    try:
        if args.command == "prepare":
            prepare(args.data_root, args.sources or None, [k for k in args.only.split(",") if k], args.skip_checksums,
                    max_templates=args.max_templates, papers=args.papers)
            print(readiness(args.data_root, args.papers))
        elif args.command == "check":
            require_data(args.data_root, args.papers)
            print(f"data check: every path of {' and '.join(args.papers)} under {args.data_root} is in place")
        else:
            sources = default_sources(args.data_root)
            for key in DATASETS:
                note = source_of(key).note
                print(fetch_line(key, sources) + (f" [{note}]" if note else ""))
            for name, text in TRAINING.items():
                print(f"{name}: {text}")
    except DataError as e:
        raise SystemExit(f"tools.paper_data: {e}") from None


if __name__ == "__main__":
    main()

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
    retrieval/<key>/captions.json (COCO captions) + images/
COCO 2017 (CLIP-Refine's training set and retrieval set) and ProCLIP's recaptioned CSV are read as they are, from
DATA_ROOT/coco/ and DATA_ROOT/recaption/train.csv; `check` checks them with the rest.

Reused, not rewritten: CLIP_benchmark's `build_dataset` (torchvision's dataset classes for the official test
splits, CLIP_benchmark's class names) and its prompt ensembles (en_zeroshot_classification_templates.json).
Written here: CUB-200 and UCF-101 (neither library has them), the Karpathy split JSON, ShareGPT4V, Urban-1k,
DOCCI and DCI readers.
"""
import argparse
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
}
TRAINING = {
    "coco": "COCO 2017 (http://images.cocodataset.org/zips/train2017.zip, val2017.zip, annotations/"
            "annotations_trainval2017.zip) unpacked into DATA_ROOT/coco/ as distributed (train2017/, val2017/, "
            "annotations/); no conversion",
    "recaption": "a CSV with columns filepath,short,long (image path relative to the CSV, a short and a long "
                 "caption, e.g. DreamLIP's recaptions of CC3M) at DATA_ROOT/recaption/train.csv",
}


def default_sources(data_root):
    return os.path.join(data_root, "downloads")


def fetch_line(key, sources):
    source = ZEROSHOT[key][1] if key in ZEROSHOT else RETRIEVAL[key]
    folder = sources if key in RETRIEVAL else os.path.join(sources, key)
    return f"{key}: fetch {source.fetch}; it must give {os.path.join(folder, source.marker.split('|')[0])}"


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


def prepare_zeroshot(key, sources, data_root, skip_checksums=False, max_templates=0):
    root = os.path.join(sources, key)
    cb_name = ZEROSHOT[key][0]
    if cb_name:
        items, classes, templates = _clip_benchmark_items(cb_name, root, skip_checksums)
    elif key == "birds":
        items, classes, templates = _cub_items(root)
    else:
        items, classes, templates = _coop_items(root, "split_zhou_UCF101.json", "UCF-101-midframes", key)
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


def prepare_retrieval(key, sources, data_root):
    pairs = RETRIEVAL_READERS[key](sources)
    missing = [src for _, src, _ in pairs if not os.path.isfile(src)]
    if missing:
        raise DataError(f"{key}: {len(missing)} of {len(pairs)} images are missing, e.g. {missing[0]}; "
                        f"{fetch_line(key, sources)}")
    out = os.path.join(data_root, "retrieval", key)
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    coco = {"images": [], "annotations": []}
    for image_id, (rel, src, captions) in enumerate(pairs):
        _link(src, os.path.join(tmp, "images", rel))
        coco["images"].append({"id": image_id, "file_name": rel})
        coco["annotations"] += [{"id": len(coco["annotations"]), "image_id": image_id, "caption": c} for c in captions]
    with open(os.path.join(tmp, "captions.json"), "w") as f:
        json.dump(coco, f)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return f"{key}: {len(pairs)} images, {len(coco['annotations'])} captions"


def paper_datasets(papers=("refine", "proclip"), configs=None):
    """-> the keys of the datasets that the chosen papers' evaluation suites read, in ZEROSHOT, RETRIEVAL order."""
    read = set()
    for paper in papers:
        with open((configs or CONFIGS)[paper]) as f:
            cfg = yaml.safe_load(f) or {}
        read.update(_dataset_of(rel) for rel in cfg.get("zeroshot", {}).values())
        read.update(_dataset_of(spec["annotations"]) for spec in cfg.get("retrieval", {}).values())
    return [key for key in [*ZEROSHOT, *RETRIEVAL] if key in read]


def prepare(data_root, sources=None, only=None, skip_checksums=False, out=None, max_templates=0,
            papers=("refine", "proclip")):
    """Convert every dataset of the chosen papers whose download is in place (or those of `only`); then raise a
    DataError that lists, one line each, every dataset still missing with where to fetch it. Datasets done before are
    kept."""
    sources, out = sources or default_sources(data_root), out or sys.stdout
    keys = list(ZEROSHOT) + list(RETRIEVAL)
    unknown = [k for k in only or [] if k not in keys]
    if unknown:
        raise DataError(f"--only {unknown}: unknown; datasets: {', '.join(keys)}")
    problems = []
    for key in only or paper_datasets(papers):
        kind = "zeroshot" if key in ZEROSHOT else "retrieval"
        if os.path.isdir(os.path.join(data_root, kind, key)):
            broken = converted_problems(key, data_root)
            if not broken:
                out.write(f"{key}: done already ({os.path.join(data_root, kind, key)}; delete it to convert again)\n")
                continue
            out.write(f"{key}: the converted set is broken ({broken[0].split('; ')[0]}): converting it again\n")
        source = ZEROSHOT[key][1] if key in ZEROSHOT else RETRIEVAL[key]
        base = os.path.join(sources, key) if key in ZEROSHOT else sources
        if not any(os.path.exists(os.path.join(base, m)) for m in source.marker.split("|")):
            problems.append(fetch_line(key, sources))
            continue
        try:
            out.write((prepare_zeroshot(key, sources, data_root, skip_checksums, max_templates) if key in ZEROSHOT
                       else prepare_retrieval(key, sources, data_root)) + "\n")
        except DataError as e:
            problems.append(str(e))
        except (OSError, KeyError, ValueError, RuntimeError, json.JSONDecodeError) as e:
            problems.append(f"{key}: cannot convert {os.path.join(sources, key) if key in ZEROSHOT else sources} "
                            f"({type(e).__name__}: {e}); {fetch_line(key, sources)}")
        out.flush()
    for name in ("coco",) * ("refine" in papers) + ("recaption",) * ("proclip" in papers):
        out.write(f"{name} (read as it is, not converted): {TRAINING[name]}\n")
    if problems:
        raise DataError(f"{len(problems)} dataset(s) not converted; fetch them, then rerun the same command:\n  "
                        + "\n  ".join(problems) + "\n" + readiness(data_root, papers))


def converted_problems(key, data_root):
    """-> the problems of the converted folder of dataset `key` (what check reports for it); [] when it is sound."""
    if key in ZEROSHOT:
        return _check_zeroshot(key, os.path.join(data_root, "zeroshot", key), data_root)
    folder = os.path.join(data_root, "retrieval", key)
    return _check_coco_json(f"retrieval {key}", os.path.join(folder, "captions.json"), os.path.join(folder, "images"),
                            _fix(key, data_root))


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
    return next((p for p in parts if p in ZEROSHOT or p in RETRIEVAL), None)


def _fix(key, data_root):
    if key is None:
        return "fix the path in the eval config"
    converted = os.path.join(data_root, "zeroshot" if key in ZEROSHOT else "retrieval", key)
    if os.path.isdir(converted):  # converted before, broken since: make data converts it again
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
    import csv
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
    if not os.path.isdir(data_root):
        return [f"DATA_ROOT {data_root} does not exist; create it and run `make data PRESET=paper DATA_ROOT="
                f"{data_root}` (docs/paper_preset.md)"]
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
        for name, spec in cfg.get("retrieval", {}).items():
            annotations, images = (os.path.join(data_root, spec[k]) for k in ("annotations", "images"))
            key = _dataset_of(annotations)
            fix = _fix(key, data_root) if key else f"put {TRAINING['coco']}"
            problems += _check_coco_json(f"retrieval {name}", annotations, images, fix)
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
            for key in [*ZEROSHOT, *RETRIEVAL]:
                source = ZEROSHOT[key][1] if key in ZEROSHOT else RETRIEVAL[key]
                print(fetch_line(key, sources) + (f" [{source.note}]" if source.note else ""))
            for name, text in TRAINING.items():
                print(f"{name}: {text}")
    except DataError as e:
        raise SystemExit(f"tools.paper_data: {e}") from None


if __name__ == "__main__":
    main()

"""Tiny fake copies of every paper-preset dataset, each in the layout its distribution unpacks to (make test-paper).

    python tests/paper_fakes.py DATA_ROOT      -> DATA_ROOT/downloads/<key>/..., DATA_ROOT/coco/, DATA_ROOT/recaption/

One noise image per class and 3 classes per set, named like the real first classes (so CLIP_benchmark's class-name lists,
indexed by label, give the real names). Only the file formats are real: the numbers a model gets on them mean nothing.
The other probes: XM3600 (4 images, a caption per language), MMVP-VLM (a pair in each of 3 patterns) and SugarCrepe
(2 items per subset on the fake COCO val2017).
"""
import json
import os
import pickle
import sys

import numpy as np
import torch
from PIL import Image
from scipy.io import savemat

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script: the repository
from tools.paper_data import SUGARCREPE_SUBSETS, xm3600_languages  # noqa: E402

PER_CLASS = 1            # images per class: the smoke run's CPU time is mostly ViT-B/32 on these images
N_RETRIEVAL = 4          # test images per retrieval set
MMVP_PATTERNS = ["Orientation", "Presence", "Camera_Perspective"]  # 3 of the 9 image folders of the release
N_SUGARCREPE = 2         # items per SugarCrepe subset
# ImageNet's variants: 3 classes each (ImageNet-A's and -R's first 3 wnids; V2's folders are ImageNet's labels)
IMAGENET_VARIANTS = {"imagenet_v2": ("imagenetv2-matched-frequency-format-val", ["0", "1", "2"], ".jpeg"),
                     "imagenet_a": ("imagenet-a", ["n01498041", "n01531178", "n01534433"], ".jpg"),
                     "imagenet_r": ("imagenet-r", ["n01443537", "n01484850", "n01494475"], ".jpg"),
                     "imagenet_sketch": ("sketch", ["n01440764", "n01443537", "n01484850"], ".JPEG")}
RNG = np.random.default_rng(0)


def image(path, size=48):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def text(path, content):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(content)


def cifar(root, folder, batches, meta, label_key, names_key, names):
    """The python-pickle batches; the test batch is batches[-1], the training ones are empty."""
    os.makedirs(os.path.join(root, folder), exist_ok=True)
    for batch in batches:
        labels = [c for c in range(len(names)) for _ in range(PER_CLASS)] if batch == batches[-1] else []
        data = RNG.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        with open(os.path.join(root, folder, batch), "wb") as f:
            pickle.dump({"data": data, label_key: labels}, f)
    with open(os.path.join(root, folder, meta), "wb") as f:
        pickle.dump({names_key: names}, f)


def zeroshot_sources(src):
    cifar(f"{src}/cifar10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
          "batches.meta", "labels", "label_names",
          ["airplane", "automobile", "bird"])
    cifar(f"{src}/cifar100", "cifar-100-python", ["train", "test"], "meta", "fine_labels", "fine_label_names",
          ["apple", "aquarium_fish", "baby"])

    food = {c: [f"{c}/{i}" for i in range(PER_CLASS)] for c in ("apple_pie", "baby_back_ribs", "baklava")}
    text(f"{src}/food101/food-101/meta/test.json", json.dumps(food))
    for paths in food.values():
        for p in paths:
            image(f"{src}/food101/food-101/images/{p}.jpg")

    sun = ["/a/abbey", "/a/airplane_cabin", "/b/balcony/exterior"]
    text(f"{src}/sun397/SUN397/ClassName.txt", "".join(c + "\n" for c in sun))
    for c in sun:
        for i in range(PER_CLASS):
            image(f"{src}/sun397/SUN397{c}/sun_{c.replace('/', '')}{i}.jpg")

    cars = f"{src}/cars/stanford_cars"
    names = np.array(["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"], dtype=object)
    os.makedirs(f"{cars}/devkit", exist_ok=True)
    savemat(f"{cars}/devkit/cars_meta.mat", {"class_names": names})
    annotations = np.array([(f"{c:02d}{i}.jpg", c + 1) for c in range(3) for i in range(PER_CLASS)],
                           dtype=[("fname", object), ("class", object)])
    savemat(f"{cars}/cars_test_annos_withlabels.mat", {"annotations": annotations})
    for fname, _ in annotations:
        image(f"{cars}/cars_test/{fname}")

    air = f"{src}/aircraft/fgvc-aircraft-2013b/data"
    variants = ["707-320", "727-200", "737-200"]
    text(f"{air}/variants.txt", "".join(v + "\n" for v in variants))
    ids = [(f"{1000000 + 10 * c + i}", v) for c, v in enumerate(variants) for i in range(PER_CLASS)]
    text(f"{air}/images_variant_test.txt", "".join(f"{n} {v}\n" for n, v in ids))
    for n, _ in ids:
        image(f"{air}/images/{n}.jpg")

    dtd = f"{src}/dtd/dtd/dtd"
    files = [f"{c}/{c}_{i:04d}.jpg" for c in ("banded", "blotchy", "braided") for i in range(PER_CLASS)]
    for partition in range(1, 11):  # the archive ships 10 partitions
        text(f"{dtd}/labels/test{partition}.txt", "".join(f + "\n" for f in files))
    for f in files:
        image(f"{dtd}/images/{f}")

    pets = f"{src}/pets/oxford-iiit-pet"
    breeds = [("Abyssinian", 1, 1), ("american_bulldog", 2, 2), ("american_pit_bull_terrier", 3, 2)]
    rows = [(f"{b}_{100 + i}", label, species) for b, label, species in breeds for i in range(PER_CLASS)]
    text(f"{pets}/annotations/test.txt", "".join(f"{n} {label} {s} {label}\n" for n, label, s in rows))
    for n, _, _ in rows:
        image(f"{pets}/images/{n}.jpg")

    for c in ("BACKGROUND_Google", "Faces", "Faces_easy"):  # the first 3 of the 102 sorted folders
        for i in range(1, PER_CLASS + 1):
            image(f"{src}/caltech101/caltech101/101_ObjectCategories/{c}/image_{i:04d}.jpg")

    flowers = f"{src}/flowers/flowers-102"
    labels = [c + 1 for c in range(3) for _ in range(PER_CLASS)] + [1, 2]  # 2 more images, in the train split
    os.makedirs(flowers, exist_ok=True)
    savemat(f"{flowers}/imagelabels.mat", {"labels": np.array(labels)})
    n_test = 3 * PER_CLASS
    savemat(f"{flowers}/setid.mat", {"tstid": np.arange(1, n_test + 1), "trnid": np.array([n_test + 1, n_test + 2]),
                                     "valid": np.array([n_test + 1, n_test + 2])})
    for i in range(1, len(labels) + 1):
        image(f"{flowers}/jpg/image_{i:05d}.jpg")

    imagenet = f"{src}/imagenet"
    wnids = {"n01440764": ("tench", "Tinca tinca"), "n01443537": ("goldfish", "Carassius auratus"),
             "n01484850": ("great white shark", "white shark")}
    os.makedirs(imagenet, exist_ok=True)
    torch.save((wnids, [w for w in wnids for _ in range(PER_CLASS)]), f"{imagenet}/meta.bin")  # torchvision's cache
    for w in wnids:
        for i in range(PER_CLASS):
            image(f"{imagenet}/val/{w}/ILSVRC2012_val_{w}_{i}.JPEG")

    for c in ("AnnualCrop", "Forest", "HerbaceousVegetation"):
        for i in range(1, PER_CLASS + 1):
            image(f"{src}/eurosat/eurosat/2750/{c}/{c}_{i}.jpg")

    cub = f"{src}/birds/CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    rows = [(c, f"{k}/{k.split('.')[1]}_{i}.jpg") for c, k in enumerate(classes) for i in range(PER_CLASS + 1)]
    text(f"{cub}/classes.txt", "".join(f"{c + 1} {k}\n" for c, k in enumerate(classes)))
    text(f"{cub}/images.txt", "".join(f"{i + 1} {p}\n" for i, (_, p) in enumerate(rows)))
    text(f"{cub}/image_class_labels.txt", "".join(f"{i + 1} {c + 1}\n" for i, (c, _) in enumerate(rows)))
    text(f"{cub}/train_test_split.txt", "".join(f"{i + 1} {int(i % (PER_CLASS + 1) == 0)}\n" for i in range(len(rows))))
    for _, p in rows:
        image(f"{cub}/images/{p}")

    for key, (folder, classes, suffix) in IMAGENET_VARIANTS.items():
        for c in classes:
            for i in range(PER_CLASS):
                image(f"{src}/{key}/{folder}/{c}/{c}_{i}{suffix}")
    text(f"{src}/imagenet_a/imagenet-a/README.txt", "the archive's README\n")  # a file beside the class folders

    ucf = f"{src}/ucf101"
    actions = ["Apply_Eye_Makeup", "Apply_Lipstick", "Archery"]
    test = [[f"{a}/v_{a.replace('_', '')}_g01_c0{i}.jpg", c, a] for c, a in enumerate(actions) for i in range(PER_CLASS)]
    text(f"{ucf}/split_zhou_UCF101.json", json.dumps({"train": test[:1], "val": test[:1], "test": test}))
    for path, _, _ in test:
        image(f"{ucf}/UCF-101-midframes/{path}")


def retrieval_sources(src, n=N_RETRIEVAL):
    captions = [[f"fake caption {i} number {k}" for k in range(5)] for i in range(n + 1)]
    coco = [{"filepath": "val2014", "filename": f"COCO_val2014_{i:012d}.jpg", "split": "test" if i < n else "train",
             "sentences": [{"raw": c} for c in captions[i]]} for i in range(n + 1)]
    flickr = [{"filename": f"{1000 + i}.jpg", "split": "test" if i < n else "val",
               "sentences": [{"raw": c} for c in captions[i]]} for i in range(n + 1)]
    text(f"{src}/karpathy/dataset_coco.json", json.dumps({"images": coco, "dataset": "coco"}))
    text(f"{src}/karpathy/dataset_flickr30k.json", json.dumps({"images": flickr, "dataset": "flickr30k"}))
    for im in coco:
        image(f"{src}/coco2014/val2014/{im['filename']}")
    for im in flickr:
        image(f"{src}/flickr30k/flickr30k-images/{im['filename']}")

    share = [{"id": str(i), "image": f"sam/images/sa_{i}.jpg" if i % 2 else f"coco/train2017/{i:012d}.jpg",
              "conversations": [{"from": "human", "value": "<image>\nDescribe the image in detail."},
                                {"from": "gpt", "value": f"A long fake description {i}. " * 5}]} for i in range(n)]
    text(f"{src}/sharegpt4v/share-captioner_coco_lcs_sam_1246k_1107.json", json.dumps(share))
    for e in share:
        image(f"{src}/sharegpt4v/data/{e['image']}")

    for i in range(1, n + 1):
        text(f"{src}/urban1k/Urban1k/caption/{i}.txt", f"An urban fake scene {i}. " * 5)
        image(f"{src}/urban1k/Urban1k/image/{i}.jpg")

    lines = [{"example_id": f"{split}_{i:05d}", "split": split, "image_file": f"{split}_{i:05d}.jpg",
              "description": f"A detailed fake description {split} {i}."} for split in ("test", "train")
             for i in range(n if split == "test" else 2)]
    text(f"{src}/docci/docci_descriptions.jsonlines", "".join(json.dumps(e) + "\n" for e in lines))
    for e in lines:
        image(f"{src}/docci/images/{e['image_file']}")

    dci = f"{src}/dci/densely_captioned_images"
    for i in range(n):
        text(f"{dci}/annotations/sa_{i}.json", json.dumps({"image": f"sa_{i}.jpg", "short_caption": f"Short {i}.",
                                                            "extra_caption": f"A dense fake caption {i}."}))
        image(f"{dci}/photos/sa_{i}.jpg")


def probe_sources(src, n=N_RETRIEVAL):
    """XM3600 (captions.jsonl + images/), MMVP-VLM (Questions.csv + 'MLLM_VLM Images/'), SugarCrepe (data/*.json, on
    the COCO val2017 images of training_data)."""
    keys = [f"{i:016x}" for i in range(n)]
    lines = [{"image/key": k, "image/locale": "en", **{lang: {
        "caption": [f"fake {lang} caption of image {i}", f"another {lang} caption {i}"],
        "caption/tokenized": [f"fake {lang} caption of image {i}"]} for lang in xm3600_languages()}}
        for i, k in enumerate(keys)]
    text(f"{src}/xm3600/captions.jsonl", "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    for k in keys:
        image(f"{src}/xm3600/images/{k}.jpg")

    rows = ["Question ID,Type,Statement"]
    for p, pattern in enumerate(MMVP_PATTERNS):
        for q in (2 * p + 1, 2 * p + 2):
            rows.append(f'{q},{pattern},"the fake {pattern.lower()} statement, number {q}"')
            image(f"{src}/mmvp_vlm/MLLM_VLM Images/{pattern}/{q}.jpg")
    text(f"{src}/mmvp_vlm/Questions.csv", "\n".join(rows) + "\n")

    for subset in SUGARCREPE_SUBSETS:
        entries = {str(3 * i): {"filename": f"{i:012d}.jpg", "caption": f"a fake {subset} caption {i}",
                                "negative_caption": f"a fake {subset} negative {i}"} for i in range(N_SUGARCREPE)}
        text(f"{src}/sugar-crepe/data/{subset}.json", json.dumps(entries, indent=4))


def coco_json(names, captions):
    return json.dumps({"images": [{"id": i, "file_name": n} for i, n in enumerate(names)],
                       "annotations": [{"id": len(captions[0]) * i + k, "image_id": i, "caption": c}
                                       for i, caps in enumerate(captions) for k, c in enumerate(caps)]})


def training_data(data_root, n=12):
    """COCO 2017 as distributed (CLIP-Refine: train2017 + captions; val2017 is its retrieval set), and a recaptioned
    CSV (ProCLIP)."""
    for split, count in (("train2017", n), ("val2017", N_RETRIEVAL)):
        names = [f"{i:012d}.jpg" for i in range(count)]
        caps = [[f"a fake {split} photo {i} caption {k}" for k in range(2)] for i in range(count)]
        text(f"{data_root}/coco/annotations/captions_{split.replace('2017', '')}2017.json", coco_json(names, caps))
        for name in names:
            image(f"{data_root}/coco/{split}/{name}")
    rows = ["filepath,short,long"] + [f"images/{i}.jpg,a fake short caption {i},a longer fake caption {i} with more "
                                      f"words in it" for i in range(n)]
    text(f"{data_root}/recaption/train.csv", "\n".join(rows) + "\n")
    for i in range(n):
        image(f"{data_root}/recaption/images/{i}.jpg")


def main(data_root):
    zeroshot_sources(os.path.join(data_root, "downloads"))
    retrieval_sources(os.path.join(data_root, "downloads"))
    probe_sources(os.path.join(data_root, "downloads"))
    training_data(data_root)
    print(f"fake paper sources written under {data_root}")


if __name__ == "__main__":
    main(sys.argv[1])

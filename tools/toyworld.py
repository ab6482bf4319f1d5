"""Procedural toy image-caption world (spec: docs/toyworld.md), written to disk in the real formats.

Small RGB images with 1-3 coloured shapes, captioned in several registers (terse alt-text, COCO-style
sentences, long descriptions, paraphrases with unseen synonyms), plus ImageFolder zero-shot tasks.
Every image draws its randomness from (seed, split, index) only, so the output is byte-identical
for a given config whatever the number of worker processes.

    python -m tools.toyworld --out data/toy [--config configs/toy/world.yaml] [key=value ...]
"""
import argparse
import csv
import io
import json
import math
import multiprocessing
import shutil
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image, ImageDraw

from common.checkpoints import TEMP_MARK, atomic_write_text
from common.config import load_config, run_cli

WORLD_DEFAULTS = {
    "seed": 0,                          # base seed; each image's RNG is derived from (seed, split, index)
    "image_size": 32,                   # side of the square RGB images, in pixels
    "render_scale": 4,                  # draw at this multiple of image_size, then box-downsample (anti-aliasing)
    "n_pretrain": 30000,                # pre-training pairs (alt-text); the recaptioned corpus reuses these images
    "n_coco_train": 4000,               # post-pre-training images, 5 captions each (COCO stand-in)
    "n_coco_val": 1000,                 # retrieval images, 5 captions + 1 long + 1 paraphrase each
    "zeroshot_per_class": 50,           # test images per class of a zero-shot task ...
    "zeroshot_min_per_task": 400,       # ... raised so that every task has at least this many images
    "zeroshot_fine_per_class": 20,      # per class for the fine-grained shape_color task (48 classes)
    "object_count_probs": [0.5, 0.3, 0.2],  # P(1, 2, 3 objects) in pre-training / COCO images
    "position_jitter": 0.02,            # max random shift of an object's centre, as a fraction of image_size
    "color_jitter": 12,                 # max random offset of each RGB channel of an object's colour
    "noise_amplitude": 96,              # held-back noise background: grey level 128 +- this, per pixel
    "alt_size_rate": 0.5,               # P(alt-text mentions an object's size)
    "alt_position_rate": 0.4,           # P(alt-text mentions an object's position)
    "alt_count_rate": 0.2,              # P(alt-text mentions the object count)
    "alt_background_rate": 0.3,         # P(alt-text mentions the background)
    "alt_filler_rate": 0.2,             # P(alt-text carries a web filler word: "photo", "stock", ...)
    "alt_shuffle_rate": 0.5,            # P(an object's words are in random order)
    "alt_wrong_attribute_rate": 0.07,   # P(one attribute word of the alt-text is wrong)
    "workers": 2,                       # processes that render images (does not change the output)
}

# --- vocabulary -------------------------------------------------------------------------------
COLORS = {  # clearly distinguishable, and none is grey so none blends into a background
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 230), "yellow": (240, 220, 40),
    "orange": (245, 140, 20), "purple": (140, 60, 200), "pink": (250, 130, 200), "cyan": (40, 210, 220),
}
SHAPES = ["circle", "square", "triangle", "cross", "diamond", "star"]
SIZES = {"small": 0.11, "large": 0.17}  # object radius as a fraction of image_size
POSITIONS = {  # reading order; centre of the object as a fraction of image_size (x, y)
    "top left": (0.24, 0.24), "top right": (0.76, 0.24), "center": (0.5, 0.5),
    "bottom left": (0.24, 0.76), "bottom right": (0.76, 0.76),
}
BACKGROUNDS = ["black", "gray", "gradient"]
SHIFTED_BACKGROUND = "noise"  # held back: appears only in the shape_shifted zero-shot task
GRADIENT_DARK_SIDES = {"top": "bottom", "bottom": "top", "left": "right", "right": "left"}
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
ORDINALS = ["first", "second", "third"]
ALT_FILLERS = ["photo", "image", "picture", "clipart", "icon", "stock", "hd", "free", "download"]

# Paraphrase vocabulary: no word of these phrases occurs in any other register (tests/test_toyworld.py checks it).
PARAPHRASE_SYNONYMS = {
    "color": {"red": ["crimson", "scarlet"], "green": ["emerald", "jade"], "blue": ["azure", "cobalt"],
              "yellow": ["golden", "lemon"], "orange": ["tangerine", "amber"], "purple": ["violet", "plum"],
              "pink": ["rose", "fuchsia"], "cyan": ["turquoise", "aqua"]},
    "shape": {"circle": ["disc", "round dot"], "square": ["block", "tile"], "triangle": ["wedge", "trigon"],
              "cross": ["plus sign", "crucifix"], "diamond": ["rhombus", "lozenge"],
              "star": ["pentagram", "sparkle"]},
    "position": {"top left": ["northwest"], "top right": ["northeast"], "center": ["middle"],
                 "bottom left": ["southwest"], "bottom right": ["southeast"]},
    "background": {"black": ["ebony", "jet"], "gray": ["ashen", "slate"], "gradient": ["shaded", "ombre"]},
}

TEMPLATES_ONE_OBJECT = ["a photo of one {c} object.", "an image with one {c} object.",
                        "there is one {c} object in this picture."]
ZEROSHOT_TEMPLATES = {
    "shape": ["a photo of a {c}.", "an image with a {c}.", "there is a {c} in this picture.", "{c}"],
    "color": TEMPLATES_ONE_OBJECT + ["{c}"],
    "size": TEMPLATES_ONE_OBJECT,
    "position": ["a photo of an object in the {c}.", "an image with one object at the {c}.",
                 "there is one object in the {c} of this picture."],
    "count": ["a photo of {c}.", "an image with {c}.", "this picture shows {c}."],
    "shape_color": ["a photo of one {c}.", "an image with one {c}.", "there is one {c} in this picture.", "{c}"],
}
ZEROSHOT_TEMPLATES["shape_shifted"] = ZEROSHOT_TEMPLATES["shape"]


def zeroshot_tasks():
    """{task: [(class name, scene constraints), ...]}; single-attribute tasks use one-object images."""
    return {
        "shape": [(s, {"n_objects": 1, "shape": s}) for s in SHAPES],
        "color": [(c, {"n_objects": 1, "color": c}) for c in COLORS],
        "size": [(s, {"n_objects": 1, "size": s}) for s in SIZES],
        "position": [(p, {"n_objects": 1, "position": p}) for p in POSITIONS],
        "count": [(f"{COUNT_WORDS[n]} object" + ("s" if n > 1 else ""), {"n_objects": n}) for n in (1, 2, 3)],
        "shape_color": [(f"{c} {s}", {"n_objects": 1, "color": c, "shape": s}) for c in COLORS for s in SHAPES],
        "shape_shifted": [(s, {"n_objects": 1, "shape": s, "background": SHIFTED_BACKGROUND}) for s in SHAPES],
    }


def class_slug(name):
    return name.replace(" ", "_")


# --- scenes and rendering ---------------------------------------------------------------------
def item_rng(seed, split, index):
    """The RNG of one image: depends only on (seed, split, index), never on the worker that draws it."""
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index])


def _pick(rng, options):
    options = list(options)
    return options[int(rng.integers(len(options)))]


def sample_scene(rng, count_probs=(0.5, 0.3, 0.2), n_objects=None, background=None, **fixed):
    """A scene: background, its detail (dark side of a gradient) and 1-3 objects at distinct positions,
    in reading order. `fixed` pins shape / color / size / position of every object (zero-shot classes)."""
    n = n_objects or int(rng.choice([1, 2, 3], p=count_probs))
    background = background or _pick(rng, BACKGROUNDS)
    detail = _pick(rng, GRADIENT_DARK_SIDES) if background == "gradient" else None
    if "position" in fixed:
        assert n == 1, "a fixed position allows one object only"
        positions = [fixed["position"]] * n
    else:
        chosen = set(rng.choice(len(POSITIONS), size=n, replace=False).tolist())
        positions = [p for i, p in enumerate(POSITIONS) if i in chosen]
    objects = [{"shape": fixed.get("shape") or _pick(rng, SHAPES), "color": fixed.get("color") or _pick(rng, COLORS),
                "size": fixed.get("size") or _pick(rng, SIZES), "position": p} for p in positions]
    return {"background": background, "background_detail": detail, "objects": objects}


def _background(rng, scene, side, cfg):
    kind, small = scene["background"], cfg.image_size
    if kind == "black":
        return Image.new("RGB", (side, side), (int(rng.integers(0, 21)),) * 3)
    if kind == "gray":
        return Image.new("RGB", (side, side), (int(rng.integers(110, 146)),) * 3)
    if kind == "gradient":
        ramp = np.linspace(rng.integers(0, 41), rng.integers(180, 231), side)
        dark_side = scene["background_detail"]
        ramp = ramp[::-1] if dark_side in ("bottom", "right") else ramp
        grid = ramp[:, None] * np.ones((1, side)) if dark_side in ("top", "bottom") else np.ones((side, 1)) * ramp
        return Image.fromarray(np.round(grid).astype(np.uint8)).convert("RGB")
    if kind == SHIFTED_BACKGROUND:  # one grey level per final pixel, upsampled so the box filter keeps it
        amp = cfg.noise_amplitude
        noise = rng.integers(128 - amp, 128 + amp + 1, (small, small)).astype(np.uint8)
        return Image.fromarray(noise).resize((side, side), Image.Resampling.NEAREST).convert("RGB")
    raise ValueError(f"unknown background {kind!r}; expected one of {BACKGROUNDS + [SHIFTED_BACKGROUND]}")


def _draw_shape(draw, shape, cx, cy, r, fill):
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        h = 0.85 * r
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif shape == "triangle":  # equilateral, pointing up, lowered so it sits centred
        cy += 0.25 * r
        draw.polygon([(cx, cy - r), (cx + 0.866 * r, cy + 0.5 * r), (cx - 0.866 * r, cy + 0.5 * r)], fill=fill)
    elif shape == "cross":  # a plus sign
        w = 0.35 * r
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + 0.8 * r, cy), (cx, cy + r), (cx - 0.8 * r, cy)], fill=fill)
    elif shape == "star":  # five points, inner radius 0.45 r
        points = [(cx + (r if k % 2 == 0 else 0.45 * r) * math.sin(k * math.pi / 5),
                   cy - (r if k % 2 == 0 else 0.45 * r) * math.cos(k * math.pi / 5)) for k in range(10)]
        draw.polygon(points, fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render_scene(scene, rng, cfg):
    """Draw the scene at render_scale x image_size and box-downsample it to image_size (anti-aliasing)."""
    side = cfg.image_size * cfg.render_scale
    image = _background(rng, scene, side, cfg)
    draw = ImageDraw.Draw(image)
    for obj in scene["objects"]:
        fx, fy = POSITIONS[obj["position"]]
        cx, cy = (np.array([fx, fy]) + cfg.position_jitter * rng.uniform(-1, 1, 2)) * side
        rgb = np.clip(np.array(COLORS[obj["color"]]) + rng.integers(-cfg.color_jitter, cfg.color_jitter + 1, 3), 0, 255)
        _draw_shape(draw, obj["shape"], float(cx), float(cy), SIZES[obj["size"]] * side, tuple(int(v) for v in rgb))
    return image.resize((cfg.image_size, cfg.image_size), Image.Resampling.BOX)


# --- captions ---------------------------------------------------------------------------------
def _a(phrase):
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(items):
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _cap(text):
    return text[0].upper() + text[1:]


def _count_noun(n):
    return f"{COUNT_WORDS[n]} object" + ("s" if n > 1 else "")


def alt_text(scene, rng, cfg):
    """Terse noisy web alt-text: per object its color + shape (+ size, position sometimes), objects and often
    the words of an object in random order, sometimes count / background / filler words, and with
    probability alt_wrong_attribute_rate one attribute word replaced by a wrong one."""
    groups = []
    for i in rng.permutation(len(scene["objects"])):
        obj = scene["objects"][i]
        units = [("color", obj["color"]), ("shape", obj["shape"])]
        if rng.random() < cfg.alt_size_rate:
            units.append(("size", obj["size"]))
        if rng.random() < cfg.alt_position_rate:
            units.append(("position", obj["position"]))
        if rng.random() < cfg.alt_shuffle_rate:
            units = [units[k] for k in rng.permutation(len(units))]
        groups.append(units)
    if rng.random() < cfg.alt_wrong_attribute_rate:
        g = int(rng.integers(len(groups)))
        u = int(rng.integers(len(groups[g])))
        attribute, value = groups[g][u]
        choices = {"color": COLORS, "shape": SHAPES, "size": SIZES, "position": POSITIONS}[attribute]
        groups[g][u] = (attribute, _pick(rng, [v for v in choices if v != value]))
    text = _pick(rng, [" ", ", ", " and "]).join(" ".join(value for _, value in units) for units in groups)
    if rng.random() < cfg.alt_count_rate:
        text = f"{_count_noun(len(groups))} {text}" if rng.random() < 0.5 else f"{text} {_count_noun(len(groups))}"
    if rng.random() < cfg.alt_background_rate:
        text += " " + _pick(rng, [scene["background"], scene["background"] + " background"])
    if rng.random() < cfg.alt_filler_rate:
        filler = _pick(rng, ALT_FILLERS)
        text = f"{filler} {text}" if rng.random() < 0.5 else f"{text} {filler}"
    return text


def _where(position, rng):
    return _pick(rng, ["in the {}", "at the {}"]).format(position)  # short, so captions fit 32 tokens


def _objects(scene, rng, size=True, position=True, color_after=False):
    """Article + description of each object, in random order."""
    phrases = []
    for i in rng.permutation(len(scene["objects"])):
        o = scene["objects"][i]
        core = f"{o['size']} {o['shape']} in {o['color']}" if color_after else \
            " ".join(([o["size"]] if size else []) + [o["color"], o["shape"]])
        phrases.append(_a(core) + (" " + _where(o["position"], rng) if position else ""))
    return _join(phrases)


COCO_TEMPLATES = [  # (scene, rng) -> a well-formed caption; each phrasing has its own fixed words
    lambda s, r: _cap(_objects(s, r)) + ".",
    lambda s, r: f"There {'is' if len(s['objects']) == 1 else 'are'} {_objects(s, r, size=False, position=False)}"
                 f" on a {s['background']} background.",
    lambda s, r: f"A photo of {_objects(s, r)}.",
    lambda s, r: f"An image with {_count_noun(len(s['objects']))} on a {s['background']} background: "
                 f"{_objects(s, r, size=False, position=False)}.",
    lambda s, r: _cap(_objects(s, r, position=False, color_after=True))
                 + f" {'is' if len(s['objects']) == 1 else 'are'} shown in this picture.",
    lambda s, r: f"A {s['background']} background with {_objects(s, r, size=False)}.",
    lambda s, r: f"This picture shows {_count_noun(len(s['objects']))}: {_objects(s, r, position=False)}.",
    lambda s, r: _cap(_objects(s, r, size=False)) + f" against a {s['background']} background.",
]


def coco_captions(scene, rng, n=5):
    """n well-formed captions from n different phrasings (so they are distinct)."""
    captions = [COCO_TEMPLATES[k](scene, rng) for k in rng.choice(len(COCO_TEMPLATES), size=n, replace=False)]
    assert len(set(captions)) == n, captions
    return captions


def long_caption(scene):
    """Background first, then every object in reading order: longer than the toy CLIP's 32-token context,
    so its truncation keeps the background and the first object and loses the rest."""
    bg, side = scene["background"], scene["background_detail"]
    where = {"top": "at the top", "bottom": "at the bottom", "left": "on the left", "right": "on the right"}
    bg_text = {"black": "a plain black background, dark and uniform",
               "gray": "a plain gray background, flat and uniform",
               "gradient": f"a gradient background, dark {where.get(side)} "
                           f"and light {where.get(GRADIENT_DARK_SIDES.get(side))}"}
    n = len(scene["objects"])
    sentences = [f"The picture has {bg_text[bg]}.", f"There {'is' if n == 1 else 'are'} {_count_noun(n)} on it."]
    for k, o in enumerate(scene["objects"]):
        ordinal = "only" if n == 1 else ORDINALS[k]
        place = "the center" if o["position"] == "center" else f"the {o['position']} corner"
        sentences.append(f"The {ordinal} object is {_a(o['size'] + ' ' + o['color'] + ' ' + o['shape'])}, "
                         f"located in {place} of the picture; "
                         f"it is {o['color']} in color, {o['size']} in size and shaped like {_a(o['shape'])}.")
    sentences.append("There are no other objects in the picture.")
    text = " ".join(sentences)
    assert len(text.split()) >= 40, text
    return text


def paraphrase_caption(scene, rng):
    """Color, shape and position of every object and the background, in synonyms that no other register
    uses (PARAPHRASE_SYNONYMS). Sizes are left out to keep it within the toy CLIP's 32 tokens."""
    syn = {kind: {k: _pick(rng, v) for k, v in table.items()} for kind, table in PARAPHRASE_SYNONYMS.items()}
    objects = []
    for i in rng.permutation(len(scene["objects"])):
        o = scene["objects"][i]
        objects.append(_a(f"{syn['color'][o['color']]} {syn['shape'][o['shape']]}")
                       + _pick(rng, [" in the ", " toward the "]) + syn["position"][o["position"]])
    objects, backdrop = _join(objects), _a(syn["background"][scene["background"]] + " backdrop")
    verb = "is" if len(scene["objects"]) == 1 else "are"
    return _pick(rng, [f"{_cap(objects)} on {backdrop}.", f"On {backdrop}: {objects}.",
                       f"{_cap(objects)} {verb} visible against {backdrop}."])


# --- writing the world ------------------------------------------------------------------------
WORLD_ENTRIES = {"world.json", ".done", "images", "pretrain.csv", "recaption.csv", "coco", "zeroshot"}


def _make_items(job):
    """Worker: render and save the images of one chunk, return their captions (in order)."""
    cfg, out_dir, split, entries = SimpleNamespace(**job[0]), Path(job[1]), job[2], job[3]
    results = []
    for index, relpath, constraints in entries:
        rng = item_rng(cfg.seed, split, index)
        counts = {} if "n_objects" in constraints else {"count_probs": cfg.object_count_probs}
        scene = sample_scene(rng, **counts, **constraints)
        buffer = io.BytesIO()
        render_scene(scene, rng, cfg).save(buffer, format="PNG")
        (out_dir / relpath).write_bytes(buffer.getvalue())
        if split == "pretrain":
            results.append({"title": alt_text(scene, rng, cfg), "short": coco_captions(scene, rng, 1)[0],
                            "long": long_caption(scene)})
        elif split == "coco_train":
            results.append({"captions": coco_captions(scene, rng)})
        elif split == "coco_val":
            results.append({"captions": coco_captions(scene, rng), "long": long_caption(scene),
                            "paraphrase": paraphrase_caption(scene, rng)})
        else:
            results.append({})
    return results


def _write_csv(path, header, rows):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _coco_json(file_names, captions_per_image):
    images = [{"id": i, "file_name": name} for i, name in enumerate(file_names)]
    annotations = [{"id": k, "image_id": i, "caption": c} for k, (i, c) in
                   enumerate((i, c) for i, caps in enumerate(captions_per_image) for c in caps)]
    return json.dumps({"images": images, "annotations": annotations}, sort_keys=True)


def _check_config(cfg):
    missing = sorted(set(WORLD_DEFAULTS) - set(vars(cfg)))
    if missing:
        raise ValueError(f"toy world config lacks keys {missing}; start from tools.toyworld.WORLD_DEFAULTS")
    for key in ("seed", "n_pretrain", "n_coco_train", "n_coco_val", "zeroshot_per_class", "zeroshot_min_per_task",
                "zeroshot_fine_per_class", "color_jitter"):
        if not isinstance(getattr(cfg, key), int) or getattr(cfg, key) < 0:
            raise ValueError(f"toy world config: {key}={getattr(cfg, key)!r} must be a non-negative integer")
    for key in ("image_size", "render_scale", "workers"):
        if not isinstance(getattr(cfg, key), int) or getattr(cfg, key) < 1:
            raise ValueError(f"toy world config: {key}={getattr(cfg, key)!r} must be a positive integer")
    if cfg.image_size < 16:
        raise ValueError(f"toy world config: image_size={cfg.image_size} is too small to draw shapes; use >= 16")
    probs = cfg.object_count_probs
    if not (isinstance(probs, (list, tuple)) and len(probs) == 3 and all(p >= 0 for p in probs)
            and abs(sum(probs) - 1) < 1e-6):
        raise ValueError(f"toy world config: object_count_probs={probs!r} must be 3 probabilities (1, 2, 3 objects) "
                         "summing to 1")
    for key in [k for k in WORLD_DEFAULTS if k.startswith("alt_")] + ["position_jitter"]:
        if not 0 <= getattr(cfg, key) <= 1:
            raise ValueError(f"toy world config: {key}={getattr(cfg, key)!r} must be in [0, 1]")
    if not 0 <= cfg.noise_amplitude <= 127:
        raise ValueError(f"toy world config: noise_amplitude={cfg.noise_amplitude!r} must be in [0, 127]")


def _world_config(cfg):
    """The config as recorded in world.json: everything that changes the files (so not `workers`)."""
    return {k: getattr(cfg, k) for k in WORLD_DEFAULTS if k != "workers"}


def _prepare_out_dir(out, cfg):
    """True if a finished world with this config is already there; otherwise clear a half-written world."""
    if (out / ".done").exists() and (out / "world.json").exists():
        recorded = json.loads((out / "world.json").read_text(encoding="utf-8"))["config"]
        if recorded == json.loads(json.dumps(_world_config(cfg))):
            return True
    if out.exists():
        strangers = sorted(p.name for p in out.iterdir() if p.name not in WORLD_ENTRIES and TEMP_MARK not in p.name)
        if strangers:
            raise ValueError(f"{out} holds files that are not part of a toy world ({strangers[:5]}); "
                             "pass an empty or new folder to --out")
        shutil.rmtree(out)
    return False


def generate_world(out_dir, cfg):
    """Write the whole toy world under out_dir; world.json and then the .done marker come last.
    A finished world with the same config is kept; a half-written one (no .done) is regenerated.
    Returns {"out_dir", "counts", "seconds", "skipped"}."""
    start = time.time()
    _check_config(cfg)
    out = Path(out_dir)
    if _prepare_out_dir(out, cfg):
        world = json.loads((out / "world.json").read_text(encoding="utf-8"))
        return {"out_dir": str(out), "counts": world["counts"], "seconds": time.time() - start, "skipped": True}

    # Every image to draw, as (split, [(index, relative path, scene constraints), ...]).
    splits = {"pretrain": [(i, f"images/pretrain/{i:06d}.png", {}) for i in range(cfg.n_pretrain)],
              "coco_train": [(i, f"coco/train/{i:06d}.png", {}) for i in range(cfg.n_coco_train)],
              "coco_val": [(i, f"coco/val/{i:06d}.png", {}) for i in range(cfg.n_coco_val)]}
    tasks = zeroshot_tasks()
    for task, classes in tasks.items():
        per_class = cfg.zeroshot_fine_per_class if task == "shape_color" else \
            max(cfg.zeroshot_per_class, math.ceil(cfg.zeroshot_min_per_task / len(classes)))
        splits[f"zeroshot/{task}"] = [(c * per_class + i, f"zeroshot/{task}/test/{class_slug(name)}/{i:05d}.png", cons)
                                      for c, (name, cons) in enumerate(classes) for i in range(per_class)]
    for entries in splits.values():
        for folder in sorted({str(Path(rel).parent) for _, rel, _ in entries}):
            (out / folder).mkdir(parents=True, exist_ok=True)

    chunk = 250
    jobs = [(vars(cfg), str(out), split, entries[i:i + chunk])
            for split, entries in splits.items() for i in range(0, len(entries), chunk)]
    if cfg.workers == 1:
        chunk_results = list(map(_make_items, jobs))
    else:
        with multiprocessing.Pool(cfg.workers) as pool:
            chunk_results = pool.map(_make_items, jobs, chunksize=1)
    results = {split: [] for split in splits}
    for job, items in zip(jobs, chunk_results):
        results[job[2]].extend(items)

    pre = results["pretrain"]
    paths = [rel for _, rel, _ in splits["pretrain"]]
    _write_csv(out / "pretrain.csv", ["filepath", "title"], [(p, r["title"]) for p, r in zip(paths, pre)])
    _write_csv(out / "recaption.csv", ["filepath", "short", "long"],
               [(p, r["short"], r["long"]) for p, r in zip(paths, pre)])
    train_names = [f"{i:06d}.png" for i in range(cfg.n_coco_train)]
    val_names = [f"{i:06d}.png" for i in range(cfg.n_coco_val)]
    val = results["coco_val"]
    train = results["coco_train"]
    atomic_write_text(out / "coco/captions_train.json", _coco_json(train_names, [r["captions"] for r in train]))
    atomic_write_text(out / "coco/captions_val.json", _coco_json(val_names, [r["captions"] for r in val]))
    atomic_write_text(out / "coco/long_val.json", _coco_json(val_names, [[r["long"]] for r in val]))
    atomic_write_text(out / "coco/paraphrase_val.json", _coco_json(val_names, [[r["paraphrase"]] for r in val]))
    for task, classes in tasks.items():
        names = sorted((name for name, _ in classes), key=class_slug)  # line i = i-th folder in sorted order
        atomic_write_text(out / f"zeroshot/{task}/classnames.txt", "".join(f"{class_slug(n)}\t{n}\n" for n in names))
        atomic_write_text(out / f"zeroshot/{task}/templates.txt", "\n".join(ZEROSHOT_TEMPLATES[task]) + "\n")

    counts = {"pretrain": cfg.n_pretrain, "coco_train": cfg.n_coco_train, "coco_val": cfg.n_coco_val,
              "zeroshot": {task: {"classes": len(classes), "images": len(splits[f"zeroshot/{task}"])}
                           for task, classes in tasks.items()}}
    world = {"config": _world_config(cfg), "counts": counts,
             "vocabulary": {"shapes": SHAPES, "colors": COLORS, "sizes": list(SIZES), "positions": list(POSITIONS),
                            "backgrounds": BACKGROUNDS, "shifted_background": SHIFTED_BACKGROUND,
                            "paraphrase_synonyms": PARAPHRASE_SYNONYMS}}
    atomic_write_text(out / "world.json", json.dumps(world, sort_keys=True, indent=2) + "\n")  # last but the marker
    atomic_write_text(out / ".done", "")
    return {"out_dir": str(out), "counts": counts, "seconds": time.time() - start, "skipped": False}


def main(argv=None):
    parser = argparse.ArgumentParser("python -m tools.toyworld",
                                     description="Generate the procedural toy image-caption world (docs/toyworld.md).")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder, e.g. data/toy")
    parser.add_argument("--config", default=None, metavar="FILE", help="YAML file with keys of WORLD_DEFAULTS")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. seed=1 n_pretrain=1000 (keys of WORLD_DEFAULTS)")
    args, unknown = parser.parse_known_intermixed_args(argv)
    cfg = load_config(WORLD_DEFAULTS, args.config, unknown + args.overrides)  # unknown: --flags, refused by name
    summary = generate_world(args.out, cfg)
    zs = sum(t["images"] for t in summary["counts"]["zeroshot"].values())
    c = summary["counts"]
    print(f"toy world {'already in' if summary['skipped'] else 'written to'} {summary['out_dir']}: "
          f"{c['pretrain']} pre-training, {c['coco_train']} coco train, {c['coco_val']} coco val, "
          f"{zs} zero-shot images in {summary['seconds']:.1f}s")
    return summary


if __name__ == "__main__":
    run_cli(main, "python -m tools.toyworld")

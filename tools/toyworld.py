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
    "probe_pairs_per_pattern": 240,     # probe sets (data/toy/probes): pairs of each MMVP-like pattern
    "probe_negatives_per_subset": 1008,  # images of the hard-negative subsets, one item each per subset
    "workers": 2,                       # processes that render images (does not change the output)
}
PROBE_KEYS = ("probe_pairs_per_pattern", "probe_negatives_per_subset")  # recorded in probes/probes.json

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


def _draw_outline(draw, shape, cx, cy, r, color, width):
    """The held-back sketch style: the shape's outline only, `width` pixels wide, in its colour."""
    if shape == "circle":
        return draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=color, width=width)
    if shape == "square":
        h = 0.85 * r
        return draw.rectangle([cx - h, cy - h, cx + h, cy + h], outline=color, width=width)
    if shape == "cross":
        w = 0.35 * r
        points = [(cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w), (cx + r, cy + w),
                  (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r), (cx - w, cy + w), (cx - r, cy + w),
                  (cx - r, cy - w), (cx - w, cy - w)]
    elif shape == "triangle":
        cy += 0.25 * r
        points = [(cx, cy - r), (cx + 0.866 * r, cy + 0.5 * r), (cx - 0.866 * r, cy + 0.5 * r)]
    elif shape == "diamond":
        points = [(cx, cy - r), (cx + 0.8 * r, cy), (cx, cy + r), (cx - 0.8 * r, cy)]
    elif shape == "star":
        points = [(cx + (r if k % 2 == 0 else 0.45 * r) * math.sin(k * math.pi / 5),
                   cy - (r if k % 2 == 0 else 0.45 * r) * math.cos(k * math.pi / 5)) for k in range(10)]
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    draw.polygon(points, outline=color, width=width)


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


def render_scene(scene, rng, cfg, object_rng=None, outline=False):
    """Draw the scene at render_scale x image_size and box-downsample it to image_size (anti-aliasing).
    object_rng (default rng) draws the objects' jitter, so two scenes that differ in their background alone get
    the same objects; outline draws the objects' outlines only (the sketch style)."""
    side = cfg.image_size * cfg.render_scale
    image = _background(rng, scene, side, cfg)
    draw = ImageDraw.Draw(image)
    object_rng = rng if object_rng is None else object_rng
    for obj in scene["objects"]:
        fx, fy = POSITIONS[obj["position"]]
        cx, cy = (np.array([fx, fy]) + cfg.position_jitter * object_rng.uniform(-1, 1, 2)) * side
        rgb = np.clip(np.array(COLORS[obj["color"]]) + object_rng.integers(-cfg.color_jitter, cfg.color_jitter + 1, 3),
                      0, 255)
        color = tuple(int(v) for v in rgb)
        if outline:  # one final pixel wide
            _draw_outline(draw, obj["shape"], float(cx), float(cy), SIZES[obj["size"]] * side, color,
                          cfg.render_scale)
        else:
            _draw_shape(draw, obj["shape"], float(cx), float(cy), SIZES[obj["size"]] * side, color)
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
WORLD_ENTRIES = {"world.json", ".done", "images", "pretrain.csv", "recaption.csv", "coco", "zeroshot", "probes"}


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
                "zeroshot_fine_per_class", "color_jitter", *PROBE_KEYS):
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
    """The config as recorded in world.json: everything that changes its files (so not `workers`, nor the sizes of
    the probe sets, which probes/probes.json records with the rest)."""
    return {k: getattr(cfg, k) for k in WORLD_DEFAULTS if k != "workers" and k not in PROBE_KEYS}


def _probes_config(cfg):
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


def generate_world(out_dir, cfg, only=None):
    """Write the whole toy world under out_dir, then its probe sets under out_dir/probes (only="world" or
    "probes": that part alone; the probes need the finished world). Each part's .done marker comes last; a
    finished part with the same config is kept, a half-written one regenerated.
    Returns {"out_dir", "counts", "probe_counts", "seconds", "skipped"}."""
    start = time.time()
    _check_config(cfg)
    out = Path(out_dir)
    if only == "probes" and not _finished_world(out, cfg):
        raise ValueError(f"{out} holds no finished toy world with this config: generate it first (make world, or "
                         f"python -m tools.toyworld --out {out} --config FILE --only world)")
    skipped = only == "probes" or _prepare_out_dir(out, cfg)
    if not skipped:
        _write_world(out, cfg)
    probe_counts = None if only == "world" else generate_probes(out, cfg)
    world = json.loads((out / "world.json").read_text(encoding="utf-8"))
    return {"out_dir": str(out), "counts": world["counts"], "probe_counts": probe_counts,
            "seconds": time.time() - start, "skipped": skipped}


def _finished_world(out, cfg):
    return (out / ".done").exists() and (out / "world.json").exists() and json.loads(
        (out / "world.json").read_text(encoding="utf-8"))["config"] == json.loads(json.dumps(_world_config(cfg)))


def _zeroshot_entries(folder, classes, per_class):
    """A zero-shot split's images: per_class of each class, as (index, folder/test/<class>/NNNNN.png, constraints)."""
    return [(c * per_class + i, f"{folder}/test/{class_slug(name)}/{i:05d}.png", cons)
            for c, (name, cons) in enumerate(classes) for i in range(per_class)]


def _render_jobs(cfg, out, splits, worker):
    """Make every split's folders, then run worker over chunks of its entries (in worker processes when
    cfg.workers > 1) -> {split: [result per entry]}; the output does not depend on the number of workers."""
    for entries in splits.values():
        for folder in sorted({str(Path(rel).parent) for _, rel, _ in entries}):
            (out / folder).mkdir(parents=True, exist_ok=True)
    chunk = 250
    jobs = [(vars(cfg), str(out), split, entries[i:i + chunk])
            for split, entries in splits.items() for i in range(0, len(entries), chunk)]
    if cfg.workers == 1:
        chunk_results = list(map(worker, jobs))
    else:
        with multiprocessing.Pool(cfg.workers) as pool:
            chunk_results = pool.map(worker, jobs, chunksize=1)
    results = {split: [] for split in splits}
    for job, items in zip(jobs, chunk_results):
        results[job[2]].extend(items)
    return results


def _write_world(out, cfg):

    # Every image to draw, as (split, [(index, relative path, scene constraints), ...]).
    splits = {"pretrain": [(i, f"images/pretrain/{i:06d}.png", {}) for i in range(cfg.n_pretrain)],
              "coco_train": [(i, f"coco/train/{i:06d}.png", {}) for i in range(cfg.n_coco_train)],
              "coco_val": [(i, f"coco/val/{i:06d}.png", {}) for i in range(cfg.n_coco_val)]}
    tasks = zeroshot_tasks()
    for task, classes in tasks.items():
        per_class = cfg.zeroshot_fine_per_class if task == "shape_color" else \
            max(cfg.zeroshot_per_class, math.ceil(cfg.zeroshot_min_per_task / len(classes)))
        splits[f"zeroshot/{task}"] = _zeroshot_entries(f"zeroshot/{task}", classes, per_class)

    results = _render_jobs(cfg, out, splits, _make_items)
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


# --- probe sets (docs/toyworld.md "Probe sets"; docs/methods.md §5) -------------------------------------
# Drawn from their own generators (splits named probes/...), after the world, so the world's files stay as they are.
PAIR_PATTERNS = ["color", "size", "position", "count", "background"]  # the one factor a pair's two renders differ in
COMPOSE_SUBSETS = ["swap_color", "swap_position", "replace_attribute", "add_object"]
PROBE_TASKS = {"shape_sketch": [(s, {"n_objects": 1, "shape": s}) for s in SHAPES]}  # outlines only
ZEROSHOT_TEMPLATES["shape_sketch"] = ZEROSHOT_TEMPLATES["shape"]


def _free_positions(objects):
    return [p for p in POSITIONS if p not in {o["position"] for o in objects}]


def pair_scenes(rng, pattern):
    """Two scenes of 1-2 objects that differ in exactly one factor (PAIR_PATTERNS), in random order. The count
    pattern appends one object, so the objects they share come first in both."""
    base = sample_scene(rng, count_probs=(0.5, 0.5, 0.0))
    other = json.loads(json.dumps(base))
    objects = other["objects"]
    k = int(rng.integers(len(objects)))
    if pattern == "color":
        objects[k]["color"] = _pick(rng, [c for c in COLORS if c != objects[k]["color"]])
    elif pattern == "size":
        objects[k]["size"] = _pick(rng, [z for z in SIZES if z != objects[k]["size"]])
    elif pattern == "position":
        objects[k]["position"] = _pick(rng, _free_positions(objects))
    elif pattern == "count":
        objects.append({"shape": _pick(rng, SHAPES), "color": _pick(rng, COLORS), "size": _pick(rng, SIZES),
                        "position": _pick(rng, _free_positions(objects))})
    elif pattern == "background":
        other["background"] = _pick(rng, [b for b in BACKGROUNDS if b != base["background"]])
        other["background_detail"] = _pick(rng, GRADIENT_DARK_SIDES) if other["background"] == "gradient" else None
    else:
        raise ValueError(f"unknown pair pattern {pattern!r}; expected one of {PAIR_PATTERNS}")
    return (base, other) if rng.random() < 0.5 else (other, base)


def compose_scene(rng):
    """A 2- or 3-object scene whose objects differ in colour and in shape, so every hard negative changes it."""
    n = int(rng.integers(2, 4))
    chosen = set(rng.choice(len(POSITIONS), size=n, replace=False).tolist())
    shapes, colors = rng.choice(len(SHAPES), size=n, replace=False), rng.choice(len(COLORS), size=n, replace=False)
    objects = [{"shape": SHAPES[s], "color": list(COLORS)[c], "size": _pick(rng, SIZES), "position": p}
               for s, c, p in zip(shapes, colors, [p for i, p in enumerate(POSITIONS) if i in chosen])]
    background = _pick(rng, BACKGROUNDS)
    return {"background": background, "background_detail": _pick(rng, GRADIENT_DARK_SIDES)
            if background == "gradient" else None, "objects": objects}


def _listing(objects):
    from tools.toylanguages import object_phrase

    return _cap(_join([object_phrase(o, "en") for o in objects])) + "."


def hard_negatives(scene, rng):
    """{subset: (positive, negative)} of one scene (COMPOSE_SUBSETS). The objects are listed in one random order
    for the positive and its negatives; every negative is a caption some scene of the world could have (2-3
    objects at distinct positions), so only the image tells them apart. add_object: the positive lists 2 objects
    of the scene and the negative adds an object of a shape and colour the image lacks, at a free position."""
    listed = [dict(scene["objects"][i]) for i in rng.permutation(len(scene["objects"]))]
    positive = _listing(listed)
    i, j = (int(x) for x in rng.choice(len(listed), size=2, replace=False))
    out = {}
    for subset in COMPOSE_SUBSETS:
        changed = [dict(o) for o in listed]
        if subset in ("swap_color", "swap_position"):
            key = subset.split("_")[1]
            changed[i][key], changed[j][key] = changed[j][key], changed[i][key]
            out[subset] = (positive, _listing(changed))
        elif subset == "replace_attribute":
            key = _pick(rng, ["color", "shape"])
            changed[i][key] = _pick(rng, [v for v in (COLORS if key == "color" else SHAPES)
                                          if v not in {o[key] for o in listed}])
            out[subset] = (positive, _listing(changed))
        else:
            kept = [o for k, o in enumerate(changed) if k != j] if len(changed) == 3 else changed
            absent = {"shape": _pick(rng, [v for v in SHAPES if v not in {o["shape"] for o in listed}]),
                      "color": _pick(rng, [v for v in COLORS if v not in {o["color"] for o in listed}]),
                      "size": _pick(rng, SIZES), "position": _pick(rng, _free_positions(listed))}
            where = int(rng.integers(len(kept) + 1))
            out[subset] = (_listing(kept), _listing(kept[:where] + [absent] + kept[where:]))
    return out


def _make_probe_items(job):
    """Worker: render and save the images of one chunk of a probe split, return their records (in order)."""
    from tools.toylanguages import caption

    cfg, out_dir, split, entries = SimpleNamespace(**job[0]), Path(job[1]), job[2], job[3]
    results = []
    for index, relpath, constraints in entries:
        rng = item_rng(cfg.seed, split, index)
        if split.startswith("probes/pairs/"):
            scenes = pair_scenes(rng, split.rsplit("/", 1)[1])
            names = [f"{relpath}_{side}.png" for side in "ab"]
            for scene, name in zip(scenes, names):  # the same draws for both: only the pattern's factor differs
                image = render_scene(scene, item_rng(cfg.seed, split + "/background", index), cfg,
                                     object_rng=item_rng(cfg.seed, split + "/objects", index))
                _save_png(image, out_dir / name)
            results.append({"pattern": split.rsplit("/", 1)[1], "images": [n.split("/")[-1] for n in names],
                            "captions": [caption(scene, "en") for scene in scenes]})
        elif split == "probes/compose":
            scene = compose_scene(rng)
            _save_png(render_scene(scene, rng, cfg), out_dir / relpath)
            results.append(hard_negatives(scene, rng))
        else:  # a robustness task: one object drawn in outline
            scene = sample_scene(rng, **constraints)
            _save_png(render_scene(scene, rng, cfg, outline=True), out_dir / relpath)
            results.append({})
    return results


def _save_png(image, path):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())


def generate_probes(out, cfg):
    """Write the probe sets under out/probes (docs/toyworld.md); probes.json and .done come last. Returns their
    counts. A finished set with the same config is kept."""
    from tools.toylanguages import LANGUAGES, caption

    root = out / "probes"
    config = json.loads(json.dumps(_probes_config(cfg)))
    if (root / ".done").exists() and (root / "probes.json").exists():
        recorded = json.loads((root / "probes.json").read_text(encoding="utf-8"))
        if recorded["config"] == config:
            return recorded["counts"]
    if root.exists():
        shutil.rmtree(root)
    n_pairs, n_compose = cfg.probe_pairs_per_pattern, cfg.probe_negatives_per_subset
    splits = {f"probes/pairs/{p}": [(i, f"probes/pairs/images/{p}_{i:05d}", {}) for i in range(n_pairs)]
              for p in PAIR_PATTERNS}
    splits["probes/compose"] = [(i, f"probes/compose/images/{i:05d}.png", {}) for i in range(n_compose)]
    for task, classes in PROBE_TASKS.items():
        per_class = max(cfg.zeroshot_per_class, math.ceil(cfg.zeroshot_min_per_task / len(classes)))
        splits[f"probes/{task}"] = _zeroshot_entries(f"probes/{task}", classes, per_class)
    results = _render_jobs(cfg, out, splits, _make_probe_items)

    pairs = [r for p in PAIR_PATTERNS for r in results[f"probes/pairs/{p}"]]
    atomic_write_text(root / "pairs/pairs.json", json.dumps({"pairs": pairs}, indent=1, ensure_ascii=False))
    for subset in COMPOSE_SUBSETS:
        items = [{"image": f"{i:05d}.png", "positive": r[subset][0], "negative": r[subset][1]}
                 for i, r in enumerate(results["probes/compose"])]
        atomic_write_text(root / f"compose/{subset}.json", json.dumps({"items": items}, indent=1))
    for task, classes in PROBE_TASKS.items():
        names = sorted((name for name, _ in classes), key=class_slug)
        atomic_write_text(root / f"{task}/classnames.txt", "".join(f"{class_slug(n)}\t{n}\n" for n in names))
        atomic_write_text(root / f"{task}/templates.txt", "\n".join(ZEROSHOT_TEMPLATES[task]) + "\n")
    # the registers of coco/val's scenes, one caption per image; the scene is the first draw of its RNG
    scenes = [sample_scene(item_rng(cfg.seed, "coco_val", i), count_probs=cfg.object_count_probs)
              for i in range(cfg.n_coco_val)]
    val_names = [f"{i:06d}.png" for i in range(cfg.n_coco_val)]
    for language in LANGUAGES:
        atomic_write_text(root / f"languages/captions_val_{language}.json",
                          _coco_json(val_names, [[caption(scene, language)] for scene in scenes]))
    counts = {"pairs": {"patterns": len(PAIR_PATTERNS), "pairs": len(pairs)},
              "compose": {"subsets": len(COMPOSE_SUBSETS), "images": n_compose},
              **{task: {"classes": len(classes), "images": len(splits[f"probes/{task}"])}
                 for task, classes in PROBE_TASKS.items()},
              "languages": {language: cfg.n_coco_val for language in LANGUAGES}}
    atomic_write_text(root / "probes.json", json.dumps({"config": config, "counts": counts}, sort_keys=True,
                                                       indent=2) + "\n")
    atomic_write_text(root / ".done", "")
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser("python -m tools.toyworld",
                                     description="Generate the procedural toy image-caption world (docs/toyworld.md).")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder, e.g. data/toy")
    parser.add_argument("--config", default=None, metavar="FILE", help="YAML file with keys of WORLD_DEFAULTS")
    parser.add_argument("--only", choices=["world", "probes"], default=None,
                        help="write that part alone (default: the world, then its probe sets)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. seed=1 n_pretrain=1000 (keys of WORLD_DEFAULTS)")
    args, unknown = parser.parse_known_intermixed_args(argv)
    cfg = load_config(WORLD_DEFAULTS, args.config, unknown + args.overrides)  # unknown: --flags, refused by name
    summary = generate_world(args.out, cfg, args.only)
    zs = sum(t["images"] for t in summary["counts"]["zeroshot"].values())
    c, p = summary["counts"], summary["probe_counts"]
    probes = "" if p is None else (f"; probes: {p['pairs']['pairs']} pairs, {p['compose']['images']} hard-negative "
                                   f"images, {p['shape_sketch']['images']} sketches, {len(p['languages'])} registers")
    print(f"toy world {'already in' if summary['skipped'] else 'written to'} {summary['out_dir']}: "
          f"{c['pretrain']} pre-training, {c['coco_train']} coco train, {c['coco_val']} coco val, "
          f"{zs} zero-shot images{probes} in {summary['seconds']:.1f}s")
    return summary


if __name__ == "__main__":
    run_cli(main, "python -m tools.toyworld")

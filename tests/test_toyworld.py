"""Tests for tools/toyworld.py (docs/toyworld.md): a tiny world generated into tmp folders, checked file by file."""
import collections
import csv
import json
import re
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from tools import toyworld as tw
from common.data import read_classnames

TINY = {"n_pretrain": 24, "n_coco_train": 6, "n_coco_val": 5, "zeroshot_per_class": 2,
        "zeroshot_min_per_task": 9, "zeroshot_fine_per_class": 1, "probe_pairs_per_pattern": 3,
        "probe_negatives_per_subset": 4, "workers": 1}
# Per-class images of each task, by hand from TINY: max(2, ceil(9 / classes)); shape_color: 1.
TINY_PER_CLASS = {"shape": 2, "color": 2, "size": 5, "position": 2, "count": 3, "shape_color": 1, "shape_shifted": 2}
TINY_CLASSES = {"shape": 6, "color": 8, "size": 2, "position": 5, "count": 3, "shape_color": 48, "shape_shifted": 6}


def tiny_cfg(**changes):
    return SimpleNamespace(**{**tw.WORLD_DEFAULTS, **TINY, **changes})


def words(text):
    return re.findall(r"[a-z]+", text.lower())


def all_files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def coco(root, name):
    return json.loads((root / "coco" / name).read_text())


def captions_by_image(data):
    by_image = collections.defaultdict(list)
    for a in data["annotations"]:
        by_image[a["image_id"]].append(a["caption"])
    return by_image


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def texture(path):
    """Mean absolute difference between neighbouring pixels: ~60 on the noise background, <10 otherwise."""
    a = np.asarray(Image.open(path), dtype=float).mean(axis=2)
    return (np.abs(np.diff(a, axis=0)).mean() + np.abs(np.diff(a, axis=1)).mean()) / 2


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy") / "world"
    summary = tw.generate_world(root, tiny_cfg())
    assert summary["skipped"] is False
    return root


def every_training_text(root):
    """Every caption, class name and template outside the paraphrase register."""
    texts = [r["title"] for r in read_csv(root / "pretrain.csv")]
    texts += [r[k] for r in read_csv(root / "recaption.csv") for k in ("short", "long")]
    for name in ("captions_train.json", "captions_val.json", "long_val.json"):
        texts += [a["caption"] for a in coco(root, name)["annotations"]]
    for task in (root / "zeroshot").iterdir():
        texts += [name for _, name in read_classnames(task / "classnames.txt")]
        texts += (task / "templates.txt").read_text().splitlines()
    return texts


# ---------------------------------------------------------------- determinism

def test_same_seed_is_byte_identical_whatever_the_worker_count(world, tmp_path):
    tw.generate_world(tmp_path / "again", tiny_cfg(workers=2))
    first, second = all_files(world), all_files(tmp_path / "again")
    assert first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []


def test_other_seed_gives_other_world(world, tmp_path):
    tw.generate_world(tmp_path / "other", tiny_cfg(seed=1))
    first, other = all_files(world), all_files(tmp_path / "other")
    assert first.keys() == other.keys()
    assert first["pretrain.csv"] != other["pretrain.csv"]
    changed = [n for n in first if n.endswith(".png") and first[n] != other[n]]
    assert len(changed) > 0.9 * sum(n.endswith(".png") for n in first)


# ---------------------------------------------------------------- layout and counts

def test_layout_and_counts_match_config(world):
    pre, re_ = read_csv(world / "pretrain.csv"), read_csv(world / "recaption.csv")
    assert list(pre[0]) == ["filepath", "title"] and list(re_[0]) == ["filepath", "short", "long"]
    assert [r["filepath"] for r in pre] == [f"images/pretrain/{i:06d}.png" for i in range(24)]
    assert [r["filepath"] for r in re_] == [r["filepath"] for r in pre]
    for r in pre:
        image = Image.open(world / r["filepath"])
        assert image.mode == "RGB" and image.size == (32, 32)
    for split, n in (("train", 6), ("val", 5)):
        data = coco(world, f"captions_{split}.json")
        assert [im["file_name"] for im in data["images"]] == [f"{i:06d}.png" for i in range(n)]
        assert all((world / "coco" / split / im["file_name"]).is_file() for im in data["images"])
        assert len(list((world / "coco" / split).iterdir())) == n
    assert sorted(p.name for p in (world / "zeroshot").iterdir()) == sorted(TINY_CLASSES)
    for task, n_classes in TINY_CLASSES.items():
        folders = sorted((world / "zeroshot" / task / "test").iterdir())
        assert len(folders) == n_classes
        assert all(len(list(f.iterdir())) == TINY_PER_CLASS[task] for f in folders)
    recorded = json.loads((world / "world.json").read_text())
    assert recorded["config"]["n_pretrain"] == 24 and "workers" not in recorded["config"]
    assert recorded["counts"]["zeroshot"]["size"] == {"classes": 2, "images": 10}


def test_classnames_are_the_sorted_folders_and_templates_have_a_slot(world):
    for task in TINY_CLASSES:
        lines = (world / "zeroshot" / task / "classnames.txt").read_text().splitlines()
        folders = sorted(p.name for p in (world / "zeroshot" / task / "test").iterdir())
        assert [line.split("\t") for line in lines] == [[f, f.replace("_", " ")] for f in folders]
        templates = (world / "zeroshot" / task / "templates.txt").read_text().splitlines()
        assert len(templates) >= 3 and all("{c}" in t for t in templates)
    assert [name for _, name in read_classnames(world / "zeroshot/position/classnames.txt")] == \
        ["bottom left", "bottom right", "center", "top left", "top right"]


def test_csv_quotes_captions_with_commas(world):
    raw = (world / "recaption.csv").read_text()
    assert '"The picture has a plain' in raw or '"The picture has a gradient' in raw  # long captions hold commas
    assert all(len(row) == 3 for row in csv.reader(raw.splitlines()))


# ---------------------------------------------------------------- captions

def test_five_distinct_captions_per_train_and_val_image(world):
    for name, n in (("captions_train.json", 6), ("captions_val.json", 5)):
        by_image = captions_by_image(coco(world, name))
        assert sorted(by_image) == list(range(n))
        assert all(len(c) == 5 and len(set(c)) == 5 for c in by_image.values())


def test_long_and_paraphrase_sets_have_one_caption_per_val_image(world):
    val_images = coco(world, "captions_val.json")["images"]
    for name in ("long_val.json", "paraphrase_val.json"):
        data = coco(world, name)
        assert data["images"] == val_images
        assert sorted(a["image_id"] for a in data["annotations"]) == list(range(5))


def test_long_captions_have_at_least_40_words_and_start_with_the_background(world):
    longs = [a["caption"] for a in coco(world, "long_val.json")["annotations"]]
    longs += [r["long"] for r in read_csv(world / "recaption.csv")]
    for text in longs:
        assert len(text.split()) >= 40, text
        first_sentence = text.split(".")[0]
        assert "background" in first_sentence and not set(words(first_sentence)) & set(tw.SHAPES)


def test_long_caption_describes_every_object_in_order():
    scene = {"background": "gray", "background_detail": None, "objects": [
        {"shape": "star", "color": "red", "size": "large", "position": "top left"},
        {"shape": "circle", "color": "blue", "size": "small", "position": "bottom right"}]}
    text = tw.long_caption(scene)
    assert text.index("gray") < text.index("large red star") < text.index("small blue circle")
    assert "top left corner" in text and "bottom right corner" in text and "two objects" in text


def test_captions_use_an_before_vowels():
    scene = {"background": "gray", "background_detail": None,
             "objects": [{"shape": "circle", "color": "orange", "size": "small", "position": "center"}]}
    rng = tw.item_rng(0, "article", 0)
    captions = [template(scene, rng) for template in tw.COCO_TEMPLATES] + [tw.long_caption(scene)]
    assert any("an orange circle" in c for c in captions)
    assert not any(re.search(r"\ba orange", c.lower()) for c in captions)


def test_paraphrase_synonyms_never_occur_in_other_registers(world):
    synonyms = {w for table in tw.PARAPHRASE_SYNONYMS.values() for options in table.values()
                for phrase in options for w in words(phrase)}
    # The tiny world's files, plus many more scenes in memory so that every phrasing is exercised.
    texts = every_training_text(world)
    cfg = tiny_cfg(alt_count_rate=0.5, alt_background_rate=0.5, alt_filler_rate=0.5)
    for i in range(1500):
        rng = tw.item_rng(0, "vocabulary-test", i)
        scene = tw.sample_scene(rng, background=tw.BACKGROUNDS[i % 3] if i % 2 else None)
        texts += [tw.alt_text(scene, rng, cfg), tw.long_caption(scene)] + tw.coco_captions(scene, rng)
    seen = {w for text in texts for w in words(text)}
    assert synonyms & seen == set()
    # ... and the paraphrases do use them, never the words they replace.
    base = {w for vocab in (tw.COLORS, tw.SHAPES, tw.SIZES, tw.POSITIONS, tw.BACKGROUNDS) for name in vocab
            for w in words(name)}
    paraphrases = [a["caption"] for a in coco(world, "paraphrase_val.json")["annotations"]]
    paraphrases += [tw.paraphrase_caption(tw.sample_scene(tw.item_rng(0, "p", i)), tw.item_rng(1, "p", i))
                    for i in range(300)]
    for text in paraphrases:
        assert set(words(text)) & base == set(), text
        assert set(words(text)) & synonyms, text


def alt_words(rate, n, **rates):
    """(alt-text color+shape words, true color+shape words) for n random scenes."""
    cfg = tiny_cfg(alt_wrong_attribute_rate=rate, alt_size_rate=0, alt_position_rate=0, **rates)
    pairs = []
    for i in range(n):
        rng = tw.item_rng(0, "alt-test", i)
        scene = tw.sample_scene(rng)
        said = collections.Counter(w for w in words(tw.alt_text(scene, rng, cfg)) if w in tw.COLORS or w in tw.SHAPES)
        truth = collections.Counter(w for o in scene["objects"] for w in (o["color"], o["shape"]))
        pairs.append((said, truth))
    return pairs


def test_alt_text_names_every_object_and_has_the_configured_rate_of_wrong_attributes():
    # With size and position never mentioned, a wrong attribute is a wrong color or shape word.
    assert all(said == truth for said, truth in alt_words(0.0, 300, alt_shuffle_rate=1.0, alt_filler_rate=1.0))
    assert all(sum((said - truth).values()) == 1 and sum(said.values()) == sum(truth.values())
               for said, truth in alt_words(1.0, 300))
    wrong = np.mean([said != truth for said, truth in alt_words(0.07, 3000)])
    assert 0.05 < wrong < 0.09  # binomial(3000, 0.07): std 0.0047


def test_alt_text_word_order_is_shuffled():
    cfg = tiny_cfg(alt_shuffle_rate=1.0, alt_count_rate=0, alt_background_rate=0, alt_filler_rate=0,
                   alt_size_rate=0, alt_position_rate=0, alt_wrong_attribute_rate=0)
    scene = {"background": "black", "background_detail": None,
             "objects": [{"shape": "star", "color": "red", "size": "large", "position": "center"}]}
    texts = {tw.alt_text(scene, tw.item_rng(0, "order", i), cfg) for i in range(50)}
    assert texts == {"red star", "star red"}


# ---------------------------------------------------------------- images

def test_rendered_object_has_its_color_position_and_size():
    cfg = tiny_cfg(position_jitter=0.0, color_jitter=0)
    def render(**fixed):
        scene = tw.sample_scene(tw.item_rng(0, "render", 0), n_objects=1, background="black", **fixed)
        return np.asarray(tw.render_scene(scene, tw.item_rng(0, "render", 1), cfg)).astype(int)
    image = render(shape="square", color="red", size="large", position="top right")
    assert image.shape == (32, 32, 3)
    # Centre of "top right" is (x, y) = (0.76, 0.24) * 32 = (24.3, 7.7): pixel row 7, column 24.
    assert image[7, 24].tolist() == [220, 40, 40]
    assert image[24, 8].max() <= 20  # bottom left: black background (level 0..20)
    # A large square has half-side 0.85 * 0.17 * 32 = 4.6 px: about 9.2^2 = 85 pixels; small: 0.85*0.11*32 -> 36.
    large = (render(shape="square", size="large", position="center").max(axis=2) > 60).sum()
    small = (render(shape="square", size="small", position="center").max(axis=2) > 60).sum()
    assert 70 <= large <= 100 and 25 <= small <= 45


def test_shifted_background_only_in_shape_shifted(world):
    for task in TINY_CLASSES:
        scores = [texture(p) for p in (world / "zeroshot" / task / "test").rglob("*.png")]
        if task == "shape_shifted":
            assert min(scores) > 30
        else:
            assert max(scores) < 30, task
    others = list((world / "images/pretrain").iterdir()) + list((world / "coco").rglob("*.png"))
    assert max(texture(p) for p in others) < 30


# ---------------------------------------------------------------- finished / half-written worlds

def test_done_marker_is_written_last(world):
    for root, last in ((world, "world.json"), (world / "probes", "probes.json")):  # the world, then its probes
        files = [p for p in root.rglob("*") if p.is_file() and (root != world or "probes" not in p.parts)]
        done = (root / ".done").stat().st_mtime_ns
        assert all(p.stat().st_mtime_ns <= done for p in files)
        assert max((p for p in files if p.name != ".done"), key=lambda p: p.stat().st_mtime_ns).name == last
    assert (world / ".done").stat().st_mtime_ns <= (world / "probes/probes.json").stat().st_mtime_ns


def test_finished_world_is_kept_and_half_written_one_regenerated(tmp_path):
    cfg = tiny_cfg(n_pretrain=3, n_coco_train=1, n_coco_val=1, zeroshot_min_per_task=0, zeroshot_per_class=1)
    root = tmp_path / "w"
    tw.generate_world(root, cfg)
    original = all_files(root)
    (root / "pretrain.csv").write_text("damaged")
    assert tw.generate_world(root, cfg)["skipped"] is True  # .done present, same config: kept as is
    assert (root / "pretrain.csv").read_text() == "damaged"
    (root / ".done").unlink()  # as if interrupted, maybe in the middle of an atomic write
    (root / ".world.json.tmp-123-x").write_text("{")  # a temp file of common/checkpoints.atomic_write
    (root / "images/pretrain/stray.png").write_bytes(b"")
    assert tw.generate_world(root, cfg)["skipped"] is False
    assert all_files(root) == original
    assert tw.generate_world(root, tiny_cfg(**{**vars(cfg), "seed": 5}))["skipped"] is False  # config changed
    assert all_files(root)["pretrain.csv"] != original["pretrain.csv"]


def test_folder_with_foreign_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt"):
        tw.generate_world(tmp_path, tiny_cfg())
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="object_count_probs"):
        tw.generate_world("/nonexistent/never-written", tiny_cfg(object_count_probs=[0.5, 0.5]))
    with pytest.raises(ValueError, match="alt_wrong_attribute_rate"):
        tw.generate_world("/nonexistent/never-written", tiny_cfg(alt_wrong_attribute_rate=1.5))


def test_command_line_applies_config_file_and_overrides(tmp_path, capsys):
    config = tmp_path / "world.yaml"
    config.write_text("n_pretrain: 2\nn_coco_train: 1\nn_coco_val: 1\nworkers: 1\n")
    summary = tw.main(["--out", str(tmp_path / "cli"), "--config", str(config), "zeroshot_per_class=1",
                       "zeroshot_min_per_task=0", "zeroshot_fine_per_class=1"])
    assert summary["counts"]["pretrain"] == 2 and summary["counts"]["zeroshot"]["shape"]["images"] == 6
    assert len(read_csv(tmp_path / "cli/pretrain.csv")) == 2
    assert "toy world written to" in capsys.readouterr().out


# ---------------------------------------------------------------- probe sets (docs/toyworld.md "Probe sets")

def scene_difference(a, b):
    """The factors two scenes differ in."""
    out = {"background"} if a["background"] != b["background"] else set()
    if len(a["objects"]) != len(b["objects"]):
        return out | {"count"}
    for x, y in zip(a["objects"], b["objects"]):
        out |= {key for key in ("color", "size", "position", "shape") if x[key] != y[key]}
    return out


def test_probe_sets_leave_the_world_as_it_is_and_have_their_sizes(world, tmp_path):
    alone = tmp_path / "alone"
    tw.generate_world(alone, tiny_cfg(), only="world")
    assert not (alone / "probes").exists()
    files = {n: b for n, b in all_files(world).items() if not n.startswith("probes/")}
    assert files == all_files(alone), "the world's files do not depend on the probes"
    assert "probe_pairs_per_pattern" not in json.loads((world / "world.json").read_text())["config"]
    pairs = json.loads((world / "probes/pairs/pairs.json").read_text())["pairs"]
    assert collections.Counter(p["pattern"] for p in pairs) == {p: 3 for p in tw.PAIR_PATTERNS}
    assert all((world / "probes/pairs/images" / name).is_file() for p in pairs for name in p["images"])
    for subset in tw.COMPOSE_SUBSETS:
        items = json.loads((world / f"probes/compose/{subset}.json").read_text())["items"]
        assert [i["image"] for i in items] == [f"{k:05d}.png" for k in range(4)]
    assert len(list((world / "probes/shape_sketch/test").rglob("*.png"))) == 6 * 2
    for language in ("en", "fr", "de", "cipher"):
        assert len(coco(world, f"../probes/languages/captions_val_{language}.json")["annotations"]) == 5
    (world / "probes/.done").unlink()  # a half-written probe set is written again; the world is kept
    again = tw.generate_world(world, tiny_cfg(), only="probes")
    assert again["skipped"] and (world / "probes/.done").exists()
    with pytest.raises(ValueError, match="no finished toy world with this config"):
        tw.generate_world(tmp_path / "none", tiny_cfg(), only="probes")


def test_each_pair_differs_in_exactly_its_pattern_and_its_captions_say_so():
    for pattern in tw.PAIR_PATTERNS:
        for i in range(200):
            a, b = tw.pair_scenes(tw.item_rng(0, "pair-test", i), pattern)
            assert scene_difference(a, b) == {pattern}, (pattern, a, b)
    from tools.toylanguages import caption
    a, b = tw.pair_scenes(tw.item_rng(0, "pair-test", 0), "color")
    assert caption(a, "en") != caption(b, "en")


def test_pair_renders_share_every_draw_but_their_factor():
    cfg = tiny_cfg()
    for i in range(20):
        a, b = tw.pair_scenes(tw.item_rng(0, "pair-test", i), "background")
        images = [np.asarray(tw.render_scene(s, tw.item_rng(0, "bg", i), cfg, object_rng=tw.item_rng(0, "o", i)))
                  for s in (a, b)]
        same = np.all(images[0] == images[1], axis=2)
        assert 0 < same.mean() < 1 if a["background"] != "black" or b["background"] != "black" else True
        a, b = tw.pair_scenes(tw.item_rng(0, "pair-test", i), "color")
        images = [np.asarray(tw.render_scene(s, tw.item_rng(0, "bg", i), cfg, object_rng=tw.item_rng(0, "o", i)))
                  for s in (a, b)]
        assert (images[0] != images[1]).any() and (images[0] == images[1]).all(axis=2).mean() > 0.7


def test_hard_negatives_are_plausible_captions_that_differ_from_the_positive():
    for i in range(300):
        rng = tw.item_rng(0, "compose-test", i)
        scene = tw.compose_scene(rng)
        assert len({o["color"] for o in scene["objects"]}) == len({o["shape"] for o in scene["objects"]}) == \
            len(scene["objects"]) in (2, 3)
        for subset, (positive, negative) in tw.hard_negatives(scene, rng).items():
            assert positive != negative and negative.count(" in the ") + negative.count(" at the ") <= 3
            if subset.startswith("swap"):
                assert sorted(words(positive)) == sorted(words(negative))
            if subset == "add_object":
                assert len(words(negative)) > len(words(positive))
            true = {(o["color"], o["shape"]) for o in scene["objects"]}
            said = set(re.findall(r"(\w+) (circle|square|triangle|cross|diamond|star)", positive))
            assert said <= true, "the positive is true of the image"


def bigram_plausibility(train_texts):
    """A model that cannot see the image: the mean per-token log-probability of a caption under a bigram model of
    the world's training captions (add-one smoothing)."""
    tokens = lambda t: ["<s>"] + re.findall(r"[a-z]+|[,.:]", t.lower()) + ["</s>"]
    unigrams, bigrams = collections.Counter(), collections.Counter()
    for text in train_texts:
        t = tokens(text)
        unigrams.update(t[:-1])
        bigrams.update(zip(t[:-1], t[1:]))
    v = len(unigrams) + 1

    def score(text):
        t = tokens(text)
        return sum(np.log((bigrams[(a, b)] + 1) / (unigrams[a] + v)) for a, b in zip(t[:-1], t[1:])) / (len(t) - 1)
    return score


def test_an_image_blind_model_is_at_chance_on_the_swaps_and_replacements(tmp_path):
    """On a generated set: a caption-plausibility model picks the positive about half the time. add_object is the
    exception by construction (its negatives are one object longer): the blind score shows it (docs/toyworld.md)."""
    root = tmp_path / "world"
    tw.generate_world(root, tiny_cfg(n_coco_train=400, probe_negatives_per_subset=600))
    score = bigram_plausibility([a["caption"] for a in coco(root, "captions_train.json")["annotations"]])
    blind = {}
    for subset in tw.COMPOSE_SUBSETS:
        items = json.loads((root / f"probes/compose/{subset}.json").read_text())["items"]
        picks = [np.sign(score(i["positive"]) - score(i["negative"])) for i in items]
        blind[subset] = np.mean([(p > 0) + 0.5 * (p == 0) for p in picks])
    for subset in ("swap_color", "swap_position", "replace_attribute"):
        assert abs(blind[subset] - 0.5) < 0.08, blind
    assert abs(blind["add_object"] - 0.5) > 0.2, "the length cue of add_object is visible to a blind model"


def test_the_registers_agree_in_gender_and_number_and_the_cipher_has_one_length():
    from tools import toylanguages as tl

    scene = {"background": "black", "background_detail": None, "objects": [
        {"shape": "star", "color": "green", "size": "small", "position": "top left"},
        {"shape": "square", "color": "purple", "size": "large", "position": "center"}]}
    assert tl.caption(scene, "fr") == ("Deux objets sont sur un fond noir : une petite étoile verte en haut à gauche "
                                       "et un grand carré violet au centre.")
    assert tl.caption(scene, "de") == ("Zwei Objekte sind auf einem schwarzen Hintergrund: ein kleiner grüner Stern "
                                       "oben links und ein großes violettes Quadrat in der Mitte.")
    one = {**scene, "objects": [{"shape": "diamond", "color": "red", "size": "large", "position": "center"}]}
    assert tl.caption(one, "de") == "Ein Objekt ist auf einem schwarzen Hintergrund: eine große rote Raute in der Mitte."
    assert tl.caption(one, "en") == "One object is on a black background: a large red diamond at the center."
    lengths = {len(tl.caption(s, "cipher").split()) for s in (scene, one)}
    assert lengths == {tl.CIPHER_LENGTH} and not set(words(tl.caption(scene, "cipher"))) & set(
        words(tl.caption(scene, "en")))
    for table in (tl.FR_COLORS, tl.DE_COLORS):  # the lexicon covers the world's vocabulary, no more
        assert list(table) == list(tw.COLORS)
    assert list(tl.FR_SHAPES) == list(tl.DE_SHAPES) == tw.SHAPES and list(tl.FR_POSITIONS) == list(tw.POSITIONS)
    assert list(tl.FR_BACKGROUNDS) == list(tl.DE_BACKGROUNDS) == tw.BACKGROUNDS
    assert list(tl.FR_SIZES) == list(tl.DE_SIZES) == list(tw.SIZES)


def test_sketches_are_outlines():
    cfg = tiny_cfg(color_jitter=0, position_jitter=0)
    scene = {"background": "black", "background_detail": None,
             "objects": [{"shape": "square", "color": "red", "size": "large", "position": "center"}]}
    filled = np.asarray(tw.render_scene(scene, tw.item_rng(0, "s", 0), cfg))
    outline = np.asarray(tw.render_scene(scene, tw.item_rng(0, "s", 0), cfg, outline=True))
    assert filled[16, 16, 0] > 180 and outline[16, 16, 0] < 40  # the centre: red when filled, background in outline
    assert outline[:, :, 0].max() > 120  # a line one final pixel wide, spread over two by the downsampling


def test_the_embedders_ceiling_is_its_own_text_to_text_recall(tiny_world, tmp_path):
    import torch
    from common.embedder import EmbeddingCache
    from common.metrics import text_to_text_recall
    from tools import toylanguages as tl

    def stub(text):  # a bag of hashed words: captions sharing words get similar vectors
        vector = torch.zeros(16)
        for word in words(text):
            vector[zlib.crc32(word.encode()) % 16] += 1.0
        return vector
    sets = tl.language_sets("configs/toy/eval.yaml", str(tiny_world))
    assert sorted(sets) == ["cipher", "de", "en", "fr"] and all(len(c) == 12 for c in sets.values())
    EmbeddingCache(tmp_path / "cache", "stub-embedder, dim 16").fill(
        [t for c in sets.values() for t in c], lambda batch: torch.stack([stub(t) for t in batch]), show_progress=False)
    out = tmp_path / "ceiling.json"
    tl.main(["ceiling", "--eval-config", "configs/toy/eval.yaml", "--stage-config", "configs/toy/proclip_stage2.yaml",
             "--out", str(out), f"data_root={tiny_world}", "embedder=stub-embedder",
             f"embedding_cache={tmp_path / 'cache'}"])
    result = json.loads(out.read_text())
    english = torch.stack([stub(t) for t in sets["en"]])
    assert result["num_texts"] == 12 and sorted(result["recall@1"]) == ["cipher", "de", "fr"]
    for language, recall in result["recall@1"].items():
        assert recall == pytest.approx(text_to_text_recall(english, torch.stack([stub(t) for t in sets[language]])))

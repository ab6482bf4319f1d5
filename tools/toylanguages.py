r"""The toy world's captions in other languages (docs/toyworld.md "Probe sets"), written from the scene with a small
hand-made lexicon, and the frozen embedder's own cross-lingual ceiling.

    python -m tools.toylanguages ceiling --eval-config configs/toy/eval.yaml \
        --stage-config configs/toy/proclip_stage2.yaml --out results/toy/language_ceiling.json [key=value ...]

Registers, one caption per scene, all from the same structure (objects in reading order):
    en      Two objects are on a black background: a small red circle in the top left and a large blue star ...
    fr      Deux objets sont sur un fond noir : un petit cercle rouge en haut à gauche et une grande étoile bleue ...
    de      Zwei Objekte sind auf einem schwarzen Hintergrund: ein kleiner roter Kreis oben links und ein großer ...
    cipher  the English words replaced one for one by invented words, without punctuation, padded with invented
            filler words to one length (so the word count does not tell the object count): a leak check
French and German agree in gender (article, colour and size adjectives) and number (noun and verb of the count).
No machine translation and nothing downloaded. `ceiling`: each English caption of the evaluation config's `en` set
against the captions of each other language (text->text R@1 of the embedder, docs/methods.md §5), through the
embedding cache (filled by make embed-cache) when the stage config names one.
"""
import argparse
import json
import os

import numpy as np

from common.checkpoints import atomic_write_text
from common.config import load_config, parse_overrides, read_yaml, run_cli
from common.data import CocoCaptions
from common.metrics import text_to_text_recall

LANGUAGES = ("en", "fr", "de", "cipher")
COUNTS = {"en": ["one object", "two objects", "three objects"], "fr": ["un objet", "deux objets", "trois objets"],
          "de": ["ein Objekt", "zwei Objekte", "drei Objekte"]}
VERBS = {"en": ("is", "are"), "fr": ("est", "sont"), "de": ("ist", "sind")}
AND = {"en": "and", "fr": "et", "de": "und"}
# French: (masculine, feminine) of each adjective; nouns with their gender. Every table is keyed by the world's own
# vocabulary (tools/toyworld.py; tests/test_toyworld.py checks they match).
FR_SHAPES = {"circle": ("cercle", "m"), "square": ("carré", "m"), "triangle": ("triangle", "m"),
             "cross": ("croix", "f"), "diamond": ("losange", "m"), "star": ("étoile", "f")}
FR_COLORS = {"red": ("rouge", "rouge"), "green": ("vert", "verte"), "blue": ("bleu", "bleue"),
             "yellow": ("jaune", "jaune"), "orange": ("orange", "orange"), "purple": ("violet", "violette"),
             "pink": ("rose", "rose"), "cyan": ("cyan", "cyan")}
FR_SIZES = {"small": ("petit", "petite"), "large": ("grand", "grande")}
FR_POSITIONS = {"top left": "en haut à gauche", "top right": "en haut à droite", "center": "au centre",
                "bottom left": "en bas à gauche", "bottom right": "en bas à droite"}
FR_BACKGROUNDS = {"black": "sur un fond noir", "gray": "sur un fond gris", "gradient": "sur un fond dégradé"}
# German: adjective stems take the ending of the nominative after ein/eine (-er m, -e f, -es n).
DE_SHAPES = {"circle": ("Kreis", "m"), "square": ("Quadrat", "n"), "triangle": ("Dreieck", "n"),
             "cross": ("Kreuz", "n"), "diamond": ("Raute", "f"), "star": ("Stern", "m")}
DE_COLORS = {"red": "rot", "green": "grün", "blue": "blau", "yellow": "gelb", "orange": "orangefarben",
             "purple": "violett", "pink": "pink", "cyan": "türkis"}
DE_SIZES = {"small": "klein", "large": "groß"}
DE_ENDINGS = {"m": ("ein", "er"), "f": ("eine", "e"), "n": ("ein", "es")}
DE_POSITIONS = {"top left": "oben links", "top right": "oben rechts", "center": "in der Mitte",
                "bottom left": "unten links", "bottom right": "unten rechts"}
DE_BACKGROUNDS = {"black": "auf einem schwarzen Hintergrund", "gray": "auf einem grauen Hintergrund",
                  "gradient": "auf einem Hintergrund mit Farbverlauf"}
CIPHER_SEED = 17
CIPHER_LENGTH = 32  # words of every cipher caption: the longest English caption's (3 objects, 32 words)


def _join(items, language):
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" {AND[language]} " + items[-1]


def object_phrase(o, language):
    """One object: article, size, colour, shape and position, in agreement."""
    if language == "en":
        where = "at the center" if o["position"] == "center" else f"in the {o['position']}"
        return f"a {o['size']} {o['color']} {o['shape']} {where}"
    if language == "fr":
        noun, gender = FR_SHAPES[o["shape"]]
        k = 0 if gender == "m" else 1
        return f"{('un', 'une')[k]} {FR_SIZES[o['size']][k]} {noun} {FR_COLORS[o['color']][k]} " \
               f"{FR_POSITIONS[o['position']]}"
    noun, gender = DE_SHAPES[o["shape"]]
    article, ending = DE_ENDINGS[gender]
    return f"{article} {DE_SIZES[o['size']]}{ending} {DE_COLORS[o['color']]}{ending} {noun} " \
           f"{DE_POSITIONS[o['position']]}"


def caption(scene, language):
    """The scene's caption in `language` (LANGUAGES); objects in the scene's (reading) order."""
    if language == "cipher":
        return cipher_caption(caption(scene, "en"))
    n = len(scene["objects"])
    count, verb = COUNTS[language][n - 1], VERBS[language][n > 1]
    objects = _join([object_phrase(o, language) for o in scene["objects"]], language)
    background = {"en": f"on a {scene['background']} background", "fr": FR_BACKGROUNDS[scene["background"]],
                  "de": DE_BACKGROUNDS[scene["background"]]}[language]
    colon = " :" if language == "fr" else ":"  # French typography: a space before the colon
    return f"{count[0].upper() + count[1:]} {verb} {background}{colon} {objects}."


def _invented_words(count, rng, taken):
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    words = []
    while len(words) < count:
        word = "".join(consonants[rng.integers(len(consonants))] + vowels[rng.integers(len(vowels))]
                       for _ in range(int(rng.integers(2, 4))))
        if word not in taken:
            taken.add(word)
            words.append(word)
    return words


def _cipher_tables():
    """{English word: invented word} over every word an English caption can hold, and the filler words."""
    vocabulary = sorted({w for text in [*COUNTS["en"], *VERBS["en"], "on a background in the at and center",
                                        *FR_COLORS, *FR_SHAPES, *FR_SIZES, *FR_POSITIONS, *FR_BACKGROUNDS]
                         for w in text.split()})
    rng = np.random.default_rng(CIPHER_SEED)
    taken = set(vocabulary)
    return dict(zip(vocabulary, _invented_words(len(vocabulary), rng, taken))), _invented_words(60, rng, taken)


_CIPHER = None


def cipher_caption(english):
    """An English caption word for word in invented words, padded with fillers (drawn from the caption itself, so
    the same caption always gets the same ones) to CIPHER_LENGTH words."""
    global _CIPHER
    if _CIPHER is None:
        _CIPHER = _cipher_tables()
    table, fillers = _CIPHER
    words = [table[w] for w in english.lower().replace(",", " ").replace(":", " ").replace(".", " ").split()]
    assert len(words) <= CIPHER_LENGTH, english
    rng = np.random.default_rng([CIPHER_SEED, len(words), *[ord(c) for c in english[:64]]])
    return " ".join(words + [fillers[int(i)] for i in rng.integers(len(fillers), size=CIPHER_LENGTH - len(words))])


# -----------------------------------------------------------------------------
def language_sets(eval_config, data_root):
    """{language: [caption, ...]} of the config's retrieval sets that name a language, in image order; the
    English set is the one with language "en" given explicitly."""
    cfg = read_yaml(eval_config)
    root = cfg.get("data_root", "") if data_root is None else data_root
    sets = {}
    for name, spec in cfg.get("retrieval", {}).items():
        if isinstance(spec, dict) and "language" in spec:
            data = CocoCaptions(os.path.join(root, spec["annotations"]), os.path.join(root, spec["images"]), None)
            if len(data.captions) != len(data):
                raise ValueError(f"{eval_config}: language set {name!r} must have one caption per image (1:1)")
            sets[spec["language"]] = data.captions
    if "en" not in sets or len(sets) < 2:
        raise ValueError(f"{eval_config}: the ceiling needs a retrieval set with language: en and one in another "
                         f"language; found languages {sorted(sets)}")
    return sets


def ceiling(eval_config, stage_config, overrides, data_root=None):
    import proclip_stage2
    from common.embedder import embed_texts, load_embedder, open_filled_cache

    cfg = load_config(proclip_stage2.DEFAULTS, stage_config,
                      {k: v for k, v in overrides.items() if k in proclip_stage2.DEFAULTS})
    sets = language_sets(eval_config, data_root)
    texts = [t for captions in sets.values() for t in captions]
    if cfg.embedding_cache and os.path.isfile(os.path.join(cfg.embedding_cache, "meta.json")):
        cache = open_filled_cache(cfg.embedding_cache, cfg.embedder)
        features, identity = cache.lookup(texts), cache.identity
    else:
        model = load_embedder(cfg.embedder)
        features, identity = embed_texts(model, texts), cfg.embedder
    by_language, start = {}, 0
    for language, captions in sets.items():
        by_language[language], start = features[start:start + len(captions)], start + len(captions)
    recall = {language: text_to_text_recall(by_language["en"], f) for language, f in by_language.items()
              if language != "en"}
    return {"embedder": identity, "num_texts": len(sets["en"]), "recall@1": recall}


def main(argv=None):
    parser = argparse.ArgumentParser("python -m tools.toylanguages", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True, metavar="{ceiling}")
    step = actions.add_parser("ceiling", help="the embedder's text->text R@1, English -> each other language")
    step.add_argument("--eval-config", required=True, metavar="FILE", help="evaluate.py preset with the language sets")
    step.add_argument("--stage-config", required=True, metavar="FILE", help="proclip_stage2.py preset (its embedder "
                                                                          "and embedding_cache)")
    step.add_argument("--out", required=True, metavar="FILE", help="the result file, e.g. results/toy/language_ceiling.json")
    step.add_argument("overrides", nargs="*", metavar="key=value", help="proclip_stage2.py keys, and data_root")
    args, unknown = parser.parse_known_args(argv)  # unknown: --flags, refused by name
    overrides = parse_overrides(unknown + args.overrides)
    result = ceiling(args.eval_config, args.stage_config, overrides, overrides.get("data_root"))
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_cli(main, "python -m tools.toylanguages")

r"""Evaluate a CLIP-style model: zero-shot classification, retrieval, and the modality-gap statistics.

    python evaluate.py --config configs/toy/eval.yaml pretrained=runs/toy/pretrain/model.pt \
        name=pretrained out_dir=results/toy/pretrained
    python evaluate.py --config configs/toy/eval.yaml name=rafa 'seeds=[0,1,2]' \
        'out_dir=results/toy/rafa/seed{seed}' 'pretrained=runs/toy/refine/rafa/seed{seed}/model.pt'   # a row's seeds
The arch and the model type (CLIP or ProCLIP) are read from the checkpoint file (arch=auto, model_type=auto).
The tables and the gap figure are built from these files by tools/tables.py (python -m tools.tables table refine
results/toy).

For each zero-shot task and retrieval set it writes `out_dir/<dataset>_<task>.json` in CLIP_benchmark's schema
({dataset, model, pretrained, task, metrics, language}), so `clip_benchmark build` can read the folder:
    zeroshot_classification  acc1, acc5 (when >= 5 classes), mean_per_class_recall        (docs/methods.md §1/§2)
                             and `main_metric`, the one the paper's table reports (zeroshot_metric), and num_images
                             (for the tables' standard errors)
    zeroshot_retrieval       image_retrieval_recall@{1,5,10} (text->image), text_retrieval_recall@{1,5,10},
                             num_images, num_texts
    modality_gap             every statistic of docs/methods.md §3, on the retrieval set's matched pairs
                             (each image with its first caption), and its s.e. (<statistic>_se: bootstrap of
                             the pairs; binomial for separability)
    pair_selection           (`pairs` sets) MMVP-VLM's both-correct score: score, score_se, per_pattern,
                             per_pattern_n, num_pairs (docs/methods.md §5)
    hard_negatives           (`hard_negatives` sets) SugarCrepe's accuracy, accuracy_se, num_items and
                             blind_accuracy, the image-blind score (docs/methods.md §5)
Each record is also printed as a JSON line, and each model ends with one summary line (mean zero-shot, R@1 both ways
and the gap of the first retrieval set). A retrieval set's `language` (default "en") goes into its records. Every
image list is encoded once per run: sets that share images share their features.
Zero-shot classifier: mean of the normalised prompt embeddings, renormalised; logits 100·cos.
"""
import json
import os

import open_clip
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from common.checkpoints import atomic_torch_save, atomic_write_text, load_checkpoint_file
from common.config import (ConfigError, KeysHelpParser, configs_of_seeds, load_config, run_cli,
                           save_resolved_config)
from common.data import CocoCaptions, ZeroShotTask, open_rgb, read_hard_negatives, read_pairs
from common.imagecache import decode_once
from common.distributed import resolve_device
from common.metrics import (blind_accuracy, hard_negative_accuracy, modality_gap_stats, pair_both_correct, pair_scores,
                            retrieval_metrics, zero_shot_metrics)
from common.watch import progress_bar
from common.models import build_clip, encode_text, recorded_arch

DEFAULTS = dict(
    model_type="auto",        # clip | proclip (CLIP image tower + frozen embedder + adapter, docs/methods.md §2) |
                              #   auto: proclip when proclip_checkpoint is set or `pretrained` is a ProCLIP model.pt
    name="",                  # model label in the JSON files and tables (default: the out_dir's name)
    out_dir="",               # required: where the JSON files go
    arch="auto",              # open_clip architecture of the weights in `pretrained` (model_type=clip); auto: the
                              #   one the checkpoint file records (its metadata, else its run's config.yaml)
    pretrained="",            # required: open_clip tag, checkpoint file, or "random" (an untrained model, on purpose)
    seed=0,                   # pretrained=random: the untrained weights are those of this seed
    seeds=[],                 # evaluate the model of each of these seeds in turn, in this one process (the imports
                              #   and each text's tokens paid once): "{seed}" in out_dir, pretrained and
                              #   proclip_checkpoint becomes the seed, and so does seed
    force_quick_gelu=False,
    data_root="",             # prefix for the relative paths below
    zeroshot={},              # task name -> ImageFolder root with classnames.txt, templates.txt, test/
    zeroshot_templates=[],    # if set, replaces every task's templates (CLIP-Refine: ["a photo of {c}"])
    zeroshot_metric={},       # task -> the metric its paper's table reports (acc1 | mean_per_class_recall; default
                              # acc1), written as `main_metric` next to the metrics and read by the tables
    retrieval={},             # set name -> {annotations: COCO captions JSON, images: folder, language: "en"}
    pairs={},                 # set name -> {annotations: pairs JSON, images: folder} (pair_selection, §5)
    hard_negatives={},        # set name -> {annotations: items JSON, images: folder} (hard_negatives, §5)
    gap_sets=[],              # retrieval sets on which to compute the gap statistics (default: all)
    skip_sets=[],             # sets of the suite not to evaluate, by name (zero-shot, retrieval, pairs or
                              #   hard-negative sets): the toy CLIP-Refine rows skip long_val and paraphrase_val,
                              #   which only the ProCLIP tables read (one suite serves both papers there)
    prior_stats_file="",      # if set: save per-dimension mean/std of the raw features (RaFA precomputed prior)
    batch_size=256,           # images or texts per forward pass
    num_workers=2,            # DataLoader processes decoding images
    image_cache="",           # a folder: decode each image once into it (common/imagecache.py); "" = per item.
                              #   For sets whose decoded size is known to be small (the toy presets set it)
    image_cache_max_gb=4.0,   # image_cache refuses when images x 3xHxW bytes would exceed this (0 = no limit)
    device="auto",            # auto | cpu | cuda
    proclip_checkpoint="",    # model_type=proclip: the model.pt of proclip_stage2.py, or of proclip_stage1.py ("stage 1
                              #   only": its adapter with the image tower of `pretrained` if set, else of the CLIP
                              #   it was distilled from)
    embedding_cache="",       # proclip: cached embedder outputs (default: the checkpoint's, found from its folder)
    embed_missing_texts=False,  # proclip: embed the texts the cache lacks (or every text, without a cache) with the
                              #   embedder now, instead of refusing them (make embed-cache fills the cache once)
)


def get_args_parser(add_help=True):
    parser = KeysHelpParser("evaluate.py", add_help=add_help, description=__doc__, defaults=DEFAULTS,
                            path=__file__)  # --help lists every key of DEFAULTS
    parser.add_argument("--config", default=None, help="YAML preset, e.g. configs/toy/eval.yaml")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value (the keys are listed below)")
    return parser


# -----------------------------------------------------------------------------
# features
class _PathImages(Dataset):
    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        return self.transform(open_rgb(self.paths[index])), 0


class _EvalImages(Dataset):
    def __init__(self, captions):
        self.captions = captions

    def __len__(self):
        return len(self.captions)

    def __getitem__(self, index):
        return self.captions.load_eval_image(index), 0


@torch.no_grad()
def encode_decoded(model, decoded, cfg, device):
    """Unnormalised image features of images decoded once (common/imagecache.py), in batches."""
    bad = [i for i in range(len(decoded)) if not decoded.readable(i)]
    if bad:
        decoded[bad[0]]  # raises the file's own error: numbers must cover the whole set
    return torch.cat([model.encode_image(decoded.batch(slice(start, start + cfg.batch_size)).to(device)).float().cpu()
                      for start in range(0, len(decoded), cfg.batch_size)])


@torch.no_grad()
def encode_images(model, dataset, cfg, device, desc):
    """Unnormalised image features of a dataset yielding (image, label); also returns the labels."""
    loader = DataLoader(dataset, batch_size=cfg.batch_size, num_workers=cfg.num_workers)
    features, labels = [], []
    for images, targets in progress_bar(loader, desc=desc, leave=False):
        features.append(model.encode_image(images.to(device)).float().cpu())
        labels.append(torch.as_tensor(targets))
    return torch.cat(features), torch.cat(labels)


def features_of_paths(model, preprocess, paths, cfg, device, name, image_features_of):
    """Unnormalised features of the distinct images `paths` (in that order), from image_features_of when an
    earlier set of this run encoded the same list."""
    key = tuple(paths)
    if key not in image_features_of:
        decoded = decode_once(list(paths), preprocess, cfg.image_cache, open_rgb, cfg.image_cache_max_gb)
        image_features_of[key] = encode_decoded(model, decoded, cfg, device) if decoded is not None else \
            encode_images(model, _PathImages(list(paths), preprocess), cfg, device, f"images {name}")[0]
    return image_features_of[key]


def require_cached(cfg, tokenizer, texts, set_name, kind):
    """ProCLIP reads evaluation texts from its embedding cache: a text the cache lacks is a ConfigError naming the
    set and the command that fills the cache (its texts come from the eval config, tools/fill_cache.py), unless
    embed_missing_texts."""
    missing = tokenizer.missing(texts) if hasattr(tokenizer, "missing") and not cfg.embed_missing_texts else []
    if missing:
        raise ConfigError(f"{kind} {set_name!r}: {len(missing)} text(s) are not in the embedding cache "
                          f"{tokenizer.cache.folder} (first: {missing[0]!r}); fill it with `make embed-cache` (python "
                          f"-m tools.fill_cache ... --eval-config EVAL.yaml, the evaluation config of this run), or "
                          f"pass embed_missing_texts=true to embed them now")


def features_of_texts(model, tokenizer, texts, cfg, device, name, text_features_of):
    """Unnormalised features of `texts` (in that order), each distinct text encoded once per run: text_features_of
    ({text: features}) is shared by every set of the run (a caption in several sets, one positive for the
    negatives of every hard-negative subset)."""
    fresh = list(dict.fromkeys(t for t in texts if t not in text_features_of))
    if fresh:
        text_features_of.update(zip(fresh, encode_texts(model, tokenizer, fresh, cfg, device, f"texts {name}")))
    return torch.stack([text_features_of[t] for t in texts])


@torch.no_grad()
def encode_texts(model, tokenizer, texts, cfg, device, desc):
    """Unnormalised text features, in batches of texts of similar length, returned in the order given: short
    captions batched together leave whole columns of padding, which common/models.encode_text drops (toy: about
    40% less time than batches in file order)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # stable: the same batches every run
    batches = [order[start:start + cfg.batch_size] for start in range(0, len(order), cfg.batch_size)]
    encoded = torch.cat([encode_text(model, tokenizer([texts[i] for i in batch]).to(device)).float().cpu()
                         for batch in progress_bar(batches, desc=desc, leave=False)])
    features = torch.empty_like(encoded)
    features[order] = encoded  # back to the order given
    return features


# -----------------------------------------------------------------------------
# the three evaluations
def evaluate_zeroshot(model, tokenizer, preprocess, root, cfg, device, name):
    task = ZeroShotTask(root, preprocess)
    templates = [t.replace("{c}", "{}") for t in cfg.zeroshot_templates or task.templates]  # str.format slots
    require_cached(cfg, tokenizer, [t.format(c) for c in task.classnames for t in templates], name, "zero-shot task")
    classifier = open_clip.build_zero_shot_classifier(model, tokenizer, task.classnames, templates,
                                                      num_classes_per_batch=10, device=device)
    decoded = decode_once([path for path, _ in task.images.samples], preprocess, cfg.image_cache, open_rgb,
                          cfg.image_cache_max_gb)
    if decoded is not None:
        features, targets = encode_decoded(model, decoded, cfg, device), torch.tensor(task.images.targets)
    else:
        features, targets = encode_images(model, task.images, cfg, device, f"zero-shot {name}")
    logits = 100.0 * F.normalize(features, dim=-1) @ classifier.cpu().float()
    return {**zero_shot_metrics(logits, targets), "num_images": len(targets)}  # n: for the s.e. of the tables


def evaluate_retrieval(model, tokenizer, preprocess, spec, cfg, device, name, image_features_of, text_features_of):
    """image_features_of: {tuple of image paths: features} shared by the sets of one evaluation (one image
    folder, several caption files: its images are encoded once); text_features_of likewise for texts."""
    dataset = CocoCaptions(_path(cfg, spec["annotations"]), _path(cfg, spec["images"]), preprocess)
    require_cached(cfg, tokenizer, dataset.captions, name, "retrieval set")  # before any image is encoded
    key = tuple(dataset.image_paths)
    if key not in image_features_of:
        dataset.decode_once(cfg.image_cache, cfg.image_cache_max_gb)
        image_features_of[key] = encode_decoded(model, dataset.decoded, cfg, device) if dataset.decoded else \
            encode_images(model, _EvalImages(dataset), cfg, device, f"images {name}")[0]
    image_features = image_features_of[key]
    text_features = features_of_texts(model, tokenizer, dataset.captions, cfg, device, name, text_features_of)
    text_to_image = dataset.text_to_image
    metrics = {**retrieval_metrics(image_features, text_features, text_to_image),
               "num_images": len(image_features), "num_texts": len(text_features)}  # n: for the tables' s.e.
    first_caption = torch.tensor([int((text_to_image == i).nonzero()[0]) for i in range(len(dataset))])
    pairs = (image_features, text_features[first_caption])
    return metrics, pairs


def _distinct(paths):
    """-> (the distinct paths in first-seen order, the index of each path among them)."""
    order = list(dict.fromkeys(paths))
    where = {p: i for i, p in enumerate(order)}
    return order, torch.tensor([where[p] for p in paths])


def evaluate_pairs(model, tokenizer, preprocess, spec, cfg, device, name, image_features_of, text_features_of):
    """MMVP-VLM's pair selection (docs/methods.md §5): each caption against the pair's two images."""
    patterns, images, captions = read_pairs(_path(cfg, spec["annotations"]), _path(cfg, spec["images"]))
    texts = [c for pair in captions for c in pair]
    require_cached(cfg, tokenizer, texts, name, "pairs set")  # before any image is encoded
    paths, index = _distinct([p for pair in images for p in pair])
    features = features_of_paths(model, preprocess, paths, cfg, device, name, image_features_of)[index]
    text_features = features_of_texts(model, tokenizer, texts, cfg, device, name, text_features_of)
    correct = pair_both_correct(features[0::2], features[1::2], text_features[0::2], text_features[1::2])
    return pair_scores(correct, patterns)


def evaluate_hard_negatives(model, tokenizer, preprocess, spec, cfg, device, name, image_features_of,
                            text_features_of):
    """SugarCrepe's rule (docs/methods.md §5): the image against its positive and its negative caption."""
    images, positives, negatives = read_hard_negatives(_path(cfg, spec["annotations"]), _path(cfg, spec["images"]))
    texts = positives + negatives
    require_cached(cfg, tokenizer, texts, name, "hard_negatives set")  # before any image is encoded
    paths, index = _distinct(images)
    features = features_of_paths(model, preprocess, paths, cfg, device, name, image_features_of)[index]
    text_features = features_of_texts(model, tokenizer, texts, cfg, device, name, text_features_of)
    positive, negative = text_features[:len(images)], text_features[len(images):]
    accuracy = hard_negative_accuracy(features, positive, negative)
    return {"accuracy": accuracy, "accuracy_se": (accuracy * (1 - accuracy) / len(images)) ** 0.5,
            "num_items": len(images), "blind_accuracy": blind_accuracy(features, positive, negative)}


def gap_standard_errors(image_features, text_features, resamples=30, seed=0):
    """S.e. of each gap statistic over the draw of the evaluation's pairs, for the tables' verdicts: the sd of the
    statistic over `resamples` bootstrap resamples of the pairs (seeded); separability is an accuracy on the N
    held-out points of its 50/50 split, so its s.e. is binomial."""
    from common import metrics

    generator = torch.Generator().manual_seed(seed)
    n = len(image_features)
    picks = [torch.randint(n, (n,), generator=generator) for _ in range(resamples)]
    stats = [metrics.centroid_distance, metrics.centroid_sqdist_per_dim, metrics.pair_distance, metrics.relative_gap,
             metrics.alignment]
    values = {stat.__name__: [stat(image_features[pick], text_features[pick]) for pick in picks] for stat in stats}
    # uniformity is quadratic in N: all the resamples at once, from one pass over the pooled points' kernel
    values["uniformity"] = metrics.uniformity_of_resamples(image_features, text_features, picks)
    errors = {f"{name}_se": float(torch.tensor(v, dtype=torch.float64).std()) for name, v in values.items()}
    return errors


def _path(cfg, path):
    return os.path.join(cfg.data_root, path) if cfg.data_root else path


def write_result(cfg, dataset, task, metrics, language="en"):
    weights = cfg.proclip_checkpoint if cfg.model_type == "proclip" else cfg.pretrained
    record = {"dataset": dataset, "model": cfg.name, "pretrained": weights, "task": task,
              "metrics": metrics, "language": language}
    if task == "zeroshot_classification":
        record["main_metric"] = cfg.zeroshot_metric.get(dataset, "acc1")
    atomic_write_text(os.path.join(cfg.out_dir, f"{dataset}_{task}.json"), json.dumps(record, indent=2))
    print(json.dumps(record))
    return record


def summary(records):
    """One line for a reader of a model's records: the mean of its zero-shot tasks, R@1 of its first retrieval set
    both ways, and that set's gap (the first gap set's)."""
    name, parts = records[0]["model"], []
    zero_shot = [r["metrics"][r["main_metric"]] for r in records if r["task"] == "zeroshot_classification"]
    if zero_shot:
        parts.append(f"mean zero-shot {100 * sum(zero_shot) / len(zero_shot):.2f}% over {len(zero_shot)} tasks")
    retrieval = next((r for r in records if r["task"] == "zeroshot_retrieval"), None)
    if retrieval:
        m = retrieval["metrics"]
        parts.append(f"{retrieval['dataset']} R@1 I→T {100 * m['text_retrieval_recall@1']:.2f}% "
                     f"T→I {100 * m['image_retrieval_recall@1']:.2f}%")
    gap = next((r for r in records if r["task"] == "modality_gap"), None)
    if gap:
        parts.append(f"{gap['dataset']} gap: centroid distance {gap['metrics']['centroid_distance']:.3f}, relative "
                     f"gap {gap['metrics']['relative_gap']:.3f}")
    return f"{name}: " + "; ".join(parts)


# -----------------------------------------------------------------------------
def resolve_model_type(cfg):
    """model_type=auto and arch=auto made definite, from the weights: a ProCLIP checkpoint (proclip_checkpoint=, or
    a ProCLIP model.pt passed as pretrained=) is evaluated as ProCLIP; a checkpoint file's arch is the one it
    records (common/models.py recorded_arch)."""
    if cfg.model_type not in ("auto", "clip", "proclip"):
        raise ConfigError(f"model_type={cfg.model_type!r}: use auto, clip or proclip")
    if cfg.model_type == "auto":
        is_proclip_file = os.path.isfile(cfg.pretrained) and "adapter" in load_checkpoint_file(cfg.pretrained)
        if is_proclip_file and not cfg.proclip_checkpoint:
            cfg.proclip_checkpoint, cfg.pretrained = cfg.pretrained, ""
        cfg.model_type = "proclip" if cfg.proclip_checkpoint else "clip"
    if cfg.model_type == "clip" and not cfg.pretrained:
        raise ConfigError("pretrained is not set: pass the weights to evaluate (pretrained=RUN_DIR/model.pt or an "
                          "open_clip tag), or pretrained=random to score an untrained model on purpose")
    if cfg.model_type == "clip" and cfg.arch == "auto":
        if not os.path.isfile(cfg.pretrained):
            raise ConfigError(f"arch=auto reads the arch from a checkpoint file, and pretrained={cfg.pretrained!r} is "
                              f"none: an open_clip tag or random init needs arch= (e.g. arch=ViT-B-32-quickgelu); a "
                              f"model.pt not built yet: build it first (see `make help`)")
        cfg.arch = recorded_arch(cfg.pretrained)
        if not cfg.arch:
            raise ConfigError(f"arch=auto: pretrained={cfg.pretrained} records no arch (no metadata, no config.yaml "
                              f"next to it); pass arch=, e.g. arch=ViT-B-32-quickgelu")


def load_model(cfg, device):
    """-> (model, preprocess, tokenizer): model.encode_image / encode_text(tokenizer(texts)), as open_clip; cfg's
    model_type and arch made definite first (resolve_model_type)."""
    torch.manual_seed(cfg.seed)  # pretrained=random: the same untrained weights every time
    if cfg.model_type == "proclip":  # its "tokenizer" is the frozen embedder (via the cache); encode_text the adapter
        from common.proclip import load_for_evaluation
        image_tower = "" if cfg.pretrained == "random" else cfg.pretrained  # random: as the checkpoint was trained
        return load_for_evaluation(cfg.proclip_checkpoint, device, image_tower, cfg.embedding_cache,
                                   cfg.embed_missing_texts)
    model, _, preprocess, tokenizer = build_clip(cfg.arch, cfg.pretrained, cfg.force_quick_gelu, device)
    return model, preprocess, tokenizer


def drop_skipped_sets(cfg):
    """cfg's suite without the sets named in skip_sets; a name that is no set of the suite is refused."""
    kinds = ("zeroshot", "retrieval", "pairs", "hard_negatives")
    unknown = [name for name in cfg.skip_sets if not any(name in getattr(cfg, kind) for kind in kinds)]
    if unknown:
        raise ConfigError(f"skip_sets {unknown} are not sets of the suite; its sets: "
                          f"{[name for kind in kinds for name in getattr(cfg, kind)]}")
    for kind in kinds:
        setattr(cfg, kind, {name: spec for name, spec in getattr(cfg, kind).items() if name not in cfg.skip_sets})


def check_suite(cfg):
    """The evaluation suite of cfg is well formed and all its files are there (before any model is built)."""
    if not (cfg.zeroshot or cfg.retrieval or cfg.pairs or cfg.hard_negatives):
        raise ConfigError("nothing to evaluate: zeroshot, retrieval, pairs and hard_negatives are all empty; pass "
                          "--config with an evaluation suite (e.g. configs/toy/eval.yaml)")
    for kind, what, allowed in (("retrieval", "a COCO captions JSON", {"language"}), ("pairs", "a pairs JSON", set()),
                                ("hard_negatives", "a hard-negatives JSON", set())):
        bad_sets = [name for name, spec in getattr(cfg, kind).items()
                    if not isinstance(spec, dict) or not {"annotations", "images"} <= spec.keys()
                    or not spec.keys() <= {"annotations", "images"} | allowed
                    or not isinstance(spec.get("language", "en"), str)]
        if bad_sets:
            raise ConfigError(f"{kind} set {bad_sets[0]!r} needs annotations: ({what}) and images: (its image "
                              f"folder)" + (", and optionally language: (a code, quoted)" if allowed else "") +
                              f"; got {getattr(cfg, kind)[bad_sets[0]]!r}")
    unknown_gap = [s for s in cfg.gap_sets if s not in cfg.retrieval]
    if unknown_gap:
        raise ConfigError(f"gap_sets {unknown_gap} are not retrieval sets; retrieval sets: {list(cfg.retrieval)}")
    bad_metric = {t: m for t, m in cfg.zeroshot_metric.items()
                  if t not in cfg.zeroshot or m not in ("acc1", "acc5", "mean_per_class_recall")}
    if bad_metric:
        raise ConfigError(f"zeroshot_metric {bad_metric}: keys must be zero-shot tasks ({list(cfg.zeroshot)}) and "
                          f"values acc1, acc5 or mean_per_class_recall")
    missing = [path for path in [_path(cfg, root) for root in cfg.zeroshot.values()] +
               [_path(cfg, spec[key]) for sets in (cfg.retrieval, cfg.pairs, cfg.hard_negatives)
                for spec in sets.values() for key in ("annotations", "images")]
               if not os.path.exists(path)]
    if missing:  # before any model is built or weight fetched
        raise FileNotFoundError(f"{len(missing)} evaluation paths do not exist (first: {missing[0]}); check data_root="
                                f"{cfg.data_root!r} and the suite's paths (paper preset: make check-data)")


def main(argv=None):
    args, unknown = get_args_parser().parse_known_args(argv)
    suite = load_config(DEFAULTS, args.config, unknown + args.overrides)  # unknown: --flags, refused by name
    if not suite.out_dir:
        raise ConfigError("out_dir is not set: pass out_dir=PATH (e.g. results/toy/pretrained)")
    drop_skipped_sets(suite)
    check_suite(suite)
    models = configs_of_seeds(suite, "out_dir", ("out_dir", "pretrained", "proclip_checkpoint"))
    for cfg in models:  # every model's weights found before any is evaluated
        cfg.name = cfg.name or os.path.basename(os.path.normpath(cfg.out_dir))
        resolve_model_type(cfg)
    tokenizers = {}  # {arch: TokensOnce}: the seeds of a CLIP row share one tokenizer, so each text is tokenized once
    for cfg in models:
        evaluate_model(cfg, tokenizers)


class TokensOnce:
    """open_clip's tokenizer, each distinct text tokenized once: the same tokens for every model of one arch."""

    def __init__(self, tokenizer):
        self.tokenizer, self.tokens_of = tokenizer, {}

    def __call__(self, texts):
        texts = [texts] if isinstance(texts, str) else list(texts)
        fresh = list(dict.fromkeys(t for t in texts if t not in self.tokens_of))
        if fresh:
            self.tokens_of.update(zip(fresh, self.tokenizer(fresh)))
        return torch.stack([self.tokens_of[t] for t in texts])


def evaluate_model(cfg, tokenizers):
    """Every set of cfg's suite on cfg's model: one JSON file per set and task in cfg.out_dir, then its `done`."""
    device = resolve_device(cfg.device)
    save_resolved_config(cfg, cfg.out_dir, "eval_config.yaml")
    model, preprocess, tokenizer = load_model(cfg, device)
    if cfg.model_type == "clip":  # ProCLIP's "tokenizer" reads the embedding cache: nothing to share
        tokenizer = tokenizers.setdefault(cfg.arch, TokensOnce(tokenizer))
    model.eval()

    records = []  # what write_result wrote, for the summary line
    for task_name, root in cfg.zeroshot.items():
        records.append(write_result(cfg, task_name, "zeroshot_classification", evaluate_zeroshot(
            model, tokenizer, preprocess, _path(cfg, root), cfg, device, task_name)))
    image_features_of, text_features_of = {}, {}  # shared by every set of this run: each list encoded once
    for set_name, spec in cfg.retrieval.items():
        metrics, (image_features, text_features) = evaluate_retrieval(
            model, tokenizer, preprocess, spec, cfg, device, set_name, image_features_of, text_features_of)
        records.append(write_result(cfg, set_name, "zeroshot_retrieval", metrics, spec.get("language", "en")))
        if set_name in (cfg.gap_sets or cfg.retrieval):
            gap = modality_gap_stats(image_features, text_features)
            gap["separability_se"] = (gap["separability"] * (1 - gap["separability"]) / len(image_features)) ** 0.5
            records.append(write_result(cfg, set_name, "modality_gap",
                                        {**gap, **gap_standard_errors(image_features, text_features)}))
            atomic_torch_save({"image": image_features, "text": text_features},  # for the gap figure
                              os.path.join(cfg.out_dir, f"{set_name}_pair_features.pt"))
        if cfg.prior_stats_file and set_name == next(iter(cfg.retrieval)):
            pooled = torch.cat([image_features, text_features])  # raw features of both modalities
            atomic_torch_save({"mean": pooled.mean(0), "std": pooled.std(0)}, cfg.prior_stats_file)
    for set_name, spec in cfg.pairs.items():
        records.append(write_result(cfg, set_name, "pair_selection", evaluate_pairs(
            model, tokenizer, preprocess, spec, cfg, device, set_name, image_features_of, text_features_of)))
    for set_name, spec in cfg.hard_negatives.items():
        records.append(write_result(cfg, set_name, "hard_negatives", evaluate_hard_negatives(
            model, tokenizer, preprocess, spec, cfg, device, set_name, image_features_of, text_features_of)))
    atomic_write_text(os.path.join(cfg.out_dir, "done"), "ok\n")
    print(summary(records))


if __name__ == "__main__":
    run_cli(main)

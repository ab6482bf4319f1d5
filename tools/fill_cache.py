r"""Fill the ProCLIP embedding cache with every text the runs and their evaluations need, once (make embed-cache).

    python -m tools.fill_cache --stage1-config configs/toy/proclip_stage1.yaml \
        --stage2-config configs/toy/proclip_stage2.yaml --eval-config configs/toy/eval.yaml [key=value ...]

The texts: the training captions of each stage config and of its held-out part, read as the stage reads them (its
DEFAULTS <- the YAML file <- key=value), stage 1's long captions when it trains on them (instance_long_captions), and every
text of the evaluation config: zero-shot prompts, retrieval captions (every language), both captions of each pair
and each hard-negative item's positive and negative (docs/methods.md §5). Both stage configs must name the same embedder and
embedding_cache. key=value: keys of proclip_stage1.py / proclip_stage2.py (each config takes the keys it has), and
data_root (the evaluation config's). The embedder is loaded only when some text is missing from the cache.
"""
import argparse
import os
import types

import proclip_stage1
import proclip_stage2
from common.config import ConfigError, load_config, parse_overrides, read_yaml, run_cli
from common.data import CocoCaptions, read_hard_negatives, read_pairs, read_prompt_files
from common.embedder import TextSource, fill_cache
from common.proclip import split_training_set

STAGES = (("stage1", proclip_stage1), ("stage2", proclip_stage2))
EVAL_KEYS = ("data_root",)  # the evaluation config's keys that key=value may set


def evaluation_texts(eval_config, data_root=None):
    """Every text an evaluate.py config scores (its data_root, or the one given): zero-shot prompts, retrieval
    captions, pair captions, hard-negative positives and negatives."""
    cfg = read_yaml(eval_config)
    root = cfg.get("data_root", "") if data_root is None else data_root
    texts = []
    for task_root in cfg.get("zeroshot", {}).values():  # the prompts exactly as evaluate.py writes them
        classnames, templates = read_prompt_files(os.path.join(root, task_root))
        texts += [t.format(c=c) for c in classnames for t in cfg.get("zeroshot_templates") or templates]
    for name, spec in cfg.get("retrieval", {}).items():  # the captions exactly as evaluate.py reads them
        if not isinstance(spec, dict) or not {"annotations", "images"} <= spec.keys():
            raise ValueError(f"{eval_config}: retrieval set {name!r} needs annotations: and images: paths")
        annotations, images = os.path.join(root, spec["annotations"]), os.path.join(root, spec["images"])
        texts += CocoCaptions(annotations, images, None).captions
    for name, spec in cfg.get("pairs", {}).items():  # both captions of every pair
        texts += [c for pair in read_pairs(*_probe_paths(eval_config, root, "pairs", name, spec))[2] for c in pair]
    for name, spec in cfg.get("hard_negatives", {}).items():  # every positive and negative
        _, positives, negatives = read_hard_negatives(*_probe_paths(eval_config, root, "hard_negatives", name, spec))
        texts += positives + negatives
    return texts


def _probe_paths(eval_config, root, kind, name, spec):
    if not isinstance(spec, dict) or not {"annotations", "images"} <= spec.keys():
        raise ValueError(f"{eval_config}: {kind} set {name!r} needs annotations: and images: paths")
    return os.path.join(root, spec["annotations"]), os.path.join(root, spec["images"])


def stage_configs(paths, overrides):
    """{stage: config} of the stages in `paths` ({stage: YAML file, or "" for its DEFAULTS alone}), each resolved
    as its stage resolves it; every override must be a key of some stage (or of EVAL_KEYS)."""
    valid = set(EVAL_KEYS).union(*(module.DEFAULTS for _, module in STAGES))
    unknown = [key for key in overrides if key not in valid]
    if unknown:
        raise ConfigError(f"command line: unknown key {unknown[0]!r}: fill_cache takes the keys of proclip_stage1.py "
                          f"and proclip_stage2.py (their DEFAULTS) and {', '.join(EVAL_KEYS)}")
    return {stage: load_config(module.DEFAULTS, paths[stage] or None,
                               {k: v for k, v in overrides.items() if k in module.DEFAULTS})
            for stage, module in STAGES if stage in paths}


def get_args_parser():
    parser = argparse.ArgumentParser("python -m tools.fill_cache", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage1-config", default="", metavar="FILE", help="proclip_stage1.py YAML preset")
    parser.add_argument("--stage2-config", default="", metavar="FILE", help="proclip_stage2.py YAML preset")
    parser.add_argument("--stage1", action="store_true", help="proclip_stage1.py's own DEFAULTS, without a preset")
    parser.add_argument("--stage2", action="store_true", help="proclip_stage2.py's own DEFAULTS, without a preset")
    parser.add_argument("--eval-config", default="", metavar="FILE",
                        help="evaluate.py preset whose prompts and captions are embedded too")
    parser.add_argument("--device", default="auto", help="auto (the GPU if there is one) | cpu | cuda | cuda:K")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="the embedder's weights; auto = bf16 on a GPU, fp32 on CPU")
    parser.add_argument("--batch-size", type=int, default=0, help="texts per forward pass; 0 = 256 on GPU, 16 on CPU")
    parser.add_argument("--part", type=int, default=0, help="this process embeds part K of --num-parts ...")
    parser.add_argument("--num-parts", type=int, default=1,
                        help="N parallel writers (GPUs or SLURM array tasks), each with its own --part K in 0..N-1; "
                             "run the same command with every K, at once or one after the other")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. train_data=... embedding_cache_dtype=float16 "
                             "embedder_trust_remote_code=true data_root=...")
    return parser


def main(argv=None):
    parser = get_args_parser()
    args, unknown = parser.parse_known_intermixed_args(argv)
    overrides = parse_overrides(unknown + args.overrides)  # an unknown --flag: told to write key=value
    # each stage read: its YAML preset, or "" for its DEFAULTS alone (--stage1, --stage2)
    paths = {stage: getattr(args, f"{stage}_config") for stage, _ in STAGES
             if getattr(args, f"{stage}_config") or getattr(args, stage)}
    if not paths:
        parser.error("give --stage1-config FILE, --stage2-config FILE or both (--stage1, --stage2: no preset)")
    configs = stage_configs(paths, overrides)
    targets = {(c.embedder, c.embedding_cache) for c in configs.values()}
    if len(targets) != 1 or not all(next(iter(targets))):
        given = [path for path in (args.stage1_config, args.stage2_config) if path]
        raise ValueError(f"{given} must all set the same embedder and embedding_cache; got {targets}")
    embedder, folder = targets.pop()
    # each stage's training captions and those of its held-out part (scored during training), read from the corpus
    # index by hash (no list of them is made), and stage 1's long captions when it trains on them
    corpora = [part for c in configs.values() for part in split_training_set(c, None)]
    stage1 = configs.get("stage1")
    if stage1 is not None and stage1.instance_long_captions:  # stage 1's L_ins on the long captions too
        corpora += split_training_set(
            types.SimpleNamespace(**{**vars(stage1), "csv_caption_keys": [stage1.long_caption_key]}), None)
    sources = [TextSource.of_dataset(corpus) for corpus in corpora]
    if args.eval_config:
        sources.append(TextSource.of_texts(evaluation_texts(args.eval_config, overrides.get("data_root"))))
    first = next(iter(configs.values()))
    fill_cache(embedder, folder, sources, device=args.device, batch_size=args.batch_size, precision=args.precision,
               trust_remote_code=any(c.embedder_trust_remote_code for c in configs.values()),
               store_dtype=first.embedding_cache_dtype, part=args.part, num_parts=args.num_parts,
               chat_template=first.embedder_chat_template)


if __name__ == "__main__":
    run_cli(main, "python -m tools.fill_cache")

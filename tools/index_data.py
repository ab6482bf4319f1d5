"""Build the corpus index of a training stage's data ahead of its job (make data-index): what its first run would
otherwise build (common/corpus_index.py), e.g. on a login node before the ranks of a SLURM job start.

    python -m tools.index_data proclip_stage2 --config configs/paper/proclip_stage2.yaml train_data=... [key=value]
    python -m tools.index_data refine --config configs/paper/refine.yaml

It reads the corpus exactly as the stage does (its DEFAULTS <- the YAML file <- key=value: train_format,
train_data, caption keys, data_index), stage 1's long captions too when it trains on them, and prints where each
index is and what it holds. An index that is current is reused, one whose source files changed is built again.
"""
import argparse
import types

import proclip_stage1
import proclip_stage2
import refine
from common.config import load_config, run_cli
from common.data import open_caption_dataset

STAGES = {"refine": refine, "proclip_stage1": proclip_stage1, "proclip_stage2": proclip_stage2}


def stage_corpora(stage, cfg):
    """The caption corpora the stage reads: its training data, and stage 1's long captions when it trains on them."""
    corpora = [open_caption_dataset(cfg, None)]
    if stage == "proclip_stage1" and cfg.instance_long_captions:
        corpora.append(open_caption_dataset(
            types.SimpleNamespace(**{**vars(cfg), "csv_caption_keys": [cfg.long_caption_key]}), None))
    return corpora


def main(argv=None):
    parser = argparse.ArgumentParser("python -m tools.index_data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=sorted(STAGES), help="the stage whose training data is indexed")
    parser.add_argument("--config", default=None, metavar="FILE", help="the stage's YAML preset")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train_data=...")
    args, unknown = parser.parse_known_intermixed_args(argv)
    cfg = load_config(STAGES[args.stage].DEFAULTS, args.config, args.overrides + unknown)  # a --flag is refused
    for corpus in stage_corpora(args.stage, cfg):
        index = corpus.index
        print(f"{corpus.source}: {index.num_samples} samples, {index.meta['captions']} captions, indexed in "
              f"{index.folder}")


if __name__ == "__main__":
    run_cli(main, "python -m tools.index_data")

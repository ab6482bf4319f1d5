"""Fetch the hub weights a preset's configs name into a folder ahead of time, and check that they are there.

    python -m tools.weights fetch --dir WEIGHTS_DIR configs/paper/*.yaml [key=value ...]   (make weights)
    python -m tools.weights check [--dir WEIGHTS_DIR] configs/paper/*.yaml [key=value ...] (make check-weights)

The weights: open_clip's pretrained tag of each config (arch + pretrained, e.g. ViT-B-32-quickgelu / openai) and
its text embedder (embedder=, ProCLIP), with the key=value overrides applied to every config; checkpoint files,
random init and the bundled toy embedder need nothing. WEIGHTS_DIR is a Hugging Face cache folder: run the stages
with HF_HUB_CACHE=WEIGHTS_DIR HF_HUB_OFFLINE=1 (make does, given WEIGHTS_DIR=...) and they read it without network
(common/weights.py). `fetch` needs network (a login node); `check` none, and fails (exit 2) naming what is missing.
"""
import argparse
import os
import types

from common.config import UserError, parse_overrides, read_yaml, run_cli
from common.weights import FETCH_COMMAND, cache_dir, fetch, local_path, offline, weights_of


def preset_weights(configs, overrides):
    """The distinct hub weights of the YAML files `configs` with `overrides` ({key: value}) applied, in order."""
    found = {}
    for path in configs:
        settings = read_yaml(path)
        if not isinstance(settings, dict):
            raise UserError(f"{path}: expected a mapping of key: value")
        for weight in weights_of(types.SimpleNamespace(**{**settings, **overrides})):
            found.setdefault(weight, path)
    return found


def get_args_parser():
    parser = argparse.ArgumentParser("python -m tools.weights", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["fetch", "check"])
    parser.add_argument("--dir", default="", help="the weights folder (a Hugging Face cache); default: HF_HUB_CACHE, "
                                                  "else the user's Hugging Face cache")
    parser.add_argument("configs", nargs="+", metavar="CONFIG.yaml or key=value")
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    configs = [c for c in args.configs if "=" not in c]
    overrides = parse_overrides([c for c in args.configs if "=" in c])
    missing_files = [c for c in configs if not os.path.isfile(c)]
    if missing_files:
        raise FileNotFoundError(f"config file {missing_files[0]} not found; see configs/ for the presets")
    folder = os.path.abspath(args.dir) if args.dir else cache_dir()
    weights = preset_weights(configs, overrides)
    if not weights:
        print(f"no hub weights to {args.command}: these configs use checkpoint files, random init or the bundled "
              f"toy embedder only")
        return
    if args.command == "fetch":
        if offline():
            raise UserError("fetch downloads: unset HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE (run it where there is "
                            "network, e.g. a login node)")
        os.makedirs(folder, exist_ok=True)
        for weight, config in weights.items():
            print(f"{weight.name} ({weight.repo}, for {config}) ...", flush=True)
            print(f"  -> {fetch(weight, folder)}")
    missing = []
    for weight, config in weights.items():
        path = local_path(weight, folder)
        print(f"{'ok' if path else 'MISSING':8s}{weight.name} ({weight.repo}, for {config}){f': {path}' if path else ''}")
        if not path:
            missing.append(weight.name)
    if missing:
        raise UserError(f"{len(missing)} of {len(weights)} weights are not in {folder} ({', '.join(missing)}); "
                        f"fetch them where there is network: {FETCH_COMMAND.format(dir=folder)}")
    print(f"all {len(weights)} weights are in {folder}: run with WEIGHTS_DIR={folder} (make) or "
          f"HF_HUB_CACHE={folder} HF_HUB_OFFLINE=1")


if __name__ == "__main__":
    run_cli(main, "python -m tools.weights")

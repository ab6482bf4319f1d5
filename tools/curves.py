"""The training curves of every run, drawn from its log.jsonl (the keys of docs/watching.md).

    python -m tools.curves runs/toy results/toy/curves   -> results/toy/curves/ROW.png and ROW.json per row

A row is a folder of seed runs (runs/toy/refine/clip_refine/seed0, seed1, ... -> curves/refine/clip_refine.png),
drawn as the mean over its seeds with a band from the lowest to the highest seed, or a single run
(runs/toy/pretrain -> curves/pretrain.png). One panel per number of the log: the loss, each of its terms, the logit
scale and the learning rate (the training batches as a line, the held-out split as dots where it was scored), then
each held-out modality-gap statistic (docs/methods.md §3). ROW.json holds every number drawn, panel by panel.
A step logged twice (trained again after a resume) counts once, with its last line.
"""
import argparse
import json
import math
import os
import re

from common.checkpoints import atomic_write, atomic_write_text
from common.config import run_cli

# Bookkeeping of the log lines, not curves.
NOT_DRAWN = {"split", "step", "epoch", "total_steps", "time", "elapsed_s", "steps_per_s", "eta_s", "skipped_images",
             "holdout_items", "holdout_s"}
SPLITS = {"train": "training batches", "holdout": "held-out split"}


def find_rows(runs_dir):
    """{row: [run folders]} of every run under runs_dir with a log.jsonl; a row is the folder of its seedN runs
    (named by its path under runs_dir), or a run that is not a seed of a row."""
    rows = {}
    for folder, _, files in sorted(os.walk(runs_dir)):
        if "log.jsonl" in files:
            row = os.path.dirname(folder) if re.fullmatch(r"seed\d+", os.path.basename(folder)) else folder
            rows.setdefault(os.path.relpath(row, runs_dir), []).append(folder)
    if not rows:
        raise FileNotFoundError(f"no run with a log.jsonl under {runs_dir}; train first (make reproduce-table1)")
    return {row: sorted(runs, key=seed_number) for row, runs in sorted(rows.items())}


def seed_number(folder):
    match = re.fullmatch(r"seed(\d+)", os.path.basename(folder))
    return int(match.group(1)) if match else -1


def read_log(run_dir):
    """{split: {step: record}} of a run's log.jsonl: the last line of each (split, step). A line cut short by a
    killed process can only be the last one; any other line that is not JSON is an error naming it."""
    path = os.path.join(run_dir, "log.jsonl")
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    by_split = {}
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise ValueError(f"{path}, line {number}: not a JSON line; the log is damaged (delete the run to train "
                             f"it again)") from None
        by_split.setdefault(record["split"], {})[record["step"]] = record
    return by_split


def row_curves(run_dirs):
    """{(split, key): {"step", "mean", "low", "high", "seeds"}} over the runs of a row: at each step that any run
    logged, the mean, lowest and highest value over the runs that logged it, and how many did."""
    logs = [read_log(d) for d in run_dirs]
    curves = {}
    for split in SPLITS:
        keys = []
        for log in logs:
            for record in log.get(split, {}).values():
                keys += [k for k, v in record.items() if k not in NOT_DRAWN and k not in keys
                         and isinstance(v, (int, float)) and not isinstance(v, bool)]
        for key in keys:
            steps = sorted({s for log in logs for s, r in log.get(split, {}).items() if key in r})
            values = [[log[split][s][key] for log in logs if key in log.get(split, {}).get(s, {})] for s in steps]
            curves[split, key] = {"step": steps, "mean": [math.fsum(v) / len(v) for v in values],
                                  "low": [min(v) for v in values], "high": [max(v) for v in values],
                                  "seeds": [len(v) for v in values]}
    return curves


def panels_of(curves):
    """[(title, {split: curve})]: the loss first, then every other key of the training lines in their order (with
    the held-out split's values of the same key beside them) and the learning rate, then the keys only the held-out
    split has (the gap statistics)."""
    keys = [key for split, key in curves if split == "train"]
    keys = sorted(keys, key=lambda k: (k != "loss") + 2 * (k == "lr"))  # a stable sort: the rest keep their order
    keys += [k for s, k in curves if s == "holdout" and k not in keys]
    return [(key, {split: curves[split, key] for split in SPLITS if (split, key) in curves}) for key in keys]


def draw_row(row, run_dirs, out_dir):
    """out_dir/ROW.png and ROW.json of one row -> (png path, [panel titles]); None when its log has no numbers yet
    (a run that has only started)."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    panels = panels_of(row_curves(run_dirs))
    if not panels:
        return None
    columns = min(4, len(panels))
    lines = -(-len(panels) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4 * columns, 2.8 * lines + 0.4), squeeze=False)
    styles = {"train": dict(color="tab:blue", marker=None), "holdout": dict(color="tab:red", marker="o")}
    for ax, (title, series) in zip(axes.flat, panels):
        for split, curve in series.items():
            style = styles[split]
            ax.plot(curve["step"], curve["mean"], color=style["color"], marker=style["marker"], markersize=3,
                    linewidth=1.5 if split == "train" else 1, label=SPLITS[split])
            if len(run_dirs) > 1:
                ax.fill_between(curve["step"], curve["low"], curve["high"], color=style["color"], alpha=0.2,
                                linewidth=0)
        ax.set_title(title, fontsize=10)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("step", fontsize=8)
    handles = {label: h for ax in axes.flat for h, label in zip(*ax.get_legend_handles_labels())}
    seeds = [os.path.basename(d) for d in run_dirs] if len(run_dirs) > 1 else []
    band = f"mean of {len(run_dirs)} seeds ({', '.join(seeds)}), band from the lowest to the highest" if seeds else \
        "one run"
    fig.suptitle(f"{row}: {band}", fontsize=12)
    axes.flat[0].legend(handles.values(), handles.keys(), fontsize=8)
    fig.tight_layout()
    base = os.path.join(out_dir, row)
    os.makedirs(os.path.dirname(base), exist_ok=True)
    atomic_write(base + ".png", lambda f: fig.savefig(f, dpi=100, format="png", metadata={"Software": None}))
    plt.close(fig)
    record = {"row": row, "runs": list(run_dirs), "panels": [{"title": t, **s} for t, s in panels]}
    atomic_write_text(base + ".json", json.dumps(record, indent=1) + "\n")
    return base + ".png", [title for title, _ in panels]


def draw_all(runs_dir, out_dir):
    """Every row's curves -> {row: (png path, [panel titles]) or None: nothing logged yet}."""
    return {row: draw_row(row, runs, out_dir) for row, runs in find_rows(runs_dir).items()}


def main(argv=None):
    parser = argparse.ArgumentParser("python -m tools.curves", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs_dir", help="the runs' folder, e.g. runs/toy (every log.jsonl under it is drawn)")
    parser.add_argument("out_dir", help="where the figures go, e.g. results/toy/curves")
    args = parser.parse_args(argv)
    for row, drawn in draw_all(args.runs_dir, args.out_dir).items():
        print(f"wrote {drawn[0]} ({len(drawn[1])} panels)" if drawn else f"{row}: nothing logged yet, not drawn")


if __name__ == "__main__":
    run_cli(main, "python -m tools.curves")

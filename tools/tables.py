"""Tables and the gap figure from finished evaluations (the files evaluate.py writes), papers' numbers beside.

    python -m tools.tables table refine results/toy      -> results/toy/table1_refine.{md,csv}
    python -m tools.tables table proclip results/toy     -> results/toy/table1_proclip.{md,csv}, table2_proclip.{md,csv}
    python -m tools.tables table probes results/toy      -> results/toy/table_probes.{md,csv} (docs/methods.md §5)
    python -m tools.tables figure results/toy            -> results/toy/modality_gap.{png,json} (pre-trained,
                                                            CLIP-Refine; --rows ROW,ROW,... --name NAME: others)
    python -m tools.tables fill-results README.md docs/results.md   -> their result blocks, from the files they name
Each row is read from results/toy/ROW/seedS/ (one folder per seed; `--seeds 0,1,2` picks them), or from
results/toy/ROW/ for a model without a seed (the pre-trained CLIP). Cells are mean ± sd over seeds, with the
binomial s.e. of each accuracy; the claims are judged by the rule of tools/stats.py.

A table is only ever built from result files on disk: a missing row is an error naming the Make target to run.
"""
import argparse
import ast
import csv
import glob
import json
import os
import re
import textwrap

from common.checkpoints import atomic_write, atomic_write_text, load_checkpoint_file
from common.config import run_cli
from tools import stats

GAP_STATISTICS = ["centroid_distance", "centroid_sqdist_per_dim", "pair_distance", "relative_gap", "alignment",
                  "uniformity", "separability"]



def refine_objectives():
    """refine.py's OBJECTIVES ({name: (loss terms, label)}), read from its source as the Makefile reads their names:
    importing refine.py would import torch and open_clip, 5 of the 6 seconds of a process that writes a table."""
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "refine.py")) as f:
        tree = ast.parse(f.read())
    (value,) = [node.value for node in tree.body if isinstance(node, ast.Assign)
                and [getattr(target, "id", None) for target in node.targets] == ["OBJECTIVES"]]
    return ast.literal_eval(value)


# The rows of the CLIP-Refine table: the pre-trained CLIP, then every objective of refine.py in its order.
REFINE_ROWS = [("pretrained", "Pre-trained"), *((name, label) for name, (_, label) in refine_objectives().items())]
GAP_FIGURE_ROWS = [row for row in REFINE_ROWS if row[0] in ("pretrained", "clip_refine")]  # before and after
# docs/methods.md §1: ViT-B/32, from secondary summaries (not checked against the paper's own table); "" = not given.
REFINE_PAPER = {
    "columns": ["Method", "mean zero-shot (12 sets)", "ImageNet", "COCO R@1 T→I", "COCO R@1 I→T"],
    "rows": [["Pre-trained", 52.74, 59.04, 30.56, 33.26], ["Contrastive", 45.75, 52.96, 34.88, 31.86],
             ["Self-KD", 52.94, 59.06, "", ""], ["m²-mix", 46.48, 53.58, "", ""],
             ["CLIP-Refine", 54.69, 60.93, 37.64, 38.78]],
}


def load_results(folder):
    """{(dataset, task): metrics} of one evaluation (one model) from its folder of JSON files."""
    files = glob.glob(os.path.join(folder, "*.json"))
    if not files:
        raise FileNotFoundError(f"no results in {folder}; run `make reproduce-table1` (or the evaluate target "
                                f"for {folder!r}) first")
    results = {}
    for path in files:
        with open(path) as f:
            record = json.load(f)
        results[(record["dataset"], record["task"])] = record["metrics"]
        if record["task"] == "zeroshot_retrieval":  # the captions' language (CLIP_benchmark's field)
            results[(record["dataset"], "language")] = record.get("language", "en")
        if "main_metric" in record:  # the metric the paper reports for this task (evaluate.py zeroshot_metric)
            results[(record["dataset"], "main_metric")] = record["main_metric"]
    return results


def seed_folders(results_dir, row, seeds=None):
    """The evaluation folders of one row: results_dir/row/seed<S>/ for each seed (all there are, or `seeds`), or
    results_dir/row/ itself for a model without a seed (the pre-trained CLIP)."""
    folder = os.path.join(results_dir, row)
    if glob.glob(os.path.join(folder, "*.json")):
        return [folder]
    found = sorted(glob.glob(os.path.join(folder, "seed*")), key=lambda f: int(f.rsplit("seed", 1)[1] or -1))
    wanted = [os.path.join(folder, f"seed{s}") for s in seeds] if seeds else found
    absent = [f for f in wanted if f not in found]
    if absent or not wanted:
        raise FileNotFoundError(f"no results in {absent[0] if absent else folder}; run `make reproduce-table1` (or "
                                f"the evaluate target for {row!r}) first")
    return wanted


def load_seeds(results_dir, row, seeds=None):
    """[{(dataset, task): metrics}, ...]: one evaluation per seed of a row."""
    return [load_results(folder) for folder in seed_folders(results_dir, row, seeds)]


class Cell:
    """One table cell: its value per seed, and the s.e. of one evaluation (binomial; None: not an accuracy)."""

    def __init__(self, values, se=None, digits=None):
        self.values, self.se = list(values), se
        self.mean, self.sd = stats.mean(self.values), stats.sd(self.values)
        self.digits = digits or (3 if abs(self.mean) < 2 else 2)  # statistics with 3 decimals, percentages 2

    def markdown(self):
        text = f"{self.mean:.{self.digits}f}"
        return text + f" ± {self.sd:.{self.digits}f}" if len(self.values) > 1 else text


def gap_cell(seeds, dataset, statistic):
    """A gap statistic per seed, with the evaluation's s.e. (mean over seeds of `<statistic>_se`, when recorded)."""
    metrics = [r[(dataset, "modality_gap")] for r in seeds]
    ses = [m.get(f"{statistic}_se") for m in metrics]
    return Cell([m[statistic] for m in metrics], None if None in ses else stats.mean(ses), digits=3)


def accuracy_cell(per_seed, n):
    """An accuracy (fraction, per seed) measured on n items, in percent, with its binomial s.e. at the mean."""
    values = [100 * v for v in per_seed]
    se = stats.binomial_se(stats.mean(per_seed), n)
    return Cell(values, None if se is None else 100 * se, digits=2)


def mean_cell(cells):
    """The mean of several accuracy cells, seed by seed (a mean over tasks or directions), and its s.e."""
    k = max(len(c.values) for c in cells)
    per_seed = [stats.mean([c.values[i] if len(c.values) > 1 else c.values[0] for c in cells]) for i in range(k)]
    return Cell(per_seed, stats.se_of_mean([c.se for c in cells]), digits=2)


def zero_shot_cells(seeds, tasks):
    """{task: Cell of the accuracy (%) its paper reports (`main_metric`, else top-1)} and the Cell of their mean."""
    cells = {t: accuracy_cell([r[(t, "zeroshot_classification")][r.get((t, "main_metric"), "acc1")] for r in seeds],
                              seeds[0][(t, "zeroshot_classification")].get("num_images")) for t in tasks}
    return cells, mean_cell(list(cells.values()))


def zero_shot_metric_words(results, tasks):
    """'Zero-shot top-1 (%)', or which tasks report mean-per-class recall instead (ProCLIP, docs/methods.md §2)."""
    per_class = [t for t in tasks if results.get((t, "main_metric"), "acc1") == "mean_per_class_recall"]
    if not per_class:
        return "Zero-shot top-1 (%)"
    return f"Zero-shot accuracy (%): mean-per-class recall for {', '.join(per_class)}, top-1 for the others,"


def retrieval_cells(seeds, dataset):
    """(I→T, T→I) R@1 Cells (%): image queries (n = images), text queries (n = captions)."""
    metrics = [r[(dataset, "zeroshot_retrieval")] for r in seeds]
    i2t = accuracy_cell([m["text_retrieval_recall@1"] for m in metrics], metrics[0].get("num_images"))
    t2i = accuracy_cell([m["image_retrieval_recall@1"] for m in metrics], metrics[0].get("num_texts"))
    return i2t, t2i


def claim(text, better, worse, lower_is_better=False):
    """One claim "better > worse" (Cells) judged by the rule of tools/stats.py, as a sentence."""
    _, judged = stats.verdict(better.values, worse.values, better.se, worse.se, lower_is_better)
    return f"{text} — {judged}"


def markdown_table(columns, rows):
    def cell(v):
        if isinstance(v, Cell):
            return v.markdown()
        if isinstance(v, float):  # percentages with 2 decimals, statistics (|v| < 2) with 3
            return f"{v:.3f}" if abs(v) < 2 else f"{v:.2f}"
        return str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def se_row(columns, rows):
    """The last Markdown row: the largest s.e. of one evaluation (binomial) in each accuracy column."""
    row = ["s.e. of one evaluation (largest in the column)"]
    for j in range(1, len(columns)):
        cells = [r[j] for r in rows if isinstance(r[j], Cell) and r[j].se is not None]
        row.append(f"{max(c.se for c in cells):.{cells[0].digits}f}" if cells else "")
    return row


def long_form(columns, rows):
    """CSV rows: one per (row, column) cell with its mean, sd over seeds, number of seeds, s.e. and the values."""
    out = [["row", "column", "mean", "sd", "seeds", "se", "values"]]
    for row in rows:
        for name, value in zip(columns[1:], row[1:]):
            if value == "":  # a row without this column's set
                continue
            cell = value if isinstance(value, Cell) else Cell([value])
            out.append([row[0], name, round(cell.mean, 6), round(cell.sd, 6), len(cell.values),
                        "" if cell.se is None else round(cell.se, 6), " ".join(f"{v:.6g}" for v in cell.values)])
    return out


def write_table(out_base, title, caption, columns, rows, extra_markdown=""):
    """Write out_base.md (title, caption, table with its s.e. row, extra) and out_base.csv (every cell, long form:
    mean, sd over seeds, s.e., the values); return the Markdown."""
    shown = rows + ([se_row(columns, rows)] if any(isinstance(v, Cell) and v.se for r in rows for v in r) else [])
    text = f"## {title}\n\n{caption}\n\n{markdown_table(columns, shown)}\n"
    if extra_markdown:
        text += "\n" + extra_markdown + "\n"
    atomic_write_text(out_base + ".md", text)
    atomic_write(out_base + ".csv", lambda f: csv.writer(f).writerows(long_form(columns, rows)), text=True)
    return text


# Zero-shot tasks that only the probes table shows (robustness sets beside the in-distribution task they vary)
PROBE_ONLY_TASKS = ["shape_sketch", "imagenet_v2", "imagenet_a", "imagenet_r", "imagenet_sketch"]
# The robustness columns of the probes table, in order, where present: each reference task, then its variants.
ROBUSTNESS_TASKS = ["shape", "shape_shifted", "shape_sketch", "imagenet", *PROBE_ONLY_TASKS[1:]]


def zero_shot_tasks(results):
    """The zero-shot tasks of Tables 1 and 2 (the robustness-only tasks are left to the probes table)."""
    return sorted(d for d, task in results if task == "zeroshot_classification" and d not in PROBE_ONLY_TASKS)


def language_sets(results):
    """Retrieval sets of the language probes: those in another language than English, and every set that shares
    the name stem of one (xm3600_en beside xm3600_fr); Tables 1 and 2 leave them out."""
    sets = [d for d, task in results if task == "zeroshot_retrieval"]
    other = {d.rsplit("_", 1)[0] for d in sets if results.get((d, "language"), "en") != "en"}
    return sorted(d for d in sets if results.get((d, "language"), "en") != "en" or d.rsplit("_", 1)[0] in other)


def seeds_caption(loaded):
    counts = sorted({len(v) for v in loaded.values()} - {1})
    return (f"Each cell: mean ± sd over {counts[0]} seeds of the post-training run (one toy CLIP and one embedding "
            f"cache for all); a row without ± has one model. " if counts else "One seed per row. ")


RULE = ("A claim \"A beats B\" is judged on d̄, the mean over seeds of the paired difference A − B, against "
        "u = sqrt(sd(d)²/k + s.e.(A)² + s.e.(B)²) (seed spread of the mean, plus the s.e. of the two evaluations: "
        "binomial for accuracies, a bootstrap of the pairs for the gap statistics): holds if d̄ > 2u, fails if "
        "d̄ < −2u, within noise otherwise (tools/stats.py).")


# -----------------------------------------------------------------------------
# CLIP-Refine, Table 1
def refine_table(results_dir, retrieval_set="coco_val", seeds=None):
    loaded = {row: load_seeds(results_dir, row, seeds) for row, _ in REFINE_ROWS}
    tasks = zero_shot_tasks(loaded["pretrained"][0])
    columns = ["Method", *tasks, "mean zero-shot", "R@1 T→I", "R@1 I→T", *GAP_STATISTICS]
    if (retrieval_set, "zeroshot_retrieval") not in loaded["pretrained"][0]:
        raise FileNotFoundError(f"{os.path.join(results_dir, 'pretrained')} has no {retrieval_set} retrieval result; "
                                f"the CLIP-Refine table needs a retrieval set named {retrieval_set} in the eval config")
    rows, summary = [], {}
    for row, label in REFINE_ROWS:
        per_task, mean_top1 = zero_shot_cells(loaded[row], tasks)
        i2t, t2i = retrieval_cells(loaded[row], retrieval_set)
        gap = {s: gap_cell(loaded[row], retrieval_set, s) for s in GAP_STATISTICS}
        summary[row] = {"mean": mean_top1, **gap}
        rows.append([label, *per_task.values(), mean_top1, t2i, i2t, *gap.values()])
    caption = (f"{zero_shot_metric_words(loaded['pretrained'][0], tasks)} per task and their mean, retrieval R@1 (%) "
               f"on {retrieval_set}, and the "
               f"modality-gap statistics of docs/methods.md §3 on {retrieval_set}'s matched pairs (lower = smaller gap "
               f"for every statistic). {seeds_caption(loaded)}{RULE} {refine_claims(summary)}")
    paper = (f"The paper's numbers (ViT-B/32 on its real benchmarks, docs/methods.md §1; different datasets, so "
             f"compare the direction of the changes, not the values):\n\n"
             f"{markdown_table(REFINE_PAPER['columns'], REFINE_PAPER['rows'])}")
    return write_table(os.path.join(results_dir, "table1_refine"), "CLIP-Refine, Table 1 (this run)",
                       caption, columns, rows, paper)


def refine_claims(summary):
    """What the numbers say about docs/toyworld.md's CLIP-Refine claims, judged by the rule, never asserted."""
    base, ours, contrastive = summary["pretrained"], summary["clip_refine"], summary["contrastive"]
    gap = [(s, stats.verdict(ours[s].values, base[s].values, ours[s].se, base[s].se, lower_is_better=True)[0])
           for s in GAP_STATISTICS]
    held = [s for s, word in gap if word == "holds"]
    gap_claim = "holds" if len(held) == len(gap) else f"holds for {len(held)} of {len(gap)} statistics"
    details = ", ".join(f"{s} {word}" for s, word in gap)
    return (f"Claims in this run: CLIP-Refine shrinks the gap — {gap_claim} ({details}; centroid distance "
            f"{base['centroid_distance'].mean:.3f} → {ours['centroid_distance'].mean:.3f}); "
            f"{claim('keeps mean zero-shot (within noise = kept at this precision)', ours['mean'], base['mean'])} "
            f"({base['mean'].mean:.2f} → {ours['mean'].mean:.2f}); "
            f"{claim('contrastive fine-tuning does worse than CLIP-Refine', ours['mean'], contrastive['mean'])} "
            f"({contrastive['mean'].mean:.2f} vs {ours['mean'].mean:.2f}).")


# -----------------------------------------------------------------------------
# the picture of the gap: matched image/text features projected to 2-D, one panel per row, on one PCA
def modality_gap_figure(results_dir, rows=GAP_FIGURE_ROWS, retrieval_set="coco_val", name="modality_gap",
                        seeds=None):
    """results_dir/NAME.png and NAME.json: the matched pairs of each row (its first seed), L2-normalised, in ONE
    2-D projection: the top two principal axes of the first row's features (both modalities pooled), fitted once
    by an exact SVD (deterministic). Every panel shares those axes and their limits, so a shrinking gap shows as
    the two clouds moving together. Each panel's title gives the row's centroid distance and relative gap
    (docs/methods.md §3) as the tables' cells give them (mean ± sd over the seeds, from the evaluations' files),
    and a caption reads the figure in one sentence from those numbers. rows: [(row folder, label)]. NAME.json
    holds each panel's title and numbers and the caption. Returns the PNG's path."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    import numpy as np
    import torch
    import torch.nn.functional as F

    pairs, panels = [], []
    for row, label in rows:
        loaded = load_seeds(results_dir, row, seeds)
        if (retrieval_set, "modality_gap") not in loaded[0]:
            raise FileNotFoundError(f"{seed_folders(results_dir, row, seeds)[0]} has no {retrieval_set} gap "
                                    f"statistics; evaluate it with {retrieval_set} among gap_sets")
        cells = {s: gap_cell(loaded, retrieval_set, s) for s in ("centroid_distance", "relative_gap")}
        path = os.path.join(seed_folders(results_dir, row, seeds)[0], f"{retrieval_set}_pair_features.pt")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found; evaluate {row!r} first (make reproduce-table1)")
        features = load_checkpoint_file(path)
        pairs.append((F.normalize(features["image"].double(), dim=-1), F.normalize(features["text"].double(), dim=-1)))
        title = (f"centroid distance {cells['centroid_distance'].markdown()}\n"
                 f"relative gap {cells['relative_gap'].markdown()}")
        panels.append({"row": row, "label": label, "seeds": len(loaded), "title": title,
                       **{s: {"mean": c.mean, "sd": c.sd, "cell": c.markdown()} for s, c in cells.items()}})
    center, axes_2d = principal_axes(torch.cat(pairs[0]))
    projected = [(((x - center) @ axes_2d).numpy(), ((y - center) @ axes_2d).numpy()) for x, y in pairs]
    everything = np.concatenate([p for pair in projected for p in pair])
    low, high = everything.min(0), everything.max(0)
    margin = 0.05 * (high - low)

    columns = min(4, len(rows))
    lines = -(-len(rows) // columns)
    counts = sorted({p["seeds"] for p in panels} - {1})
    numbers = f"mean ± sd over {counts[0]} seeds" if counts else "one model per row"
    dim = pairs[0][0].shape[1]
    width, line_in = 4.6 * columns, 0.17  # inches; one line of the title and caption
    wrap = lambda text: textwrap.fill(text, int(14 * width))
    title = (wrap(f"Matched pairs of {retrieval_set}, L2-normalised, on the top two principal axes of "
                  f"{panels[0]['label']}'s features: 2 of {dim} dimensions, so clouds that overlap here may lie "
                  f"apart in the others.") + "\n" +
             wrap(f"Points: the first seed of each row; ×: each modality's centroid; numbers: in all {dim} "
                  f"dimensions, {numbers}, as in the tables."))
    caption = gap_caption(panels)
    above, below = line_in * (title.count("\n") + 1) + 0.1, line_in * (wrap(caption).count("\n") + 1) + 0.1
    fig, grid = plt.subplots(lines, columns, figsize=(width, 4.4 * lines + above + below), sharex=True,
                             sharey=True, squeeze=False)
    for ax, panel, (px, py) in zip(grid.flat, panels, projected):
        ax.scatter(*px.T, s=4, alpha=0.5, c="tab:blue", label="image")
        ax.scatter(*py.T, s=4, alpha=0.5, c="tab:orange", label="text")
        for points, color in ((px, "navy"), (py, "darkred")):  # each modality's centroid
            ax.scatter(*points.mean(0), s=120, marker="X", c=color, edgecolors="white")
        ax.set_title(textwrap.fill(panel["label"], 40) + "\n" + panel["title"], fontsize=10)
        ax.set_xlim(low[0] - margin[0], high[0] + margin[0])
        ax.set_ylim(low[1] - margin[1], high[1] + margin[1])
        ax.legend(loc="best", markerscale=3, fontsize=8)
    for ax in grid.flat[len(panels):]:
        ax.axis("off")
    for ax in grid[-1]:
        ax.set_xlabel(f"PC 1 (of {panels[0]['label']})")
    for ax in grid[:, 0]:
        ax.set_ylabel(f"PC 2 (of {panels[0]['label']})")
    height = fig.get_figheight()
    fig.suptitle(title, fontsize=10, y=1 - 0.1 / height, va="top")
    fig.text(0.5, 0.1 / height, wrap(caption), ha="center", va="bottom", fontsize=10)
    fig.tight_layout(rect=(0, below / height, 1, 1))  # tight_layout leaves the suptitle its room itself
    out = os.path.join(results_dir, f"{name}.png")
    atomic_write(out, lambda f: fig.savefig(f, dpi=100, format="png", metadata={"Software": None}))
    plt.close(fig)
    record = {"retrieval_set": retrieval_set, "panels": panels, "caption": caption}
    atomic_write_text(os.path.join(results_dir, f"{name}.json"), json.dumps(record, indent=1, ensure_ascii=False)
                      + "\n")
    return out


def principal_axes(reference):
    """(center, axes): the mean of the rows of `reference` and their top two principal axes (D × 2), by an exact
    SVD (deterministic); each axis's sign fixed by the sum of its entries, so the same data gives the same picture.
    A point u is drawn at (u − center) @ axes."""
    import torch

    center = reference.mean(0)
    _, _, vh = torch.linalg.svd(reference - center, full_matrices=False)
    return center, vh[:2].T * torch.sign(vh[:2].sum(dim=1))


def gap_caption(panels):
    """One sentence that reads the gap figure from its numbers (the means over seeds, at the 3 decimals shown): the
    first row against the others' centroid distances, and their relative gaps."""
    first, others = panels[0], panels[1:]
    distance = lambda p: round(p["centroid_distance"]["mean"], 3)
    both = lambda p: f"{distance(p):.3f}, relative gap {p['relative_gap']['mean']:.3f}"
    start = f"{first['label']}: centroid distance {both(first)}"
    if not others:
        return f"{start}."
    if len(others) == 1:
        verb = "closes" if distance(others[0]) < distance(first) else "widens" if distance(others[0]) > \
            distance(first) else "keeps"
        return f"{start}; {others[0]['label']} {verb} the gap ({both(others[0])})."
    closest, farthest = min(others, key=distance), max(others, key=distance)
    count, n = sum(distance(p) < distance(first) for p in others), len(others)
    if count == 0:
        lead = f"none of the {n} other rows brings the two clouds closer"
    elif count == 1:
        lead = f"of the {n} other rows only {closest['label']} brings the two clouds closer ({both(closest)})"
    else:
        lead = (f"{'all' if count == n else count} of the {n} other rows bring the two clouds closer, "
                f"{closest['label']} the most ({both(closest)})")
    end = "pushes them furthest apart" if distance(farthest) > distance(first) else "closes the gap least" if \
        distance(farthest) < distance(first) else "keeps the gap"
    return f"{start}; {lead}, while {farthest['label']} {end} ({both(farthest)})."


# -----------------------------------------------------------------------------
# ProCLIP: the paper's Table 1 (retrieval R@1) and Table 2 (zero-shot top-1), docs/methods.md §2
PROCLIP_ROWS = [("pretrained", "CLIP (pre-trained)"), ("llm2clip", "LLM2CLIP baseline (stage 2 only, λ=0)"),
                ("proclip_stage1", "ProCLIP stage 1 only (CLIP image tower + distilled adapter)"),
                ("proclip", "ProCLIP")]
# docs/methods.md §2 (paper v3): averages over the paper's benchmarks, on 3M/30M recaptioned pairs.
PROCLIP_PAPER_TABLE1 = {
    "columns": ["Backbone", "CLIP I→T", "CLIP T→I", "LLM2CLIP 3M I→T", "LLM2CLIP 3M T→I", "ProCLIP 3M I→T",
                "ProCLIP 3M T→I"],
    "rows": [["ViT-B/32", 61.8, 49.5, 75.0, 71.1, 77.1, 73.8], ["ViT-L/14", 66.9, 55.5, 82.0, 79.1, 83.0, 80.5]],
}
PROCLIP_PAPER_TABLE2 = {
    "columns": ["Backbone", "CLIP", "LLM2CLIP 3M", "ProCLIP 3M", "LLM2CLIP 30M", "ProCLIP 30M"],
    "rows": [["ViT-B/32", 65.2, 46.3, 53.1, 49.0, 59.0], ["ViT-B/16", 68.3, 50.3, 58.2, 53.0, 63.0],
             ["ViT-L/14", 75.7, 54.4, 64.9, 57.5, 71.0]],
}
# The paper's numbers beside the probes table: {set name or its stem: (title, columns, rows)}, shown when a column
# of the results names it; rows [] = the paper gives none (docs/paper_preset.md, "Beyond the two tables"). Read from
# ProCLIP's figures: Figure 4 prints CLIP's 19.3 and each bar's gain on it; Figure 3 is bars without printed
# values, so its per-language numbers are not read off by eye.
PROBES_PAPER = {
    "mmvp_vlm": ("ProCLIP Figure 4: MMVP-VLM average score (%) by the number of training pairs; the backbone is not "
                 "named in the figure; one pair is 0.74 points, the average's s.e. about 4",
                 ["Model", "3M pairs", "15M pairs", "30M pairs"],
                 [["CLIP", 19.3, 19.3, 19.3], ["LLM2CLIP", 22.2, 25.2, 23.7], ["ProCLIP", 25.2, 27.4, 34.1]]),
    "xm3600": ("ProCLIP Figure 3: XM3600 R@1 per language, LLM2CLIP and ProCLIP, image→text and text→image; a bar "
               "chart without printed values, so its cells are left empty here (ProCLIP ahead in most languages by "
               "about 1–5 points)", ["Model", "each language I→T", "each language T→I", "mean"],
               [["LLM2CLIP", "", "", ""], ["ProCLIP", "", "", ""]]),
    "sugarcrepe": ("SugarCrepe (REPLACE / SWAP / ADD): none, beyond ProCLIP's own tables", [], []),
    "imagenet_v2": ("ImageNet-V2, -A, -R, -Sketch: none, beyond ProCLIP's own tables", [], []),
}


def proclip_tables(results_dir, long_set="long_val", paraphrase_set="paraphrase_val", seeds=None,
                   clip_row="pretrained"):
    """table1_proclip (retrieval R@1 per set, both directions, and the mean) and table2_proclip (zero-shot accuracy).
    clip_row: the folder of the CLIP row (the paper preset evaluates CLIP with ProCLIP's suite into `clip`)."""
    loaded = {row: load_seeds(results_dir, clip_row if row == "pretrained" else row, seeds) for row, _ in PROCLIP_ROWS}
    sets = sorted(d for d, task in loaded["pretrained"][0] if task == "zeroshot_retrieval"
                  and d not in language_sets(loaded["pretrained"][0]))
    tasks = zero_shot_tasks(loaded["pretrained"][0])
    rows1, rows2, recall, mean_top1 = [], [], {}, {}
    for row, label in PROCLIP_ROWS:
        directions = {s: retrieval_cells(loaded[row], s) for s in sets}  # (I→T, T→I) per set
        recall[row] = {s: mean_cell(list(pair)) for s, pair in directions.items()}
        recall[row]["mean"] = mean_cell([c for pair in directions.values() for c in pair])
        rows1.append([label, *[c for pair in directions.values() for c in pair],
                      mean_cell([pair[0] for pair in directions.values()]),
                      mean_cell([pair[1] for pair in directions.values()])])
        per_task, mean_top1[row] = zero_shot_cells(loaded[row], tasks)
        rows2.append([label, *per_task.values(), mean_top1[row]])

    def judged(text, better, worse, of):
        sentence = claim(text, of[better], of[worse])
        near_chance = "; every row is below 1%: within a few hits of chance" if max(
            c.mean for c in of.values()) < 1 else ""
        return f"{sentence} ({of[better].mean:.2f} vs {of[worse].mean:.2f}{near_chance})"
    claims1 = [judged("ProCLIP beats LLM2CLIP on retrieval (mean R@1 of both directions over all sets)", "proclip",
                      "llm2clip", {r: v["mean"] for r, v in recall.items()})]
    for s in (long_set, paraphrase_set):
        if s in sets:
            for row in ("proclip", "llm2clip"):
                claims1.append(judged(f"{row} beats CLIP on {s} (mean R@1 of both directions)", row, "pretrained",
                                      {r: v[s] for r, v in recall.items()}))
    paper = "The paper's numbers ({}; different datasets and models, so compare the direction of the changes):\n\n{}"
    columns1 = ["Model", *[f"{s} {d}" for s in sets for d in ("I→T", "T→I")], "mean I→T", "mean T→I"]
    text = write_table(
        os.path.join(results_dir, "table1_proclip"), "ProCLIP, Table 1: retrieval (this run)",
        f"Retrieval R@1 (%), image→text (I→T) and text→image (T→I), per set and their mean. {seeds_caption(loaded)}"
        f"{RULE} Claims in this run: {'; '.join(claims1)}.", columns1, rows1,
        paper.format("mean R@1 over Flickr30k, COCO, ShareGPT4V-1k, Urban-1k, DOCCI, DCI, paper Table 1",
                     markdown_table(PROCLIP_PAPER_TABLE1["columns"], PROCLIP_PAPER_TABLE1["rows"])))
    text += "\n" + write_table(
        os.path.join(results_dir, "table2_proclip"), "ProCLIP, Table 2: zero-shot classification (this run)",
        f"{zero_shot_metric_words(loaded['pretrained'][0], tasks)} per task and their mean (prompts encoded by the "
        f"embedder + adapter for the ProCLIP rows). {seeds_caption(loaded)}{RULE} Claims in this run: "
        f"{judged('ProCLIP beats LLM2CLIP on mean zero-shot', 'proclip', 'llm2clip', mean_top1)}.",
        ["Model", *tasks, "mean"], rows2,
        paper.format("mean zero-shot accuracy over 11 datasets, paper Table 2",
                     markdown_table(PROCLIP_PAPER_TABLE2["columns"], PROCLIP_PAPER_TABLE2["rows"])))
    return text


# -----------------------------------------------------------------------------
# the modality-gap investigation (docs/results.md): one row per run, mean ± sd over its seeds, with the quantities each
# hypothesis names
def gap_investigation_table(results_dir, retrieval_set="coco_val", seeds=None):
    columns = ["run", "mean zero-shot", "R@1 T→I", "R@1 I→T", "centroid_distance", "relative_gap", "uniformity",
               "image ‖z‖", "text ‖z‖", "image cone ‖mean x‖", "text cone ‖mean y‖"]
    rows = []
    for row in sorted(os.listdir(results_dir)):
        if not os.path.isdir(os.path.join(results_dir, row)):
            continue
        folders = seed_folders(results_dir, row, None if row == "pretrained" else seeds)
        pair_files = [os.path.join(f, f"{retrieval_set}_pair_features.pt") for f in folders]
        if not all(os.path.exists(p) for p in pair_files):
            continue
        results = [load_results(f) for f in folders]
        _, mean_top1 = zero_shot_cells(results, zero_shot_tasks(results[0]))
        i2t, t2i = retrieval_cells(results, retrieval_set)
        gap = [gap_cell(results, retrieval_set, s) for s in columns[4:7]]
        per_seed = []  # norms of the raw features and of each modality's mean direction, per seed
        for path in pair_files:
            features = load_checkpoint_file(path)
            z_image, z_text = features["image"], features["text"]
            cone = [(z / z.norm(dim=-1, keepdim=True)).mean(0).norm().item() for z in (z_image, z_text)]
            per_seed.append([z_image.norm(dim=-1).mean().item(), z_text.norm(dim=-1).mean().item(), *cone])
        rows.append([row, mean_top1, t2i, i2t, *gap, *[Cell(values) for values in zip(*per_seed)]])
    if not rows:
        raise FileNotFoundError(f"no evaluated runs in {results_dir}; run `make investigate-gap`")
    loaded = {row[0]: row[1].values for row in rows}
    caption = (f"Each row: one refine.py run (overrides in configs/toy/gap_investigation.txt), evaluated like "
               f"Table 1. {seeds_caption(loaded)}‖z‖: mean norm of the raw (unnormalised) features on {retrieval_set}; "
               f"cone: norm of the mean of the L2-normalised features of one modality (1 = all features identical).")
    return write_table(os.path.join(results_dir, "gap_investigation"), "Modality-gap investigation (toy)",
                       caption, columns, rows)


# -----------------------------------------------------------------------------
# the probes beyond the two tables (docs/methods.md §5): pairs, compositional, languages, robustness
LEAK_CHECK_LANGUAGE = "cipher"    # invented words: every model must stay at chance on it
SECOND_LANGUAGES = ("fr", "de")   # the toy's second language: the claims read the mean R@1 over these
COMPOSITION_GROUPS = ("replace", "swap", "add")  # SugarCrepe's averages, by the word in each subset's name
LANGUAGE_CEILING = "language_ceiling.json"  # in the results folder: the frozen embedder's text->text R@1


CLIP_LABEL = dict(PROCLIP_ROWS)["pretrained"]


def probe_rows(results_dir, seeds=None, clip_row="pretrained"):
    """[(label, [results per seed])]: every row of both papers' tables that has results; the pre-trained CLIP once
    (twice in the paper preset, which evaluates it with each paper's suite)."""
    rows = [(row, CLIP_LABEL if row == "pretrained" else label) for row, label in REFINE_ROWS]
    if clip_row != "pretrained":
        rows.append((clip_row, f"{CLIP_LABEL}, ProCLIP's suite"))
    rows += [row for row in PROCLIP_ROWS if row[0] != "pretrained"]
    loaded = [(label, load_seeds(results_dir, row, seeds)) for row, label in rows
              if os.path.isdir(os.path.join(results_dir, row))]
    if not loaded:
        raise FileNotFoundError(f"no evaluated rows in {results_dir}; run `make reproduce-table1` first")
    return loaded


def _metric_cell(seeds, key, pick, n=None, se=None):
    """An accuracy-like cell (percent) of `pick(metrics)` over seeds; "" when the row lacks the set."""
    if any(key not in r for r in seeds):
        return ""
    values = [pick(r[key]) for r in seeds]
    if se is not None:
        return Cell(values, stats.mean([se(r[key]) for r in seeds]), digits=2)
    return accuracy_cell([v / 100 for v in values], n(seeds[0][key]) if n else None)


def _mean_or_blank(cells):
    cells = [c for c in cells if c != ""]
    return mean_cell(cells) if cells else ""


def probes_table(results_dir, seeds=None, clip_row="pretrained", claims=True):
    rows_in = probe_rows(results_dir, seeds, clip_row)
    present = {}
    for _, per_seed in rows_in:
        for r in per_seed:
            present.update(r)
    pair_sets = sorted(d for d, t in present if t == "pair_selection")
    compose_sets = sorted(d for d, t in present if t == "hard_negatives")
    languages = language_sets(present)
    robustness = [t for t in ROBUSTNESS_TASKS if (t, "zeroshot_classification") in present]
    patterns = {d: list(next(r[(d, "pair_selection")]["per_pattern"] for _, s in rows_in for r in s
                             if (d, "pair_selection") in r)) for d in pair_sets}
    groups = {g: [d for d in compose_sets if g in d.split("_")] for g in COMPOSITION_GROUPS}
    groups = {g: sets for g, sets in groups.items() if sets}
    real = [d for d in languages if present[(d, "language")] != LEAK_CHECK_LANGUAGE]

    columns = ["Model"]
    for d in pair_sets:
        columns += [f"{d} score", *(f"{d} {p}" for p in patterns[d])]
    columns += [*compose_sets, *(f"{g.upper()} mean" for g in groups if len(compose_sets) > len(groups)),
                *(["compositional mean"] if compose_sets else [])]
    columns += [f"{d} {direction}" for d in languages for direction in ("I→T", "T→I")]
    columns += ["languages mean R@1"] if real else []
    columns += [f"{t} (zero-shot)" for t in robustness]
    rows, summary = [], {}
    for label, seeds_of_row in rows_in:
        row = [label]
        cells = {}
        for d in pair_sets:
            key = (d, "pair_selection")
            cells[d] = _metric_cell(seeds_of_row, key, lambda m: m["score"], se=lambda m: m["score_se"])
            row.append(cells[d])
            row += [_metric_cell(seeds_of_row, key, lambda m, p=p: m["per_pattern"][p],
                                 n=lambda m, p=p: m["per_pattern_n"][p]) for p in patterns[d]]
        compose = {d: _metric_cell(seeds_of_row, (d, "hard_negatives"), lambda m: 100 * m["accuracy"],
                                   n=lambda m: m["num_items"]) for d in compose_sets}
        row += list(compose.values())
        if len(compose_sets) > len(groups):
            row += [_mean_or_blank([compose[d] for d in sets]) for sets in groups.values()]
        if compose_sets:
            row.append(_mean_or_blank(list(compose.values())))
        for d in languages:
            if (d, "zeroshot_retrieval") in seeds_of_row[0]:
                i2t, t2i = retrieval_cells(seeds_of_row, d)
            else:
                i2t = t2i = ""
            cells[d] = _mean_or_blank([i2t, t2i])
            row += [i2t, t2i]
        if real:
            row.append(_mean_or_blank([cells[d] for d in real]))
        second = [cells[d] for d in languages if present[(d, "language")] in SECOND_LANGUAGES and cells[d] != ""]
        cells["second language"] = mean_cell(second) if second else ""
        row += [_metric_cell(seeds_of_row, (t, "zeroshot_classification"),
                             lambda m, t=t: 100 * m[seeds_of_row[0].get((t, "main_metric"), "acc1")],
                             n=lambda m: m.get("num_images")) for t in robustness]
        rows.append(row)
        summary[label] = cells
    caption = (f"Beyond the papers' two tables (docs/methods.md §5). Pairs: both-correct score (%) per pattern and "
               f"its mean over patterns; compositional: accuracy (%) of image→positive over image→negative per "
               f"subset" + (f", the {'/'.join(g.upper() for g in groups)} averages" if len(compose_sets) > len(groups)
                            else "") + " and their mean; languages: retrieval R@1 (%) both ways per language; "
               f"robustness: zero-shot accuracy (%) per set, each reference task first. {seeds_caption(dict(rows_in))}")
    if claims:
        judged = probe_claims(summary, pair_sets, languages, present)
        caption += f"{RULE} Claims in this run: {judged}"
        atomic_write_text(os.path.join(results_dir, "probe_claims.md"),  # the README's block of verdicts
                          f"Probe claims in this run (the rule above; table and details in docs/results.md): "
                          f"{judged}\n")
    caption += " Compositional and robustness columns are reported without a claim."
    extra = [_ceiling_text(results_dir), _blind_text(rows_in, compose_sets)]
    extra += [f"The paper's numbers ({title}):\n\n{markdown_table(cols, vals)}" if vals else
              f"The paper's numbers: {title}."
              for d, (title, cols, vals) in PROBES_PAPER.items() if any(d in name for name in columns)]
    return write_table(os.path.join(results_dir, "table_probes"), "Probes: fine-grained pairs, compositional hard "
                       "negatives, languages, robustness (this run)", caption, columns, rows,
                       "\n\n".join(e for e in extra if e))


def probe_claims(summary, pair_sets, languages, present):
    """The toy's probe claims (docs/toyworld.md), judged by the rule of tools/stats.py."""
    by_label = dict(PROCLIP_ROWS)
    proclip, llm2clip = summary.get(by_label["proclip"]), summary.get(by_label["llm2clip"])
    clip = summary.get(CLIP_LABEL)
    said = []

    def judge(text, better, worse, key):
        if better and worse and better.get(key, "") != "" and worse.get(key, "") != "":
            said.append(f"{claim(text, better[key], worse[key])} ({better[key].mean:.2f} vs {worse[key].mean:.2f})")
    for d in pair_sets:
        judge(f"ProCLIP ≥ LLM2CLIP on the {d} score (within noise = ≥ at this precision)", proclip, llm2clip, d)
    judge("ProCLIP ≥ LLM2CLIP on the second language (mean R@1 over fr, de; within noise = ≥ at this precision)",
          proclip, llm2clip, "second language")
    judge("ProCLIP beats CLIP on the second language", proclip, clip, "second language")
    judge("LLM2CLIP beats CLIP on the second language", llm2clip, clip, "second language")
    for d in languages:
        if present[(d, "language")] != LEAK_CHECK_LANGUAGE:
            continue
        chance = 100 / present[(d, "zeroshot_retrieval")]["num_images"]
        above = [label for label, cells in summary.items() if cells.get(d, "") != "" and stats.verdict(
            cells[d].values, [chance], cells[d].se, 0.0)[0] == "holds"]
        highest = max(cells[d].mean for cells in summary.values() if cells.get(d, "") != "")
        said.append(f"{d} (invented words) at chance for every model — " +
                    ("holds" if not above else f"fails: above chance for {', '.join(above)}") +
                    f" (highest mean R@1 {highest:.2f}, chance {chance:.2f})")
    return "; ".join(said) + "." if said else "none (the sets they need are not in these results)."


def _ceiling_text(results_dir):
    path = os.path.join(results_dir, LANGUAGE_CEILING)
    if not os.path.isfile(path):
        return ""
    with open(path) as f:
        ceiling = json.load(f)
    parts = ", ".join(f"{language} {100 * r:.2f}" for language, r in ceiling["recall@1"].items())
    return (f"Ceiling: the frozen embedder's own text→text R@1 (%), each English caption against the "
            f"{ceiling['num_texts']} captions of one language ({ceiling['embedder']}): {parts}; chance "
            f"{100 / ceiling['num_texts']:.2f}.")


def _blind_text(rows_in, compose_sets):
    """The image-blind accuracy (%) of each compositional subset, per row (mean over seeds): near 50 when no
    caption-plausibility shortcut is open."""
    if not compose_sets:
        return ""
    rows = [[label, *(Cell([100 * r[(d, "hard_negatives")]["blind_accuracy"] for r in per_seed]) if
                      (d, "hard_negatives") in per_seed[0] else "" for d in compose_sets)] for label, per_seed in rows_in]
    return ("Image-blind accuracy (%) of each compositional subset: each caption against the mean image feature "
            "(docs/methods.md §5); about 50 when caption plausibility alone cannot pick the positive.\n\n"
            + markdown_table(["Model", *compose_sets], rows))


# -----------------------------------------------------------------------------
# the results blocks of the docs: every block between `<!-- begin FILE -->` and `<!-- end FILE -->` is FILE's
# content (a table's Markdown less its title line), so the docs show the numbers of the run on disk, and nothing else
def fill_results(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    pattern = re.compile(r"(<!-- begin (\S+) -->\n)(.*?)(<!-- end \2 -->)", re.S)
    missing = [m.group(2) for m in pattern.finditer(text) if not os.path.isfile(m.group(2))]

    def body(match):
        if match.group(2) in missing:  # left as it is (pending), and said below
            return match.group(0)
        with open(match.group(2), encoding="utf-8") as f:
            content = f.read()
        if content.startswith("## "):  # the table's own title: the document has its own heading
            content = content.split("\n", 1)[1].lstrip("\n")
        return match.group(1) + content.rstrip("\n") + "\n" + match.group(4)

    filled, count = pattern.subn(body, text)
    atomic_write_text(path, filled)
    left = f"; left {len(missing)} as they were, their files are missing: {', '.join(missing)} (make " \
           f"reproduce-table1, make investigate-gap, make bench-reproduce write them)" if missing else ""
    return f"filled {count - len(missing)} block(s) of {path}{left}"


TABLES = {"refine": refine_table, "proclip": proclip_tables, "gap_investigation": gap_investigation_table,
          "probes": probes_table}


def seed_list(text):
    """--seeds 0,1,2 (or "0 1 2") -> [0, 1, 2]."""
    try:
        return [int(s) for s in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of seeds, e.g. 0,1,2") from None


def row_list(text):
    """--rows pretrained,clip_refine -> [(row, its label in the tables)]; a folder of no table keeps its name."""
    labels = {**dict(PROCLIP_ROWS), **dict(REFINE_ROWS)}
    return [(row, labels.get(row, row)) for row in text.replace(",", " ").split()]


def get_args_parser():
    parser = argparse.ArgumentParser("python -m tools.tables", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True, metavar="{table,figure,fill-results}")
    table = actions.add_parser("table", help="write and print a table: results_dir/NAME.{md,csv}")
    table.add_argument("name", choices=list(TABLES), help="which table")
    table.add_argument("results_dir", help="the evaluations' folder, e.g. results/toy")
    table.add_argument("--seeds", type=seed_list, default=None, metavar="0,1,2",
                       help="the seed folders to read, e.g. 0,1,2 (default: every seed on disk)")
    table.add_argument("--clip-row", default=None, metavar="ROW",
                       help="proclip, probes: the folder of the CLIP row (default pretrained; the paper preset: clip)")
    table.add_argument("--no-claims", action="store_true", help="probes: report the columns without judging claims")
    figure = actions.add_parser("figure", help="results_dir/NAME.png and NAME.json: the gap of each row on one PCA")
    figure.add_argument("results_dir", help="the evaluations' folder, e.g. results/toy")
    figure.add_argument("--rows", type=row_list, default=GAP_FIGURE_ROWS, metavar="ROW,ROW",
                        help="the rows (result folders) to draw, one panel each, the first one's PCA for all "
                             "(default: pretrained,clip_refine)")
    figure.add_argument("--name", default="modality_gap", help="the figure's file name, without .png")
    figure.add_argument("--set", default="coco_val", dest="retrieval_set",
                        help="the retrieval set whose matched pairs are drawn (one of the eval config's gap_sets)")
    figure.add_argument("--seeds", type=seed_list, default=None, metavar="0,1,2",
                        help="the seed folders to read (default: every seed on disk)")
    fill = actions.add_parser("fill-results", help="fill every <!-- begin PATH --> ... <!-- end PATH --> block of "
                                                   "these files with PATH's content (blocks whose PATH is missing are "
                                                   "left as they are)")
    fill.add_argument("files", nargs="+", help="e.g. README.md docs/results.md")
    return parser


def main(argv=None):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.action == "figure":
        out = modality_gap_figure(args.results_dir, args.rows, args.retrieval_set, args.name, args.seeds)
        return print(f"wrote {out} and its numbers, {out[:-len('.png')]}.json")
    if args.action == "fill-results":
        for path in args.files:
            print(fill_results(path))
        return None
    options = {"seeds": args.seeds} if args.seeds is not None else {}
    if args.clip_row is not None:
        if args.name not in ("proclip", "probes"):
            parser.error("--clip-row is an option of the proclip and probes tables only")
        options["clip_row"] = args.clip_row
    if args.no_claims:
        if args.name != "probes":
            parser.error("--no-claims is an option of the probes table only")
        options["claims"] = False
    print(TABLES[args.name](args.results_dir, **options))
    return None


if __name__ == "__main__":
    run_cli(main, "python -m tools.tables")

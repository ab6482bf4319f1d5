"""Tables and the gap figure from finished evaluations (the files evaluate.py writes), papers' numbers beside.

    python -m tools.tables table refine results/toy      -> results/toy/table1_refine.{md,csv}
    python -m tools.tables table proclip results/toy     -> results/toy/table1_proclip.{md,csv}, table2_proclip.{md,csv}
    python -m tools.tables figure results/toy            -> results/toy/modality_gap.png
    python -m tools.tables fill-results README.md docs/results.md   -> their result blocks, from the files they name
Each row is read from results/toy/ROW/seedS/ (one folder per seed; `--seeds 0,1,2` picks them), or from
results/toy/ROW/ for a model without a seed (the pre-trained CLIP). Cells are mean ± sd over seeds, with the
binomial s.e. of each accuracy; the claims are judged by the rule of tools/stats.py.

A table is only ever built from result files on disk: a missing row is an error naming the Make target to run.
"""
import argparse
import csv
import glob
import json
import os
import re

import refine
from common.checkpoints import atomic_write, atomic_write_text, load_checkpoint_file
from common.config import run_cli
from tools import stats

GAP_STATISTICS = ["centroid_distance", "centroid_sqdist_per_dim", "pair_distance", "relative_gap", "alignment",
                  "uniformity", "separability"]

# The rows of the CLIP-Refine table: the pre-trained CLIP, then every objective of refine.py in its order.
REFINE_ROWS = [("pretrained", "Pre-trained"), *((name, label) for name, (_, label) in refine.OBJECTIVES.items())]
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


def zero_shot_tasks(results):
    return sorted(d for d, task in results if task == "zeroshot_classification")


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
# the picture of the gap: matched image/text features projected to 2-D, before and after CLIP-Refine
def modality_gap_figure(results_dir, rows=GAP_FIGURE_ROWS, retrieval_set="coco_val"):
    """The matched pairs of each row (its first seed), L2-normalised, in ONE 2-D projection: the top two principal axes of the first
    row's features (both modalities pooled), fitted once by an exact SVD (deterministic). Every panel shares those
    axes and their limits, so a shrinking gap shows as the two clouds moving together. Each panel names its
    statistics (docs/methods.md §3)."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    import torch
    import torch.nn.functional as F

    from common.metrics import centroid_distance, relative_gap

    pairs = []
    for row, label in rows:
        path = os.path.join(seed_folders(results_dir, row)[0], f"{retrieval_set}_pair_features.pt")  # first seed
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found; evaluate {row!r} first (make reproduce-table1)")
        features = load_checkpoint_file(path)
        pairs.append((F.normalize(features["image"].double(), dim=-1), F.normalize(features["text"].double(), dim=-1)))
    reference = torch.cat(pairs[0])
    center = reference.mean(0)
    _, _, vh = torch.linalg.svd(reference - center, full_matrices=False)
    axes_2d = vh[:2].T * torch.sign(vh[:2].sum(dim=1))  # fix each axis's sign: the same picture on every run
    projected = [((x - center) @ axes_2d, (y - center) @ axes_2d) for x, y in pairs]
    everything = torch.cat([p for pair in projected for p in pair])
    low, high = everything.min(0).values, everything.max(0).values
    margin = 0.05 * (high - low)

    fig, panels = plt.subplots(1, len(rows), figsize=(5 * len(rows), 4.8), sharex=True, sharey=True)
    for ax, (row, label), (x, y), (px, py) in zip(panels, rows, pairs, projected):
        ax.scatter(*px.T, s=4, alpha=0.5, c="tab:blue", label="image")
        ax.scatter(*py.T, s=4, alpha=0.5, c="tab:orange", label="text")
        for points, color in ((px, "navy"), (py, "darkred")):  # each modality's centroid
            ax.scatter(*points.mean(0), s=120, marker="X", c=color, edgecolors="white")
        ax.set_title(f"{label}\ncentroid distance {centroid_distance(x, y):.3f}, relative gap {relative_gap(x, y):.3f}")
        ax.set_xlim(low[0] - margin[0], high[0] + margin[0])
        ax.set_ylim(low[1] - margin[1], high[1] + margin[1])
        ax.set_xlabel("PC 1 (of the first panel)")
        ax.legend(loc="best", markerscale=3)
    panels[0].set_ylabel("PC 2 (of the first panel)")
    fig.suptitle(f"Matched pairs of {retrieval_set}, L2-normalised features, one PCA for every panel")
    fig.tight_layout()
    out = os.path.join(results_dir, "modality_gap.png")
    atomic_write(out, lambda f: fig.savefig(f, dpi=120, format="png", metadata={"Software": None}))
    plt.close(fig)
    return out


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


def proclip_tables(results_dir, long_set="long_val", paraphrase_set="paraphrase_val", seeds=None,
                   clip_row="pretrained"):
    """table1_proclip (retrieval R@1 per set, both directions, and the mean) and table2_proclip (zero-shot accuracy).
    clip_row: the folder of the CLIP row (the paper preset evaluates CLIP with ProCLIP's suite into `clip`)."""
    loaded = {row: load_seeds(results_dir, clip_row if row == "pretrained" else row, seeds) for row, _ in PROCLIP_ROWS}
    sets = sorted(d for d, task in loaded["pretrained"][0] if task == "zeroshot_retrieval")
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


TABLES = {"refine": refine_table, "proclip": proclip_tables, "gap_investigation": gap_investigation_table}


def seed_list(text):
    """--seeds 0,1,2 (or "0 1 2") -> [0, 1, 2]."""
    try:
        return [int(s) for s in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of seeds, e.g. 0,1,2") from None


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
                       help="proclip: the folder of the CLIP row (default pretrained; the paper preset: clip)")
    figure = actions.add_parser("figure", help="results_dir/modality_gap.png: pre-trained vs CLIP-Refine")
    figure.add_argument("results_dir", help="the evaluations' folder, e.g. results/toy")
    fill = actions.add_parser("fill-results", help="fill every <!-- begin PATH --> ... <!-- end PATH --> block of "
                                                   "these files with PATH's content (blocks whose PATH is missing are "
                                                   "left as they are)")
    fill.add_argument("files", nargs="+", help="e.g. README.md docs/results.md")
    return parser


def main(argv=None):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.action == "figure":
        return print(f"wrote {modality_gap_figure(args.results_dir)}")
    if args.action == "fill-results":
        for path in args.files:
            print(fill_results(path))
        return None
    options = {"seeds": args.seeds} if args.seeds is not None else {}
    if args.clip_row is not None:
        if args.name != "proclip":
            parser.error("--clip-row is an option of the proclip table only")
        options["clip_row"] = args.clip_row
    print(TABLES[args.name](args.results_dir, **options))
    return None


if __name__ == "__main__":
    run_cli(main, "python -m tools.tables")

"""Tables and the gap figure from finished evaluations (the files evaluate.py writes), papers' numbers beside.

    python evaluate.py table refine results/toy      -> results/toy/table1_refine.{md,csv}
    python evaluate.py table proclip results/toy     -> results/toy/table1_proclip.{md,csv}, table2_proclip.{md,csv}
    python evaluate.py figure results/toy            -> results/toy/modality_gap.png

A table is only ever built from result files on disk: a missing row is an error naming the Make target to run.
"""
import csv
import glob
import json
import os

from common.checkpoints import atomic_write, atomic_write_text, load_checkpoint_file

GAP_STATISTICS = ["centroid_distance", "centroid_sqdist_per_dim", "pair_distance", "relative_gap", "alignment",
                  "uniformity", "separability"]

REFINE_ROWS = [("pretrained", "Pre-trained"), ("contrastive", "Contrastive"), ("self_kd", "Self-KD"),
               ("m2mix", "m²-mix"), ("rafa", "RaFA only"), ("hycd", "HyCD only"), ("clip_refine", "CLIP-Refine")]
# docs/methods.md §1: ViT-B/32, from secondary summaries (not checked against the paper's own table); "" = not given.
REFINE_PAPER = {
    "columns": ["Method", "mean zero-shot (12 sets)", "ImageNet", "COCO R@1 T→I", "COCO R@1 I→T"],
    "rows": [["Pre-trained", 52.74, 59.04, 30.56, 33.26], ["Contrastive", 45.75, 52.96, 34.88, 31.86],
             ["Self-KD", 52.94, 59.06, "", ""], ["m²-mix", 46.48, 53.58, "", ""],
             ["CLIP-Refine", 54.69, 60.93, 37.64, 38.78]],
}


def load_results(results_dir, row):
    """{(dataset, task): metrics} for one row (one model) of a table."""
    files = glob.glob(os.path.join(results_dir, row, "*.json"))
    if not files:
        raise FileNotFoundError(f"no results in {os.path.join(results_dir, row)}; run `make reproduce-table1` "
                                f"(or the evaluate target for {row!r}) first")
    results = {}
    for path in files:
        with open(path) as f:
            record = json.load(f)
        results[(record["dataset"], record["task"])] = record["metrics"]
        if "main_metric" in record:  # the metric the paper reports for this task (evaluate.py zeroshot_metric)
            results[(record["dataset"], "main_metric")] = record["main_metric"]
    return results


def markdown_table(columns, rows):
    def cell(v):
        if isinstance(v, float):  # percentages with 2 decimals, statistics (|v| < 2) with 3
            return f"{v:.3f}" if abs(v) < 2 else f"{v:.2f}"
        return str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_table(out_base, title, caption, columns, rows, extra_markdown=""):
    """Write out_base.md (title, caption, table, extra) and out_base.csv (the table); return the Markdown."""
    text = f"## {title}\n\n{caption}\n\n{markdown_table(columns, rows)}\n"
    if extra_markdown:
        text += "\n" + extra_markdown + "\n"
    atomic_write_text(out_base + ".md", text)
    atomic_write(out_base + ".csv", lambda f: csv.writer(f).writerows([columns, *rows]), text=True)
    return text


def zero_shot_tasks(results):
    return sorted(d for d, task in results if task == "zeroshot_classification")


def zero_shot_scores(results, tasks):
    """The accuracy (%) each zero-shot task's paper reports (its `main_metric`, else top-1), in the order of `tasks`."""
    return [100 * results[(t, "zeroshot_classification")][results.get((t, "main_metric"), "acc1")] for t in tasks]


def zero_shot_metric_words(results, tasks):
    """'Zero-shot top-1 (%)', or which tasks report mean-per-class recall instead (ProCLIP, docs/methods.md §2)."""
    per_class = [t for t in tasks if results.get((t, "main_metric"), "acc1") == "mean_per_class_recall"]
    if not per_class:
        return "Zero-shot top-1 (%)"
    return f"Zero-shot accuracy (%): mean-per-class recall for {', '.join(per_class)}, top-1 for the others,"


# -----------------------------------------------------------------------------
# CLIP-Refine, Table 1
def refine_table(results_dir, retrieval_set="coco_val"):
    loaded = {row: load_results(results_dir, row) for row, _ in REFINE_ROWS}
    tasks = zero_shot_tasks(loaded["pretrained"])
    columns = ["Method", *tasks, "mean zero-shot", "R@1 T→I", "R@1 I→T", *GAP_STATISTICS]
    if (retrieval_set, "zeroshot_retrieval") not in loaded["pretrained"]:
        raise FileNotFoundError(f"{os.path.join(results_dir, 'pretrained')} has no {retrieval_set} retrieval result; "
                                f"the CLIP-Refine table needs a retrieval set named {retrieval_set} in the eval config")
    rows, summary = [], {}
    for row, label in REFINE_ROWS:
        res = loaded[row]
        top1 = zero_shot_scores(res, tasks)
        retrieval = res[(retrieval_set, "zeroshot_retrieval")]
        gap = res[(retrieval_set, "modality_gap")]
        summary[row] = {"mean": sum(top1) / len(top1), **gap}
        rows.append([label, *top1, sum(top1) / len(top1), 100 * retrieval["image_retrieval_recall@1"],
                     100 * retrieval["text_retrieval_recall@1"], *[round(gap[s], 4) for s in GAP_STATISTICS]])
    caption = (f"{zero_shot_metric_words(loaded['pretrained'], tasks)} per task and their mean, retrieval R@1 (%) "
               f"on {retrieval_set}, and the "
               f"modality-gap statistics of docs/methods.md §3 on {retrieval_set}'s matched pairs (lower = smaller gap "
               f"for every statistic). {refine_claims(summary)}")
    paper = (f"The paper's numbers (ViT-B/32 on its real benchmarks, docs/methods.md §1; different datasets, so "
             f"compare the direction of the changes, not the values):\n\n"
             f"{markdown_table(REFINE_PAPER['columns'], REFINE_PAPER['rows'])}")
    return write_table(os.path.join(results_dir, "table1_refine"), "CLIP-Refine, Table 1 (this run)",
                       caption, columns, rows, paper)


def refine_claims(summary):
    """What the numbers say about docs/toyworld.md's CLIP-Refine claims, computed, never asserted."""
    base, ours, contrastive = summary["pretrained"], summary["clip_refine"], summary["contrastive"]
    shrunk = [s for s in GAP_STATISTICS if ours[s] < base[s]]
    gap_claim = ("holds" if len(shrunk) == len(GAP_STATISTICS) else
                 f"holds for {len(shrunk)} of {len(GAP_STATISTICS)} statistics ({', '.join(shrunk) or 'none'})")
    return (f"Claims in this run: CLIP-Refine shrinks the gap — {gap_claim} (centroid distance "
            f"{base['centroid_distance']:.3f} → {ours['centroid_distance']:.3f}); keeps mean zero-shot — "
            f"{'holds' if ours['mean'] >= base['mean'] else 'does not hold'} ({base['mean']:.2f} → "
            f"{ours['mean']:.2f}); contrastive fine-tuning does worse than CLIP-Refine — "
            f"{'holds' if contrastive['mean'] < ours['mean'] else 'does not hold'} ({contrastive['mean']:.2f} vs "
            f"{ours['mean']:.2f}).")


# -----------------------------------------------------------------------------
# the picture of the gap: matched image/text features projected to 2-D, before and after CLIP-Refine
def modality_gap_figure(results_dir, rows=(("pretrained", "Pre-trained"), ("clip_refine", "CLIP-Refine")),
                        retrieval_set="coco_val"):
    """The matched pairs of each row, L2-normalised, in ONE 2-D projection: the top two principal axes of the first
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
        path = os.path.join(results_dir, row, f"{retrieval_set}_pair_features.pt")
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


def proclip_tables(results_dir, long_set="long_val", paraphrase_set="paraphrase_val", clip_row="pretrained"):
    """table1_proclip (retrieval R@1 per set, both directions, and the mean) and table2_proclip (zero-shot accuracy).
    clip_row: the folder of the CLIP row (the paper preset evaluates CLIP with ProCLIP's suite into `clip`)."""
    loaded = {row: load_results(results_dir, clip_row if row == "pretrained" else row) for row, _ in PROCLIP_ROWS}
    sets = sorted(d for d, task in loaded["pretrained"] if task == "zeroshot_retrieval")
    tasks = zero_shot_tasks(loaded["pretrained"])
    rows1, rows2, recall, mean_top1 = [], [], {}, {}
    for row, label in PROCLIP_ROWS:
        res = loaded[row]
        i2t = [100 * res[(s, "zeroshot_retrieval")]["text_retrieval_recall@1"] for s in sets]   # image query
        t2i = [100 * res[(s, "zeroshot_retrieval")]["image_retrieval_recall@1"] for s in sets]  # text query
        recall[row] = {s: (a + b) / 2 for s, a, b in zip(sets, i2t, t2i)}
        recall[row]["mean"] = (sum(i2t) + sum(t2i)) / (2 * len(sets))
        rows1.append([label, *[round(v, 2) for v in [*[v for pair in zip(i2t, t2i) for v in pair],
                                                     sum(i2t) / len(sets), sum(t2i) / len(sets)]]])
        top1 = zero_shot_scores(res, tasks)
        mean_top1[row] = sum(top1) / len(top1)
        rows2.append([label, *[round(v, 2) for v in [*top1, mean_top1[row]]]])

    def verdict(better, worse, key_of):
        near_chance = "; every row is below 1%: within a few hits of chance" if max(key_of.values()) < 1 else ""
        return f"{'holds' if key_of[better] > key_of[worse] else 'does not hold'} ({key_of[better]:.2f} vs " \
               f"{key_of[worse]:.2f}{near_chance})"
    claims1 = [f"ProCLIP beats LLM2CLIP on retrieval (mean R@1 of both directions over all sets) — "
               f"{verdict('proclip', 'llm2clip', {r: v['mean'] for r, v in recall.items()})}"]
    for s in (long_set, paraphrase_set):
        if s in sets:
            for row in ("proclip", "llm2clip"):
                claims1.append(f"{row} beats CLIP on {s} (mean R@1 of both directions) — "
                               f"{verdict(row, 'pretrained', {r: v[s] for r, v in recall.items()})}")
    paper = "The paper's numbers ({}; different datasets and models, so compare the direction of the changes):\n\n{}"
    columns1 = ["Model", *[f"{s} {d}" for s in sets for d in ("I→T", "T→I")], "mean I→T", "mean T→I"]
    text = write_table(
        os.path.join(results_dir, "table1_proclip"), "ProCLIP, Table 1: retrieval (this run)",
        f"Retrieval R@1 (%), image→text (I→T) and text→image (T→I), per set and their mean. "
        f"Claims in this run: {'; '.join(claims1)}.", columns1, rows1,
        paper.format("mean R@1 over Flickr30k, COCO, ShareGPT4V-1k, Urban-1k, DOCCI, DCI, paper Table 1",
                     markdown_table(PROCLIP_PAPER_TABLE1["columns"], PROCLIP_PAPER_TABLE1["rows"])))
    text += "\n" + write_table(
        os.path.join(results_dir, "table2_proclip"), "ProCLIP, Table 2: zero-shot classification (this run)",
        f"{zero_shot_metric_words(loaded['pretrained'], tasks)} per task and their mean (prompts encoded by the "
        f"embedder + adapter for the ProCLIP "
        f"rows). Claims in this run: ProCLIP beats LLM2CLIP on mean zero-shot — "
        f"{verdict('proclip', 'llm2clip', mean_top1)}.", ["Model", *tasks, "mean"], rows2,
        paper.format("mean zero-shot accuracy over 11 datasets, paper Table 2",
                     markdown_table(PROCLIP_PAPER_TABLE2["columns"], PROCLIP_PAPER_TABLE2["rows"])))
    return text


# -----------------------------------------------------------------------------
# the modality-gap investigation (README): one row per run folder, with the quantities each hypothesis names
def gap_investigation_table(results_dir, retrieval_set="coco_val"):
    columns = ["run", "mean zero-shot", "R@1 T→I", "R@1 I→T", "centroid_distance", "relative_gap", "uniformity",
               "image ‖z‖", "text ‖z‖", "image cone ‖mean x‖", "text cone ‖mean y‖"]
    rows = []
    for row in sorted(os.listdir(results_dir)):
        pair_file = os.path.join(results_dir, row, f"{retrieval_set}_pair_features.pt")
        if not os.path.exists(pair_file):
            continue
        res, features = load_results(results_dir, row), load_checkpoint_file(pair_file)
        top1 = zero_shot_scores(res, zero_shot_tasks(res))
        retrieval, gap = res[(retrieval_set, "zeroshot_retrieval")], res[(retrieval_set, "modality_gap")]
        z_image, z_text = features["image"], features["text"]
        cone = [(z / z.norm(dim=-1, keepdim=True)).mean(0).norm().item() for z in (z_image, z_text)]
        rows.append([row, sum(top1) / len(top1), 100 * retrieval["image_retrieval_recall@1"],
                     100 * retrieval["text_retrieval_recall@1"], *[round(gap[s], 4) for s in columns[4:7]],
                     z_image.norm(dim=-1).mean().item(), z_text.norm(dim=-1).mean().item(), *cone])
    if not rows:
        raise FileNotFoundError(f"no evaluated runs in {results_dir}; run `make investigate-gap`")
    caption = (f"Each row: one refine.py run (overrides in configs/toy/gap_investigation.txt), evaluated like "
               f"Table 1. ‖z‖: mean norm of the raw (unnormalised) features on {retrieval_set}; cone: norm of "
               f"the mean of the L2-normalised features of one modality (1 = all features identical).")
    return write_table(os.path.join(results_dir, "gap_investigation"), "Modality-gap investigation (toy)",
                       caption, columns, rows)


TABLES = {"refine": refine_table, "proclip": proclip_tables, "gap_investigation": gap_investigation_table}


def main(argv):
    """argv: ["table", NAME, RESULTS_DIR, key=value...] or ["figure", RESULTS_DIR]."""
    if len(argv) == 2 and argv[0] == "figure":
        return print(f"wrote {modality_gap_figure(argv[1])}")
    options = dict(a.split("=", 1) for a in argv[3:] if "=" in a)  # e.g. clip_row=clip (proclip_tables' keywords)
    if len(argv) < 3 or argv[0] != "table" or argv[1] not in TABLES or len(options) != len(argv) - 3:
        raise SystemExit(f"usage: python evaluate.py table {{{'|'.join(TABLES)}}} RESULTS_DIR [key=value ...]\n"
                         f"       python evaluate.py figure RESULTS_DIR")
    print(TABLES[argv[1]](argv[2], **options))

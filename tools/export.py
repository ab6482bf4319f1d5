"""A trained model as a folder to share, with its model card, and its upload to the Hugging Face Hub.

    python -m tools.export export RUN_DIR_OR_MODEL --out FOLDER [--results results/toy]   (make export)
    python -m tools.export push FOLDER --repo ORG/NAME                                     (make push)

`export` writes FOLDER (it must not exist yet; it appears whole or not at all):
- a CLIP model (refine.py, also the toy CLIP): open_clip's own format, open_clip_config.json (the architecture,
  ToyCLIP's too, and the preprocessing) + open_clip_model.safetensors, which
  `open_clip.create_model_and_transforms("local-dir:FOLDER")` (or "hf-hub:ORG/NAME" once pushed) loads with
  open_clip alone;
- a ProCLIP model (proclip_stage1.py, proclip_stage2.py, the LLM2CLIP baseline): proclip_config.json (the CLIP
  architecture, the adapter, the embedder and their dimensions) + proclip_model.safetensors (image tower, adapter,
  logit scale), which hubconf.py's postclip_model loads (common/model_files.py);
- README.md, the model card: method and objective, base model, training data and steps, git SHA, the run's
  config.yaml, and the run's evaluation numbers (the files evaluate.py wrote under --results for this model.pt:
  zero-shot, retrieval, modality gap; exact in the card's model-index metadata), with a copy of the table(s) the
  row belongs to.
`push` uploads FOLDER to the Hub repository ORG/NAME (created if needed) with huggingface_hub; it needs network
and a token (`hf auth login` or HF_TOKEN); HF_ENDPOINT points it at another Hub.
"""
import argparse
import glob
import json
import os
import shutil

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

import refine
from common.checkpoints import load_checkpoint_file, recorded_path
from common.config import UserError, read_yaml, run_cli
from common.embedder import embedder_name
from common.model_files import (kind_of, open_clip_model_config, run_config, save_open_clip_folder,
                                save_proclip_folder)
from common.models import build_clip, recorded_arch
from common.proclip import load_proclip
from common.weights import offline
from tools.tables import GAP_STATISTICS, PROCLIP_ROWS, REFINE_ROWS, load_results

RETRIEVAL_METRICS = [f"{kind}_retrieval_recall@{k}" for kind in ("image", "text") for k in (1, 5, 10)]
# {results folder of a row: [(a table it is a row of, its label there)]}, from the tables' own lists of rows
TABLES_OF_ROWS = {}
for tables, rows in ((["table1_refine.md"], REFINE_ROWS), (["table1_proclip.md", "table2_proclip.md"], PROCLIP_ROWS)):
    for row, label in rows:
        TABLES_OF_ROWS.setdefault(row, []).extend((table, label) for table in tables)


def model_file(run):
    """RUN_DIR (its model.pt) or a model.pt itself."""
    path = os.path.join(run, "model.pt") if os.path.isdir(run) else run
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no model at {path}: pass a finished run's folder (it has model.pt once the run "
                                f"ends) or its model.pt")
    return path


# -----------------------------------------------------------------------------
# the evaluation of a model.pt, and its numbers

def find_evaluation(results_dir, checkpoint):
    """The folder under results_dir where evaluate.py evaluated `checkpoint` (its eval_config.yaml names it), or "";
    the one nearest results_dir if several did (results/toy/investigate/pretrained copies results/toy/pretrained)."""
    configs = glob.glob(os.path.join(results_dir, "**", "eval_config.yaml"), recursive=True)
    for config_path in sorted(configs, key=lambda path: (path.count(os.sep), path)):
        settings = read_yaml(config_path)
        weights = settings.get("proclip_checkpoint") if settings.get("model_type") == "proclip" else \
            settings.get("pretrained")
        found = recorded_path(weights or "", config_path)  # relative to where evaluate.py ran
        if found and os.path.isfile(found) and os.path.samefile(found, checkpoint):
            return os.path.dirname(config_path)
    return ""


def evaluation_results(folder):
    """[EvalResult] of one evaluation: each zero-shot task's main metric, each retrieval set's recalls, each gap
    statistic, in that order; the values exactly as evaluate.py wrote them (fractions, not percent)."""
    loaded = load_results(folder)
    picks = {"zeroshot_classification": ("zero-shot-image-classification",
                                         lambda dataset: [loaded.get((dataset, "main_metric"), "acc1")]),
             "zeroshot_retrieval": ("zero-shot-retrieval", lambda dataset: RETRIEVAL_METRICS),
             "modality_gap": ("modality-gap", lambda dataset: GAP_STATISTICS)}
    return [EvalResult(task_type=task_type, task_name=task, dataset_type=dataset, dataset_name=dataset,
                       metric_type=metric, metric_value=loaded[(dataset, task)][metric])
            for task, (task_type, metrics_of) in picks.items()
            for dataset in sorted(d for d, t in loaded if t == task) for metric in metrics_of(dataset)]


def shown(result):
    """A number of the card's table: percent with 2 decimals (accuracies, recalls), gap statistics with 3."""
    if result.task_type == "modality-gap":
        return f"{result.metric_value:.3f}"
    return f"{100 * result.metric_value:.2f}"


def table_rows(results_dir, row):
    """[(table file name, the row's label, the table's header and separator lines and the row's line)] of the tables
    in results_dir that `row` is a row of."""
    found = []
    for name, label in TABLES_OF_ROWS.get(row, []):
        path = os.path.join(results_dir, name)
        if not os.path.isfile(path):
            continue
        lines = [line for line in open(path, encoding="utf-8").read().splitlines() if line.startswith("| ")]
        mine = [line for line in lines if line.startswith(f"| {label} |")]
        if lines and mine:
            separator = "|" + "---|" * (lines[0].count("|") - 1)
            found.append((name, label, [lines[0], separator, mine[0]]))
    return found


# -----------------------------------------------------------------------------
# the model card

def describe(kind, record):
    """-> (method and objective, base model) of a checkpoint, in words, from what it records."""
    if kind == "clip":
        objective = record.get("objective", "")
        terms, label = refine.OBJECTIVES.get(objective, ((), objective))
        method = f"{label} (refine.py objective={objective}: losses {' + '.join(terms)}; docs/methods.md §1)"
        if not record.get("started_from"):
            return f"pre-trained from scratch with the {objective} objective (refine.py)", "none (random init)"
        return method, f"{record.get('arch')} from {record['started_from']}"
    embedder = record["embedder"] + (f": {embedder_name(record['embedder'])}"
                                     if embedder_name(record["embedder"]) != record["embedder"] else "")
    base = f"{record['clip_arch']} from {record['clip_pretrained']}, frozen text embedder {embedder}"
    if record.get("stage") == "stage1":
        return ("ProCLIP stage 1 (proclip_stage1.py): the adapter distilled from CLIP's text tower (instance and "
                "structure losses; CLIP's image tower unchanged; docs/methods.md §2)"), base
    if not record.get("adapter_init") and record.get("reg_weight") == 0:
        return ("LLM2CLIP baseline (proclip_stage2.py with a fresh adapter and reg_weight=0: InfoNCE only; "
                "docs/methods.md §2)"), base
    start = f"the stage-1 adapter {record['adapter_init']}" if record.get("adapter_init") else "a fresh adapter"
    return ("ProCLIP stage 2 (proclip_stage2.py): image tower and adapter tuned contrastively with EMA "
            f"self-distillation (reg_weight={record.get('reg_weight')}), from {start} (docs/methods.md §2)"), base


def training_steps(checkpoint):
    """The last training step that the run's log.jsonl records, or None."""
    path = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "log.jsonl")
    if not os.path.isfile(path):
        return None
    steps = [json.loads(line).get("step") for line in open(path) if line.strip()]
    return max((s for s in steps if isinstance(s, int)), default=None)


def usage(kind):
    if kind == "clip":
        return ("```python\nimport open_clip\n\n"
                "model, _, preprocess = open_clip.create_model_and_transforms(\"local-dir:THIS_FOLDER\")  "
                "# or \"hf-hub:ORG/NAME\"\ntokenizer = open_clip.get_tokenizer(\"local-dir:THIS_FOLDER\")\n```\n")
    return ("```python\nimport torch\n\n"
            "model, preprocess, tokenizer = torch.hub.load(\"PATH/TO/postclip\", \"postclip_model\", "
            "source=\"local\", path=\"THIS_FOLDER\")\n```\n\nThe tokenizer is the frozen embedder named in "
            "proclip_config.json: it embeds the texts (pass embedding_cache=FOLDER to read a filled cache).\n")


def model_card(name, kind, record, checkpoint, results_dir, evaluation):
    """The card's text: the Hub's metadata header (model-index with the numbers) and the body."""
    settings = run_config(checkpoint)
    method, base = describe(kind, record)
    results = evaluation_results(evaluation) if evaluation else []
    data = ModelCardData(library_name="open_clip" if kind == "clip" else None, model_name=name,
                         pipeline_tag="zero-shot-image-classification", tags=["clip", "postclip"],
                         eval_results=results or None)
    steps = training_steps(checkpoint)
    lines = [f"# {name}", "", f"A model trained with postclip, a reproduction kit for CLIP post-training: {method}.",
             "",
             "## Training", "",
             f"- **Method and objective:** {method}",
             f"- **Base model:** {base}",
             f"- **Training data:** {record.get('train_data') or settings.get('train_data', 'unknown')} "
             f"(train_format={settings.get('train_format', 'unknown')})",
             f"- **Steps:** {steps if steps is not None else 'unknown'} (batch_size={settings.get('batch_size')}, "
             f"epochs={settings.get('epochs')}, max_steps={settings.get('max_steps')}, lr={settings.get('lr')})",
             f"- **Git SHA:** {settings.get('_git_sha', 'unknown')}",
             f"- **Command:** `{settings.get('_command', 'unknown')}`", "",
             "## Evaluation", ""]
    if evaluation:
        row, seed = os.path.relpath(evaluation, results_dir).split(os.sep)[0], os.path.basename(evaluation)
        lines += [f"evaluate.py's numbers for this model ({evaluation}): zero-shot top-1 and "
                  f"retrieval recall in %, modality-gap statistics (docs/methods.md §3) as they are.", "",
                  "| task | dataset | metric | value |", "|---|---|---|---|"]
        lines += [f"| {r.task_name} | {r.dataset_name} | {r.metric_type} | {shown(r)} |" for r in results]
        for table, label, table_lines in table_rows(results_dir, row):
            lines += ["", f"Its row **{label}** in [{table}]({table}) (copied from "
                      f"{os.path.join(results_dir, table)}; a cell with ± is the mean ± sd over the row's seeds, "
                      f"of which this model is {seed}):", "", *table_lines]
    else:
        lines += [f"No evaluation of this model.pt was found in {results_dir} (evaluate.py writes one there; "
                  f"`make reproduce-table1` evaluates every run)."]
    lines += ["", "## Use", "", usage(kind), "## Config", "", f"The run's config.yaml:", "", "```yaml",
              yaml.safe_dump(settings, sort_keys=True).rstrip(), "```", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n" + "\n".join(lines))


# -----------------------------------------------------------------------------
# the two commands

def export(run, out, results_dir):
    checkpoint = model_file(run)
    if os.path.exists(out):
        raise UserError(f"--out {out} exists: pass a new folder (export never writes over one)")
    kind = kind_of(checkpoint)
    record = load_checkpoint_file(checkpoint, "model")
    partial = f"{os.path.normpath(out)}.partial-{os.getpid()}"
    os.makedirs(partial)
    try:
        if kind == "clip":
            arch, quick_gelu = recorded_arch(checkpoint), bool(run_config(checkpoint).get("force_quick_gelu", False))
            model, _, _, tokenizer = build_clip(arch, checkpoint, quick_gelu)
            save_open_clip_folder(model, tokenizer, open_clip_model_config(arch, quick_gelu), partial)
        else:
            model, _, record = load_proclip(checkpoint)
            save_proclip_folder(model, record, partial)
        evaluation = find_evaluation(results_dir, checkpoint) if os.path.isdir(results_dir) else ""
        if evaluation:
            row = os.path.relpath(evaluation, results_dir).split(os.sep)[0]
            for table, _, _ in table_rows(results_dir, row):
                shutil.copyfile(os.path.join(results_dir, table), os.path.join(partial, table))
        card = model_card(os.path.basename(os.path.normpath(out)), kind, record, checkpoint, results_dir, evaluation)
        card.save(os.path.join(partial, "README.md"))
        os.rename(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    print(f"{out}: {'open_clip folder' if kind == 'clip' else 'ProCLIP folder'} of {checkpoint} with its model card"
          + (f" (evaluation: {evaluation})" if evaluation else f" (no evaluation of it in {results_dir})"))


def push(folder, repo):
    from huggingface_hub import HfApi, constants

    if not os.path.isfile(os.path.join(folder, "README.md")):
        raise UserError(f"{folder} is not a folder that `make export` wrote (no README.md): export it first")
    if offline():
        raise UserError("push uploads: unset HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE (it needs network)")
    api = HfApi()
    try:
        api.create_repo(repo, exist_ok=True)
        commit = api.upload_folder(repo_id=repo, folder_path=folder, commit_message=f"postclip export of {folder}")
    except Exception as error:  # network, authentication and Hub errors alike: one line, the Hub's own words
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(f"could not push {folder} to {constants.ENDPOINT}/{repo} ({type(error).__name__}: {first}); "
                        f"check the network and your token (`hf auth login` or HF_TOKEN)") from None
    print(f"pushed {folder} to {commit.commit_url}")


def get_args_parser():
    parser = argparse.ArgumentParser("python -m tools.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["export", "push"])
    parser.add_argument("path", help="export: a run's folder or its model.pt; push: an exported folder")
    parser.add_argument("--out", default="", help="export: the folder to write (must not exist)")
    parser.add_argument("--results", default="results/toy", help="export: where evaluate.py wrote the run's "
                                                                 "evaluation (default results/toy)")
    parser.add_argument("--repo", default="", help="push: the Hub repository, ORG/NAME")
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    if args.command == "export":
        if not args.out:
            raise UserError("export needs --out FOLDER (make export RUN_DIR=... OUT=FOLDER)")
        export(args.path, args.out, args.results)
    else:
        if not args.repo:
            raise UserError("push needs --repo ORG/NAME (make push OUT=FOLDER REPO=ORG/NAME)")
        push(args.path, args.repo)


if __name__ == "__main__":
    run_cli(main, "python -m tools.export")

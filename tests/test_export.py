"""A trained model used and shared outside the repository: hubconf.py loads any model from any directory,
`make export` writes open_clip's own format (CLIP) or safetensors + a config (ProCLIP) with a model card holding the
run's numbers, `make push` uploads to the Hub (tests/fake_hub.py), and evaluate.py refuses a ProCLIP model whose
embedding cache is missing.

The runs are made as `make` makes them, in a folder laid out like the repository (runs/toy/..., results/toy/...,
cache/toy/..., data/toy, and hubconf.py + common/ linked from the real one), with relative paths recorded: a tiny
CLIP-Refine run from the random-init ToyCLIP, and a one-step ProCLIP stage-2 run on the real toy embedder
(all-MiniLM-L6-v2, bundled: no download)."""
import json
import os
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from PIL import Image

import evaluate
import proclip_stage2
import refine
from common.config import UserError, load_config, run_cli
from common.embedder import fill_cache
from common.metrics import retrieval_metrics
from common.models import build_clip
from common.proclip import build_training_set
from fake_hub import FakeHub
from tools import export as export_tool
from tools.fill_cache import evaluation_texts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow  # the real toy embedder is loaded (in this process and in the README's)
REFINE_RUN = "runs/toy/refine/clip_refine/seed0"
PROCLIP_RUN = "runs/toy/proclip/stage2/seed0"


def in_folder(folder, function, *args):
    """function(*args) with `folder` as the current directory, as `make` runs the stages from the repository."""
    here = os.getcwd()
    os.chdir(folder)
    try:
        return function(*args)
    finally:
        os.chdir(here)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_world, tiny_clip):
    """A folder laid out like the repository after `make reproduce-table1`, with one CLIP-Refine and one ProCLIP
    run, each evaluated into results/toy/ROW/seed0 and with the row of a table."""
    root = tmp_path_factory.mktemp("postclip")
    for name in ("hubconf.py", "common"):
        os.symlink(os.path.join(ROOT, name), root / name)
    (root / "data").mkdir()
    os.symlink(tiny_world, root / "data/toy")
    eval_config = root / "eval.yaml"
    eval_config.write_text(yaml.safe_dump({
        "data_root": "data/toy", "zeroshot": {"shape": "zeroshot/shape", "count": "zeroshot/count"},
        "retrieval": {"coco_val": {"annotations": "coco/captions_val.json", "images": "coco/val"}},
        "gap_sets": ["coco_val"], "batch_size": 16, "num_workers": 0, "device": "cpu"}))
    in_folder(root, refine.main, [
        "--config", f"{ROOT}/configs/toy/refine.yaml", f"run_dir={REFINE_RUN}", f"pretrained={tiny_clip}",
        "train_data=data/toy/coco/captions_train.json", "train_images=data/toy/coco/train", "batch_size=8",
        "objective=clip_refine", "max_steps=2", "holdout_fraction=0.0", "num_workers=0", "image_cache=",
        "device=cpu"])
    stage = ["train_data=data/toy/recaption.csv", "max_images=16", "arch=ToyCLIP", f"pretrained={tiny_clip}",
             "embedder=toy", "embedding_cache=cache/toy/minilm", "batch_size=8", "num_workers=0", "device=cpu",
             "adapter_depth=1", "adapter_expansion=2"]
    captions = in_folder(root, lambda: build_training_set(load_config(proclip_stage2.DEFAULTS, None, stage),
                                                          None).captions)
    fill_cache("toy", root / "cache/toy/minilm", captions + evaluation_texts(eval_config, str(tiny_world)),
               device="cpu")
    in_folder(root, proclip_stage2.main, [f"run_dir={PROCLIP_RUN}", "adapter=", "max_steps=1", *stage])
    for row, weights in (("clip_refine", f"pretrained={REFINE_RUN}/model.pt"),
                         ("proclip", f"proclip_checkpoint={PROCLIP_RUN}/model.pt")):
        in_folder(root, evaluate.main, ["--config", str(eval_config), f"out_dir=results/toy/{row}/seed0", weights])
    # a copy further down, as investigate-gap makes of results/toy/pretrained: the card names the row's own folder
    shutil.copytree(root / "results/toy/clip_refine", root / "results/toy/investigate/clip_refine")
    (root / "results/toy/table1_refine.md").write_text(
        "A caption.\n\n| Method | mean zero-shot |\n|---|---|\n| Pre-trained | 55.75 |\n"
        "| CLIP-Refine | 54.81 ± 0.08 |\n")
    return SimpleNamespace(root=root, world=tiny_world, eval_config=eval_config)


def make(*args, env=None):
    """make ARGS with this Python (PYTHON=: no venv), from the repository."""
    clean = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(["make", "--no-print-directory", *args, f"PYTHON={sys.executable}"], cwd=ROOT,
                          env={**clean, **(env or {})}, capture_output=True, text=True)


@pytest.fixture(scope="module")
def exported(repo, tmp_path_factory):
    """make export of both runs: {row: folder}."""
    out = tmp_path_factory.mktemp("exported")
    folders = {}
    for row, run in (("clip_refine", REFINE_RUN), ("proclip", PROCLIP_RUN)):
        done = make("export", f"RUN_DIR={repo.root / run}", f"OUT={out / row}", f"RESULTS={repo.root / 'results/toy'}")
        assert done.returncode == 0, done.stderr
        folders[row] = out / row
    return folders


# -----------------------------------------------------------------------------
# open_clip alone, outside the repository

FEATURES_OUTSIDE = """
import importlib.util, json, sys
import open_clip, torch
from PIL import Image
assert importlib.util.find_spec("common") is None, "the repository is importable"
folder, image, captions, out = sys.argv[1:5]
model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + folder)
tokenizer = open_clip.get_tokenizer("local-dir:" + folder)
pixels = preprocess(Image.open(image))[None]
with torch.no_grad():
    torch.save({"pixels": pixels, "image": model.encode_image(pixels),
                "text": model.encode_text(tokenizer(json.loads(captions)))}, out)
"""


def test_an_exported_clip_refine_model_loads_with_open_clip_alone_and_gives_the_runs_features(repo, exported,
                                                                                              tmp_path):
    image, captions = repo.world / "coco/val/000000.png", ["A small yellow square.", "A large red circle."]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", FEATURES_OUTSIDE, str(exported["clip_refine"]), str(image),
                           json.dumps(captions), str(tmp_path / "features.pt")], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    outside = torch.load(tmp_path / "features.pt", weights_only=True)
    model, _, preprocess, tokenizer = build_clip("ToyCLIP", str(repo.root / REFINE_RUN / "model.pt"))
    pixels = preprocess(Image.open(image))[None]
    with torch.no_grad():
        assert torch.equal(outside["pixels"], pixels)
        assert torch.equal(outside["image"], model.encode_image(pixels))
        assert torch.equal(outside["text"], model.encode_text(tokenizer(captions)))
    config = json.loads((exported["clip_refine"] / "open_clip_config.json").read_text())
    assert config["model_cfg"] == json.loads(open(f"{ROOT}/common/model_configs/ToyCLIP.json").read())


# -----------------------------------------------------------------------------
# the README's example, and the ProCLIP model it loads

def readme_example():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text[text.index("## Use a trained model"):]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def test_the_readmes_example_runs_as_written_from_another_directory(repo, tmp_path):
    code = readme_example()
    assert 'postclip = "."' in code
    code = code.replace('postclip = "."', f"postclip = {str(repo.root)!r}", 1)  # where "the repository" is here
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    scored = {line.split(" ", 1)[0]: json.loads(line.split(" ", 1)[1]) for line in done.stdout.splitlines()
              if line.startswith("runs/")}
    assert list(scored) == [f"{REFINE_RUN}/model.pt", f"{PROCLIP_RUN}/model.pt"]
    for probabilities in scored.values():
        assert len(probabilities) == 3 and sum(probabilities) == pytest.approx(1, abs=2e-3)


def test_a_proclip_model_loaded_from_elsewhere_scores_retrieval_as_evaluate_does(repo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, preprocess, tokenizer = torch.hub.load(str(repo.root), "postclip_model", source="local",
                                                  path=str(repo.root / PROCLIP_RUN / "model.pt"))
    assert tokenizer.cache is not None, "the run's cache (recorded as cache/toy/minilm) is found from its folder"
    annotations = json.loads((repo.world / "coco/captions_val.json").read_text())
    images = [image["id"] for image in annotations["images"]]
    captions = [a["caption"] for a in annotations["annotations"]]
    owner = torch.tensor([images.index(a["image_id"]) for a in annotations["annotations"]])
    pixels = torch.stack([preprocess(Image.open(repo.world / "coco/val" / image["file_name"]))
                          for image in annotations["images"]])
    with torch.no_grad():
        metrics = retrieval_metrics(model.encode_image(pixels), model.encode_text(tokenizer(captions)), owner)
    written = json.loads((repo.root / "results/toy/proclip/seed0/coco_val_zeroshot_retrieval.json").read_text())
    assert {k: written["metrics"][k] for k in metrics} == metrics


# -----------------------------------------------------------------------------
# the model card, the ProCLIP folder, the upload

def test_the_model_card_holds_the_runs_numbers_config_and_table(repo, exported):
    folder, results = exported["clip_refine"], repo.root / "results/toy/clip_refine/seed0"
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "open_clip" and "CLIP-Refine" in card.text
    written = {}
    for path in results.glob("*.json"):
        record = json.loads(path.read_text())
        written[(record["dataset"], record["task"])] = record
    shown = {(r.dataset_name, r.task_name, r.metric_type): r.metric_value for r in card.data.eval_results}
    expected = {("shape", "zeroshot_classification", "acc1"), ("count", "zeroshot_classification", "acc1")}
    expected |= {("coco_val", "zeroshot_retrieval", f"{kind}_retrieval_recall@{k}") for kind in ("image", "text")
                 for k in (1, 5, 10)}
    expected |= {("coco_val", "modality_gap", s) for s in ("centroid_distance", "centroid_sqdist_per_dim",
                                                           "pair_distance", "relative_gap", "alignment",
                                                           "uniformity", "separability")}
    assert set(shown) == expected
    assert f"evaluate.py's numbers for this model ({results}):" in card.text  # not its copy in investigate/
    for (dataset, task, metric), value in shown.items():
        assert value == written[(dataset, task)]["metrics"][metric], (dataset, metric)
        number = f"{value:.3f}" if task == "modality_gap" else f"{100 * value:.2f}"
        assert f"| {task} | {dataset} | {metric} | {number} |" in card.text
    config = yaml.safe_load(open(repo.root / REFINE_RUN / "config.yaml"))
    assert f"**Git SHA:** {config['_git_sha']}" in card.text and "objective: clip_refine" in card.text
    assert "| CLIP-Refine | 54.81 ± 0.08 |" in card.text and "[table1_refine.md](table1_refine.md)" in card.text
    assert (folder / "table1_refine.md").read_text() == (repo.root / "results/toy/table1_refine.md").read_text()
    assert "**Steps:** 2 " in card.text


def test_an_exported_proclip_folder_loads_as_the_run_does(repo, exported, tmp_path, monkeypatch):
    folder = exported["proclip"]
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "proclip_config.json",
                                                        "proclip_model.safetensors"]
    config = json.loads((folder / "proclip_config.json").read_text())
    assert (config["embedder"], config["embedder_dim"], config["embed_dim"]) == ("toy", 384, 64)
    card = ModelCard.load(folder / "README.md")
    assert "ProCLIP" in card.text or "LLM2CLIP" in card.text
    assert {r.dataset_name for r in card.data.eval_results} == {"shape", "count", "coco_val"}
    monkeypatch.chdir(tmp_path)
    hub = lambda path: torch.hub.load(str(repo.root), "postclip_model", source="local", path=str(path),
                                      embedding_cache=str(repo.root / "cache/toy/minilm"))
    exported_model, preprocess, tokenizer = hub(folder)
    run_model, _, _ = hub(repo.root / PROCLIP_RUN / "model.pt")
    pixels = preprocess(Image.open(repo.world / "coco/val/000001.png"))[None]
    with torch.no_grad():
        assert torch.equal(exported_model.encode_image(pixels), run_model.encode_image(pixels))
        caption = json.loads((repo.world / "coco/captions_val.json").read_text())["annotations"][0]["caption"]
        embeddings = tokenizer([caption])  # read from the cache
        assert torch.equal(exported_model.encode_text(embeddings), run_model.encode_text(embeddings))


def test_export_refuses_an_existing_folder_and_a_resumable_checkpoint(repo, exported, tmp_path):
    with pytest.raises(UserError, match="exists: pass a new folder"):
        export_tool.main(["export", str(repo.root / REFINE_RUN), "--out", str(exported["clip_refine"])])
    torch.save({"state_dict": {}, "optimizer": {}, "objective": {}}, tmp_path / "checkpoint.pt")
    with pytest.raises(UserError, match="is not a trained model"):
        export_tool.main(["export", str(tmp_path / "checkpoint.pt"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_push_uploads_the_folder_to_the_hub_and_fails_in_one_line_without_network(exported):
    folder = exported["clip_refine"]
    env = {"HF_HUB_OFFLINE": "0", "HF_TOKEN": "hf_test_token"}
    with FakeHub({}) as hub:
        done = make("push", f"OUT={folder}", "REPO=postclip-test/toy-clip-refine", env={**env, "HF_ENDPOINT": hub.url})
        assert done.returncode == 0, done.stderr
        uploaded = hub.repos["postclip-test/toy-clip-refine"]
    assert uploaded == {p.name: p.read_bytes() for p in folder.iterdir()}
    offline = make("push", f"OUT={folder}", "REPO=postclip-test/x", env={**env, "HF_ENDPOINT": "http://127.0.0.1:9"})
    error = [line for line in offline.stderr.splitlines() if not line.startswith("make")]
    assert offline.returncode != 0 and len(error) == 1, offline.stderr
    assert error[0].startswith("python -m tools.export: error: could not push") and "http://127.0.0.1:9" in error[0]


# -----------------------------------------------------------------------------
# evaluate.py and a missing embedding cache

def test_evaluate_refuses_a_proclip_model_without_its_cache_in_one_line(repo, tmp_path, monkeypatch, capsys):
    moved = tmp_path / "elsewhere/model.pt"  # no cache/toy/minilm above it
    moved.parent.mkdir()
    monkeypatch.chdir(tmp_path)  # nor in the working directory (the repository's own cache, after a toy run)
    moved.write_bytes((repo.root / PROCLIP_RUN / "model.pt").read_bytes())
    argv = ["--config", str(repo.eval_config), f"data_root={repo.world}", f"out_dir={tmp_path}/out",
            f"proclip_checkpoint={moved}"]
    monkeypatch.setattr("sys.argv", ["evaluate.py", *argv])
    with pytest.raises(SystemExit):
        run_cli(evaluate.main, "evaluate.py")
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "`make embed-cache`" in error and "python -m tools.fill_cache" in error
    assert "embed_missing_texts=true" in error and not (tmp_path / "out/done").exists()
    evaluate.main([*argv, "embed_missing_texts=true", "zeroshot={}"])  # asked for: every text embedded now
    assert (tmp_path / "out/coco_val_zeroshot_retrieval.json").exists()

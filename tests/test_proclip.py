"""ProCLIP end to end on a tiny world (docs/methods.md §2): stage 1 -> stage 2, the LLM2CLIP path, exact resume,
evaluation of a ProCLIP model and the two tables. A stub embedder (bag of hashed words) fills the cache, so no
language model is loaded; the toy CLIP is a random-init ToyCLIP. CPU, well under a minute."""
import csv
import json
import os
import shlex
import zlib
from types import SimpleNamespace

import pytest
import torch
import yaml

import evaluate
import proclip_stage1
import proclip_stage2
from common.config import load_config, run_cli
from common.data import CaptionsOnly, read_classnames
from common import embedder as embedder_module
from common import proclip as proclip_module
from common import train as train_module
from common.checkpoints import load_checkpoint_file
from common.embedder import EmbeddingCache, MissingEmbeddingError, fill_cache, open_filled_cache
from common.losses import proclip_instance_loss, proclip_structure_loss
from common.models import build_clip
from common.proclip import Adapter, EmbedderTokenizer, build_training_set, load_proclip, open_training_cache
from crashes import SimulatedCrash, crash_before_step
from tools import fill_cache as fill_cache_tool
from tools.fill_cache import evaluation_texts
from tools.tables import PROCLIP_ROWS, proclip_tables

STUB_DIM = 16


def stub_embedding(text):
    """Bag of words hashed into STUB_DIM buckets: texts sharing words get similar vectors."""
    vector = torch.zeros(STUB_DIM)
    for word in text.lower().replace(".", " ").replace(",", " ").split():
        vector[zlib.crc32(word.encode()) % STUB_DIM] += 1.0
    return vector


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_world, tiny_clip):
    """The tiny world (conftest), the first 32 images as the corpus, a filled stub cache and a stage-1 run."""
    root, world = tmp_path_factory.mktemp("proclip"), tiny_world
    eval_config = root / "eval.yaml"
    eval_config.write_text(yaml.safe_dump({
        "data_root": str(world), "zeroshot": {"shape": "zeroshot/shape", "count": "zeroshot/count"},
        "retrieval": {"coco_val": {"annotations": "coco/captions_val.json", "images": "coco/val"},
                      "long_val": {"annotations": "coco/long_val.json", "images": "coco/val"}},
        "gap_sets": ["coco_val"], "batch_size": 16, "num_workers": 0}))
    common = [f"train_data={world / 'recaption.csv'}", "max_images=32", "arch=ToyCLIP", f"pretrained={tiny_clip}",
              "embedder=stub-embedder", f"embedding_cache={root / 'cache'}", "batch_size=8", "num_workers=0",
              "lr=1e-3", "log_every=1", "adapter_depth=1", "adapter_expansion=2", "device=cpu"]
    # The cache holds what `make embed-cache` would put there: training captions, retrieval captions, prompts.
    short_and_long = build_training_set(load_config(proclip_stage2.DEFAULTS, None, common), None)
    texts = short_and_long.captions + evaluation_texts(eval_config)
    EmbeddingCache(root / "cache", f"stub-embedder, dim {STUB_DIM}").fill(
        texts, lambda batch: torch.stack([stub_embedding(t) for t in batch]), show_progress=False)
    stage1 = str(root / "stage1")
    proclip_stage1.main(["run_dir=" + stage1, "epochs=2", "instance_long_captions=false", *common])  # short only
    return SimpleNamespace(root=root, world=world, clip=tiny_clip, common=common, stage1=stage1,
                           eval_config=eval_config)


@pytest.fixture(scope="module")
def stage2(setup):
    """An uninterrupted 4-step stage-2 run from the stage-1 adapter."""
    run_dir = setup.root / "stage2"
    proclip_stage2.main(stage2_args(setup, run_dir))
    return run_dir


def stage2_args(setup, run_dir, *extra):
    return [f"run_dir={run_dir}", f"adapter={setup.stage1}/model.pt", "max_steps=4", *setup.common, *extra]


# ---------------------------------------------------------------- stage 1

def test_stage1_trains_the_adapter_and_leaves_the_image_tower_alone(setup):
    record = load_checkpoint_file(f"{setup.stage1}/model.pt")
    assert "visual" not in record and record["clip_pretrained"] == setup.clip
    assert record["adapter_config"] == {"in_dim": STUB_DIM, "embed_dim": 64, "depth": 1, "expansion": 2,
                                        "dropout": 0.0}
    torch.manual_seed(0)  # the stage seeds the adapter's initialisation with seed=0
    initial = Adapter(**record["adapter_config"]).state_dict()
    assert initial.keys() == record["adapter"].keys()
    assert all(not torch.equal(initial[k], record["adapter"][k]) for k in initial if k.endswith("weight"))
    # 2 epochs of 32 short captions at batch 8 = 8 logged steps; the distillation loss went down.
    log = [json.loads(line) for line in open(f"{setup.stage1}/log.jsonl")]
    assert [r["step"] for r in log] == list(range(1, 9)) and log[-1]["loss"] < log[0]["loss"]
    # "Stage 1 only": the CLIP's own image tower and logit scale, bit for bit.
    model, _, _ = load_proclip(f"{setup.stage1}/model.pt")
    clip, _, _, _ = build_clip("ToyCLIP", setup.clip)
    for name, tensor in clip.visual.state_dict().items():
        assert torch.equal(model.visual.state_dict()[name], tensor), name
    assert model.logit_scale.item() == clip.logit_scale.item()


def test_stage1_objective_is_the_distillation_from_the_text_tower_on_short_captions(setup):
    cfg = load_config(proclip_stage1.DEFAULTS, None, setup.common + ["run_dir=x"])
    captions = CaptionsOnly(build_training_set(cfg, None))
    with open(setup.world / "recaption.csv", newline="") as f:
        shorts = [row["short"] for row in csv.DictReader(f)]
    assert [captions[i] for i in range(len(captions))] == shorts[:32]  # the short captions of the first 32 images
    cache = open_training_cache(cfg, [captions.dataset])
    clip, _, _, tokenizer = build_clip("ToyCLIP", cfg.pretrained)
    adapter = Adapter(STUB_DIM, 64, depth=1)
    objective = proclip_stage1.Stage1Objective(adapter, clip, tokenizer, cache)
    trainable = [name for name, p in objective.named_parameters() if p.requires_grad]
    assert trainable and all(name.startswith("adapter.") for name in trainable)
    batch = [captions[i] for i in range(6)]
    loss, _ = objective({"captions": batch}, None)
    teacher, _, _, _ = build_clip("ToyCLIP", cfg.pretrained)  # an independent copy of the text tower
    student = adapter(torch.stack([stub_embedding(t) for t in batch]))
    target = teacher.encode_text(tokenizer(batch))
    expected = proclip_instance_loss(student, target) + proclip_structure_loss(student, target)
    torch.testing.assert_close(loss, expected)


def test_stage1_official_form_adds_the_long_captions_to_the_instance_loss(setup, tmp_path):
    # instance_long_captions=true (configs/paper): L_ins(short) + L_ins(long) + L_struct(short), as the official code
    cfg = load_config(proclip_stage1.DEFAULTS, None, setup.common + ["run_dir=x", "instance_long_captions=true"])
    dataset, collate, _, corpora, held_out_corpora = proclip_stage1.training_captions(cfg)
    with open(setup.world / "recaption.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:32]
    assert [dataset[i] for i in range(3)] == [(r["short"], r["long"]) for r in rows[:3]]
    batch = collate([dataset[i] for i in range(6)])
    cache = open_training_cache(cfg, corpora + held_out_corpora)
    clip, _, _, tokenizer = build_clip("ToyCLIP", cfg.pretrained)
    adapter = Adapter(STUB_DIM, 64, depth=1)
    objective = proclip_stage1.Stage1Objective(adapter, clip, tokenizer, cache)
    loss, logs = objective(batch, None)
    teacher = build_clip("ToyCLIP", cfg.pretrained)[0]
    embed = lambda texts: adapter(torch.stack([stub_embedding(t) for t in texts]))
    short_s, short_t = embed(batch["captions"]), teacher.encode_text(tokenizer(batch["captions"]))
    long_s, long_t = embed(batch["long_captions"]), teacher.encode_text(tokenizer(batch["long_captions"]))
    expected = (proclip_instance_loss(short_s, short_t) + proclip_structure_loss(short_s, short_t)
                + proclip_instance_loss(long_s, long_t))
    torch.testing.assert_close(loss, expected)
    assert logs["instance"] > proclip_instance_loss(short_s, short_t)  # the long term is really there
    proclip_stage1.main([f"run_dir={tmp_path / 'run'}", "max_steps=2", "instance_long_captions=true", *setup.common])
    assert (tmp_path / "run/model.pt").exists()
    with pytest.raises(ValueError, match="instance_long_captions=true needs train_format=csv"):
        proclip_stage1.training_captions(load_config(proclip_stage1.DEFAULTS, None, setup.common + [
            "train_format=coco", "instance_long_captions=true"]))


def test_teacher_memo_gives_the_teacher_embeddings_and_resumes_exactly(setup, tmp_path):
    cfg = load_config(proclip_stage1.DEFAULTS, None, setup.common + ["run_dir=x"])
    captions = CaptionsOnly(build_training_set(cfg, None))
    cache = open_training_cache(cfg, [captions.dataset])
    clip, _, _, tokenizer = build_clip("ToyCLIP", cfg.pretrained)
    objective = proclip_stage1.Stage1Objective(Adapter(STUB_DIM, 64, depth=1), clip, tokenizer, cache,
                                               captions.dataset.captions)
    batch = [captions[i] for i in (5, 1, 5)]
    torch.testing.assert_close(objective.teacher_embeddings(batch, "cpu"),
                               objective.teacher.encode_text(tokenizer(batch)))  # the same numbers, up to rounding
    assert len(objective.memo) == len(set(captions.dataset.captions))
    # a run stopped after 3 of 8 steps and resumed ends bit-identical to the straight run
    args = [*setup.common, "epochs=2", "teacher_memo=true", "checkpoint_every=1", "instance_long_captions=false"]
    proclip_stage1.main([f"run_dir={tmp_path}/straight", *args])
    with crash_before_step(3), pytest.raises(SimulatedCrash):
        proclip_stage1.main([f"run_dir={tmp_path}/resumed", *args])
    proclip_stage1.main([f"run_dir={tmp_path}/resumed", *args])
    straight, resumed = (load_checkpoint_file(f"{tmp_path}/{r}/model.pt")["adapter"] for r in ("straight", "resumed"))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def proclip_holdout_runs(main, args, tmp_path, monkeypatch):
    """A run with 8 of the 32 images held out (3 steps per epoch, 2 epochs), and the same run with scoring off:
    -> (the holdout lines of the first, the two model.pt records)."""
    main([f"run_dir={tmp_path}/scored", "holdout_fraction=0.25", "epochs=2", "max_steps=0", *args])
    with monkeypatch.context() as patch:
        patch.setattr(train_module, "score_holdout", lambda *a, **k: None)
        main([f"run_dir={tmp_path}/unscored", "holdout_fraction=0.25", "epochs=2", "max_steps=0", *args])
    lines = [json.loads(line) for line in open(f"{tmp_path}/scored/log.jsonl")]
    return ([r for r in lines if r["split"] == "holdout"],
            *(load_checkpoint_file(f"{tmp_path}/{r}/model.pt") for r in ("scored", "unscored")))


def test_stage1_scores_its_holdout_per_epoch_without_changing_the_adapter(setup, tmp_path, monkeypatch):
    # teacher_memo: the held-out captions are not memoised, the teacher embeds them when they are scored
    holdout, scored, unscored = proclip_holdout_runs(proclip_stage1.main, [*setup.common, "teacher_memo=true",
                                                     "instance_long_captions=false"], tmp_path, monkeypatch)
    assert [(r["step"], r["holdout_items"]) for r in holdout] == [(0, 8), (3, 8), (6, 8)]
    assert all(r["instance"] > 0 and -1 <= r["cosine"] <= 1 for r in holdout) and "centroid_distance" not in holdout[0]
    assert holdout[-1]["loss"] < holdout[0]["loss"], "the distillation also fits captions it never trained on"
    assert all(torch.equal(tensor, unscored["adapter"][k]) for k, tensor in scored["adapter"].items())


def test_stage2_scores_its_holdout_per_epoch_without_changing_the_model(setup, tmp_path, monkeypatch):
    holdout, scored, unscored = proclip_holdout_runs(
        proclip_stage2.main, [f"adapter={setup.stage1}/model.pt", *setup.common], tmp_path, monkeypatch)
    assert [(r["step"], r["holdout_items"]) for r in holdout] == [(0, 8), (3, 8), (6, 8)]
    assert all("infonce" in r and "instance" in r and 0 < r["centroid_distance"] < 2 for r in holdout)
    for part in ("visual", "adapter"):
        for name, tensor in scored[part].items():
            assert torch.equal(tensor, unscored[part][name]), f"{part}.{name}"
    assert scored["logit_scale"] == unscored["logit_scale"]


def test_missing_captions_fail_before_training(setup, tmp_path):
    cache = EmbeddingCache(tmp_path / "cache", f"stub-embedder, dim {STUB_DIM}")
    cache.fill(["only this one"], lambda batch: torch.ones(len(batch), STUB_DIM), show_progress=False)
    with pytest.raises(MissingEmbeddingError, match="`python -m tools.fill_cache --stage1 run_dir=.*make embed-cache"):
        proclip_stage1.main([f"run_dir={tmp_path}/run", *setup.common, f"embedding_cache={tmp_path / 'cache'}"])


# ---------------------------------------------------------------- stage 2

def test_ema_teacher_follows_the_formula_after_one_step(setup, tmp_path):
    run = tmp_path / "ema"
    # The checkpoint of the state after step 1 (student and teacher) is written during step 2, once that state has
    # given a finite loss and gradient; the crash comes before step 3.
    with crash_before_step(2), pytest.raises(SimulatedCrash):
        proclip_stage2.main(stage2_args(setup, run, "checkpoint_every=1", "ema_momentum=0.9"))
    assert load_checkpoint_file(run / "checkpoint.pt")["step"] == 1
    state = load_checkpoint_file(run / "checkpoint.pt")["objective"]
    pretrained = build_clip("ToyCLIP", setup.clip)[0].visual.state_dict()
    moved = 0
    for name, start in pretrained.items():
        student, teacher = state[f"model.visual.{name}"], state[f"teacher.{name}"]
        torch.testing.assert_close(teacher, 0.9 * start + 0.1 * student)
        moved += not torch.equal(student, start)
    assert moved > 0.9 * len(pretrained)  # the whole image tower trains
    adapter = load_checkpoint_file(f"{setup.stage1}/model.pt")["adapter"]
    assert any(not torch.equal(state[f"model.adapter.{k}"], v) for k, v in adapter.items())  # started from stage 1


def test_stage2_resume_after_a_crash_is_bit_identical(setup, stage2, tmp_path):
    crashed = stage2_args(setup, tmp_path / "resumed", "checkpoint_every=2")
    with crash_before_step(3), pytest.raises(SimulatedCrash):
        proclip_stage2.main(crashed)
    proclip_stage2.main(crashed)
    straight = load_checkpoint_file(stage2 / "model.pt")
    resumed = load_checkpoint_file(tmp_path / "resumed/model.pt")
    for part in ("visual", "adapter"):
        for name, tensor in straight[part].items():
            assert torch.equal(tensor, resumed[part][name]), f"{part}.{name}"
    assert straight["logit_scale"] == resumed["logit_scale"]
    log = [json.loads(line) for line in open(stage2 / "log.jsonl")]
    assert all(r["instance"] >= 0 and r["structure"] >= 0 for r in log) and log[0]["instance"] < 1e-6  # teacher = start


def test_a_rows_seeds_in_one_process_train_what_each_seed_trains_alone(setup, tmp_path):
    """seeds=[...] for both stages (what make runs: one process per row): stage 2 of seed S starts from stage 1 of
    seed S, and every seed's model.pt is that of the same run alone; a missing adapter stops before any training."""
    stage1 = [*setup.common, "max_steps=2", "instance_long_captions=false"]
    proclip_stage1.main([f"run_dir={tmp_path}/alone1", "seed=1", *stage1])
    proclip_stage2.main([f"run_dir={tmp_path}/alone2", "seed=1", f"adapter={tmp_path}/alone1/model.pt", "max_steps=2",
                         *setup.common])
    with pytest.raises(FileNotFoundError, match=r"adapter=.*/row1/seed0/model.pt not found: run proclip_stage1.py"):
        proclip_stage2.main([f"run_dir={tmp_path}/row2/seed{{seed}}", "seeds=[0,1]", "max_steps=2", *setup.common,
                             f"adapter={tmp_path}/row1/seed{{seed}}/model.pt"])
    assert not (tmp_path / "row2").exists()
    proclip_stage1.main([f"run_dir={tmp_path}/row1/seed{{seed}}", "seeds=[0,1]", *stage1])
    proclip_stage2.main([f"run_dir={tmp_path}/row2/seed{{seed}}", "seeds=[0,1]", "max_steps=2", *setup.common,
                         f"adapter={tmp_path}/row1/seed{{seed}}/model.pt"])
    for alone, row in (("alone1", "row1/seed1"), ("alone2", "row2/seed1")):
        a, b = load_checkpoint_file(tmp_path / alone / "model.pt"), load_checkpoint_file(tmp_path / row / "model.pt")
        for part in ("visual", "adapter"):
            assert a.get(part, {}).keys() == b.get(part, {}).keys()
            assert all(torch.equal(tensor, b[part][name]) for name, tensor in a.get(part, {}).items()), (row, part)
    assert load_checkpoint_file(tmp_path / "row2/seed0/model.pt")["adapter_init"] == f"{tmp_path}/row1/seed0/model.pt"
    seeds = [load_checkpoint_file(tmp_path / f"row1/seed{s}/model.pt")["adapter"] for s in (0, 1)]
    assert any(not torch.equal(seeds[0][k], seeds[1][k]) for k in seeds[0])


def test_llm2clip_baseline_has_fresh_adapter_and_no_teacher(setup, tmp_path):
    cfg = load_config(proclip_stage2.DEFAULTS, None, stage2_args(setup, "x", "adapter=", "reg_weight=0"))
    cache = open_training_cache(cfg, [build_training_set(cfg, None)])
    model, config, *_ = proclip_stage2.build_model(cfg, cache)
    torch.manual_seed(0)
    fresh = Adapter(**config).state_dict()
    assert all(torch.equal(fresh[k], v) for k, v in model.adapter.state_dict().items())
    assert proclip_stage2.Stage2Objective(cfg, model, cache).teacher is None
    proclip_stage2.main(stage2_args(setup, tmp_path / "llm2clip", "adapter=", "reg_weight=0"))
    log = [json.loads(line) for line in open(tmp_path / "llm2clip/log.jsonl")]
    assert len(log) == 4 and "instance" not in log[0] and log[0]["loss"] == log[0]["infonce"]
    assert load_checkpoint_file(tmp_path / "llm2clip/model.pt")["adapter_init"] == ""


def test_stage2_refuses_an_adapter_distilled_with_another_chat_template(setup, tmp_path):
    record = load_checkpoint_file(f"{setup.stage1}/model.pt")
    record.update(embedder="llm2vec:/models/llm2clip8b", embedder_chat_template="llama3")
    torch.save(record, tmp_path / "adapter.pt")
    cfg = load_config(proclip_stage2.DEFAULTS, None, stage2_args(
        setup, "x", f"adapter={tmp_path / 'adapter.pt'}", "embedder=llm2vec:/models/llm2clip8b"))
    with pytest.raises(ValueError, match=r"trained for embedder 'llm2vec:/models/llm2clip8b \(chat template llama3\)'"
                                         r".* this run uses 'llm2vec:/models/llm2clip8b \(chat template none\)'"):
        proclip_stage2.build_model(cfg, open_filled_cache(setup.root / "cache", "stub-embedder"))


# ---------------------------------------------------------------- evaluation and tables

def test_evaluate_accepts_proclip_models(setup, stage2, tmp_path):
    runs = {"proclip": [f"proclip_checkpoint={stage2}/model.pt"],
            "proclip_stage1": [f"proclip_checkpoint={setup.stage1}/model.pt", f"pretrained={setup.clip}"]}
    for name, args in runs.items():
        evaluate.main(["--config", str(setup.eval_config), f"out_dir={tmp_path}/{name}", "model_type=proclip",
                       "device=cpu", *args])
        files = sorted(p.name for p in (tmp_path / name).glob("*.json"))
        assert files == ["coco_val_modality_gap.json", "coco_val_zeroshot_retrieval.json",
                         "count_zeroshot_classification.json", "long_val_zeroshot_retrieval.json",
                         "shape_zeroshot_classification.json"]
        metrics = json.loads((tmp_path / name / "coco_val_zeroshot_retrieval.json").read_text())["metrics"]
        assert 0 <= metrics["text_retrieval_recall@1"] <= metrics["text_retrieval_recall@5"] <= 1
    # model_type=auto (the default): a ProCLIP model.pt passed as pretrained= is evaluated as ProCLIP
    evaluate.main(["--config", str(setup.eval_config), f"out_dir={tmp_path}/auto", "device=cpu",
                   f"pretrained={stage2}/model.pt"])
    assert (json.loads((tmp_path / "auto/coco_val_zeroshot_retrieval.json").read_text())["metrics"] ==
            json.loads((tmp_path / "proclip/coco_val_zeroshot_retrieval.json").read_text())["metrics"])


def test_a_probe_text_missing_from_the_cache_is_one_line_naming_the_set_and_fill_cache_collects_it(
        setup, stage2, tmp_path, monkeypatch, capsys):
    config = {**yaml.safe_load(setup.eval_config.read_text()), "zeroshot": {}, "retrieval": {}, "gap_sets": [],
              "pairs": {"pairs": {"annotations": "probes/pairs/pairs.json", "images": "probes/pairs/images"}},
              "hard_negatives": {"compose_add_object": {"annotations": "probes/compose/add_object.json",
                                                        "images": "probes/compose/images"}}}
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = ["--config", str(path), f"out_dir={tmp_path}/out", "model_type=proclip", "device=cpu",
            f"proclip_checkpoint={stage2}/model.pt"]
    monkeypatch.setattr("sys.argv", ["evaluate.py", *argv])
    with pytest.raises(SystemExit):
        run_cli(evaluate.main, "evaluate.py")
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("evaluate.py: error: pairs set 'pairs': 40 text(s) are not in "
                                                        "the embedding cache")
    assert "fill it with `make embed-cache`" in error
    pairs = json.loads((setup.world / "probes/pairs/pairs.json").read_text())["pairs"]
    items = json.loads((setup.world / "probes/compose/add_object.json").read_text())["items"]
    texts = evaluation_texts(path)
    assert sorted(texts) == sorted([c for p in pairs for c in p["captions"]] +
                                   [i[k] for k in ("positive", "negative") for i in items])
    EmbeddingCache(setup.root / "cache", f"stub-embedder, dim {STUB_DIM}").fill(
        texts, lambda batch: torch.stack([stub_embedding(t) for t in batch]), show_progress=False)
    evaluate.main(argv)  # filled: scored
    assert json.loads((tmp_path / "out/pairs_pair_selection.json").read_text())["metrics"]["num_pairs"] == 20


def test_tables_have_the_four_rows_and_hand_computed_means(tmp_path):
    folders = ["pretrained", "llm2clip", "proclip_stage1", "proclip"]
    for k, name in enumerate(folders):
        for seed in ([None] if name == "pretrained" else [0, 1]):
            folder = tmp_path / name if seed is None else tmp_path / name / f"seed{seed}"
            folder.mkdir(parents=True)
            for s, dataset in enumerate(["coco_val", "long_val", "paraphrase_val"]):
                metrics = {"text_retrieval_recall@1": 0.1 * k + 0.01 * s, "image_retrieval_recall@1": 0.05 * s,
                           "num_images": 1000, "num_texts": 1000}
                (folder / f"{dataset}_zeroshot_retrieval.json").write_text(
                    json.dumps({"dataset": dataset, "task": "zeroshot_retrieval", "metrics": metrics}))
            for t, task in enumerate(["color", "shape"]):  # seed 1 is 2 points above seed 0
                acc = 0.5 + 0.1 * t + 0.01 * k + 0.02 * (seed or 0)
                (folder / f"{task}_zeroshot_classification.json").write_text(json.dumps(
                    {"dataset": task, "task": "zeroshot_classification", "metrics": {"acc1": acc, "num_images": 1500}}))
    proclip_tables(str(tmp_path), seeds=[0, 1])
    table1 = list(csv.reader(open(tmp_path / "table1_proclip.csv")))
    assert table1[0] == ["row", "column", "mean", "sd", "seeds", "se", "values"]
    proclip = {r[1]: float(r[2]) for r in table1 if r[0] == PROCLIP_ROWS[3][1]}
    # ProCLIP row (k=3): I→T = 30, 31, 32 -> mean 31; T→I = 0, 5, 10 -> mean 5.
    assert list(proclip) == ["coco_val I→T", "coco_val T→I", "long_val I→T", "long_val T→I",
                             "paraphrase_val I→T", "paraphrase_val T→I", "mean I→T", "mean T→I"]
    assert list(proclip.values()) == pytest.approx([30, 0, 31, 5, 32, 10, 31, 5])
    table2 = list(csv.reader(open(tmp_path / "table2_proclip.csv")))
    llm2clip = {r[1]: (float(r[2]), float(r[3])) for r in table2 if r[0] == PROCLIP_ROWS[1][1]}  # k=1
    assert llm2clip["color"] == pytest.approx((52, 2 ** 0.5)) and llm2clip["mean"][0] == pytest.approx(57)
    text = (tmp_path / "table2_proclip.md").read_text()
    assert "| ViT-B/32 | 65.20 | 46.30 | 53.10 | 49.00 | 59.00 |" in text  # the paper's numbers beside
    # d = 2 points on both seeds (no spread), but each mean over 2 tasks of 1,500 images has a binomial s.e. of
    # ~0.89 points, so u = sqrt(0.89² + 0.90²) = 1.26 and 2 < 2u: within noise
    assert "ProCLIP beats LLM2CLIP on mean zero-shot — within noise (difference +2 ± 1.3, 2 seeds)" in text
    assert "(59.00 vs 57.00" in text


# ---------------------------------------------------------------- the cache and the embedder as tokenizer

def test_evaluation_texts_are_the_prompts_and_captions_evaluate_uses(setup):
    expected = []
    for task in ("shape", "count"):
        folder = setup.world / "zeroshot" / task
        classnames = [name for _, name in read_classnames(folder / "classnames.txt")]
        templates = (folder / "templates.txt").read_text().splitlines()
        expected += [t.replace("{c}", c) for c in classnames for t in templates]
    for name in ("captions_val.json", "long_val.json"):
        expected += [a["caption"] for a in json.loads((setup.world / "coco" / name).read_text())["annotations"]]
    assert sorted(evaluation_texts(setup.eval_config)) == sorted(expected)


def test_filled_cache_is_opened_for_its_own_embedder_only_and_a_full_cache_loads_no_model(tmp_path, monkeypatch):
    EmbeddingCache(tmp_path, "stub-embedder, dim 2").fill(["a", "b"], lambda b: torch.ones(len(b), 2),
                                                          show_progress=False)
    assert len(open_filled_cache(tmp_path, "stub-embedder")) == 2
    with pytest.raises(ValueError, match="was built by embedder"):
        open_filled_cache(tmp_path, "other-embedder")
    with pytest.raises(FileNotFoundError, match="never filled"):
        open_filled_cache(tmp_path / "absent", "stub-embedder")
    monkeypatch.setattr(embedder_module, "load_embedder", lambda *a, **k: pytest.fail("the embedder was loaded"))
    assert len(fill_cache("stub-embedder", tmp_path, ["b", "a", "a"])) == 2


def test_tokenizer_reads_the_cache_and_embeds_only_the_missing_texts(tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path, f"stub-embedder, dim {STUB_DIM}")
    cache.fill(["a red circle"], lambda batch: torch.stack([stub_embedding(t) for t in batch]), show_progress=False)
    embedded = []
    monkeypatch.setattr(proclip_module, "load_embedder", lambda name, device, chat_template: "the model")
    monkeypatch.setattr(proclip_module, "embed_texts", lambda model, texts: embedded.append(list(texts)) or
                        torch.stack([stub_embedding(t) + 1 for t in texts]))  # + 1: tells the two sources apart
    texts = ["a red circle", "a crimson disc", "a red circle"]
    out = EmbedderTokenizer("stub-embedder", cache)(texts)
    assert embedded == [["a crimson disc"]]
    torch.testing.assert_close(out, torch.stack([stub_embedding(texts[0]), stub_embedding(texts[1]) + 1,
                                                 stub_embedding(texts[0])]))


def test_random_init_stages_are_reproducible(setup, tmp_path):
    """pretrained=random: the stages seed (seed=) before building the CLIP, so its random weights do not depend on
    what drew from torch's generator before."""
    for stage, main, extra in (("stage1", proclip_stage1.main, []), ("stage2", proclip_stage2.main, ["adapter="])):
        weights = []
        for run, before in (("a", 123), ("b", 456)):
            torch.manual_seed(before)  # whatever ran before
            main([f"run_dir={tmp_path / stage / run}", "max_steps=2", *setup.common, "pretrained=random", *extra])
            record = load_checkpoint_file(tmp_path / stage / run / "model.pt")
            weights.append({**{f"adapter.{k}": v for k, v in record["adapter"].items()},
                            **{f"visual.{k}": v for k, v in record.get("visual", {}).items()}})
        assert weights[0].keys() == weights[1].keys()
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0]), stage


class StubEmbedder:
    """load_embedder's stand-in: stub_embedding for every text."""

    def get_embedding_dimension(self):
        return STUB_DIM

    def encode(self, texts, **kwargs):
        return torch.stack([stub_embedding(t) for t in texts])


def test_your_own_csv_names_the_command_that_fills_a_cache_of_your_own(setup, tmp_path, monkeypatch, capsys):
    # A CSV of one's own (a `title` column), a cache folder of one's own: the stage stops before any model is built
    # and names the fill command for exactly this run; that command, run as printed, lets the same run train.
    with open(setup.world / "recaption.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:24]
    with open(tmp_path / "mine.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "title"])
        writer.writerows([os.path.join(setup.world, r["filepath"]), f"my own caption: {r['short']}"] for r in rows)
    run = [f"train_data={tmp_path / 'mine.csv'}", "csv_caption_keys=[title]", "instance_long_captions=false",
           f"embedding_cache={tmp_path / 'my_cache'}", f"run_dir={tmp_path / 'run'}", "max_steps=2",
           *[a for a in setup.common if not a.startswith(("train_data=", "embedding_cache="))]]
    with pytest.raises(SystemExit):
        run_cli(lambda: proclip_stage1.main(["--config", "configs/toy/proclip_stage1.yaml", *run]), "proclip_stage1.py")
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and "does not exist or was never filled" in message
    command = message[message.index("`python -m tools.fill_cache") + 1:message.rindex("`")]
    words = shlex.split(command)
    assert words[:5] == ["python", "-m", "tools.fill_cache", "--stage1-config", "configs/toy/proclip_stage1.yaml"]
    monkeypatch.setattr(embedder_module, "load_embedder", lambda *a, **k: StubEmbedder())
    shared = len(open_filled_cache(setup.root / "cache", "stub-embedder"))
    fill_cache_tool.main(words[3:])
    cache = open_filled_cache(tmp_path / "my_cache", "stub-embedder")
    assert len(cache) == 24 and "my own caption: " + rows[0]["short"] in cache  # the user's texts, and only them
    assert len(open_filled_cache(setup.root / "cache", "stub-embedder")) == shared  # the shared cache: left alone
    proclip_stage1.main(["--config", "configs/toy/proclip_stage1.yaml", *run])
    assert (tmp_path / "run" / "model.pt").exists()

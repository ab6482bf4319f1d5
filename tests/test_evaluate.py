"""evaluate.py on a tiny world and a tiny CLIP: the CLIP_benchmark-style JSON files, and the tables."""
import csv
import json
import shutil

import pytest
from PIL import Image

import evaluate
from tools import tables


def test_evaluate_writes_one_json_per_dataset_and_task(tiny_world, tiny_clip, tmp_path, capsys):
    out = tmp_path / "results" / "pretrained"
    evaluate.main(["--config", "configs/toy/eval.yaml", f"data_root={tiny_world}", f"pretrained={tiny_clip}",
                   f"out_dir={out}", "batch_size=64", "num_workers=0"])
    printed = capsys.readouterr()  # not a terminal, as when the output goes to a file
    *lines, summary = printed.out.splitlines()
    records = [json.loads(line) for line in lines]  # a JSON line per file, as the file holds it
    assert records == [json.load(open(out / f"{r['dataset']}_{r['task']}.json")) for r in records]
    assert len(records) == len(list(out.glob("*.json")))
    zero_shot = [r["metrics"]["acc1"] for r in records if r["task"] == "zeroshot_classification"]
    coco = json.load(open(out / "coco_val_zeroshot_retrieval.json"))["metrics"]
    gap = json.load(open(out / "coco_val_modality_gap.json"))["metrics"]
    assert summary == (f"pretrained: mean zero-shot {100 * sum(zero_shot) / len(zero_shot):.2f}% over 8 tasks; "
                       f"coco_val R@1 I→T {100 * coco['text_retrieval_recall@1']:.2f}% "
                       f"T→I {100 * coco['image_retrieval_recall@1']:.2f}%; coco_val gap: centroid distance "
                       f"{gap['centroid_distance']:.3f}, relative gap {gap['relative_gap']:.3f}")
    assert printed.err == ""  # no progress line of a bar that took less than 30 s
    names = sorted(p.name for p in out.glob("*.json"))
    tasks = ["color", "count", "position", "shape", "shape_color", "shape_shifted", "shape_sketch", "size"]
    languages = [f"coco_val_{language}" for language in ("en", "fr", "de", "cipher")]
    subsets = ["compose_swap_color", "compose_swap_position", "compose_replace_attribute", "compose_add_object"]
    assert names == sorted([f"{t}_zeroshot_classification.json" for t in tasks]
                           + [f"{s}_zeroshot_retrieval.json" for s in ("coco_val", "long_val", "paraphrase_val",
                                                                      *languages)]
                           + ["coco_val_modality_gap.json", "pairs_pair_selection.json"]
                           + [f"{s}_hard_negatives.json" for s in subsets])
    assert json.load(open(out / "coco_val_fr_zeroshot_retrieval.json"))["language"] == "fr"
    assert json.load(open(out / "coco_val_zeroshot_retrieval.json"))["language"] == "en"
    pairs = json.load(open(out / "pairs_pair_selection.json"))["metrics"]
    assert pairs["num_pairs"] == 20 and pairs["per_pattern_n"] == {p: 4 for p in ("color", "size", "position",
                                                                                  "count", "background")}
    assert pairs["score"] == pytest.approx(sum(pairs["per_pattern"].values()) / 5)
    negatives = json.load(open(out / "compose_add_object_hard_negatives.json"))["metrics"]
    assert set(negatives) == {"accuracy", "accuracy_se", "num_items", "blind_accuracy"}
    assert negatives["num_items"] == 12 and 0 <= negatives["blind_accuracy"] <= 1
    record = json.load(open(out / "shape_zeroshot_classification.json"))
    # CLIP_benchmark's keys, plus the metric the table reads (zeroshot_metric; top-1 unless the suite says otherwise)
    assert set(record) == {"dataset", "model", "pretrained", "task", "metrics", "language", "main_metric"}
    assert record["model"] == "pretrained" and record["task"] == "zeroshot_classification"
    assert record["main_metric"] == "acc1"
    assert set(record["metrics"]) == {"acc1", "acc5", "mean_per_class_recall", "num_images"}
    assert record["metrics"]["num_images"] == len(list((tiny_world / "zeroshot/shape/test").rglob("*.png")))
    assert "acc5" not in json.load(open(out / "size_zeroshot_classification.json"))["metrics"]  # 2 classes
    retrieval = json.load(open(out / "coco_val_zeroshot_retrieval.json"))["metrics"]
    assert retrieval["image_retrieval_recall@10"] >= retrieval["image_retrieval_recall@1"]
    gap = json.load(open(out / "coco_val_modality_gap.json"))["metrics"]
    assert set(gap) == set(tables.GAP_STATISTICS) | {f"{s}_se" for s in tables.GAP_STATISTICS}
    assert all(gap[f"{s}_se"] >= 0 for s in tables.GAP_STATISTICS) and gap["centroid_distance_se"] > 0
    assert (out / "done").exists() and (out / "eval_config.yaml").exists()

    # the gap figure reads the saved pair features of two rows
    shutil.copytree(out, tmp_path / "results" / "clip_refine")
    png = tables.modality_gap_figure(str(tmp_path / "results"))
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > image.size[1] > 300
    first = open(png, "rb").read()
    assert open(tables.modality_gap_figure(str(tmp_path / "results")), "rb").read() == first  # deterministic


def test_images_decoded_once_give_the_same_numbers_as_decoding_per_item(tiny_world, tiny_clip, tmp_path):
    outputs = []
    for name, cache in (("per_item", ""), ("cached", str(tmp_path / "images"))):
        evaluate.main(["--config", "configs/toy/eval.yaml", f"data_root={tiny_world}", f"pretrained={tiny_clip}",
                       f"out_dir={tmp_path / name}", "batch_size=64", "num_workers=0", f"image_cache={cache}"])
        outputs.append({p.name: json.load(open(p))["metrics"] for p in (tmp_path / name).glob("*.json")})
    assert outputs[0] == outputs[1] and len(outputs[0]) == 21
    assert list((tmp_path / "images").glob("*.pt")), "the decoded images were cached"


def test_unknown_gap_set_is_refused(tiny_world, tiny_clip, tmp_path):
    with pytest.raises(ValueError, match=r"gap_sets \['coco'\] are not retrieval sets"):
        evaluate.main(["--config", "configs/toy/eval.yaml", f"data_root={tiny_world}", f"pretrained={tiny_clip}",
                       f"out_dir={tmp_path}", "gap_sets=[coco]"])


def test_arch_comes_from_the_checkpoint_and_a_wrong_one_is_one_line(tiny_world, tiny_clip, tmp_path):
    """No arch=: the arch the file records, else its run's config.yaml; an arch that does not fit the weights is a
    user error naming the recorded one; explicit arch= still works."""
    import torch
    import yaml
    from common.config import USER_ERRORS

    base = ["--config", "configs/toy/eval.yaml", f"data_root={tiny_world}", "batch_size=64", "num_workers=0",
            "zeroshot={shape: zeroshot/shape}"]
    metrics = lambda out: {p.name: json.load(open(p))["metrics"] for p in out.glob("*.json")}
    evaluate.main(base + [f"pretrained={tiny_clip}", f"out_dir={tmp_path / 'recorded'}"])
    assert yaml.safe_load(open(tmp_path / "recorded/eval_config.yaml"))["arch"] == "ToyCLIP"
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"state_dict": torch.load(tiny_clip, weights_only=True)["state_dict"]}, run / "model.pt")  # no arch=
    (run / "config.yaml").write_text("arch: ToyCLIP\nobjective: contrastive\n")
    evaluate.main(base + [f"pretrained={run / 'model.pt'}", f"out_dir={tmp_path / 'run_config'}"])
    evaluate.main(base + [f"pretrained={run / 'model.pt'}", "arch=ToyCLIP", f"out_dir={tmp_path / 'explicit'}"])
    assert metrics(tmp_path / "recorded") == metrics(tmp_path / "run_config") == metrics(tmp_path / "explicit")
    with pytest.raises(USER_ERRORS, match=r"does not fit arch=ViT-B-32 .*it records arch=ToyCLIP: pass arch=ToyCLIP"):
        evaluate.main(base + [f"pretrained={tiny_clip}", "arch=ViT-B-32", f"out_dir={tmp_path / 'wrong'}"])
    (run / "config.yaml").unlink()
    with pytest.raises(USER_ERRORS, match="records no arch"):
        evaluate.main(base + [f"pretrained={run / 'model.pt'}", f"out_dir={tmp_path / 'bare'}"])
    with pytest.raises(USER_ERRORS, match="open_clip tag or random init needs arch="):
        evaluate.main(base + ["pretrained=random", f"out_dir={tmp_path / 'random'}"])


def test_an_untrained_model_is_the_same_every_time(tiny_world, tmp_path):
    import torch

    base = ["--config", "configs/toy/eval.yaml", f"data_root={tiny_world}", "batch_size=64", "num_workers=0",
            "zeroshot={shape: zeroshot/shape}", "retrieval={}", "gap_sets=[]", "pretrained=random", "arch=ToyCLIP"]
    scores = []
    for name, before in (("first", 123), ("second", 456)):
        torch.manual_seed(before)  # whatever drew from torch's generator before
        evaluate.main(base + [f"out_dir={tmp_path / name}"])
        scores.append(json.load(open(tmp_path / name / "shape_zeroshot_classification.json"))["metrics"])
    assert scores[0] == scores[1]


def test_one_process_evaluates_each_seed_as_its_own_run_would(tiny_world, tmp_path):
    base = ["--config", "configs/toy/eval.yaml", f"data_root={tiny_world}", "batch_size=64", "num_workers=0",
            "zeroshot={shape: zeroshot/shape, color: zeroshot/color}", "pairs={}", "hard_negatives={}",
            "pretrained=random", "arch=ToyCLIP", "name=row"]
    evaluate.main(base + ["seeds=[0,1]", f"out_dir={tmp_path}/together/seed{{seed}}"])
    for seed in (0, 1):
        evaluate.main(base + [f"seed={seed}", f"out_dir={tmp_path}/alone/seed{seed}"])
    read = lambda folder: {p.name: json.load(open(p)) for p in sorted(folder.glob("*.json"))}
    together = [read(tmp_path / "together" / f"seed{s}") for s in (0, 1)]
    assert together == [read(tmp_path / "alone" / f"seed{s}") for s in (0, 1)] and len(together[0]) == 10
    assert together[0]["shape_zeroshot_classification.json"] != together[1]["shape_zeroshot_classification.json"]
    assert all((tmp_path / "together" / f"seed{s}" / "done").exists() for s in (0, 1))


def test_seeds_need_their_placeholder_and_a_missing_model_stops_before_any_is_evaluated(tiny_world, tiny_clip,
                                                                                       tmp_path):
    base = ["--config", "configs/toy/eval.yaml", f"data_root={tiny_world}", "num_workers=0"]
    with pytest.raises(ValueError, match=r"seeds=\[0, 1\] with out_dir=.*: every seed would write there; put "
                                         r'"\{seed\}" in it'):
        evaluate.main(base + ["seeds=[0,1]", f"out_dir={tmp_path}/row", f"pretrained={tiny_clip}"])
    with pytest.raises(ValueError, match=r'"\{seed\}" is replaced only with seeds=\[\.\.\.\]'):
        evaluate.main(base + [f"out_dir={tmp_path}/seed{{seed}}", f"pretrained={tiny_clip}"])
    (tmp_path / "seed0").mkdir()
    shutil.copy(tiny_clip, tmp_path / "seed0/model.pt")
    with pytest.raises(ValueError, match=r"pretrained='.*seed1/model.pt' is none"):
        evaluate.main(base + ["seeds=[0,1]", f"out_dir={tmp_path}/out/seed{{seed}}",
                              f"pretrained={tmp_path}/seed{{seed}}/model.pt"])
    assert not (tmp_path / "out").exists()  # seed 0's model was there, and nothing was evaluated


def fake_result(folder, dataset, task, metrics):
    folder.mkdir(parents=True, exist_ok=True)
    record = {"dataset": dataset, "model": folder.name, "pretrained": "", "task": task, "metrics": metrics,
              "language": "en"}
    (folder / f"{dataset}_{task}.json").write_text(json.dumps(record))


def fake_refine_results(root, seeds=(0, 1, 2)):
    """Pre-trained (no seed) and each refine row per seed: shape 50% + i% + s%, color 70%, gap 1 − 0.1 i."""
    for i, (row, _) in enumerate(tables.REFINE_ROWS):
        for s in ([None] if row == "pretrained" else seeds):
            folder = root / row if s is None else root / row / f"seed{s}"
            shift = 0 if s is None else s
            fake_result(folder, "shape", "zeroshot_classification", {"acc1": 0.5 + 0.01 * i + 0.01 * shift,
                                                                     "num_images": 1500})
            fake_result(folder, "color", "zeroshot_classification", {"acc1": 0.7, "num_images": 1500})
            fake_result(folder, "coco_val", "zeroshot_retrieval", {"image_retrieval_recall@1": 0.25,
                        "text_retrieval_recall@1": 0.5, "num_images": 1000, "num_texts": 5000})
            fake_result(folder, "coco_val", "modality_gap", {**{s: 1.0 - 0.1 * i for s in tables.GAP_STATISTICS},
                                                             **{f"{s}_se": 0.01 for s in tables.GAP_STATISTICS}})


def test_refine_table_shows_mean_and_sd_over_seeds_and_judges_the_claims(tmp_path):
    fake_refine_results(tmp_path)
    text = tables.refine_table(str(tmp_path), seeds=[0, 1, 2])
    cells = {(r[0], r[1]): r for r in csv.reader(open(tmp_path / "table1_refine.csv"))}
    # CLIP-Refine (i = 6): shape 56, 57, 58 -> mean 57, sd 1; mean zero-shot (56+70)/2 ... -> 63.5, sd 0.5
    shape = cells[("CLIP-Refine", "shape")]
    assert float(shape[2]) == pytest.approx(57.0) and float(shape[3]) == pytest.approx(1.0) and shape[4] == "3"
    assert float(shape[5]) == pytest.approx(100 * (0.57 * 0.43 / 1500) ** 0.5)  # binomial s.e. at the mean
    assert float(cells[("CLIP-Refine", "mean zero-shot")][2]) == pytest.approx(63.5)
    assert cells[("Pre-trained", "shape")][4] == "1"
    assert "| CLIP-Refine | 70.00 ± 0.00 | 57.00 ± 1.00 | 63.50 ± 0.50 |" in text
    assert "s.e. of one evaluation" in text and "52.74" in text, "the s.e. row, and the paper's numbers beside"
    # gap: 0.4 for CLIP-Refine vs 1.0 pre-trained on every seed, s.e. 0.01 each: far beyond 2u
    assert "shrinks the gap — holds" in text
    assert float(cells[("CLIP-Refine", "centroid_distance")][5]) == pytest.approx(0.01)
    # mean zero-shot: d = 63.5 - 60 = 3.5 with s.e. ~0.9 (binomial, both rows): holds
    assert "keeps mean zero-shot (within noise = kept at this precision) — holds" in text
    assert (tmp_path / "table1_refine.md").read_text() == text


def test_table_uses_only_the_seeds_asked_for(tmp_path):
    fake_refine_results(tmp_path, seeds=(0, 1))
    assert "1 seed, no seed spread" in tables.refine_table(str(tmp_path), seeds=[1])
    with pytest.raises(FileNotFoundError, match="no results in .*contrastive/seed2"):
        tables.refine_table(str(tmp_path), seeds=[0, 1, 2])


def test_table_with_a_missing_row_is_an_error_not_a_table(tmp_path):
    fake_result(tmp_path / "pretrained", "shape", "zeroshot_classification", {"acc1": 0.5})
    with pytest.raises(FileNotFoundError, match="no results in .*contrastive"):
        tables.refine_table(str(tmp_path))
    assert not (tmp_path / "table1_refine.md").exists()


def test_results_blocks_are_filled_from_the_files_they_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.md").write_text("## Title\n\n| a |\n|---|\n| 1.00 ± 0.10 |\n")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- begin t.md -->\nold numbers\n<!-- end t.md -->\noutro\n")
    assert "1 block" in tables.fill_results(str(readme))
    assert readme.read_text() == "intro\n<!-- begin t.md -->\n| a |\n|---|\n| 1.00 ± 0.10 |\n<!-- end t.md -->\noutro\n"
    readme.write_text("<!-- begin absent.md -->\npending\n<!-- end absent.md -->\n")
    assert "left 1 as they were, their files are missing: absent.md" in tables.fill_results(str(readme))
    assert readme.read_text() == "<!-- begin absent.md -->\npending\n<!-- end absent.md -->\n"


def test_gap_standard_errors_shrink_with_more_pairs():
    import torch
    torch.manual_seed(0)
    small, large = (evaluate.gap_standard_errors(torch.randn(n, 8) + 1, torch.randn(n, 8)) for n in (100, 1600))
    for name, value in small.items():  # a bootstrap s.e. falls like 1/sqrt(n): 16x the pairs, about 1/4
        assert 0 < large[name] < value / 2, name


def fake_probe_results(root, proclip_pairs=(40.0, 42.0, 41.0), proclip_fr=0.30, cipher=0.001, seeds=(0, 1, 2)):
    """Every row of both tables on a pairs set, two compositional subsets, fr / de / cipher and a sketch task."""
    rows = [("pretrained", None)] + [(row, s) for row, _ in tables.REFINE_ROWS[1:] for s in seeds] + \
        [(row, s) for row in ("llm2clip", "proclip_stage1", "proclip") for s in seeds]
    for row, s in rows:
        folder = root / row if s is None else root / row / f"seed{s}"
        score = proclip_pairs[s] if row == "proclip" else 30.0
        fake_result(folder, "pairs", "pair_selection", {
            "score": score, "score_se": 1.3, "per_pattern": {"color": score + 5, "count": score - 5},
            "per_pattern_n": {"color": 240, "count": 240}, "num_pairs": 480})
        for subset in ("compose_swap_color", "compose_add_object"):
            fake_result(folder, subset, "hard_negatives", {"accuracy": 0.6, "accuracy_se": 0.015,
                                                           "num_items": 1008, "blind_accuracy": 0.5})
        for language, r1 in (("fr", proclip_fr if row == "proclip" else 0.1 if row != "pretrained" else 0.02),
                             ("de", 0.2 if row in ("proclip", "llm2clip") else 0.02), ("cipher", cipher)):
            record = {"image_retrieval_recall@1": r1, "text_retrieval_recall@1": r1, "num_images": 1000,
                      "num_texts": 1000}
            fake_result(folder, f"coco_val_{language}", "zeroshot_retrieval", record)
            path = folder / f"coco_val_{language}_zeroshot_retrieval.json"
            path.write_text(path.read_text().replace('"language": "en"', f'"language": "{language}"'))
        fake_result(folder, "shape_sketch", "zeroshot_classification", {"acc1": 0.4, "num_images": 1500})
        fake_result(folder, "shape", "zeroshot_classification", {"acc1": 0.9, "num_images": 1500})


def test_probes_table_has_every_row_and_group_and_judges_its_claims(tmp_path):
    fake_probe_results(tmp_path)
    (tmp_path / "language_ceiling.json").write_text(json.dumps(
        {"embedder": "toy", "num_texts": 1000, "recall@1": {"fr": 0.27, "de": 0.25, "cipher": 0.001}}))
    text = tables.probes_table(str(tmp_path), seeds=[0, 1, 2])
    cells = {(r[0], r[1]): r for r in csv.reader(open(tmp_path / "table_probes.csv"))}
    assert float(cells[("ProCLIP", "pairs score")][2]) == pytest.approx(41.0)
    assert float(cells[("ProCLIP", "pairs score")][5]) == pytest.approx(1.3)  # the pair set's own s.e.
    assert float(cells[("ProCLIP", "pairs color")][5]) == pytest.approx(100 * (0.46 * 0.54 / 240) ** 0.5)
    assert float(cells[("ProCLIP", "compositional mean")][2]) == pytest.approx(60.0)
    assert float(cells[("ProCLIP", "languages mean R@1")][2]) == pytest.approx((30 + 20) / 2)  # not the cipher
    assert float(cells[("CLIP-Refine", "shape_sketch (zero-shot)")][2]) == pytest.approx(40.0)
    labels = {r[0] for r in list(csv.reader(open(tmp_path / "table_probes.csv")))[1:]}
    assert labels == {label for _, label in tables.REFINE_ROWS[1:]} | {label for _, label in tables.PROCLIP_ROWS}
    assert "ProCLIP ≥ LLM2CLIP on the pairs score (within noise = ≥ at this precision) — holds" in text
    assert "ProCLIP beats CLIP on the second language — holds" in text
    assert "coco_val_cipher (invented words) at chance for every model — holds" in text
    assert "fr 27.00, de 25.00, cipher 0.10; chance 0.10" in text and "Image-blind accuracy" in text
    # the table of the other sets is unchanged by the probes: no language set, no sketch
    fake_refine_results(tmp_path)
    assert "sketch" not in tables.refine_table(str(tmp_path)) and "cipher" not in tables.refine_table(str(tmp_path))


def test_probes_table_claims_can_fail(tmp_path):
    fake_probe_results(tmp_path, proclip_pairs=(20.0, 21.0, 19.0), proclip_fr=0.0, cipher=0.05)
    text = tables.probes_table(str(tmp_path))
    assert "ProCLIP ≥ LLM2CLIP on the pairs score (within noise = ≥ at this precision) — fails" in text
    assert "at chance for every model — fails: above chance for" in text
    assert "ProCLIP ≥ LLM2CLIP on the second language (mean R@1 over fr, de; within noise = ≥ at this precision) — " \
           "holds" not in text
    assert "Claims in this run" not in tables.probes_table(str(tmp_path), claims=False)


def test_a_missing_probe_file_is_found_before_any_model_is_built(tiny_world, tmp_path):
    # the weights file does not exist either: the data check must come first
    with pytest.raises(FileNotFoundError, match=r"1 evaluation paths do not exist \(first: .*nowhere/pairs\.json\)"):
        evaluate.main(["--config", "configs/toy/eval.yaml", f"data_root={tiny_world}", f"out_dir={tmp_path}/e",
                       "pretrained=no/such/model.pt", "arch=ToyCLIP",
                       "pairs={pairs: {annotations: nowhere/pairs.json, images: probes/pairs/images}}"])


def test_texts_batched_by_length_come_back_in_the_order_given(tiny_clip):
    import torch
    from types import SimpleNamespace
    from common.models import build_clip, encode_text

    model, _, _, tokenizer = build_clip("ToyCLIP", tiny_clip)
    model.eval()
    texts = ["a red circle", "a big blue square on the left of a small green triangle", "a square",
             "two yellow triangles", "a red circle"]
    with torch.no_grad():
        one_by_one = torch.cat([encode_text(model, tokenizer([t])).float() for t in texts])
    batched = evaluate.encode_texts(model, tokenizer, texts, SimpleNamespace(batch_size=2), "cpu", "texts")
    torch.testing.assert_close(batched, one_by_one, rtol=1e-4, atol=1e-5)
    memo = {}
    features = evaluate.features_of_texts(model, tokenizer, texts, SimpleNamespace(batch_size=2), "cpu", "set", memo)
    assert len(memo) == 4 and torch.equal(features[0], features[4])  # the repeated caption encoded once
    torch.testing.assert_close(features, one_by_one, rtol=1e-4, atol=1e-5)


def test_skipped_sets_are_not_evaluated_and_the_others_are_as_without_them(tiny_world, tmp_path):
    """skip_sets (the toy CLIP-Refine rows skip the sets only the ProCLIP tables read): no file for a skipped set,
    the other sets' files as a full evaluation writes them, and a name that is no set of the suite is refused."""
    from common.config import USER_ERRORS

    base = ["--config", "configs/toy/eval.yaml", f"data_root={tiny_world}", "batch_size=64", "num_workers=0",
            "zeroshot={shape: zeroshot/shape}", "pairs={}", "hard_negatives={}", "pretrained=random", "arch=ToyCLIP",
            "name=row"]
    evaluate.main(base + [f"out_dir={tmp_path}/all"])
    evaluate.main(base + [f"out_dir={tmp_path}/skipped", "skip_sets=[long_val,paraphrase_val]"])
    read = lambda folder: {p.name: json.load(open(p)) for p in sorted(folder.glob("*.json"))}
    every, skipped = read(tmp_path / "all"), read(tmp_path / "skipped")
    gone = {"long_val_zeroshot_retrieval.json", "paraphrase_val_zeroshot_retrieval.json"}
    assert gone <= every.keys() and skipped == {name: record for name, record in every.items() if name not in gone}
    with pytest.raises(USER_ERRORS, match=r"skip_sets \['long_vall'\] are not sets of the suite; its sets: \['shape', "
                                          r"'coco_val'"):
        evaluate.main(base + [f"out_dir={tmp_path}/typo", "skip_sets=[long_vall]"])

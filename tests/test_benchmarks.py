"""`make bench`'s GPU train-step benchmark: its skip line without a GPU, and its code path on CPU (ToyCLIP, tiny
batch: ViT-B/32 takes ~50 s on 2 CPU cores)."""
import importlib.util
import json
import os

import torch

spec = importlib.util.spec_from_file_location("benchmarks", os.path.join(os.path.dirname(__file__), "benchmarks.py"))
benchmarks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmarks)


def test_gpu_bench_says_it_is_skipped_without_a_gpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    benchmarks.bench_gpu_train_step_vit_b32()
    assert json.loads(capsys.readouterr().out) == {"bench": "gpu_train_step_vit_b32", "skipped": "no GPU: skipped"}


def test_gpu_bench_step_runs_on_cpu_with_a_tiny_batch(capsys):
    benchmarks.bench_gpu_train_step_vit_b32(batch_size=4, steps=1, warmup=1, device="cpu", arch="ToyCLIP")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [line["objective"] for line in lines] == ["contrastive", "clip_refine"]
    assert all(line["batch_size"] == 4 and line["steps_per_s"] > 0 for line in lines)


def test_the_matmul_speed_that_scales_the_reproductions_time_is_single_threaded_and_leaves_the_threads_as_they_were(
        monkeypatch):
    threads = torch.get_num_threads()
    seen = []
    matmul = torch.Tensor.__matmul__
    monkeypatch.setattr(torch.Tensor, "__matmul__", lambda a, b: seen.append(torch.get_num_threads()) or matmul(a, b))
    assert benchmarks.matmul_gflops(n=64, repeats=3) > 0
    assert seen == [1] * 4 and torch.get_num_threads() == threads
    assert benchmarks.cpu_name()

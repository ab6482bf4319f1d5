"""Weights offline (common/weights.py, tools/weights.py): with the network really blocked (`unshare -rn`, a new
network namespace with no interface up), a weight that is not in the weights folder fails at once in one line
naming `make weights`, one that is there is read without network, and the data is checked before any of it.

The fetch itself needs the hub (no network here); what is tested is what it leaves behind: a Hugging Face cache
folder, written here in that layout by hand, which `check` and the programs then read."""
import os
import subprocess
import sys

import pytest
import torch

from common.config import USER_ERRORS
from common.weights import OPEN_CLIP_FILES, Weight, embedder_weight, local_path, open_clip_weight
from tools import weights as weights_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPENAI = ("timm/vit_base_patch32_clip_224.openai", "ViT-B-32-quickgelu pretrained=openai")
TEST_REPO = "postclip-test/toyclip"  # a ToyCLIP tag registered for the test, read from the fake cache


def network_blocked():
    try:
        return subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0
    except OSError:
        return False


needs_unshare = pytest.mark.skipif(not network_blocked(), reason="the kernel refuses unshare -rn (no user/network "
                                                                  "namespaces): the network cannot be blocked")


def put_in_cache(cache, repo, files):
    """What hf_hub_download / snapshot_download leave: models--ORG--NAME/{refs/main, snapshots/REV/FILE}."""
    folder = os.path.join(cache, "models--" + repo.replace("/", "--"))
    os.makedirs(os.path.join(folder, "refs"), exist_ok=True)
    with open(os.path.join(folder, "refs", "main"), "w") as f:
        f.write("0" * 40)
    for name, write in files.items():
        path = os.path.join(folder, "snapshots", "0" * 40, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write(path)


def offline_run(args, cache, tmp_path, register_tag=False):
    """python ARGS... in a process without network, HF_HUB_OFFLINE=1 and the weights folder `cache`."""
    register = (f"import open_clip.pretrained as p; p._PRETRAINED['ToyCLIP'] = "
                f"{{'testtag': p._pcfg(hf_hub='{TEST_REPO}/')}}; " if register_tag else "")
    code = (f"import sys, runpy; sys.path.insert(0, {ROOT!r}); {register}sys.argv = {args!r}; "
            f"runpy.run_path(sys.argv[0], run_name='__main__')" if args[0].endswith(".py") else
            f"import sys, runpy; sys.path.insert(0, {ROOT!r}); {register}sys.argv = ['x', *{args[1:]!r}]; "
            f"runpy.run_module({args[0]!r}, run_name='__main__', alter_sys=True)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "PYTHONPATH": ROOT}
    return subprocess.run(["unshare", "-rn", sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=tmp_path)


def test_the_weights_of_a_config_are_its_open_clip_tag_and_its_embedder(tiny_clip):
    assert open_clip_weight("ViT-B-32-quickgelu", "openai") == Weight(OPENAI[1], OPENAI[0], OPEN_CLIP_FILES)
    assert open_clip_weight("ToyCLIP", tiny_clip) is None and open_clip_weight("ViT-B-32", "random") is None
    paper = embedder_weight("llm2vec:microsoft/LLM2CLIP-Llama-3-8B-Instruct-CC-Finetuned")
    assert paper.repo == "microsoft/LLM2CLIP-Llama-3-8B-Instruct-CC-Finetuned" and paper.files == ()
    assert embedder_weight("all-MiniLM-L6-v2").repo == "sentence-transformers/all-MiniLM-L6-v2"
    assert embedder_weight("toy") is None and embedder_weight("/models/qwen") is None
    found = weights_tool.preset_weights([f"{ROOT}/configs/paper/{n}.yaml" for n in
                                         ("refine", "proclip_stage1", "proclip_stage2", "eval_refine")], {})
    assert [w.repo for w in found] == [OPENAI[0], paper.repo]  # the paper preset: one CLIP, one embedder
    assert weights_tool.preset_weights([f"{ROOT}/configs/paper/proclip_stage1.yaml"],
                                       {"pretrained": "random", "embedder": "toy"}) == {}  # make test-paper's


def test_check_names_what_is_missing_and_finds_what_is_there(tmp_path, capsys):
    configs = [f"{ROOT}/configs/paper/refine.yaml", f"{ROOT}/configs/paper/proclip_stage1.yaml"]
    with pytest.raises(USER_ERRORS) as error:
        weights_tool.main(["check", "--dir", str(tmp_path), *configs])
    assert "2 of 2 weights are not in" in str(error.value)
    assert f"make weights PRESET=paper WEIGHTS_DIR={tmp_path}" in str(error.value)
    put_in_cache(tmp_path, OPENAI[0], {"open_clip_model.safetensors": lambda p: open(p, "wb").write(b"x")})
    repo = "microsoft/LLM2CLIP-Llama-3-8B-Instruct-CC-Finetuned"
    half = {"config.json": lambda p: open(p, "w").write("{}"),
            "model.safetensors.index.json": lambda p: open(p, "w").write(
                '{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}'),
            "model-00001-of-00002.safetensors": lambda p: open(p, "wb").write(b"x")}
    put_in_cache(tmp_path, repo, half)  # an interrupted fetch: one shard of two
    assert local_path(embedder_weight(f"llm2vec:{repo}"), str(tmp_path)) is None
    with pytest.raises(USER_ERRORS, match="1 of 2 weights"):
        weights_tool.main(["check", "--dir", str(tmp_path), *configs])
    put_in_cache(tmp_path, repo, {"model-00002-of-00002.safetensors": lambda p: open(p, "wb").write(b"x")})
    capsys.readouterr()
    weights_tool.main(["check", "--dir", str(tmp_path), *configs])
    assert f"all 2 weights are in {tmp_path}" in capsys.readouterr().out


@needs_unshare
def test_offline_a_missing_open_clip_weight_is_one_line_at_once(tiny_world, tmp_path):
    run = offline_run([f"{ROOT}/refine.py", "--config", f"{ROOT}/configs/paper/refine.yaml",
                       f"train_data={tiny_world}/coco/captions_train.json", f"train_images={tiny_world}/coco/train",
                       f"run_dir={tmp_path}/run"], tmp_path / "weights", tmp_path)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "ViT-B-32-quickgelu pretrained=openai" in lines[0], run.stderr
    assert f"make weights PRESET=paper WEIGHTS_DIR={tmp_path}/weights" in lines[0]
    assert "Retrying" not in run.stderr and "Traceback" not in run.stderr


@needs_unshare
def test_offline_a_missing_embedder_is_one_line_at_once(tiny_world, tmp_path):
    run = offline_run(["tools.fill_cache", "--stage1-config", f"{ROOT}/configs/toy/proclip_stage1.yaml",
                       f"train_data={tiny_world}/recaption.csv", "embedder=sentence-transformers/not-on-disk",
                       f"embedding_cache={tmp_path}/cache"], tmp_path / "weights", tmp_path)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "embedder=sentence-transformers/not-on-disk" in lines[0], run.stderr
    assert "make weights" in lines[0] and "Retrying" not in run.stderr


@needs_unshare
def test_data_is_checked_before_any_weight(tmp_path):
    refine = offline_run([f"{ROOT}/refine.py", "--config", f"{ROOT}/configs/paper/refine.yaml",
                          f"train_data={tmp_path}/absent.json", f"run_dir={tmp_path}/run"], tmp_path / "w", tmp_path)
    assert refine.returncode == 2 and "absent.json" in refine.stderr and "make weights" not in refine.stderr
    evaluation = offline_run([f"{ROOT}/evaluate.py", "--config", f"{ROOT}/configs/paper/eval_refine.yaml",
                              f"data_root={tmp_path}/nodata", f"out_dir={tmp_path}/out"], tmp_path / "w", tmp_path)
    assert evaluation.returncode == 2 and "evaluation paths do not exist" in evaluation.stderr, evaluation.stderr
    assert "make weights" not in evaluation.stderr


@needs_unshare
def test_offline_a_weight_in_the_folder_is_read_without_network(tiny_world, tiny_clip, tmp_path):
    """A ToyCLIP tag whose file is in the weights folder: refine.py trains from it with no network at all, from
    exactly those weights."""
    state = torch.load(tiny_clip, weights_only=True)["state_dict"]
    put_in_cache(tmp_path / "weights", TEST_REPO, {"open_clip_pytorch_model.bin": lambda p: torch.save(state, p)})
    args = [f"{ROOT}/refine.py", "--config", f"{ROOT}/configs/toy/refine.yaml", "pretrained=testtag",
            f"train_data={tiny_world}/coco/captions_train.json", f"train_images={tiny_world}/coco/train",
            "max_steps=1", "batch_size=16", "objective=hycd", "lr=0", "weight_decay=0", f"run_dir={tmp_path}/run"]
    run = offline_run(args, tmp_path / "weights", tmp_path, register_tag=True)
    assert run.returncode == 0, run.stderr
    trained = torch.load(tmp_path / "run/model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(trained[k], v) for k, v in state.items())  # lr=0: the weights it read, unchanged
    missing = offline_run(args[:-1] + [f"run_dir={tmp_path}/run2"], tmp_path / "empty", tmp_path, register_tag=True)
    assert missing.returncode == 2 and "ToyCLIP pretrained=testtag" in missing.stderr


def test_make_weights_targets_and_every_step_reading_the_folder(tmp_path):
    make = lambda *args: subprocess.run(["make", "--no-print-directory", f"PYTHON={sys.executable}", *args], cwd=ROOT,
                                        capture_output=True, text=True)
    shown = make("--eval", "show-env: ; @echo $$HF_HUB_CACHE $$HF_HUB_OFFLINE", "show-env", f"WEIGHTS_DIR={tmp_path}")
    assert shown.stdout.split() == [str(tmp_path), "1"]  # every recipe runs offline on the folder
    fetch = make("-n", "weights", "PRESET=paper", f"WEIGHTS_DIR={tmp_path}", "PROCLIP_OVERRIDES=embedder=x/y")
    assert f"env HF_HUB_OFFLINE=0 {sys.executable} -m tools.weights fetch --dir {tmp_path} configs/paper/" \
           in fetch.stdout and "embedder=x/y" in fetch.stdout
    check = make("check-weights", "PRESET=paper", f"WEIGHTS_DIR={tmp_path}")
    assert check.returncode != 0 and f"make weights PRESET=paper WEIGHTS_DIR={tmp_path}" in check.stderr
    assert "MISSING ViT-B-32-quickgelu pretrained=openai" in check.stdout
    assert make("weights", "PRESET=paper").returncode != 0  # no WEIGHTS_DIR: nothing fetched anywhere


@needs_unshare
@pytest.mark.parametrize("config", ["arch: ViT-B-32-quickgelu\npretrained: openai\n", "embedder: test-org/minilm\n"])
def test_fetch_without_network_is_one_line_at_once(tmp_path, config):
    """No retries, no traceback: the first request that cannot connect ends the fetch, naming the way out."""
    (tmp_path / "config.yaml").write_text(config)
    fetched = subprocess.run(["unshare", "-rn", sys.executable, "-m", "tools.weights", "fetch", "--dir",
                              str(tmp_path / "weights"), str(tmp_path / "config.yaml")], capture_output=True,
                             text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "https://huggingface.co"})
    assert fetched.returncode == 2
    weight = "ViT-B-32-quickgelu pretrained=openai (timm/vit_base_patch32_clip_224.openai)" if "arch" in config \
        else "embedder=test-org/minilm (test-org/minilm)"
    assert fetched.stderr.startswith(f"python -m tools.weights: error: cannot reach the Hugging Face hub "
                                     f"(https://huggingface.co) to fetch {weight}: ")
    assert fetched.stderr.endswith("; run `make weights` where there is network (a login node), then use its folder "
                                   "as WEIGHTS_DIR here\n")
    assert fetched.stderr.count("\n") == 1, fetched.stderr  # no retries logged, no traceback


@needs_unshare
def test_fetch_fills_a_folder_that_the_programs_then_read_offline(tiny_clip, tmp_path):
    """`tools.weights fetch` against a local stand-in for the hub (tests/fake_hub.py: the real huggingface_hub
    download code, another address) fills WEIGHTS_DIR; then, with no network at all, `check` finds everything and
    sentence-transformers loads the fetched embedder from it, giving the embeddings of the model it was made from."""
    from common.embedder import toy_embedder_path
    from fake_hub import FakeHub

    folder = toy_embedder_path()  # all-MiniLM-L6-v2's files, served as the repository test-org/minilm
    minilm = {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
              for d, _, files in os.walk(folder) for f in files if "__pycache__" not in d}
    minilm["pytorch_model.bin"] = b"another format of the same weights: left out"
    clip_file = tmp_path / "clip.bin"
    torch.save(torch.load(tiny_clip, weights_only=True)["state_dict"], clip_file)
    config = tmp_path / "config.yaml"
    config.write_text("arch: ToyCLIP\npretrained: testtag\nembedder: test-org/minilm\n")
    weights = tmp_path / "weights"
    with FakeHub({"test-org/minilm": minilm, TEST_REPO: {"open_clip_pytorch_model.bin": clip_file.read_bytes()}}) as hub:
        register = (f"import open_clip.pretrained as p; p._PRETRAINED['ToyCLIP'] = "
                    f"{{'testtag': p._pcfg(hf_hub='{TEST_REPO}/')}}; ")
        code = (f"import sys, runpy; sys.path.insert(0, {ROOT!r}); {register}sys.argv = ['x', 'fetch', '--dir', "
                f"{str(weights)!r}, {str(config)!r}]; runpy.run_module('tools.weights', run_name='__main__')")
        fetched = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                                 env={**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"})
    assert fetched.returncode == 0, fetched.stderr
    assert "all 2 weights are in" in fetched.stdout
    snapshot = local_path(embedder_weight("test-org/minilm"), str(weights))
    assert os.path.isfile(os.path.join(snapshot, "model.safetensors"))
    assert not os.path.exists(os.path.join(snapshot, "pytorch_model.bin"))  # one format of the weights
    check = offline_run(["tools.weights", "check", str(config)], weights, tmp_path, register_tag=True)
    assert check.returncode == 0 and "all 2 weights are in" in check.stdout, check.stderr
    embed = (f"import sys, torch; sys.path.insert(0, {ROOT!r}); from common.embedder import load_embedder; "
             f"vectors = [load_embedder(name).encode(['a red square'], convert_to_tensor=True) for name in "
             f"('test-org/minilm', 'toy')]; print(torch.equal(*vectors))")
    loaded = subprocess.run(["unshare", "-rn", sys.executable, "-c", embed], capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(weights)})
    assert loaded.returncode == 0 and loaded.stdout.split()[-1] == "True", loaded.stderr

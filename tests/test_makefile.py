"""The Makefile's plan (`make -n -B`, nothing run): every post-training row once per seed, paired by seed; the
environment installed once per content of requirements.lock."""
import hashlib
import os
import re
import shutil
import subprocess

import refine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def planned(*args):
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    out = subprocess.run(["make", "--no-print-directory", "-n", "-B", *args, "PYTHON=python"], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout
    return [" ".join(c.split()) for c in out.replace("\\\n", " ").splitlines() if c.strip()]


def make_variable(name, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(["make", "--no-print-directory", "-s", "--eval", "print-%: ; @echo $($*)", f"print-{name}",
                           *args, "PYTHON=python"], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=True).stdout.split()


def test_the_makefiles_objectives_are_refine_pys():
    assert make_variable("REFINE_METHODS") == list(refine.OBJECTIVES)


def test_reproduce_table1_runs_every_row_once_per_seed():
    commands = planned("reproduce-table1", "SEEDS=3 5")
    runs = [c for c in commands if c.startswith("python refine.py --config configs/toy/refine.yaml")]
    assert sorted(re.search(r"objective=(\S+) 'seeds=\[3,5\]' run_dir=runs/toy/refine/(\S+)/seed\{seed\}", c).groups()
                  for c in runs) == sorted((m, m) for m in refine.OBJECTIVES)  # one process per row trains its seeds
    (stage1,) = [c for c in commands if "proclip_stage1.py" in c]
    assert "'seeds=[3,5]' run_dir=runs/toy/proclip/stage1/seed{seed}" in stage1
    (stage2,) = [c for c in commands if "proclip_stage2.py" in c and "reg_weight=0" not in c]
    assert "'seeds=[3,5]' run_dir=runs/toy/proclip/stage2/seed{seed} adapter=runs/toy/proclip/stage1/seed{seed}/" \
           "model.pt" in stage2  # stage 2 of seed S from stage 1 of seed S
    (llm2clip,) = [c for c in commands if "reg_weight=0" in c]
    assert "'seeds=[3,5]' run_dir=runs/toy/llm2clip/seed{seed} adapter= " in llm2clip
    weights = {**{row: f"pretrained=runs/toy/refine/{row}" for row in refine.OBJECTIVES},
               "llm2clip": "proclip_checkpoint=runs/toy/llm2clip", "proclip": "proclip_checkpoint=runs/toy/proclip/stage2",
               "proclip_stage1": "proclip_checkpoint=runs/toy/proclip/stage1"}
    for row, weight in weights.items():  # one process per row evaluates its seeds
        (command,) = [c for c in commands if f" name={row} " in c]
        assert "'seeds=[3,5]'" in command and f"out_dir=results/toy/{row}/seed{{seed}} " in command
        assert f" {weight}/seed{{seed}}/model.pt" in command, command
        # the CLIP-Refine rows skip the two retrieval sets only the ProCLIP tables read
        assert ("'skip_sets=[long_val,paraphrase_val]'" in command) == (row in refine.OBJECTIVES), command
    assert sum("out_dir=results/toy/pretrained " in c for c in commands) == 1  # one model, no seed
    assert sum("pretrain.yaml" in c for c in commands) == 1 and sum("tools.fill_cache" in c for c in commands) == 1
    assert "python -m tools.tables table refine results/toy --seeds 3,5" in commands
    assert "python -m tools.tables table proclip results/toy --seeds 3,5" in commands
    assert "python -m tools.tables figure results/toy --seeds 3,5" in commands
    assert ("python -m tools.tables figure results/toy --seeds 3,5 --name modality_gap_refine --rows "
            f"pretrained,{','.join(refine.OBJECTIVES)}") in commands
    assert ("python -m tools.tables figure results/toy --seeds 3,5 --name modality_gap_proclip --rows "
            "pretrained,llm2clip,proclip_stage1,proclip --set coco_val") in commands
    assert commands[-1] == "python -m tools.curves runs/toy results/toy/curves"  # after every run


def test_investigate_gap_runs_every_line_of_its_list_per_seed():
    commands = planned("investigate-gap", "SEEDS=0 1")
    lines = [l.split() for l in open(os.path.join(ROOT, "configs/toy/gap_investigation.txt"))
             if l.strip() and not l.startswith("#")]
    runs = [c for c in commands if c.startswith("python refine.py --config configs/toy/refine.yaml")]
    assert len(runs) == 2 * len(lines)
    name, *overrides = lines[-1]
    assert any(f"run_dir=runs/toy/investigate/{name}/seed1" in c and " ".join(overrides) in c for c in runs)
    assert "python -m tools.tables table gap_investigation results/toy/investigate --seeds 0,1" in commands


def test_the_toy_preset_runs_a_step_per_core_on_one_thread_each_at_least_two(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env["PATH"] = f"{tmp_path}:{env['PATH']}"
    env["OMP_NUM_THREADS"] = "1"  # the cores of the machine, not the threads a step may use
    nproc = tmp_path / "nproc"  # a machine of N cores
    for cores, jobs in ((7, "7"), (1, "2")):
        nproc.write_text(f'#!/bin/sh\n[ -z "$OMP_NUM_THREADS" ] && echo {cores} || echo 1\n')
        nproc.chmod(0o755)
        out = subprocess.run(["make", "--no-print-directory", "-s", "--eval", "jobs-threads: ; @echo $(JOBS) $(THREADS)",
                              "jobs-threads", "PYTHON=python"], cwd=ROOT, env=env, capture_output=True, text=True,
                             check=True).stdout.split()
        assert out == [jobs, "1"], cores
    assert make_variable("JOBS", "PRESET=paper") == ["1"] and make_variable("JOBS", "JOBS=3") == ["3"]


def test_readme_results_fills_the_blocks_of_the_docs():
    commands = planned("readme-results")
    assert commands == ["python -m tools.tables fill-results README.md docs/results.md",
                        "cp results/toy/modality_gap.png results/toy/modality_gap_refine.png "
                        "results/toy/modality_gap_proclip.png docs/"]


def test_paper_preset_commands():
    commands = planned("reproduce-table1", "PRESET=paper", "DATA_ROOT=/d")
    assert "python -m tools.paper_data check --data-root /d --papers refine proclip" in commands
    assert "python -m tools.tables table proclip results/paper --seeds 0 --clip-row clip" in commands
    assert any(c.startswith("python -m tools.fill_cache --stage1-config configs/paper/proclip_stage1.yaml "
                            "--stage2-config configs/paper/proclip_stage2.yaml --eval-config "
                            "configs/paper/eval_proclip.yaml train_data=/d/recaption/train.csv") and
               c.endswith("data_root=/d") for c in commands)


def test_make_help_lists_every_variable_a_user_may_set_with_what_it_does():
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    out = subprocess.run(["make", "--no-print-directory", "help"], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True).stdout
    targets, variables = out.split("\nvariables")
    makefile = open(os.path.join(ROOT, "Makefile"), encoding="utf-8").read()
    settable = set(re.findall(r"^([A-Z_]+) \?=", makefile, flags=re.M)) | {"PYTHON"}  # PYTHON: `origin` checks it
    assert {"PRESET", "DATA_ROOT", "SEEDS", "JOBS", "THREADS", "OVERRIDES", "TRAIN_OVERRIDES", "PROCLIP_OVERRIDES",
            "EMBED_ARGS", "CLUSTER", "SLURM_ARGS", "SLURM_CONFIG", "VENV", "PYTHON"} <= settable
    for name in settable:
        lines = re.findall(rf"^  {name}(?:=\S+)?\s+(\S.*)$", variables, flags=re.M)
        assert len(lines) == 1 and len(lines[0].split()) >= 2, f"make help: {name} has {lines}"
    for target in re.findall(r"^([a-z0-9-]+):.*## ", makefile, flags=re.M):
        assert re.search(rf"^  {target}\s+\S", targets, flags=re.M), target


def test_install_runs_once_per_content_of_the_lock_whatever_its_modification_time(tmp_path):
    """A fresh clone's requirements.lock is newer than any environment: only a change of its content reinstalls."""
    repo, venv = tmp_path / "repo", tmp_path / "venv"
    (repo / "configs" / "toy").mkdir(parents=True)
    for name in ("Makefile", "refine.py", "requirements.lock", "configs/toy/gap_investigation.txt"):
        shutil.copy(os.path.join(ROOT, name), repo / name)
    calls = tmp_path / "pip_calls"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')  # the venv's python, recording
    (venv / "bin" / "python").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    lock = repo / "requirements.lock"

    def install():
        subprocess.run(["make", "--no-print-directory", "install", f"VENV={venv}"], cwd=repo, env=env, check=True,
                       capture_output=True)
        return calls.read_text().splitlines() if calls.exists() else []

    def markers():
        return sorted(p.name for p in venv.iterdir() if p.name.startswith(".postclip-installed"))

    assert install() == ["-m pip install --require-hashes --no-deps -r requirements.lock"]
    assert markers() == [".postclip-installed-" + hashlib.sha256(lock.read_bytes()).hexdigest()]
    assert len(install()) == 1  # the same lock: nothing to do
    later = os.stat(venv / markers()[0]).st_mtime + 3600
    os.utime(lock, (later, later))  # newer than the environment, as in a fresh clone
    assert len(install()) == 1
    lock.write_text(lock.read_text() + "# another lock\n")
    assert len(install()) == 2  # another content: installed again, and only its marker is left
    assert markers() == [".postclip-installed-" + hashlib.sha256(lock.read_bytes()).hexdigest()]

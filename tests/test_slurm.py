"""slurm/: the launcher, its checks, the reproduction chain, and (marked slurm) jobs on a real SLURM.

The tests marked `slurm` need a running SLURM: `slurm/local_cluster.sh up` (root) starts a single-node one; `make
test-slurm` runs them (.ci/run does both). They are skipped, saying why, without sbatch on the PATH, and unless
POSTCLIP_SLURM_TESTS=1 (which `make test-slurm` sets), so that `make test` never submits jobs to a cluster.
Every run is a tiny ToyCLIP on the tiny world, compared with the same run done in this process.
"""
import json
import multiprocessing
import os
import shlex
import shutil
import signal
import subprocess
import time

import pytest
import submitit
import torch

import refine
from common import train
from common.checkpoints import load_checkpoint_file
from common.config import ConfigError, load_config
from common.run_dir import die_with_parent
from same_weights import assert_same_weights, weights
from slurm import chain, cluster, launcher
from slurm.job import StageJob

SLURM_CONFIG = os.path.join(cluster.ROOT, "slurm", "local.yaml")


def _why_not_submit_jobs():
    if shutil.which("sbatch") is None:
        return ("no sbatch on the PATH: these tests need a real SLURM; start one with `sudo slurm/local_cluster.sh "
                "up`, then run `make test-slurm`")
    if not os.environ.get("POSTCLIP_SLURM_TESTS"):
        return "they submit jobs to the SLURM on the PATH: run them with `make test-slurm` (POSTCLIP_SLURM_TESTS=1)"
    return ""


needs_slurm = [pytest.mark.slurm, pytest.mark.skipif(bool(_why_not_submit_jobs()), reason=_why_not_submit_jobs())]


def refine_args(world, clip, run_dir, *extra):
    """12 steps of CLIP-Refine (2 epochs of 6 batches), a checkpoint every 5."""
    return ["--config", "configs/toy/refine.yaml", f"run_dir={run_dir}", f"pretrained={clip}",
            f"train_data={world}/coco/captions_train.json", f"train_images={world}/coco/train", "batch_size=8",
            "holdout_fraction=0.0", "epochs=2", "log_every=1", "checkpoint_every=5", "num_workers=0", *extra]


@pytest.fixture(scope="module")
def straight_run(tiny_world, tiny_clip, tmp_path_factory):
    """The reference: the run done in this process, uninterrupted."""
    run_dir = tmp_path_factory.mktemp("straight")
    refine.main(refine_args(tiny_world, tiny_clip, run_dir))
    return weights(run_dir)


# -----------------------------------------------------------------------------------------------------------------
# bad input: a clear error, and nothing submitted
def test_unknown_slurm_setting_in_file_or_on_command_line(tiny_world, tiny_clip, tmp_path):
    run = refine_args(tiny_world, tiny_clip, tmp_path / "run")
    bad_file = tmp_path / "cluster.yaml"
    bad_file.write_text("partiton: gpu\n")
    with pytest.raises(ConfigError, match="cluster.yaml: unknown key 'partiton'; did you mean 'partition'\\? "
                                          "Valid keys: .*partition"):
        launcher.main(["refine", *run, "--slurm-config", str(bad_file)])
    with pytest.raises(launcher.LaunchError, match="unknown option --partiton: not a SLURM option .*--partition"):
        launcher.main(["refine", *run, "--partiton", "gpu"])
    with pytest.raises(launcher.LaunchError, match="unknown option --gpus_per_node: .*--gpus-per-node"):
        launcher.main(["refine", *run, "--gpus_per_node", "0"])
    with pytest.raises(ConfigError, match="cluster='kubernetes'; use slurm or local"):
        launcher.main(["refine", *run, "--cluster", "kubernetes"])
    with pytest.raises(ConfigError, match="gpus_per_node='two' should be a int"):
        launcher.main(["refine", *run, "--gpus-per-node", "two"])
    assert not (tmp_path / "run").exists()


def test_bad_stage_arguments_fail_before_submitting(tiny_world, tiny_clip, tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'objectiv'"):
        launcher.main(["refine", *refine_args(tiny_world, tiny_clip, tmp_path / "run"), "objectiv=rafa"])
    with pytest.raises(launcher.LaunchError, match="run_dir is not set"):
        launcher.main(["refine", *refine_args(tiny_world, tiny_clip, ""), "--cluster", "local"])
    with pytest.raises(launcher.LaunchError, match="unknown stage 'refin'; stages: refine, proclip_stage1"):
        launcher.main(["refin", "run_dir=x"])
    assert not (tmp_path / "run").exists()


def test_unreachable_sbatch_is_a_clear_error(tiny_world, tiny_clip, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no sbatch, no sinfo
    with pytest.raises(launcher.LaunchError, match="sbatch is not on the PATH.*slurm/local_cluster.sh up.*"
                                                   "--cluster local"):
        launcher.main(["refine", *refine_args(tiny_world, tiny_clip, tmp_path / "run"), "--cluster", "slurm"])
    assert not (tmp_path / "run").exists()


def test_one_parser_keeps_the_stage_arguments_in_order(tmp_path):
    slurm_file = tmp_path / "s.yaml"
    slurm_file.write_text("partition: cpu\nnodes: 1\n")
    args = launcher.parse_args("refine", ["--config", "c.yaml", "lr=1", "--partition", "gpu", "lr=2", "--nodes=2",
                                          "--wait", "--slurm-config", str(slurm_file), "--gpus-per-node", "0",
                                          "objective=rafa"])
    cfg = cluster.slurm_config(args)
    assert (cfg.partition, cfg.nodes, cfg.gpus_per_node) == ("gpu", 2, 0) and args.wait
    assert args.slurm_config == str(slurm_file)
    assert args.stage_argv == ["--config", "c.yaml", "lr=1", "lr=2", "objective=rafa"]


def test_config_keys_as_options_are_refused_in_one_line():
    for flag in (["--lr", "2"], ["--lr=2"], ["--max-steps", "3"]):
        with pytest.raises(launcher.LaunchError, match=r"^--(lr|max-steps): config keys of refine.py are given as "
                                                       r"key=value \((lr|max_steps)=VALUE\)$"):
            launcher.parse_args("refine", ["--config", "configs/toy/refine.yaml", *flag])


def test_the_job_reads_the_config_the_stage_reads_without_the_slurm_options():
    stage_only = ["--config", "configs/toy/refine.yaml", "objective=rafa", "lr=2", "epochs=3", "epochs=4", "lr=1"]
    with_slurm = [*stage_only[:3], "--partition", "gpu", *stage_only[3:6], "--nodes=2", "--wait", *stage_only[6:]]

    def resolved(argv):  # as refine.main reads its argv
        args = refine.get_args_parser().parse_args(argv)
        return vars(load_config(refine.DEFAULTS, args.config, args.overrides))

    job_cfg = resolved(launcher.parse_args("refine", with_slurm).stage_argv)
    assert job_cfg == resolved(stage_only) and (job_cfg["lr"], job_cfg["epochs"]) == (1, 4)


def test_help_shows_the_stage_options_then_the_slurm_ones(capsys):
    with pytest.raises(SystemExit):
        launcher.main(["refine", "--help"])
    out = capsys.readouterr().out
    assert out.index("--config") < out.index("--slurm-config") < out.index("--partition") < out.index("--wait")
    assert "--gpus-per-node" in out and "--gpus_per_node" not in out


def test_stop_request_saves_at_the_next_step_and_resumes_exactly(tiny_world, tiny_clip, tmp_path, straight_run):
    """What the job's signal handler does (common/train.py request_stop), without SLURM."""
    run_dir = tmp_path / "stopped"
    train.request_stop()  # as if the signal came during start-up
    with pytest.raises(train.StoppedForRequeue, match="stopped at step 1/12"):
        refine.main(refine_args(tiny_world, tiny_clip, run_dir))
    assert load_checkpoint_file(run_dir / "checkpoint.pt")["step"] == 1  # saved at once, not at step 5
    refine.main(refine_args(tiny_world, tiny_clip, run_dir))  # the request was served: this run goes to the end
    assert_same_weights(weights(run_dir), straight_run)


def test_a_job_requeues_itself_at_most_max_requeues_times():
    job = StageJob([("refine", ["run_dir=x"])], max_requeues=2)
    first = job.checkpoint()
    assert first.function is job and job.requeues == 1
    assert job.checkpoint().function.requeues == 2
    assert job.checkpoint() is None, "the third requeue is refused"
    with pytest.raises(launcher.LaunchError, match="cannot run module 'os'"):
        StageJob([("os", [])])


@pytest.mark.slow
def test_local_executor_run_matches_the_run_in_this_process(tiny_world, tiny_clip, tmp_path, straight_run):
    """--cluster local: submitit's LocalExecutor runs the job in a subprocess, through the same StageJob."""
    run_dir = tmp_path / "local"
    launcher.main(["refine", *refine_args(tiny_world, tiny_clip, run_dir), "--cluster", "local",
                   "--timeout-min", "10", "--gpus-per-node", "0"])
    assert_same_weights(weights(run_dir), straight_run)
    assert list((run_dir / "slurm").glob("*_0_log.out")), "the job's log is under the run's folder"


def _sleep(started):
    started.set()
    time.sleep(60)


def _pool_like(argv):
    """Forks a worker and ends it with SIGTERM, as Pool.terminate() at the end of `with multiprocessing.Pool()`."""
    ctx = multiprocessing.get_context("fork")
    started = ctx.Event()
    child = ctx.Process(target=_sleep, args=(started,))
    child.start()
    assert started.wait(30)
    child.terminate()
    child.join(10)
    return child.exitcode


def test_a_job_step_that_is_not_training_ends_its_workers_with_sigterm(monkeypatch):
    """The job's process handles SIGTERM (submitit's handler only logs it); a module that is not a training stage
    runs with the default action, so that the processes it forks end when it terminates them (tools/toyworld.py)."""
    from tools import paper_data

    monkeypatch.setattr(paper_data, "main", _pool_like)
    logs_it = lambda *_: None  # as submitit's "Bypassing signal SIGTERM"
    before = signal.signal(signal.SIGTERM, logs_it)
    try:
        assert StageJob([("tools.paper_data", [])])._run("tools.paper_data", [], None) == -signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) is logs_it, "the job's handler is back"
    finally:
        signal.signal(signal.SIGTERM, before)


def _worker(started):
    die_with_parent(0)  # what common/train.py's DataLoader workers run first
    started.set()
    time.sleep(60)


def test_a_dataloader_worker_outlives_the_sigterm_sent_to_the_whole_job():
    """scancel and a preemption send SIGTERM to every process of the job: the trainer saves at the next step and
    stops; its DataLoader workers must not die of it first (the trainer would fail instead of saving)."""
    ctx = multiprocessing.get_context("fork")
    started = ctx.Event()
    worker = ctx.Process(target=_worker, args=(started,))
    worker.start()
    try:
        assert started.wait(30)
        os.kill(worker.pid, signal.SIGTERM)
        worker.join(1)
        assert worker.is_alive()
    finally:
        worker.kill()
        worker.join()


# -----------------------------------------------------------------------------------------------------------------
# the chain (more in tests/test_chain.py)
def test_make_reproduce_table1_with_cluster_slurm_only_submits():
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}  # under `make test`
    out = subprocess.run(["make", "--no-print-directory", "-n", "reproduce-table1", "CLUSTER=slurm", "PYTHON=python"],
                         cwd=cluster.ROOT, capture_output=True, text=True, check=True, env=env).stdout
    assert out.split() == "python -m slurm.chain --slurm-config slurm/cluster.yaml".split()


# -----------------------------------------------------------------------------------------------------------------
# on a real SLURM
def _scontrol_job(job_id):
    out = subprocess.run(["scontrol", "show", "job", str(job_id)], capture_output=True, text=True, check=True).stdout
    return dict(word.split("=", 1) for word in out.split() if "=" in word)


def _wait(job, timeout_s=300):
    """Until SLURM has the job finished (not just its result written); -> rank 0's result."""
    start = time.time()
    while (state := _scontrol_job(job.job_id)["JobState"]) in ("PENDING", "RUNNING", "COMPLETING", "REQUEUED"):
        assert time.time() - start < timeout_s, f"job {job.job_id} still running after {timeout_s} s"
        time.sleep(1)
    # without accounting submitit cannot tell that a job failed: job.results() would wait for ever
    assert state == "COMPLETED", f"job {job.job_id} ended {state}; log: {job.paths.stdout}"
    return job.results()[0]


def _submit_refine(args, *slurm_args):
    job = launcher.main(["refine", *args, "--slurm-config", SLURM_CONFIG, *slurm_args])
    assert isinstance(job, submitit.SlurmJob)
    return job


def _wait_for_log_line(job, text, timeout_s=120):
    start = time.time()
    while not (job.paths.stdout.exists() and text in job.paths.stdout.read_text()):
        assert time.time() - start < timeout_s, f"no {text!r} in {job.paths.stdout}"
        time.sleep(0.2)


def _start_requeued_job_now(job_id, timeout_s=60):
    """SLURM holds a requeued job for 2 minutes (its BeginTime); the tests do not wait that long."""
    start = time.time()
    while _scontrol_job(job_id)["JobState"] != "PENDING":
        assert time.time() - start < timeout_s, f"job {job_id} was not requeued"
        time.sleep(0.5)
    time.sleep(2)  # let slurmctld finish the requeue: an update at once can make it refuse to launch the job
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)


class TestOnSlurm:
    pytestmark = needs_slurm

    def test_missing_partition_or_gpus_and_refused_jobs_are_clear_errors(self, tiny_world, tiny_clip, tmp_path):
        args = refine_args(tiny_world, tiny_clip, tmp_path / "run")
        with pytest.raises(launcher.LaunchError, match="partition='gpu' does not exist on this cluster; its "
                                                       "partitions: debug\\*"):
            _submit_refine(args, "--partition", "gpu")
        with pytest.raises(launcher.LaunchError, match="gpus_per_node=2 but partition debug has no GPUs"):
            _submit_refine(args, "--gpus-per-node", "2")
        assert not (tmp_path / "run").exists()
        with pytest.raises(launcher.LaunchError, match="sbatch refused the job: .*unrecognized option"):
            _submit_refine(args, "--sbatch-extra", "{no-such-option: 1}")

    def test_launcher_job_matches_the_run_in_this_process(self, tiny_world, tiny_clip, tmp_path, straight_run):
        job = _submit_refine(refine_args(tiny_world, tiny_clip, tmp_path / "job"))
        _wait(job)
        assert_same_weights(weights(tmp_path / "job"), straight_run)
        assert job.paths.stdout.parent == tmp_path / "job" / "slurm"

    def test_time_limit_signal_saves_requeues_and_resumes_exactly(self, tiny_world, tiny_clip, tmp_path,
                                                                  straight_run):
        # USR2 is what SLURM sends signal_delay_s before the time limit (#SBATCH --signal=USR2@...)
        job = _submit_refine(refine_args(tiny_world, tiny_clip, tmp_path / "job"))
        _wait_for_log_line(job, "saves a checkpoint and stops")  # the handler is in place
        subprocess.run(["scancel", "--signal=USR2", str(job.job_id)], check=True)
        _start_requeued_job_now(job.job_id)
        _wait(job)
        log = job.paths.stdout.read_text()
        stopped_at = int(log.split("stopped at step ")[1].split("/")[0])
        assert 1 <= stopped_at < 12
        assert f"resumed from {tmp_path / 'job' / 'checkpoint.pt'} at step {stopped_at}/12" in log
        assert "requeued 1 time(s) by itself" in log
        assert _scontrol_job(job.job_id)["Restarts"] == "1"
        assert_same_weights(weights(tmp_path / "job"), straight_run)
        steps = [json.loads(line)["step"] for line in open(tmp_path / "job" / "log.jsonl")]
        assert steps == list(range(1, 13)), "every step once, none repeated"

    def test_scontrol_requeue_saves_and_resumes_exactly(self, tiny_world, tiny_clip, tmp_path, straight_run):
        # scontrol requeue (like a preemption) sends SIGTERM: save at the next step, exit, SLURM requeues the job
        job = _submit_refine(refine_args(tiny_world, tiny_clip, tmp_path / "job"))
        _wait_for_log_line(job, "saves a checkpoint and stops")
        subprocess.run(["scontrol", "requeue", str(job.job_id)], check=True)
        _start_requeued_job_now(job.job_id)
        _wait(job)
        log = job.paths.stdout.read_text()
        assert "resumed from" in log and _scontrol_job(job.job_id)["Restarts"] == "1"
        assert_same_weights(weights(tmp_path / "job"), straight_run)

    def test_two_processes_in_one_job_match_one_process(self, tiny_world, tiny_clip, tmp_path):
        # DDP inside a job: 2 tasks, gloo; contrastive, whose 2-rank objective is the 1-process one
        # (tests/test_distributed.py). eps=1e-3: see there.
        args = lambda run_dir: refine_args(tiny_world, tiny_clip, run_dir, "objective=contrastive", "max_steps=3",
                                           "eps=1e-3")
        job = _submit_refine(args(tmp_path / "two"), "--tasks-per-node", "2")
        refine.main(args(tmp_path / "one"))
        _wait(job)
        assert "2 rank(s)" in job.paths.stdout.read_text()
        two, one = weights(tmp_path / "two"), weights(tmp_path / "one")
        for key in one:
            torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-6)

    def test_two_job_chain_runs_in_order(self, tiny_world, tiny_clip, tmp_path):
        train = f"python refine.py {' '.join(refine_args(tiny_world, tiny_clip, tmp_path / 'run', 'max_steps=2'))}"
        evaluate = (f"python evaluate.py --config configs/toy/eval.yaml data_root={tiny_world} "
                    f"pretrained={tmp_path / 'run' / 'model.pt'} out_dir={tmp_path / 'eval'} num_workers=0")
        jobs = [chain.Job(chain.Step("a", [], [shlex.split(train)]), [], 1),
                chain.Job(chain.Step("b", ["a"], [shlex.split(evaluate)]), ["a"], 2)]
        cfg = cluster.load_slurm_config(SLURM_CONFIG)
        submitted = chain.submit_plan(jobs, cfg, str(tmp_path / "logs"))
        first, second = submitted["a"], submitted["b"]
        assert _scontrol_job(second.job_id)["Dependency"].startswith(f"afterok:{first.job_id}")
        _wait(first)
        _wait(second)
        a, b = _scontrol_job(first.job_id), _scontrol_job(second.job_id)
        assert a["JobState"] == b["JobState"] == "COMPLETED"
        assert b["StartTime"] >= a["EndTime"]  # ISO timestamps
        assert (tmp_path / "eval" / "done").exists()  # it read the model the first job wrote

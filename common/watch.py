"""What a run shows while it runs (docs/watching.md): a progress line, one log.jsonl record per log step and per
score of the held-out split, and TensorBoard scalars when asked (report_to=tensorboard).

On a terminal the trainer's progress line (step/total, rate, ETA) is redrawn in place between log steps; written to
a file (a SLURM log, `make ... > log`) the output is plain lines, one per log step, with no carriage return.
`progress_bar` gives the other programs' tqdm bars the same behaviour.
"""
import datetime
import json
import os
import re
import sys
import time

from tqdm import tqdm

from common.config import ConfigError

REPORT_TO = ("", "tensorboard")


def check_report_to(report_to):
    """report_to is "" or tensorboard, and the tensorboard package is there when it is asked for."""
    if report_to not in REPORT_TO:
        raise ConfigError(f"report_to={report_to!r}: use tensorboard, or leave it empty (report_to=)")
    if report_to == "tensorboard":
        summary_writer()


def summary_writer():
    """torch's SummaryWriter; it needs the tensorboard package, an optional dependency (not in requirements.txt)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("report_to=tensorboard needs the tensorboard package, which postclip does not install: "
                          "pip install tensorboard, or leave report_to empty") from None
    return SummaryWriter


def clock(seconds):
    return str(datetime.timedelta(seconds=round(seconds)))


class RunLog:
    """The main rank's record of a training run: log.jsonl, the printed lines, the progress line of a terminal and
    the TensorBoard scalars. Rates are of the steps since the previous log line, less the time spent scoring the
    held-out split, so they show the speed now, not the mean since the start."""

    REDRAW_S = 0.2  # the terminal's progress line is redrawn at most this often

    def __init__(self, run_dir, total_steps, steps_per_epoch, start_step, report_to="", stream=None):
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty()  # a terminal: a progress line redrawn in place; else plain lines only
        self.total, self.steps_per_epoch = total_steps, steps_per_epoch
        self.epochs = -(-total_steps // steps_per_epoch)
        self.file = open(os.path.join(run_dir, "log.jsonl"), "a")
        self.writer = summary_writer()(os.path.join(run_dir, "tensorboard")) if report_to == "tensorboard" else None
        self.start = time.time()
        self.mark_step, self.mark_time, self.paused = start_step, self.start, 0.0  # as of the last log line
        self.drawn_at, self.drawn = 0.0, False

    # --- what the loop calls -------------------------------------------------------------------------------------
    def step_done(self, step):
        """After every step: redraw the terminal's progress line (nothing when the output is a file)."""
        now = time.time()
        if self.live and now - self.drawn_at >= self.REDRAW_S and step < self.total:
            rate = self._rate(step, now)
            self.stream.write(f"\r{self._position(step)}  {rate:.2f} steps/s  ETA {clock(self._eta(step, rate))}"
                              "\x1b[K")
            self.stream.flush()
            self.drawn_at, self.drawn = now, True

    def train(self, step, epoch, lr, values, skipped):
        """One log step: its log.jsonl line (the keys of docs/watching.md), a printed line, TensorBoard scalars."""
        now = time.time()
        rate = self._rate(step, now)
        record = {"split": "train", "step": step, "epoch": epoch, "lr": lr, **values, "skipped_images": skipped,
                  "steps_per_s": round(rate, 3), "total_steps": self.total,
                  "eta_s": round(self._eta(step, rate), 1), **self._stamp(now)}
        self._write(record, "train", step)
        shown = "  ".join(f"{k} {v:.4g}" for k, v in values.items())
        self.say(f"{self._position(step)}  epoch {epoch + 1}/{self.epochs}  {shown}  lr {lr:.3g}  "
                 f"{rate:.2f} steps/s  ETA {clock(record['eta_s'])}")
        self.mark_step, self.mark_time, self.paused = step, now, 0.0

    def holdout(self, step, epoch, values, seconds):
        """A score of the held-out split (after `step` steps): its log.jsonl line, a printed line, TensorBoard."""
        self.paused += seconds
        record = {"split": "holdout", "step": step, "epoch": epoch, **values, "holdout_s": round(seconds, 3),
                  "total_steps": self.total, **self._stamp(time.time())}
        self._write(record, "holdout", step)
        when = "before the first step" if step == 0 else f"after epoch {epoch + 1}/{self.epochs}" \
            if step % self.steps_per_epoch == 0 else "at the end" if step == self.total else \
            f"in epoch {epoch + 1}/{self.epochs}"
        shown = "  ".join(f"{k} {v:.4g}" for k, v in values.items() if k != "holdout_items")
        self.say(f"holdout {when} (step {step}/{self.total}, {values['holdout_items']} items, {seconds:.1f} s): "
                 f"{shown}")

    def say(self, text):
        """A line of its own, clearing the progress line first."""
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.drawn = False
        print(text, file=self.stream, flush=True)

    def close(self):
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.drawn = False
        self.file.close()
        if self.writer is not None:
            self.writer.close()

    # --- helpers -------------------------------------------------------------------------------------------------
    def _rate(self, step, now):
        return (step - self.mark_step) / max(now - self.mark_time - self.paused, 1e-9)

    def _eta(self, step, rate):
        return (self.total - step) / rate if rate > 0 else 0.0

    def _position(self, step):
        return f"step {step}/{self.total} ({100 * step // self.total}%)"

    def _stamp(self, now):
        return {"time": datetime.datetime.fromtimestamp(now).astimezone().isoformat(timespec="seconds"),
                "elapsed_s": round(now - self.start, 3)}

    def _write(self, record, split, step):
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch", "total_steps", "eta_s"):
                    self.writer.add_scalar(f"{split}/{key}", value, step)
            self.writer.flush()


# --- tqdm bars that do not fill a log file with carriage returns ---------------------------------------------------
class _PlainLines:
    """tqdm's output stream when stderr is not a terminal: each refresh is one plain line, with no carriage return
    and no terminal control sequence."""

    def __init__(self, stream):
        self.stream = stream
        self.encoding = getattr(stream, "encoding", "utf-8")

    def write(self, text):
        for part in re.split(r"[\r\n]", re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)):
            if part.strip():
                self.stream.write(part.rstrip() + "\n")

    def flush(self):
        self.stream.flush()


def progress_bar(iterable=None, plain_every_s=30, **kwargs):
    """tqdm(iterable, **kwargs) on a terminal; otherwise a plain line at most every `plain_every_s` seconds, the
    first after `plain_every_s` (a bar that is done sooner writes nothing, not a line at 0%)."""
    if sys.stderr.isatty() or kwargs.get("disable"):
        return tqdm(iterable, **kwargs)
    return tqdm(iterable, file=_PlainLines(sys.stderr), mininterval=plain_every_s, delay=plain_every_s, ascii=True,
                **kwargs)

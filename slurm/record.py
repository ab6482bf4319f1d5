"""The Makefile's $(RUN) in planning mode (PLAN=FILE): records one command of a step instead of running it.

    python -m slurm.record FILE 'TARGETS' 'PREREQUISITES' -- PYTHON refine.py ARGS...

appends one JSON line to FILE: {"target": TARGET, "also_makes": [...], "needs": [PREREQUISITES], "argv": [PYTHON,
"refine.py", ARGS...]}. TARGETS is make's `$@`, then the other targets of a recipe that makes several at once (the
seeds of a row, evaluated by one process): also_makes. PREREQUISITES is make's `$^ $|` (normal and order-only).
Both are lists of words as make writes them. The argv is the one the shell would have run, word for word. An empty
command (a recipe line `@$(RUN)`) records a target that runs nothing and only groups its prerequisites. Anything but
`PYTHON X.py ...` or `PYTHON -m X ...` is refused, naming the target, and make stops there: a SLURM job runs a stage
or module, never a shell command.
"""
import fcntl
import json
import os
import sys


def python_command(argv):
    """argv is `PYTHON X.py ...` or `PYTHON -m X ...` (PYTHON: any path whose name starts with python)."""
    if len(argv) < 2 or not os.path.basename(argv[0]).startswith("python"):
        return False
    return argv[1].endswith(".py") or (argv[1] == "-m" and len(argv) > 2)


def record(path, targets, needs, argv):
    """Append the step's JSON line to path: one write of the whole line, under an exclusive lock."""
    target, *also_makes = targets.split()
    line = json.dumps({"target": target, "also_makes": also_makes, "needs": needs.split(), "argv": argv}) + "\n"
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(line)
        f.flush()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) < 4 or argv[3] != "--":
        sys.exit("usage: python -m slurm.record FILE 'TARGETS' 'PREREQUISITES' -- [PYTHON X.py|-m X ARGS...]")
    path, targets, needs, command = argv[0], argv[1], argv[2], argv[4:]
    target = targets.split()[0]  # make's $@
    if command and not python_command(command):
        sys.exit(f"slurm.record: the step {target} runs `{' '.join(command)}`, which is not a python stage or module "
                 f"(`$(PYTHON) X.py ...` or `$(PYTHON) -m X ...`); a SLURM job cannot run it")
    record(path, targets, needs, command)


if __name__ == "__main__":
    main()

"""A simulated kill for the resume tests, patched into the training loop (the user's config knows nothing of it).

    with crash_before_step(9), pytest.raises(SimulatedCrash):
        refine.main(argv)          # steps 0-8 run; the run dies before step 9, saving nothing, as after kill -9
"""
import contextlib
from unittest import mock

from common import train


class SimulatedCrash(RuntimeError):
    pass


@contextlib.contextmanager
def crash_before_step(step):
    """common.train.train_step raises SimulatedCrash instead of running step `step` (0-based) of a run started
    from scratch, i.e. once `step` updates were made; a due checkpoint of that step is not written either."""
    real, done = train.train_step, []

    def train_step(*args, **kwargs):
        if len(done) == step:
            raise SimulatedCrash(f"simulated kill before step {step}")
        done.append(step)
        return real(*args, **kwargs)

    with mock.patch.object(train, "train_step", train_step):
        yield

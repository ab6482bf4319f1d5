"""Running the stages on SLURM (or locally) through submitit: launcher.py (one stage), chain.py (the reproduction
as dependent jobs), local_cluster.sh (a real single-node SLURM for tests). See docs/slurm.md."""

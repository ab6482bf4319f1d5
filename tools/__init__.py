"""The programs that are not stages, each run as `python -m tools.NAME`: toyworld (the toy world), paper_data (the
paper preset's datasets), fill_cache (the ProCLIP embedding cache), tables (the tables, the gap figure, the results
blocks of the docs). They may import common/ and the stages; nothing but slurm/ and the tests imports them."""

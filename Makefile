# postclip: `make help` lists the targets. Everything runs on a laptop CPU with PRESET=toy (the default).
#
#   make reproduce-table1            world -> toy CLIP -> the seven CLIP-Refine runs -> evaluations -> table
#   make test                        the test suite (creates .venv from requirements.txt on first use)
#
# Variables: PRESET=toy|paper, VENV=path (where the virtual environment lives), PYTHON=python (your own
# environment: no venv is made), BOOTSTRAP_PYTHON=python3 (makes the venv).

PRESET ?= toy
VENV ?= .venv
BOOTSTRAP_PYTHON ?= python3
ifeq ($(origin PYTHON),undefined)
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.postclip-installed
else
INSTALLED :=
endif

CONFIGS := configs/$(PRESET)
RUNS := runs/$(PRESET)
RESULTS := results/$(PRESET)
REFINE_METHODS := contrastive self_kd m2mix rafa hycd clip_refine

# The toy preset builds its own data and "pre-trained" CLIP; the paper preset reads yours (see configs/paper/).
ifeq ($(PRESET),toy)
WORLD := data/toy/.done
BASE_MODEL := $(RUNS)/pretrain/model.pt
BASE_ARGS := pretrained=$(BASE_MODEL)
else
WORLD :=
BASE_MODEL :=
BASE_ARGS :=
endif

.PHONY: help install world toy-clip refine-runs evaluate-refine table1-refine reproduce-table1 test bench \
        clean-results clean

help:  ## list the targets
	@grep -E '^[a-zA-Z0-9_%-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | awk -F'\t' '{printf "  %-22s %s\n", $$1, $$2}'

# --- environment ----------------------------------------------------------------------------------------
install: $(INSTALLED)  ## create the virtual environment from requirements.txt (skipped with PYTHON=...)

$(VENV)/.postclip-installed: requirements.txt
	test -x $(VENV)/bin/python || $(BOOTSTRAP_PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -r requirements.txt
	touch $@

# --- data and the toy pre-trained CLIP -------------------------------------------------------------------
world: $(WORLD)  ## generate the toy world into data/toy (once; under a minute)

data/toy/.done: | $(INSTALLED)
	$(PYTHON) -m common.toyworld --out data/toy --config configs/toy/world.yaml

toy-clip: runs/toy/pretrain/model.pt  ## pre-train the toy CLIP from scratch (cached in runs/toy/pretrain)

runs/toy/pretrain/model.pt: | data/toy/.done $(INSTALLED)
	$(PYTHON) refine.py --config configs/toy/pretrain.yaml run_dir=runs/toy/pretrain

# --- CLIP-Refine and its baselines (METHODS.md §1) --------------------------------------------------------
refine-runs: $(REFINE_METHODS:%=$(RUNS)/refine/%/model.pt)  ## one post-pre-training run per objective

$(RUNS)/refine/%/model.pt: | $(BASE_MODEL) $(WORLD) $(INSTALLED)
	$(PYTHON) refine.py --config $(CONFIGS)/refine.yaml objective=$* run_dir=$(RUNS)/refine/$* $(BASE_ARGS)

evaluate-refine: $(RESULTS)/pretrained/done $(REFINE_METHODS:%=$(RESULTS)/%/done)  ## evaluate every row

$(RESULTS)/pretrained/done: | $(BASE_MODEL) $(WORLD) $(INSTALLED)
	$(PYTHON) evaluate.py --config $(CONFIGS)/eval.yaml out_dir=$(RESULTS)/pretrained name=pretrained $(BASE_ARGS)

$(RESULTS)/%/done: | $(RUNS)/refine/%/model.pt $(INSTALLED)
	$(PYTHON) evaluate.py --config $(CONFIGS)/eval.yaml out_dir=$(RESULTS)/$* name=$* \
		pretrained=$(RUNS)/refine/$*/model.pt

table1-refine: evaluate-refine  ## write and print results/PRESET/table1_refine.{md,csv}
	$(PYTHON) evaluate.py table refine $(RESULTS)

reproduce-table1: table1-refine  ## the main job: every step above, skipping what is done

# --- checks -----------------------------------------------------------------------------------------------
test: $(INSTALLED)  ## run the test suite (CPU, a few minutes)
	$(PYTHON) -m pytest -q tests

bench: $(INSTALLED)  ## speed benchmarks (not tests): prints timings as JSON lines
	$(PYTHON) tests/benchmarks.py

# --- cleaning ---------------------------------------------------------------------------------------------
clean-results:  ## delete runs/ and results/ for PRESET (keeps the world and the toy CLIP)
	rm -rf $(RUNS)/refine $(RESULTS)

clean:  ## delete everything generated (world, runs, results); keeps the venv
	rm -rf data/toy runs results

# postclip: `make help` lists the targets. Everything runs on a laptop CPU with PRESET=toy (the default).
#
#   make reproduce-table1            both papers' tables: world -> toy CLIP -> the six CLIP-Refine post-training
#                                    runs, and embed-cache -> ProCLIP stage 1, stage 2, LLM2CLIP -> evaluations
#                                    of every row -> results/PRESET/table1_refine, table1_proclip, table2_proclip
#   make test                        the test suite (creates .venv from requirements.txt on first use)
#   make reproduce-table1 CLUSTER=slurm   the same as SLURM jobs chained by dependencies (slurm/chain.py); returns at
#                                    once. SLURM_CONFIG=slurm/cluster.yaml (resources), SLURM_ARGS="--partition gpu"
#
# Variables: PRESET=toy|paper, VENV=path (where the virtual environment lives), PYTHON=python (your own
# environment: no venv is made), BOOTSTRAP_PYTHON=python3 (makes the venv), EMBED_ARGS="--part K --num-parts N"
# (more flags for embed-cache's fill-cache), BENCH=gpu (which benchmarks `make bench` runs).

PRESET ?= toy
CLUSTER ?= local
SLURM_CONFIG ?= slurm/cluster.yaml
SLURM_ARGS ?=
BENCH ?=
EMBED_ARGS ?=
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

.PHONY: test-slurm test-faults slurm-up slurm-down
.PHONY: help install world toy-clip refine-runs evaluate-refine table1-refine reproduce-table1 investigate-gap test bench \
        clean-results clean

help:  ## list the targets
	@grep -E '^[a-zA-Z0-9_%-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | awk -F'\t' '{printf "  %-22s %s\n", $$1, $$2}'

# --- environment ----------------------------------------------------------------------------------------
install: $(INSTALLED)  ## create the virtual environment from requirements.txt (skipped with PYTHON=...)

$(VENV)/.postclip-installed: requirements.txt
	test -x $(VENV)/bin/python || $(BOOTSTRAP_PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -r requirements.txt
	touch $@

# --- data and the toy pre-trained CLIP -------------------------------------------------------------------
world: $(WORLD)  ## generate the toy world into data/toy (once; under a minute)

data/toy/.done: | $(INSTALLED)
	$(PYTHON) -m common.toyworld --out data/toy --config configs/toy/world.yaml

toy-clip: runs/toy/pretrain/model.pt  ## pre-train the toy CLIP from scratch (cached in runs/toy/pretrain)

runs/toy/pretrain/model.pt: | data/toy/.done $(INSTALLED)
	$(PYTHON) refine.py --config configs/toy/pretrain.yaml run_dir=runs/toy/pretrain

# --- CLIP-Refine and its baselines (docs/methods.md §1) --------------------------------------------------------
refine-runs: $(REFINE_METHODS:%=$(RUNS)/refine/%/model.pt)  ## one post-pre-training run per objective

$(RUNS)/refine/%/model.pt: | $(BASE_MODEL) $(WORLD) $(INSTALLED)
	$(PYTHON) refine.py --config $(CONFIGS)/refine.yaml objective=$* run_dir=$(RUNS)/refine/$* $(BASE_ARGS)

evaluate-refine: $(RESULTS)/pretrained/done $(REFINE_METHODS:%=$(RESULTS)/%/done)  ## evaluate every row

$(RESULTS)/pretrained/done: | $(BASE_MODEL) $(WORLD) $(INSTALLED)
	$(PYTHON) evaluate.py --config $(CONFIGS)/eval.yaml out_dir=$(RESULTS)/pretrained name=pretrained $(BASE_ARGS) \
		prior_stats_file=$(RESULTS)/pretrained/prior_stats.pt

$(RESULTS)/%/done: | $(RUNS)/refine/%/model.pt $(INSTALLED)
	$(PYTHON) evaluate.py --config $(CONFIGS)/eval.yaml out_dir=$(RESULTS)/$* name=$* \
		pretrained=$(RUNS)/refine/$*/model.pt

table1-refine: evaluate-refine  ## write and print results/PRESET/table1_refine.{md,csv} and modality_gap.png
	$(PYTHON) evaluate.py figure $(RESULTS)
	$(PYTHON) evaluate.py table refine $(RESULTS)

ifeq ($(CLUSTER),slurm)
reproduce-table1: | $(INSTALLED)
	$(PYTHON) -m slurm.chain --preset $(PRESET) --slurm_config $(SLURM_CONFIG) $(SLURM_ARGS)
else
reproduce-table1: table1-refine tables-proclip  ## the main job: every step, skipping what is done
endif

investigate-gap: $(RESULTS)/pretrained/done  ## the README's modality-gap investigation (toy, 15 runs)
	grep -v '^#' configs/toy/gap_investigation.txt | while read -r name overrides; do \
	  [ -n "$$name" ] || continue; \
	  $(PYTHON) refine.py --config configs/toy/refine.yaml run_dir=runs/toy/investigate/$$name $$overrides \
	    $(BASE_ARGS) log_every=100 || exit 1; \
	  test -f results/toy/investigate/$$name/done || $(PYTHON) evaluate.py --config configs/toy/eval.yaml \
	    out_dir=results/toy/investigate/$$name pretrained=runs/toy/investigate/$$name/model.pt || exit 1; \
	done
	rm -rf results/toy/investigate/pretrained && cp -r $(RESULTS)/pretrained results/toy/investigate/pretrained
	$(PYTHON) evaluate.py table gap_investigation results/toy/investigate

# --- ProCLIP (docs/methods.md §2) --------------------------------------------------------------------------------
# embed-cache -> stage 1 -> stage 2 (ProCLIP); the LLM2CLIP baseline is stage 2 with the same config from a fresh
# adapter and λ=0. The frozen embedder runs only in embed-cache (and, for texts the cache lacks, in evaluation).
PROCLIP_STAGE1 := $(RUNS)/proclip/stage1/model.pt
PROCLIP_STAGE2 := $(RUNS)/proclip/stage2/model.pt
LLM2CLIP := $(RUNS)/llm2clip/model.pt
PROCLIP_ROWS := pretrained llm2clip proclip_stage1 proclip

.PHONY: embed-cache proclip-stage1 proclip-stage2 llm2clip evaluate-proclip tables-proclip table1-proclip \
        table2-proclip

# Always runs (it is a quick check once the cache is full), so a changed config gets its missing texts embedded.
embed-cache: | $(WORLD) $(INSTALLED)  ## embed every caption and prompt the ProCLIP runs need (cache/PRESET/...)
	$(PYTHON) -m common.proclip fill-cache --stage-configs $(CONFIGS)/proclip_stage1.yaml \
		$(CONFIGS)/proclip_stage2.yaml --eval-config $(CONFIGS)/eval.yaml $(EMBED_ARGS)

proclip-stage1: $(PROCLIP_STAGE1)  ## ProCLIP stage 1: distil CLIP's text tower into the adapter (text only)

$(PROCLIP_STAGE1): | embed-cache $(BASE_MODEL) $(WORLD) $(INSTALLED)
	$(PYTHON) proclip_stage1.py --config $(CONFIGS)/proclip_stage1.yaml run_dir=$(RUNS)/proclip/stage1 $(BASE_ARGS)

proclip-stage2: $(PROCLIP_STAGE2)  ## ProCLIP stage 2: image tower + adapter, InfoNCE + EMA self-distillation

$(PROCLIP_STAGE2): | $(PROCLIP_STAGE1) embed-cache $(BASE_MODEL) $(WORLD) $(INSTALLED)
	$(PYTHON) proclip_stage2.py --config $(CONFIGS)/proclip_stage2.yaml run_dir=$(RUNS)/proclip/stage2 \
		adapter=$(PROCLIP_STAGE1) $(BASE_ARGS)

llm2clip: $(LLM2CLIP)  ## the LLM2CLIP baseline: stage 2 only, fresh adapter, λ=0

$(LLM2CLIP): | embed-cache $(BASE_MODEL) $(WORLD) $(INSTALLED)
	$(PYTHON) proclip_stage2.py --config $(CONFIGS)/proclip_stage2.yaml run_dir=$(RUNS)/llm2clip \
		adapter= reg_weight=0 $(BASE_ARGS)

evaluate-proclip: $(PROCLIP_ROWS:%=$(RESULTS)/%/done)  ## evaluate every row of the ProCLIP tables

# "Stage 1 only": the stage-1 adapter with the original image tower ($(BASE_ARGS), else the CLIP it was distilled from).
$(RESULTS)/proclip_stage1/done: | $(PROCLIP_STAGE1) embed-cache $(INSTALLED)
	$(PYTHON) evaluate.py --config $(CONFIGS)/eval.yaml out_dir=$(RESULTS)/proclip_stage1 name=proclip_stage1 \
		model_type=proclip proclip_checkpoint=$(PROCLIP_STAGE1) $(BASE_ARGS)

$(RESULTS)/proclip/done: | $(PROCLIP_STAGE2) embed-cache $(INSTALLED)
	$(PYTHON) evaluate.py --config $(CONFIGS)/eval.yaml out_dir=$(RESULTS)/proclip name=proclip \
		model_type=proclip proclip_checkpoint=$(PROCLIP_STAGE2)

$(RESULTS)/llm2clip/done: | $(LLM2CLIP) embed-cache $(INSTALLED)
	$(PYTHON) evaluate.py --config $(CONFIGS)/eval.yaml out_dir=$(RESULTS)/llm2clip name=llm2clip \
		model_type=proclip proclip_checkpoint=$(LLM2CLIP)

tables-proclip: evaluate-proclip  ## write and print results/PRESET/table{1,2}_proclip.{md,csv}
	$(PYTHON) evaluate.py table proclip $(RESULTS)

table1-proclip table2-proclip: tables-proclip  ## (both ProCLIP tables are written together)

# --- checks -----------------------------------------------------------------------------------------------
test: $(INSTALLED)  ## run the test suite (CPU, a few minutes)
	$(PYTHON) -m pytest -q tests

test-faults: $(INSTALLED)  ## the kill -9 campaign: killed runs resume bit-identical, nothing left behind (minutes)
	POSTCLIP_FAULT_TESTS=1 $(PYTHON) -m pytest -q -m faults tests/test_kills.py

test-slurm: $(INSTALLED)  ## the tests that submit jobs to a real SLURM (`make test` skips them; see slurm-up)
	POSTCLIP_SLURM_TESTS=1 $(PYTHON) -m pytest -q -m slurm tests/test_slurm.py

slurm-up:  ## install (as root) and start a single-node SLURM on this machine (slurm/local_cluster.sh)
	slurm/local_cluster.sh up

slurm-down:  ## stop the single-node SLURM that slurm-up started
	slurm/local_cluster.sh down

bench: $(INSTALLED)  ## speed benchmarks (not tests) as JSON lines, GPU train step included; BENCH=gpu: that one
	$(PYTHON) tests/benchmarks.py $(BENCH)

# --- cleaning ---------------------------------------------------------------------------------------------
clean-results:  ## start the runs over: delete runs/PRESET and results/PRESET, but keep the world and the toy CLIP
	rm -rf $(RESULTS) $(filter-out $(RUNS)/pretrain,$(wildcard $(RUNS)/*))

clean:  ## delete everything generated (world, runs, results, embedding cache); keeps the venv
	rm -rf data/toy runs results cache

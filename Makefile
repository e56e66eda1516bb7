# Set-up and entry points. Each target creates (or reuses) .venv and installs robustlab into it.
PYTHON ?= python3.11
VENV ?= .venv
# torch is installed first and on its own, so pip never swaps an existing build for another.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: setup demo test bench mutation figures clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# The headline study, quick preset: label noise vs Co-Teaching on CIFAR-10 (minutes on a CPU).
demo: setup
	$(PY) -m studies.noisy_labels --noise 0.3 --coteach --preset quick $(ARGS)

test: setup
	$(PY) -m pytest -q --durations=15 $(ARGS)

# Mutation testing of the mechanism modules ([tool.mutmut] in pyproject.toml); CPU-heavy, not part of `make test`.
# Restrict with MUTANTS, e.g. make mutation MUTANTS='robustlab.strategies.coteaching.*'
# Quick, conservative score of a few modules judged by their own tests (tools/mutation_focus.py), e.g.
# make mutation MODULES=robustlab/strategies/sce.py TESTS=tests/test_robust_losses.py
MUTANTS ?=
MODULES ?=
TESTS ?=
MUTATION_JOBS ?= 2
mutation: setup
	$(PY) -c "import mutmut" 2>/dev/null || $(PY) -m pip install -q -e '.[mutation]'
ifneq ($(strip $(MODULES)),)
	$(PY) tools/mutation_focus.py $(MODULES) --tests $(TESTS) --jobs $(MUTATION_JOBS)
else
	$(VENV)/bin/mutmut run --max-children $(MUTATION_JOBS) $(MUTANTS)
	$(PY) tools/mutation_report.py
endif

bench: setup
	$(PY) -m robustlab.bench $(ARGS)

# The README's tables and figures in figures/<study>/ (the commands of "Measured results"; studies write only
# to --out otherwise). Runs that already have a record in results/<study>/ are reused, so once they exist this
# only rebuilds tables and figures; FIGURES_ARGS=--collect builds them from existing records and trains nothing.
FIGURES_ARGS ?=
figures: setup
	$(PY) -m studies.noisy_labels --noise 0.3 --coteach --preset quick --out results/noisy_labels --figures-dir figures/noisy_labels $(FIGURES_ARGS)
	$(PY) -m studies.supcon --preset quick --out results/supcon --figures-dir figures/supcon $(FIGURES_ARGS)
	$(PY) -m studies.architectures --preset quick --out results/architectures --figures-dir figures/architectures $(FIGURES_ARGS)
	$(PY) -m studies.regularization --ablation basic --preset quick --out results/regularization --figures-dir figures/regularization $(FIGURES_ARGS)
	$(PY) -m studies.robustness --methods ce,augmix --preset quick --out results/robustness --figures-dir figures/robustness $(FIGURES_ARGS)

clean:
	rm -rf $(VENV) results .pytest_cache mutants

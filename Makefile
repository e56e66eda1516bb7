# Set-up and entry points. Each target creates (or reuses) .venv and installs robustlab into it.
PYTHON ?= python3.11
VENV ?= .venv
# torch is installed first and on its own, so pip never swaps an existing build for another.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: setup demo test bench mutation clean
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

clean:
	rm -rf $(VENV) results .pytest_cache mutants

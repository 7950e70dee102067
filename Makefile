# Set-up is part of every target: a fresh machine needs only Python and pip.
PYTHON ?= python3
VENV ?= .venv
# torch and torchvision are pinned as a pair: torchvision's compiled operators load only against the torch it was built
# for (this machine's local CPU build of torch 2.13.0 lacks them: "operator torchvision::nms does not exist").
# Override for another build, e.g. `make test TORCH_SPEC="torch==2.6.0 torchvision==0.21.0"`; each word is quoted,
# so that a spec such as torch>=2.5 is not a shell redirect.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test docs bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(patsubst %,"%",$(TORCH_SPEC))
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	WANDB_MODE=$${WANDB_MODE:-offline} $(BIN)/lit-metric fit --config digits

test: $(STAMP)
	WANDB_MODE=offline $(BIN)/python -m pytest -q tests

# The site with the API reference, in site/; `make test` builds it too, in strict mode.
docs: $(STAMP)
	$(BIN)/python -m mkdocs build --strict

bench: $(STAMP)
	$(BIN)/python benchmarks/loss.py
	$(BIN)/python benchmarks/retrieval.py
	$(BIN)/python benchmarks/baselines.py

clean:
	rm -rf $(VENV) lightning_logs wandb runs site

# Two commands do everything on a fresh machine:
#   make run    create .venv, build (release), run the main job (Yin-Yang, 4-30-3, synaptic delays)
#   make test   lint (rustfmt, clippy), build, cargo test, pytest
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIPELINE ?= pipelines/yinyang_synaptic.toml

.PHONY: run test lint install cargo-test pytest bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

# `pip install -e` builds the Rust extension in release mode (maturin, Cargo.lock respected).
install: $(PY)
	$(PY) -m pip install -e ".[test,digits,sweep,distributed,shd,nir,log]"

run: install
	$(VENV)/bin/delgrad run $(PIPELINE)

# Lint: Rust formatting (rustfmt.toml) and clippy with warnings as errors for the whole
# workspace; Python lint and formatting (ruff, configured in pyproject.toml).
lint: install
	cargo fmt --all --check
	cargo clippy --locked --workspace --all-targets -- -D warnings
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

cargo-test:
	cargo test --locked --release -p delgrad-core

pytest: install
	$(PY) -m pytest

test: install lint cargo-test
	$(PY) -m pytest

bench: install
	$(PY) benchmarks/ttfs_throughput.py

clean:
	rm -rf target $(VENV) runs

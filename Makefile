# Every target bootstraps .venv itself, so a fresh clone needs nothing installed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow bench validate clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,data]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m hadainit.experiments.cli ufm --out out/ufm --overwrite
	$(PY) -m hadainit.experiments.cli real --out out/real --overwrite

validate: $(STAMP)
	$(PY) -m hadainit.experiments.cli validate --out out/validate --overwrite

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	HADAINIT_SLOW=1 $(PY) -m pytest -q

# the peers fwht is compared with (benchmark-only extra, never a dependency of the package)
$(VENV)/.bench: $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,data,bench]'
	touch $(VENV)/.bench

bench: $(VENV)/.bench
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) build dist *.egg-info

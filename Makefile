# Every target bootstraps .venv itself, so a fresh clone needs nothing installed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-isa test-slow bench validate clean

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
	$(PY) -m pytest -q -n 2 --dist loadfile

# The numerics-sensitive part of the suite as an AVX2-only CPU runs it (torch's dispatch, MKL and
# oneDNN capped, the compiled kernel built for AVX2), then the kernels' tests on the SSE baseline
# build: tolerances must hold on every x86-64 CPU, not only on the one CI runs on (issue 21).
NUMERIC_TESTS := tests/test_metrics.py tests/test_metrics_float32.py tests/test_metrics_state.py \
	tests/test_logit_spectrum.py tests/test_feature_source.py tests/test_monitor_publish.py \
	tests/test_monitor_lifecycle.py tests/test_real_digits.py \
	tests/test_fwht_kernel.py tests/test_fused_step.py tests/test_spectral_dynamics.py \
	tests/test_ufm_model.py tests/test_lyapunov.py tests/test_unbalanced_lyapunov.py tests/test_drift.py \
	tests/test_properties.py tests/test_extremes.py
KERNEL_TESTS := tests/test_fwht_kernel.py tests/test_fused_step.py tests/test_hadamard.py
AVX2_ENV := ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 HADAINIT_KERNEL_ISA=avx2
SSE_ENV := ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 ONEDNN_MAX_CPU_ISA=SSE41 HADAINIT_KERNEL_ISA=sse

test-isa: $(STAMP)
	$(AVX2_ENV) $(PY) -m pytest -q -p no:cacheprovider $(NUMERIC_TESTS)
	$(SSE_ENV) $(PY) -m pytest -q -p no:cacheprovider $(KERNEL_TESTS)

test-slow: $(STAMP)
	HADAINIT_SLOW=1 $(PY) -m pytest -q -n 2 --dist loadfile

# the peers fwht is compared with (benchmark-only extra, never a dependency of the package)
$(VENV)/.bench: $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,data,bench]'
	touch $(VENV)/.bench

bench: $(VENV)/.bench
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) build dist *.egg-info

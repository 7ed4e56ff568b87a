# Two commands do everything on a fresh machine:
#   make demo   -- create the virtual environment if missing, then run the main job on its embedded default
#   make test   -- create the virtual environments if missing, then run the whole test suite
#   make tpu-env -- only the side environment of --mode=tpu_check (XLA's TPU compiler)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

TPU_VENV := .tpu-venv
TPU_STAMP := $(TPU_VENV)/.installed
# Python 3.12 for the TPU compiler's side environment: a pyenv 3.12.x, else python3.12 on PATH.
PYTHON312 ?= $(shell for p in $$(pyenv root 2>/dev/null || echo $$HOME/.pyenv)/versions/3.12*/bin/python3.12 python3.12; do \
  "$$p" -c 1 >/dev/null 2>&1 && { echo "$$p"; break; }; done)

.PHONY: demo test bench venv tpu-env clean shellcheck

$(STAMP): requirements.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip check
	touch $(STAMP)

venv: $(STAMP)

# The side environment of `main.py --mode=tpu_check`: jax + libtpu (XLA's TPU compiler), pinned.
$(TPU_STAMP): requirements-tpu.txt constraints-tpu.txt
	@test -n "$(PYTHON312)" || { echo "make tpu-env needs Python 3.12 (a pyenv 3.12.x or python3.12 on PATH)"; exit 1; }
	test -x $(TPU_VENV)/bin/python || $(PYTHON312) -m venv $(TPU_VENV)
	$(TPU_VENV)/bin/python -m pip install --quiet -r requirements-tpu.txt -c constraints-tpu.txt
	$(TPU_VENV)/bin/python -m pip check
	touch $(TPU_STAMP)

tpu-env: $(TPU_STAMP)

demo: $(STAMP)
	$(PY) main.py --demo

test: $(STAMP) $(TPU_STAMP) shellcheck
	$(PY) -m pytest -n 2 --dist loadgroup -q --durations=25 tests

# The tpu_scripts tests lint with shellcheck when it is installed; as root with apt (CI), install it
# from Debian's packages, otherwise that one test says why it skipped.
shellcheck:
	@command -v shellcheck >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck) >/dev/null 2>&1; } || \
	  echo "shellcheck not installed: the shellcheck test will be skipped"

bench: $(STAMP)
	$(PY) bench/attention.py

clean:
	rm -rf $(VENV) $(TPU_VENV)

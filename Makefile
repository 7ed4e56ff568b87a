# Two commands do everything on a fresh machine:
#   make demo   -- create the virtual environment if missing, then run the main job on its embedded default
#   make test   -- create the virtual environment if missing, then run the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench venv clean shellcheck

$(STAMP): requirements.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip check
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) main.py --demo

test: $(STAMP) shellcheck
	$(PY) -m pytest -n 2 --dist loadgroup -q tests

# The tpu_scripts tests lint with shellcheck when it is installed; as root with apt (CI), install it
# from Debian's packages, otherwise that one test says why it skipped.
shellcheck:
	@command -v shellcheck >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck) >/dev/null 2>&1; } || \
	  echo "shellcheck not installed: the shellcheck test will be skipped"

bench: $(STAMP)
	$(PY) bench/attention.py

clean:
	rm -rf $(VENV)

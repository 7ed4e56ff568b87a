# Two commands do everything on a fresh machine:
#   make demo   -- create the virtual environment if missing, then run the main job on its embedded default
#   make test   -- create the virtual environment if missing, then run the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench venv clean

$(STAMP): requirements.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip check
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) main.py --demo

test: $(STAMP)
	$(PY) -m pytest -n 2 -q tests

bench: $(STAMP)
	$(PY) bench/attention.py

clean:
	rm -rf $(VENV)

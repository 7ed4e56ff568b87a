# Two commands do everything on a fresh machine:
#   make demo   -- create the virtual environment if missing, then run the main job on its embedded default
#   make test   -- create the virtual environments if missing, then run the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# What a TPU host runs (tpu_scripts/host_setup.sh): the project's venv with TensorFlow's TPU build
# and the pinned libtpu over it. For the test that TensorFlow's TPU build loads that libtpu, this
# venv sees the project's packages through a .pth file and holds only those two itself.
TF_TPU_VENV := .tf-tpu-venv
TF_TPU_STAMP := $(TF_TPU_VENV)/.installed
TF_VERSION = $(shell sed -n 's/^tensorflow==\([^ ]*\).*/\1/p' requirements.txt)
LIBTPU_PIN = $(shell sed -n 's/^\(libtpu==[^ ]*\).*/\1/p' requirements.txt)
PURELIB := import sysconfig; print(sysconfig.get_paths()["purelib"])

.PHONY: demo test bench venv tf-tpu-venv clean shellcheck

$(STAMP): requirements.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip check
	touch $(STAMP)

venv: $(STAMP)

$(TF_TPU_STAMP): $(STAMP)
	test -x $(TF_TPU_VENV)/bin/python || $(PY) -m venv --without-pip $(TF_TPU_VENV)
	$(PY) -c '$(PURELIB)' > "$$($(TF_TPU_VENV)/bin/python -c '$(PURELIB)')/project-venv.pth"
	$(PY) -m pip install --quiet --no-deps --ignore-installed \
	  --target "$$($(TF_TPU_VENV)/bin/python -c '$(PURELIB)')" \
	  "tensorflow-tpu==$(TF_VERSION)" "$(LIBTPU_PIN)"
	touch $(TF_TPU_STAMP)

tf-tpu-venv: $(TF_TPU_STAMP)

demo: $(STAMP)
	$(PY) main.py --demo

test: $(STAMP) $(TF_TPU_STAMP) shellcheck
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
	rm -rf $(VENV) $(TF_TPU_VENV)

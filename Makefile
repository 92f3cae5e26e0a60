# Two commands a newcomer needs: `make demo` and `make test`.  Both create
# .venv on first use and rebuild the Cython core when its sources change.
# `make lint` runs ruff, mypy and cython-lint; `make annotate` writes Cython's
# annotated HTML of the core to build/annotate/.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CYTHON_SOURCES := $(wildcard vyrecache/_core/*.pyx vyrecache/_core/*.pxd vyrecache/_core/*.pxi)
CORE_SOURCES := $(wildcard vyrecache/_core/*.pyx vyrecache/_core/*.pxd vyrecache/_core/*.pxi shaders/*.comp) setup.py pyproject.toml

.PHONY: demo test test-debug bench build system-deps clean shaders lint annotate

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "Cython>=3.0.8" "setuptools>=64" wheel "numpy>=1.26"
	$(PY) -m pip install -q --no-build-isolation -e ".[test,bench,plot,lint]"
	touch $(STAMP)

# Rebuild the extensions in place whenever a .pyx/.pxd or shader changes.
$(VENV)/.built: $(STAMP) $(CORE_SOURCES)
	$(PY) setup.py -q build_ext --inplace
	touch $(VENV)/.built

build: $(VENV)/.built

system-deps:
	bash scripts/install-system-deps.sh

demo: system-deps build
	$(PY) -m vyrecache demo

# VYRECACHE_REQUIRE_VULKAN makes the Vulkan tests fail instead of skipping
# when no device is found, so a broken driver install cannot pass silently.
test: system-deps build
	VYRECACHE_REQUIRE_VULKAN=1 $(PY) -m pytest -q

# The same suite (less the slow packaging test) against a build with the internal invariant
# checks compiled in; CI runs both builds.
test-debug: system-deps $(STAMP)
	VYRECACHE_DEBUG=1 $(PY) setup.py -q build_ext --inplace --force
	VYRECACHE_REQUIRE_VULKAN=1 $(PY) -m pytest -q -x -m "not slow"
	rm -f $(VENV)/.built

# cython-lint runs pycodestyle by name, hence the venv first on PATH.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/cython-lint $(CYTHON_SOURCES)

# One HTML page per core module: yellow lines call into the Python C API.
annotate: $(STAMP)
	mkdir -p build/annotate
	for f in vyrecache/_core/*.pyx; do \
		$(PY) -m cython -3 -a -I . --directive binding=False \
			-o build/annotate/$$(basename $${f%.pyx}).c $$f || exit 1; done
	rm -f build/annotate/*.c
	@echo "annotated sources: build/annotate/*.html"

bench: system-deps build
	$(PY) -m vyrecache bench

shaders:
	for f in shaders/*.comp; do glslangValidator -V --target-env vulkan1.1 -o vyrecache/shaders/$$(basename $${f%.comp}).spv $$f >/dev/null || exit 1; done

clean:
	rm -rf build dist *.egg-info vyrecache/_core/*.c vyrecache/_core/*.so vyrecache/_core/*.html $(VENV)/.built

# napari-unet-nuclei: `make demo` and `make test` do all set-up themselves (see README).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP  := $(VENV)/.installed
QT     ?= PyQt6
SYSTEM_PACKAGES := xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-cursor0 \
	libxkbcommon-x11-0 libgl1 libegl1 libgl1-mesa-dri libdbus-1-3 libfontconfig1

.PHONY: demo test lint bench train-default system-deps clean

# torch==2.13.0 first: it takes the local CPU wheel; a loose torch requirement alone would
# pull the multi-GB CUDA build. pyproject.toml keeps torch>=2.4 for GPU users.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	@# an install made under the distribution's former name (napari-unet) would register the plugin twice
	-$(PIP) uninstall -y -q napari-unet 2>/dev/null
	$(PIP) install -q -e ".[napari,test,bioimageio]" "napari[$(shell echo $(QT) | tr A-Z a-z)]"
	touch $(STAMP)

# Qt needs an X server and a few xcb libraries on a bare Debian; install them when we can.
system-deps:
	@if ! command -v Xvfb >/dev/null 2>&1 || ! ldconfig -p | grep -q libxcb-icccm.so.4 || ! ldconfig -p | grep -q libxcb-keysyms.so.1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing Xvfb and Qt's system libraries (apt-get)"; \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-upgrade $(SYSTEM_PACKAGES)) >/dev/null; \
		else \
			echo "note: Xvfb or Qt xcb libraries missing; as root run: apt-get install $(SYSTEM_PACKAGES)"; \
		fi; \
	fi

test: $(STAMP) system-deps
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

demo: $(STAMP) system-deps
	$(PY) scripts/demo.py

bench: $(STAMP)
	$(PIP) install -q -e ".[bench]"
	$(PY) benchmarks/bench_inference.py

train-default: $(STAMP)
	$(PIP) install -q --no-deps mnfinder==1.2.3
	$(PY) scripts/train_default.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache

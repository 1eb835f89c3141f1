# mambabook: two commands do all setup on a fresh machine.
#   make book   build the website into _build/html (executes every chapter)
#   make test   ruff, unit and property tests, every chapter through nbmake, the website
#               build, and the browser tests against the built site
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SCRATCH := .scratch
CHAPTERS := $(wildcard chapters/*.md)
PORT ?= 8000
LAB_PORT ?= 8888
# Triton kernels run on the CPU through Triton's interpreter when no GPU is present.
export TRITON_INTERPRET ?= $(shell python3 -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null && echo 0 || echo 1)
export PYTHONHASHSEED := 0

.PHONY: setup book serve lab test lint unit chapters site browser clean notebooks widget-js

setup: $(STAMP)
$(STAMP): pyproject.toml tools/setup_env.sh
	bash tools/setup_env.sh

widget-js:
	bash tools/fetch_widget_js.sh

# Each chapter as a real .ipynb (for nbmake, for JupyterLab users, and as downloads).
notebooks: $(STAMP)
	rm -rf $(SCRATCH)/notebooks && mkdir -p $(SCRATCH)/notebooks
	for f in $(CHAPTERS); do $(VENV)/bin/jupytext --quiet --to ipynb -o $(SCRATCH)/notebooks/$$(basename $${f%.md}).ipynb $$f || exit 1; done

book: $(STAMP) widget-js
	$(VENV)/bin/jupyter-book build . --all --warningiserror --keep-going
	@echo "website: _build/html/index.html  (make serve: http://127.0.0.1:$(PORT))"

serve:
	$(PY) -m http.server $(PORT) --bind 127.0.0.1 --directory _build/html

# JupyterLab opens the MyST chapters as notebooks (jupytext's default-viewer setting).
lab: $(STAMP)
	$(PY) -m pip install -q jupyterlab
	mkdir -p $(VENV)/share/jupyter/lab/settings
	echo '{"@jupyterlab/docmanager-extension:plugin": {"defaultViewers": {"markdown": "Jupytext Notebook", "myst": "Jupytext Notebook"}}}' > $(VENV)/share/jupyter/lab/settings/overrides.json
	$(VENV)/bin/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.port=$(LAB_PORT) --no-browser --notebook-dir=chapters $$([ "$$(id -u)" = 0 ] && echo --allow-root)

lint: $(STAMP)
	$(VENV)/bin/ruff check lib kernels tests tools benchmarks _ext

# Two pytest workers share two cores: one thread each, or small ops slow down 10-50x.
unit: $(STAMP)
	MPLBACKEND=Agg OMP_NUM_THREADS=1 $(VENV)/bin/pytest tests --ignore=tests/browser -n 2 -q -p no:cacheprovider

chapters: notebooks
	OMP_NUM_THREADS=1 $(VENV)/bin/pytest --nbmake --nbmake-timeout=300 -n 2 -q -p no:cacheprovider $(SCRATCH)/notebooks

browser: $(STAMP)
	$(VENV)/bin/pytest tests/browser -q -p no:cacheprovider

test: lint unit chapters book browser

clean:
	rm -rf _build $(SCRATCH) .jupyter_cache

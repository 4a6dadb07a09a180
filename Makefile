# PillSnap: the two commands of the README. Everything else is set up on the way.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := work/demo
PM     := $(BIN)/papermill --cwd nbs -k python3 --log-level WARNING
DEMO_P := -p data_root $(CURDIR)/$(DEMO)/data -p work_dir $(CURDIR)/$(DEMO) -p check images -p eval_images 24

.PHONY: install browser demo test clean

install: $(STAMP)

$(STAMP): setup.py settings.ini
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[notebooks,dev,serve]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (PillSnap)"
	touch $(STAMP)

# Synthetic AIHub tree -> scan -> stage notebooks (manifests, YOLO conversion, tiny training, evaluation with gates,
# ONNX export, plots) -> reports/demo/*.html. Few epochs: the demo shows the pipeline, bench/ measures the targets.
demo: install $(DEMO)/data/synth_images.csv
	$(BIN)/pillsnap scan --data-root $(DEMO)/data --check images --out $(DEMO)/inventory
	mkdir -p reports/demo
	$(PM) nbs/stage1.ipynb reports/demo/stage1.ipynb $(DEMO_P) -p strategy single_only -p samples 240 -p classes 20 -p epochs 3
	$(PM) nbs/stage2.ipynb reports/demo/stage2.ipynb $(DEMO_P) -p strategy combo_light -p samples 300 -p classes 24 -p epochs 3
	$(PM) nbs/stage3.ipynb reports/demo/stage3.ipynb $(DEMO_P) -p strategy max_combo -p samples 300 -p classes 28 -p epochs None
	$(PM) nbs/stage4.ipynb reports/demo/stage4.ipynb $(DEMO_P) -p strategy balanced -p samples 400 -p epochs 2
	$(BIN)/jupyter nbconvert --to html --no-input reports/demo/stage*.ipynb
	@echo "Reports: reports/demo/stage{1,2,3,4}.html"

# Written once; delete work/demo (or `make clean`) to write it anew.
$(DEMO)/data/synth_images.csv: | install
	$(BIN)/pillsnap synth $(DEMO)/data --classes 30 --combos 60 --faults

# The monitor's browser test drives Debian's Chromium (no browser download is possible or wanted).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

test: install browser
	$(BIN)/nbdev_test
	$(BIN)/pytest -q --durations=20 tests

clean:
	rm -rf work nbs/work reports/demo .ultralytics

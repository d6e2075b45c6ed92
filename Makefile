# `make demo`: install into .venv, train the tiny Transformer with Adam and with Shampoo (each
# stops at its target), and compare them (table + PNG curves in runs/demo/compare).
# `make test`: install/update .venv and run the whole suite (8 simulated CPU devices, 2 workers).
# `make install ACCEL=cuda|tpu` adds the accelerator's pinned packages (requirements-<ACCEL>.lock) to
# the CPU set; the stamp names the accelerator, so `make test` after a GPU install keeps the GPU.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ACCEL ?= $(or $(patsubst $(VENV)/.installed-%,%,$(firstword $(wildcard $(VENV)/.installed-*))),cpu)
ACCELS := cpu cuda tpu
$(if $(filter $(ACCEL),$(ACCELS)),,$(error ACCEL=$(ACCEL) is not known: choose cpu, cuda or tpu))
ACCEL_LOCK := $(if $(filter-out cpu,$(ACCEL)),requirements-$(ACCEL).lock)
STAMP := $(VENV)/.installed-$(ACCEL)
DEMO := runs/demo

.PHONY: install plans demo diagnostics width-transfer report tiny-targets coord-check test lock clean

install: $(STAMP)

$(STAMP): requirements.lock $(ACCEL_LOCK) pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-deps -r requirements.lock $(if $(ACCEL_LOCK),-r $(ACCEL_LOCK))
	$(if $(ACCEL_LOCK),,$(PY) -m pip uninstall --quiet --yes jax-cuda12-plugin jax-cuda12-pjrt 2>/dev/null || true)
	$(PY) -m pip install --quiet --no-deps $$($(PY) -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml','rb'))['project']['optional-dependencies']['test']))")
	rm -f $(VENV)/.installed-* && touch $(STAMP)

demo: $(STAMP)
	for optimizer in adam shampoo; do \
	  $(PY) main.py --config=configs/transformer_$$optimizer.py:tiny --config.stop_at_target=True \
	      --workdir=$(DEMO)/transformer_$$optimizer-tiny || exit 1; \
	done
	$(PY) -m results.compare $(DEMO) --out $(DEMO)/compare

# Curvature diagnostics along SGD, Adam and Shampoo trajectories (tiny lp_regression and Transformer);
# results/diagnostics_tiny/ holds what it wrote (table.md and the PNG curves).
DIAGNOSTICS := runs/diagnostics
diagnostics: $(STAMP)
	for optimizer in sgd adam shampoo; do \
	  $(PY) main.py --config=configs/lp_regression_$$optimizer.py:tiny --config.diagnostics.every=25 \
	      --workdir=$(DIAGNOSTICS)/lp_regression_$$optimizer || exit 1; \
	  $(PY) main.py --config=configs/transformer_$$optimizer.py:tiny --config.num_steps=600 \
	      --config.diagnostics.every=100 --workdir=$(DIAGNOSTICS)/transformer_$$optimizer || exit 1; \
	done
	$(PY) -m results.compare $(DIAGNOSTICS) --out results/diagnostics_tiny

# muP width transfer: learning-rate sweeps at 3-4 widths under standard and mup, for Adam, Shampoo and
# K-FAC on the tiny Transformer and an MLP (launch/sweeps/width_transfer.py); then, on the MLP, K-FAC
# without its norm constraint (two grids), with damping 0.01, and with the damping swept
# (width_transfer_damping.py, at the rate best at the base width); Shampoo ungrafted with whole-matrix
# statistics (the seed's own rule); and a second seed of K-FAC's. Resumable (finished trials
# are kept). results/width_transfer/ holds what it wrote (table.md and transfer.png).
WIDTH_TRANSFER := runs/sweeps
PARALLEL ?= 2
SWEEP = $(PY) -m launch.sweep --parallel=$(PARALLEL)
MLP_SWEEP = $(SWEEP) --sweep=launch/sweeps/width_transfer.py
width-transfer: $(STAMP)
	for config in lp_regression_adam lp_regression_shampoo lp_regression_kfac \
	              transformer_adam transformer_shampoo transformer_kfac; do \
	  $(SWEEP) --config=configs/$$config.py:tiny --sweep=launch/sweeps/width_transfer.py \
	      --sweep_dir=$(WIDTH_TRANSFER)/width_transfer-$$config || exit 1; \
	done
	for rate in 0.05 0.0001; do \
	  $(MLP_SWEEP) --config=configs/lp_regression_kfac.py:tiny --set optimizer.norm_constraint=0 \
	      --set optimizer.learning_rate=$$rate --sweep_dir=$(WIDTH_TRANSFER)/width_transfer-lp_regression_kfac-unclipped || exit 1; \
	done
	$(MLP_SWEEP) --config=configs/lp_regression_kfac.py:tiny --set optimizer.damping=0.01 \
	    --sweep_dir=$(WIDTH_TRANSFER)/width_transfer-lp_regression_kfac-damping0.01
	$(SWEEP) --config=configs/lp_regression_kfac.py:tiny --sweep=launch/sweeps/width_transfer_damping.py \
	    --set optimizer.learning_rate=0.00625 --sweep_dir=$(WIDTH_TRANSFER)/width_transfer_damping-lp_regression_kfac
	$(MLP_SWEEP) --config=configs/lp_regression_shampoo.py:tiny --set optimizer.graft_type=none \
	    --set optimizer.block_size=512 --set optimizer.merge_small_dims_block_size=1 --set optimizer.learning_rate=0.0008 \
	    --sweep_dir=$(WIDTH_TRANSFER)/width_transfer-lp_regression_shampoo-ungrafted
	$(MLP_SWEEP) --config=configs/lp_regression_kfac.py:tiny --set seed=1 \
	    --sweep_dir=$(WIDTH_TRANSFER)/width_transfer-lp_regression_kfac-seed1
	$(PY) -m results.width_transfer $(WIDTH_TRANSFER)/width_transfer* --out results/width_transfer

# The reproduction report (results/REPORT.md): per tiny config a learning-rate sweep, a damping sweep
# for K-FAC and Shampoo, and 3 seeds of the best setting (launch/report.py; resumable), the optimizer
# cost table (bench/shampoo_overhead.py on this machine; a results/report/cost_gpu.md written on a GPU
# is included too), then results/report.py.
REPORT := runs/report
report: $(STAMP)
	$(PY) -m launch.report --root=$(REPORT) --parallel=$(PARALLEL)
	mkdir -p results/report
	$(PY) bench/shampoo_overhead.py > results/report/cost_cpu.md.tmp && mv results/report/cost_cpu.md.tmp results/report/cost_cpu.md
	$(PY) -m results.report $(REPORT) --out=results/REPORT.md --figures=results/report \
	    --cost=results/report/cost_cpu.md $(if $(wildcard results/report/cost_gpu.md),--cost=results/report/cost_gpu.md) \
	    $(if $(wildcard results/report_discussion.md),--discussion=results/report_discussion.md)

# Every tiny config as committed, 3 seeds, each stopping at its own target (launch/tiny_targets.py;
# resumable): the table lands in results/tiny_targets.md; exits 1 when a seed missed its target.
TINY_TARGETS := runs/tiny_targets
tiny-targets: $(STAMP)
	$(PY) -m launch.tiny_targets --root=$(TINY_TARGETS) --parallel=$(PARALLEL); code=$$?; \
	  if [ -f $(TINY_TARGETS)/tiny_targets.md ]; then cp $(TINY_TARGETS)/tiny_targets.md results/; fi; exit $$code

# The one-step coordinate check (trainer/coord_check.py): a table of width exponents per optimizer.
coord-check: $(STAMP)
	$(PY) bench/coord_check.py

# Plans of every paper config on its hardware (main.py --dry_run; launch/plans.py), rendered into
# docs/scale.md. TPU slices compile here through libtpu (the pinned `tpu` extra, ~700 MB), installed
# into .venv when missing. Plans already in runs/plans are kept: delete it to plan afresh.
plans: $(STAMP)
	$(PY) -m pip show libtpu >/dev/null 2>&1 || $(PY) -m pip install --quiet --no-deps -r requirements-tpu.lock
	$(PY) -m launch.plans --root=runs/plans --parallel=$(PARALLEL) --out=docs/scale.md

# Two pytest workers (pytest-xdist): the tests are mostly single-threaded XLA compilation. A test
# file goes to one worker (--dist loadfile), so its module fixtures (trained runs, generated data
# sets, the report's sweeps) are built once, not once per worker that gets one of its tests.
TEST_WORKERS ?= 2
test: $(STAMP)
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

# Re-resolve the pinned direct dependencies of pyproject.toml into requirements.lock
# (tf-keras without its dependencies: it would pull the full tensorflow wheel beside tensorflow-cpu),
# then each accelerator extra with that lock as constraints: requirements-<accel>.lock holds only what
# the extra adds (a dry run: nothing is downloaded beyond metadata).
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet $$($(PYTHON) -c "import tomllib; print(' '.join(d for d in tomllib.load(open('pyproject.toml','rb'))['project']['dependencies'] if not d.startswith('tf-keras')))")
	.lock-venv/bin/pip install --quiet --no-deps $$(grep -o '"tf-keras==[^"]*"' pyproject.toml | tr -d '"')
	.lock-venv/bin/pip freeze --exclude-editable > requirements.lock
	for accel in cuda tpu; do \
	  .lock-venv/bin/pip install --quiet --dry-run --ignore-installed -c requirements.lock --report .lock-venv/$$accel.json \
	      $$($(PYTHON) -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml','rb'))['project']['optional-dependencies']['$$accel']))") || exit 1; \
	  .lock-venv/bin/python -c "import json, sys; \
	    locked = {line.strip().lower().replace('_', '-') for line in open('requirements.lock')}; \
	    pins = sorted(f\"{p['metadata']['name']}=={p['metadata']['version']}\" for p in json.load(open(sys.argv[1]))['install']); \
	    print('\n'.join(pin for pin in pins if pin.lower().replace('_', '-') not in locked))" .lock-venv/$$accel.json > requirements-$$accel.lock; \
	done
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) runs

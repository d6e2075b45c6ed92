"""bench/accelerator_check.sh before it meets an accelerator: its shell parses, and bad use stops it
with one line and exit 2. Its full run is measured, not tested: on a CPU,
`bash bench/accelerator_check.sh --quick` (docs/accelerators.md)."""

import os
import subprocess
import sys

from conftest import ROOT

SCRIPT = os.path.join(ROOT, 'bench', 'accelerator_check.sh')


def check(*args, **env):
  return subprocess.run(['bash', SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                        env={**os.environ, **env})


def test_the_script_parses():
  assert subprocess.run(['bash', '-n', SCRIPT]).returncode == 0


def test_an_unknown_argument_is_one_line_and_exit_2():
  result = check('--slow')
  assert result.returncode == 2 and result.stderr == (
      'error: unknown argument --slow; usage: bash bench/accelerator_check.sh [--quick]\n')


def test_an_interpreter_without_jax_is_one_line_and_exit_2(tmp_path):
  bare = tmp_path / 'python'
  bare.write_text(f'#!/bin/sh\nexec {sys.executable} -I -S "$@"\n')  # no site-packages: no jax
  bare.chmod(0o755)
  result = check(PYTHON=str(bare))
  assert result.returncode == 2 and result.stderr == (
      f'error: {bare} cannot import jax; run make install ACCEL=cuda (or tpu) first\n')

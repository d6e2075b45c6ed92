"""Multi-process training on one machine: two processes on 127.0.0.1 (CPU collectives over gloo).

Two processes with 2 devices each run the same 4-device mesh as one process with 4
devices and must produce the same losses; a checkpoint written by the two restores in one.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import trainer
from conftest import ROOT, load_config, subprocess_env

LP = dict(name='lp_regression_adam', num_steps=20, eval_every=10, log_every=5, checkpoint_every=10,
          global_batch_size=64)
TRANSFORMER = dict(
    name='transformer_adam', num_steps=12, eval_every=12, log_every=2, checkpoint_every=6,
    global_batch_size=16, eval_batch_size=32, task__train_shards=2, task__generated_train_pairs=2000,
    task__generated_eval_pairs=64, task__vocab_size=300, task__tfds_dir='synthetic_wmt_small',
    task__bleu_every=1, task__bleu_sentences=16, task__max_decode_length=16, task__encoder_layers=1,
    task__decoder_layers=1, schedule__warmup_steps=4)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def main_args(settings: dict, num_steps: int) -> list[str]:
  flags = {**settings, 'num_steps': num_steps}
  return [f'--config=configs/{flags.pop("name")}.py:tiny',
          *(f'--config.{key.replace("__", ".")}={value}' for key, value in flags.items())]


def two_processes(settings: dict, num_steps: int, workdir: str) -> None:
  """main.py twice, 2 CPU devices each, joined through a coordinator on 127.0.0.1."""
  address = f'127.0.0.1:{free_port()}'
  env = subprocess_env(2)
  processes = [subprocess.Popen(
      [sys.executable, 'main.py', *main_args(settings, num_steps), f'--workdir={workdir}',
       f'--coordinator_address={address}', '--num_processes=2', f'--process_id={i}'],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=300)[0] for p in processes]
  for p, out in zip(processes, outputs):
    assert p.returncode == 0, out[-3000:]


def one_process(settings: dict, num_steps: int, workdir: str) -> None:
  """The same run here, in one process on 4 of its devices (a fresh run, or a resume)."""
  overrides = {key: value for key, value in settings.items() if key != 'name'}
  config = load_config(settings['name'], **{**overrides, 'num_steps': num_steps})
  trainer.run(config, workdir, settings['name'], devices=jax.devices()[:4])


def metrics(workdir, split):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    lines = [json.loads(line) for line in f]
  return {(m['step'], k): v for m in lines if m['split'] == split
          for k, v in m.items() if not k.endswith('_seconds') and k not in ('step', 'split')}


@pytest.mark.parametrize('config', [LP, TRANSFORMER], ids=['lp_regression', 'transformer'])
def test_two_processes_train_as_one_and_their_checkpoint_restores_in_one(config, tmp_path):
  """Losses equal a one-process run with the same global batch, also after resuming in one."""
  steps = config['num_steps']
  single, multi = str(tmp_path / 'single'), str(tmp_path / 'multi')
  one_process(config, 2 * steps, single)
  two_processes(config, steps, multi)
  with open(os.path.join(multi, 'summary.json')) as f:
    summary = json.load(f)
  assert summary['devices']['process_count'] == 2 and summary['devices']['count'] == 4
  assert summary['status'] == 'completed' and summary['last_checkpoint_step'] == steps
  one_process(config, 2 * steps, multi)  # resumes the two processes' checkpoint in one

  for split in ('train', 'eval'):
    expected, got = metrics(single, split), metrics(multi, split)
    assert got.keys() == expected.keys() and any(step > steps for step, _ in got)
    np.testing.assert_allclose([got[k] for k in expected], list(expected.values()), rtol=2e-5,
                               err_msg=split)
  if config is TRANSFORMER:
    assert any(name == 'bleu' for _, name in metrics(multi, 'eval'))

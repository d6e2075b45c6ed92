"""What a full disk or a kill mid-write leaves in a workdir costs at most the steps since a readable
checkpoint, says so in one line, and is never deleted."""

import json
import logging
import os
import shutil

import jax
import pytest

import trainer
from conftest import load_config
from errors import ConfigError
from results import runs as runs_lib
from trainer import writers

NAME = 'lp_regression_adam'
COMMON = dict(eval_every=10, log_every=5, checkpoint_every=10)


def run(workdir, num_steps):
  return trainer.run(load_config(NAME, num_steps=num_steps, **COMMON), str(workdir), NAME,
                     devices=jax.devices()[:1])


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  """A run to step 20 with checkpoints at 10 and 20; each test resumes a copy to step 30."""
  workdir = tmp_path_factory.mktemp('faults') / 'run'
  run(workdir, 20)
  return workdir


@pytest.fixture
def workdir(finished, tmp_path):
  copy = tmp_path / 'run'
  shutil.copytree(finished, copy)
  return copy


def metrics(workdir):
  return (workdir / 'metrics.jsonl').read_text()


def empty_step(workdir, step):
  """Every file of a checkpoint step truncated to 0 bytes, as a full disk can leave them."""
  for folder, _, files in os.walk(workdir / 'checkpoints' / str(step)):
    for name in files:
      os.truncate(os.path.join(folder, name), 0)


def train_steps(workdir):
  return [json.loads(line)['step'] for line in metrics(workdir).splitlines()
          if json.loads(line)['split'] == 'train']


def test_a_torn_last_metrics_line_is_dropped_on_resume(workdir, caplog):
  torn = '{"step": 25, "spl'
  with open(workdir / 'metrics.jsonl', 'a') as f:
    f.write(torn)
  with caplog.at_level(logging.WARNING):
    summary = run(workdir, 30)
  assert summary['status'] == 'completed' and summary['step'] == 30
  assert f'metrics.jsonl: dropped a torn last line ({len(torn)} bytes)' in caplog.text
  assert train_steps(workdir) == [5, 10, 15, 20, 25, 30]  # every line parses: the torn one is gone


def test_truncation_ends_every_kept_line_and_drops_torn_bytes_of_any_kind(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_bytes(b'{"step": 5, "split": "train"}\n{"step": 10, "split": "train"}\n\x00\xff{"st')
  writers.truncate_after(str(path), 10)
  assert path.read_bytes() == b'{"step": 5, "split": "train"}\n{"step": 10, "split": "train"}\n'
  path.write_bytes(b'{"step": 5, "split": "train"}')  # whole, but the newline never written
  writers.truncate_after(str(path), 10)
  assert path.read_bytes() == b'{"step": 5, "split": "train"}\n'


def test_a_malformed_line_before_the_last_is_named(workdir):
  lines = metrics(workdir).splitlines(keepends=True)
  lines[2] = '{"step": 10, "spl\n'
  (workdir / 'metrics.jsonl').write_text(''.join(lines))
  with pytest.raises(ConfigError, match=r'^\S*metrics\.jsonl: line 3 is not a JSON object$'):
    run(workdir, 30)


def test_an_unreadable_newest_checkpoint_falls_back_to_the_one_before(workdir, caplog):
  empty_step(workdir, 20)
  with caplog.at_level(logging.WARNING):
    summary = run(workdir, 30)
  assert summary['status'] == 'completed' and summary['step'] == 30
  warnings = [r.getMessage() for r in caplog.records if 'does not restore' in r.getMessage()]
  assert len(warnings) == 1 and warnings[0].startswith('checkpoint step 20 does not restore (JSONDecodeError')
  assert warnings[0].endswith('20.corrupt, resuming from step 10')
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['20', '20.corrupt', '30']
  assert train_steps(workdir) == [5, 10, 15, 20, 25, 30]  # steps 15 and 20 recomputed, once each


def test_no_readable_checkpoint_is_one_error_and_moves_nothing(workdir):
  empty_step(workdir, 10)
  empty_step(workdir, 20)
  with pytest.raises(ConfigError) as error:
    run(workdir, 30)
  message = str(error.value)
  assert message.startswith(f'no checkpoint in {workdir}/checkpoints restores: step 20 (JSONDecodeError: ')
  assert ', step 10 (JSONDecodeError: ' in message and '\n' not in message
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['10', '20']


def test_results_read_a_workdir_with_a_torn_last_line(workdir, capsys):
  with open(workdir / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 25, "spl')
  [run_], _ = runs_lib.load([str(workdir)])
  assert [line['step'] for line in run_.metrics if line['split'] == 'train'] == [5, 10, 15, 20]
  assert 'metrics.jsonl: dropped a torn last line (17 bytes)' in capsys.readouterr().err
  lines = metrics(workdir).splitlines(keepends=True)
  (workdir / 'metrics.jsonl').write_text(''.join(lines[:2] + ['not json\n'] + lines[2:]))
  [run_], _ = runs_lib.load([str(workdir)])
  with pytest.raises(ConfigError, match=r'metrics\.jsonl: line 3 is not a JSON object$'):
    run_.metrics

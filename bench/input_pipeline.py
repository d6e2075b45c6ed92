"""Input pipelines: how fast each task's real reader feeds one host, what a resume costs, and how long
the step waits for its batch.

    python bench/input_pipeline.py [--tasks=transformer,bert,dlrm,resnet50] [--batch=tiny|paper|N] [--batches=200]
        [--late_step=50000] [--wait_steps=200] [--reader_ms=40] [--quick]

Reader table: per task, its `tiny` config's real reader on the offline generated data (tfds
builders, TFRecords, Criteo TSV, JPEGs; generated first if missing) at `--batch` (`tiny`: the
tiny config's; `paper`: the paper config's global batch; or a number), one process: examples/s
over the batches after the first up to `--late_step` (readers that keep positions read there to
learn the position a checkpoint would keep) or over `--batches` (ImageNet, which seeks by the step),
and seconds to the first batch of a reader resumed at step 1 and at `--late_step` from the position
a checkpoint there keeps (the median of 3: what a resume pays).
Wait table: the tiny Transformer trained `--wait_steps` steps in this process with its reader
slowed by `--reader_ms` per batch (still faster than the step), with batches read ahead
(trainer/prefetch.py) and, for comparison, read in the loop's thread when asked for: the share
of train-seconds the loop waited for input. `--quick`: 20 batches, late step 200, 60 wait steps.
"""

import contextlib
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import importlib  # noqa: E402

import jax  # noqa: E402

import tasks  # noqa: E402
from data import batches  # noqa: E402
import trainer  # noqa: E402
from errors import ArgumentParser  # noqa: E402
from trainer import prefetch  # noqa: E402

TASKS = ('transformer', 'bert', 'dlrm', 'resnet50')
RESUMES = 3  # resumes timed at each step (the median is reported)


def load_config(task: str, **overrides):
  config = importlib.import_module(f'configs.{task}_adam').get_config('tiny')
  config.update_from_flattened_dict(overrides)
  return config


def reader_row(task_name: str, batch: str, batches: int, late_step: int) -> str:
  """The reader's row. Its rate is over every batch read after the first: up to `late_step` for a
  reader with positions (it reads there to learn the position a checkpoint would keep, and the
  rate then spans many windows), else `batches`. Each resume is the median of RESUMES."""
  config = load_config(task_name)
  if batch != 'tiny':
    config.global_batch_size = (importlib.import_module(f'configs.{task_name}_adam').get_config('paper').global_batch_size
                                if batch == 'paper' else int(batch))
  task = tasks.get(task_name)(config)
  task.prepare_data()
  start = time.perf_counter()
  stream = task.train_data(0, 1, 0)
  next(stream)
  first, first_position = time.perf_counter() - start, stream.position
  # None: the reader seeks by the step alone, and nothing needs reading to find the late position.
  count = batches if first_position is None else late_step - 1
  start = time.perf_counter()
  for _ in range(count):
    next(stream)
  per_second = count * config.global_batch_size / (time.perf_counter() - start)
  kept = {1: first_position, late_step: stream.position}
  resume = {}
  for step in (1, late_step):
    seconds = []
    for _ in range(RESUMES):
      start = time.perf_counter()
      next(task.train_data(0, 1, step, kept[step]))
      seconds.append(time.perf_counter() - start)
    resume[step] = statistics.median(seconds)
  return (f'| {task_name} | {config.global_batch_size} | {per_second:,.0f} | {first:.2f} | '
          f'{resume[1]:.2f} | {resume[late_step]:.2f} |')


class _ReadWhenAsked:
  """The Prefetcher's interface, reading in the loop's thread when the loop asks (no read-ahead)."""

  def __init__(self, batches, place, count, depth=prefetch.DEPTH):
    self._batches, self._place = batches, place

  def get(self):
    start = time.perf_counter()
    batch = self._place(next(self._batches))
    return batch, time.perf_counter() - start

  def close(self):
    pass


def wait_row(label: str, prefetcher, steps: int, reader_ms: float) -> str:
  task_class = tasks.get('transformer')
  original = task_class.train_data

  def slowed(self, process_index, process_count, start_step, position=None):
    stream = original(self, process_index, process_count, start_step, position)

    def slow():
      for batch in stream:
        time.sleep(reader_ms / 1000)
        yield batch, stream.position
    return batches.Stream(slow())

  config = load_config('transformer', num_steps=steps, eval_every=steps, checkpoint_every=steps,
                       **{'task.bleu_sentences': 0, 'schedule.warmup_steps': steps // 4})
  task_class.train_data, saved = slowed, prefetch.Prefetcher
  prefetch.Prefetcher = prefetcher
  try:
    with tempfile.TemporaryDirectory() as workdir:
      summary = trainer.run(config, workdir, 'transformer_adam', devices=jax.devices()[:1])
  finally:
    task_class.train_data, prefetch.Prefetcher = original, saved
  train, waited = summary['train_seconds'], summary['input_wait_seconds']
  return (f'| {label} | {steps} | {1000 * train / steps:.1f} | {reader_ms:g} | {waited:.2f} | '
          f'{100 * waited / train:.1f}% |')


def main(argv=None) -> int:
  parser = ArgumentParser(prog='python bench/input_pipeline.py', description=__doc__.split('\n\n')[0])
  parser.add_argument('--tasks', default=','.join(TASKS), help='comma-separated, from ' + ', '.join(TASKS))
  parser.add_argument('--batch', default='tiny',
                      help="the reader table's global batch: tiny (the tiny config's), paper (the paper config's) or a number")
  parser.add_argument('--batches', type=int, default=200)
  parser.add_argument('--late_step', type=int, default=50_000)
  parser.add_argument('--wait_steps', type=int, default=200)
  parser.add_argument('--reader_ms', type=float, default=40.0)
  parser.add_argument('--quick', action='store_true')
  args = parser.parse_args(argv)
  names = [name for name in args.tasks.split(',') if name]
  unknown = sorted(set(names) - set(TASKS))
  if unknown:
    parser.error(f'unknown tasks {", ".join(unknown)}: choose among {", ".join(TASKS)}')
  if args.batch not in ('tiny', 'paper') and not args.batch.isdigit():
    parser.error(f'--batch={args.batch} must be tiny, paper or a number of examples')
  if args.quick:
    args.batches, args.late_step, args.wait_steps = 20, 200, 60
  if args.late_step < 2:
    parser.error(f'--late_step={args.late_step} must be at least 2')
  print('| task | global batch | examples/s | first batch (s) | resume at step 1 (s) | '
        f'resume at step {args.late_step} (s) |\n|---|---|---|---|---|---|', flush=True)
  for name in names:
    with contextlib.redirect_stdout(sys.stderr):  # data generation's progress lines
      row = reader_row(name, args.batch, args.batches, args.late_step)
    print(row, flush=True)
  print('\n| tiny Transformer, reader | steps | ms / step | reader ms / batch | input wait (s) | '
        'share of train-seconds |\n|---|---|---|---|---|---|', flush=True)
  for label, prefetcher in (('read ahead (trainer/prefetch.py)', prefetch.Prefetcher),
                            ('read when asked, in the loop', _ReadWhenAsked)):
    with contextlib.redirect_stdout(sys.stderr):  # the run's progress lines
      row = wait_row(label, prefetcher, args.wait_steps, args.reader_ms)
    print(row, flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())

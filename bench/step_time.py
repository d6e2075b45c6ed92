"""Training step time of one config on 1 and on N simulated (or real) devices.

    python bench/step_time.py --config=configs/lp_regression_adam.py:tiny --devices=1,8

Each device count runs in its own process (the CPU device count is fixed when
JAX starts), trains `--steps` steps with evaluation and checkpoints pushed past
the end, and reports train-seconds per step from its summary.json: compilation
and evaluation excluded, as everywhere in this project.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from errors import ArgumentParser  # noqa: E402


def measure(config: str, devices: int, steps: int, mesh: str, extra: list[str]) -> dict:
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  with tempfile.TemporaryDirectory() as workdir:
    args = [sys.executable, os.path.join(ROOT, 'main.py'), f'--config={config}', f'--workdir={workdir}',
            f'--config.num_steps={steps}', f'--config.eval_every={steps}', f'--config.log_every={steps}',
            f'--config.checkpoint_every={steps}', *mesh_flags(mesh, devices), *extra]
    result = subprocess.run(args, env=env, capture_output=True, text=True)
    if result.returncode != 0:
      sys.exit(f'{devices} devices failed:\n{result.stderr[-3000:]}')
    with open(os.path.join(workdir, 'summary.json')) as f:
      return json.load(f)


def mesh_flags(mesh: str, devices: int) -> list[str]:
  if devices == 1:
    return ['--config.mesh.data=1', '--config.mesh.model=1']
  return [f'--config.mesh.{axis}={size}' for axis, size in
          (part.split('=') for part in mesh.split(','))] if mesh else []


def main():
  parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', default='configs/lp_regression_adam.py:tiny')
  parser.add_argument('--devices', default='1,8', help='comma-separated device counts')
  parser.add_argument('--steps', type=int, default=2000)
  parser.add_argument('--mesh', default='data=4,model=2', help='mesh for counts > 1, e.g. data=4,model=2')
  parser.add_argument('overrides', nargs='*', help='extra --config.x=y flags')
  args = parser.parse_args()
  print(f'config {args.config}, {args.steps} steps\n')
  print('| devices | mesh | ms / step | steps / s | compile s | platform |')
  print('|---|---|---|---|---|---|')
  for count in map(int, args.devices.split(',')):
    s = measure(args.config, count, args.steps, args.mesh, args.overrides)
    ms = 1000 * s['train_seconds'] / s['step']
    mesh = 'x'.join(f'{k}={v}' for k, v in s['mesh'].items())
    print(f'| {count} | {mesh} | {ms:.3f} | {1000 / ms:.0f} | {s["compile_seconds"]:.2f} | '
          f'{s["devices"]["platform"]} ({s["devices"]["kind"]}) |')


if __name__ == '__main__':
  main()

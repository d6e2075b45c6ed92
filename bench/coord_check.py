"""The one-step coordinate check for every optimizer, under standard and mup: a table of exponents.

    .venv/bin/python bench/coord_check.py [--widths=64,128,256,512,1024] [--base_width=64]

For each optimizer (trainer/coord_check.py says with which settings) and parameterization,
trains one step of a 3-layer tanh MLP at each width and fits, per layer, p in
RMS(change of the layer's output) ~ width^p. muP holds every p near 0.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from errors import ArgumentParser  # noqa: E402
from trainer import coord_check  # noqa: E402

LAYERS = {'layer0': 'first hidden', 'layer1': 'second hidden', 'layer2': 'output'}


def main(argv=None) -> int:
  parser = ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--widths', default='64,128,256,512,1024')
  parser.add_argument('--base_width', type=int, default=64)
  parser.add_argument('--optimizers', default=','.join(coord_check.OPTIMIZERS))
  args = parser.parse_args(argv)
  widths = [int(w) for w in args.widths.split(',')]
  print(f'p in RMS(first update of a layer\'s output) ~ width^p, widths {widths}, base_width {args.base_width}\n')
  print('| optimizer | parameterization | ' + ' | '.join(LAYERS.values()) + ' |')
  print('|---|---|' + '---:|' * len(LAYERS))
  for optimizer in args.optimizers.split(','):
    for parameterization in ('standard', 'mup'):
      sizes = [coord_check.update_sizes(coord_check.check_config(optimizer, parameterization, w, args.base_width))
               for w in widths]
      exponents = coord_check.exponents(widths, sizes)
      print(f'| {optimizer} | {parameterization} | ' + ' | '.join(f'{exponents[k]:+.2f}' for k in LAYERS) + ' |',
            flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())

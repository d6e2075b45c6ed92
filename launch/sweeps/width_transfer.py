"""Width transfer (muP): learning rate x width x parameterization, one seed, fixed length.

    python -m launch.sweep --config=configs/lp_regression_kfac.py:tiny --sweep=launch/sweeps/width_transfer.py
    (and lp_regression_{adam,shampoo}, transformer_{adam,shampoo,kfac}; see `make width-transfer`)
    python -m results.width_transfer runs/sweeps/width_transfer* --out=results/width_transfer

The classic transfer picture (Yang et al. 2022, Fig. 1): the final eval loss against
the learning rate, one curve per width, under `standard` and `mup`. `base_width` is
the narrowest width, so there the two parameterizations are the same run. The model
is a 3-layer tanh MLP on the lp_regression data with squared error (32 -> width ->
width -> 1; widths 64..512, learning rates the config's x 2^-6 .. 2^2, 300 steps) or
the tiny Transformer (d_model 32..128, feed-forward 4x, 4 heads; x 2^-3 .. 2^5, 200
steps: 200 steps favour large rates). Runs never stop at the target: the loss after a fixed
number of steps is the quantity that transfers. One seed, the config's: `--set seed=1` repeats
the sweep with another (and `--set optimizer.norm_constraint=0` runs it with a setting changed).
"""

from launch import space

CONFIG = 'configs/lp_regression_adam.py:tiny'

# The Transformer's widths and grid are smaller: at d_model 256 one 300-step trial took 150 s (Adam)
# and 344 s (K-FAC) on 2 CPU cores.
WIDTHS = {'lp_regression': (64, 128, 256, 512), 'transformer': (32, 64, 128)}
WIDTH_FIELD = {'lp_regression': 'task.width', 'transformer': 'task.features'}
LR_FACTORS = {'lp_regression': tuple(2.0 ** k for k in range(-6, 3)),
              'transformer': tuple(2.0 ** k for k in range(-3, 6))}
STEPS = {'lp_regression': 300, 'transformer': 200}
TASK_SETTINGS = {
    'lp_regression': {'task.depth': 3, 'task.activation': 'tanh', 'task.p': 2, 'task.init_scale': 1.0},
    'transformer': {'task.bleu_sentences': 0, 'schedule.warmup_steps': 40},
}


def get_sweep(config):
  task = config.task.name
  if task not in WIDTHS:
    raise ValueError(f'width_transfer sweeps {", ".join(WIDTHS)}, not {task!r}')
  learning_rate = config.optimizer.learning_rate
  steps = STEPS[task]
  return dict(
      space={'parameterization': space.grid('standard', 'mup'),
             WIDTH_FIELD[task]: space.grid(*WIDTHS[task]),
             'optimizer.learning_rate': space.grid(*(float(f'{learning_rate * f:.3g}') for f in LR_FACTORS[task]))},
      seeds=[config.seed],  # `--set seed=1` repeats the sweep with another seed
      fixed={'base_width': WIDTHS[task][0], 'num_steps': steps, 'eval_every': steps, 'log_every': steps // 6,
             'checkpoint_every': steps, 'stop_at_target': False, **TASK_SETTINGS[task]},
  )

"""transformer with Adagrad: `python main.py --config=configs/transformer_adagrad.py:tiny`.

Tiny: the accumulator starts at 0, not optax's 0.1. The tiny model's gradients are small, so a
start of 0.1 outweighs their squares for hundreds of steps and Adagrad behaves like plain SGD
(the best rate, 0.5, left eval log-perplexity 2.41 after 300 steps). From 0, eval
log-perplexity after 400 steps (100 warm-up): lr 0.01: 2.50, 0.03: 1.53, 0.1: 0.63; the
committed setting reaches the target 0.3 at step 900 of 2000.
"""

from configs import _transformer
from configs import base


def get_config(size: str = 'paper'):
  config = _transformer.get_config(size)
  if size == 'tiny':
    config.optimizer = base.optimizer('adagrad', learning_rate=0.1, initial_accumulator_value=0.0)
  else:
    # our choice: untuned at this scale (no Adagrad rate for the Transformer is taken from a paper)
    config.optimizer = base.optimizer('adagrad', learning_rate=0.5)
  return config

"""The lp_regression task block and run lengths shared by its per-optimizer configs.

Arora, Cohen & Hazan (ICML 2018), Section 7: l_4 regression on the UCI gas-sensor
data, depth 1 vs over-parameterized depth 2/3. `paper` reads the real data
(unpack batch1.dat..batch10.dat into <data_dir>/gas_sensor); its batch size,
run length and target are this project's choices, not the paper's (it reports
curves, not targets). `tiny` generates a correlated-feature set of the same format.
"""

import ml_collections

from configs import base


def get_config(size: str) -> ml_collections.ConfigDict:
  config = base.get_config(base.check_size(size))
  tiny = size == 'tiny'
  config.task = ml_collections.ConfigDict(dict(
      name='lp_regression',
      p=4,                  # the loss is mean |x.w - y|^p
      depth=1,              # 1: plain linear regression; N > 1: w = W_1 ... W_N
      width=0,              # hidden width of W_1..W_{N-1}; 0 = number of features
      init_scale=0.1,       # weights ~ N(0, init_scale^2 / fan_in)
      activation='linear',  # between the layers: linear (a deep linear model) | tanh | relu (an MLP)
      dataset='gas_sensor_generated' if tiny else 'gas_sensor',  # our choice: a folder name
      generate=tiny,        # write a generated data set if data_dir has none
      num_examples=4096,    # generated data only
      num_features=32 if tiny else 128,  # UCI Gas Sensor Array Drift: 128 features a measurement
      eval_fraction=0.2,
      data_seed=0,
  ))
  # Arora et al. 2018 report curves only: the run's shape is this project's.
  config.global_batch_size = 128 if tiny else 1024  # our choice: about 1/10 of the 13,910 measurements
  config.eval_batch_size = 512 if tiny else 2048  # our choice: the eval split in two batches
  config.num_steps = 400 if tiny else 5000  # our choice: long enough for depth 1 and 2 to separate
  config.eval_every = 25 if tiny else 250  # our choice: 20 evaluations a run
  config.log_every = 25 if tiny else 50  # our choice: 100 lines a run
  config.checkpoint_every = 200 if tiny else 1000  # our choice: 5 checkpoints a run
  config.target = ('loss', 0.006 if tiny else 0.05, 'below')  # our choice: the paper sets no target
  return config

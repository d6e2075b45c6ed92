"""The DLRM task block and run lengths shared by its per-optimizer configs.

`paper`: MLPerf's DLRM on Criteo 1TB (days 0-22 train, day 23 eval under
<data_dir>/criteo_1tb, see data/criteo.py): 26 tables with the reference's
40M-row cap, embedding 128, bottom MLP 512-256-128, top MLP 1024-1024-512-256-1,
target AUC 0.8025 (MLPerf; PAPERS.md). The table sizes are those commonly listed for
that preprocessing (max_ind_range 40M); the paper's own batch size and AUC values
could NOT be retrieved here, so batch 65536 and 1 epoch are placeholders.
`tiny`: a generated planted-model set (data/synthetic_criteo.py), tables of twice
each generated vocabulary, one pass over 384k lines.
"""

import ml_collections

from configs import base

PAPER_TABLE_SIZES = (39884406, 39043, 17289, 7420, 20263, 3, 7120, 1543, 63, 38532951, 2953546, 403346,
                     10, 2208, 11938, 155, 4, 976, 14, 39979771, 25641295, 39664984, 585935, 12972,
                     108, 36)
# 2v + 1 rows for each vocabulary v of the generated set (data/synthetic_criteo.py VOCAB_SIZES);
# tests/test_dlrm.py checks they agree.
TINY_TABLE_SIZES = (2001, 1001, 10001, 4001, 401, 49, 2401, 601, 7, 10001, 5001, 6001, 3001, 51, 5001,
                    8001, 21, 3001, 4001, 9, 10001, 31, 25, 6001, 101, 5001)


def get_config(size: str) -> ml_collections.ConfigDict:
  config = base.get_config(base.check_size(size))
  tiny = size == 'tiny'
  config.task = ml_collections.ConfigDict(dict(
      name='dlrm',
      table_sizes=TINY_TABLE_SIZES if tiny else PAPER_TABLE_SIZES,
      embedding_dim=16 if tiny else 128,
      # Table rows are padded to a multiple of this (the padding is never looked up) so that the
      # mesh they shard on divides them: 4096 covers every power-of-two slice up to 4096 devices
      # (trainer/hardware.py) at a cost of < 4096 rows a table; 128 covers up to 128 devices.
      row_multiple=128 if tiny else 4096,
      bottom_mlp=(64, 32) if tiny else (512, 256),
      top_mlp=(64, 32) if tiny else (1024, 1024, 512, 256),
      dataset='synthetic_criteo' if tiny else 'criteo_1tb',  # under data_dir (or absolute)
      generate=tiny,
      generated_train=400_000,
      generated_eval=20_000,
      data_seed=0,
      max_eval_examples=0,  # 0 = the whole eval split
  ))
  config.global_batch_size = 128 if tiny else 65536
  config.eval_batch_size = 4096 if tiny else 65536
  config.num_steps = 3000 if tiny else 66_000
  config.eval_every = 250 if tiny else 6600
  config.log_every = 50 if tiny else 100
  config.checkpoint_every = 1000 if tiny else 10_000
  # tiny: 0.03 below the generated eval split's Bayes AUC (0.8102, its bayes.json).
  config.target = ('auc', 0.78 if tiny else 0.8025, 'above')
  return config

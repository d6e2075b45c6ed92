"""The DLRM task block and run lengths shared by its per-optimizer configs.

`paper`: MLPerf's DLRM on Criteo 1TB (days 0-22 train, day 23 eval under
<data_dir>/criteo_1tb, see data/criteo.py): 26 tables with the reference's
40M-row cap, embedding 128, bottom MLP 512-256-128, top MLP 1024-1024-512-256-1,
target AUC 0.8025 (MLPerf), one epoch over the 4,195,197,692 training examples. The
Shampoo paper's DLRM batch is not confirmed: 65536 is this project's choice.
Paper runs update the tables' rows sparsely (Adagrad, beside the config's optimizer), as TPU
embedding practice does; tiny runs send them through the config's optimizer.
`tiny`: a generated planted-model set (data/synthetic_criteo.py), tables of twice
each generated vocabulary, one pass over 384k lines.
"""

import ml_collections

from configs import base

# The MLPerf DLRM reference's rows per categorical feature on Criteo 1TB at max_ind_range=40M.
PAPER_TABLE_SIZES = (39884406, 39043, 17289, 7420, 20263, 3, 7120, 1543, 63, 38532951, 2953546, 403346,
                     10, 2208, 11938, 155, 4, 976, 14, 39979771, 25641295, 39664984, 585935, 12972,
                     108, 36)
# 2v + 1 rows for each vocabulary v of the generated set (data/synthetic_criteo.py VOCAB_SIZES);
# tests/test_dlrm.py checks they agree.
TINY_TABLE_SIZES = (2001, 1001, 10001, 4001, 401, 49, 2401, 601, 7, 10001, 5001, 6001, 3001, 51, 5001,
                    8001, 21, 3001, 4001, 9, 10001, 31, 25, 6001, 101, 5001)

# Criteo 1TB days 0-22, the MLPerf DLRM reference's training split.
CRITEO_1TB_TRAIN_EXAMPLES = 4_195_197_692
PAPER_BATCH = 65536  # our choice: the Shampoo paper's DLRM batch is not confirmed
PAPER_STEPS = -(-CRITEO_1TB_TRAIN_EXAMPLES // PAPER_BATCH)  # one epoch (the reference's): 64014 steps


def get_config(size: str) -> ml_collections.ConfigDict:
  config = base.get_config(base.check_size(size))
  tiny = size == 'tiny'
  config.task = ml_collections.ConfigDict(dict(
      name='dlrm',
      table_sizes=TINY_TABLE_SIZES if tiny else PAPER_TABLE_SIZES,
      embedding_dim=16 if tiny else 128,  # MLPerf DLRM reference: embedding dimension 128
      # Table rows are padded to a multiple of this (the padding is never looked up) so that the
      # mesh they shard on divides them: 4096 covers every power-of-two slice up to 4096 devices
      # (trainer/hardware.py) at a cost of < 4096 rows a table; 128 covers up to 128 devices.
      row_multiple=128 if tiny else 4096,  # our choice: divides every power-of-two slice up to 4096 devices
      # the last layer (embedding_dim / 1 unit) is added by the model
      bottom_mlp=(64, 32) if tiny else (512, 256),  # MLPerf DLRM reference: 512-256-128
      top_mlp=(64, 32) if tiny else (1024, 1024, 512, 256),  # MLPerf DLRM reference: 1024-1024-512-256-1
      # under data_dir (or absolute)
      dataset='synthetic_criteo' if tiny else 'criteo_1tb',  # our choice: a folder name
      generate=tiny,
      generated_train=400_000,
      generated_eval=20_000,
      data_seed=0,
      max_eval_examples=0,  # 0 = the whole eval split
  ))
  # The tables' rows: tiny through the run's optimizer; paper updated sparsely, only the rows a step looks
  # up (optimizers/embeddings.py), at a rate of their own.
  config.embedding_updates.rule = 'dense' if tiny else 'adagrad'  # our choice: TPU embedding practice, Adagrad rows
  config.embedding_updates.learning_rate = 0.0 if tiny else 0.05  # our choice: dlrm_adagrad's paper rate, untuned
  config.global_batch_size = 128 if tiny else PAPER_BATCH
  config.eval_batch_size = 4096 if tiny else 65536  # our choice: memory
  config.num_steps = 3000 if tiny else PAPER_STEPS
  config.eval_every = 250 if tiny else 6400  # our choice: about ten evaluations an epoch
  config.log_every = 50 if tiny else 100  # our choice: a line every few minutes
  config.checkpoint_every = 1000 if tiny else 10_000  # our choice: bounds the work a preemption loses
  # tiny: 0.03 below the generated eval split's Bayes AUC (0.8102, recorded beside the generated data).
  config.target = ('auc', 0.78 if tiny else 0.8025, 'above')  # MLPerf DLRM: AUC 0.8025
  return config

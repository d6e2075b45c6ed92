"""The BERT task block and run lengths shared by its per-optimizer configs.

`paper`: BERT-Large (Devlin et al. 2019) pre-trained on text prepared with
`python -m data.prepare_bert` into <data_dir>/bert_pretraining (see README),
phase 1 (sequence length 128, 20 predictions per sequence; phase 2 is
`--config.task.max_seq_length=512 --config.task.max_predictions_per_seq=76` on data
prepared at that length). Target: masked-LM accuracy 0.720, MLPerf's BERT target
(PAPERS.md); the paper's own BERT target, batch size and run length could NOT be
retrieved here, so batch 4096, 30k steps and 3k warm-up steps are placeholders.
Next-sentence prediction is on, as in the original BERT and MLPerf's reference data
(whether the paper kept it is not confirmed). `tiny`: a 2-layer model on a generated
corpus (data/synthetic_text.py) through the same preparation script.
"""

import ml_collections

from configs import base


def get_config(size: str) -> ml_collections.ConfigDict:
  config = base.get_config(base.check_size(size))
  tiny = size == 'tiny'
  config.task = ml_collections.ConfigDict(dict(
      name='bert',
      model='tiny' if tiny else 'large',  # preset: tiny | base | large (tasks/bert.py MODELS)
      features=0, num_heads=0, hidden=0, layers=0,  # 0 = from the preset
      dropout=-1.0, attention_dropout=-1.0,         # -1 = from the preset
      dtype='float32',                  # activations: float32 | bfloat16
      remat='none' if tiny else 'full',  # recomputed in the backward pass: none | full | dots (tasks/layers.py)
      next_sentence=True,               # also train (and evaluate) next-sentence prediction
      vocab_size=1000 if tiny else 30522,  # embedding rows: at least the prepared vocabulary's ids
      max_seq_length=64 if tiny else 128,
      max_predictions_per_seq=10 if tiny else 20,
      dataset='synthetic_bert' if tiny else 'bert_pretraining',  # prepared dir under data_dir (or absolute)
      generate=tiny,                    # generate + prepare the synthetic corpus if the dir has no data
      generated_documents=3000,
      data_seed=0,
  ))
  config.global_batch_size = 32 if tiny else 4096
  config.eval_batch_size = 128 if tiny else 1024
  config.num_steps = 4000 if tiny else 30_000
  config.eval_every = 200 if tiny else 1000
  config.log_every = 50 if tiny else 100
  config.checkpoint_every = 1000 if tiny else 5000
  config.schedule.warmup_steps = 100 if tiny else 3000
  config.schedule.decay = 'linear'  # BERT's: linear warm-up, then linear decay to 0
  config.target = ('mlm_accuracy', 0.5 if tiny else 0.720, 'above')
  return config

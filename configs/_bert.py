"""The BERT task block and run lengths shared by its per-optimizer configs.

`paper`: BERT-Large as Devlin et al. 2019 define it (24 post-LN layers, hidden 1024, 16 heads),
pre-trained on text prepared with `python -m data.prepare_bert` into <data_dir>/bert_pretraining
(see docs/tasks.md), phase 1 (sequence length 128, 20 predictions per sequence; phase 2 is
`--config.task.max_seq_length=512 --config.task.max_predictions_per_seq=76` on data prepared
at that length). Batch, run length and warm-up are You et al. 2020's (the LAMB paper's)
BERT-Large setting at batch 32K: the Shampoo paper's own BERT batch and step count are not
confirmed. Target: masked-LM accuracy 0.720, MLPerf's BERT target. Next-sentence prediction
is on, as in the original BERT and MLPerf's reference data. `tiny`: a 2-layer pre-LN model
(pre-LN trains stably at its large learning rates; its targets were measured so) on a
generated corpus (data/synthetic_text.py) through the same preparation script.
"""

import ml_collections

from configs import base

LAMB_BATCH = 32768  # You et al. 2020, Table 1: LAMB pre-trains BERT-Large at batch 32K ...
LAMB_STEPS = 15625  # ... in 15625 steps (You et al. 2020, Table 1)


def get_config(size: str) -> ml_collections.ConfigDict:
  config = base.get_config(base.check_size(size))
  tiny = size == 'tiny'
  config.task = ml_collections.ConfigDict(dict(
      name='bert',
      # preset: tiny | base | large (tasks/bert.py MODELS)
      model='tiny' if tiny else 'large',  # Devlin et al. 2019, Sec. 3: BERT-Large, L=24, H=1024, A=16
      features=0, num_heads=0, hidden=0, layers=0,  # 0 = from the preset
      dropout=-1.0, attention_dropout=-1.0,         # -1 = from the preset
      # pre: a norm before each sub-layer and a final one | post: after each residual sum
      layer_norm='pre' if tiny else 'post',  # Devlin et al. 2019, Sec. 3: Vaswani et al.'s post-LN blocks
      dtype='float32',                  # activations: float32 | bfloat16
      # recomputed in the backward pass: none | full | dots (tasks/layers.py)
      remat='none' if tiny else 'full',  # our choice: the paper batch's activations do not fit a device otherwise
      next_sentence=True,               # also train (and evaluate) next-sentence prediction
      # embedding rows: at least the prepared vocabulary's ids
      vocab_size=1000 if tiny else 30522,  # Devlin et al. 2019's released uncased WordPiece vocabulary (MLPerf's)
      max_seq_length=64 if tiny else 128,  # Devlin et al. 2019, Sec. A.2: length 128 for 90% of the steps
      max_predictions_per_seq=10 if tiny else 20,  # BERT reference README: 20 at length 128
      # prepared dir under data_dir (or absolute)
      dataset='synthetic_bert' if tiny else 'bert_pretraining',  # our choice: a folder name
      generate=tiny,                    # generate + prepare the synthetic corpus if the dir has no data
      generated_documents=3000,
      data_seed=0,
  ))
  config.global_batch_size = 32 if tiny else LAMB_BATCH
  config.eval_batch_size = 128 if tiny else 1024  # our choice: memory
  config.num_steps = 4000 if tiny else LAMB_STEPS
  config.eval_every = 200 if tiny else 1000  # our choice: 16 evaluations a run
  config.log_every = 50 if tiny else 100  # our choice: a line every few minutes
  config.checkpoint_every = 1000 if tiny else 5000  # our choice: bounds the work a preemption loses
  # You et al. 2020, Table 4: warm-up over 1/5 of the steps at 32K (0.2 x 15625)
  config.schedule.warmup_steps = 100 if tiny else LAMB_STEPS // 5
  config.schedule.decay = 'linear'  # BERT's: linear warm-up, then linear decay to 0
  config.target = ('mlm_accuracy', 0.5 if tiny else 0.720, 'above')  # MLPerf BERT: masked-LM accuracy 0.720
  return config

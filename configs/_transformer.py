"""The transformer task block, model presets and run lengths shared by its per-optimizer configs.

`paper`: WMT'14 English -> French from a prepared tfds data_dir, <data_dir>/tensorflow_datasets
(`tfds build wmt14_translate/fr-en --data_dir=...`) or `--config.task.tfds_dir=/abs/path`;
the model is Transformer-Big by default, `--config.task.model=base` for the
Transformer. Architectures follow Vaswani et al. 2017 (Table 3: base 512/2048/8
heads, big 1024/4096/16 heads, 6+6 layers; dropout 0.1 for base and for big on
en-fr, label smoothing 0.1; beam 4, length penalty 0.6). NOT CONFIRMED against
Anil et al. 2020 (its text could not be retrieved here, see shared/PAPERS.md):
the batch size, run length and log-perplexity target below are this project's
placeholders; replace them with the paper's Sec. 6 values when checked.

`tiny`: a synthetic en->fr-like corpus (`data/synthetic_translation.py`) written
in the same tfds form on first use, a 2+2-layer d_model-64 model, and a target
Adam reaches in a few minutes on 2 CPU cores.
"""

import ml_collections

from configs import base

def get_config(size: str) -> ml_collections.ConfigDict:
  config = base.get_config(base.check_size(size))
  tiny = size == 'tiny'
  config.task = ml_collections.ConfigDict(dict(
      name='transformer',
      model='tiny' if tiny else 'big',   # preset: tiny | base | big (tasks/transformer.py MODELS)
      features=0, num_heads=0, hidden=0, encoder_layers=0, decoder_layers=0,  # 0 = from the preset
      dropout=-1.0, attention_dropout=-1.0,                                   # -1 = from the preset
      dtype='float32',                   # activations: float32 | bfloat16
      remat='none' if tiny else 'full',  # recomputed in the backward pass: none | full | dots (tasks/layers.py)
      label_smoothing=0.1,
      vocab_size=1000 if tiny else 32000,  # shared SentencePiece vocabulary, trained once and cached
      max_length=64 if tiny else 256,     # packed training rows, tokens per side
      eval_max_length=64 if tiny else 256,  # eval sentences are truncated beyond this
      tfds_dir='synthetic_wmt' if tiny else 'tensorflow_datasets',  # under data_dir (or absolute)
      generate=tiny,                      # write the synthetic corpus if tfds_dir has no data
      generated_train_pairs=40_000,
      generated_eval_pairs=1000,
      data_seed=0,
      train_shards=0,  # 0: one train stream per process; N (a multiple of the process count):
                       # N streams shared out among the processes, batches independent of their count
      bleu_every=4 if tiny else 5,        # BLEU every this many evaluations (and at the end)
      bleu_sentences=128 if tiny else 3003,  # first N newstest2014 sentences; 0 disables BLEU
      beam_size=4,
      length_penalty=0.6,
      max_decode_length=48 if tiny else 256,
  ))
  config.global_batch_size = 32 if tiny else 1536   # rows of max_length packed tokens
  config.eval_batch_size = 128 if tiny else 512
  config.num_steps = 2000 if tiny else 100_000
  config.eval_every = 100 if tiny else 2000
  config.log_every = 50 if tiny else 100
  config.checkpoint_every = 1000 if tiny else 5000
  config.schedule.warmup_steps = 200 if tiny else 4000
  config.schedule.decay = 'rsqrt'
  # Token log-perplexity on the eval split (no label smoothing).
  config.target = ('loss', 0.3 if tiny else 2.0, 'below')
  return config

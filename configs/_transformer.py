"""The transformer task block, model presets and run lengths shared by its per-optimizer configs.

`paper`: WMT'14 English -> French from a prepared tfds data_dir, <data_dir>/tensorflow_datasets
(`tfds build wmt14_translate/fr-en --data_dir=...`) or `--config.task.tfds_dir=/abs/path`.
The model is Anil et al. 2020's Transformer-Big (Sec. 6: 375.4M parameters, 6+6 layers, model
1024, feed-forward 8192, 16 heads, a 32K word-piece vocabulary): Vaswani et al. 2017's big
model (Table 3) with the wider feed-forward layer and untied source, target and output
embeddings, which that count takes. `--config.task.model=base` is the paper's Transformer
(93.3M parameters untied). Each `paper` value names its source; the batch, run length and
log-perplexity target are this project's placeholders (docs/fidelity.md).

`tiny`: a synthetic en->fr-like corpus (`data/synthetic_translation.py`) written
in the same tfds form on first use, a 2+2-layer d_model-64 model with tied embeddings,
and a target Adam reaches in a few minutes on 2 CPU cores.
"""

import ml_collections

from configs import base

def get_config(size: str) -> ml_collections.ConfigDict:
  config = base.get_config(base.check_size(size))
  tiny = size == 'tiny'
  config.task = ml_collections.ConfigDict(dict(
      name='transformer',
      # preset: tiny | base | big | big_ff8192 (tasks/transformer.py MODELS)
      model='tiny' if tiny else 'big_ff8192',  # Anil et al. 2020, Sec. 6: Transformer-Big, 1024 / 8192 / 16 heads
      features=0, num_heads=0, hidden=0, encoder_layers=0, decoder_layers=0,  # 0 = from the preset
      dropout=-1.0, attention_dropout=-1.0,                                   # -1 = from the preset
      # paper untied: Anil et al. 2020, Sec. 6's 375.4M counts three 32K x 1024 matrices (source, target, softmax)
      tie_embeddings=tiny,
      dtype='float32',                   # activations: float32 | bfloat16
      # recomputed in the backward pass: none | full | dots (tasks/layers.py)
      remat='none' if tiny else 'full',  # our choice: the paper batch's activations do not fit a device otherwise
      label_smoothing=0.1,
      # shared SentencePiece vocabulary, trained once and cached
      vocab_size=1000 if tiny else 32000,  # Anil et al. 2020, Sec. 6: a 32K word-piece vocabulary
      max_length=64 if tiny else 256,     # our choice: packed training rows, tokens per side
      eval_max_length=64 if tiny else 256,  # our choice: eval sentences are truncated beyond this
      # under data_dir (or absolute)
      tfds_dir='synthetic_wmt' if tiny else 'tensorflow_datasets',  # our choice: tfds's own folder name
      generate=tiny,                      # write the synthetic corpus if tfds_dir has no data
      generated_train_pairs=40_000,
      generated_eval_pairs=1000,
      data_seed=0,
      train_shards=0,  # 0: one train stream per process; N (a multiple of the process count):
                       # N streams shared out among the processes, batches independent of their count
      bleu_every=4 if tiny else 5,        # our choice: BLEU every this many evaluations (and at the end)
      # first N newstest2014 sentences; 0 disables BLEU
      bleu_sentences=128 if tiny else 3003,  # WMT'14 newstest2014 en-fr: all 3003 sentences
      beam_size=4,
      length_penalty=0.6,
      max_decode_length=48 if tiny else 256,  # our choice: eval_max_length
  ))
  # rows of max_length packed tokens
  config.global_batch_size = 32 if tiny else 1536  # our choice: placeholder, the paper's batch is not confirmed
  config.eval_batch_size = 128 if tiny else 512  # our choice: memory
  config.num_steps = 2000 if tiny else 100_000  # our choice: placeholder, Vaswani et al. 2017 Sec. 5.2's base run length
  config.eval_every = 100 if tiny else 2000  # our choice: 50 evaluations a run
  config.log_every = 50 if tiny else 100  # our choice: a line every few minutes
  config.checkpoint_every = 1000 if tiny else 5000  # our choice: bounds the work a preemption loses
  config.schedule.warmup_steps = 200 if tiny else 4000  # Vaswani et al. 2017, Sec. 5.3: warmup_steps = 4000
  config.schedule.decay = 'rsqrt'
  # Token log-perplexity on the eval split (no label smoothing).
  config.target = ('loss', 0.3 if tiny else 2.0, 'below')  # our choice: placeholder, the paper's target is not confirmed
  return config

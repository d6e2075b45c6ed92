"""Every bad input is one ConfigError naming its field, raised before the workdir is written.

In process, so that the table can be long: a subprocess per case would cost seconds of start-up
(tests/test_cli.py checks that main.py turns a ConfigError into one `error:` line and exit 2).
"""

import math

import pytest

import trainer
from conftest import load_config
from errors import ConfigError

NAN, INF = math.nan, math.inf

# (config, overrides, a fragment of the message)
CASES = [
    # ---- Run fields.
    ('lp_regression_adam', dict(optimizer__learning_rate=NAN), 'optimizer.learning_rate=nan'),
    ('lp_regression_adam', dict(optimizer__learning_rate=INF), 'optimizer.learning_rate=inf'),
    ('lp_regression_adam', dict(optimizer__learning_rate=-0.1), 'optimizer.learning_rate=-0.1'),
    ('lp_regression_adam', dict(optimizer__weight_decay=-1.0), 'optimizer.weight_decay=-1.0'),
    ('lp_regression_adam', dict(optimizer__weight_decay=NAN), 'optimizer.weight_decay=nan'),
    ('lp_regression_adam', dict(optimizer__grad_clip_norm=-1.0), 'optimizer.grad_clip_norm=-1.0'),
    ('lp_regression_adam', dict(optimizer__grad_clip_norm=INF), 'optimizer.grad_clip_norm=inf'),
    ('lp_regression_adam', dict(optimizer__weight_decay_mode='l2'), 'optimizer.weight_decay_mode'),
    ('lp_regression_adam', dict(optimizer__weight_decay_mode='before_momentum'), 'before_momentum'),
    ('lp_regression_adam', dict(schedule__warmup_steps=-1), 'schedule.warmup_steps=-1'),
    ('lp_regression_adam', dict(schedule__warmup_steps=401), 'schedule.warmup_steps=401'),
    ('lp_regression_adam', dict(schedule__decay='step'), 'schedule.decay'),
    ('lp_regression_adam', dict(schedule__end_factor=1.5), 'schedule.end_factor=1.5'),
    ('lp_regression_adam', dict(schedule__power=0.0), 'schedule.power=0.0'),
    ('lp_regression_adam', dict(schedule__power=NAN), 'schedule.power=nan'),
    ('lp_regression_adam', dict(num_steps=0), 'num_steps=0'),
    ('lp_regression_adam', dict(num_steps=-5), 'num_steps=-5'),
    ('lp_regression_adam', dict(eval_every=0), 'eval_every=0'),
    ('lp_regression_adam', dict(log_every=-1), 'log_every=-1'),
    ('lp_regression_adam', dict(checkpoint_every=0), 'checkpoint_every=0'),
    ('lp_regression_adam', dict(keep_checkpoints=0), 'keep_checkpoints=0'),
    ('lp_regression_adam', dict(global_batch_size=0), 'global_batch_size=0'),
    ('lp_regression_adam', dict(global_batch_size=100), 'global_batch_size=100'),
    ('lp_regression_adam', dict(eval_batch_size=0), 'eval_batch_size=0'),
    ('lp_regression_adam', dict(eval_batch_size=100), 'eval_batch_size=100'),
    ('lp_regression_adam', dict(grad_accum_steps=0), 'grad_accum_steps=0'),
    ('lp_regression_adam', dict(grad_accum_steps=3), 'grad_accum_steps=3'),
    ('lp_regression_adam', dict(seed=-1), 'seed=-1'),
    ('lp_regression_adam', dict(seed=2 ** 40), 'seed=1099511627776'),
    ('lp_regression_adam', dict(target=('accuracy', 0.5, 'below')), "target metric 'accuracy'"),
    ('lp_regression_adam', dict(target=('loss', 0.5, 'under')), "target direction 'under'"),
    ('lp_regression_adam', dict(target=('loss', 0.5)), 'target='),
    ('lp_regression_adam', dict(target=('loss', NAN, 'below')), 'target=.*finite'),
    ('lp_regression_adam', dict(mesh__model=3), 'mesh'),
    ('lp_regression_adam', dict(mesh__model=0), 'mesh'),
    ('lp_regression_adam', dict(mesh__data=16, mesh__model=1), 'mesh.*needs 16 devices'),
    ('lp_regression_adam', dict(diagnostics__every=-1), 'diagnostics.every=-1'),
    ('lp_regression_adam', dict(diagnostics__power_iterations=0), 'diagnostics.power_iterations=0'),
    ('lp_regression_adam', dict(parameterization='ntk'), "parameterization='ntk'"),
    ('lp_regression_adam', dict(parameterization='mup'), 'base_width'),
    ('lp_regression_adam', dict(optimizer__name='lion'), "unknown optimizer 'lion'"),
    ('lp_regression_adam', dict(optimizer__name='sgd'), 'unknown sgd optimizer fields'),
    ('lp_regression_adam', dict(task__name='mnist'), "unknown task 'mnist'"),
    # ---- Optimizer fields.
    ('lp_regression_adam', dict(optimizer__b1=1.0), 'optimizer.b1=1.0'),
    ('lp_regression_adam', dict(optimizer__b2=-0.1), 'optimizer.b2=-0.1'),
    ('lp_regression_adam', dict(optimizer__eps=-1e-8), 'optimizer.eps'),
    ('lp_regression_sgd', dict(optimizer__momentum=1.5), 'optimizer.momentum=1.5'),
    ('lp_regression_adagrad', dict(optimizer__initial_accumulator_value=-0.1),
     'optimizer.initial_accumulator_value=-0.1'),
    ('lp_regression_adagrad', dict(optimizer__eps=NAN), 'optimizer.eps=nan'),
    ('bert_lamb', dict(optimizer__b2=1.0), 'optimizer.b2=1.0'),
    ('bert_lamb', dict(optimizer__eps=-1.0), 'optimizer.eps=-1.0'),
    ('resnet50_lars', dict(eval_batch_size=256, optimizer__trust_coefficient=-0.001), 'optimizer.trust_coefficient'),
    ('resnet50_lars', dict(eval_batch_size=256, optimizer__momentum=1.0), 'optimizer.momentum=1.0'),
    ('lp_regression_shampoo', dict(optimizer__block_size=0), 'optimizer.block_size=0'),
    ('lp_regression_shampoo', dict(optimizer__beta2=1.5), 'optimizer.beta2=1.5'),
    ('lp_regression_shampoo', dict(optimizer__beta1=1.0), 'optimizer.beta1=1.0'),
    ('lp_regression_shampoo', dict(optimizer__graft_type='adam'), 'optimizer.graft_type'),
    ('lp_regression_shampoo', dict(optimizer__graft_granularity='tensor'), 'optimizer.graft_granularity'),
    ('lp_regression_shampoo', dict(optimizer__root_method='svd'), 'optimizer.root_method'),
    ('lp_regression_shampoo', dict(optimizer__statistics_dtype='float16'), 'optimizer.statistics_dtype'),
    ('lp_regression_shampoo', dict(optimizer__inverse_failure_threshold=0.0),
     'optimizer.inverse_failure_threshold=0.0'),
    ('lp_regression_shampoo', dict(optimizer__inverse_failure_threshold=NAN),
     'optimizer.inverse_failure_threshold=nan'),
    ('lp_regression_shampoo', dict(optimizer__preconditioning_compute_steps=0),
     'optimizer.preconditioning_compute_steps=0'),
    ('lp_regression_shampoo', dict(optimizer__matrix_epsilon=-1e-6), 'optimizer.matrix_epsilon'),
    ('lp_regression_shampoo', dict(optimizer__newton_iterations=0), 'optimizer.newton_iterations=0'),
    ('lp_regression_kfac', dict(optimizer__damping=-1e-3), 'optimizer.damping=-0.001'),
    ('lp_regression_kfac', dict(optimizer__damping=0.0), 'optimizer.damping=0'),
    ('lp_regression_kfac', dict(optimizer__curvature_update_period=0), 'optimizer.curvature_update_period=0'),
    ('lp_regression_kfac', dict(optimizer__inverse_update_period=0), 'optimizer.inverse_update_period=0'),
    ('lp_regression_kfac', dict(optimizer__estimation_mode='hessian'), 'optimizer.estimation_mode'),
    ('lp_regression_kfac', dict(optimizer__curvature_ema=1.0), 'optimizer.curvature_ema=1.0'),
    ('lp_regression_kfac', dict(optimizer__curvature_batch_size=7), 'optimizer.curvature_batch_size=7'),
    ('lp_regression_kfac', dict(grad_accum_steps=2), 'grad_accum_steps=2'),
    # ---- Task fields.
    ('lp_regression_adam', dict(task__p=1), 'task.p=1'),
    ('lp_regression_adam', dict(task__depth=0), 'task.depth=0'),
    ('lp_regression_adam', dict(task__activation='gelu'), 'task.activation'),
    ('lp_regression_adam', dict(task__num_features=0), 'task.num_features=0'),
    ('lp_regression_adam', dict(task__width=-1), 'task.width=-1'),
    ('lp_regression_adam', dict(task__eval_fraction=0.0), 'task.eval_fraction=0.0'),
    ('lp_regression_adam', dict(task__eval_fraction=1.0), 'task.eval_fraction=1.0'),
    ('lp_regression_adam', dict(task__num_examples=0), 'task.num_examples=0'),
    ('lp_regression_adam', dict(task__eval_fraction=0.99), '41 training examples at task.eval_fraction=0.99'),
    ('transformer_adam', dict(task__remat='some'), 'task.remat'),
    ('transformer_adam', dict(task__dtype='float16'), 'task.dtype'),
    ('transformer_adam', dict(task__model='huge'), 'task.model'),
    ('transformer_adam', dict(task__num_heads=3), 'heads'),
    ('transformer_adam', dict(task__label_smoothing=1.0), 'task.label_smoothing=1.0'),
    ('transformer_adam', dict(task__train_shards=5), 'task.train_shards=5'),
    ('transformer_adam', dict(task__vocab_size=0), 'task.vocab_size=0'),
    ('transformer_adam', dict(task__dropout=1.5), 'task.dropout=1.5'),
    ('transformer_adam', dict(task__beam_size=0), 'task.beam_size=0'),
    ('transformer_adam', dict(task__bleu_every=0), 'task.bleu_every=0'),
    ('transformer_adam', dict(task__max_length=0), 'task.max_length=0'),
    ('transformer_adam', dict(task__max_decode_length=-1), 'task.max_decode_length=-1'),
    ('bert_adam', dict(task__remat='some'), 'task.remat'),
    ('bert_adam', dict(task__dtype='int8'), 'task.dtype'),
    ('bert_adam', dict(task__model='xl'), 'task.model'),
    ('bert_adam', dict(task__max_predictions_per_seq=0), 'task.max_predictions_per_seq=0'),
    ('bert_adam', dict(task__max_predictions_per_seq=64), 'task.max_predictions_per_seq=64'),
    ('bert_adam', dict(task__vocab_size=0), 'task.vocab_size=0'),
    ('bert_adam', dict(task__attention_dropout=1.0), 'task.attention_dropout=1.0'),
    ('bert_adam', dict(task__num_heads=3), 'heads'),
    ('dlrm_adam', dict(task__table_sizes=(10, 10)), 'table_sizes'),
    ('dlrm_adam', dict(task__table_sizes=(1,) * 26), 'table_sizes'),
    ('dlrm_adam', dict(task__row_multiple=0), 'task.row_multiple=0'),
    ('dlrm_adam', dict(task__embedding_dim=0), 'task.embedding_dim=0'),
    ('dlrm_adam', dict(task__bottom_mlp=(64, 0)), 'task.bottom_mlp=.64, 0.'),
    ('dlrm_adam', dict(task__max_eval_examples=-1), 'task.max_eval_examples=-1'),
    ('resnet50_sgd', dict(task__model='200'), 'task.model'),
    ('resnet50_sgd', dict(task__stem='huge'), 'task.stem'),
    ('resnet50_sgd', dict(task__dtype='float16'), 'task.dtype'),
    ('resnet50_sgd', dict(task__width=0), 'task.width=0'),
    ('resnet50_sgd', dict(task__num_classes=0), 'task.num_classes=0'),
    ('resnet50_sgd', dict(task__label_smoothing=-0.1), 'task.label_smoothing=-0.1'),
    ('resnet50_sgd', dict(task__image_size=0), 'task.image_size=0'),
    ('resnet50_sgd', dict(task__max_eval_examples=-1), 'task.max_eval_examples=-1'),
]


@pytest.mark.parametrize('name,overrides,message', CASES,
                         ids=[f'{name}-{"-".join(f"{k}={v}" for k, v in o.items())}' for name, o, _ in CASES])
def test_bad_input_is_refused_before_the_workdir(tmp_path, name, overrides, message):
  workdir = tmp_path / 'run'
  with pytest.raises(ConfigError, match=message):
    trainer.run(load_config(name, **overrides), str(workdir), name)
  assert not workdir.exists()


def test_data_dir_that_is_a_file_is_refused(tmp_path):
  data_dir, workdir = tmp_path / 'data', tmp_path / 'run'
  data_dir.write_text('')
  with pytest.raises(ConfigError, match='data_dir=.* is not a directory'):
    trainer.run(load_config('lp_regression_adam', data_dir=str(data_dir)), str(workdir), 'lp_regression_adam')
  assert not workdir.exists()

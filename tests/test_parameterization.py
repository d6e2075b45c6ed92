"""muP: the multipliers are the table's, mup at base_width is standard, roles match how shapes grow,
and the one-step coordinate check (each layer's first update stays O(1) across widths under mup)."""

import flax.linen as nn
import jax
import numpy as np
import pytest

import optimizers
import tasks
import trainer
from errors import ConfigError
from conftest import load_config
from optimizers import parameterization
from trainer import coord_check

RATIO = 4.0  # width 256 over base width 64
# layer0 (32 -> width): input, layer1 (width -> width): hidden, layer2 (width -> 1): output.
# Learning-rate multipliers m^-c at m = 4, written out from the rules (not computed from the module).
EXPECTED_LR = {
    'sgd': dict(optimizer='sgd', lr=(4.0, 1.0, 0.25)),
    'adam': dict(optimizer='adam', lr=(1.0, 0.25, 0.25)),
    'adagrad': dict(optimizer='adagrad', lr=(1.0, 0.25, 0.25)),
    'shampoo': dict(optimizer='shampoo', graft_type='none', lr=(2.0, 1.0, 0.5)),
    'shampoo_rmsprop_graft': dict(optimizer='shampoo', graft_type='rmsprop_normalized', lr=(1.0, 0.25, 0.25)),
    'shampoo_sgd_graft': dict(optimizer='shampoo', graft_type='sgd', lr=(4.0, 1.0, 0.25)),
    'kfac': dict(optimizer='kfac', lr=(1.0, 1.0, 1.0)),
}


def mlp_config(optimizer: str, parameterization_name: str = 'mup', width: int = 256, **overrides):
  return load_config(f'lp_regression_{optimizer}', task__depth=3, task__width=width, task__activation='tanh',
                     parameterization=parameterization_name, base_width=64, **overrides)


def multipliers_of(config) -> parameterization.Multipliers:
  task = tasks.get(config.task.name)(config)
  params = nn.unbox(jax.eval_shape(task.init, jax.random.PRNGKey(0))[0])
  return trainer.loop.width_multipliers(config, task, params)


def by_layer(tree) -> tuple[float, ...]:
  return tuple(tree[f'layer{i}']['kernel'] for i in range(3))


@pytest.mark.parametrize('case', list(EXPECTED_LR))
def test_multipliers_equal_the_table(case):
  expected = EXPECTED_LR[case]
  shampoo = dict(optimizer__graft_type=expected['graft_type'], optimizer__block_size=1024,
                 optimizer__merge_small_dims_block_size=1) if 'graft_type' in expected else {}
  multipliers = multipliers_of(mlp_config(expected['optimizer'], **shampoo))
  np.testing.assert_allclose(by_layer(multipliers.lr), expected['lr'])
  np.testing.assert_allclose(by_layer(multipliers.init), (1.0, 1.0, 0.5))  # read-out std ~ 1/fan_in
  np.testing.assert_allclose(by_layer(multipliers.damping), (0.25, 1.0, 4.0))  # K-FAC: rho_A rho_B


def test_blocked_shampoo_follows_adam_and_merged_has_no_rule():
  """Shampoo's own row is for one unblocked statistic per side; fixed-size blocks normalise like Adam."""
  multipliers = multipliers_of(mlp_config('shampoo', optimizer__graft_type='none', optimizer__block_size=128,
                                          optimizer__merge_small_dims_block_size=1))
  np.testing.assert_allclose(by_layer(multipliers.lr), (1.0, 0.25, 0.25))
  with pytest.raises(ConfigError, match=r"\['layer0'\]\['kernel'\] \(32, 64\) is preconditioned with merged"):
    multipliers_of(mlp_config('shampoo', width=64, optimizer__graft_type='none', optimizer__block_size=4096,
                              optimizer__merge_small_dims_block_size=4096))


def test_mup_at_base_width_is_standard(tmp_path):
  standard = trainer.run(mlp_config('adam', 'standard', width=64, num_steps=20), str(tmp_path / 's'), 'mlp')
  mup = trainer.run(mlp_config('adam', 'mup', width=64, num_steps=20), str(tmp_path / 'm'), 'mlp')
  assert mup['final_train']['loss'] == standard['final_train']['loss']
  assert mup['final_eval'] == standard['final_eval']


def test_mup_rejects_what_it_cannot_scale():
  with pytest.raises(ConfigError, match='base_width'):
    parameterization.check(load_config('lp_regression_adam', parameterization='mup'))
  with pytest.raises(ConfigError, match='no rule for optimizer'):
    parameterization.check(load_config('bert_lamb', parameterization='mup', base_width=64))
  with pytest.raises(ConfigError, match='relative_matrix_epsilon'):
    parameterization.check(load_config('lp_regression_shampoo', parameterization='mup', base_width=64,
                                       optimizer__relative_matrix_epsilon=False))
  with pytest.raises(ConfigError, match="parameterization='mu'"):
    parameterization.check(load_config('lp_regression_adam', parameterization='mu'))


# Per task: the config fields that double its width, and a small data set of its own (cheap to generate).
WIDER = {
    'lp_regression_adam': lambda w: dict(task__depth=3, task__width=w),
    'transformer_adam': lambda w: dict(task__features=w, task__tfds_dir='synthetic_wmt_roles', task__vocab_size=300,
                                       task__generated_train_pairs=400, task__generated_eval_pairs=20),
    'bert_adam': lambda w: dict(task__features=w, task__dataset='synthetic_bert_roles', task__generated_documents=150),
    'resnet50_adam': lambda w: dict(task__width=w, task__tfds_dir='synthetic_imagenet_roles',
                                    task__generated_classes=3, task__generated_train_per_class=2,
                                    task__generated_eval_per_class=1),
    'dlrm_adam': lambda w: dict(task__bottom_mlp=(w, w // 2), task__top_mlp=(w, w // 2),
                                task__dataset='synthetic_criteo_roles', task__generated_train=500,
                                task__generated_eval=100),
}
ROLE_OF_GROWTH = {(False, True): 'input', (True, True): 'hidden', (True, False): 'output', (False, False): 'fixed'}


@pytest.mark.parametrize('name', list(WIDER))
def test_declared_roles_match_how_shapes_grow(name):
  """A parameter's role is which of its fan-in (all but the last axis) and fan-out grow with the width."""
  def shapes_and_task(width):
    config = load_config(name, **WIDER[name](width))
    task = tasks.get(config.task.name)(config)
    params = nn.unbox(jax.eval_shape(task.init, jax.random.PRNGKey(0))[0])
    return params, task

  narrow, narrow_task = shapes_and_task(32)
  wide, wide_task = shapes_and_task(64)
  assert wide_task.width == 2 * narrow_task.width
  roles = tasks.base.parameter_roles(wide, wide_task.parameter_roles)
  fan_in = lambda p: int(np.prod(p.shape[:-1]))
  for path, role in jax.tree_util.tree_flatten_with_path(roles)[0]:
    small = narrow
    large = wide
    for key in path:
      small, large = small[key.key], large[key.key]
    grew = (fan_in(large) != fan_in(small), large.shape[-1] != small.shape[-1])
    assert role == ROLE_OF_GROWTH[grew], (jax.tree_util.keystr(path), small.shape, large.shape)


def test_undeclared_parameter_or_unknown_role_is_a_config_error():
  with pytest.raises(ConfigError, match='layer1/kernel has no width role'):
    tasks.base.parameter_roles({'layer0': {'kernel': 0}, 'layer1': {'kernel': 0}}, ((r'layer0/.*', 'input'),))
  with pytest.raises(ConfigError, match="role 'hiden'"):
    tasks.base.parameter_roles({'w': 0}, ((r'.*', 'hiden'),))


@pytest.mark.parametrize('optimizer', ['sgd', 'adam', 'shampoo', 'kfac'])
def test_coordinate_check(optimizer):
  """The first update of every layer's output: O(1) in the width under mup, not under standard."""
  widths = (64, 128, 512)
  exponents = {}
  for name in ('standard', 'mup'):
    sizes = [coord_check.update_sizes(coord_check.check_config(optimizer, name, w, base_width=64)) for w in widths]
    exponents[name] = coord_check.exponents(widths, sizes)
  assert max(abs(p) for p in exponents['mup'].values()) < 0.2, exponents
  assert max(abs(p) for p in exponents['standard'].values()) > 0.4, exponents


def test_kfac_damping_is_per_block_under_mup():
  config = coord_check.check_config('kfac', 'mup', 256, base_width=64)
  task = tasks.get(config.task.name)(config)
  abstract = jax.eval_shape(task.init, jax.random.PRNGKey(0))
  multipliers = trainer.loop.width_multipliers(config, task, nn.unbox(abstract)[0])
  tx_loss = trainer.loop.loss_context(config, task, abstract)
  precon = optimizers.kfac.preconditioner(config.optimizer, tx_loss)
  scales = optimizers.kfac.block_scales(precon, tx_loss.example_args[0], multipliers.damping)
  assert sorted(scales) == [0.25, 1.0, 4.0]

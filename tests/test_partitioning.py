import jax
import ml_collections
import pytest

from configs import ConfigError
from trainer import partitioning


def shape(**axes):
  return partitioning.mesh_shape(ml_collections.ConfigDict(axes), 8)


def test_mesh_shape_fills_the_free_axis():
  assert shape(data=-1, model=2) == {'data': 4, 'model': 2}
  assert shape(data=8, model=1) == {'data': 8, 'model': 1}


@pytest.mark.parametrize('axes,message', [
    (dict(data=4, model=3), 'needs 12 devices, but 8'),
    (dict(data=-1, model=3), 'not a multiple of 3'),
    (dict(data=-1, model=-1), 'at most one -1'),
    (dict(model=8), "no 'data' axis"),
])
def test_bad_mesh_shapes(axes, message):
  with pytest.raises(ConfigError, match=message):
    shape(**axes)


def test_mesh_uses_the_given_devices_in_axis_order():
  mesh = partitioning.make_mesh({'data': 4, 'model': 2}, jax.devices())
  assert mesh.axis_names == ('data', 'model') and mesh.devices.shape == (4, 2)

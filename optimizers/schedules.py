"""Learning-rate schedules: optional linear warm-up, then a decay to the last step."""

import ml_collections
import optax
import jax.numpy as jnp

from errors import ConfigError

DECAYS = ('constant', 'linear', 'cosine', 'rsqrt', 'polynomial')


def build(cfg: ml_collections.ConfigDict, peak: float, num_steps: int) -> optax.Schedule:
  """`cfg` is config.schedule; `peak` the optimizer's learning_rate."""
  if cfg.decay not in DECAYS:
    raise ConfigError(f'schedule.decay={cfg.decay!r}: choose one of {", ".join(DECAYS)}')
  if not 0 <= cfg.warmup_steps <= num_steps:
    raise ConfigError(f'schedule.warmup_steps={cfg.warmup_steps} must be in [0, num_steps={num_steps}]')
  if not 0 <= cfg.end_factor <= 1:
    raise ConfigError(f'schedule.end_factor={cfg.end_factor} must be in [0, 1]')
  if cfg.power <= 0:
    raise ConfigError(f'schedule.power={cfg.power} must be positive')
  warmup = cfg.warmup_steps
  decay_steps = max(num_steps - warmup, 1)
  end = peak * cfg.end_factor
  if cfg.decay == 'constant':
    decay = optax.constant_schedule(peak)
  elif cfg.decay == 'linear':
    decay = optax.linear_schedule(peak, end, decay_steps)
  elif cfg.decay == 'cosine':
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.end_factor)
  elif cfg.decay == 'polynomial':
    decay = optax.polynomial_schedule(peak, end, cfg.power, decay_steps)
  else:  # rsqrt: peak * sqrt(w / (w + t)), t counted from the end of warm-up (Transformer style)
    w = max(warmup, 1)
    decay = lambda t: peak * jnp.sqrt(w / (w + t))
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])

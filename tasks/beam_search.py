"""Beam search over an autoregressive model with a decoding cache (pure JAX, jittable).

Scores are log-probabilities divided by the GNMT length penalty
((5 + length) / 6) ** alpha (Wu et al. 2016; Vaswani et al. decode WMT with
beam 4, alpha 0.6). A hypothesis finishes when it emits `eos`; it may only do
so when that extension is among the beam's top `beam_size` candidates, so with
beam 1 and alpha 0 the search is exactly greedy decoding. The loop stops early
once no live hypothesis can still beat the worst finished one.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

NEG_INF = -1e9
# step(tokens [batch*beam, 1], position (scalar), cache) -> (log-probs [batch*beam, vocab], cache)
StepFn = Callable[[jax.Array, jax.Array, Any], tuple[jax.Array, Any]]


def length_penalty(length, alpha: float):
  return ((5.0 + length) / 6.0) ** alpha


def repeat_for_beams(tree, beam_size: int):
  """[batch, ...] -> [batch * beam, ...], each row repeated for its beams."""
  return jax.tree.map(lambda x: jnp.repeat(x, beam_size, axis=0), tree)


class _State(NamedTuple):
  position: jax.Array      # index of the token fed next
  alive: jax.Array         # [batch, beam, max_length + 1] tokens; column 0 is the start token
  alive_log_prob: jax.Array  # [batch, beam]
  finished: jax.Array      # [batch, beam, max_length + 1]
  finished_score: jax.Array  # [batch, beam], NEG_INF where empty
  cache: Any


def _take(x, indices):
  """x [batch, n, ...], indices [batch, k] -> [batch, k, ...]."""
  return jnp.take_along_axis(x, indices.reshape(indices.shape + (1,) * (x.ndim - 2)), axis=1)


def _take_cache(cache, indices):
  """Cache leaves [batch*beam, ...] reordered by beam indices [batch, beam]."""
  batch, beam = indices.shape
  def take(x):
    picked = _take(x.reshape((batch, beam) + x.shape[1:]), indices)
    return picked.reshape(x.shape)
  return jax.tree.map(take, cache)


def beam_search(step: StepFn, cache, batch_size: int, beam_size: int, max_length: int,
                eos: int, alpha: float, start_token: int = 0) -> tuple[jax.Array, jax.Array]:
  """Best sequence per row: (tokens [batch, max_length] ending at eos then 0s, score [batch]).

  `cache` has leading dimension batch * beam (see `repeat_for_beams`).
  """
  batch, beam = batch_size, beam_size
  init = _State(
      position=jnp.zeros((), jnp.int32),
      alive=jnp.full((batch, beam, max_length + 1), start_token, jnp.int32),
      # Only the first beam is live at the start, so the beams do not duplicate each other.
      alive_log_prob=jnp.tile(jnp.array([0.0] + [NEG_INF] * (beam - 1)), (batch, 1)),
      finished=jnp.zeros((batch, beam, max_length + 1), jnp.int32),
      finished_score=jnp.full((batch, beam), NEG_INF),
      cache=cache)

  def not_done(state: _State):
    best_possible = state.alive_log_prob[:, 0] / length_penalty(max_length, alpha)
    worst_finished = jnp.min(state.finished_score, axis=1)
    can_improve = jnp.any(best_possible > worst_finished)
    return (state.position < max_length) & can_improve

  def body(state: _State) -> _State:
    tokens = state.alive[:, :, state.position].reshape(batch * beam, 1)
    log_probs, cache = step(tokens, state.position, state.cache)
    vocab = log_probs.shape[-1]
    candidates = (state.alive_log_prob[:, :, None] + log_probs.reshape(batch, beam, vocab))
    top_log_prob, top_index = jax.lax.top_k(candidates.reshape(batch, beam * vocab), 2 * beam)
    parent, token = top_index // vocab, top_index % vocab
    sequences = _take(state.alive, parent)
    sequences = sequences.at[:, :, state.position + 1].set(token)
    ends = token == eos

    # Live beams: the best 2*beam candidates that did not end.
    live_score = jnp.where(ends, NEG_INF, top_log_prob)
    live_log_prob, live = jax.lax.top_k(live_score, beam)
    alive = _take(sequences, live)
    cache = _take_cache(cache, _take(parent, live))

    # Finished: ending candidates among the top `beam`, merged with those finished before.
    in_top = jnp.arange(2 * beam) < beam
    new_score = jnp.where(ends & in_top, top_log_prob / length_penalty(state.position + 1, alpha), NEG_INF)
    pool_score = jnp.concatenate([state.finished_score, new_score], axis=1)
    pool = jnp.concatenate([state.finished, sequences], axis=1)
    finished_score, keep = jax.lax.top_k(pool_score, beam)
    finished = _take(pool, keep)
    return _State(state.position + 1, alive, live_log_prob, finished, finished_score, cache)

  final = jax.lax.while_loop(not_done, body, init)
  # Rows where nothing finished fall back to their best live hypothesis.
  none_finished = final.finished_score[:, 0] <= NEG_INF / 2
  tokens = jnp.where(none_finished[:, None], final.alive[:, 0], final.finished[:, 0])[:, 1:]
  score = jnp.where(none_finished, final.alive_log_prob[:, 0] / length_penalty(max_length, alpha),
                    final.finished_score[:, 0])
  return tokens, score

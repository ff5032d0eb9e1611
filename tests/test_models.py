"""Tests for emojax.models: shapes, parameter counts, masking, Keras parity, Adamax parity."""

import functools

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from emojax import models, ravdess

BATCH = 3
TIME = 12
VISUAL_DIM = 512
AUDIO_DIM = 128
# Keras' Adamax defaults, which the thesis used.
LR, B1, B2, EPS = 1e-3, 0.9, 0.999, 1e-7


def _num_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))


def _visual_batch(rng: np.random.Generator, num_frames, time=TIME) -> dict:
  num_frames = np.asarray(num_frames, np.int32)
  visual = rng.normal(size=(len(num_frames), time, VISUAL_DIM)).astype(np.float32)
  # Zero padding, as the input pipeline writes it.
  visual[np.arange(time)[None, :] >= num_frames[:, None]] = 0.0
  return {'visual': visual, 'num_frames': num_frames}


def _model_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
    {
      'audio': {'hidden_sizes': (512, 256), 'dropout_rate': 0.5, 'num_audio_frames': 5},
      'visual': {'lstm_sizes': (200, 100), 'dropout_rate': 0.0},
      'stacker': {'hidden_sizes': (256,), 'dropout_rate': 0.5},
    }
  )


@pytest.fixture(scope='module')
def visual_model_and_params():
  model = models.VisualLSTM()
  batch = _visual_batch(np.random.default_rng(0), [TIME] * BATCH)
  params = model.init(jax.random.key(0), batch, train=False)['params']
  return model, params


# ---------------------------------------------------------------- shapes and sizes


@pytest.mark.parametrize(
  'name, batch, penultimate_dim',
  [
    ('audio', {'audio': np.ones((BATCH, 5, AUDIO_DIM), np.float32)}, 256),
    ('visual', {'visual': np.ones((BATCH, TIME, VISUAL_DIM), np.float32), 'num_frames': np.full(BATCH, TIME)}, 100),
    ('stacker', {'features': np.ones((BATCH, 356), np.float32)}, 256),
  ],
)
def test_output_shapes(name, batch, penultimate_dim):
  model = models.build_model(name, _model_config())
  variables = model.init(jax.random.key(0), batch, train=False)
  logits, penultimate = model.apply(variables, batch, train=False)
  assert logits.shape == (BATCH, ravdess.NUM_CLASSES)
  assert penultimate.shape == (BATCH, penultimate_dim)
  assert logits.dtype == penultimate.dtype == jnp.float32


def test_build_model_rejects_unknown_name():
  with pytest.raises(ValueError, match='Unknown model name'):
    models.build_model('video', _model_config())


def test_audio_mlp_parameter_count_matches_thesis_table_1():
  # Table 1 is for a 512-D input: 4 VGGish rows of 128.
  model = models.AudioMLP(num_audio_frames=4)
  params = model.init(jax.random.key(0), {'audio': np.ones((1, 4, AUDIO_DIM))}, train=False)['params']
  assert _num_params(params['hidden_0']) == 262_656
  assert _num_params(params['hidden_1']) == 131_328
  assert _num_params(params['head']) == 1_799
  assert _num_params(params) == 395_783


def test_audio_mlp_default_parameter_count():
  # emojax's default is 5 VGGish rows (640-D): 640 * 512 + 512 more weights than Table 1's first layer.
  params = models.AudioMLP().init(jax.random.key(0), {'audio': np.ones((1, 5, AUDIO_DIM))}, train=False)['params']
  assert _num_params(params) == 461_319


def test_visual_and_stacker_parameter_counts(visual_model_and_params):
  _, params = visual_model_and_params
  # Keras' LSTM(H) on D inputs has 4 * (D * H + H * H + H) weights.
  assert _num_params(params['lstm_0']) == 4 * (512 * 200 + 200 * 200 + 200)
  assert _num_params(params['lstm_1']) == 4 * (200 * 100 + 100 * 100 + 100)
  assert _num_params(params) == 570_400 + 120_400 + 707
  stacker_params = models.Stacker().init(jax.random.key(0), {'features': np.ones((1, 356))}, train=False)['params']
  assert _num_params(stacker_params) == 356 * 256 + 256 + 257 * 7


def test_audio_mlp_zero_pads_short_clips_and_cuts_long_ones():
  model = models.AudioMLP()
  rng = np.random.default_rng(1)
  audio = rng.normal(size=(2, 5, AUDIO_DIM)).astype(np.float32)
  params = model.init(jax.random.key(0), {'audio': audio}, train=False)
  padded = audio.copy()
  padded[:, 3:] = 0.0
  short = model.apply(params, {'audio': audio[:, :3]}, train=False)
  longer = np.concatenate([audio, rng.normal(size=(2, 2, AUDIO_DIM)).astype(np.float32)], axis=1)
  np.testing.assert_allclose(short[0], model.apply(params, {'audio': padded}, train=False)[0], atol=1e-6)
  np.testing.assert_allclose(
    model.apply(params, {'audio': longer}, train=False)[0], model.apply(params, {'audio': audio}, train=False)[0]
  )


# ---------------------------------------------------------------- masking


def test_padding_garbage_changes_nothing(visual_model_and_params):
  model, params = visual_model_and_params
  rng = np.random.default_rng(2)
  batch = _visual_batch(rng, [5, 12, 1])
  clean = model.apply({'params': params}, batch, train=False)
  garbage = dict(batch)
  garbage['visual'] = batch['visual'].copy()
  past_end = np.arange(TIME)[None, :] >= batch['num_frames'][:, None]
  garbage['visual'][past_end] = rng.normal(scale=100.0, size=(past_end.sum(), VISUAL_DIM))
  garbage['visual'][0, -1, :3] = [np.nan, np.inf, -np.inf]
  dirty = model.apply({'params': params}, garbage, train=False)
  for a, b in zip(clean, dirty):
    np.testing.assert_array_equal(a, b)

  # Not even the gradients notice NaN in the padding.
  def loss(p, batch):
    return jnp.sum(model.apply({'params': p}, batch, train=False)[0])

  grads = jax.grad(loss)(params, garbage)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_padded_clip_equals_clip_run_alone(visual_model_and_params):
  model, params = visual_model_and_params
  batch = _visual_batch(np.random.default_rng(3), [4, 9, 12])
  logits, penultimate = model.apply({'params': params}, batch, train=False)
  for i, length in enumerate(batch['num_frames']):
    alone = {'visual': batch['visual'][i : i + 1, :length], 'num_frames': np.array([length])}
    alone_logits, alone_penultimate = model.apply({'params': params}, alone, train=False)
    np.testing.assert_allclose(logits[i], alone_logits[0], atol=1e-5)
    np.testing.assert_allclose(penultimate[i], alone_penultimate[0], atol=1e-5)


def test_zero_length_clip_is_treated_as_one_frame(visual_model_and_params):
  # A length-0 clip must not run on padding: it is one zero frame, like a length-1 clip of zeros.
  model, params = visual_model_and_params
  batch = _visual_batch(np.random.default_rng(4), [1, 6])
  as_zero = {'visual': batch['visual'], 'num_frames': np.array([0, 6])}
  np.testing.assert_array_equal(
    model.apply({'params': params}, as_zero, train=False)[1], model.apply({'params': params}, batch, train=False)[1]
  )


def test_unroll_does_not_change_the_result(visual_model_and_params):
  model, params = visual_model_and_params
  batch = _visual_batch(np.random.default_rng(5), [3, 12, 7])
  unrolled = models.VisualLSTM(unroll=4).apply({'params': params}, batch, train=False)
  np.testing.assert_allclose(unrolled[1], model.apply({'params': params}, batch, train=False)[1], atol=1e-6)


# ---------------------------------------------------------------- Keras parity


def test_flax_lstm_stack_equals_keras_lstm(visual_model_and_params):
  import keras  # Imported here: TensorFlow takes seconds to load.

  model, flax_params = visual_model_and_params
  rng = np.random.default_rng(6)
  batch = _visual_batch(rng, [4, 12, 7])
  visual = keras.Input(shape=(TIME, VISUAL_DIM))
  mask = keras.Input(shape=(TIME,), dtype='bool')
  lstm_0 = keras.layers.LSTM(200, return_sequences=True)
  lstm_1 = keras.layers.LSTM(100)
  head = keras.layers.Dense(ravdess.NUM_CLASSES)
  last_hidden = lstm_1(lstm_0(visual, mask=mask), mask=mask)
  keras_model = keras.Model([visual, mask], [head(last_hidden), last_hidden])

  # Random weights, biases included (Keras initialises them to 0 and 1), so every gate is checked.
  params = {}
  for i, layer in enumerate([lstm_0, lstm_1]):
    weights = [rng.normal(scale=0.1, size=w.shape).astype(np.float32) for w in layer.get_weights()]
    layer.set_weights(weights)
    params[f'lstm_{i}'] = dict(zip(('kernel', 'recurrent_kernel', 'bias'), weights))  # The same layout.
  params['head'] = flax_params['head']
  head.set_weights([np.asarray(params['head']['kernel']), np.asarray(params['head']['bias'])])
  assert jax.tree.structure(params) == jax.tree.structure(flax.core.unfreeze(flax_params))

  is_real = np.arange(TIME)[None, :] < batch['num_frames'][:, None]
  keras_logits, keras_hidden = keras_model.predict([batch['visual'], is_real], verbose=0)
  flax_logits, flax_hidden = model.apply({'params': params}, batch, train=False)
  np.testing.assert_allclose(flax_hidden, keras_hidden, atol=1e-5)
  np.testing.assert_allclose(flax_logits, keras_logits, atol=1e-5)


def test_fresh_models_start_from_keras_initialisers():
  visual = models.VisualLSTM(lstm_sizes=(200, 100)).init(
    jax.random.key(0), _visual_batch(np.random.default_rng(0), [TIME] * BATCH), train=False
  )['params']
  for name, (fan_in, hidden) in {'lstm_0': (VISUAL_DIM, 200), 'lstm_1': (200, 100)}.items():
    layer = jax.device_get(visual[name])
    assert layer['kernel'].shape == (fan_in, 4 * hidden)
    # Forget-gate bias 1 (gates i, f, c, o), every other bias 0.
    np.testing.assert_array_equal(layer['bias'][hidden : 2 * hidden], 1.0)
    np.testing.assert_array_equal(np.delete(layer['bias'], np.s_[hidden : 2 * hidden]), 0.0)
    # Orthogonal over all four gates at once: the [H, 4H] matrix has orthonormal rows.
    recurrent = layer['recurrent_kernel']
    np.testing.assert_allclose(recurrent @ recurrent.T, np.eye(hidden), atol=1e-5)
    assert not np.allclose(recurrent[:, :hidden] @ recurrent[:, :hidden].T, np.eye(hidden), atol=0.1)
    # glorot_uniform over [in, 4H]: bounded by sqrt(6 / (in + 4H)), variance 2 / (in + 4H).
    limit = np.sqrt(6 / (fan_in + 4 * hidden))
    assert np.abs(layer['kernel']).max() <= limit
    assert np.var(layer['kernel']) == pytest.approx(2 / (fan_in + 4 * hidden), rel=0.05)
  audio = jax.device_get(models.AudioMLP().init(jax.random.key(1), {'audio': np.ones((1, 5, AUDIO_DIM))}, train=False))
  for name, (fan_in, fan_out) in {'hidden_0': (640, 512), 'hidden_1': (512, 256), 'head': (256, 7)}.items():
    dense = audio['params'][name]
    np.testing.assert_array_equal(dense['bias'], 0.0)
    assert np.abs(dense['kernel']).max() <= np.sqrt(6 / (fan_in + fan_out))
    if fan_out > 7:  # Enough samples for the variance to mean something.
      assert np.var(dense['kernel']) == pytest.approx(2 / (fan_in + fan_out), rel=0.05)


def test_training_steps_equal_keras_with_the_same_weights(visual_model_and_params):
  """Masked LSTM stack, cross-entropy and Adamax: a few steps give Keras' weights."""
  import keras
  import tensorflow as tf

  model, flax_params = visual_model_and_params
  rng = np.random.default_rng(8)
  batch = _visual_batch(rng, [4, 12, 7])
  batch['visual'] *= 0.1
  labels = np.array([0, 3, 6], np.int32)
  visual = keras.Input(shape=(TIME, VISUAL_DIM))
  mask = keras.Input(shape=(TIME,), dtype='bool')
  lstm_0 = keras.layers.LSTM(200, return_sequences=True)
  lstm_1 = keras.layers.LSTM(100)
  head = keras.layers.Dense(ravdess.NUM_CLASSES)
  keras_model = keras.Model([visual, mask], head(lstm_1(lstm_0(visual, mask=mask), mask=mask)))
  params = jax.device_get(flax_params)
  for layer, name in ((lstm_0, 'lstm_0'), (lstm_1, 'lstm_1')):
    layer.set_weights([params[name][key] for key in ('kernel', 'recurrent_kernel', 'bias')])
  head.set_weights([params['head']['kernel'], params['head']['bias']])
  optimizer = keras.optimizers.Adamax(learning_rate=1e-2, beta_1=B1, beta_2=B2, epsilon=EPS)
  loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  is_real = np.arange(TIME)[None, :] < batch['num_frames'][:, None]

  tx = optax.adamax(learning_rate=1e-2, b1=B1, b2=B2, eps=EPS)
  opt_state = tx.init(flax_params)
  flax_loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
    model.apply({'params': p}, batch, train=False)[0], labels
  ).mean()
  for _ in range(5):
    with tf.GradientTape() as tape:
      keras_loss = loss_fn(labels, keras_model([batch['visual'], is_real]))
    optimizer.apply_gradients(
      zip(tape.gradient(keras_loss, keras_model.trainable_variables), keras_model.trainable_variables)
    )
    loss, grads = jax.value_and_grad(flax_loss)(params)
    assert float(loss) == pytest.approx(float(keras_loss), abs=1e-5)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
  # Within float noise: a step moves a weight by up to the learning rate (1e-2); summation order moves it ~1e-5.
  for layer, name in ((lstm_0, 'lstm_0'), (lstm_1, 'lstm_1')):
    for key, keras_weight in zip(('kernel', 'recurrent_kernel', 'bias'), layer.get_weights()):
      np.testing.assert_allclose(np.asarray(params[name][key]), keras_weight, atol=1e-4, err_msg=f'{name}.{key}')


def test_hand_written_lstm_gradient_equals_autodiff_also_under_vmap():
  rng = np.random.default_rng(9)
  members, batch, time, dim, hidden = 3, 4, 9, 6, 5
  inputs = rng.normal(size=(members, batch, time, dim)).astype(np.float32)
  lengths = rng.integers(1, time + 1, size=(members, batch))
  is_real = np.arange(time) < lengths[..., None]  # [members, batch, time]
  inputs[~is_real] = 0.0
  weights = [
    rng.normal(scale=0.5, size=(members, *shape)).astype(np.float32)
    for shape in ((dim, 4 * hidden), (hidden, 4 * hidden), (4 * hidden,))
  ]
  head = rng.normal(size=(time, hidden)).astype(np.float32)

  def loss(scan, inputs, is_real, *weights):
    # Both outputs carry gradient: every frame's state, and the last one, as a stacked layer and the head use them.
    outputs, last = scan(inputs, is_real, *weights)
    return jnp.sum(jnp.tanh(outputs) * head) + jnp.sum(last**2)

  for scan in (models.lstm_scan, models.lstm_scan_autodiff):
    np.testing.assert_allclose(
      scan(inputs[0], is_real[0], *(w[0] for w in weights))[0],
      models.lstm_scan_autodiff(inputs[0], is_real[0], *(w[0] for w in weights))[0],
      atol=1e-6,
    )
  gradient = lambda scan: jax.vmap(jax.grad(functools.partial(loss, scan), argnums=(0, 2, 3, 4)))(
    inputs, is_real, *weights
  )
  for mine, reference in zip(gradient(models.lstm_scan), gradient(models.lstm_scan_autodiff), strict=True):
    np.testing.assert_allclose(mine, reference, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- Adamax parity


def _keras_adamax_steps(params, grads_per_step):
  """Keras' Adamax update, written out: eps is added after the infinity norm."""
  params, m, u = params.copy(), np.zeros_like(params), np.zeros_like(params)
  for t, g in enumerate(grads_per_step, start=1):
    m = B1 * m + (1 - B1) * g
    u = np.maximum(B2 * u, np.abs(g))
    params = params - LR / (1 - B1**t) * m / (u + EPS)
  return params


def _optax_adamax_steps(params, grads_per_step):
  optimizer = optax.adamax(learning_rate=LR, b1=B1, b2=B2, eps=EPS)
  params = jnp.asarray(params)
  state = optimizer.init(params)
  for g in grads_per_step:
    updates, state = optimizer.update(jnp.asarray(g), state, params)
    params = optax.apply_updates(params, updates)
  return np.asarray(params)


def _toy_grads(num_steps):
  rng = np.random.default_rng(7)
  # Gradient sizes over four decades, a few exact zeros, as on a real problem.
  scale = 10.0 ** rng.uniform(-3, 1, size=(num_steps, 64))
  grads = (rng.normal(size=(num_steps, 64)) * scale).astype(np.float32)
  grads[:, :3] = 0.0
  return rng.normal(size=64).astype(np.float32), grads


def test_one_optax_adamax_step_equals_keras_formula():
  params, grads = _toy_grads(1)
  np.testing.assert_allclose(_optax_adamax_steps(params, grads), _keras_adamax_steps(params, grads), rtol=0, atol=1e-7)


def test_several_optax_adamax_steps_match_keras_formula():
  # optax puts eps inside the max (u = max(b2 u, |g| + eps)) where Keras adds it after
  # (u + eps): identical on step 1, a difference of order eps / |g| afterwards.
  params, grads = _toy_grads(20)
  np.testing.assert_allclose(_optax_adamax_steps(params, grads), _keras_adamax_steps(params, grads), rtol=0, atol=1e-6)


def test_keras_formula_is_keras_adamax():
  import keras

  params, grads = _toy_grads(5)
  variable = keras.Variable(params)
  optimizer = keras.optimizers.Adamax(learning_rate=LR, beta_1=B1, beta_2=B2, epsilon=EPS)
  for g in grads:
    optimizer.apply_gradients([(keras.ops.convert_to_tensor(g), variable)])
  np.testing.assert_allclose(np.asarray(variable.numpy()), _keras_adamax_steps(params, grads), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- dropout


@pytest.mark.parametrize(
  'model, batch',
  [
    (models.AudioMLP(), {'audio': np.ones((BATCH, 5, AUDIO_DIM), np.float32)}),
    (models.Stacker(), {'features': np.ones((BATCH, 356), np.float32)}),
    (
      models.VisualLSTM(dropout_rate=0.5),
      {'visual': np.ones((BATCH, 4, VISUAL_DIM), np.float32), 'num_frames': np.full(BATCH, 4)},
    ),
  ],
)
def test_dropout_only_in_training(model, batch):
  variables = model.init(jax.random.key(0), batch, train=False)
  train_a = model.apply(variables, batch, train=True, rngs={'dropout': jax.random.key(1)})[0]
  train_b = model.apply(variables, batch, train=True, rngs={'dropout': jax.random.key(2)})[0]
  assert not np.allclose(train_a, train_b)
  eval_a = model.apply(variables, batch, train=False)
  eval_b = model.apply(variables, batch, train=False, rngs={'dropout': jax.random.key(3)})
  for a, b in zip(eval_a, eval_b):
    np.testing.assert_array_equal(a, b)
  assert not np.allclose(train_a, eval_a[0])

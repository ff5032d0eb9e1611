"""clu metrics: confusion matrix, masking of padded rows, jit + NamedSharding."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import clu.values
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emojax import metrics, ravdess

NUM_CLASSES = ravdess.NUM_CLASSES


def _logits_for(predictions):
  """Logits whose argmax is `predictions`: [batch, 7]."""
  return jnp.asarray(np.eye(NUM_CLASSES, dtype=np.float32)[predictions] * 3.0 - 1.0)


def _hand_matrix(pairs):
  """Confusion matrix from (true, predicted) pairs, the slow obvious way."""
  matrix = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
  for true, predicted in pairs:
    matrix[true, predicted] += 1
  return matrix


def test_confusion_matrix_counts_only_unmasked_rows():
  labels = np.array([0, 0, 1, 4, 6, 2], np.int32)
  predictions = np.array([0, 5, 1, 4, 6, 3])
  mask = np.array([True, True, True, False, True, False])
  metric = metrics.ConfusionMatrix.from_model_output(
    logits=_logits_for(predictions), labels=jnp.asarray(labels), mask=jnp.asarray(mask), loss=jnp.zeros(6)
  )
  expected = _hand_matrix([(0, 0), (0, 5), (1, 1), (6, 6)])  # Rows 3 and 5 are padding.
  assert metric.compute().dtype == jnp.int32
  np.testing.assert_array_equal(metric.compute(), expected)

  unmasked = metrics.ConfusionMatrix.from_model_output(logits=_logits_for(predictions), labels=jnp.asarray(labels))
  np.testing.assert_array_equal(unmasked.compute(), _hand_matrix(zip(labels, predictions)))


def test_confusion_matrix_merge_adds_and_empty_is_neutral():
  first = metrics.ConfusionMatrix.from_model_output(logits=_logits_for([0, 1]), labels=jnp.array([0, 2], jnp.int32))
  second = metrics.ConfusionMatrix.from_model_output(logits=_logits_for([1, 1]), labels=jnp.array([2, 3], jnp.int32))
  merged = first.merge(second)
  np.testing.assert_array_equal(merged.compute(), _hand_matrix([(0, 0), (2, 1), (2, 1), (3, 1)]))
  np.testing.assert_array_equal(metrics.ConfusionMatrix.empty().merge(merged).compute(), merged.compute())


def test_confusion_matrix_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match='labels'):
    metrics.ConfusionMatrix.from_model_output(logits=_logits_for([0, 1]), labels=jnp.array([0, 1, 2], jnp.int32))
  with pytest.raises(ValueError, match='mask'):
    metrics.ConfusionMatrix.from_model_output(
      logits=_logits_for([0, 1]), labels=jnp.array([0, 1], jnp.int32), mask=jnp.ones((2, 1), bool)
    )


@jax.jit
def _eval_step(logits, labels, loss, mask):
  return metrics.EvalMetrics.single_from_model_output(logits=logits, labels=labels, loss=loss, mask=mask)


def test_eval_metrics_under_jit_with_sharding_and_a_padded_batch():
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
  batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  batch_size = 4 * len(jax.devices())

  def put(*arrays):
    return [jax.device_put(np.asarray(a), batch_sharding) for a in arrays]

  rng = np.random.default_rng(0)
  # Batch 1: full. Batch 2: the last partial batch, padded; its padding rows have
  # huge losses and wrong predictions that must not count.
  labels_1 = rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32)
  predictions_1 = rng.integers(0, NUM_CLASSES, batch_size)
  loss_1 = rng.uniform(0.1, 2.0, batch_size).astype(np.float32)
  mask_1 = np.ones(batch_size, bool)
  labels_2 = rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32)
  predictions_2 = labels_2.copy()
  predictions_2[1] = (labels_2[1] + 1) % NUM_CLASSES  # One real mistake.
  num_real = batch_size - 3
  mask_2 = np.arange(batch_size) < num_real
  predictions_2[~mask_2] = (labels_2[~mask_2] + 2) % NUM_CLASSES
  loss_2 = rng.uniform(0.1, 2.0, batch_size).astype(np.float32)
  loss_2[~mask_2] = 1e6

  collection = None
  for labels, predictions, loss, mask in [
    (labels_1, predictions_1, loss_1, mask_1),
    (labels_2, predictions_2, loss_2, mask_2),
  ]:
    batch_metrics = _eval_step(*put(np.asarray(_logits_for(predictions)), labels, loss, mask))
    collection = batch_metrics if collection is None else collection.merge(batch_metrics)
  result = collection.compute()

  real_loss = np.concatenate([loss_1, loss_2[mask_2]])
  real_pairs = list(zip(labels_1, predictions_1)) + list(zip(labels_2[mask_2], predictions_2[mask_2]))
  expected_matrix = _hand_matrix(real_pairs)
  expected_accuracy = np.mean([true == predicted for true, predicted in real_pairs])
  assert set(result) == {'loss', 'accuracy', 'confusion_matrix'}
  np.testing.assert_allclose(float(result['loss']), real_loss.mean(), rtol=1e-6)
  np.testing.assert_allclose(float(result['accuracy']), expected_accuracy, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(result['confusion_matrix']), expected_matrix)
  assert int(np.asarray(result['confusion_matrix']).sum()) == batch_size + num_real

  # Collection.empty() (which calls ConfusionMatrix.empty()) is a neutral start.
  from_empty = metrics.EvalMetrics.empty().merge(collection).compute()
  np.testing.assert_array_equal(from_empty['confusion_matrix'], expected_matrix)
  # compute_values() gives every metric a value type a clu writer can handle.
  values = collection.compute_values()
  assert isinstance(values['loss'], clu.values.Scalar)
  assert isinstance(values['confusion_matrix'], clu.values.Image)
  assert values['confusion_matrix'].value.shape[0] == 1 and values['confusion_matrix'].value.shape[-1] == 3


def test_train_metrics_masked_mean_loss_and_accuracy():
  labels = jnp.array([1, 2, 3, 4], jnp.int32)
  logits = _logits_for([1, 0, 3, 0])
  loss = jnp.array([0.5, 1.5, 2.5, 99.0])
  mask = jnp.array([True, True, True, False])
  result = jax.jit(
    lambda: metrics.TrainMetrics.single_from_model_output(logits=logits, labels=labels, loss=loss, mask=mask)
  )().compute()
  np.testing.assert_allclose(float(result['loss']), (0.5 + 1.5 + 2.5) / 3, rtol=1e-6)
  np.testing.assert_allclose(float(result['accuracy']), 2 / 3, rtol=1e-6)


_FOUR_DEVICES = textwrap.dedent("""
  import json
  import jax
  jax.config.update('jax_num_cpu_devices', 4)
  import numpy as np
  from emojax import metrics

  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  labels = np.array([0, 1, 2, 3, 4, 5, 6, 0], np.int32)
  predictions = np.array([0, 1, 2, 2, 4, 5, 0, 6])
  logits = np.eye(7, dtype=np.float32)[predictions]
  loss = np.arange(8, dtype=np.float32)
  mask = np.array([True] * 6 + [False] * 2)
  step = jax.jit(lambda *a: metrics.EvalMetrics.single_from_model_output(
      logits=a[0], labels=a[1], loss=a[2], mask=a[3]))
  result = step(*[jax.device_put(x, sharding) for x in (logits, labels, loss, mask)]).compute()
  print(json.dumps({'devices': jax.device_count(), 'loss': float(result['loss']),
                    'accuracy': float(result['accuracy']),
                    'matrix': np.asarray(result['confusion_matrix']).tolist()}))
""")


def test_eval_metrics_on_four_cpu_devices():
  repo = pathlib.Path(__file__).resolve().parents[1]
  env = dict(os.environ, PYTHONPATH=str(repo), JAX_PLATFORMS='cpu')
  completed = subprocess.run(
    [sys.executable, '-c', _FOUR_DEVICES], check=False, cwd=repo, env=env, capture_output=True, text=True, timeout=120
  )
  assert completed.returncode == 0, completed.stderr
  result = json.loads(completed.stdout.strip().splitlines()[-1])
  assert result['devices'] == 4
  assert result['loss'] == pytest.approx((0 + 1 + 2 + 3 + 4 + 5) / 6)
  assert result['accuracy'] == pytest.approx(5 / 6)
  np.testing.assert_array_equal(result['matrix'], _hand_matrix([(0, 0), (1, 1), (2, 2), (3, 2), (4, 4), (5, 5)]))

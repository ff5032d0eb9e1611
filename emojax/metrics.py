"""clu metrics for emojax: loss, accuracy and a confusion matrix.

Follows the Flax `ogbg_molpcba` example: the jitted step returns
`EvalMetrics.single_from_model_output(...)` computed on the global (sharded)
batch, the host merges the per-batch collections with `.merge`, and `.compute()`
runs once at log time.

Every metric takes the same keyword model outputs:
  logits: [batch, num_classes] float.
  labels: [batch] int32 class indices (clu's `Accuracy` insists on int32).
  loss:   [batch] per-example loss, so that `mask` can drop padding rows; a
          scalar loss would make clu ignore the mask (and log a warning).
  mask:   [batch] bool, False on the padding rows of the last eval batch.

This module must not use `from __future__ import annotations`: clu's
`Collection` reads its metric classes from `__annotations__`, and string
annotations break it.
"""

import clu.metrics
import clu.values
import flax
import jax
import jax.numpy as jnp

from emojax import ravdess


@flax.struct.dataclass
class ConfusionMatrix(clu.metrics.Metric):
  """Counts of (true class, predicted class) pairs, masked rows excluded.

  `matrix[i, j]` is the number of examples of true class `i` predicted as class
  `j` (argmax of the logits): rows true, columns predicted, as in the thesis.
  Counts are int32, so merging is exact however many batches are added.
  Labels outside `[0, num_classes)` are not counted.
  """

  matrix: jnp.ndarray  # [num_classes, num_classes] int32

  @classmethod
  def empty(cls) -> 'ConfusionMatrix':
    """All-zero matrix for the 7 emotion classes; merging with it is a no-op."""
    return cls(matrix=jnp.zeros((ravdess.NUM_CLASSES, ravdess.NUM_CLASSES), jnp.int32))

  @classmethod
  def from_model_output(
    cls, *, logits: jnp.ndarray, labels: jnp.ndarray, mask: jnp.ndarray | None = None, **_
  ) -> 'ConfusionMatrix':
    """Builds the matrix of one batch.

    Args:
      logits: [batch, num_classes] scores; the prediction is their argmax.
      labels: [batch] integer true classes.
      mask: optional [batch] bool; rows where it is False are not counted.
      **_: other model outputs (such as `loss`), ignored.

    Returns:
      A `ConfusionMatrix` of shape [num_classes, num_classes].
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
      raise ValueError(
        f'ConfusionMatrix needs logits [batch, num_classes] and labels [batch]; got logits {logits.shape} '
        f'and labels {labels.shape}.'
      )
    if mask is not None and mask.shape != labels.shape:
      raise ValueError(f'ConfusionMatrix needs a mask of shape {labels.shape} (one per example); got {mask.shape}.')
    num_classes = logits.shape[-1]
    predictions = jnp.argmax(logits, axis=-1)  # [batch]
    true_one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32)  # [batch, num_classes]
    predicted_one_hot = jax.nn.one_hot(predictions, num_classes, dtype=jnp.int32)  # [batch, num_classes]
    if mask is not None:
      true_one_hot = true_one_hot * mask.astype(jnp.int32)[:, None]
    # Sum of per-example outer products: exact integer counts, and a plain
    # reduction over the batch axis, which XLA handles on a sharded batch.
    matrix = jnp.sum(true_one_hot[:, :, None] * predicted_one_hot[:, None, :], axis=0)  # [num_classes, num_classes]
    return cls(matrix=matrix)

  def merge(self, other: 'ConfusionMatrix') -> 'ConfusionMatrix':
    if self.matrix.shape != other.matrix.shape:
      raise ValueError(
        f'Cannot merge confusion matrices of shapes {self.matrix.shape} and {other.matrix.shape}: the models '
        'disagree on the number of classes.'
      )
    return type(self)(matrix=self.matrix + other.matrix)

  def compute(self) -> jnp.ndarray:
    """Returns the [num_classes, num_classes] int32 counts, rows true."""
    return self.matrix

  def compute_value(self) -> clu.values.Image:
    """The matrix as a heatmap image, so `Collection.compute_values()` yields a value a writer can log.

    clu's default would wrap the 2-D matrix in `clu.values.Scalar`, which no
    writer can write.
    """
    from emojax import report  # Deferred: report is plain numpy and only needed here.

    return clu.values.Image(report.confusion_image(jax.device_get(self.matrix)))


@flax.struct.dataclass
class TrainMetrics(clu.metrics.Collection):
  """Mean per-example loss and accuracy over the training batches."""

  loss: clu.metrics.Average.from_output('loss')
  accuracy: clu.metrics.Accuracy


@flax.struct.dataclass
class EvalMetrics(clu.metrics.Collection):
  """Loss, accuracy and confusion matrix over an evaluation partition."""

  loss: clu.metrics.Average.from_output('loss')
  accuracy: clu.metrics.Accuracy
  confusion_matrix: ConfusionMatrix

"""Flax Linen modules for the thesis's three classifiers: audio MLP, visual LSTM and stacker.

Every model has the same call signature, `model(batch, train=...) -> (logits, penultimate)`,
so one generic train step serves all three: `batch` is a dict of arrays and each model reads
only the keys it needs. `penultimate` is the representation the stacker consumes
(256-D from the audio MLP, 100-D from the visual LSTM) and its own 256-D hidden layer.
"""

import dataclasses
import functools
import json
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from emojax import ravdess


def _mlp_classifier(
  x: jnp.ndarray, hidden_sizes: Sequence[int], dropout_rate: float, num_classes: int, *, train: bool
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """ReLU Dense layers, each followed by dropout, then a Dense head; called inside a compact method.

  Args:
    x: [batch, features].

  Returns:
    logits [batch, num_classes] and the last hidden layer [batch, hidden_sizes[-1]], taken
    before its dropout so the stacker's features do not depend on a dropout key.
  """
  for i, width in enumerate(hidden_sizes):
    x = nn.relu(nn.Dense(width, name=f'hidden_{i}')(x))
    penultimate = x
    x = nn.Dropout(dropout_rate, deterministic=not train)(x)
  logits = nn.Dense(num_classes, name='head')(x)
  return logits, penultimate


class AudioMLP(nn.Module):
  """VGGish rows -> Dense 512 -> Dense 256 -> Dense 7 (thesis Table 1).

  Reads `batch['audio']`: [batch, rows, 128] VGGish embeddings, one row per 0.96 s. The first
  `num_audio_frames` rows are kept (zero rows appended when a clip has fewer), then
  flattened, so the input width is `num_audio_frames * 128` whatever the clip length.

  Attributes:
    hidden_sizes: widths of the ReLU hidden layers.
    dropout_rate: dropout after each hidden layer, active only when `train=True`.
    num_audio_frames: VGGish rows used per clip.
    num_classes: output classes.
  """

  hidden_sizes: Sequence[int] = (512, 256)
  dropout_rate: float = 0.5
  num_audio_frames: int = 5
  num_classes: int = ravdess.NUM_CLASSES

  @nn.compact
  def __call__(self, batch: dict, *, train: bool) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Returns logits [batch, num_classes] and the last hidden layer [batch, hidden_sizes[-1]]."""
    audio = jnp.asarray(batch['audio'], jnp.float32)[:, : self.num_audio_frames]  # [batch, rows, 128]
    missing_rows = self.num_audio_frames - audio.shape[1]
    if missing_rows > 0:
      audio = jnp.pad(audio, ((0, 0), (0, missing_rows), (0, 0)))
    x = audio.reshape(audio.shape[0], -1)  # [batch, num_audio_frames * 128]
    return _mlp_classifier(x, self.hidden_sizes, self.dropout_rate, self.num_classes, train=train)


class VisualLSTM(nn.Module):
  """VGG16 frame embeddings -> LSTM 200 -> LSTM 100 -> Dense 7, over each clip's real frames.

  Reads `batch['visual']`: [batch, time, 512], clips padded at the end to a common `time`, and
  `batch['num_frames']`: [batch] int, each clip's real length. The LSTMs are `lax.scan`s
  (Flax's `nn.RNN`) given `seq_lengths`, so a clip's carry stops changing after its last real
  frame; the representation is the last layer's hidden state there (the carry's `h`), what
  Keras' `LSTM(return_sequences=False)` with a mask returns.

  Padding frames are zeroed before the scan: their values cannot reach the outputs anyway,
  but a NaN or inf in the padding would otherwise turn the gradients into NaN through the
  masked branch. A clip with `num_frames` 0 is treated as length 1 (`nn.RNN` would return the
  carry after the last padded step for length 0); the data pipeline keeps such clips out.

  Attributes:
    lstm_sizes: hidden size of each stacked LSTM layer.
    dropout_rate: dropout on the representation before the classifier (0 = none, as in the
      thesis).
    num_classes: output classes.
    unroll: time steps per scan iteration; a speed knob that does not change the result.
  """

  lstm_sizes: Sequence[int] = (200, 100)
  dropout_rate: float = 0.0
  num_classes: int = ravdess.NUM_CLASSES
  unroll: int = 1

  @nn.compact
  def __call__(self, batch: dict, *, train: bool) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Returns logits [batch, num_classes] and the last LSTM's state [batch, lstm_sizes[-1]]."""
    visual = jnp.asarray(batch['visual'], jnp.float32)  # [batch, time, 512]
    num_frames = jnp.maximum(jnp.asarray(batch['num_frames'], jnp.int32), 1)  # [batch]
    is_real = jnp.arange(visual.shape[1])[None, :] < num_frames[:, None]  # [batch, time]
    x = jnp.where(is_real[..., None], visual, 0.0)
    for i, hidden_size in enumerate(self.lstm_sizes):
      # The name goes on the cell: a name on nn.RNN does not name its parameters.
      lstm = nn.RNN(nn.OptimizedLSTMCell(features=hidden_size, name=f'lstm_{i}'), return_carry=True, unroll=self.unroll)
      (_, last_hidden), x = lstm(x, seq_lengths=num_frames)  # x: [batch, time, hidden_size]
    penultimate = last_hidden  # [batch, lstm_sizes[-1]]
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(penultimate)
    logits = nn.Dense(self.num_classes, name='head')(x)
    return logits, penultimate


class Stacker(nn.Module):
  """Concatenated base-model features -> Dense 256 -> Dense 7.

  Reads `batch['features']`: [batch, 356], the audio MLP's 256-D and the visual LSTM's 100-D
  penultimate outputs side by side.

  Attributes:
    hidden_sizes: widths of the ReLU hidden layers.
    dropout_rate: dropout after each hidden layer, active only when `train=True`.
    num_classes: output classes.
  """

  hidden_sizes: Sequence[int] = (256,)
  dropout_rate: float = 0.5
  num_classes: int = ravdess.NUM_CLASSES

  @nn.compact
  def __call__(self, batch: dict, *, train: bool) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Returns logits [batch, num_classes] and the last hidden layer [batch, hidden_sizes[-1]]."""
    x = jnp.asarray(batch['features'], jnp.float32)  # [batch, 356]
    return _mlp_classifier(x, self.hidden_sizes, self.dropout_rate, self.num_classes, train=train)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A model as the trainer and the experiment see it.

  Attributes:
    build: `config.model.<name>` -> the unbound Flax module.
    inputs: the batch keys the model reads, besides 'label' and 'mask'.
    stacked: True for a model trained on the base models' penultimate features.
  """

  build: Callable[[ml_collections.ConfigDict], nn.Module]
  inputs: tuple[str, ...]
  stacked: bool = False


# The one table of models; every other list of model names derives from it.
MODELS = {
  'audio': ModelSpec(
    build=lambda cfg: AudioMLP(
      hidden_sizes=tuple(cfg.hidden_sizes),
      dropout_rate=cfg.dropout_rate,
      num_audio_frames=cfg.num_audio_frames,
      num_classes=ravdess.NUM_CLASSES,
    ),
    inputs=('audio',),
  ),
  'visual': ModelSpec(
    build=lambda cfg: VisualLSTM(
      lstm_sizes=tuple(cfg.lstm_sizes),
      dropout_rate=cfg.dropout_rate,
      num_classes=ravdess.NUM_CLASSES,
      unroll=cfg.get('unroll', 1),  # Optional field: a speed knob only.
    ),
    inputs=('visual', 'num_frames'),
  ),
  'stacker': ModelSpec(
    build=lambda cfg: Stacker(
      hidden_sizes=tuple(cfg.hidden_sizes), dropout_rate=cfg.dropout_rate, num_classes=ravdess.NUM_CLASSES
    ),
    inputs=('features',),
    stacked=True,
  ),
}
# The models trained on embeddings, in stage order; the stacker reads their penultimate features.
BASE_MODELS = tuple(name for name, spec in MODELS.items() if not spec.stacked)


def build_model(name: str, model_config) -> nn.Module:
  """Builds model `name` of `MODELS` from `config.model` (its sub-dict of the same name).

  Equal settings give the same instance: a module is a static field of the train state, so
  reusing it lets jit reuse the compiled steps across stages and runs in one process.
  """
  if name not in MODELS:
    raise ValueError(f'Unknown model name {name!r}: use one of {list(MODELS)}.')
  return _cached_model(name, ml_collections.ConfigDict(model_config[name]).to_json())


@functools.cache
def _cached_model(name: str, settings_json: str) -> nn.Module:
  return MODELS[name].build(ml_collections.ConfigDict(json.loads(settings_json)))

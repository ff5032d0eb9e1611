"""Flax Linen modules for the thesis's three classifiers: audio MLP, visual LSTM and stacker.

Every model has the same call signature, `model(batch, train=...) -> (logits, penultimate)`,
so one generic train step serves all three: `batch` is a dict of arrays and each model reads
only the keys it needs. `penultimate` is the representation the stacker consumes
(256-D from the audio MLP, 100-D from the visual LSTM) and its own 256-D hidden layer.

The layers start where the thesis' Keras layers start, because how a small model learns on
a few hundred clips depends on it: Dense kernels glorot_uniform with zero biases; LSTM
kernels glorot_uniform over all four gates at once ([in, 4H]), recurrent kernels orthogonal
over all four gates at once ([H, 4H], so each gate's block has a quarter of the energy of a
per-gate orthogonal matrix), and biases zero except the forget gate's, which is 1 (Keras'
`unit_forget_bias`). The LSTM's parameters use Keras' layout (gates i, f, c, o along the last
axis), so Keras weights load into it unchanged.
"""

import dataclasses
import functools
import json
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from emojax import ravdess

# Keras' defaults for Dense and LSTM layers.
dense_kernel_init = nn.initializers.glorot_uniform()
lstm_kernel_init = nn.initializers.glorot_uniform()
lstm_recurrent_init = nn.initializers.orthogonal()


def lstm_bias_init(key, shape, dtype=jnp.float32):
  """Zeros with the forget gate's quarter at 1 (Keras' `unit_forget_bias`); gates i, f, c, o."""
  del key
  hidden = shape[-1] // 4
  return jnp.zeros(shape, dtype).at[..., hidden : 2 * hidden].set(1.0)


def _dense(features: int, name: str) -> nn.Dense:
  return nn.Dense(features, kernel_init=dense_kernel_init, bias_init=nn.initializers.zeros, name=name)


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
    x = nn.relu(_dense(width, f'hidden_{i}')(x))
    penultimate = x
    x = nn.Dropout(dropout_rate, deterministic=not train)(x)
  logits = _dense(num_classes, 'head')(x)
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


def lstm_scan_autodiff(
  inputs: jnp.ndarray,
  is_real: jnp.ndarray,
  kernel: jnp.ndarray,
  recurrent_kernel: jnp.ndarray,
  bias: jnp.ndarray,
  unroll: int = 1,
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """One LSTM layer over padded sequences, as Keras' LSTM with a mask computes it; JAX differentiates the scan.

  The input projection of every frame is one matrix product before the scan; the scan only
  adds the recurrent term. On a frame where `is_real` is False the state is carried over
  unchanged, so a clip's state after its last real frame is its state at the end.

  Args:
    inputs: [batch, time, in] frames (padding rows must be finite).
    is_real: [batch, time] bool, False on padding frames.
    kernel: [in, 4H]; recurrent_kernel: [H, 4H]; bias: [4H]; gates i, f, c, o.
    unroll: time steps per scan iteration (speed only).

  Returns:
    outputs [batch, time, H] (the state after each frame) and the last state h [batch, H].
  """
  outputs, last, _ = _lstm_forward(inputs, is_real, kernel, recurrent_kernel, bias, unroll)
  return outputs.swapaxes(0, 1), last


def _lstm_forward(inputs, is_real, kernel, recurrent_kernel, bias, unroll):
  """The scan of `lstm_scan_autodiff`; also returns what the hand-written backward pass needs.

  Returns:
    outputs [time, batch, H], the last state [batch, H], and the residuals: gate
    activations [time, batch, 4H] (i, f, g, o after their nonlinearities), the cell state
    before each frame [time, batch, H], tanh of the new cell state [time, batch, H] and the
    frame mask [time, batch, 1].
  """
  hidden = recurrent_kernel.shape[0]
  projected = jnp.einsum('btd,dg->tbg', inputs, kernel) + bias  # [time, batch, 4H]
  mask = is_real.T[..., None].astype(inputs.dtype)  # [time, batch, 1]

  def step(carry, frame):
    h, c = carry  # [batch, H] each
    z, real = frame  # [batch, 4H], [batch, 1]
    i, f, g, o = jnp.split(z + h @ recurrent_kernel, 4, axis=-1)
    i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
    c_new = f * c + i * g
    tanh_c = jnp.tanh(c_new)
    # A padding frame carries the state over: real is 0 there.
    h_next = real * (o * tanh_c) + (1 - real) * h
    c_next = real * c_new + (1 - real) * c
    return (h_next, c_next), (h_next, jnp.concatenate([i, f, g, o], axis=-1), c, tanh_c)

  zeros = jnp.zeros((inputs.shape[0], hidden), inputs.dtype)
  (last, _), (outputs, gates, cells, tanh_cells) = jax.lax.scan(step, (zeros, zeros), (projected, mask), unroll=unroll)
  return outputs, last, (gates, cells, tanh_cells, mask)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def lstm_scan(
  inputs: jnp.ndarray,
  is_real: jnp.ndarray,
  kernel: jnp.ndarray,
  recurrent_kernel: jnp.ndarray,
  bias: jnp.ndarray,
  unroll: int = 1,
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """`lstm_scan_autodiff` with a hand-written gradient, the way cuDNN splits the LSTM's backward pass.

  Differentiating through `lax.scan` accumulates the weight gradients inside the loop, one
  small matrix product per frame. Here the backward scan carries only (dh, dc) and emits
  each frame's gate gradients; the gradients of both kernels, the bias and the inputs are
  then single large matrix products over all frames at once.
  """
  outputs, last, _ = _lstm_forward(inputs, is_real, kernel, recurrent_kernel, bias, unroll)
  return outputs.swapaxes(0, 1), last


def _lstm_scan_fwd(inputs, is_real, kernel, recurrent_kernel, bias, unroll):
  outputs, last, residuals = _lstm_forward(inputs, is_real, kernel, recurrent_kernel, bias, unroll)
  return (outputs.swapaxes(0, 1), last), (inputs, is_real, kernel, recurrent_kernel, outputs, residuals)


def _lstm_scan_bwd(unroll, saved, cotangents):
  inputs, is_real, kernel, recurrent_kernel, outputs, (gates, cells, tanh_cells, mask) = saved
  d_outputs, d_last = cotangents  # [batch, time, H], [batch, H]

  def step(carry, frame):
    dh, dc = carry  # Gradients reaching the state after this frame: [batch, H] each.
    d_output, gate, cell, tanh_c, real = frame
    dh = dh + d_output
    i, f, g, o = jnp.split(gate, 4, axis=-1)
    dh_new = real * dh
    dc_new = real * dc + dh_new * o * (1 - tanh_c * tanh_c)
    d_gates = jnp.concatenate(  # Through the nonlinearities: [batch, 4H].
      [dc_new * g * i * (1 - i), dc_new * cell * f * (1 - f), dc_new * i * (1 - g * g), dh_new * tanh_c * o * (1 - o)],
      axis=-1,
    )
    dh_before = (1 - real) * dh + d_gates @ recurrent_kernel.T
    dc_before = (1 - real) * dc + dc_new * f
    return (dh_before, dc_before), d_gates

  frames = (d_outputs.swapaxes(0, 1), gates, cells, tanh_cells, mask)
  _, d_gates = jax.lax.scan(step, (d_last, jnp.zeros_like(d_last)), frames, reverse=True, unroll=unroll)
  before = jnp.concatenate([jnp.zeros_like(outputs[:1]), outputs[:-1]])  # The state before each frame.
  d_kernel = jnp.einsum('btd,tbg->dg', inputs, d_gates)
  d_recurrent = jnp.einsum('tbh,tbg->hg', before, d_gates)
  d_inputs = jnp.einsum('tbg,dg->btd', d_gates, kernel)  # Dropped by XLA where the inputs are data.
  return d_inputs, None, d_kernel, d_recurrent, d_gates.sum((0, 1))


lstm_scan.defvjp(_lstm_scan_fwd, _lstm_scan_bwd)


class LSTM(nn.Module):
  """A Keras-layout LSTM layer: parameters `kernel` [in, 4H], `recurrent_kernel` [H, 4H], `bias` [4H].

  Attributes:
    features: the hidden size H.
    unroll: time steps per scan iteration (speed only).
    scan: `lstm_scan` (hand-written gradient) or `lstm_scan_autodiff`; the same numbers.
  """

  features: int
  unroll: int = 1
  scan: Callable = lstm_scan

  @nn.compact
  def __call__(self, inputs: jnp.ndarray, is_real: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """[batch, time, in], [batch, time] bool -> (outputs [batch, time, H], last state [batch, H])."""
    gates = 4 * self.features
    kernel = self.param('kernel', lstm_kernel_init, (inputs.shape[-1], gates))
    recurrent_kernel = self.param('recurrent_kernel', lstm_recurrent_init, (self.features, gates))
    bias = self.param('bias', lstm_bias_init, (gates,))
    return self.scan(inputs, is_real, kernel, recurrent_kernel, bias, self.unroll)


class VisualLSTM(nn.Module):
  """VGG16 frame embeddings -> LSTM 200 -> LSTM 100 -> Dense 7, over each clip's real frames.

  Reads `batch['visual']`: [batch, time, 512], clips padded at the end to a common `time`, and
  `batch['num_frames']`: [batch] int, each clip's real length. Each LSTM is a `lax.scan` that
  carries its state over padding frames (`lstm_scan`), so the representation is the last
  layer's state after each clip's last real frame, what Keras' `LSTM(return_sequences=False)`
  with a mask returns.

  Padding frames are zeroed before the scan: their values cannot reach the outputs anyway,
  but a NaN or inf in the padding would otherwise turn the gradients into NaN through the
  masked branch. A clip with `num_frames` 0 is treated as length 1 (one zero frame); the data
  pipeline keeps such clips out.

  Attributes:
    lstm_sizes: hidden size of each stacked LSTM layer.
    dropout_rate: dropout on the representation before the classifier (0 = none, as in the
      thesis).
    num_classes: output classes.
    unroll: time steps per scan iteration; a speed knob that does not change the result.
    scan: the LSTM layers' scan, `lstm_scan` or `lstm_scan_autodiff` (speed only).
  """

  lstm_sizes: Sequence[int] = (200, 100)
  dropout_rate: float = 0.0
  num_classes: int = ravdess.NUM_CLASSES
  unroll: int = 1
  scan: Callable = lstm_scan

  @nn.compact
  def __call__(self, batch: dict, *, train: bool) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Returns logits [batch, num_classes] and the last LSTM's state [batch, lstm_sizes[-1]]."""
    visual = jnp.asarray(batch['visual'], jnp.float32)  # [batch, time, 512]
    num_frames = jnp.maximum(jnp.asarray(batch['num_frames'], jnp.int32), 1)  # [batch]
    is_real = jnp.arange(visual.shape[1])[None, :] < num_frames[:, None]  # [batch, time]
    x = jnp.where(is_real[..., None], visual, 0.0)
    for i, hidden_size in enumerate(self.lstm_sizes):
      layer = LSTM(hidden_size, unroll=self.unroll, scan=self.scan, name=f'lstm_{i}')
      x, last_hidden = layer(x, is_real)  # x: [batch, time, H]
    penultimate = last_hidden  # [batch, lstm_sizes[-1]]
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(penultimate)
    logits = _dense(self.num_classes, 'head')(x)
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
    build: (`config.model.<name>`, number of classes) -> the unbound Flax module.
    inputs: the batch keys the model reads, besides 'label' and 'mask'; the first is the
      embedding stream that `config.data.normalize` scales.
    stacked: True for a model trained on the base models' penultimate features.
  """

  build: Callable[[ml_collections.ConfigDict, int], nn.Module]
  inputs: tuple[str, ...]
  stacked: bool = False

  @property
  def stream(self) -> str:
    """The embedding the model reads ('audio', 'visual' or 'features')."""
    return self.inputs[0]


# The one table of models; every other list of model names derives from it.
MODELS = {
  'audio': ModelSpec(
    build=lambda cfg, num_classes: AudioMLP(
      hidden_sizes=tuple(cfg.hidden_sizes),
      dropout_rate=cfg.dropout_rate,
      num_audio_frames=cfg.num_audio_frames,
      num_classes=num_classes,
    ),
    inputs=('audio',),
  ),
  'visual': ModelSpec(
    build=lambda cfg, num_classes: VisualLSTM(
      lstm_sizes=tuple(cfg.lstm_sizes),
      dropout_rate=cfg.dropout_rate,
      num_classes=num_classes,
      unroll=cfg.get('unroll', 1),  # Optional field: a speed knob only.
    ),
    inputs=('visual', 'num_frames'),
  ),
  'stacker': ModelSpec(
    build=lambda cfg, num_classes: Stacker(
      hidden_sizes=tuple(cfg.hidden_sizes), dropout_rate=cfg.dropout_rate, num_classes=num_classes
    ),
    inputs=('features',),
    stacked=True,
  ),
}
# The models trained on embeddings, in stage order; the stacker reads their penultimate features.
BASE_MODELS = tuple(name for name, spec in MODELS.items() if not spec.stacked)


def build_model(name: str, model_config, num_classes: int = ravdess.NUM_CLASSES) -> nn.Module:
  """Builds model `name` of `MODELS` from `config.model` (its sub-dict of the same name).

  Equal settings give the same instance: a module is a static field of the train state, so
  reusing it lets jit reuse the compiled steps across stages and runs in one process.
  """
  if name not in MODELS:
    raise ValueError(f'Unknown model name {name!r}: use one of {list(MODELS)}.')
  return _cached_model(name, ml_collections.ConfigDict(model_config[name]).to_json(), num_classes)


@functools.cache
def _cached_model(name: str, settings_json: str, num_classes: int) -> nn.Module:
  return MODELS[name].build(ml_collections.ConfigDict(json.loads(settings_json)), num_classes)

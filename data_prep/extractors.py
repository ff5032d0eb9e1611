"""Embedding networks: VGG16 per face crop and VGGish per 0.96 s of audio.

This is the only data_prep module that imports TensorFlow, so decoding and face detection can
run in worker processes that never load it.

Pretrained weights cannot be downloaded everywhere (tests, offline machines), so both
extractors have an offline stand-in with the same interface: VGG16 with seeded random weights,
and a VGGish SavedModel with VGGish's real log-mel front end and a small conv net of fixed
random weights. The stand-in VGGish is saved to disk and loaded through `tensorflow_hub.load`
exactly like the published model, so the loading path is the one used for real. Stand-in
embeddings carry no pretrained knowledge; they are for testing the pipeline, never for results.
"""

import itertools
import os
import random
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from data_prep.audio import DEFAULT_VGGISH_HANDLE, VGGISH_SAMPLE_RATE

VGG16_DIM = 512
VGGISH_DIM = 128

# VGGish front end (vggish_params.py / mel_features.py of the published model), at VGGISH_SAMPLE_RATE.
STFT_WINDOW_SAMPLES = 400  # 25 ms
STFT_HOP_SAMPLES = 160  # 10 ms
FFT_LENGTH = 512  # next power of two above the window
NUM_MEL_BINS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
PATCH_FRAMES = 96  # 0.96 s, non-overlapping


class ExtractorError(Exception):
  """A problem that stops the whole run (a model cannot be loaded), not just one clip."""


def _reason(err: Exception) -> str:
  """First line of an exception's message, short enough for a one-sentence error."""
  lines = str(err).strip().splitlines()
  text = lines[0].rstrip('.') if lines else type(err).__name__
  return text if len(text) <= 200 else text[:197] + '...'


def _check_tensorflow_backend():
  if keras.backend.backend() != 'tensorflow':
    raise ExtractorError(
      f'data_prep needs the TensorFlow Keras backend but KERAS_BACKEND is {keras.backend.backend()!r}; '
      'unset KERAS_BACKEND or set it to tensorflow.'
    )


class VGG16Embedder:
  """Keras VGG16 without its classifier: a [N, S, S, 3] uint8 RGB crop batch -> [N, 512].

  At 48x48 the last conv block is 1x1x512, so `pooling='avg'` is just a reshape (as in the
  thesis). Frames go through the network in batches inside one traced `tf.function`, which is
  what makes 45 fps affordable on a CPU (one `predict` per frame would not be).
  """

  def __init__(self, weights: str = 'imagenet', image_size: int = 48, seed: int = 0, batch_size: int = 128):
    """Builds the network.

    Args:
      weights: 'imagenet' (Keras downloads and caches it), a local .h5 / .weights.h5 file, or
        'random' (offline stand-in; built after seeding Keras, so identical run to run).
      image_size: side of the square input crops.
      seed: seed of the 'random' weights.
      batch_size: frames per forward pass.

    Raises:
      ExtractorError: the weights cannot be found or loaded.
    """
    _check_tensorflow_backend()
    self.image_size = image_size
    self.batch_size = batch_size
    self.identity = {'name': 'keras.applications.VGG16', 'weights': weights, 'image_size': image_size}
    if weights == 'random':
      keras_weights = None
      self.identity['seed'] = seed
    elif weights == 'imagenet':
      keras_weights = 'imagenet'
    elif os.path.isfile(weights):
      keras_weights = weights
    else:
      raise ExtractorError(
        f'VGG16 weights {weights!r} is neither "imagenet", "random" nor an existing weights file; '
        'pass a local .h5 file when offline.'
      )
    # Keras draws unseeded initial weights from the Python and NumPy generators; seed them for
    # the build only, and put the caller's generator states back afterwards.
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
      if weights == 'random':
        keras.utils.set_random_seed(seed)
      self.model = keras.applications.VGG16(
        include_top=False, weights=keras_weights, input_shape=(image_size, image_size, 3), pooling='avg'
      )
    except Exception as err:  # Any failure here (download, file format) ends the whole run.
      raise ExtractorError(
        f'Could not build VGG16 with weights {weights!r} ({_reason(err)}); offline, pass a local weights '
        'file or "random".'
      ) from err
    finally:
      random.setstate(python_state)
      np.random.set_state(numpy_state)
    self._forward = tf.function(
      lambda images: self.model(images, training=False),
      input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32)],
    )

  def __call__(self, crops: np.ndarray) -> np.ndarray:
    """[N, S, S, 3] uint8 RGB crops -> [N, 512] float32 embeddings."""
    crops = np.asarray(crops)
    expected = (self.image_size, self.image_size, 3)
    if crops.ndim != 4 or crops.shape[1:] != expected:
      raise ValueError(f'VGG16Embedder expects crops of shape [N, {", ".join(map(str, expected))}], got {crops.shape}.')
    if crops.shape[0] == 0:
      return np.zeros([0, VGG16_DIM], np.float32)
    outputs = []
    for start in range(0, crops.shape[0], self.batch_size):
      # preprocess_input wants RGB in 0..255: it flips to BGR and subtracts the ImageNet means.
      batch = keras.applications.vgg16.preprocess_input(crops[start : start + self.batch_size].astype(np.float32))
      outputs.append(self._forward(tf.constant(batch)).numpy())
    return np.concatenate(outputs).astype(np.float32)  # [N, 512]


def _hertz_to_mel(hertz):
  """HTK mel scale, as VGGish's mel_features.hertz_to_mel."""
  return 1127.0 * np.log(1.0 + np.asarray(hertz, dtype=np.float64) / 700.0)


def mel_weight_matrix() -> np.ndarray:
  """[257, 64] float32 map from an FFT magnitude frame to mel bands, as VGGish builds it.

  Triangular filters evenly spaced on the HTK mel scale between 125 and 7500 Hz, evaluated at
  the FFT bin centres; the DC bin is zeroed (mel_features.spectrogram_to_mel_matrix).
  """
  num_spectrogram_bins = FFT_LENGTH // 2 + 1
  bins_mel = _hertz_to_mel(np.linspace(0.0, VGGISH_SAMPLE_RATE / 2, num_spectrogram_bins))
  edges_mel = np.linspace(_hertz_to_mel(MEL_MIN_HZ), _hertz_to_mel(MEL_MAX_HZ), NUM_MEL_BINS + 2)
  weights = np.empty([num_spectrogram_bins, NUM_MEL_BINS])
  for i in range(NUM_MEL_BINS):
    lower, centre, upper = edges_mel[i : i + 3]
    lower_slope = (bins_mel - lower) / (centre - lower)
    upper_slope = (upper - bins_mel) / (upper - centre)
    weights[:, i] = np.maximum(0.0, np.minimum(lower_slope, upper_slope))
  weights[0, :] = 0.0
  return weights.astype(np.float32)


def log_mel_patches(waveform: tf.Tensor, mel_weights: tf.Tensor) -> tf.Tensor:
  """VGGish front end: [num_samples] float32 at 16 kHz -> [num_patches, 96, 64] log-mel patches.

  num_patches = floor((1 + floor((N - 400) / 160)) / 96) as in vggish_input.waveform_to_examples:
  zero for less than 0.975 s of audio.
  """
  # tf.signal.rfft fails on zero frames; a 400-sample floor still gives zero patches.
  waveform = tf.pad(waveform, [[0, tf.maximum(STFT_WINDOW_SAMPLES - tf.shape(waveform)[0], 0)]])
  frames = tf.signal.frame(waveform, STFT_WINDOW_SAMPLES, STFT_HOP_SAMPLES)  # [num_frames, 400]
  window = tf.signal.hann_window(STFT_WINDOW_SAMPLES, periodic=True)
  magnitude = tf.abs(tf.signal.rfft(frames * window, [FFT_LENGTH]))  # [num_frames, 257]
  log_mel = tf.math.log(tf.matmul(magnitude, mel_weights) + LOG_OFFSET)  # [num_frames, 64]
  return tf.signal.frame(log_mel, PATCH_FRAMES, PATCH_FRAMES, axis=0)  # [num_patches, 96, 64]


class _RandomVGGish(tf.Module):
  """Stand-in VGGish: the real front end, then a small conv net with fixed random weights."""

  def __init__(self, seed: int):
    super().__init__()
    rng = np.random.default_rng(seed)
    self.mel_weights = tf.Variable(mel_weight_matrix(), trainable=False, name='mel_weights')
    self.kernels = []
    channels = [1, 16, 32, 64, 128]
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(channels)):
      kernel = rng.normal(0.0, np.sqrt(2.0 / (9 * fan_in)), size=[3, 3, fan_in, fan_out]).astype(np.float32)
      self.kernels.append(tf.Variable(kernel, trainable=False, name=f'conv{i}'))
    projection = rng.normal(0.0, np.sqrt(1.0 / channels[-1]), size=[channels[-1], 128]).astype(np.float32)
    self.projection = tf.Variable(projection, trainable=False, name='projection')

  @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
  def __call__(self, waveform):
    patches = log_mel_patches(waveform, self.mel_weights)  # [num_patches, 96, 64]
    # The CPU conv kernels mis-handle an empty batch, so short audio skips the network.
    return tf.cond(
      tf.shape(patches)[0] > 0,
      lambda: self._embed(patches),
      lambda: tf.zeros([0, VGGISH_DIM], tf.float32),
    )

  def _embed(self, patches):
    x = patches[..., None]  # [num_patches, 96, 64, 1]
    for i, kernel in enumerate(self.kernels):
      x = tf.nn.relu(tf.nn.conv2d(x, kernel, strides=1, padding='SAME'))
      if i < len(self.kernels) - 1:
        x = tf.nn.max_pool2d(x, 2, 2, 'VALID')  # 96x64 -> 48x32 -> 24x16 -> 12x8
    x = tf.reduce_mean(x, axis=[1, 2])  # [num_patches, 128]
    return tf.matmul(x, self.projection)  # [num_patches, 128]


def build_random_vggish(export_dir: str, seed: int = 0) -> None:
  """Saves the stand-in VGGish SavedModel (1-D 16 kHz float32 in, [N, 128] out) to `export_dir`.

  It is written to a temporary sibling directory and renamed into place, so a killed build
  never leaves a directory that looks complete. If another process finished the same
  directory first, its copy is kept (the same seed gives the same model).

  Raises:
    ExtractorError: `export_dir` already exists, or the model cannot be written.
  """
  export_dir = os.path.abspath(export_dir)
  if os.path.exists(export_dir):
    raise ExtractorError(f'Cannot build the stand-in VGGish into {export_dir}: it already exists; remove it first.')
  parent = os.path.dirname(export_dir)
  try:
    os.makedirs(parent, exist_ok=True)
    temp_dir = tempfile.mkdtemp(prefix='.' + os.path.basename(export_dir) + '.tmp-', dir=parent)
  except OSError as err:
    raise ExtractorError(f'Cannot write the stand-in VGGish under {parent}: {_reason(err)}.') from err
  try:
    tf.saved_model.save(_RandomVGGish(seed), temp_dir)
    try:
      os.rename(temp_dir, export_dir)
    except OSError:
      if not os.path.isfile(os.path.join(export_dir, 'saved_model.pb')):
        raise
  except OSError as err:
    raise ExtractorError(f'Cannot write the stand-in VGGish to {export_dir}: {_reason(err)}.') from err
  finally:
    shutil.rmtree(temp_dir, ignore_errors=True)


def default_cache_dir() -> str:
  return os.environ.get('EMOJAX_CACHE') or os.path.join(os.path.expanduser('~'), '.cache', 'emojax')


class VGGishEmbedder:
  """VGGish through `tensorflow_hub.load`: [num_samples] 16 kHz waveform -> [rows, 128].

  One row per 0.96 s of audio; the published model (and the stand-in) return no rows for less
  than 0.975 s, which is why `audio.prepare_waveform` pads clips first.
  """

  def __init__(self, handle: str = DEFAULT_VGGISH_HANDLE, cache_dir: str | None = None, seed: int = 0):
    """Loads the model.

    Args:
      handle: a TF-Hub URL, a local SavedModel directory, or 'random' for the stand-in,
        built once into `<cache_dir>/vggish-random-seed<seed>` and reused from there.
      cache_dir: where the stand-in is kept; default $EMOJAX_CACHE or ~/.cache/emojax.
      seed: seed of the stand-in's weights.

    Raises:
      ExtractorError: the model cannot be built or loaded.
    """
    import tensorflow_hub as hub  # Only the VGGish path needs it, and it is slow to import.

    if handle == 'random':
      model_dir = os.path.join(cache_dir or default_cache_dir(), f'vggish-random-seed{seed}')
      if not os.path.isfile(os.path.join(model_dir, 'saved_model.pb')):
        build_random_vggish(model_dir, seed)
      self.identity = {'handle': 'random', 'seed': seed}
      self.model_path = model_dir
    else:
      self.identity = {'handle': handle}
      self.model_path = handle
    try:
      self.model = hub.load(self.model_path)
    except Exception as err:  # hub raises many kinds (network, format); all end the run.
      raise ExtractorError(
        f'Could not load VGGish from {handle!r} ({_reason(err)}); offline, pass a local SavedModel directory '
        'or "random" for the untrained stand-in.'
      ) from err
    if not callable(self.model):
      raise ExtractorError(f'The model loaded from {handle!r} is not callable on a waveform; is it VGGish?')

  def __call__(self, waveform_16k: np.ndarray) -> np.ndarray:
    """[num_samples] float32 at 16 kHz -> [rows, 128] float32, one row per 0.96 s."""
    waveform_16k = np.asarray(waveform_16k, dtype=np.float32)
    if waveform_16k.ndim != 1:
      raise ValueError(f'VGGishEmbedder expects a [num_samples] waveform, got shape {waveform_16k.shape}.')
    embedding = self.model(tf.constant(waveform_16k))
    return np.asarray(embedding, dtype=np.float32).reshape([-1, VGGISH_DIM])

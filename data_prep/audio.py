"""Audio stage: read a clip's sound as mono float32 and prepare it for VGGish.

RAVDESS audio is 48 kHz (a few files stereo) in the audio-only wavs and AAC inside the mp4s;
VGGish wants 16 kHz mono, and returns no row at all for less than 0.975 s, so short clips are
zero-padded at the end (to 5 s by default, as the thesis did).

Any problem with one file raises `ValueError` with one sentence naming it.
"""

import math
import os

import av
import numpy as np
import resampy
import soundfile

from data_prep import media

VGGISH_SAMPLE_RATE = 16000
# The public TF-Hub VGGish. Defined here, in a TensorFlow-free module, so the CLI and its
# worker processes can name it without importing TensorFlow.
DEFAULT_VGGISH_HANDLE = 'https://tfhub.dev/google/vggish/1'

# Read with soundfile; anything else (mp4, m4a, ...) goes through PyAV.
_SOUNDFILE_EXTENSIONS = ('.wav', '.flac', '.ogg')


def _read_soundfile(path: str) -> tuple[np.ndarray, int]:
  try:
    samples, sample_rate = soundfile.read(path, dtype='float32', always_2d=True)  # [num_samples, channels]
  except (soundfile.LibsndfileError, RuntimeError, OSError) as err:
    raise ValueError(f'Cannot read audio file {path}: {media.error_reason(err)}.') from err
  return samples.mean(axis=1), int(sample_rate)


def _read_av(path: str) -> tuple[np.ndarray, int]:
  try:
    container = av.open(path)
  except (av.FFmpegError, OSError) as err:
    raise ValueError(f'Cannot open {path} for its audio track: {media.error_reason(err)}.') from err
  with container:
    if not container.streams.audio:
      raise media.MissingStreamError(f'{path} has no audio track.')
    stream = container.streams.audio[0]
    # Planar float keeps channels apart, so they are mixed here by a plain mean.
    resampler = av.AudioResampler(format='fltp')
    chunks = []  # each [channels, samples]
    try:
      for frame in container.decode(stream):
        for planar in resampler.resample(frame):
          chunks.append(planar.to_ndarray())
      for planar in resampler.resample(None):
        chunks.append(planar.to_ndarray())
    except av.FFmpegError as err:
      raise ValueError(
        f'Cannot decode the audio track of {path} (truncated or corrupt): {media.error_reason(err)}.'
      ) from err
    sample_rate = int(stream.rate or 0)
    declared = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None
  if not chunks:
    return np.zeros([0], np.float32), sample_rate
  samples = np.concatenate(chunks, axis=1).mean(axis=0)
  if declared is not None and sample_rate > 0:
    decoded = samples.size / sample_rate
    if media.is_truncated(decoded, declared):
      raise ValueError(
        f'The audio track of {path} looks truncated: {decoded:.2f} s decoded of a declared {declared:.2f} s.'
      )
  # AAC decoding can overshoot full scale slightly.
  return np.clip(samples, -1.0, 1.0).astype(np.float32), sample_rate


def read_audio(path: str) -> tuple[np.ndarray, int]:
  """Reads a wav (soundfile) or a video's first audio track (PyAV).

  Returns:
    (waveform [num_samples] float32 in [-1, 1], channels mixed to mono; sample rate in Hz).

  Raises:
    ValueError: the file cannot be read, has no audio track or no samples.
  """
  if os.path.splitext(path)[1].lower() in _SOUNDFILE_EXTENSIONS:
    waveform, sample_rate = _read_soundfile(path)
  else:
    waveform, sample_rate = _read_av(path)
  if waveform.size == 0:
    raise ValueError(f'{path} has no audio samples.')
  if sample_rate <= 0:
    raise ValueError(f'{path} declares an invalid sample rate {sample_rate}.')
  return waveform.astype(np.float32, copy=False), sample_rate


def to_vggish_rate(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
  """Resamples mono audio to 16 kHz with resampy, as VGGish's own input code does.

  Args:
    waveform: [num_samples] mono float samples.
    sample_rate: its rate in Hz.

  Returns:
    [num_samples_16k] float32 at 16 kHz.

  Raises:
    ValueError: the waveform is not 1-D or too short to resample.
  """
  waveform = np.asarray(waveform, dtype=np.float32)
  if waveform.ndim != 1:
    raise ValueError(f'prepare_waveform expects a mono [num_samples] waveform, got shape {waveform.shape}.')
  if sample_rate != VGGISH_SAMPLE_RATE:
    try:
      waveform = resampy.resample(waveform, sample_rate, VGGISH_SAMPLE_RATE).astype(np.float32)
    except ValueError as err:  # resampy refuses a handful of samples.
      raise ValueError(
        f'Audio of {waveform.size} samples at {sample_rate} Hz cannot be resampled to 16 kHz: {err}.'
      ) from err
  return waveform


def pad_waveform(waveform_16k: np.ndarray, min_seconds: float = 5.0) -> np.ndarray:
  """Zero-pads 16 kHz audio at the end to at least `min_seconds` (VGGish gives no row under 0.975 s).

  Returns:
    [max(num_samples, ceil(min_seconds * 16000))] float32; longer audio is returned as is.
  """
  min_samples = math.ceil(min_seconds * VGGISH_SAMPLE_RATE - 1e-6)
  if waveform_16k.size < min_samples:
    waveform_16k = np.pad(waveform_16k, (0, min_samples - waveform_16k.size))
  return waveform_16k


def prepare_waveform(waveform: np.ndarray, sample_rate: int, min_seconds: float = 5.0) -> np.ndarray:
  """`to_vggish_rate`, then `pad_waveform`: a clip's audio as VGGish gets it.

  Args:
    waveform: [num_samples] mono float samples.
    sample_rate: its rate in Hz.
    min_seconds: pad to at least this long; 5 s gives 5 VGGish rows.

  Returns:
    [max(num_samples_16k, ceil(min_seconds * 16000))] float32 at 16 kHz.

  Raises:
    ValueError: the waveform is not 1-D or too short to resample.
  """
  return pad_waveform(to_vggish_rate(waveform, sample_rate), min_seconds)

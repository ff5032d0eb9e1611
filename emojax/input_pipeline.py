"""Schema-v1 TFRecords -> host numpy arrays -> padded, masked batches.

RAVDESS is small (1,248 clips, a few hundred MB of embeddings), so the shards are read once
with tf.data and kept in host memory as numpy arrays; an epoch is then a seeded permutation
and a loop over slices, which is deterministic (a resumed run sees the same batches) and
costs nothing next to the LSTM. The partitions are drawn from the clip metadata by
`emojax.partitions`.

Every batch has exactly `batch_size` rows: a short last batch is padded and `mask` [batch]
says which rows are real, so losses and metrics are exact masked means. The time axis of
`visual` is cut to the batch's longest clip rounded up to `data.time_bucket`, which keeps
the LSTM's work proportional to the real lengths while bounding the number of shapes jit
compiles.
"""

import glob
import json
import os
from collections.abc import Iterator, Sequence

import numpy as np
from absl import logging

from emojax import ravdess, schema

# Host arrays of one partition (or of all clips), keyed like the batches; first axis = clip.
Split = dict[str, np.ndarray]


def read_dataset_info(data_dir: str | None) -> dict:
  """Reads `data_dir/dataset_info.json`; a missing directory or file names the path."""
  if not data_dir:
    raise ValueError(
      'config.data.dir is not set: pass --config.data.dir=DIR, the output of data_prep/build_tfrecords.py.'
    )
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(
      f'Data directory {data_dir} does not exist: set --config.data.dir to the TFRecord directory.'
    )
  path = os.path.join(data_dir, schema.DATASET_INFO)
  if not os.path.exists(path):
    raise FileNotFoundError(
      f'{path} does not exist: {data_dir} is not a finished data_prep output (build_tfrecords.py writes it last).'
    )
  with open(path) as f:
    return json.load(f)


def check_dataset_info(info: dict, config, path: str = schema.DATASET_INFO) -> None:
  """Raises ValueError when the data was written with another schema or feature dims than the config expects."""
  version = info.get('schema_version')
  if version != config.data.schema_version:
    raise ValueError(
      f'{path} has schema_version {version!r}, but config.data.schema_version is {config.data.schema_version}: '
      'rebuild the TFRecords with this version of data_prep, or use the emojax version that wrote them.'
    )
  dims = info.get('feature_dims') or {}
  for key, expected in config.data.feature_dims.items():
    if dims.get(key) != expected:
      raise ValueError(
        f'{path} has feature_dims.{key} = {dims.get(key)!r}, but config.data.feature_dims.{key} is {expected}: '
        'the features were extracted with a different network.'
      )


def uses_stand_in_extractors(info: dict) -> bool:
  """Whether the embeddings come from stand-ins (data_prep's 'random' extractors, fake_records)."""
  extractors = info.get('extractors') or {}
  return (
    bool(info.get('fake'))
    or extractors.get('vgg16', {}).get('weights') == 'random'
    or extractors.get('vggish', {}).get('handle') == 'random'
  )


def _parse(serialized):
  import tensorflow as tf

  context, sequences = schema.parse_sequence_example(serialized)
  return {
    'clip_id': context['clip_id'],
    'label': tf.cast(context['label'], tf.int32),
    'actor': tf.cast(context['actor'], tf.int32),
    'gender': tf.cast(context['gender'], tf.int32),
    'visual': sequences[schema.VISUAL_KEY],  # [frames, 512]
    'audio': sequences[schema.AUDIO_KEY],  # [rows, 128]
  }


def load_clips(config) -> tuple[Split, dict]:
  """Reads every shard of `config.data.dir` into host arrays, sorted by clip id.

  The dataset_info.json check runs first, so a mismatch fails before anything is read or
  compiled. TensorFlow is kept off the GPUs: it only parses records here.

  Returns:
    (clips, info): clips holds
      visual [N, max_frames, 512] float32, zero after each clip's end;
      num_frames [N] int32 in 1..max_frames (longer clips are cut, with a warning);
      audio [N, num_audio_frames, 128] float32, zero rows appended or extra rows cut;
      label, actor, gender [N] int32; clip_id [N] str.
    info is the parsed dataset_info.json.
  """
  import tensorflow as tf

  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # TensorFlow was initialised earlier (e.g. by main.py, which hid them already).
    pass
  data_dir = config.data.dir
  info = read_dataset_info(data_dir)
  check_dataset_info(info, config, os.path.join(data_dir, schema.DATASET_INFO))
  files = sorted(glob.glob(os.path.join(data_dir, schema.SHARD_GLOB)))
  if not files:
    raise FileNotFoundError(f'No shards matching {schema.SHARD_GLOB} in {data_dir}.')

  max_frames = config.data.max_frames
  num_audio_frames = config.model.audio.num_audio_frames
  dataset = tf.data.TFRecordDataset(files, num_parallel_reads=min(len(files), 8))
  dataset = dataset.map(_parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
  records = list(dataset.as_numpy_iterator())
  expected = info.get('num_clips')
  if expected is not None and expected != len(records):
    raise ValueError(
      f'{os.path.join(data_dir, schema.DATASET_INFO)} says num_clips = {expected}, but the {len(files)} shards hold '
      f'{len(records)} clips: a shard is missing or data_prep has not finished.'
    )
  in_classes = [r for r in records if 0 <= r['label'] < ravdess.NUM_CLASSES]
  if len(in_classes) < len(records):
    logging.warning('Leaving out %d clips whose label is outside the 7 classes.', len(records) - len(in_classes))
  records = sorted(in_classes, key=lambda r: r['clip_id'])
  clip_ids = [r['clip_id'].decode() for r in records]
  if len(set(clip_ids)) != len(clip_ids):
    raise ValueError(f'{data_dir} holds the same clip_id more than once: were two data_prep runs written into it?')
  if not records:
    raise ValueError(f'{data_dir} holds no clips of the 7 classes.')

  n = len(records)
  visual = np.zeros((n, max_frames, schema.VISUAL_DIM), np.float32)
  audio = np.zeros((n, num_audio_frames, schema.AUDIO_DIM), np.float32)
  num_frames = np.zeros((n,), np.int32)
  lengths = np.array([len(r['visual']) for r in records])
  for i, r in enumerate(records):
    frames = r['visual'][:max_frames]
    visual[i, : len(frames)] = frames
    # A clip without frames is kept as one zero frame: nn.RNN cannot take length 0 (trap 2).
    num_frames[i] = max(1, len(frames))
    rows = r['audio'][:num_audio_frames]
    audio[i, : len(rows)] = rows
  if np.any(lengths > max_frames):
    logging.warning(
      '%d of %d clips are longer than data.max_frames=%d (longest %d frames) and were cut; raise data.max_frames '
      'to keep them whole.',
      int(np.sum(lengths > max_frames)),
      n,
      max_frames,
      int(lengths.max()),
    )
  if np.any(lengths == 0):
    logging.warning('%d clips have no visual frames; each is given one zero frame.', int(np.sum(lengths == 0)))
  clips = {
    'visual': visual,
    'num_frames': num_frames,
    'audio': audio,
    'label': np.array([r['label'] for r in records], np.int32),
    'actor': np.array([r['actor'] for r in records], np.int32),
    'gender': np.array([r['gender'] for r in records], np.int32),
    'clip_id': np.array(clip_ids),
  }
  logging.info('Read %d clips from %d shards in %s.', n, len(files), data_dir)
  return clips, info


def _real_rows(split: Split, key: str) -> np.ndarray:
  """[rows, features]: every real frame (visual) or row of `split[key]`."""
  values = split[key]
  if key == 'visual':
    frames = np.arange(values.shape[1])[None, :] < split['num_frames'][:, None]  # [clips, time]
    return values[frames]
  return values.reshape(-1, values.shape[-1])


def feature_statistics(split: Split, keys: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Per-dimension (mean, std) of `keys` over `split`'s real frames / rows; pass a training partition."""
  statistics = {}
  for key in keys:
    rows = _real_rows(split, key)
    mean = rows.mean(axis=0, dtype=np.float64)
    std = rows.std(axis=0, dtype=np.float64)
    std[std < 1e-6] = 1.0  # A constant dimension (e.g. a dead unit) is only centred.
    statistics[key] = (mean, std)
  return statistics


def standardize(split: Split, statistics: dict[str, tuple[np.ndarray, np.ndarray]]) -> Split:
  """Z-scores each feature dimension with `statistics` (from `feature_statistics`).

  Untrained (stand-in) extractors give embeddings whose differences between clips are tiny
  next to their common offset, and even pretrained VGGish rows are far from unit scale; a
  per-dimension z-score lets Adamax at the Keras learning rate make progress on either. The
  statistics come from a training partition alone, so nothing about validation or test
  clips leaks into training. `visual` padding stays zero.

  Returns:
    A copy of `split` with the keys of `statistics` standardised (float32); other arrays
    are shared.
  """
  result = dict(split)
  for key, (mean, std) in statistics.items():
    standardized = ((split[key] - mean) / std).astype(np.float32)
    if key == 'visual':
      standardized[np.arange(standardized.shape[1])[None, :] >= split['num_frames'][:, None]] = 0.0
    result[key] = standardized
  return result


def take(split: Split, indices: np.ndarray) -> Split:
  """The rows `indices` of every array in `split`."""
  return {key: value[indices] for key, value in split.items()}


def num_batches(num_examples: int, batch_size: int) -> int:
  return -(-num_examples // batch_size)


def batches(
  split: Split,
  batch_size: int,
  *,
  keys: Sequence[str],
  shuffle_seed: Sequence[int] | None = None,
  epoch: int = 0,
  time_bucket: int | None = None,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
  """Yields padded batches of `split` with a `mask`; every batch has the same number of rows.

  Args:
    split: host arrays, first axis = clip; must hold `label` and `keys`.
    batch_size: the global batch size (all processes together).
    keys: model inputs to include besides `label` and `mask` (e.g. ('visual', 'num_frames')).
    shuffle_seed: None keeps the order of `split`; otherwise the clips are permuted with
      `np.random.default_rng([*shuffle_seed, epoch])`, so each epoch has its own order and
      the same (seed, epoch) always gives the same batches (resumed runs included).
    epoch: folded into the permutation.
    time_bucket: when set, `visual` is cut to the batch's longest clip rounded up to a
      multiple of it (never past the stored length): padding beyond a clip's length is masked
      anyway, so results do not change and the LSTM skips dead steps.
    process_index, process_count: a process gets rows [i * B / P, (i + 1) * B / P) of each
      global batch; the cut of the time axis is taken over the global batch so all
      processes agree on the shape.

  Yields:
    Dicts of [batch_size / process_count, ...] arrays: `keys`, `label` int32 and `mask`
    bool (False on padding rows, whose inputs are zero and `num_frames` 1).
  """
  if batch_size % process_count:
    raise ValueError(f'batch_size {batch_size} is not divisible by the {process_count} processes.')
  n = len(split['label'])
  order = np.arange(n) if shuffle_seed is None else np.random.default_rng([*shuffle_seed, epoch]).permutation(n)
  local = batch_size // process_count
  rows = slice(process_index * local, (process_index + 1) * local)
  for start in range(0, n, batch_size):
    indices = order[start : start + batch_size]  # [real]
    real = len(indices)
    batch = {}
    for key in (*keys, 'label'):
      value = split[key][indices]
      if key == 'visual' and time_bucket:
        longest = int(split['num_frames'][indices].max())
        length = min(-(-longest // time_bucket) * time_bucket, value.shape[1])
        value = value[:, :length]  # [real, time, 512]
      padded = np.zeros((batch_size, *value.shape[1:]), value.dtype)
      if key == 'num_frames':
        padded[:] = 1  # Padding rows get one (zero) frame: nn.RNN needs length >= 1.
      padded[:real] = value
      batch[key] = padded[rows]
    mask = np.zeros((batch_size,), bool)
    mask[:real] = True
    batch['mask'] = mask[rows]
    yield batch

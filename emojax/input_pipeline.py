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

import dataclasses
import glob
import json
import os
import re
import reprlib
from collections.abc import Iterator, Sequence

import numpy as np
from absl import logging

from emojax import models, ravdess, schema

# Host arrays of one partition (or of all clips), keyed like the batches; first axis = clip.
Split = dict[str, np.ndarray]


# The fields of dataset_info.json that emojax reads and their JSON types, each parent before
# its children: 'a.b' is key b of object a, '*' every key of an object, '[]' every item of a list.
DATASET_INFO_FIELDS = {
  'schema_version': int,
  'feature_dims': dict,
  'feature_dims.*': int,
  'num_clips': int,
  'shards': list,
  'shards[]': dict,
  'shards[].name': str,
  'shards[].num_clips': int,
  'settings': dict,
  'settings.modalities': list,
  'settings.modalities[]': str,
  'extractors': dict,
  'extractors.*': dict,
  'fake': (str, bool),
}
# Those load_clips cannot do without; the others have a meaning when absent.
REQUIRED_DATASET_INFO_FIELDS = ('schema_version', 'feature_dims', 'num_clips', 'shards', 'shards[].name')
_JSON_TYPE_NAMES = {
  int: 'an integer',
  float: 'a number',
  str: 'a string',
  bool: 'a boolean',
  list: 'a list',
  dict: 'an object',
}

# The embeddings a dataset can hold (build_tfrecords.py --modalities), named as the batch keys.
MODALITIES = ('audio', 'visual')

_REWRITE_INFO = 'rerun the same data_prep/build_tfrecords.py command, which rewrites it from the shard summaries'


def read_dataset_info(data_dir: str | None) -> dict:
  """Reads `data_dir/dataset_info.json`.

  Raises:
    FileNotFoundError: the directory or the file is missing (naming the path).
    ValueError: the file is not a JSON object (naming the file and where the JSON breaks).
  """
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
  try:
    with open(path, encoding='utf-8') as f:
      info = json.load(f)
  except json.JSONDecodeError as error:
    raise ValueError(
      f'{path} is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}): {_REWRITE_INFO}.'
    ) from None
  except UnicodeDecodeError:
    raise ValueError(f'{path} is not valid JSON (it is not UTF-8 text): {_REWRITE_INFO}.') from None
  if not isinstance(info, dict):
    raise ValueError(f'{path} holds {_json_type_name(info)} where a JSON object belongs: {_REWRITE_INFO}.')
  return info


def _json_type_name(value) -> str:
  # Most specific first: a JSON true loads as bool, which Python also counts as an int.
  return next((name for kind, name in reversed(_JSON_TYPE_NAMES.items()) if isinstance(value, kind)), 'null')


def _field_values(info: dict, field: str) -> list[tuple[str, object]]:
  """(where, value) of every value that `field` (a key of `DATASET_INFO_FIELDS`) names in `info`."""
  found = [('', info)]
  for part in field.split('.'):
    key = part.removesuffix('[]')
    step = []
    for where, value in found:
      prefix = f'{where}.' if where else ''
      if key == '*':
        step += [(prefix + k, v) for k, v in value.items()]
      elif key in value:
        step.append((prefix + key, value[key]))
    if part.endswith('[]'):
      step = [(f'{where}[{i}]', item) for where, items in step for i, item in enumerate(items)]
    found = step
  return found


def _check_field_types(info: dict, path: str) -> None:
  """Raises ValueError naming the first field of `DATASET_INFO_FIELDS` that holds another JSON type."""
  for field, expected in DATASET_INFO_FIELDS.items():
    expected = expected if isinstance(expected, tuple) else (expected,)
    # Parents come first in the table, so every container walked here was checked already.
    for where, value in _field_values(info, field):
      if _json_type_name(value) not in (_JSON_TYPE_NAMES[kind] for kind in expected):
        wanted = ' or '.join(_JSON_TYPE_NAMES[kind] for kind in expected)
        raise ValueError(
          f'{path} has {where} = {reprlib.repr(value)}, {_json_type_name(value)} where emojax expects {wanted}: '
          f'{_REWRITE_INFO}, or correct that field.'
        )


def _check_required_fields(info: dict, path: str) -> None:
  """Raises ValueError naming the first field of `REQUIRED_DATASET_INFO_FIELDS` that is absent."""
  for field in REQUIRED_DATASET_INFO_FIELDS:
    parent, _, key = field.rpartition('.')
    for where, value in _field_values(info, parent) if parent else [('', info)]:
      if key not in value:
        raise ValueError(
          f'{path} has no field {f"{where}.{key}" if where else key}, which emojax needs: {_REWRITE_INFO}.'
        )


def required_modalities(names: Sequence[str]) -> tuple[str, ...]:
  """The embeddings (`MODALITIES`) that training the models `names` reads, from `models.MODELS`.

  A base model reads the modalities among its batch inputs; a stacked model reads every
  base model's features, so it needs all of theirs.
  """
  unknown = [name for name in names if name not in models.MODELS]
  if unknown:
    raise ValueError(f'config.models has unknown models {unknown}: choose from {tuple(models.MODELS)}.')
  readers = {base for name in names for base in (models.BASE_MODELS if models.MODELS[name].stacked else (name,))}
  return tuple(m for m in MODALITIES if any(m in models.MODELS[name].inputs for name in readers))


def dataset_modalities(info: dict) -> tuple[str, ...]:
  """The embeddings the records hold: `settings.modalities`, or both for builds older than that setting."""
  return tuple(info.get('settings', {}).get('modalities', MODALITIES))


def check_dataset_info(info: dict, config, path: str = schema.DATASET_INFO) -> None:
  """Raises ValueError unless `info` is a well-formed dataset_info.json that fits the config.

  In this order: the schema version (another version may have other fields), the JSON type of
  every field emojax reads (`DATASET_INFO_FIELDS`), the feature dims, the fields that must be
  present, and the modalities `config.models` needs. Each error is one sentence naming the
  file, the field and what to do.
  """
  version = info.get('schema_version')
  if version != config.data.schema_version:
    raise ValueError(
      f'{path} has schema_version {version!r}, but config.data.schema_version is {config.data.schema_version}: '
      'rebuild the TFRecords with this version of data_prep, or use the emojax version that wrote them.'
    )
  _check_field_types(info, path)
  dims = info.get('feature_dims') or {}
  for key, expected in config.data.feature_dims.items():
    if dims.get(key) != expected:
      raise ValueError(
        f'{path} has feature_dims.{key} = {dims.get(key)!r}, but config.data.feature_dims.{key} is {expected}: '
        'the features were extracted with a different network.'
      )
  _check_required_fields(info, path)
  present = dataset_modalities(info)
  if not present or set(present) - set(MODALITIES):
    raise ValueError(
      f'{path} has settings.modalities = {list(present)}: expected some of {list(MODALITIES)}; {_REWRITE_INFO}.'
    )
  missing = [m for m in required_modalities(config.models) if m not in present]
  if missing:
    raise ValueError(
      f'{path} holds {" and ".join(present)} only (settings.modalities = {list(present)}); config.models '
      f'{tuple(config.models)} needs {" and ".join(missing)} too: train '
      f'{" or ".join(f"configs/{m}.py" for m in present)}, or rebuild with --modalities={",".join(MODALITIES)}.'
    )


def uses_stand_in_extractors(info: dict) -> bool:
  """Whether the embeddings come from stand-ins (data_prep's 'random' extractors, fake_records)."""
  extractors = info.get('extractors') or {}
  return (
    bool(info.get('fake'))
    or extractors.get('vgg16', {}).get('weights') == 'random'
    or extractors.get('vggish', {}).get('handle') == 'random'
  )


def _shard_paths(data_dir: str, info: dict) -> list[str]:
  """The paths of the shards `info` lists, after checking that the directory holds exactly those.

  Raises:
    FileNotFoundError: a listed shard is not on disk.
    ValueError: a shard on disk is not listed (left from another build, which would mix clips in).
  """
  info_path = os.path.join(data_dir, schema.DATASET_INFO)
  listed = [shard['name'] for shard in info['shards']]
  if not listed:
    raise FileNotFoundError(f'{info_path} lists no shards: {data_dir} holds no clips; rerun data_prep.')
  missing = [name for name in listed if not os.path.isfile(os.path.join(data_dir, name))]
  if missing:
    raise FileNotFoundError(
      f'{data_dir} lacks {len(missing)} of the {len(listed)} shards {info_path} lists ({", ".join(missing[:3])}'
      f'{", ..." if len(missing) > 3 else ""}): copy them back, or rerun the same data_prep/build_tfrecords.py '
      'command, which rebuilds the missing shards.'
    )
  unlisted = sorted({os.path.basename(p) for p in glob.glob(os.path.join(data_dir, schema.SHARD_GLOB))} - set(listed))
  if unlisted:
    raise ValueError(
      f'{data_dir} holds {len(unlisted)} shards that {info_path} does not list ({", ".join(unlisted[:3])}'
      f'{", ..." if len(unlisted) > 3 else ""}): they are left from another build; move them out of the directory.'
    )
  return [os.path.join(data_dir, name) for name in listed]


def _parse(serialized):
  """One record -> the fields load_clips keeps, and whether each embedding is finite."""
  import tensorflow as tf

  context, sequences = schema.parse_sequence_example(serialized)
  visual = sequences[schema.VISUAL_KEY]  # [frames, 512]
  audio = sequences[schema.AUDIO_KEY]  # [rows, 128]
  return {
    'clip_id': context['clip_id'],
    'label': tf.cast(context['label'], tf.int32),
    'emotion_code': tf.cast(context['emotion_code'], tf.int32),
    'actor': tf.cast(context['actor'], tf.int32),
    'gender': tf.cast(context['gender'], tf.int32),
    'visual': visual,
    'audio': audio,
    # Checked here, in tf.data's parallel map, so the host loop never scans the embeddings.
    'visual_finite': tf.reduce_all(tf.math.is_finite(visual)),
    'audio_finite': tf.reduce_all(tf.math.is_finite(audio)),
  }


def _tf_reason(error) -> str:
  """TensorFlow's message without the graph node and op it wraps around it: 'corrupted record at 12'."""
  message = re.sub(r'\{\{.*?\}\}', '', error.message).split('\n')[0].split(' [Op:')[0]
  return message.split("' failed with")[0].strip().rstrip('.')


def _rebuild_shard(path: str) -> str:
  """How to rebuild one shard: data_prep rebuilds exactly the shards whose file or summary is missing, byte-identical."""
  summary = os.path.join(os.path.dirname(path), schema.SHARD_INFO_DIR, schema.shard_info_name(os.path.basename(path)))
  return f'delete it and {summary}, then rerun the same data_prep/build_tfrecords.py command to rebuild it'


def _read_shards(paths: Sequence[str]) -> list[dict]:
  """Parses every record of `paths` into numpy dicts (see `_parse`); a shard that cannot be read is named.

  TensorFlow's error for a damaged record names no file, and carrying each record's shard
  through an interleave slows the read; so the shards are read together, and only when that
  fails is each read alone to find the one at fault.

  Raises:
    ValueError: a shard is damaged (a TFRecord CRC failed: cut short, or bytes changed) or
      holds a record that is not a schema-v1 clip, naming the shard and how to rebuild it.
  """
  import tensorflow as tf

  dataset = tf.data.TFRecordDataset(paths, num_parallel_reads=min(len(paths), 8))
  dataset = dataset.map(_parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
  try:
    return list(dataset.as_numpy_iterator())
  except (tf.errors.DataLossError, tf.errors.InvalidArgumentError):
    for path in paths:
      try:
        for _ in tf.data.TFRecordDataset(path).map(_parse):
          pass
      except tf.errors.DataLossError as error:
        raise ValueError(f'{path} is damaged ({_tf_reason(error)}): {_rebuild_shard(path)}.') from None
      except tf.errors.InvalidArgumentError as error:
        raise ValueError(
          f'{path} holds a record that is not a schema-v1 clip ({_tf_reason(error)}): {_rebuild_shard(path)}.'
        ) from None
    raise  # Every shard reads alone: not a fault of one file, so TensorFlow's message is all there is.


def _clip_ids(path: str) -> list[bytes]:
  """The clip ids in shard `path`, in order; only for naming a shard once something is wrong."""
  import tensorflow as tf

  spec = {'clip_id': tf.io.FixedLenFeature([], tf.string)}
  dataset = tf.data.TFRecordDataset(path).map(lambda r: tf.io.parse_single_sequence_example(r, spec)[0]['clip_id'])
  return list(dataset.as_numpy_iterator())


def _label_of(emotion_code: int) -> int:
  """The label data_prep writes for a RAVDESS emotion code: the class index, or -1 for calm."""
  label = ravdess.label_of(emotion_code)
  return -1 if label is None else label


def _record_problem(record: dict) -> str | None:
  """What is impossible about one parsed clip (non-finite embeddings, labels), or None."""
  for key in ('visual', 'audio'):
    if not record[f'{key}_finite']:
      return f'NaN or inf in its {key} embedding'
  code, label = int(record['emotion_code']), int(record['label'])
  if code not in ravdess.EMOTION_NAMES:
    return f"emotion_code {code}, outside RAVDESS' 1..{max(ravdess.EMOTION_NAMES)}"
  if not -1 <= label < ravdess.NUM_CLASSES:
    return f'label {label}, outside -1 (calm) and 0..{ravdess.NUM_CLASSES - 1}'
  if label != _label_of(code):
    return f'label {label} but emotion_code {code} ({ravdess.EMOTION_NAMES[code]}), whose label is {_label_of(code)}'
  return None


def _check_records(records: Sequence[dict], paths: Sequence[str], info: dict, info_path: str) -> None:
  """Raises ValueError naming the shard whose clip count is off, or the first impossible clip and its shard.

  The records do not say which shard they came from, so the shards are scanned for clip ids
  only on these failing paths.
  """
  if info['num_clips'] != len(records):
    for path, shard in zip(paths, info['shards']):
      count = len(_clip_ids(path))
      if shard.get('num_clips', count) != count:
        raise ValueError(
          f'{path} holds {count} clips, but {info_path} lists {shard["num_clips"]}: the shard was replaced after '
          f'the dataset was built; {_rebuild_shard(path)}.'
        )
    raise ValueError(
      f'{info_path} says num_clips = {info["num_clips"]}, but its {len(paths)} shards hold {len(records)} clips: '
      f'{_REWRITE_INFO}.'
    )
  for record in records:
    problem = _record_problem(record)
    if problem:
      clip = record['clip_id']
      path = next(path for path in paths if clip in _clip_ids(path))
      if problem.startswith('NaN'):  # An extractor's output: a rebuild may show it again.
        advice = f"{_rebuild_shard(path)}, and if it comes back, check that clip's media file"
      else:
        advice = f'the shard was not written by this data_prep or was altered; {_rebuild_shard(path)}'
      raise ValueError(f'Clip {clip.decode()} in {path} has {problem}: {advice}.')


def pack_embeddings(
  visual: Sequence[np.ndarray | None], audio: Sequence[np.ndarray | None], max_frames: int, num_audio_frames: int
) -> Split:
  """Clips' embeddings -> the fixed-shape arrays the models read, as training packs them.

  `load_clips` packs the TFRecords' clips with it and prediction packs new recordings with it,
  so both give a model the same inputs for the same embeddings.

  Args:
    visual: per clip, [frames, 512] VGG16 rows, or None (or no rows) without video.
    audio: per clip, [rows, 128] VGGish rows, or None (or no rows) without audio.
    max_frames: `config.data.max_frames`; longer clips are cut.
    num_audio_frames: `config.model.audio.num_audio_frames`; zero rows are appended or extra rows cut.

  Returns:
    visual [N, max_frames, 512] float32, zero after each clip's end; num_frames [N] int32 in
    1..max_frames; audio [N, num_audio_frames, 128] float32.
  """
  n = len(visual)
  packed = {
    'visual': np.zeros((n, max_frames, schema.VISUAL_DIM), np.float32),
    'num_frames': np.zeros((n,), np.int32),
    'audio': np.zeros((n, num_audio_frames, schema.AUDIO_DIM), np.float32),
  }
  for i, (frames, rows) in enumerate(zip(visual, audio, strict=True)):
    frames = np.zeros((0, schema.VISUAL_DIM), np.float32) if frames is None else frames[:max_frames]
    packed['visual'][i, : len(frames)] = frames
    # A clip without frames is kept as one zero frame: an LSTM over no frame has no last state.
    packed['num_frames'][i] = max(1, len(frames))
    rows = np.zeros((0, schema.AUDIO_DIM), np.float32) if rows is None else rows[:num_audio_frames]
    packed['audio'][i, : len(rows)] = rows
  return packed


def load_clips(config) -> tuple[Split, dict]:
  """Reads every shard of `config.data.dir` into host arrays, sorted by clip id.

  Bad data fails here, before anything is compiled, with one sentence naming the file or
  the clip: dataset_info.json that is not valid JSON, holds a field of the wrong type or
  does not fit the config (`check_dataset_info`); a shard missing, unlisted, damaged or
  holding the wrong number of clips; a clip with NaN or inf in an embedding, or with a label
  that disagrees with its emotion code. TensorFlow is kept off the GPUs: it only parses
  records here.

  Returns:
    (clips, info): clips holds
      visual [N, max_frames, 512] float32, zero after each clip's end;
      num_frames [N] int32 in 1..max_frames (longer clips are cut, with a warning);
      audio [N, num_audio_frames, 128] float32, zero rows appended or extra rows cut;
      label [N] int32, the index in the class set of `config.data.classes` (clips of
        other emotions, such as calm for 'thesis7', are left out);
      actor, gender [N] int32; clip_id [N] str.
    info is the parsed dataset_info.json.
  """
  import tensorflow as tf

  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # TensorFlow was initialised earlier (e.g. by main.py, which hid them already).
    pass
  data_dir = config.data.dir
  info = read_dataset_info(data_dir)
  info_path = os.path.join(data_dir, schema.DATASET_INFO)
  check_dataset_info(info, config, info_path)
  files = _shard_paths(data_dir, info)

  max_frames = config.data.max_frames
  num_audio_frames = config.model.audio.num_audio_frames
  records = _read_shards(files)
  _check_records(records, files, info, info_path)
  # The labels of the run's class set come from each clip's emotion code, so one set of
  # TFRecords (built with --include_calm) serves 'thesis7' and 'ravdess8' alike.
  class_set = config.data.get('classes', 'thesis7')
  if class_set not in ravdess.CLASS_SETS:
    raise ValueError(f'config.data.classes must be one of {sorted(ravdess.CLASS_SETS)}; got {class_set!r}.')
  class_names = ravdess.CLASS_SETS[class_set]
  label_of = {code: class_names.index(name) for code, name in ravdess.EMOTION_NAMES.items() if name in class_names}
  in_classes = [r for r in records if int(r['emotion_code']) in label_of]
  if len(in_classes) < len(records):
    left_out = sorted({ravdess.EMOTION_NAMES[int(r['emotion_code'])] for r in records} - set(class_names))
    logging.info(
      'Leaving out %d clips of %s, not in class set %r.', len(records) - len(in_classes), left_out, class_set
    )
  records = sorted(in_classes, key=lambda r: r['clip_id'])
  clip_ids = [r['clip_id'].decode() for r in records]
  if len(set(clip_ids)) != len(clip_ids):
    raise ValueError(f'{data_dir} holds the same clip_id more than once: were two data_prep runs written into it?')
  if not records:
    raise ValueError(f'{data_dir} holds no clips of class set {class_set!r} {list(class_names)}.')
  present = {int(r['emotion_code']) for r in records}
  missing = [name for code, name in ravdess.EMOTION_NAMES.items() if code in label_of and code not in present]
  if missing:
    hint = ' (rebuild it with build_tfrecords.py --include_calm)' if missing == ['calm'] else ''
    raise ValueError(
      f'{data_dir} has no clip of {missing}, which class set {class_set!r} needs{hint}; or use another '
      '--config.data.classes.'
    )

  n = len(records)
  lengths = np.array([len(r['visual']) for r in records])
  packed = pack_embeddings([r['visual'] for r in records], [r['audio'] for r in records], max_frames, num_audio_frames)
  if np.any(lengths > max_frames):
    logging.warning(
      '%d of %d clips are longer than data.max_frames=%d (longest %d frames) and were cut; raise data.max_frames '
      'to keep them whole.',
      int(np.sum(lengths > max_frames)),
      n,
      max_frames,
      int(lengths.max()),
    )
  if np.any(lengths == 0) and 'visual' in dataset_modalities(info):  # Audio-only builds have none by design.
    logging.warning('%d clips have no visual frames; each is given one zero frame.', int(np.sum(lengths == 0)))
  clips = {
    **packed,
    'label': np.array([label_of[int(r['emotion_code'])] for r in records], np.int32),
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


# `config.data.normalize`: how embeddings are scaled before a model sees them.
#   'none':    raw, as the thesis fed them.
#   'global':  one scalar mean and std per stream, which keeps the dimensions' relative scale.
#   'per_dim': every dimension z-scored on its own.
NORMALIZATIONS = ('none', 'global', 'per_dim')


def normalization_statistics(split: Split, keys: Sequence[str], kind: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """(mean, std) of each of `keys` over `split`'s real frames / rows; pass a training partition.

  Args:
    split: host arrays of the training partition (visual padding is left out).
    keys: the streams to normalise ('visual', 'audio', 'features').
    kind: one of `NORMALIZATIONS`.

  Returns:
    key -> (mean, std) float64, each [dim] for 'per_dim' and [] for 'global'; {} for 'none'.
    A constant dimension (or stream) gets std 1, so it is only centred.
  """
  if kind not in NORMALIZATIONS:
    raise ValueError(f'config.data.normalize must be one of {NORMALIZATIONS}; got {kind!r}.')
  statistics = {}
  if kind == 'none':
    return statistics
  for key in keys:
    rows = _real_rows(split, key)  # [rows, dim]
    axis = 0 if kind == 'per_dim' else None
    mean = np.asarray(rows.mean(axis=axis, dtype=np.float64))
    std = np.asarray(rows.std(axis=axis, dtype=np.float64))
    std[std < 1e-6] = 1.0
    statistics[key] = (mean, std)
  return statistics


def normalize(split: Split, statistics: dict[str, tuple[np.ndarray, np.ndarray]]) -> Split:
  """Applies `statistics` (from `normalization_statistics`): (x - mean) / std, per stream.

  Untrained (stand-in) extractors give embeddings whose differences between clips are tiny
  next to their common offset, which raw inputs at the Keras learning rate barely resolve;
  a z-score fixes that. The statistics come from a training partition alone, so nothing
  about validation or test clips leaks into training. `visual` padding stays zero.

  Returns:
    A copy of `split` with the keys of `statistics` normalised (float32); other arrays
    are shared.
  """
  result = dict(split)
  for key, (mean, std) in statistics.items():
    normalized = ((split[key] - mean) / std).astype(np.float32)
    if key == 'visual':
      normalized[np.arange(normalized.shape[1])[None, :] >= split['num_frames'][:, None]] = 0.0
    result[key] = normalized
  return result


def save_normalization(path: str, kind: str, statistics: Sequence[dict[str, tuple[np.ndarray, np.ndarray]]]) -> None:
  """Writes a stage's statistics, one dict per member, so that prediction scales new clips as training did."""
  arrays = {'kind': np.array(kind), 'num_members': np.array(len(statistics))}
  for key in statistics[0] if statistics else ():
    arrays[f'{key}_mean'] = np.stack([member[key][0] for member in statistics])  # [K, dim] or [K]
    arrays[f'{key}_std'] = np.stack([member[key][1] for member in statistics])
  os.makedirs(os.path.dirname(path), exist_ok=True)
  temporary = path + '.tmp.npz'
  np.savez(temporary, **arrays)
  os.replace(temporary, path)


def load_normalization(path: str) -> tuple[str, list[dict[str, tuple[np.ndarray, np.ndarray]]]]:
  """(kind, per-member statistics) as `save_normalization` wrote them."""
  with np.load(path) as saved:
    keys = [name[: -len('_mean')] for name in saved.files if name.endswith('_mean')]
    members = [
      {key: (saved[f'{key}_mean'][k], saved[f'{key}_std'][k]) for key in keys} for k in range(int(saved['num_members']))
    ]
    return str(saved['kind']), members


def take(split: Split, indices: np.ndarray) -> Split:
  """The rows `indices` of every array in `split`."""
  return {key: value[indices] for key, value in split.items()}


def num_batches(num_examples: int, batch_size: int) -> int:
  return -(-num_examples // batch_size)


@dataclasses.dataclass(frozen=True)
class MemberData:
  """One member's view of a partition: some rows of host arrays that members may share.

  Attributes:
    arrays: host arrays, first axis = clip (`label` and the model's inputs).
    indices: the member's rows of `arrays`, in order.
    statistics: `normalization_statistics` its inputs are scaled with ({}: raw).
    shuffle_seed: None keeps `indices` in order; otherwise they are permuted with
      `np.random.default_rng([*shuffle_seed, epoch])`, so each epoch has its own order and
      the same (seed, epoch) always gives the same batches (resumed runs included).
  """

  arrays: Split
  indices: np.ndarray
  statistics: dict = dataclasses.field(default_factory=dict)
  shuffle_seed: tuple[int, ...] | None = None

  def order(self, epoch: int) -> np.ndarray:
    if self.shuffle_seed is None:
      return self.indices
    return self.indices[np.random.default_rng([*self.shuffle_seed, epoch]).permutation(len(self.indices))]

  def batch_rows(self, epoch: int, batch_size: int, length_chunk: int = 0) -> list[np.ndarray]:
    """The member's batches of one epoch, as row indices.

    With `length_chunk` (and a shuffle), the epoch's order is cut into chunks of that many
    batches, each chunk sorted by clip length and cut into batches, so a batch's clips have
    about the same number of frames and the LSTM steps through little padding. Within a
    chunk the batches go in an order drawn from (epoch, chunk) alone, the same for every
    member: members of one step then hold batches of about the same length rank, and their
    common time axis stays short too.
    """
    order = self.order(epoch)
    if not length_chunk or self.shuffle_seed is None:
      return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    lengths = self.arrays['num_frames']
    rows = []
    span = length_chunk * batch_size
    for chunk_index, start in enumerate(range(0, len(order), span)):
      chunk = order[start : start + span]
      chunk = chunk[np.argsort(lengths[chunk], kind='stable')]
      in_chunk = [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
      schedule = np.random.default_rng([epoch, chunk_index]).permutation(length_chunk)
      rows += [in_chunk[rank] for rank in schedule if rank < len(in_chunk)]
    return rows


def member_batches(
  members: Sequence[MemberData],
  batch_size: int,
  *,
  keys: Sequence[str],
  epoch: int = 0,
  time_bucket: int | None = None,
  active: np.ndarray | None = None,
  length_chunk: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
  """Yields [K, batch_size, ...] batches: row k is member k's next batch of its own rows.

  Members with fewer batches than the longest (and members not `active`) get empty rows
  once theirs run out: every row of their batch is padding (`mask` False), which the
  train step turns into no update.

  Args:
    members: the K members' data.
    batch_size: rows per member per batch (global, all devices together).
    keys: model inputs to include besides `label` and `mask` (e.g. ('visual', 'num_frames')).
    epoch: folded into the members' shuffles.
    time_bucket: when set, `visual` is cut to the longest clip of the batch (all members)
      rounded up to a multiple of it, never past the longest clip of the data: padding beyond a
      clip's length is masked anyway, so results do not change and the LSTM skips dead steps.
    active: [K] bool; False gives that member no rows at all.
    length_chunk: batches of shuffled members are cut from length-sorted chunks of this
      many batches (`MemberData.batch_rows`); 0 keeps Keras' random batches.

  Yields:
    Dicts of [K, batch_size, ...] arrays: `keys` (scaled by each member's statistics),
    `label` int32 and `mask` bool (False on padding rows, whose inputs are zero and
    `num_frames` 1).
  """
  active = np.ones(len(members), bool) if active is None else np.asarray(active, bool)
  rows = [member.batch_rows(epoch, batch_size, length_chunk) if on else [] for member, on in zip(members, active)]
  empty = np.zeros(0, np.int64)
  if 'visual' in keys:
    # Never past the data's longest clip (as Keras pads): 80-frame clips stored at 256 run 80 steps, not 96.
    data_longest = max(int(member.arrays['num_frames'].max()) for member in members)
    stored = min(members[0].arrays['visual'].shape[1], max(data_longest, 1))
  for step in range(max(len(member_rows) for member_rows in rows)):
    chunks = [member_rows[step] if step < len(member_rows) else empty for member_rows in rows]  # [real_k] each
    length = None
    if 'visual' in keys:
      longest = max(
        int(member.arrays['num_frames'][chunk].max()) for member, chunk in zip(members, chunks) if len(chunk)
      )
      length = min(-(-longest // time_bucket) * time_bucket, stored) if time_bucket else stored
    batch = {}
    for key in (*keys, 'label'):
      reference = members[0].arrays[key]
      shape = reference.shape[1:] if key != 'visual' else (length, *reference.shape[2:])
      padded = np.zeros((len(members), batch_size, *shape), reference.dtype)
      if key == 'num_frames':
        padded[:] = 1  # Padding rows get one (zero) frame: an LSTM over no frame has no last state.
      for k, (member, chunk) in enumerate(zip(members, chunks)):
        if len(chunk):
          value = member.arrays[key][chunk] if key != 'visual' else member.arrays[key][chunk, :length]
          if key in member.statistics:
            mean, std = member.statistics[key]
            value = ((value - mean.astype(np.float32)) / std.astype(np.float32)).astype(np.float32)
            if key == 'visual':
              value[np.arange(length)[None, :] >= member.arrays['num_frames'][chunk][:, None]] = 0.0
          padded[k, : len(chunk)] = value
      batch[key] = padded
    mask = np.zeros((len(members), batch_size), bool)
    for k, chunk in enumerate(chunks):
      mask[k, : len(chunk)] = True
    batch['mask'] = mask
    yield batch


def batches(
  split: Split,
  batch_size: int,
  *,
  keys: Sequence[str],
  shuffle_seed: Sequence[int] | None = None,
  epoch: int = 0,
  time_bucket: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """`member_batches` of one member holding all of `split`, without the member axis: [batch_size, ...]."""
  member = MemberData(
    split, np.arange(len(split['label'])), shuffle_seed=None if shuffle_seed is None else tuple(shuffle_seed)
  )
  for batch in member_batches([member], batch_size, keys=keys, epoch=epoch, time_bucket=time_bucket):
    yield {key: value[0] for key, value in batch.items()}

"""TFRecord schema v1: what data_prep writes and emojax reads, defined once.

One `tf.train.SequenceExample` per clip:
  context: clip metadata (`INT_CONTEXT`, `FLOAT_CONTEXT`, `BYTES_CONTEXT`).
  feature_lists: `visual_embedding` ([num_frames, 512] VGG16 features at
    `fps`) and `audio_embedding` ([num_audio_frames, 128] VGGish rows).
Shards are `ravdess-NNNNN-of-MMMMM.tfrecord` beside `dataset_info.json`; data_prep keeps
a summary of each in `shard_info/ravdess-NNNNN-of-MMMMM.json`.
"""

import os

import numpy as np

SCHEMA_VERSION = 1
VISUAL_DIM = 512  # VGG16 conv features, average-pooled.
AUDIO_DIM = 128  # VGGish embedding per 0.96 s.
VISUAL_KEY = 'visual_embedding'
AUDIO_KEY = 'audio_embedding'
FEATURE_DIMS = {VISUAL_KEY: VISUAL_DIM, AUDIO_KEY: AUDIO_DIM}

INT_CONTEXT = (
  'label',
  'emotion_code',
  'actor',
  'gender',
  'intensity',
  'statement',
  'repetition',
  'vocal_channel',
  'num_frames',
  'num_audio_frames',
  'face_detected_frames',
)
FLOAT_CONTEXT = ('fps',)
BYTES_CONTEXT = ('clip_id', 'video_source', 'audio_source')

DATASET_INFO = 'dataset_info.json'
SHARD_GLOB = 'ravdess-*-of-*.tfrecord'
SHARD_INFO_DIR = 'shard_info'


def shard_name(index: int, num_shards: int) -> str:
  return f'ravdess-{index:05d}-of-{num_shards:05d}.tfrecord'


def shard_info_name(shard: str) -> str:
  """The name of `shard`'s summary inside `SHARD_INFO_DIR` (a shard counts as built only when both exist)."""
  return os.path.splitext(shard)[0] + '.json'


def to_sequence_example(context: dict, visual_embedding: np.ndarray, audio_embedding: np.ndarray) -> bytes:
  """Serialises one clip; `context` holds every field of the three context tuples.

  Args:
    context: field name -> int / float / str value.
    visual_embedding: [num_frames, VISUAL_DIM] float32.
    audio_embedding: [num_audio_frames, AUDIO_DIM] float32.

  Returns:
    Deterministic bytes (the same clip always serialises the same way).
  """
  import tensorflow as tf  # Only the writers need TensorFlow here.

  missing = set(INT_CONTEXT + FLOAT_CONTEXT + BYTES_CONTEXT) - set(context)
  if missing:
    raise ValueError(f'Context is missing fields {sorted(missing)}.')
  feature = {}
  for k in INT_CONTEXT:
    feature[k] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(context[k])]))
  for k in FLOAT_CONTEXT:
    feature[k] = tf.train.Feature(float_list=tf.train.FloatList(value=[float(context[k])]))
  for k in BYTES_CONTEXT:
    value = context[k]
    value = value.encode() if isinstance(value, str) else bytes(value)
    feature[k] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

  def feature_list(rows, dim, key):
    rows = np.asarray(rows, np.float32)
    if rows.size == 0:
      rows = np.zeros((0, dim), np.float32)
    if rows.ndim != 2 or rows.shape[1] != dim:
      raise ValueError(f'{key} has shape {rows.shape}, expected [rows, {dim}].')
    return tf.train.FeatureList(feature=[tf.train.Feature(float_list=tf.train.FloatList(value=r)) for r in rows])

  example = tf.train.SequenceExample(
    context=tf.train.Features(feature=feature),
    feature_lists=tf.train.FeatureLists(
      feature_list={
        VISUAL_KEY: feature_list(visual_embedding, VISUAL_DIM, VISUAL_KEY),
        AUDIO_KEY: feature_list(audio_embedding, AUDIO_DIM, AUDIO_KEY),
      }
    ),
  )
  return example.SerializeToString(deterministic=True)


def parse_sequence_example(serialized):
  """Parses one serialised clip with `tf.io.parse_single_sequence_example`.

  Returns:
    (context, sequences): dicts of tensors; sequences are [T, dim] float32.
  """
  import tensorflow as tf

  context_spec = {k: tf.io.FixedLenFeature([], tf.int64) for k in INT_CONTEXT}
  context_spec.update({k: tf.io.FixedLenFeature([], tf.float32) for k in FLOAT_CONTEXT})
  context_spec.update({k: tf.io.FixedLenFeature([], tf.string) for k in BYTES_CONTEXT})
  sequence_spec = {k: tf.io.FixedLenSequenceFeature([d], tf.float32) for k, d in FEATURE_DIMS.items()}
  return tf.io.parse_single_sequence_example(serialized, context_features=context_spec, sequence_features=sequence_spec)

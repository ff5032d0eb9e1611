"""Fake schema-v1 TFRecords for tests and benchmarks: random embeddings, never real data.

`write_fake_dataset` writes what `data_prep/build_tfrecords.py` writes (shards plus a
`dataset_info.json` with the same fields), but the "embeddings" are random numbers with a
learnable class structure instead of VGG16 / VGGish outputs:

  visual frame t = separation * envelope(t) * direction_visual[label] + actor_offset + noise
  audio row r    = separation * direction_audio[label] + actor_offset + noise

with unit class directions, small per-actor offsets and unit Gaussian noise per feature. A
model can learn the classes from either modality, which is all the tests and the benchmark
need. Numbers obtained on this data say nothing about RAVDESS.
"""

import collections
import json
import os

import numpy as np

from emojax import ravdess, schema

# The 7-class RAVDESS emotion codes, in the order of `ravdess.EMOTIONS`.
_EMOTION_CODES = tuple(
  next(code for code, name in ravdess.EMOTION_NAMES.items() if name == emotion) for emotion in ravdess.EMOTIONS
)
MAX_CLIPS_PER_ACTOR = 52  # RAVDESS speech without calm.


def _clip_slots() -> list[tuple[int, int, int, int]]:
  """(label, intensity, statement, repetition) of an actor's 52 clips, one of each class in turn.

  Normal-intensity takes come first, so any prefix of the list is close to class-balanced
  (the first 28 clips are 4 of each class).
  """
  slots = []
  for intensity in (1, 2):
    for statement in (1, 2):
      for repetition in (1, 2):
        for label, code in enumerate(_EMOTION_CODES):
          if ravdess.EMOTION_NAMES[code] == 'neutral' and intensity == 2:
            continue  # RAVDESS has no strong neutral.
          slots.append((label, intensity, statement, repetition))
  return slots


def write_fake_dataset(
  out_dir: str,
  *,
  num_actors: int = 4,
  clips_per_actor: int = 28,
  min_frames: int = 12,
  max_frames: int = 40,
  num_audio_frames: int = 5,
  num_shards: int = 2,
  seed: int = 0,
  separation: float = 1.0,
  visual_separation: float | None = None,
  fps: float = 45.0,
  modalities: tuple[str, ...] = ('audio', 'visual'),
  calm_clips_per_actor: int = 0,
) -> str:
  """Writes fake schema-v1 shards and `dataset_info.json` into `out_dir`.

  Args:
    out_dir: output directory (created).
    num_actors: actors 1..num_actors (odd male, even female, as RAVDESS).
    clips_per_actor: at most 52; the first 28 are 4 per class.
    min_frames, max_frames: range of the number of visual frames per clip.
    num_audio_frames: typical VGGish rows per clip; each clip gets this -1, +0 or +1 rows
      (at least 1), so readers pad and cut.
    num_shards: clips are dealt to shards round-robin.
    seed: everything random derives from it; the same arguments give the same files.
    separation: length of the class signal relative to unit noise per feature.
    visual_separation: the visual class signal's length, when it should differ from the
      audio's (`separation`): the visual stream averages many frames, so the same length
      makes it far easier to learn.
    fps: recorded in the context and in `settings`.
    modalities: the embeddings written, as `build_tfrecords.py --modalities`: a clip of a
      build without 'visual' has 0 frames, one without 'audio' 0 rows.
    calm_clips_per_actor: calm clips (label -1, as `build_tfrecords.py --include_calm`
      writes them) added to each actor's clips, 0..8, with a class signal of their own.

  Returns:
    `out_dir`.
  """
  import tensorflow as tf

  if not 1 <= clips_per_actor <= MAX_CLIPS_PER_ACTOR:
    raise ValueError(f'clips_per_actor must be in 1..{MAX_CLIPS_PER_ACTOR}, got {clips_per_actor}.')
  if not 1 <= num_actors <= ravdess.NUM_ACTORS:
    raise ValueError(f'num_actors must be in 1..{ravdess.NUM_ACTORS}, got {num_actors}.')
  if not modalities or set(modalities) - {'audio', 'visual'}:
    raise ValueError(f"modalities must be some of ('audio', 'visual'), got {modalities}.")
  if not 0 <= calm_clips_per_actor <= 8:
    raise ValueError(f'calm_clips_per_actor must be in 0..8, got {calm_clips_per_actor}.')
  if not 1 <= min_frames <= max_frames:
    raise ValueError(f'Need 1 <= min_frames <= max_frames, got {min_frames} and {max_frames}.')
  rng = np.random.default_rng(seed)

  def unit_rows(n, dim):
    rows = rng.normal(size=(n, dim))
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)

  visual_directions = unit_rows(ravdess.NUM_CLASSES, schema.VISUAL_DIM)  # [classes, 512]
  audio_directions = unit_rows(ravdess.NUM_CLASSES, schema.AUDIO_DIM)  # [classes, 128]
  actor_offsets_visual = 0.3 * unit_rows(num_actors, schema.VISUAL_DIM)
  actor_offsets_audio = 0.3 * unit_rows(num_actors, schema.AUDIO_DIM)
  calm_code = next(code for code, name in ravdess.EMOTION_NAMES.items() if name == 'calm')
  if calm_clips_per_actor:  # Only with calm clips, so that the default output stays as it was.
    visual_directions = np.concatenate([visual_directions, unit_rows(1, schema.VISUAL_DIM)])
    audio_directions = np.concatenate([audio_directions, unit_rows(1, schema.AUDIO_DIM)])
  # (emotion code, direction row, intensity, statement, repetition) of each clip of an actor.
  slots = [(_EMOTION_CODES[label], label, *take) for label, *take in _clip_slots()[:clips_per_actor]]
  slots += [(calm_code, ravdess.NUM_CLASSES, i, s, r) for i in (1, 2) for s in (1, 2) for r in (1, 2)][
    :calm_clips_per_actor
  ]

  os.makedirs(out_dir, exist_ok=True)
  writers = [tf.io.TFRecordWriter(os.path.join(out_dir, schema.shard_name(i, num_shards))) for i in range(num_shards)]
  clips, shard_counts = [], collections.Counter()
  try:
    for actor_index in range(num_actors):
      actor = actor_index + 1
      for code, direction, intensity, statement, repetition in slots:
        name = ravdess.ClipName(ravdess.MODALITY_AUDIO_VIDEO, 1, code, intensity, statement, repetition, actor)
        num_frames = int(rng.integers(min_frames, max_frames + 1)) if 'visual' in modalities else 0
        num_rows = max(1, num_audio_frames + int(rng.integers(-1, 2))) if 'audio' in modalities else 0
        # The expression rises and falls over the clip, as a face does.
        envelope = np.sin(np.pi * (np.arange(num_frames) + 0.5) / num_frames)[:, None]  # [frames, 1]
        visual = (
          (separation if visual_separation is None else visual_separation) * envelope * visual_directions[direction]
          + actor_offsets_visual[actor_index]
          + rng.normal(size=(num_frames, schema.VISUAL_DIM)) / np.sqrt(schema.VISUAL_DIM) * 4.0
        ).astype(np.float32)  # [frames, 512]
        audio = (
          separation * audio_directions[direction]
          + actor_offsets_audio[actor_index]
          + rng.normal(size=(num_rows, schema.AUDIO_DIM)) / np.sqrt(schema.AUDIO_DIM) * 2.0
        ).astype(np.float32)  # [rows, 128]
        context = {
          'label': -1 if code == calm_code else direction,
          'emotion_code': code,
          'actor': actor,
          'gender': name.gender,
          'intensity': intensity,
          'statement': statement,
          'repetition': repetition,
          'vocal_channel': 1,
          'num_frames': num_frames,
          'num_audio_frames': num_rows,
          'face_detected_frames': num_frames,
          'fps': fps,
          'clip_id': name.clip_id,
          'video_source': f'fake/{name.filename()}',
          'audio_source': f'fake/{name.filename()}',
        }
        shard = len(clips) % num_shards
        writers[shard].write(schema.to_sequence_example(context, visual, audio))
        shard_counts[shard] += 1
        clips.append(context)
  finally:
    for writer in writers:
      writer.close()

  emotions = collections.Counter(ravdess.EMOTION_NAMES[c['emotion_code']] for c in clips)
  genders = collections.Counter(c['gender'] for c in clips)
  actors = collections.Counter(c['actor'] for c in clips)
  num_frames = sum(c['num_frames'] for c in clips)
  info = {
    'schema_version': schema.SCHEMA_VERSION,
    'fake': 'Random embeddings with a learnable class structure from emojax.fake_records, for tests only.',
    'settings': {
      'fps': fps,
      'num_audio_frames': num_audio_frames,
      'separation': separation,
      'visual_separation': separation if visual_separation is None else visual_separation,
      'seed': seed,
      'modalities': list(modalities),
    },
    'input': {'input_dir': None},
    # Shaped as data_prep's extractor identities; the top-level 'fake' marks them as stand-ins.
    'extractors': {'vgg16': {'weights': 'fake'}, 'vggish': {'handle': 'fake'}},
    'feature_dims': dict(schema.FEATURE_DIMS),
    'emotions': list(ravdess.EMOTIONS),
    'num_clips': len(clips),
    'num_shards': num_shards,
    'shards': [{'name': schema.shard_name(i, num_shards), 'num_clips': shard_counts[i]} for i in range(num_shards)],
    'counts': {
      'emotion': {
        name: emotions.get(name, 0) for name in ravdess.EMOTIONS + (('calm',) if calm_clips_per_actor else ())
      },
      'actor': {f'{a:02d}': actors[a] for a in sorted(actors)},
      'gender': {'male': genders.get(0, 0), 'female': genders.get(1, 0)},
    },
    'num_frames': num_frames,
    'face_detected_frames': num_frames,
    'face_detection_rate': 1.0,
    'no_face_clips': [],
    'filtered': {},
    'num_skipped': 0,
    'skipped_by_kind': {},
    'skipped': [],
  }
  with open(os.path.join(out_dir, schema.DATASET_INFO), 'w') as f:
    json.dump(info, f, indent=2, sort_keys=True)
  return out_dir

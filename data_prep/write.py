"""Shards, their summaries, `settings.json` and `dataset_info.json`: the output side of data_prep.

Layout of an output directory:
  ravdess-NNNNN-of-MMMMM.tfrecord   the shards (schema v1, `emojax.schema`).
  shard_info/ravdess-NNNNN-of-MMMMM.json
                                    one summary per shard: its clips' metadata
                                    and the clips of that shard that were skipped.
  settings.json                     written before any shard: every setting that
                                    changes the content, the input's fingerprint
                                    and the extractors' identities, so a resumed
                                    (or a killed and resumed) run can refuse to mix.
  dataset_info.json                 written once every shard is complete, merged
                                    from the shard summaries.
  build-task-I-of-N.lock            held by the running task I of N (`emojax.lock`),
                                    removed when it ends; a killed task's is stale.
  build-shared.lock                 held for a moment while a task writes
                                    settings.json or dataset_info.json, which
                                    every task of a fan-out shares.

A shard is complete when both its .tfrecord and its summary exist. Both are
written under a temporary name (`.tmp-...`) in the same directory and renamed
into place; the summary first and the shard last, so a killed run never leaves
a file that looks like a finished shard.
"""

import collections
import json
import os
import re

from emojax import ravdess, schema

SETTINGS_FILE = 'settings.json'
SHARD_INFO_DIR = schema.SHARD_INFO_DIR
TMP_PREFIX = '.tmp-'
SHARED_FILES_LOCK = 'build-shared.lock'
# Lock names start with 'build-', never 'ravdess-': nothing that looks for shards can mistake one.
_TASK_LOCK = re.compile(r'build-task-(\d+)-of-(\d+)\.lock')


class SettingsMismatchError(ValueError):
  """The output directory holds a dataset built with other settings."""


def shard_path(output_dir: str, index: int, num_shards: int) -> str:
  return os.path.join(output_dir, schema.shard_name(index, num_shards))


def shard_info_path(output_dir: str, index: int, num_shards: int) -> str:
  return os.path.join(output_dir, SHARD_INFO_DIR, schema.shard_info_name(schema.shard_name(index, num_shards)))


def task_lock_name(task_index: int, num_tasks: int) -> str:
  """The lock file of task `task_index` of `num_tasks`: 'build-task-0-of-2.lock'."""
  return f'build-task-{task_index}-of-{num_tasks}.lock'


def parse_task_lock_name(name: str) -> tuple[int, int] | None:
  """(task_index, num_tasks) of a `task_lock_name`, None for any other file name."""
  match = _TASK_LOCK.fullmatch(name)
  return (int(match[1]), int(match[2])) if match else None


def _tmp_path(path: str) -> str:
  directory, name = os.path.split(path)
  return os.path.join(directory, TMP_PREFIX + name)


def write_json_atomic(path: str, obj) -> None:
  """Writes JSON under a temporary name and renames it: readers never see half a file."""
  tmp = _tmp_path(path)
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=False)
    f.write('\n')
  os.replace(tmp, path)


def read_json(path: str):
  with open(path) as f:
    return json.load(f)


def is_complete(output_dir: str, index: int, num_shards: int) -> bool:
  return os.path.exists(shard_path(output_dir, index, num_shards)) and os.path.exists(
    shard_info_path(output_dir, index, num_shards)
  )


def make_context(clip, *, fps: float, num_frames: int, num_audio_frames: int, face_detected_frames: int) -> dict:
  """The schema-v1 context of a clip (`clip` is a `data_prep.discover.Clip`)."""
  name = clip.name
  label = name.label
  return {
    'clip_id': clip.clip_id,
    # Calm (kept only with include_calm) has no class index; -1 keeps the field an int64.
    'label': -1 if label is None else label,
    'emotion_code': name.emotion_code,
    'actor': name.actor,
    'gender': name.gender,
    'intensity': name.intensity,
    'statement': name.statement,
    'repetition': name.repetition,
    'vocal_channel': name.vocal_channel,
    'num_frames': num_frames,
    'num_audio_frames': num_audio_frames,
    'face_detected_frames': face_detected_frames,
    'fps': float(fps),
    'video_source': clip.video_source,
    'audio_source': clip.audio_source,
  }


class ShardWriter:
  """Writes one shard under a temporary name; `commit` makes it (and its summary) visible.

  Use as a context manager: leaving the block without `commit` (an exception, a
  Ctrl-C) deletes the temporary file.
  """

  def __init__(self, output_dir: str, index: int, num_shards: int):
    import tensorflow as tf  # Only the main process writes; workers never import TensorFlow.

    self.index = index
    self.num_shards = num_shards
    self.path = shard_path(output_dir, index, num_shards)
    self.info_path = shard_info_path(output_dir, index, num_shards)
    self._tmp = _tmp_path(self.path)
    os.makedirs(os.path.dirname(self.info_path), exist_ok=True)
    self._writer = tf.io.TFRecordWriter(self._tmp)
    self.clips = []  # Summaries of the clips written, in order.
    self.skipped = []  # {'path', 'reason', 'kind'} of this shard's clips that were skipped.

  def write(self, serialized: bytes, summary: dict) -> None:
    self._writer.write(serialized)
    self.clips.append(summary)

  def skip(self, entry: dict) -> None:
    self.skipped.append(entry)

  def commit(self) -> None:
    self._writer.close()
    self._writer = None
    info = {
      'shard': os.path.basename(self.path),
      'num_clips': len(self.clips),
      'clips': self.clips,
      'skipped': self.skipped,
    }
    write_json_atomic(self.info_path, info)
    os.replace(self._tmp, self.path)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    if self._writer is not None:
      self._writer.close()
      self._writer = None
      if os.path.exists(self._tmp):
        os.remove(self._tmp)
    return False


def remove_outputs(output_dir: str) -> list:
  """Deletes what a previous build wrote (and only that); returns the removed paths."""
  removed = []
  if not os.path.isdir(output_dir):
    return removed
  known = (schema.DATASET_INFO, SETTINGS_FILE)
  for name in sorted(os.listdir(output_dir)):
    bare = name.removeprefix(TMP_PREFIX)
    is_shard = bare.startswith('ravdess-') and bare.endswith('.tfrecord')
    if is_shard or bare in known:
      os.remove(os.path.join(output_dir, name))
      removed.append(name)
  info_dir = os.path.join(output_dir, SHARD_INFO_DIR)
  if os.path.isdir(info_dir):
    for name in sorted(os.listdir(info_dir)):
      if name.endswith('.json'):
        os.remove(os.path.join(info_dir, name))
        removed.append(os.path.join(SHARD_INFO_DIR, name))
    if not os.listdir(info_dir):
      os.rmdir(info_dir)
  return removed


def existing_manifest(output_dir: str):
  """What an earlier run recorded: settings.json, else dataset_info.json, else None."""
  for name in (SETTINGS_FILE, schema.DATASET_INFO):
    path = os.path.join(output_dir, name)
    if os.path.exists(path):
      return name, read_json(path)
  return None


def _differences(old: dict, new: dict, prefix: str) -> list:
  keys = sorted(set(old) | set(new))
  return [
    f'{prefix}{k}: was {old.get(k, "<unset>")!r}, now {new.get(k, "<unset>")!r}'
    for k in keys
    if old.get(k) != new.get(k)
  ]


def check_manifest(
  output_dir: str, manifest: dict, *, what=('settings', 'input', 'extractors'), legacy_settings: dict | None = None
) -> None:
  """Raises SettingsMismatchError if `output_dir` holds a build with other settings.

  Args:
    output_dir: the output directory.
    manifest: {'settings': ..., 'input': ..., 'extractors': ...} of this run.
    what: the sections to compare (extractor identities are only known once loaded).
    legacy_settings: values of settings added since a build may have been written; one its
      manifest lacks took this value, so a resume across the update is no mismatch.
  """
  found = existing_manifest(output_dir)
  if found is None:
    return
  source, old = found
  differences = []
  for section in what:
    if section in old and section in manifest:
      recorded = old[section]
      if section == 'settings':
        recorded = {**(legacy_settings or {}), **recorded}
      differences += _differences(recorded, manifest[section], f'{section}.')
  if differences:
    raise SettingsMismatchError(
      f'{os.path.join(output_dir, source)} was built with other settings ({"; ".join(differences)}); '
      'rerun with the same settings to resume, pass --overwrite to start over, or choose another --output_dir.'
    )


def clip_summary(context: dict, *, face_found: bool) -> dict:
  """What dataset_info needs to know about a written clip (kept in its shard's summary)."""
  keys = ('clip_id', 'label', 'emotion_code', 'actor', 'gender', 'num_frames', 'num_audio_frames')
  summary = {k: context[k] for k in keys}
  summary['face_detected_frames'] = context['face_detected_frames']
  summary['face_found'] = bool(face_found)
  return summary


def merge_dataset_info(
  output_dir: str, num_shards: int, *, manifest: dict, discovery_skipped: list, filtered: dict, discovery: dict
):
  """Builds dataset_info from the shard summaries (every shard must be complete).

  Args:
    output_dir: the output directory.
    num_shards: the number of shards.
    manifest: the run's {'settings', 'input', 'extractors'}.
    discovery_skipped: files skipped before processing (bad names, missing sources).
    filtered: {'song': n, 'calm': n} clips from discovery.
    discovery: {'clips_found', 'clips_usable', 'clips_selected'}: every clip id found, those
      neither filtered nor skipped, and those --max_clips kept of them.

  Returns:
    The dataset_info dict (without the 'run' section).
  """
  shards, clips, skipped = [], [], list(discovery_skipped)
  for index in range(num_shards):
    info = read_json(shard_info_path(output_dir, index, num_shards))
    shards.append({'name': info['shard'], 'num_clips': info['num_clips']})
    clips += info['clips']
    skipped += info['skipped']
  emotion_names = [e for e in ravdess.EMOTIONS]
  if any(ravdess.EMOTION_NAMES[c['emotion_code']] == 'calm' for c in clips):
    emotion_names.append('calm')
  emotions = collections.Counter(ravdess.EMOTION_NAMES[c['emotion_code']] for c in clips)
  actors = collections.Counter(c['actor'] for c in clips)
  genders = collections.Counter(c['gender'] for c in clips)
  num_frames = sum(c['num_frames'] for c in clips)
  detected = sum(c['face_detected_frames'] for c in clips)
  skipped_by_kind = collections.Counter(s['kind'] for s in skipped)
  return {
    'schema_version': schema.SCHEMA_VERSION,
    'settings': manifest['settings'],
    'input': manifest['input'],
    'extractors': manifest['extractors'],
    'feature_dims': dict(schema.FEATURE_DIMS),
    'emotions': list(ravdess.EMOTIONS),
    'num_clips': len(clips),
    'num_shards': num_shards,
    'shards': shards,
    'counts': {
      'emotion': {name: emotions.get(name, 0) for name in emotion_names},
      'actor': {f'{a:02d}': actors[a] for a in sorted(actors)},
      'gender': {'male': genders.get(0, 0), 'female': genders.get(1, 0)},
    },
    'num_frames': num_frames,
    'face_detected_frames': detected,
    'face_detection_rate': detected / num_frames if num_frames else 0.0,
    # Clips with video but no face anywhere (kept with centre crops); audio-only clips have no frames.
    'no_face_clips': [c['clip_id'] for c in clips if c['num_frames'] and not c['face_found']],
    'discovery': dict(discovery),
    'filtered': dict(filtered),
    'num_skipped': len(skipped),
    'skipped_by_kind': dict(sorted(skipped_by_kind.items())),
    'skipped': skipped,
  }

r"""Turns an unpacked RAVDESS tree into sharded TFRecords of VGG16 and VGGish embedding sequences.

  python data_prep/build_tfrecords.py --input_dir=RAVDESS_ROOT --output_dir=OUT

Per clip (see `data_prep.discover` for how the files of a clip are paired, and
`data_prep.embed` for the embedding, which inference shares):
  video: PyAV decode, sampling at --fps by timestamp, Haar face crop of each
    DISTINCT source frame (`data_prep.video`), then VGG16 once per distinct
    frame; target frames that repeat a source frame reuse its embedding row.
  audio: wav (or the AV mp4's track) -> mono 16 kHz, zero-padded to
    --min_audio_seconds (`data_prep.audio`) -> VGGish, one row per 0.96 s.
--modalities=audio builds an audio-only dataset from wavs alone (RAVDESS'
Audio_Speech_Actors_01-24.zip is enough): every record has an empty visual
sequence (num_frames 0, video_source ''), and no VGG16 weights are needed.
Output: `OUT/ravdess-NNNNN-of-MMMMM.tfrecord` (schema v1, `emojax.schema`) and
`OUT/dataset_info.json` (settings, extractor identities, counts, face detection
rate, every skipped file with its reason); see `data_prep.write` for the layout.

Where the work runs: decoding, face detection and audio reading run in
--num_workers processes (started with 'spawn', so they never import
TensorFlow); both CNNs run in the main process, one clip at a time over the
clip's distinct frames, while the workers prepare the next clips (a bounded
window of 2 x num_workers clips, so memory depends on the clip, not on the
dataset).

Clip i of the sorted clip list goes to shard i % num_shards, so every shard
mixes emotions and actors, and the assignment depends only on the input tree
and the settings.

Resuming: re-running into the same OUT keeps every complete shard (its clips
are not even decoded) and rebuilds the missing ones, byte-identical to a full
run. `OUT/settings.json` is written before the first shard; a later run whose
content settings, input tree or extractors differ stops with an error naming
the differences. --overwrite deletes the previous outputs first (only files
this script writes).

Several machines: run the same command with --num_tasks=N and --task_index=0..N-1
(and an explicit --num_shards is advisable); task t builds the shards whose
index % N == t. Each shard carries its own summary (`OUT/shard_info/`), so the
task that finds every shard complete when it ends writes dataset_info.json; if
tasks end together or one was rerun, `--merge_only` writes it from the
summaries without touching any clip.

One run per task: each run holds `OUT/build-task-I-of-N.lock` (`emojax.lock`) while it
works, so the same task started twice on OUT is refused with the holder's host and pid,
and so is a build with another --num_tasks (its shards would overlap); the lock of a killed
run is taken over with a warning. --overwrite and --merge_only are runs like any other.
settings.json and dataset_info.json, which every task shares, are written under
`OUT/build-shared.lock`, held only for that moment: tasks that start or end together take
turns, and each writes the same dataset_info.json apart from its own 'run' section.

Whole-run problems (missing input dir, unwritable output dir, an extractor that
cannot be loaded, no clips, mismatched settings, a live run holding the lock) print one
line on stderr and exit with status 1.
"""

import os
import sys

if __package__ in (None, ''):
  # Run as a script: import the package this file belongs to (the repo root is one level up),
  # not another copy installed elsewhere, which may lack modules this file needs.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import collections
import contextlib
import dataclasses
import math
import multiprocessing
import resource
import tempfile
import time

from absl import app, flags, logging

from data_prep import audio as audio_lib
from data_prep import discover as discover_lib
from data_prep import embed as embed_lib
from data_prep import write as write_lib
from emojax import lock, schema

# This module must stay free of TensorFlow imports at the top level: 'spawn' workers import
# the main script, and TensorFlow in each worker would cost seconds and hundreds of MB.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

DEFAULT_CLIPS_PER_SHARD = 64

_EMBED_DEFAULTS = embed_lib.EmbedSettings()
# Settings that change what is written; they are recorded and must match on resume. Those of
# one clip's embedding are `embed.EmbedSettings`'s, with its defaults.
CONTENT_DEFAULTS = {
  'modalities': list(_EMBED_DEFAULTS.modalities),
  'fps': _EMBED_DEFAULTS.fps,
  'image_size': _EMBED_DEFAULTS.image_size,
  'detect_width': _EMBED_DEFAULTS.detect_width,
  'min_face_fraction': _EMBED_DEFAULTS.min_face_fraction,
  'rgb': _EMBED_DEFAULTS.rgb,
  'min_audio_seconds': _EMBED_DEFAULTS.min_audio_seconds,
  'vgg16_weights': 'imagenet',
  'vggish_handle': audio_lib.DEFAULT_VGGISH_HANDLE,
  'extractor_seed': 0,
  'include_song': False,
  'include_calm': False,
  'on_no_face': _EMBED_DEFAULTS.on_no_face,
  'num_shards': None,  # None: ceil(num_clips / DEFAULT_CLIPS_PER_SHARD).
  'max_clips': None,
}
# What a build made before a setting existed was built with: its settings.json lacks the key.
LEGACY_SETTINGS = {'modalities': ['audio', 'visual']}
# The datasets one can build: audio and visual, or audio alone.
BUILDABLE_MODALITIES = (('audio', 'visual'), ('audio',))
# Options that change how the run goes, not what it writes.
RUN_DEFAULTS = {
  'num_workers': None,  # None: one per CPU core.
  'cache_dir': None,
  'task_index': 0,
  'num_tasks': 1,
  'overwrite': False,
  'merge_only': False,
  'progress': True,
}
STAGES = ('decode', 'face', 'audio', 'vgg16', 'vggish', 'write')
# Recorded in the lock files and named to a refused run.
LOCK_PURPOSE = 'build_tfrecords'
# How long a task waits for another to finish writing settings.json or dataset_info.json (a
# fraction of a second normally) before it takes that other task for hung.
SHARED_FILES_WAIT_SECONDS = 60.0


class BuildError(Exception):
  """A problem with the whole run (not one clip): reported in one line, exit status 1."""


# ----------------------------------------------------------------------------- workers


@dataclasses.dataclass(frozen=True)
class _Job:
  input_dir: str
  clip: discover_lib.Clip
  settings: embed_lib.EmbedSettings


@dataclasses.dataclass
class _Result:
  """What a worker returns for one clip: the prepared clip, or why it cannot be used."""

  clip: discover_lib.Clip
  prepared: embed_lib.PreparedClip | None = None
  error: dict | None = None  # {'path', 'reason', 'kind'}
  peak_rss_mb: float = 0.0  # of the process that prepared it


# One face detector per worker process (the cascade takes a while to load); set by
# `_init_worker`, which multiprocessing calls once in each worker.
_worker_detector = None


def _init_worker(settings: embed_lib.EmbedSettings) -> None:
  global _worker_detector
  import cv2

  cv2.setNumThreads(1)  # Parallelism comes from the worker processes.
  if 'visual' in settings.modalities:
    _worker_detector = embed_lib.make_detector(settings)


def _prepare_clip(job: _Job) -> _Result:
  """Worker stage: `embed.prepare` on one clip, its failure recorded with paths relative to the input dir."""
  clip = job.clip
  result = _Result(clip=clip)
  try:
    result.prepared = embed_lib.prepare(
      os.path.join(job.input_dir, clip.video_source or clip.audio_source),
      job.settings,
      _worker_detector,
      audio_path=os.path.join(job.input_dir, clip.audio_source),
    )
  except embed_lib.MediaError as err:
    source = os.path.relpath(err.path, job.input_dir).replace(os.sep, '/')
    result.error = {'path': source, 'reason': err.reason.replace(err.path, source), 'kind': err.kind}
  result.peak_rss_mb = _own_peak_rss_mb()
  return result


def _check_face_detector(settings: dict) -> None:
  """Loads the Haar cascade once in this process, so a broken OpenCV is one clear error.

  Workers load their own copy in the pool initializer, where an exception would make
  multiprocessing respawn workers forever instead of failing.
  """
  if 'visual' not in settings['modalities']:
    return
  try:
    embed_lib.make_detector(embed_lib.EmbedSettings.from_settings(settings))
  except (AttributeError, RuntimeError) as err:
    raise BuildError(
      f'OpenCV cannot load the Haar face cascade ({err}); install opencv-python-headless<5 (OpenCV 5 has no '
      'CascadeClassifier) and remove other OpenCV packages.'
    ) from err


def _prepared_stream(jobs: list, num_workers: int, settings: embed_lib.EmbedSettings):
  """Yields `_Result`s in job order, at most 2 x num_workers clips ahead of the consumer."""
  if num_workers == 0:
    _init_worker(settings)
    for job in jobs:
      yield _prepare_clip(job)
    return
  context = multiprocessing.get_context('spawn')
  with context.Pool(num_workers, initializer=_init_worker, initargs=(settings,)) as pool:
    pending = collections.deque()
    remaining = iter(jobs)
    for job in remaining:
      pending.append(pool.apply_async(_prepare_clip, (job,)))
      if len(pending) >= 2 * num_workers:
        break
    while pending:
      result = pending.popleft().get()
      job = next(remaining, None)
      if job is not None:
        pending.append(pool.apply_async(_prepare_clip, (job,)))
      yield result


# ----------------------------------------------------------------------------- build


def _resolve(overrides: dict) -> tuple[dict, dict]:
  unknown = set(overrides) - set(CONTENT_DEFAULTS) - set(RUN_DEFAULTS)
  if unknown:
    raise TypeError(f'build() got unknown settings {sorted(unknown)}.')
  settings = {k: overrides.get(k, v) for k, v in CONTENT_DEFAULTS.items()}
  options = {k: overrides.get(k, v) for k, v in RUN_DEFAULTS.items()}
  settings['fps'] = float(settings['fps'])
  settings['min_audio_seconds'] = float(settings['min_audio_seconds'])
  settings['max_clips'] = settings['max_clips'] or None
  settings['num_shards'] = settings['num_shards'] or None
  try:
    modalities = embed_lib.parse_modalities(settings['modalities'])
  except ValueError as err:
    raise BuildError(f'--modalities: {err}') from err
  if modalities not in BUILDABLE_MODALITIES:
    raise BuildError(f'--modalities={",".join(modalities)} cannot be built: use audio,visual (the default) or audio.')
  settings['modalities'] = list(modalities)
  if settings['on_no_face'] not in ('skip', 'center_crop'):
    raise BuildError(f"--on_no_face={settings['on_no_face']!r} is not one of 'skip', 'center_crop'.")
  if settings['fps'] <= 0 or settings['image_size'] < 32 or settings['detect_width'] < 32:
    raise BuildError('--fps must be positive and --image_size and --detect_width at least 32 (VGG16 needs 32x32).')
  if options['num_workers'] is None:
    options['num_workers'] = len(os.sched_getaffinity(0)) or 1  # The CPUs this process may use, not the host's.
  if not 0 <= options['task_index'] < options['num_tasks']:
    raise BuildError(f'--task_index={options["task_index"]} must be in [0, --num_tasks={options["num_tasks"]}).')
  if options['overwrite'] and options['num_tasks'] > 1:
    raise BuildError(
      "--overwrite with --num_tasks > 1 would let tasks delete each other's shards; "
      'delete the output dir once (or run one task with --overwrite --max_clips=... first), then fan out.'
    )
  return settings, options


def _check_output_dir(output_dir: str) -> None:
  try:
    os.makedirs(output_dir, exist_ok=True)
    # An unnamed file where the file system allows it (O_TMPFILE): not even a run killed right
    # here leaves a probe behind.
    with tempfile.TemporaryFile(dir=output_dir) as f:
      f.write(b'ok')
  except OSError as err:
    raise BuildError(f'Cannot write to --output_dir={output_dir}: {err.strerror or err}.') from err


def _load_extractors(settings: dict, cache_dir: str | None):
  from data_prep import extractors

  try:
    return embed_lib.load_extractors(settings, cache_dir)
  except extractors.ExtractorError as err:
    raise BuildError(str(err)) from err


def _own_peak_rss_mb() -> float:
  """Peak resident memory of this process in MB.

  /proc's VmHWM rather than ru_maxrss: a spawned worker's ru_maxrss starts at its parent's
  (TensorFlow-sized) footprint from before the exec.
  """
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def build(input_dir: str, output_dir: str, **overrides) -> dict:
  """Builds (or resumes) the TFRecord dataset; see the module docstring.

  Args:
    input_dir: root of an unpacked RAVDESS tree.
    output_dir: where shards and dataset_info.json go (created if needed).
    **overrides: any of `CONTENT_DEFAULTS` (what is written) and `RUN_DEFAULTS`
      (num_workers, cache_dir, task_index, num_tasks, overwrite, merge_only, progress).

  Returns:
    The dataset info (what dataset_info.json holds) plus a 'run' section with this
    run's timings. When other tasks' shards are still missing: {'complete': False,
    'missing_shards': [...], 'run': ...} and no dataset_info.json yet.

  Raises:
    BuildError: a whole-run problem (one clear sentence).
    write.SettingsMismatchError: `output_dir` holds a build with other settings.
    lock.LockedError: this task (--task_index of --num_tasks) is already running on `output_dir`.
  """
  run_start = time.perf_counter()
  settings, options = _resolve(overrides)
  if not os.path.isdir(input_dir):
    raise BuildError(f'--input_dir={input_dir} does not exist or is not a directory.')
  input_dir = os.path.abspath(input_dir)
  _check_output_dir(output_dir)
  with _task_lock(output_dir, options['task_index'], options['num_tasks']):
    return _build(input_dir, output_dir, settings, options, run_start)


def _build(input_dir: str, output_dir: str, settings: dict, options: dict, run_start: float) -> dict:
  """`build` once this task holds its lock."""
  if options['overwrite']:
    write_lib.remove_outputs(output_dir)

  _check_face_detector(settings)
  clips, discovery_skipped, filtered = discover_lib.discover(
    input_dir,
    include_song=settings['include_song'],
    include_calm=settings['include_calm'],
    modalities=tuple(settings['modalities']),
  )
  if not clips:
    raise BuildError(
      f'No usable RAVDESS clips under --input_dir={input_dir} ({len(discovery_skipped)} media files skipped, '
      f'{sum(filtered.values())} filtered out as song/calm); expected files like Actor_01/01-01-03-01-01-01-01.mp4.'
    )
  discovery = {
    'clips_found': discover_lib.count_found(clips, discovery_skipped, filtered),
    'clips_usable': len(clips),
  }
  clips = discover_lib.select_evenly(clips, settings['max_clips'])
  discovery['clips_selected'] = len(clips)
  if settings['num_shards'] is None:
    settings['num_shards'] = math.ceil(len(clips) / DEFAULT_CLIPS_PER_SHARD)
  num_shards = settings['num_shards']
  manifest = {
    'schema_version': schema.SCHEMA_VERSION,
    'settings': settings,
    'input': {'num_clips': len(clips), 'clips_sha256': discover_lib.fingerprint(clips)},
  }
  write_lib.check_manifest(output_dir, manifest, what=('settings', 'input'), legacy_settings=LEGACY_SETTINGS)

  missing = _missing_shards(output_dir, num_shards)
  info_path = os.path.join(output_dir, schema.DATASET_INFO)
  if missing:
    with _shared_files_lock(output_dir):
      # It would describe shards that are gone; asked again under the lock, as another task
      # may have completed the dataset and merged it since.
      if os.path.exists(info_path) and _missing_shards(output_dir, num_shards):
        os.remove(info_path)
  to_build = [k for k in missing if k % options['num_tasks'] == options['task_index']]

  counters = {
    'processed': 0,
    'written': 0,
    'frames': 0,
    'stage_seconds': dict.fromkeys(STAGES, 0.0),
    'worker_peak_rss_mb': 0.0,
  }
  loop_seconds = 0.0
  if options['merge_only']:
    if missing:
      raise BuildError(
        f'--merge_only needs every shard, but {len(missing)} of {num_shards} are missing or incomplete '
        f'(first: {schema.shard_name(missing[0], num_shards)}); run the tasks that build them.'
      )
    to_build = []

  if to_build:
    vgg16, vggish = _load_extractors(settings, options['cache_dir'])
    manifest['extractors'] = {
      name: extractor.identity for name, extractor in (('vgg16', vgg16), ('vggish', vggish)) if extractor is not None
    }
    settings_path = os.path.join(output_dir, write_lib.SETTINGS_FILE)
    with _shared_files_lock(output_dir):
      # Tasks started together each found no settings.json: the first writes it, and the others
      # are checked against it here (so two builds with different settings cannot both start).
      write_lib.check_manifest(output_dir, manifest, legacy_settings=LEGACY_SETTINGS)
      if not os.path.exists(settings_path):
        write_lib.write_json_atomic(settings_path, manifest)

    shard_clips = {k: clips[k::num_shards] for k in to_build}  # Clip i -> shard i % num_shards.
    embed_settings = embed_lib.EmbedSettings.from_settings(settings)
    jobs = [_Job(input_dir, clip, embed_settings) for k in to_build for clip in shard_clips[k]]
    from tqdm import auto as tqdm

    loop_start = time.perf_counter()
    progress = tqdm.tqdm(
      total=len(jobs),
      unit='clip',
      disable=not options['progress'],
      desc='clips',
      smoothing=0.1,
      mininterval=0.5 if sys.stderr.isatty() else 30,  # A log file gets a line every 30 s, not every clip.
    )
    stream = _prepared_stream(jobs, options['num_workers'], embed_settings)
    try:
      _run_shards(to_build, shard_clips, stream, progress, output_dir, num_shards, settings, vgg16, vggish, counters)
    finally:
      stream.close()  # Stops the worker pool, also after an error or Ctrl-C.
      progress.close()
    loop_seconds = time.perf_counter() - loop_start

  wall_seconds = time.perf_counter() - run_start
  run = {
    'task_index': options['task_index'],
    'num_tasks': options['num_tasks'],
    'num_workers': options['num_workers'],
    'shards_built': len(to_build),
    'shards_kept': num_shards - len(missing),
    'clips_processed': counters['processed'],
    'clips_written': counters['written'],
    'frames_written': counters['frames'],
    'wall_seconds': wall_seconds,
    'processing_seconds': loop_seconds,
    'clips_per_second': counters['processed'] / wall_seconds,
    'frames_per_second': counters['frames'] / wall_seconds,
    'stage_seconds': counters['stage_seconds'],
    'peak_rss_mb': _own_peak_rss_mb(),
    'worker_peak_rss_mb': counters['worker_peak_rss_mb'],
  }
  # Tasks that end together may each find every shard complete: they merge in turn, and each
  # writes the same dataset_info.json apart from its own 'run' section.
  with _shared_files_lock(output_dir):
    missing = _missing_shards(output_dir, num_shards)
    if missing:
      return {
        'complete': False,
        'missing_shards': [schema.shard_name(k, num_shards) for k in missing],
        'settings': settings,
        'run': run,
      }
    if 'extractors' not in manifest:  # Nothing built in this run: the identities are on record.
      found = write_lib.existing_manifest(output_dir)
      manifest['extractors'] = found[1].get('extractors', {}) if found else {}
    info = write_lib.merge_dataset_info(
      output_dir,
      num_shards,
      manifest=manifest,
      discovery_skipped=discovery_skipped,
      filtered=filtered,
      discovery=discovery,
    )
    info['run'] = run
    write_lib.write_json_atomic(info_path, info)
  return info


def _missing_shards(output_dir: str, num_shards: int) -> list:
  return [k for k in range(num_shards) if not write_lib.is_complete(output_dir, k, num_shards)]


@contextlib.contextmanager
def _task_lock(output_dir: str, task_index: int, num_tasks: int):
  """Holds this task's lock for the block; refuses to start beside a live build with another --num_tasks.

  Tasks of one fan-out (same --num_tasks) build disjoint shards, so each locks only its own
  task. A build with another --num_tasks would write some of the same shards through the same
  temporary files, so every other fan-out's task locks are tried too: a live one refuses this
  run, a stale one is taken over and removed. Each run takes its own lock before it tries the
  others, so of two such builds starting together at least one sees the other.

  Raises:
    lock.LockedError: this task is already running here.
    BuildError: a build with another --num_tasks is running here.
  """
  name = write_lib.task_lock_name(task_index, num_tasks)
  with lock.DirectoryLock(output_dir, name=name, purpose=LOCK_PURPOSE):
    for other in sorted(os.listdir(output_dir)):
      parsed = write_lib.parse_task_lock_name(other)
      if parsed is None or parsed[1] == num_tasks:
        continue
      try:
        lock.DirectoryLock(output_dir, name=other, purpose=LOCK_PURPOSE).acquire().release()
      except lock.LockedError as err:
        raise BuildError(
          f'A build with --num_tasks={parsed[1]} is running in {output_dir} and would write the same shards '
          f'as this one with --num_tasks={num_tasks}: {err}'
        ) from err
    yield


@contextlib.contextmanager
def _shared_files_lock(output_dir: str):
  """Holds the lock on the files all tasks share (settings.json, dataset_info.json), waiting for it."""
  shared = lock.DirectoryLock(output_dir, name=write_lib.SHARED_FILES_LOCK, purpose=LOCK_PURPOSE)
  deadline = time.monotonic() + SHARED_FILES_WAIT_SECONDS
  while True:
    try:
      shared.acquire()
      break
    except lock.LockedError as err:
      if time.monotonic() > deadline:
        raise BuildError(
          f'Waited {SHARED_FILES_WAIT_SECONDS:.0f} s for another task to finish writing settings.json or '
          f'{schema.DATASET_INFO}: {err}'
        ) from err
      time.sleep(0.05)
  try:
    yield
  finally:
    shared.release()


def _run_shards(to_build, shard_clips, stream, progress, output_dir, num_shards, settings, vgg16, vggish, counters):
  """Consumes prepared clips in order, shard by shard; a shard is committed when its last clip is in."""
  stage_seconds = counters['stage_seconds']
  start = time.perf_counter()
  for k in to_build:
    with write_lib.ShardWriter(output_dir, k, num_shards) as shard:
      for _ in shard_clips[k]:
        result = next(stream)
        counters['worker_peak_rss_mb'] = max(counters['worker_peak_rss_mb'], result.peak_rss_mb)
        if result.prepared is not None:
          for stage, seconds in result.prepared.timings.items():
            stage_seconds[stage] += seconds
        written, frames = _embed_and_write(result, shard, settings, vgg16, vggish, stage_seconds)
        counters['processed'] += 1
        counters['written'] += written
        counters['frames'] += frames
        progress.update(1)
        frames_per_second = counters['frames'] / max(time.perf_counter() - start, 1e-9)
        progress.set_postfix(
          frames_per_s=f'{frames_per_second:.0f}', skipped=counters['processed'] - counters['written']
        )
      shard.commit()


def _embed_and_write(result: _Result, shard, settings: dict, vgg16, vggish, stage_seconds: dict) -> tuple[bool, int]:
  """Main-process stage: `embed.embed`, serialisation, write. Returns (written, frames written)."""
  clip = result.clip
  if result.error is not None:
    shard.skip(result.error)
    return False, 0
  prepared = result.prepared
  faces = prepared.faces
  visual = 'visual' in settings['modalities']
  if visual and faces is None:
    shard.skip({'path': clip.video_source, 'reason': f'{clip.video_source} has no video stream.', 'kind': 'video'})
    return False, 0
  if prepared.waveform is None:
    shard.skip({'path': clip.audio_source, 'reason': f'{clip.audio_source} has no audio track.', 'kind': 'audio'})
    return False, 0
  if visual and not faces.face_found and settings['on_no_face'] == 'skip':  # Before VGG16, which it would waste.
    shard.skip(
      {
        'path': clip.video_source,
        'reason': f'{clip.video_source}: no face detected in any frame (--on_no_face=center_crop keeps such clips).',
        'kind': 'no face',
      }
    )
    return False, 0

  embedding = embed_lib.embed(prepared, vgg16, vggish)
  stage_seconds['vgg16'] += embedding.timings['vgg16']
  stage_seconds['vggish'] += embedding.timings['vggish']
  if embedding.audio is None:
    shard.skip({'path': clip.audio_source, 'reason': f'{clip.audio_source}: VGGish gave no rows.', 'kind': 'audio'})
    return False, 0

  start = time.perf_counter()
  context = write_lib.make_context(
    clip,
    fps=settings['fps'],
    num_frames=embedding.num_frames,
    num_audio_frames=embedding.audio.shape[0],
    face_detected_frames=embedding.face_detected_frames,
  )
  # An audio-only dataset's records carry an empty [0, 512] visual sequence.
  serialized = schema.to_sequence_example(context, embedding.visual if visual else [], embedding.audio)
  shard.write(serialized, write_lib.clip_summary(context, face_found=embedding.face_found))
  stage_seconds['write'] += time.perf_counter() - start
  return True, embedding.num_frames


# ----------------------------------------------------------------------------- CLI


def count(n: int, noun: str) -> str:
  """'1 clip', '1,440 clips': a number with its noun, singular or plural."""
  return f'{n:,} {noun}' if n == 1 else f'{n:,} {noun}s'


# Skip kinds in plain words: (what is skipped, why).
_SKIP_WORDS = {
  'no face': ('clip', 'with no face in any frame'),
  'video': ('clip', 'whose video cannot be read or has no picture'),
  'audio': ('clip', 'whose audio cannot be read or is missing'),
  'error': ('clip', 'that hit an unexpected error'),
  'no video source': ('clip', 'without a video file'),
  'no audio source': ('clip', 'without an audio file'),
  'unparsable name': ('file', 'not named like a RAVDESS file'),
  'duplicate': ('file', 'duplicating another file'),
}
# Clips left out on purpose, in plain words, and the flag that keeps them.
_FILTER_WORDS = {'song': ('song', '--include_song'), 'calm': ('calm', '--include_calm')}


def summary_lines(info: dict, output_dir: str) -> list:
  """The closing summary, as lines of text in plain words.

  Args:
    info: what `build` returned.
    output_dir: where the dataset was written.
  """
  run = info['run']
  settings = info.get('settings', {})
  lines = []
  if info.get('complete') is False:
    lines.append(
      f'Task {run["task_index"]}/{run["num_tasks"]}: built {count(run["shards_built"], "shard")}; '
      f'{count(len(info["missing_shards"]), "shard")} of other tasks still missing, so {schema.DATASET_INFO} is not '
      'written yet (the last task writes it, or run again with --merge_only).'
    )
  else:
    discovery = info.get('discovery')
    if discovery:
      left_out = [
        f'{count(n, words[0] + " clip")} ({words[1]} keeps them)'
        for reason, words in _FILTER_WORDS.items()
        if (n := info['filtered'].get(reason, 0))
      ]
      found = f'Found {count(discovery["clips_found"], "clip")}: {discovery["clips_usable"]:,} usable'
      found += f'; left out on purpose: {", ".join(left_out)}.' if left_out else '.'
      lines.append(found)
      if discovery['clips_selected'] < discovery['clips_usable']:
        usable = count(discovery['clips_usable'], 'usable clip')
        lines.append(f'--max_clips: took {discovery["clips_selected"]:,} of the {usable}, spread evenly over them.')
    lines.append(
      f'Wrote {count(info["num_clips"], "clip")} in {count(info["num_shards"], "shard")} to {output_dir} '
      f'({run["shards_built"]:,} built now, {run["shards_kept"]:,} kept from an earlier run); '
      f'{schema.DATASET_INFO} has the details.'
    )
    if info['num_skipped']:
      reasons = []
      for kind, n in info['skipped_by_kind'].items():
        noun, why = _SKIP_WORDS.get(kind, ('item', f'skipped as {kind!r}'))
        reasons.append(f'{count(n, noun)} {why}')
      lines.append(
        f'Skipped {info["num_skipped"]:,} (each with its reason in {schema.DATASET_INFO}): {"; ".join(reasons)}.'
      )
    else:
      lines.append('Skipped none.')
    if 'visual' in settings.get('modalities', ['visual']):
      lines.append(
        f'Faces: detected in {100 * info["face_detection_rate"]:.1f}% of {count(info["num_frames"], "frame")}; '
        f'{count(len(info["no_face_clips"]), "clip")} without any face kept with centre crops.'
      )
    else:
      lines.append('Audio only (--modalities=audio): every record has an empty visual sequence (0 frames).')
  lines.append(
    f'This run: {count(run["clips_processed"], "clip")} in {run["wall_seconds"]:.1f} s '
    f'({run["clips_per_second"]:.2f} clips/s, {run["frames_per_second"]:.0f} frames/s, '
    f'{count(run["num_workers"], "worker")}; peak memory {run["peak_rss_mb"]:.0f} MB main, '
    f'{run["worker_peak_rss_mb"]:.0f} MB per worker).'
  )
  stages = ', '.join(f'{k} {v:.1f}' for k, v in run['stage_seconds'].items())
  lines.append(f'Seconds per stage (decode, face and audio summed over the workers): {stages}.')
  stand_ins = embed_lib.stand_in_extractors(settings)
  if stand_ins:
    flags_used = {'VGG16': '--vgg16_weights=random', 'VGGish': '--vggish_handle=random'}
    lines.append(
      f'WARNING: features come from untrained stand-in extractors ({", ".join(flags_used[n] for n in stand_ins)}): '
      'for tests only, not for results.'
    )
  return lines


FLAGS = flags.FLAGS


def _define_flags() -> None:
  flags.DEFINE_string('input_dir', None, 'Root of the unpacked RAVDESS tree (any nesting).')
  flags.DEFINE_string('output_dir', None, 'Where the shards and dataset_info.json go.')
  flags.DEFINE_list(
    'modalities', CONTENT_DEFAULTS['modalities'], "'audio,visual', or 'audio' for a dataset of wavs alone."
  )
  flags.DEFINE_float('fps', CONTENT_DEFAULTS['fps'], 'Target frame rate (the thesis: 45).')
  flags.DEFINE_integer('image_size', CONTENT_DEFAULTS['image_size'], 'Face crop side in pixels (the thesis: 48).')
  flags.DEFINE_integer('detect_width', CONTENT_DEFAULTS['detect_width'], 'Face detection runs at most this wide.')
  flags.DEFINE_float(
    'min_face_fraction', CONTENT_DEFAULTS['min_face_fraction'], 'Smallest face searched, fraction of detect width.'
  )
  flags.DEFINE_boolean('rgb', CONTENT_DEFAULTS['rgb'], 'Colour crops instead of grayscale copied to 3 channels.')
  flags.DEFINE_float('min_audio_seconds', CONTENT_DEFAULTS['min_audio_seconds'], 'Zero-pad audio to this length.')
  flags.DEFINE_string('vgg16_weights', CONTENT_DEFAULTS['vgg16_weights'], "'imagenet', a weights file, or 'random'.")
  flags.DEFINE_string(
    'vggish_handle', CONTENT_DEFAULTS['vggish_handle'], "TF-Hub handle, a local SavedModel dir, or 'random'."
  )
  flags.DEFINE_integer('extractor_seed', CONTENT_DEFAULTS['extractor_seed'], "Seed of the 'random' stand-ins.")
  flags.DEFINE_string('cache_dir', None, "Where the 'random' VGGish stand-in SavedModel is cached.")
  flags.DEFINE_boolean('include_song', False, 'Keep song clips (vocal channel 02).')
  flags.DEFINE_boolean('include_calm', False, 'Keep calm clips (not one of the 7 classes; label -1).')
  flags.DEFINE_enum('on_no_face', 'skip', ['skip', 'center_crop'], 'Clips with no face in any frame.')
  flags.DEFINE_integer('num_shards', None, f'Shards; default ceil(clips / {DEFAULT_CLIPS_PER_SHARD}).')
  flags.DEFINE_integer('num_workers', None, 'Decode/face/audio processes; default one per CPU core; 0: in-process.')
  flags.DEFINE_integer('max_clips', None, 'Smoke run: this many clips spread evenly over the sorted list.')
  flags.DEFINE_integer('task_index', 0, 'This task builds shards with index % num_tasks == task_index.')
  flags.DEFINE_integer('num_tasks', 1, 'Number of tasks sharing --output_dir.')
  flags.DEFINE_boolean('overwrite', False, 'Delete the previous outputs in --output_dir first.')
  flags.DEFINE_boolean('merge_only', False, 'Only write dataset_info.json from complete shards (after --num_tasks).')
  flags.DEFINE_boolean('progress', True, 'Show a progress bar.')
  flags.mark_flags_as_required(['input_dir', 'output_dir'])


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # TensorFlow's INFO lines would bury the progress bar.
  overrides = {k: FLAGS[k].value for k in list(CONTENT_DEFAULTS) + list(RUN_DEFAULTS)}
  try:
    info = build(FLAGS.input_dir, FLAGS.output_dir, **overrides)
  except (BuildError, write_lib.SettingsMismatchError, lock.LockedError) as err:
    print(f'build_tfrecords: error: {err}', file=sys.stderr)
    sys.exit(1)
  print('\n'.join(summary_lines(info, FLAGS.output_dir)))


if __name__ == '__main__':
  _define_flags()
  app.run(main)

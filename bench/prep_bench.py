r"""Benchmark of data_prep against "the thesis's way", on SYNTHETIC clips at RAVDESS resolution.

  python bench/prep_bench.py [--num_clips=6] [--num_workers=2] [--work_dir=/tmp/emojax_prep_bench]

Both run on the same SYNTHETIC RAVDESS-format clips (1280x720, 29.97 fps, 3.5 s;
not real RAVDESS data), generated once into --work_dir and reused:

  pipeline: `data_prep.build_tfrecords.build` end to end (decode, face, audio,
    VGG16, VGGish, write) with the offline 'random' extractors.
  thesis:   what the thesis did for the visual branch, one process: every target
    frame at 45 fps written out as a JPEG (sampled by timestamp, repeats written
    and processed again), read back with cv2.imread, Haar cascade at FULL
    resolution (`detectMultiScale(gray, 1.3, 5)`), the first face's crop
    written as a JPEG and read back, resized to 48x48 and copied into 3
    channels, then VGG16 `predict` once per clip (the same random-weight
    stand-in). It does no audio at all, so the comparison flatters it.

Printed: clips/s, frames/s and seconds per stage of each, peak memory
(VmHWM of the main process and of the largest worker), and the speedup. Model
loading is excluded from both (the pipeline's is reported separately).
"""

import os
import sys

if __package__ in (None, ''):
  try:
    import data_prep  # noqa: F401
  except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import glob
import math
import resource
import shutil
import tempfile
import time

import av
import cv2
import numpy as np
from absl import app, flags

from data_prep import build_tfrecords, synthetic, video

flags.DEFINE_string('work_dir', os.path.join(tempfile.gettempdir(), 'emojax_prep_bench'), 'Clips and outputs.')
flags.DEFINE_integer('num_clips', 6, 'SYNTHETIC clips to generate and process.')
flags.DEFINE_integer('num_workers', None, 'Pipeline worker processes (default: one per core).')
flags.DEFINE_integer('width', 1280, 'Clip width.')
flags.DEFINE_integer('height', 720, 'Clip height.')
flags.DEFINE_float('seconds', 3.5, 'Clip duration.')
flags.DEFINE_boolean('skip_thesis', False, 'Only time the pipeline.')
FLAGS = flags.FLAGS

FPS = 45.0
IMAGE_SIZE = 48


def _peak_mb(who) -> float:
  return resource.getrusage(who).ru_maxrss / 1024


def _clips(work_dir: str) -> list:
  clip_dir = os.path.join(work_dir, f'clips_{FLAGS.width}x{FLAGS.height}_{FLAGS.seconds}s_{FLAGS.num_clips}')
  paths = sorted(glob.glob(os.path.join(clip_dir, 'Actor_*', '*.mp4')))
  if len(paths) != FLAGS.num_clips:
    shutil.rmtree(clip_dir, ignore_errors=True)
    start = time.perf_counter()
    # calm is left out: the pipeline would filter it and the two sides would see different clips.
    paths = synthetic.generate(
      clip_dir,
      num_actors=2,
      width=FLAGS.width,
      height=FLAGS.height,
      seconds=FLAGS.seconds,
      emotion_codes=(1, 3, 4, 5, 6, 7, 8),
      max_clips=FLAGS.num_clips,
    )
    print(f'Generated {len(paths)} SYNTHETIC clips in {time.perf_counter() - start:.1f} s into {clip_dir}.')
  return clip_dir, paths


def run_pipeline(clip_dir: str, work_dir: str, cache_dir: str) -> dict:
  info = build_tfrecords.build(
    clip_dir,
    os.path.join(work_dir, 'tfrecords'),
    vgg16_weights='random',
    vggish_handle='random',
    cache_dir=cache_dir,
    num_workers=FLAGS.num_workers,
    overwrite=True,
    progress=False,
  )
  return info


def _thesis_clip(path: str, scratch: str, cascade, model) -> dict:
  """One clip the thesis's way; returns stage seconds and counts."""
  import keras

  seconds = dict.fromkeys(('decode_and_write_jpegs', 'read_and_haar', 'crop_write_read_resize', 'vgg16'), 0.0)
  frame_dir = os.path.join(scratch, 'frames')
  face_dir = os.path.join(scratch, 'faces')
  for d in (frame_dir, face_dir):
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)

  # FFmpeg-style extraction at 45 fps: every target frame becomes a JPEG, repeats included.
  start = time.perf_counter()
  with av.open(path) as container:
    stream = container.streams.video[0]
    frames, times = [], []
    for frame in container.decode(stream):
      frames.append(frame.to_ndarray(format='bgr24'))
      times.append(float(frame.time))
    duration = float(stream.duration * stream.time_base)
  times = np.asarray(times) - times[0]
  source_index = video.target_frame_indices(times, FPS, duration)  # [num_frames]
  for k, j in enumerate(source_index):
    cv2.imwrite(os.path.join(frame_dir, f'{k:05d}.jpg'), frames[j])
  del frames
  seconds['decode_and_write_jpegs'] = time.perf_counter() - start

  crops, detected = [], 0
  for k in range(len(source_index)):
    start = time.perf_counter()
    image = cv2.imread(os.path.join(frame_dir, f'{k:05d}.jpg'))
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    faces = cascade.detectMultiScale(gray, 1.3, 5)
    seconds['read_and_haar'] += time.perf_counter() - start
    if len(faces) == 0:
      continue  # The thesis' extraction keeps only frames with a face.
    detected += 1
    start = time.perf_counter()
    x, y, w, h = faces[0]
    face_path = os.path.join(face_dir, f'{k:05d}.jpg')
    cv2.imwrite(face_path, gray[y : y + h, x : x + w])
    crop = cv2.resize(cv2.imread(face_path, cv2.IMREAD_GRAYSCALE), (IMAGE_SIZE, IMAGE_SIZE))
    crops.append(np.repeat(crop[:, :, None], 3, axis=2))
    seconds['crop_write_read_resize'] += time.perf_counter() - start

  start = time.perf_counter()
  if crops:
    batch = keras.applications.vgg16.preprocess_input(np.stack(crops).astype(np.float32))
    embedding = model.predict(batch, verbose=0)  # [detected, 512]
    assert embedding.shape == (len(crops), 512)
  seconds['vgg16'] = time.perf_counter() - start
  return {'seconds': seconds, 'frames': int(source_index.size), 'detected': detected}


def run_thesis(paths: list, work_dir: str) -> dict:
  from data_prep import extractors

  model = extractors.VGG16Embedder(weights='random', image_size=IMAGE_SIZE, seed=0).model
  cascade = cv2.CascadeClassifier(cv2.data.haarcascades + video.HAAR_CASCADE)
  scratch = os.path.join(work_dir, 'thesis_scratch')
  totals, frames, detected = {}, 0, 0
  start = time.perf_counter()
  for path in paths:
    result = _thesis_clip(path, scratch, cascade, model)
    for k, v in result['seconds'].items():
      totals[k] = totals.get(k, 0.0) + v
    frames += result['frames']
    detected += result['detected']
  wall = time.perf_counter() - start
  shutil.rmtree(scratch, ignore_errors=True)
  return {'wall': wall, 'frames': frames, 'detected': detected, 'seconds': totals}


def main(argv) -> None:
  del argv
  cv2.setNumThreads(os.cpu_count() or 1)
  os.makedirs(FLAGS.work_dir, exist_ok=True)
  clip_dir, paths = _clips(FLAGS.work_dir)
  cache_dir = os.path.join(FLAGS.work_dir, 'extractor_cache')
  print(
    f'{len(paths)} SYNTHETIC clips, {FLAGS.width}x{FLAGS.height}, {FLAGS.seconds} s, target {FPS:g} fps; '
    f'{os.cpu_count()} CPU cores.'
  )

  info = run_pipeline(clip_dir, FLAGS.work_dir, cache_dir)
  run = info['run']
  loop = run['processing_seconds']
  stages = ', '.join(f'{k} {v:.1f}' for k, v in run['stage_seconds'].items())
  print(
    f'pipeline: {run["clips_processed"]} clips, {run["frames_written"]} frames in {loop:.1f} s '
    f'(+{run["wall_seconds"] - loop:.1f} s start-up and model loading): '
    f'{run["clips_processed"] / loop:.2f} clips/s, {run["frames_written"] / loop:.0f} frames/s; '
    f'{run["num_workers"]} workers; face detection rate {100 * info["face_detection_rate"]:.1f}%.'
  )
  print(f'  seconds per stage (decode/face/audio summed over workers): {stages}.')
  print(f'  peak RSS: main {run["peak_rss_mb"]:.0f} MB, largest worker {run["worker_peak_rss_mb"]:.0f} MB.')
  if FLAGS.skip_thesis:
    return

  thesis = run_thesis(paths, FLAGS.work_dir)
  stages = ', '.join(f'{k} {v:.1f}' for k, v in thesis['seconds'].items())
  print(
    f"thesis's way: {len(paths)} clips, {thesis['frames']} frames in {thesis['wall']:.1f} s: "
    f'{len(paths) / thesis["wall"]:.2f} clips/s, {thesis["frames"] / thesis["wall"]:.0f} frames/s; '
    f'faces in {100 * thesis["detected"] / max(thesis["frames"], 1):.1f}% of frames (video only, no audio).'
  )
  print(f'  seconds per stage: {stages}.')
  print(f'  peak RSS after both: main {_peak_mb(resource.RUSAGE_SELF):.0f} MB (the thesis way holds a clip of frames).')
  speedup = thesis['wall'] / loop
  print(f'speedup: {speedup:.1f}x (goal >= 3x){"" if speedup >= 3 else "  BELOW GOAL"}.')
  assert math.isfinite(speedup)


if __name__ == '__main__':
  app.run(main)

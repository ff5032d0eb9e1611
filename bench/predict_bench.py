r"""Speed of `python -m emojax.predict`'s work on SYNTHETIC media: model loading, one clip, a long recording.

  python bench/predict_bench.py [--workdir=demo_out/workdir] [--work_dir=/tmp/emojax_predict_bench]

--workdir is a trained run; the default is the demo's (`./launch.sh demo`), which has the
thesis' model sizes and data settings (45 fps, 48 x 48 faces, 5 s of audio) and the untrained
stand-in extractors, which cost what the real VGG16 and VGGish cost. The media are SYNTHETIC
(`data_prep.synthetic`, not real RAVDESS), generated once into --work_dir and reused:

  clip:      one 4 s clip at --clip_size (1280x720, RAVDESS' size), 29.97 fps, 48 kHz audio;
             scored as one clip, --repeats times after loading (the first included).
  recording: a --recording_seconds (60 s) recording at --recording_size, in which the emotion
             changes twice; scored with the default windows (4 s every 1 s).

Printed: load time (restore and compile the models; load and warm up the extractors), each
clip's end-to-end seconds with its stages (decode, face, audio, VGG16, VGGish, the models),
and the recording's seconds per second of media (goal: at most 1, real time), with the one-
time compile of the batch of windows apart. The machine's load average is printed at the
start and the end: on a shared machine the figures are noisy.
"""

import os
import sys

if __package__ in (None, ''):
  # Run as a script: import the package this file belongs to (the repo root is one level up).
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import statistics
import tempfile
import time

import numpy as np
from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
flags.DEFINE_string('workdir', os.path.join(ROOT, 'demo_out', 'workdir'), 'A trained run (default: the demo).')
flags.DEFINE_string('work_dir', os.path.join(tempfile.gettempdir(), 'emojax_predict_bench'), 'Generated media.')
flags.DEFINE_string('cache_dir', None, "Where the 'random' VGGish stand-in is kept (default: the demo's cache).")
flags.DEFINE_string('clip_size', '1280x720', 'Width x height of the clip.')
flags.DEFINE_float('clip_seconds', 4.0, 'Duration of the clip.')
flags.DEFINE_integer('repeats', 3, 'Times the clip is scored.')
flags.DEFINE_string('recording_size', '1280x720', 'Width x height of the recording.')
flags.DEFINE_float('recording_seconds', 60.0, 'Duration of the recording.')
FLAGS = flags.FLAGS


def _size(text: str) -> tuple[int, int]:
  width, height = (int(value) for value in text.lower().split('x'))
  return width, height


def _load_average() -> str:
  return ' '.join(f'{value:.1f}' for value in os.getloadavg())


def _media(work_dir: str) -> tuple[str, str]:
  """The SYNTHETIC clip and recording, written once."""
  from data_prep import synthetic

  os.makedirs(work_dir, exist_ok=True)
  width, height = _size(FLAGS.clip_size)
  clip = os.path.join(work_dir, f'clip_{width}x{height}_{FLAGS.clip_seconds:g}s.mp4')
  if not os.path.exists(clip):
    synthetic.write_recording(
      clip, emotion_codes=(5,), change_times=(), seconds=FLAGS.clip_seconds, width=width, height=height, actor=3
    )
  width, height = _size(FLAGS.recording_size)
  seconds = FLAGS.recording_seconds
  recording = os.path.join(work_dir, f'recording_{width}x{height}_{seconds:g}s.mp4')
  if not os.path.exists(recording):
    print(f'Writing a {seconds:g} s SYNTHETIC recording ({width}x{height}) once into {work_dir} ...', flush=True)
    synthetic.write_recording(
      recording,
      change_times=(round(seconds / 3, 2), round(2 * seconds / 3, 2)),
      seconds=seconds,
      width=width,
      height=height,
    )
  return clip, recording


def _stages(result) -> str:
  timings = result.embedding.timings
  embed_seconds = sum(timings.get(name, 0.0) for name in ('decode', 'face', 'audio', 'vgg16', 'vggish'))
  parts = [f'{name} {timings.get(name, 0.0):.2f}' for name in ('decode', 'face', 'audio', 'vgg16', 'vggish')]
  return ', '.join(parts) + f', windows + models {result.seconds - embed_seconds:.2f}'


def main(argv):
  del argv
  from emojax import cli

  cli.filter_start_up_noise()
  cli.hide_gpus_from_tensorflow()
  from emojax import predict

  if not os.path.isfile(os.path.join(FLAGS.workdir, 'config.json')):
    raise SystemExit(
      f'predict_bench: {FLAGS.workdir} is not a trained run: run ./launch.sh demo first, or pass --workdir.'
    )
  cache_dir = FLAGS.cache_dir or os.path.join(os.path.dirname(os.path.abspath(FLAGS.workdir)), 'cache')
  print(f'CPUs: {len(os.sched_getaffinity(0))}; load average at start: {_load_average()} (a shared machine: noisy).')
  clip, recording = _media(FLAGS.work_dir)

  start = time.perf_counter()
  predictor = predict.Predictor(FLAGS.workdir)
  models_seconds = time.perf_counter() - start
  start = time.perf_counter()
  scorer = predict.MediaScorer(predictor, cache_dir=cache_dir)
  extractors_seconds = time.perf_counter() - start
  print(
    f'load: models {models_seconds:.2f} s ({", ".join(predictor.models)}, {predictor.num_members} member(s); '
    f'restore + compile for one clip), extractors {extractors_seconds:.2f} s (load + warm-up)'
  )

  seconds = []
  for repeat in range(FLAGS.repeats):
    result = scorer.score_file(clip)
    assert result.error is None and result.windows is None, result.error
    seconds.append(result.seconds)
    print(
      f'clip {FLAGS.clip_size} {FLAGS.clip_seconds:g} s, run {repeat + 1}: {result.seconds:.2f} s ({_stages(result)})'
    )
  print(f'clip: median {statistics.median(seconds):.2f} s end to end after load (goal <= 3 s)')

  # The batch of windows compiles once, the first time a recording is scored; timed apart.
  start = time.perf_counter()
  blank = predict.Embeddings(np.zeros((1, 512), np.float32), np.zeros((1, 128), np.float32))
  predictor.score([blank] * predictor.batch_size)
  compile_seconds = time.perf_counter() - start
  result = scorer.score_file(recording)
  assert result.error is None and result.windows is not None, result.error
  duration = result.embedding.source.duration
  print(
    f'recording {FLAGS.recording_size} {duration:.0f} s, {len(result.windows)} windows: {result.seconds:.1f} s = '
    f'{result.seconds / duration:.2f} s per second of media (goal <= 1); {_stages(result)}; '
    f'plus {compile_seconds:.2f} s to compile the batch of windows, once per run'
  )
  print(f'load average at the end: {_load_average()}')


if __name__ == '__main__':
  app.run(main)

"""Tests for emojax.predict on SYNTHETIC clips with the untrained stand-in extractors.

One tiny run is trained once for the module: 42 synthetic clips (2 actors x 7 emotions x 3
takes, 160 x 120, 1.2 s) embedded at 5 target frames per second by build_tfrecords, then the
smoke stack with two seeds (so predict averages an ensemble of two members). The numbers
mean nothing about emotions; the tests check that prediction gives what training's own
evaluation gives, and how files of every kind are handled.
"""

import csv
import glob
import json
import os
import subprocess
import sys

import av
import numpy as np
import pytest

from configs import audio as audio_config
from configs import stack
from data_prep import build_tfrecords, synthetic
from emojax import experiment, input_pipeline, models, predict, ravdess, report, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = {'width': 160, 'height': 120}
TAKES = ((1, 1, 1), (1, 1, 2), (1, 2, 1))  # (intensity, statement, repetition); neutral has intensity 1 only.
EMOTION_CODES = (1, 3, 4, 5, 6, 7, 8)  # The 7 classes; calm (2) is left out.
CLIP_SECONDS = 1.2
FPS = 5.0  # Target frames per second of the data: few VGG16 crops, a fast test.


def _prep_settings(cache_dir, **overrides):
  return dict(
    vgg16_weights='random',
    vggish_handle='random',
    cache_dir=str(cache_dir),
    num_workers=0,
    progress=False,
    fps=FPS,
    image_size=32,  # The smallest VGG16 takes: a third of the work of 48 x 48.
    **overrides,
  )


def _config(data_dir, config_module=stack, **overrides):
  """The smoke config, shrunk: a third of the clips to each partition, half of each held out, one epoch."""
  config = config_module.get_config('smoke')
  config.data.dir = str(data_dir)
  config.data.fractions = (1 / 3, 1 / 3, 1 / 3)
  config.data.val_fraction = 0.5
  config.data.max_frames = 32
  config.data.time_bucket = 8
  config.data.normalize = 'per_dim'
  config.num_epochs = 1
  config.log_every_secs = 1e6
  config.checkpoint_every_secs = 1e6
  config.update(overrides)
  return config


def _write_faceless_video(path, seconds=1.5, audio=True):
  """A grey ramp (no face anywhere), with a 220 Hz tone as its audio track unless `audio` is False."""
  with av.open(str(path), mode='w') as container:
    video = container.add_stream('libx264', rate=10)
    video.width, video.height, video.pix_fmt = 160, 120, 'yuv420p'
    sound = container.add_stream('aac', rate=48000, layout='mono') if audio else None
    image = np.ascontiguousarray(
      np.broadcast_to(np.linspace(60, 200, 160, dtype=np.uint8)[None, :, None], (120, 160, 3))
    )
    for _ in range(round(seconds * 10)):
      container.mux(video.encode(av.VideoFrame.from_ndarray(image, format='rgb24')))
    container.mux(video.encode(None))
    if sound is not None:
      tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(round(seconds * 48000)) / 48000)).astype(np.float32)
      for start in range(0, tone.size, 1024):
        frame = av.AudioFrame.from_ndarray(tone[None, start : start + 1024], format='fltp', layout='mono')
        frame.sample_rate = 48000
        container.mux(sound.encode(frame))
      container.mux(sound.encode(None))


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory, cache_dir):
  """{'clips', 'data', 'workdir', 'config'} of one tiny stacking run with seeds 0 and 1."""
  root = tmp_path_factory.mktemp('predict')
  clips = root / 'clips'
  for actor in (1, 2):
    for code in EMOTION_CODES:
      for intensity, statement, repetition in TAKES:
        name = ravdess.ClipName(1, 1, code, intensity, statement, repetition, actor)
        synthetic.write_clip(
          str(clips / f'Actor_{actor:02d}' / name.filename()),
          emotion_code=code,
          intensity=intensity,
          statement=statement,
          repetition=repetition,
          actor=actor,
          seconds=CLIP_SECONDS,
          fps=10.0,
          **SMALL,
        )
  data = root / 'data'
  build_tfrecords.build(str(clips), str(data), **_prep_settings(cache_dir))
  config = _config(data, seeds=(0, 1))
  workdir = str(root / 'run')
  experiment.run(config, workdir)
  return {'clips': clips, 'data': data, 'workdir': workdir, 'config': config}


@pytest.fixture(scope='module')
def scorer(run_dir, cache_dir):
  return predict.MediaScorer(predict.Predictor(run_dir['workdir']), cache_dir=str(cache_dir))


@pytest.fixture(scope='module')
def media(tmp_path_factory):
  """A directory of SYNTHETIC files of every kind: video without audio, wav, faceless video, corrupt, not media."""
  directory = tmp_path_factory.mktemp('media')
  synthetic.write_recording(
    str(directory / 'silent.mkv'), emotion_codes=(3,), change_times=(), seconds=1.5, audio=False, fps=10.0, **SMALL
  )
  synthetic.write_recording(str(directory / 'voice.wav'), emotion_codes=(5,), change_times=(), seconds=2.0)
  _write_faceless_video(directory / 'wall.mp4')
  good = directory / 'good.mp4'
  synthetic.write_recording(str(good), emotion_codes=(6,), change_times=(), seconds=1.5, fps=10.0, **SMALL)
  (directory / 'broken.mp4').write_bytes(good.read_bytes()[:3000])
  (directory / 'notes.txt').write_text('not media')
  return directory


@pytest.fixture(scope='module')
def recording(tmp_path_factory):
  """A 20 s SYNTHETIC portrait phone video (240 x 320 as shown, stored turned), 10 fps; emotion changes at 7 and 14 s."""
  path = str(tmp_path_factory.mktemp('recording') / 'talk.mp4')
  synthetic.write_recording(path, seconds=20.0, fps=10.0, width=240, height=320, rotation=90)
  return path


def _clip_path(run_dir, clip_id: str) -> str:
  [path] = glob.glob(str(run_dir['clips'] / '*' / f'*-{clip_id}.mp4'))
  return path


# ----------------------------------------------------------------------------- same numbers as training


def test_workdir_records_how_its_data_was_embedded(run_dir):
  with open(os.path.join(run_dir['workdir'], experiment.DATA_SETTINGS_FILENAME)) as f:
    recorded = json.load(f)
  with open(run_dir['data'] / 'dataset_info.json') as f:
    info = json.load(f)
  assert recorded['settings'] == info['settings'] and recorded['settings']['fps'] == FPS
  assert (
    recorded['extractors']
    == info['extractors']
    == {
      'vgg16': {'name': 'keras.applications.VGG16', 'weights': 'random', 'image_size': 32, 'seed': 0},
      'vggish': {'handle': 'random', 'seed': 0},
    }
  )
  assert recorded['classes'] == list(ravdess.EMOTIONS) and recorded['stand_in_extractors'] and not recorded['fake']


def test_predict_gives_what_evaluation_gave_through_the_tfrecords(run_dir, scorer):
  """The mp4 through data_prep.embed and Predictor = the same clip through build_tfrecords, load_clips and eval."""
  rows = report.read_predictions(os.path.join(run_dir['workdir'], report.PREDICTIONS_FILENAME))
  test_ids = sorted({row['clip_id'] for row in rows})
  assert len(test_ids) == 14
  clips, _ = input_pipeline.load_clips(run_dir['config'])
  predictor = scorer.predictor
  for clip_id in test_ids[:5]:
    result = scorer.score_file(_clip_path(run_dir, clip_id))
    assert result.error is None and result.windows is None
    [prediction] = result.predictions
    assert set(prediction.probabilities) == {'audio', 'visual', 'stacker'} and prediction.not_used == {}
    # The embeddings are the TFRecord's, bit for bit.
    i = int(np.flatnonzero(clips['clip_id'] == clip_id)[0])
    num_frames = clips['num_frames'][i]
    np.testing.assert_array_equal(result.embedding.visual, clips['visual'][i, :num_frames])
    np.testing.assert_array_equal(result.embedding.audio[:5], clips['audio'][i])
    for row in (row for row in rows if row['clip_id'] == clip_id):
      expected = np.array(list(row['probabilities'].values()))  # 6 decimals in predictions.csv.
      member = predictor.member_names.index(f'fold_0/seed_{row["seed"]}')
      np.testing.assert_allclose(prediction.member_probabilities[row['model']][member], expected, atol=2e-6)
    for name, members in prediction.member_probabilities.items():
      assert members.shape == (2, 7)
      np.testing.assert_allclose(prediction.probabilities[name], members.mean(0))

  # At full precision: eval's own batching (time buckets, the run's batch size) on the loaded clips.
  indices = np.array([int(np.flatnonzero(clips['clip_id'] == clip_id)[0]) for clip_id in test_ids])
  embeddings = [predict.Embeddings(clips['visual'][i, : clips['num_frames'][i]], clips['audio'][i]) for i in indices]
  scored = predictor.score(embeddings)
  config = run_dir['config']
  for name in models.BASE_MODELS:
    data = [input_pipeline.MemberData(clips, indices, statistics) for statistics in predictor.statistics[name]]
    batches = input_pipeline.member_batches(
      data, config.batch_size, keys=models.MODELS[name].inputs, time_bucket=config.data.time_bucket
    )
    outputs = train.predict(predictor.states[name], batches, predictor.mesh, [len(indices)] * 2)
    for k, output in enumerate(outputs):
      logits = output['logits'].astype(np.float64)
      expected = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
      got = np.stack([prediction.member_probabilities[name][k] for prediction in scored])
      np.testing.assert_allclose(got, expected, atol=1e-6)


def test_mixed_examples_score_as_they_would_alone(scorer):
  rng = np.random.default_rng(0)
  visual, audio = rng.normal(size=(7, 512)).astype(np.float32), rng.normal(size=(5, 128)).astype(np.float32)
  examples = [
    predict.Embeddings(visual, audio),
    predict.Embeddings(None, audio, {'visual': 'no video stream'}),
    predict.Embeddings(visual, None, {'audio': 'no audio track'}),
  ]
  together = scorer.predictor.score(examples)
  for example, prediction in zip(examples, together, strict=True):
    [alone] = scorer.predictor.score([example])
    assert alone.not_used == prediction.not_used
    for name, probabilities in alone.probabilities.items():
      np.testing.assert_allclose(prediction.probabilities[name], probabilities, atol=1e-6)
  assert set(together[1].probabilities) == {'audio'} and together[1].final()[0] == 'audio'
  assert together[1].not_used == {'visual': 'no video stream', 'stacker': 'needs audio and visual: no video stream'}
  assert set(together[2].probabilities) == {'visual'} and together[2].not_used['audio'] == 'no audio track'


# ----------------------------------------------------------------------------- files of every kind


def test_every_kind_of_file(media, scorer, tmp_path):
  output = tmp_path / 'out' / 'results.jsonl'
  with open(tmp_path / 'stdout.txt', 'w') as stdout:
    status = predict.run('unused', [str(media)], output=str(output), scorer=scorer, stdout=stdout)
  assert status == 1  # broken.mp4 failed; the others were scored.
  text = (tmp_path / 'stdout.txt').read_text()
  assert 'ensemble of 2 members (fold_0/seed_0, fold_0/seed_1)' in text
  assert 'UNTRAINED stand-ins' in text and 'ignored 1 file(s) that are not media: notes.txt' in text
  blocks = {block.split(':')[0].split('/')[-1]: block for block in text.split('\n\n')[1:-1]}
  assert sorted(blocks) == ['broken.mp4', 'good.mp4', 'silent.mkv', 'voice.wav', 'wall.mp4']
  assert blocks['broken.mp4'].count('\n') == 0 and 'error: ' in blocks['broken.mp4']
  assert 'audio    not used: no audio track' in blocks['silent.mkv'] and '(visual, p=' in blocks['silent.mkv']
  assert 'visual   not used: no video stream' in blocks['voice.wav'] and '(audio, p=' in blocks['voice.wav']
  assert 'visual   not used: no face found in any frame' in blocks['wall.mp4'] and '(audio, p=' in blocks['wall.mp4']
  assert '(stacker, p=' in blocks['good.mp4'] and 'not used' not in blocks['good.mp4']
  assert text.endswith('4 of 5 file(s) scored; results in ' + str(output) + '; see the errors above.\n')

  written = [json.loads(line) for line in output.read_text().splitlines()]
  by_file = {os.path.basename(row['file']): row for row in written}
  assert len(written) == 5 and 'broken.mp4' in by_file['broken.mp4']['error']
  assert set(by_file['wall.mp4']['models']) == {'audio'}
  assert by_file['wall.mp4']['not_used']['visual'] == 'no face found in any frame'
  good = by_file['good.mp4']
  assert good['final']['model'] == 'stacker' and good['window'] is None and good['end'] == pytest.approx(1.5, 0.05)
  assert sum(good['models']['stacker']['probabilities'].values()) == pytest.approx(1.0, abs=1e-5)


def test_all_good_files_exit_0_and_csv_has_a_row_per_model(media, scorer, tmp_path):
  output = tmp_path / 'results.csv'
  paths = [str(media / 'voice.wav'), str(media / 'good.mp4')]
  with open(tmp_path / 'stdout.txt', 'w') as stdout:
    status = predict.run('unused', paths, output=str(output), scorer=scorer, stdout=stdout)
  assert status == 0
  with open(output) as f:
    rows = list(csv.DictReader(f))
  assert [(os.path.basename(r['file']), r['model']) for r in rows] == [
    (name, model) for name in ('voice.wav', 'good.mp4') for model in ('audio', 'visual', 'stacker', 'final')
  ]
  assert rows[1]['note'] == 'not used: no video stream' and rows[1]['p_anger'] == ''
  assert rows[3]['note'] == 'audio' and rows[7]['note'] == 'stacker'


def test_a_missing_path_fails_alone(media, scorer, tmp_path):
  with open(tmp_path / 'stdout.txt', 'w') as stdout:
    status = predict.run('unused', [str(tmp_path / 'nope.mp4'), str(media / 'voice.wav')], scorer=scorer, stdout=stdout)
  text = (tmp_path / 'stdout.txt').read_text()
  assert status == 1 and 'nope.mp4 does not exist' in text and '1 of 2 file(s) scored' in text


def test_other_extractors_are_refused_naming_the_difference(scorer, cache_dir):
  with pytest.raises(ValueError, match=r'vgg16 embeddings from --vgg16_weights=random .*not imagenet'):
    predict.MediaScorer(scorer.predictor, vgg16_weights='imagenet', cache_dir=str(cache_dir))
  recorded = scorer.predictor.data_settings['extractors']
  with pytest.raises(ValueError, match=r'vggish embeddings with seed=0 \(data_settings.json\), but .* seed=3'):
    predict.check_extractors(recorded, {'vggish': {'handle': 'random', 'seed': 3}}, 'data_settings.json')
  predict.check_extractors(recorded, dict(recorded), 'data_settings.json')  # The same ones pass.


# ----------------------------------------------------------------------------- long recordings


def test_a_recording_is_scored_window_by_window_with_a_timeline(recording, scorer, tmp_path):
  output = tmp_path / 'results.jsonl'
  annotated = tmp_path / 'annotated.mp4'
  with open(tmp_path / 'stdout.txt', 'w') as stdout:
    status = predict.run(
      'unused',
      [recording],
      output=str(output),
      timeline_dir=str(tmp_path / 'timelines'),
      annotate_path=str(annotated),
      scorer=scorer,
      stdout=stdout,
    )
  assert status == 0
  rows = [json.loads(line) for line in output.read_text().splitlines()]
  assert [row['window'] for row in rows] == list(range(17))
  assert [(row['start'], row['end']) for row in rows[:-1]] == [(float(k), k + 4.0) for k in range(16)]
  assert rows[-1]['start'] == 16.0 and rows[-1]['end'] == pytest.approx(20.0, abs=0.05)
  assert all(row['final']['model'] == 'stacker' for row in rows)
  png = tmp_path / 'timelines' / 'talk.mp4.timeline.png'
  assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  import matplotlib.image

  assert matplotlib.image.imread(str(png)).shape[:2] == (840, 1000)  # A panel for each of the three models.
  text = (tmp_path / 'stdout.txt').read_text()
  assert '17 windows of 4 s' in text and f'timeline: {png}' in text

  with av.open(recording) as source, av.open(str(annotated)) as copy:
    assert copy.streams.audio and copy.streams.audio[0].codec_context.name == 'aac'
    # Upright, as the face boxes were found.
    assert (copy.streams.video[0].codec_context.width, copy.streams.video[0].codec_context.height) == (240, 320)
    source_frames = sum(1 for _ in source.decode(video=0))
    copy_frames = sum(1 for _ in copy.decode(video=0))
  assert copy_frames == source_frames == 200
  assert f'annotated: {annotated} (200 frames, with its audio)' in text


def test_real_ravdess_sample(scorer):
  """A real RAVDESS clip (640x480 letterboxed, 44.1 kHz) and a real wav, where the shared sample exists."""
  sample = os.path.join(REPO, '..', 'shared', 'data', 'ravdess-sample')
  video = os.path.join(sample, 'video', 'Actor_01', '01-01-07-02-02-01-01.mp4')
  wav = os.path.join(sample, 'audio', 'Actor_02', '03-01-05-01-02-01-02.wav')
  if not (os.path.exists(video) and os.path.exists(wav)):
    pytest.skip('the real RAVDESS sample is not here (../shared/data/ravdess-sample)')
  clip = scorer.score_file(video)
  assert clip.error is None and (clip.embedding.source.width, clip.embedding.source.sample_rate) == (640, 44100)
  assert set(clip.predictions[0].probabilities) == {'audio', 'visual', 'stacker'}
  voice = scorer.score_file(wav)
  assert set(voice.predictions[0].probabilities) == {'audio'} and voice.embedding.source.sample_rate == 48000


def test_windows_on_request_for_a_short_file(media, scorer):
  result = scorer.score_file(str(media / 'good.mp4'), windows=True, window_seconds=1.0, hop_seconds=0.5)
  assert [(w.start, w.end) for w in result.windows] == [(0.0, 1.0), (0.5, result.embedding.source.duration)]
  assert len(result.predictions) == 2 and all(p.final()[0] == 'stacker' for p in result.predictions)


# ----------------------------------------------------------------------------- audio-only data


@pytest.fixture(scope='module')
def audio_run(tmp_path_factory, cache_dir):
  """The workdir of configs/audio.py trained on an audio-only dataset built from SYNTHETIC wavs alone."""
  root = tmp_path_factory.mktemp('audio_only')
  wavs = root / 'wavs'
  for actor in (1, 2):
    for code in EMOTION_CODES:
      for intensity, statement, repetition in TAKES[:2]:
        name = ravdess.ClipName(3, 1, code, intensity, statement, repetition, actor)
        synthetic.write_recording(
          str(wavs / f'Actor_{actor:02d}' / name.filename()),
          emotion_codes=(code,),
          change_times=(),
          seconds=CLIP_SECONDS,
          actor=actor,
          seed=repetition,
        )
  data = root / 'data'
  info = build_tfrecords.build(str(wavs), str(data), **_prep_settings(cache_dir, modalities='audio'))
  assert info['num_clips'] == 28 and info['extractors'] == {'vggish': {'handle': 'random', 'seed': 0}}
  workdir = str(root / 'run')
  config = _config(data, audio_config)
  config.data.fractions = (0.5, 0.0, 0.5)  # No stacker: base and test only, two wavs of each class in each.
  experiment.run(config, workdir)
  return workdir


def test_an_audio_only_run_scores_wavs_and_the_audio_of_videos(audio_run, cache_dir, media):
  scorer = predict.MediaScorer(predict.Predictor(audio_run), cache_dir=str(cache_dir))
  assert scorer.predictor.models == ('audio',) and scorer.vgg16 is None and scorer.detector is None
  for name in ('voice.wav', 'good.mp4'):
    result = scorer.score_file(str(media / name))
    [prediction] = result.predictions
    assert set(prediction.probabilities) == {'audio'} and prediction.final()[0] == 'audio'
    assert prediction.probabilities['audio'].sum() == pytest.approx(1.0)
  silent = scorer.score_file(str(media / 'silent.mkv'))
  assert silent.predictions[0].final() is None and silent.predictions[0].not_used == {'audio': 'no audio track'}
  assert 'no model could score this file' in predict.format_result(silent, scorer.predictor.class_names, ('audio',))


def test_the_command_line_exits_1_after_a_broken_file(audio_run, media, cache_dir, tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', JAX_PLATFORMS='cpu')
  env['PYTHONPATH'] = os.pathsep.join(filter(None, [REPO, env.get('PYTHONPATH')]))
  output = tmp_path / 'results.csv'
  command = [sys.executable, '-m', 'emojax.predict', f'--workdir={audio_run}', str(media / 'broken.mp4')]
  command += [str(media / 'voice.wav'), f'--cache_dir={cache_dir}', f'--output={output}']
  result = subprocess.run(command, env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 1, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  broken = [line for line in lines if 'broken.mp4' in line]
  assert len(broken) == 1 and broken[0].startswith(f'{media / "broken.mp4"}: error: ')
  assert any(line.startswith('  audio    ') for line in lines) and '1 of 2 file(s) scored' in result.stdout
  assert not [line for line in result.stderr.splitlines() if 'cuInit' in line or 'oneDNN' in line]
  with open(output) as f:
    rows = list(csv.DictReader(f))
  assert [(os.path.basename(row['file']), row['model']) for row in rows] == [
    ('broken.mp4', ''),
    ('voice.wav', 'audio'),
    ('voice.wav', 'final'),
  ]

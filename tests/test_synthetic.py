"""Tests for the SYNTHETIC RAVDESS-format clip generator (data_prep/synthetic.py)."""

import collections
import os
import subprocess
import sys

import av
import cv2
import numpy as np
import pytest
import soundfile

from data_prep import synthetic
from emojax import ravdess

SECONDS = 1.2
WIDTH, HEIGHT = 160, 120
NUM_FRAMES = round(SECONDS * 30000 / 1001)  # 36
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cascade():
  return cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, 'haarcascade_frontalface_default.xml'))


def _faces(gray, cascade):
  """Haar boxes as data_prep detects them: on a copy at most 640 px wide."""
  if gray.shape[1] > 640:
    height = round(gray.shape[0] * 640 / gray.shape[1])
    gray = cv2.resize(gray, (640, height), interpolation=cv2.INTER_AREA)
  return cascade.detectMultiScale(gray, 1.3, 5)


def _gray_frames(path):
  with av.open(path) as container:
    return [frame.to_ndarray(format='gray') for frame in container.decode(video=0)]


def _audio(path):
  """The decoded audio track, mono [num_samples] float32, and its sample rate."""
  with av.open(path) as container:
    stream = container.streams.audio[0]
    samples = np.concatenate([frame.to_ndarray() for frame in container.decode(audio=0)], axis=1)
    return samples.mean(axis=0), stream.sample_rate


def _write(path, emotion_code, intensity, repetition=1, actor=1, statement=1, **kwargs):
  settings = {'width': WIDTH, 'height': HEIGHT, 'seconds': SECONDS, 'seed': 0}
  settings.update(kwargs)
  synthetic.write_clip(
    str(path),
    emotion_code=emotion_code,
    intensity=intensity,
    statement=statement,
    repetition=repetition,
    actor=actor,
    **settings,
  )
  return str(path)


@pytest.fixture(scope='module')
def clips(tmp_path_factory):
  """One take of each of the 8 emotions for actors 1 (male) and 2 (female)."""
  root = tmp_path_factory.mktemp('synthetic_ravdess')
  paths = synthetic.generate(str(root), num_actors=2, width=WIDTH, height=HEIGHT, seconds=SECONDS, max_clips=16)
  return root, paths


def test_clip_names_are_the_ravdess_speech_set():
  names = synthetic.clip_names(num_actors=2, first_actor=3)
  assert len(names) == len(set(names)) == 120  # 60 per actor, as RAVDESS.
  for name in names:
    assert ravdess.parse_name(name.filename()) == name
    assert name.filename().startswith('01-01-')  # Full audio-video, speech.
  per_emotion = collections.Counter(name.emotion_code for name in names)
  assert per_emotion == {1: 8, 2: 16, 3: 16, 4: 16, 5: 16, 6: 16, 7: 16, 8: 16}
  assert {name.actor for name in names} == {3, 4}
  # Any prefix covers every emotion before repeating one.
  assert sorted(name.emotion_code for name in names[:8]) == list(range(1, 9))


def test_generate_writes_a_ravdess_tree(clips):
  root, paths = clips
  assert paths == sorted(paths) and len(paths) == 16
  on_disk = sorted(str(p) for p in root.rglob('*') if p.is_file())
  assert on_disk == paths  # Nothing else, no partial files.
  for path in paths:
    name = ravdess.parse_name(path)
    assert os.path.basename(os.path.dirname(path)) == f'Actor_{name.actor:02d}'
    assert os.path.basename(path) == name.filename(ravdess.MODALITY_AUDIO_VIDEO)
  codes = {(ravdess.parse_name(p).actor, ravdess.parse_name(p).emotion_code) for p in paths}
  assert codes == {(actor, code) for actor in (1, 2) for code in range(1, 9)}


def test_generate_rejects_actors_out_of_range(tmp_path):
  with pytest.raises(ValueError, match='out of range'):
    synthetic.generate(str(tmp_path), num_actors=2, first_actor=24)


@pytest.mark.parametrize('width,height,seconds', [(160, 120, 1.2), (320, 240, 1.0), (1280, 720, 0.4)])
def test_streams_are_h264_and_aac_48k(tmp_path, width, height, seconds):
  path = _write(tmp_path / 'clip.mp4', 6, 2, width=width, height=height, seconds=seconds)
  with av.open(path) as container:
    video, audio = container.streams.video[0], container.streams.audio[0]
    assert video.codec_context.name == 'h264'
    assert (video.width, video.height) == (width, height)
    assert abs(float(video.average_rate) - 29.97) < 0.01
    assert audio.codec_context.name == 'aac'
    assert audio.sample_rate == 48000
  frames = _gray_frames(path)
  assert len(frames) == round(seconds * 30000 / 1001)
  assert frames[0].shape == (height, width)
  samples, sample_rate = _audio(path)
  assert abs(len(samples) / sample_rate - seconds) <= 0.1
  assert 0.01 < np.abs(samples).max() <= 1.0  # Speech, not silence, not clipped garbage.


def test_haar_finds_faces_in_most_frames(clips, tmp_path):
  _, paths = clips
  cascade = _cascade()
  rates = {}
  for path in paths:
    frames = _gray_frames(path)
    rates[os.path.basename(path)] = np.mean([len(_faces(frame, cascade)) > 0 for frame in frames])
  assert min(rates.values()) >= 0.8, rates
  # At RAVDESS resolution the detector runs on a 640-px-wide copy.
  path = _write(tmp_path / 'large.mp4', 8, 2, actor=5, width=1280, height=720, seconds=0.4)
  frames = _gray_frames(path)
  assert np.mean([len(_faces(frame, cascade)) > 0 for frame in frames]) >= 0.8


def test_same_seed_same_clip_other_seed_other_clip(tmp_path):
  first = _write(tmp_path / 'a.mp4', 3, 2, repetition=2, actor=4, seconds=1.0)
  second = _write(tmp_path / 'b.mp4', 3, 2, repetition=2, actor=4, seconds=1.0)
  other = _write(tmp_path / 'c.mp4', 3, 2, repetition=2, actor=4, seconds=1.0, seed=1)
  np.testing.assert_array_equal(np.stack(_gray_frames(first)), np.stack(_gray_frames(second)))
  np.testing.assert_array_equal(_audio(first)[0], _audio(second)[0])
  with open(first, 'rb') as f, open(second, 'rb') as g:
    assert f.read() == g.read()
  assert not np.array_equal(np.stack(_gray_frames(first)), np.stack(_gray_frames(other)))


def _speech_features(path):
  """(loudness, pitch in Hz) while speaking: RMS and median autocorrelation pitch of 20 ms frames."""
  return _speech_features_of(*_audio(path))


def _speech_features_of_wav(path):
  samples, sample_rate = soundfile.read(path, dtype='float32')
  return _speech_features_of(samples, sample_rate)


def _speech_features_of(samples, sample_rate):
  frame = sample_rate // 50
  frames = samples[: len(samples) // frame * frame].reshape(-1, frame)
  rms = np.sqrt(np.mean(frames**2, axis=1))
  speaking = frames[rms > 0.3 * rms.max()]
  spectrum = np.abs(np.fft.rfft(speaking * np.hanning(frame), 2 * frame, axis=1)) ** 2
  autocorrelation = np.fft.irfft(spectrum, axis=1)[:, :frame]
  low, high = sample_rate // 500, sample_rate // 60
  pitch = sample_rate / (low + np.argmax(autocorrelation[:, low:high], axis=1))
  return float(np.sqrt(np.mean(speaking**2))), float(np.median(pitch))


def _mouth_brightness(path, cascade):
  """Mouth-region brightness relative to the whole face box, averaged over frames with a face."""
  values = []
  for gray in _gray_frames(path):
    boxes = _faces(gray, cascade)
    if len(boxes):
      x, y, w, h = max(boxes, key=lambda box: box[2] * box[3])
      face = cv2.resize(gray[y : y + h, x : x + w], (48, 48), interpolation=cv2.INTER_AREA).astype(np.float32)
      values.append(face[34:46, 14:34].mean() / face.mean())
  return float(np.mean(values))


@pytest.mark.parametrize('actor', [1, 2])
def test_emotions_differ_more_than_takes(tmp_path, actor):
  """Strong anger vs strong sadness: each feature moves far more between emotions than between takes."""
  cascade = _cascade()
  features = {}
  for emotion_code in (5, 4):
    for repetition in (1, 2):
      path = _write(tmp_path / f'{emotion_code}-{repetition}.mp4', emotion_code, 2, repetition=repetition, actor=actor)
      features[emotion_code, repetition] = (*_speech_features(path), _mouth_brightness(path, cascade))
  for index, feature in enumerate(('loudness', 'pitch', 'mouth brightness')):
    values = {key: value[index] for key, value in features.items()}
    between = abs(values[5, 1] + values[5, 2] - values[4, 1] - values[4, 2]) / 2
    within = max(abs(values[5, 1] - values[5, 2]), abs(values[4, 1] - values[4, 2]))
    assert between > 3 * within, (feature, values)
  # Anger is louder and higher than sadness, and its open mouth darker.
  assert features[5, 1][0] > 2 * features[4, 1][0]
  assert features[5, 1][1] > 1.2 * features[4, 1][1]
  assert features[5, 1][2] < features[4, 1][2]


def test_intensity_and_gender_move_the_voice(tmp_path):
  neutral = _speech_features(_write(tmp_path / 'n.mp4', 1, 1))
  normal = _speech_features(_write(tmp_path / 'h1.mp4', 3, 1))
  strong = _speech_features(_write(tmp_path / 'h2.mp4', 3, 2))
  # Happiness raises pitch over neutral, more at strong intensity.
  assert neutral[1] < normal[1] < strong[1]
  female = _speech_features(_write(tmp_path / 'f.mp4', 1, 1, actor=2))
  assert female[1] > 1.4 * neutral[1]  # Actor 2 (female) speaks well above actor 1 (male).


def test_write_clip_rejects_bad_settings(tmp_path):
  with pytest.raises(ValueError, match='even'):
    _write(tmp_path / 'odd.mp4', 1, 1, width=161)
  with pytest.raises(ValueError, match='invalid emotion field 09'):
    _write(tmp_path / 'bad.mp4', 9, 1)
  with pytest.raises(ValueError, match='neutral at strong intensity'):
    _write(tmp_path / 'bad.mp4', 1, 2)
  with pytest.raises(ValueError, match='invalid actor field 25'):
    _write(tmp_path / 'bad.mp4', 3, 1, actor=25)
  assert not list(tmp_path.iterdir())


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
  render = synthetic._render_frames

  def render_then_fail(*args):
    frames = render(*args)
    yield next(frames)
    raise KeyboardInterrupt

  monkeypatch.setattr(synthetic, '_render_frames', render_then_fail)
  with pytest.raises(KeyboardInterrupt):
    _write(tmp_path / '01-01-03-01-01-01-01.mp4', 3, 1)
  assert not list(tmp_path.iterdir())


def test_cli_says_synthetic(tmp_path, capsys):
  synthetic.main(
    [f'--output_dir={tmp_path}', '--num_actors=1', '--max_clips=2', '--seconds=0.5', '--width=96', '--height=64']
  )
  line = capsys.readouterr().out.strip()
  assert 'Wrote 2 SYNTHETIC' in line and str(tmp_path) in line and 'not real RAVDESS' in line
  assert len(list(tmp_path.glob('Actor_01/01-01-*.mp4'))) == 2
  synthetic.main([f'--recording={tmp_path / "talk.wav"}', '--seconds=3'])
  line = capsys.readouterr().out.strip()
  assert 'SYNTHETIC recording' in line and 'neutral 0-1 s, anger 1-2 s, happiness 2-3 s' in line
  assert soundfile.info(str(tmp_path / 'talk.wav')).duration == 3.0
  with pytest.raises(SystemExit):
    synthetic.main([f'--recording={tmp_path / "x.wav"}', f'--output_dir={tmp_path}'])


def test_cli_runs_as_a_module(tmp_path):
  result = subprocess.run(
    [sys.executable, '-m', 'data_prep.synthetic', f'--output_dir={tmp_path}', '--max_clips=1', '--seconds=0.3'],
    cwd=_REPO_ROOT,
    capture_output=True,
    text=True,
    check=False,
  )
  assert result.returncode == 0, result.stderr
  assert 'Wrote 1 SYNTHETIC' in result.stdout
  bad = subprocess.run(
    [sys.executable, '-m', 'data_prep.synthetic', f'--output_dir={tmp_path}', '--width=33'],
    cwd=_REPO_ROOT,
    capture_output=True,
    text=True,
    check=False,
  )
  assert bad.returncode != 0 and 'even' in bad.stderr and 'Traceback' not in bad.stderr


def test_recording_changes_emotion_at_the_given_times(tmp_path):
  """Neutral, then anger from 3 s, then sadness from 6 s: the voice follows, and the file is deterministic."""
  path = str(tmp_path / 'talk.wav')
  segments = synthetic.write_recording(path, emotion_codes=(1, 5, 4), change_times=(3.0, 6.0), seconds=9.0)
  assert segments == [(0.0, 3.0, 'neutral', 1), (3.0, 6.0, 'anger', 5), (6.0, 9.0, 'sadness', 4)]
  samples, sample_rate = soundfile.read(path, dtype='float32')
  assert (sample_rate, samples.shape) == (48000, (9 * 48000,))
  parts = {}
  for segment in segments:
    part = tmp_path / f'{segment.emotion}.wav'
    soundfile.write(str(part), samples[int(segment.start * 48000) : int(segment.end * 48000)], 48000)
    parts[segment.emotion] = _speech_features_of_wav(str(part))
  # Loudness and pitch: anger louder and higher than neutral, sadness quieter and lower than anger.
  assert parts['anger'][0] > 1.5 * parts['neutral'][0] and parts['anger'][1] > 1.1 * parts['neutral'][1]
  assert parts['sadness'][0] < 0.5 * parts['anger'][0] and parts['sadness'][1] < parts['anger'][1]
  again = str(tmp_path / 'again.wav')
  synthetic.write_recording(again, emotion_codes=(1, 5, 4), change_times=(3.0, 6.0), seconds=9.0)
  assert open(path, 'rb').read() == open(again, 'rb').read()


def test_recording_video_kinds(tmp_path):
  """Portrait, without an audio track, stored sideways: what the frames and streams say."""
  path = str(tmp_path / 'phone.mp4')
  synthetic.write_recording(path, emotion_codes=(3,), change_times=(), seconds=1.0, width=120, height=160, audio=False)
  with av.open(path) as container:
    assert not container.streams.audio
    stream = container.streams.video[0]
    assert (stream.width, stream.height, stream.frames) == (120, 160, 30)
  turned = str(tmp_path / 'turned.mov')
  synthetic.write_recording(
    turned, emotion_codes=(3,), change_times=(), seconds=1.0, width=120, height=160, rotation=90
  )
  with av.open(turned) as container:
    frame = next(container.decode(video=0))
    assert (frame.width, frame.height, frame.rotation) == (160, 120, 90) and container.streams.audio


def test_write_recording_rejects_bad_settings(tmp_path):
  with pytest.raises(ValueError, match='one between each two'):
    synthetic.write_recording(str(tmp_path / 'a.wav'), emotion_codes=(1, 5), change_times=(), seconds=4.0)
  with pytest.raises(ValueError, match='increasing times inside'):
    synthetic.write_recording(str(tmp_path / 'a.wav'), emotion_codes=(1, 5), change_times=(5.0,), seconds=4.0)
  with pytest.raises(ValueError, match='not a RAVDESS emotion code'):
    synthetic.write_recording(str(tmp_path / 'a.wav'), emotion_codes=(9,), change_times=(), seconds=1.0)
  with pytest.raises(ValueError, match=r"not '\.avi'"):
    synthetic.write_recording(str(tmp_path / 'a.avi'), seconds=1.0)

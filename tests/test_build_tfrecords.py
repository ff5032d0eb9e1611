"""End-to-end tests of data_prep/build_tfrecords.py on SYNTHETIC RAVDESS-format clips.

One build per session (a dozen tiny clips, bad inputs among them, the offline
'random' extractors) is shared by the tests; resume and multi-task tests work on
copies or on smaller inputs.
"""

import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys

import av
import numpy as np
import pytest
import soundfile

from data_prep import build_tfrecords, embed, synthetic, video
from data_prep import write as write_lib
from emojax import ravdess, schema

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTH, HEIGHT, SECONDS = 160, 120, 1.2
SOURCE_FPS = 30000 / 1001
NUM_SHARDS = 3
# 8 emotion codes of actor 1 and codes 1-2 of actor 2: 10 clips, 2 of them calm.
NUM_GENERATED = 10

# Bad inputs (actor 3), each with the kind of skip it must produce.
TRUNCATED = 'Actor_03/01-01-03-01-01-01-03.mp4'
ZERO_BYTES = 'Actor_03/01-01-04-01-01-01-03.mp4'
EMPTY_WAV = 'Actor_03/03-01-05-01-01-01-03.wav'  # beside a good video-only mp4
EMPTY_WAV_VIDEO = 'Actor_03/02-01-05-01-01-01-03.mp4'
NO_FACE = 'Actor_03/02-01-06-01-01-01-03.mp4'  # blank frames, audio from the wav beside it
NO_FACE_WAV = 'Actor_03/03-01-06-01-01-01-03.wav'
UNPARSABLE = 'Actor_03/take-final.mp4'
EXPECTED_SKIPS = {
  TRUNCATED: 'video',
  ZERO_BYTES: 'video',
  EMPTY_WAV: 'audio',
  NO_FACE: 'no face',
  UNPARSABLE: 'unparsable name',
}


def _write_blank_video(path, seconds=SECONDS):
  """A video-only mp4 of smooth grey frames: decodable, but no face anywhere."""
  rate = 30
  with av.open(path, mode='w') as container:
    stream = container.add_stream('libx264', rate=rate)
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, 'yuv420p'
    ramp = np.linspace(60, 200, WIDTH, dtype=np.uint8)[None, :, None]
    for _ in range(round(seconds * rate)):
      image = np.ascontiguousarray(np.broadcast_to(ramp, (HEIGHT, WIDTH, 3)))
      container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format='rgb24')))
    container.mux(stream.encode(None))


def _write_tone(path, seconds=1.0, sample_rate=48000):
  t = np.arange(int(seconds * sample_rate)) / sample_rate
  soundfile.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sample_rate)


def _make_input(root):
  good = synthetic.generate(
    str(root), num_actors=2, width=WIDTH, height=HEIGHT, seconds=SECONDS, max_clips=NUM_GENERATED
  )
  # generate() starts with the first take of each emotion; two other takes make every field vary.
  for i, (intensity, statement, repetition) in ((5, (2, 2, 2)), (6, (2, 1, 2))):
    name = dataclasses.replace(
      ravdess.parse_name(good[i]), intensity=intensity, statement=statement, repetition=repetition
    )
    renamed = os.path.join(os.path.dirname(good[i]), name.filename())
    os.rename(good[i], renamed)
    good[i] = renamed
  with open(good[0], 'rb') as f:
    good_bytes = f.read()
  os.makedirs(root / 'Actor_03')
  (root / TRUNCATED).write_bytes(good_bytes[: len(good_bytes) * 6 // 10])
  (root / ZERO_BYTES).write_bytes(b'')
  shutil.copy(good[1], root / EMPTY_WAV_VIDEO)
  soundfile.write(str(root / EMPTY_WAV), np.zeros(0, np.float32), 48000)
  _write_blank_video(str(root / NO_FACE))
  _write_tone(str(root / NO_FACE_WAV))
  shutil.copy(good[2], root / UNPARSABLE)
  (root / 'Actor_03' / 'notes.txt').write_text('not media')
  return good


def _settings(cache_dir, **overrides):
  settings = {
    'vgg16_weights': 'random',
    'vggish_handle': 'random',
    'cache_dir': str(cache_dir),
    'num_shards': NUM_SHARDS,
    'progress': False,
  }
  settings.update(overrides)
  return settings


def _read_shard(path):
  import tensorflow as tf

  records = []
  for serialized in tf.data.TFRecordDataset(path):
    context, sequences = schema.parse_sequence_example(serialized)
    context = {k: (v.numpy().decode() if v.dtype == tf.string else v.numpy().item()) for k, v in context.items()}
    records.append((context, {k: v.numpy() for k, v in sequences.items()}))
  return records


@pytest.fixture(scope='session')
def built(tmp_path_factory, cache_dir):
  input_dir = tmp_path_factory.mktemp('ravdess_synthetic')
  good = _make_input(input_dir)
  output_dir = tmp_path_factory.mktemp('tfrecords')
  info = build_tfrecords.build(str(input_dir), str(output_dir), **_settings(cache_dir, num_workers=2))
  return {'input_dir': input_dir, 'output_dir': output_dir, 'info': info, 'good': good}


@pytest.fixture(scope='session')
def records(built):
  out = built['output_dir']
  return {k: _read_shard(os.path.join(out, schema.shard_name(k, NUM_SHARDS))) for k in range(NUM_SHARDS)}


def test_every_context_field_matches_the_file_name(built, records):
  all_records = [r for shard in records.values() for r in shard]
  expected_ids = {
    ravdess.parse_name(p).clip_id for p in built['good'] if ravdess.parse_name(p).emotion_code != 2
  }  # calm is filtered out
  assert {c['clip_id'] for c, _ in all_records} == expected_ids
  assert len(all_records) == len(expected_ids) == 8
  takes = {(c['intensity'], c['statement'], c['repetition']) for c, _ in all_records}
  assert {(1, 1, 1), (2, 2, 2), (2, 1, 2)} <= takes
  for context, _ in all_records:
    name = ravdess.parse_name(context['video_source'])
    assert context['video_source'] == f'Actor_{name.actor:02d}/{name.filename()}'
    assert context['audio_source'] == context['video_source']  # AV mp4 only: audio from its track
    assert context['clip_id'] == name.clip_id
    assert context['label'] == ravdess.EMOTIONS.index(ravdess.EMOTION_NAMES[name.emotion_code])
    assert context['emotion_code'] == name.emotion_code
    assert context['actor'] == name.actor
    assert context['gender'] == (0 if name.actor % 2 else 1)
    assert (context['intensity'], context['statement'], context['repetition']) == (
      name.intensity,
      name.statement,
      name.repetition,
    )
    assert context['vocal_channel'] == 1
    assert context['fps'] == pytest.approx(45.0)


def test_frames_at_45_fps_and_repeats_share_embedding_rows(records):
  num_source = round(SECONDS * SOURCE_FPS)
  duration = num_source / SOURCE_FPS
  expected_frames = math.floor(duration * 45.0 + 1e-6)
  source_index = video.target_frame_indices(np.arange(num_source) / SOURCE_FPS, 45.0, duration)
  assert expected_frames == 54 and source_index.size == expected_frames
  for shard in records.values():
    for context, sequences in shard:
      visual = sequences[schema.VISUAL_KEY]
      audio = sequences[schema.AUDIO_KEY]
      assert visual.shape == (expected_frames, 512) == (context['num_frames'], schema.VISUAL_DIM)
      assert audio.shape == (5, 128) == (context['num_audio_frames'], schema.AUDIO_DIM)
      assert np.isfinite(visual).all() and np.isfinite(audio).all()
      # Target frames that sample the same source frame carry the very same row ...
      for j in np.unique(source_index):
        rows = visual[source_index == j]
        assert (rows == rows[0]).all()
      # ... so there are at most as many distinct rows as distinct source frames (two source
      # frames may still give the same crop when the drawn face does not move between them).
      num_distinct = len(np.unique(source_index))
      assert num_distinct // 2 < len(np.unique(visual, axis=0)) <= num_distinct < expected_frames
      assert 0 < context['face_detected_frames'] <= context['num_frames']


def test_embed_file_gives_exactly_the_rows_build_writes(built, records, stand_in_extractors):
  """Inference embeds a file with the code and settings of the shards: the very same rows."""
  vgg16, vggish = stand_in_extractors
  settings = embed.EmbedSettings.from_settings(built['info']['settings'])
  written = {c['clip_id']: (c, sequences) for shard in records.values() for c, sequences in shard}
  for clip_id in sorted(written)[:2]:
    context, sequences = written[clip_id]
    clip = embed.embed_file(str(built['input_dir'] / context['video_source']), settings, vgg16, vggish)
    np.testing.assert_array_equal(clip.visual, sequences[schema.VISUAL_KEY])
    np.testing.assert_array_equal(clip.audio, sequences[schema.AUDIO_KEY])
    assert (clip.num_frames, clip.face_detected_frames) == (context['num_frames'], context['face_detected_frames'])


def test_dataset_info_counts_and_shards(built, records):
  out = built['output_dir']
  info = json.loads((out / schema.DATASET_INFO).read_text())
  assert info['schema_version'] == schema.SCHEMA_VERSION
  assert info['feature_dims'] == {'visual_embedding': 512, 'audio_embedding': 128}
  assert info['settings']['fps'] == 45.0 and info['settings']['num_shards'] == NUM_SHARDS
  assert info['settings']['vgg16_weights'] == 'random' and info['extractors']['vgg16']['weights'] == 'random'
  assert info['extractors']['vggish']['handle'] == 'random'
  all_contexts = [c for shard in records.values() for c, _ in shard]
  assert info['num_clips'] == len(all_contexts) == 8
  assert [s['name'] for s in info['shards']] == [schema.shard_name(k, NUM_SHARDS) for k in range(NUM_SHARDS)]
  assert [s['num_clips'] for s in info['shards']] == [len(records[k]) for k in range(NUM_SHARDS)]
  emotions = [ravdess.EMOTION_NAMES[c['emotion_code']] for c in all_contexts]
  assert info['counts']['emotion'] == {e: emotions.count(e) for e in ravdess.EMOTIONS}
  assert info['counts']['emotion']['neutral'] == 2
  assert info['counts']['actor'] == {'01': 7, '02': 1}
  assert info['counts']['gender'] == {'male': 7, 'female': 1}
  detected = sum(c['face_detected_frames'] for c in all_contexts)
  frames = sum(c['num_frames'] for c in all_contexts)
  assert info['face_detection_rate'] == pytest.approx(detected / frames)
  assert info['face_detection_rate'] > 0.5
  assert info['filtered'] == {'song': 0, 'calm': 2}
  assert info['no_face_clips'] == []
  assert info['run']['clips_processed'] == 8 + 4  # the bad clips with parsable names were tried too
  assert not [n for n in os.listdir(out) if n.startswith(write_lib.TMP_PREFIX)]


def test_bad_inputs_skipped_with_reasons(built):
  info = json.loads((built['output_dir'] / schema.DATASET_INFO).read_text())
  skipped = {s['path']: s for s in info['skipped']}
  assert {p: s['kind'] for p, s in skipped.items()} == EXPECTED_SKIPS
  assert info['num_skipped'] == len(EXPECTED_SKIPS)
  assert 'no face detected in any frame' in skipped[NO_FACE]['reason']
  assert 'not a RAVDESS name' in skipped[UNPARSABLE]['reason']
  assert 'no audio samples' in skipped[EMPTY_WAV]['reason']
  for path in (TRUNCATED, ZERO_BYTES, EMPTY_WAV):
    assert os.path.basename(path) in skipped[path]['reason']
    assert str(built['input_dir']) not in skipped[path]['reason']  # reasons name relative paths


def test_deleted_shard_is_rebuilt_alone_and_byte_identical(built, cache_dir, tmp_path, monkeypatch):
  out = tmp_path / 'out'
  shutil.copytree(built['output_dir'], out)  # copy2 keeps the mtimes
  # As if built before --modalities existed: such a settings.json lacks it, and means audio,visual.
  manifest = json.loads((out / write_lib.SETTINGS_FILE).read_text())
  del manifest['settings']['modalities']
  (out / write_lib.SETTINGS_FILE).write_text(json.dumps(manifest))
  victim = out / schema.shard_name(1, NUM_SHARDS)
  original = victim.read_bytes()
  victim.unlink()
  others = {k: os.stat(out / schema.shard_name(k, NUM_SHARDS)).st_mtime_ns for k in (0, 2)}
  decoded = []
  real_extract_faces = video.extract_faces

  def counting_extract_faces(path, **kwargs):
    decoded.append(os.path.relpath(path, built['input_dir']))
    return real_extract_faces(path, **kwargs)

  monkeypatch.setattr(video, 'extract_faces', counting_extract_faces)
  info = build_tfrecords.build(str(built['input_dir']), str(out), **_settings(cache_dir, num_workers=0))
  assert victim.read_bytes() == original
  assert {k: os.stat(out / schema.shard_name(k, NUM_SHARDS)).st_mtime_ns for k in (0, 2)} == others
  assert info['run']['shards_built'] == 1 and info['run']['shards_kept'] == 2
  # Only the clips of shard 1 (clip i -> shard i % 3) were decoded again.
  shard_info = json.loads((out / write_lib.SHARD_INFO_DIR / 'ravdess-00001-of-00003.json').read_text())
  tried = [c['clip_id'] for c in shard_info['clips']] + [s['path'] for s in shard_info['skipped']]
  assert len(decoded) == len(tried) == info['run']['clips_processed'] == 4
  assert {ravdess.parse_name(p).clip_id for p in decoded} >= {c['clip_id'] for c in shard_info['clips']}
  assert info['num_clips'] == built['info']['num_clips']
  assert info['counts'] == built['info']['counts'] and info['skipped'] == built['info']['skipped']


def test_changed_settings_are_an_error(built, cache_dir):
  with pytest.raises(write_lib.SettingsMismatchError, match=r'settings\.fps: was 45\.0, now 30\.0.*--overwrite'):
    build_tfrecords.build(str(built['input_dir']), str(built['output_dir']), **_settings(cache_dir, fps=30))
  with pytest.raises(write_lib.SettingsMismatchError, match=r'settings\.num_shards: was 3, now 2'):
    build_tfrecords.build(str(built['input_dir']), str(built['output_dir']), **_settings(cache_dir, num_shards=2))


def test_multi_task_and_center_crop_for_faceless_clips(built, cache_dir, tmp_path):
  input_dir = tmp_path / 'in'
  os.makedirs(input_dir / 'Actor_03')
  for path in (NO_FACE, NO_FACE_WAV):
    shutil.copy(built['input_dir'] / path, input_dir / path)
  shutil.copy(built['good'][3], input_dir / 'Actor_03' / os.path.basename(built['good'][3]))
  out = tmp_path / 'out'
  settings = _settings(cache_dir, num_shards=2, num_tasks=2, num_workers=0, on_no_face='center_crop')
  first = build_tfrecords.build(str(input_dir), str(out), task_index=1, **settings)
  assert first['complete'] is False and first['missing_shards'] == [schema.shard_name(0, 2)]
  assert not (out / schema.DATASET_INFO).exists()
  with pytest.raises(build_tfrecords.BuildError, match='--merge_only needs every shard'):
    build_tfrecords.build(str(input_dir), str(out), merge_only=True, **settings)
  info = build_tfrecords.build(str(input_dir), str(out), task_index=0, **settings)
  assert info['num_clips'] == 2 and info['run']['shards_built'] == 1
  assert info['no_face_clips'] == ['01-06-01-01-01-03'] and info['skipped'] == []
  merged = build_tfrecords.build(str(input_dir), str(out), merge_only=True, **settings)
  assert merged['run']['clips_processed'] == 0 and merged['counts'] == info['counts']
  contexts = {c['clip_id']: c for k in range(2) for c, _ in _read_shard(out / schema.shard_name(k, 2))}
  faceless = contexts['01-06-01-01-01-03']
  assert faceless['face_detected_frames'] == 0 and faceless['num_frames'] == 54
  assert faceless['video_source'] == NO_FACE and faceless['audio_source'] == NO_FACE_WAV


def test_cli_missing_input_dir_exits_1_with_one_line(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO_ROOT, 'data_prep', 'build_tfrecords.py'),
      f'--input_dir={tmp_path / "nowhere"}',
      f'--output_dir={tmp_path / "out"}',
    ],
    check=False,
    capture_output=True,
    text=True,
    cwd=tmp_path,  # not the repo root: the script must find its package itself
    timeout=60,
  )
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and 'does not exist' in lines[0] and 'nowhere' in lines[0]
  assert 'Traceback' not in result.stderr


def test_broken_opencv_is_one_clear_error_before_any_worker_starts(built, cache_dir, tmp_path, monkeypatch):
  def no_cascade(**_):
    raise AttributeError("module 'cv2' has no attribute 'CascadeClassifier'")

  monkeypatch.setattr(video, 'FaceDetector', no_cascade)
  with pytest.raises(build_tfrecords.BuildError, match='opencv-python-headless<5'):
    build_tfrecords.build(str(built['input_dir']), str(tmp_path / 'out'), **_settings(cache_dir, num_workers=2))


def test_real_ravdess_sample_goes_through(cache_dir, tmp_path):
  """The real sample: a 640x480 AV clip with 44.1 kHz AAC, and wavs without video (skipped)."""
  sample = os.path.join(REPO_ROOT, '..', 'shared', 'data', 'ravdess-sample')
  if not os.path.isdir(sample):
    pytest.skip('the real RAVDESS sample (../shared/data/ravdess-sample) is not here')
  info = build_tfrecords.build(sample, str(tmp_path / 'out'), **_settings(cache_dir, num_shards=1, num_workers=0))
  assert info['num_clips'] == 1
  [(context, sequences)] = _read_shard(str(tmp_path / 'out' / schema.shard_name(0, 1)))
  assert context['clip_id'] == '01-07-02-02-01-01' and context['label'] == ravdess.EMOTIONS.index('disgust')
  assert context['audio_source'] == 'audio/Actor_01/03-01-07-02-02-01-01.wav'  # The wav wins over the mp4 track.
  assert context['num_frames'] == sequences[schema.VISUAL_KEY].shape[0] == 180  # 4.0 s at 45 fps.
  assert context['face_detected_frames'] >= 170  # A real face, found on (almost) every frame.
  assert sequences[schema.AUDIO_KEY].shape == (5, 128)
  kinds = {s['kind'] for s in info['skipped']}
  assert kinds == {'no video source'} and info['filtered']['calm'] == 16


def test_summary_is_in_plain_words(built):
  lines = build_tfrecords.summary_lines(built['info'], str(built['output_dir']))
  text = '\n'.join(lines)
  # 8 good clips, 2 calm ones and 4 bad ones with RAVDESS names; the file named take-final.mp4 is no clip.
  assert lines[0] == 'Found 14 clips: 12 usable; left out on purpose: 2 calm clips (--include_calm keeps them).'
  assert 'Wrote 8 clips in 3 shards' in text
  assert '1 clip with no face in any frame' in text and '1 file not named like a RAVDESS file' in text
  assert '2 clips whose video cannot be read' in text and '1 clip whose audio cannot be read' in text
  assert "{'" not in text  # No Python dict.
  assert not re.search(r'(?<![\d.,])1 (clip|shard|file|frame|worker)s\b', text), text  # '1 clip', not '1 clips'.
  assert lines[-1] == (
    'WARNING: features come from untrained stand-in extractors (--vgg16_weights=random, --vggish_handle=random): '
    'for tests only, not for results.'
  )
  assert build_tfrecords.count(1, 'clip') == '1 clip' and build_tfrecords.count(1440, 'clip') == '1,440 clips'


def _check_audio_only_records(out, num_shards):
  contexts = []
  for k in range(num_shards):
    for context, sequences in _read_shard(str(out / schema.shard_name(k, num_shards))):
      assert context['num_frames'] == context['face_detected_frames'] == 0 and context['video_source'] == ''
      assert sequences[schema.VISUAL_KEY].shape == (0, 512) and sequences[schema.AUDIO_KEY].shape == (5, 128)
      assert context['audio_source'].endswith('.wav')
      contexts.append(context)
  return contexts


def test_audio_only_dataset_from_wavs_alone(cache_dir, tmp_path):
  input_dir = tmp_path / 'Audio_Speech_Actors_01-24'
  for emotion_code, actor in ((1, 1), (5, 1), (2, 1), (4, 2), (8, 2)):  # Calm (2) is left out.
    name = ravdess.ClipName(ravdess.MODALITY_AUDIO_ONLY, 1, emotion_code, 1, 1, 1, actor)
    path = input_dir / f'Actor_{actor:02d}' / name.filename()
    synthetic.write_recording(str(path), emotion_codes=(emotion_code,), change_times=(), seconds=1.5, actor=actor)
  video_only = input_dir / 'Actor_02' / '02-01-03-01-01-01-02.mp4'
  synthetic.write_recording(str(video_only), emotion_codes=(3,), change_times=(), seconds=1.0, audio=False)
  out = tmp_path / 'out'
  # No VGG16 is loaded: 'imagenet' weights would need a download this machine cannot make.
  settings = _settings(cache_dir, modalities='audio', vgg16_weights='imagenet', num_shards=2, num_workers=0)
  info = build_tfrecords.build(str(input_dir), str(out), **settings)
  assert info['settings']['modalities'] == ['audio'] and set(info['extractors']) == {'vggish'}
  assert info['num_clips'] == 4 and info['num_frames'] == 0 and info['no_face_clips'] == []
  assert info['discovery'] == {'clips_found': 6, 'clips_usable': 4, 'clips_selected': 4}
  assert [s['kind'] for s in info['skipped']] == ['no audio source']  # The video-only mp4 has no sound.
  on_disk = json.loads((out / schema.DATASET_INFO).read_text())
  assert on_disk['settings']['modalities'] == ['audio'] and on_disk['num_frames'] == 0
  contexts = _check_audio_only_records(out, 2)
  assert sorted(c['emotion_code'] for c in contexts) == [1, 4, 5, 8]
  lines = build_tfrecords.summary_lines(info, str(out))
  assert 'Audio only (--modalities=audio): every record has an empty visual sequence (0 frames).' in lines
  assert lines[-1].startswith('WARNING:') and '--vggish_handle=random' in lines[-1] and 'vgg16' not in lines[-1]
  with pytest.raises(build_tfrecords.BuildError, match='--modalities=visual cannot be built'):
    build_tfrecords.build(str(input_dir), str(tmp_path / 'other'), **dict(settings, modalities='visual'))


def test_audio_only_dataset_from_the_real_sample_wavs(cache_dir, tmp_path):
  sample = os.path.join(REPO_ROOT, '..', 'shared', 'data', 'ravdess-sample')
  if not os.path.isdir(sample):
    pytest.skip('the real RAVDESS sample (../shared/data/ravdess-sample) is not here')
  settings = _settings(cache_dir, modalities='audio', num_shards=1, num_workers=0, max_clips=6)
  info = build_tfrecords.build(sample, str(tmp_path / 'out'), **settings)
  # 120 wavs of two actors, 16 of them calm; the AV mp4 is the same recording as one of the wavs.
  assert info['discovery'] == {'clips_found': 120, 'clips_usable': 104, 'clips_selected': 6}
  assert info['num_clips'] == 6 and info['skipped'] == [] and info['filtered'] == {'song': 0, 'calm': 16}
  contexts = _check_audio_only_records(tmp_path / 'out', 1)
  assert all(c['audio_source'].startswith('audio/Actor_0') for c in contexts)

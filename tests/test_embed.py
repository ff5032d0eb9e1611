"""Tests for data_prep.embed on SYNTHETIC media: any file in, embeddings (or plain-words reasons) out.

The extractors are the untrained offline stand-ins, so only shapes, reasons, times and
equalities are checked here, never what the embeddings mean.
"""

import os

import av
import numpy as np
import pytest

from data_prep import audio, embed, synthetic

SMALL = {'width': 160, 'height': 120}
RAVDESS_SAMPLE = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'ravdess-sample')


def _write_blank_video(path, seconds=1.0, width=160, height=120):
  """A video-only mp4 of a smooth grey ramp: decodable, no face anywhere."""
  with av.open(str(path), mode='w') as container:
    stream = container.add_stream('libx264', rate=30)
    stream.width, stream.height, stream.pix_fmt = width, height, 'yuv420p'
    ramp = np.linspace(60, 200, width, dtype=np.uint8)[None, :, None]
    image = np.ascontiguousarray(np.broadcast_to(ramp, (height, width, 3)))
    for _ in range(round(seconds * 30)):
      container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format='rgb24')))
    container.mux(stream.encode(None))


@pytest.fixture(scope='module')
def detector():
  return embed.make_detector(embed.EmbedSettings())


@pytest.fixture(scope='module')
def recording(tmp_path_factory, stand_in_extractors, detector):
  """A 20 s SYNTHETIC recording (10 fps video, two emotion changes) embedded at 10 target frames/s."""
  path = str(tmp_path_factory.mktemp('recording') / 'talk.mp4')
  segments = synthetic.write_recording(path, seconds=20.0, fps=10.0, **SMALL)
  settings = embed.EmbedSettings(fps=10.0)
  vgg16, vggish = stand_in_extractors
  return {'segments': segments, 'embedding': embed.embed_file(path, settings, vgg16, vggish, detector)}


def test_short_clip_has_both_modalities_and_its_whole_window_is_the_clip(tmp_path, stand_in_extractors, detector):
  vgg16, vggish = stand_in_extractors
  path = str(tmp_path / 'clip.mp4')
  synthetic.write_recording(path, emotion_codes=(5,), change_times=(), seconds=2.0, **SMALL)
  clip = embed.embed_file(path, None, vgg16, vggish, detector)
  assert clip.reasons == {} and clip.face_found
  assert clip.num_frames == 90  # 60 frames at 29.97 fps = 2.002 s -> floor(2.002 * 45)
  assert clip.visual.shape == (90, 512) and clip.audio.shape == (5, 128)  # Padded to 5 s.
  assert clip.face_boxes.shape == (90, 4) and clip.face_detected.sum() == clip.face_detected_frames >= 80
  assert (clip.face_boxes[:, 2] > 30).all()  # Face-sized boxes, in the source's 160 x 120 pixels.
  assert (clip.source.width, clip.source.height, clip.source.sample_rate) == (160, 120, 48000)
  assert clip.source.fps == pytest.approx(29.97, abs=0.01)
  assert clip.source.duration == pytest.approx(2.0, abs=0.05)
  [window] = embed.embed_windows(clip, vggish, window_seconds=4.0, hop_seconds=1.0)
  assert (window.start, window.end) == (0.0, clip.source.duration)
  assert window.reasons == {} and (window.first_frame, window.num_frames) == (0, 90)
  np.testing.assert_array_equal(window.visual, clip.visual)
  np.testing.assert_array_equal(window.audio, clip.audio)


def test_video_without_audio_track_gives_visual_only(tmp_path, stand_in_extractors, detector):
  vgg16, vggish = stand_in_extractors
  path = str(tmp_path / 'silent.mkv')
  synthetic.write_recording(path, emotion_codes=(3,), change_times=(), seconds=1.5, audio=False, **SMALL)
  clip = embed.embed_file(path, None, vgg16, vggish, detector)
  assert clip.audio is None and clip.reasons == {'audio': 'no audio track'}
  assert clip.visual.shape == (clip.num_frames, 512) and clip.num_frames > 60
  assert clip.source.sample_rate is None and clip.source.audio_path is None
  [window] = embed.embed_windows(clip, vggish)
  assert window.audio is None and window.reasons == {'audio': 'no audio track'}


@pytest.mark.parametrize('extension', ['.wav', '.flac', '.ogg', '.mp3', '.m4a'])
def test_audio_files_give_audio_only(tmp_path, extension):
  path = str(tmp_path / f'voice{extension}')
  synthetic.write_recording(path, emotion_codes=(4,), change_times=(), seconds=1.5)
  prepared = embed.prepare(path)
  assert prepared.faces is None and prepared.reasons == {'visual': 'no video stream'}
  assert prepared.source.sample_rate == 48000 and prepared.source.width is None
  # Lossy codecs pad a little at the ends; the voice itself is there.
  assert prepared.waveform.shape[0] == pytest.approx(1.5 * 16000, abs=0.05 * 16000)
  assert 0.01 < np.abs(prepared.waveform).max() <= 1.0


def test_wav_embeds_audio_only(tmp_path, stand_in_extractors):
  vgg16, vggish = stand_in_extractors
  path = str(tmp_path / 'voice.wav')
  synthetic.write_recording(path, emotion_codes=(6,), change_times=(), seconds=6.0)
  clip = embed.embed_file(path, None, vgg16, vggish)
  assert clip.visual is None and clip.reasons == {'visual': 'no video stream'}
  assert clip.audio.shape == (6, 128) and clip.num_frames == 0  # 6 s: longer than the 5 s padding.


def test_faceless_video_has_no_visual_unless_centre_crops_are_asked_for(tmp_path, stand_in_extractors, detector):
  vgg16, vggish = stand_in_extractors
  path = str(tmp_path / 'wall.mp4')
  _write_blank_video(path)
  clip = embed.embed_file(path, None, vgg16, vggish, detector)
  assert clip.visual is None and clip.audio is None
  assert clip.reasons == {'visual': 'no face found in any frame', 'audio': 'no audio track'}
  assert clip.num_frames == 45 and clip.face_detected_frames == 0 and not clip.face_found
  assert (clip.face_boxes == [20, 0, 120, 120]).all()  # The centre square of 160 x 120.
  centre = embed.embed_file(path, embed.EmbedSettings(on_no_face='center_crop'), vgg16, vggish, detector)
  assert centre.visual.shape == (45, 512) and 'visual' not in centre.reasons


def test_unreadable_files_raise_one_value_error_naming_the_file(tmp_path):
  good = str(tmp_path / 'good.mp4')
  synthetic.write_recording(good, emotion_codes=(1,), change_times=(), seconds=1.5, **SMALL)
  data = open(good, 'rb').read()
  cases = {
    'truncated.mp4': data[: len(data) // 2],
    'empty.mp4': b'',
    'noise.wav': bytes(range(256)) * 8,  # No sound file's header.
    'notes.txt': b'not media',
  }
  for name, content in cases.items():
    (tmp_path / name).write_bytes(content)
  for name in [*cases, 'missing.mov']:
    with pytest.raises(ValueError, match=name.replace('.', r'\.')) as raised:
      embed.prepare(str(tmp_path / name))
    assert isinstance(raised.value, embed.MediaError)
    assert '\n' not in str(raised.value) and str(raised.value).endswith('.')
  with pytest.raises(ValueError, match=r'notes\.txt is not a supported media file: expected one of \.mp4'):
    embed.prepare(str(tmp_path / 'notes.txt'))


@pytest.mark.parametrize('rotation', [0, 90])
def test_portrait_video(tmp_path, stand_in_extractors, detector, rotation):
  """240 x 320 as shown; stored upright, or stored sideways with a display rotation as phones do."""
  vgg16, vggish = stand_in_extractors
  path = str(tmp_path / 'phone.mov')
  synthetic.write_recording(
    path, emotion_codes=(8,), change_times=(), seconds=1.5, width=240, height=320, rotation=rotation
  )
  clip = embed.embed_file(path, None, vgg16, vggish, detector)
  assert (clip.source.width, clip.source.height, clip.source.rotation) == (240, 320, rotation)
  assert clip.reasons == {} and clip.face_detected_frames >= 0.6 * clip.num_frames  # Sideways: none.
  assert clip.visual.shape == (clip.num_frames, 512) and clip.audio.shape == (5, 128)
  x, y, w, h = np.median(clip.face_boxes, axis=0)
  assert 0 <= x and x + w <= 240 and 0 <= y and y + h <= 320 and w > 60


def test_window_bounds():
  assert embed.window_bounds(20.0, 4.0, 1.0) == [(float(k), k + 4.0) for k in range(17)]
  # The last window ends with the recording, up to half a hop longer or shorter than the others.
  assert embed.window_bounds(20.4, 4.0, 1.0)[-1] == (16.0, 20.4)
  assert embed.window_bounds(20.6, 4.0, 1.0)[-2:] == [(16.0, 20.0), (17.0, 20.6)]
  assert embed.window_bounds(3.0, 4.0, 1.0) == [(0.0, 3.0)]
  assert embed.window_bounds(10.0, 4.0, 2.5) == [(0.0, 4.0), (2.5, 6.5), (5.0, 10.0)]
  with pytest.raises(ValueError, match='positive'):
    embed.window_bounds(10.0, 4.0, 0.0)


def test_windows_of_a_recording(recording, stand_in_extractors):
  _, vggish = stand_in_extractors
  clip = recording['embedding']
  assert [(s.start, s.end, s.emotion) for s in recording['segments']] == [
    (0.0, 7.0, 'neutral'),
    (7.0, 14.0, 'anger'),
    (14.0, 20.0, 'happiness'),
  ]
  assert clip.source.duration == pytest.approx(20.0, abs=0.05)
  assert clip.num_frames == 200 and clip.face_detected_frames >= 180
  windows = embed.embed_windows(clip, vggish, window_seconds=4.0, hop_seconds=1.0)
  assert [w.start for w in windows] == [float(k) for k in range(17)]
  assert [w.end for w in windows[:-1]] == [k + 4.0 for k in range(16)] and windows[-1].end == clip.source.duration
  for k, window in enumerate(windows):
    assert window.reasons == {}
    assert (window.first_frame, window.num_frames) == (10 * k, 40)  # Target frames k / 10 s in [start, end).
    np.testing.assert_array_equal(window.visual, clip.visual[10 * k : 10 * k + 40])
    assert window.audio.shape == (5, 128)  # 4 s of audio padded to 5 s, as a training clip.
  # A window's audio is VGGish of its own slice of the waveform (not rows cut from the whole file's).
  np.testing.assert_array_equal(windows[3].audio, vggish(audio.pad_waveform(clip.waveform[48000:112000], 5.0)))
  assert not np.allclose(windows[1].audio[:4], clip.audio[1:5])

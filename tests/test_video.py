"""Tests for data_prep.video: timestamp sampling, face boxes, crops and bad files."""

import fractions
import os

import av
import cv2
import numpy as np
import pytest
import soundfile

from data_prep import video

RAVDESS_SAMPLE = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'ravdess-sample')
REAL_CLIP = os.path.join(RAVDESS_SAMPLE, 'video', 'Actor_01', '01-01-07-02-02-01-01.mp4')
NTSC = fractions.Fraction(30000, 1001)  # 29.97 fps, as RAVDESS

# The two-tone test clip: frame i has value 20 + 2 i left of LEFT_WIDTH and 220 right of it;
# frames 10 and 90 carry a black mark in the top and bottom right corners (outside every crop).
NUM_SOURCE = 105  # 3.5 s at 29.97 fps
WIDTH, HEIGHT, LEFT_WIDTH = 320, 240, 160
MARKED = {10: (slice(0, 30), slice(290, 320)), 90: (slice(210, 240), slice(290, 320))}


def left_value(i):
  return 20 + 2 * i


def write_mp4(path, frames, rate=NTSC, faststart=False):
  """Encodes [height, width] uint8 gray frames as an H.264 mp4 with PyAV."""
  options = {'movflags': 'faststart'} if faststart else {}
  with av.open(str(path), mode='w', format='mp4', options=options) as container:
    stream = container.add_stream('libx264', rate=rate)
    stream.height, stream.width = frames[0].shape
    stream.pix_fmt = 'yuv420p'
    stream.options = {'preset': 'ultrafast', 'crf': '10'}
    for index, gray in enumerate(frames):
      frame = av.VideoFrame.from_ndarray(np.repeat(gray[:, :, None], 3, axis=2), format='rgb24')
      frame.pts = index
      frame.time_base = 1 / rate
      container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def two_tone_frames():
  frames = []
  for i in range(NUM_SOURCE):
    frame = np.full([HEIGHT, WIDTH], 220, np.uint8)
    frame[:, :LEFT_WIDTH] = left_value(i)
    if i in MARKED:
      frame[MARKED[i]] = 0
    frames.append(frame)
  return frames


@pytest.fixture(scope='session')
def two_tone_clip(tmp_path_factory):
  """3.5 s at 29.97 fps, no face anywhere; each frame's left half says which frame it is."""
  path = tmp_path_factory.mktemp('video') / 'two_tone.mp4'
  write_mp4(path, two_tone_frames())
  return str(path)


@pytest.fixture(scope='session')
def real_clip():
  if not os.path.isfile(REAL_CLIP):
    pytest.skip('the real RAVDESS sample (../shared/data/ravdess-sample) is not here')
  return REAL_CLIP


def test_target_frame_indices_45_over_29_97():
  source_times = np.arange(NUM_SOURCE) / float(NTSC)
  indices = video.target_frame_indices(source_times, 45.0, 3.5)
  assert indices.shape == (157,)
  assert np.all(np.diff(indices) >= 0)
  # Nearest by timestamp, checked by brute force.
  target_times = np.arange(157) / 45.0
  distance = np.abs(target_times[:, None] - source_times[None, :])  # [targets, sources]
  np.testing.assert_allclose(distance[np.arange(157), indices], distance.min(axis=1))
  # Every source frame is used, and about one target in three repeats a source frame.
  assert len(np.unique(indices)) == NUM_SOURCE
  repeats = 157 - NUM_SOURCE
  assert 0.3 < repeats / 157 < 0.36


def test_target_frame_indices_below_source_rate_and_edges():
  source_times = np.arange(90) / 30.0  # 3 s at 30 fps
  indices = video.target_frame_indices(source_times, 10.0, 3.0)
  np.testing.assert_array_equal(indices, np.arange(30) * 3)
  # Targets past the last frame take the last frame; a tiny duration still gives frame 0.
  np.testing.assert_array_equal(video.target_frame_indices(np.array([0.0, 0.5]), 10.0, 2.0)[-5:], [1] * 5)
  np.testing.assert_array_equal(video.target_frame_indices(np.array([0.0]), 45.0, 0.03), [0])
  assert video.target_frame_indices(np.array([0.0]), 45.0, 0.01).shape == (0,)


def test_extract_faces_samples_by_timestamp_and_reuses_rows(two_tone_clip):
  faces = video.extract_faces(two_tone_clip, fps=45.0, image_size=48)
  assert faces.num_frames == 157
  assert faces.frame_index.shape == (157,)
  assert faces.crops.shape == (NUM_SOURCE, 48, 48, 3) and faces.crops.dtype == np.uint8
  assert faces.source_fps == pytest.approx(29.97, abs=0.01)
  assert set(faces.timings) == {'decode', 'face'}
  # Each target frame's row shows the source frame nearest in time (its left half encodes it).
  expected_source = video.target_frame_indices(np.arange(NUM_SOURCE) / float(NTSC), 45.0, 157 / 45.0)
  shown_source = (faces.crops[faces.frame_index, 20, 5, 0].astype(float) - 20) / 2
  np.testing.assert_allclose(shown_source, expected_source, atol=1.0)
  # Repeated source frames share one row: rows are exactly the distinct source frames.
  assert len(np.unique(faces.frame_index)) == NUM_SOURCE


def test_no_face_gives_centre_crops(two_tone_clip):
  faces = video.extract_faces(two_tone_clip, fps=45.0, image_size=48)
  assert not faces.face_found
  assert faces.face_detected_frames == 0
  # The centre 240x240 square spans 120 px of each half: left 24 columns dark, right 24 bright.
  crops = faces.crops.astype(int)
  np.testing.assert_allclose(crops[:, :, 28:, :], 220, atol=3)
  np.testing.assert_allclose(crops[:, :, :20, 0].mean(axis=(1, 2)), [left_value(i) for i in range(NUM_SOURCE)], atol=3)
  # Grayscale copied into 3 channels.
  np.testing.assert_array_equal(faces.crops[..., 0], faces.crops[..., 2])


class _FakeDetector:
  """Finds a 'face' only in the marked source frames: 10 (in the left half) and 90 (in the right)."""

  def detect(self, gray):
    if gray[MARKED[10]].mean() < 50:
      return (20, 40, 100, 100)
    if gray[MARKED[90]].mean() < 50:
      return (200, 40, 100, 100)
    return None


def test_frames_without_detection_reuse_nearest_box(two_tone_clip):
  faces = video.extract_faces(two_tone_clip, fps=45.0, image_size=48, detector=_FakeDetector())
  assert faces.face_found
  source = video.target_frame_indices(np.arange(NUM_SOURCE) / float(NTSC), 45.0, 157 / 45.0)
  assert faces.face_detected_frames == int(np.isin(source, [10, 90]).sum())
  # Row r is source frame r: before frame 50 the box of frame 10 (left half) is nearest, after it frame 90's.
  crop_values = faces.crops[:, 24, 24, 0].astype(int)
  np.testing.assert_allclose(crop_values[:50], [left_value(i) for i in range(50)], atol=3)
  np.testing.assert_allclose(crop_values[51:], 220, atol=3)


def test_rgb_crops_keep_colour(tmp_path):
  frames = []
  for _ in range(10):
    frame = np.zeros([64, 64, 3], np.uint8)
    frame[..., 0] = 200  # red
    frames.append(frame)
  path = tmp_path / 'red.mp4'
  with av.open(str(path), mode='w', format='mp4') as container:
    stream = container.add_stream('libx264', rate=30)
    stream.height, stream.width, stream.pix_fmt = 64, 64, 'yuv420p'
    for index, rgb in enumerate(frames):
      frame = av.VideoFrame.from_ndarray(rgb, format='rgb24')
      frame.pts = index
      container.mux(stream.encode(frame))
    container.mux(stream.encode(None))
  faces = video.extract_faces(str(path), fps=30.0, image_size=32, rgb=True)
  assert faces.crops.shape == (10, 32, 32, 3)
  red, green, blue = faces.crops[..., 0].mean(), faces.crops[..., 1].mean(), faces.crops[..., 2].mean()
  assert red > 150 and green < 50 and blue < 50


def test_face_detector_finds_largest_face_at_full_resolution(real_clip):
  with av.open(real_clip) as container:
    gray = next(container.decode(video=0)).to_ndarray(format='gray')  # [480, 640]
  full = video.FaceDetector(detect_width=640).detect(gray)
  assert full is not None
  x, y, w, h = full
  assert w > 100 and 0 <= x and x + w <= 640 and 0 <= y and y + h <= 480
  # Detecting on a half-size copy gives about the same box in full-resolution pixels.
  half = video.FaceDetector(detect_width=320).detect(gray)
  assert half is not None
  np.testing.assert_allclose(half, full, atol=0.1 * w)
  # Two faces, one half the size of the other: the larger one wins, mapped back to full resolution.
  canvas = np.zeros([480, 960], np.uint8)
  canvas[:, :640] = gray
  canvas[:240, 640:] = cv2.resize(gray, (320, 240), interpolation=cv2.INTER_AREA)
  cascade = video.FaceDetector(detect_width=960).cascade
  assert len(cascade.detectMultiScale(canvas, 1.3, 5)) >= 2
  largest = video.FaceDetector(detect_width=640).detect(canvas)
  np.testing.assert_allclose(largest, full, atol=0.1 * w)


def test_extract_faces_real_clip(real_clip):
  faces = video.extract_faces(
    real_clip, fps=45.0, image_size=48, detector=video.FaceDetector(detect_width=320, min_face_fraction=0.1)
  )
  assert faces.num_frames == 180  # 120 frames at 29.97 fps = 4.004 s
  assert faces.crops.shape == (120, 48, 48, 3)
  assert faces.frame_index.shape == (180,)
  assert faces.face_found and faces.face_detected_frames >= 0.9 * 180


def test_extract_faces_synthetic_clip(tmp_path):
  synthetic = pytest.importorskip('data_prep.synthetic')
  path = str(tmp_path / '01-01-05-01-01-01-01.mp4')
  synthetic.write_clip(
    path, emotion_code=5, intensity=1, statement=1, repetition=1, actor=1, width=320, height=240, seconds=1.5, seed=0
  )
  faces = video.extract_faces(path, fps=45.0, image_size=48)
  assert faces.num_frames == 67  # floor(45 frames / 29.97 fps * 45)
  assert faces.crops.shape == (45, 48, 48, 3)
  assert faces.frame_index.shape == (67,)
  assert faces.face_found and faces.face_detected_frames >= 0.8 * 67


@pytest.mark.parametrize('faststart', [False, True])
def test_truncated_mp4_raises_value_error(tmp_path, faststart):
  path = tmp_path / 'clip.mp4'
  write_mp4(path, two_tone_frames()[:60], faststart=faststart)
  data = path.read_bytes()
  truncated = tmp_path / 'truncated.mp4'
  truncated.write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match='truncated.mp4'):
    video.extract_faces(str(truncated))


def test_zero_byte_and_audio_only_files_raise_value_error(tmp_path):
  empty = tmp_path / 'empty.mp4'
  empty.write_bytes(b'')
  with pytest.raises(ValueError, match='empty.mp4'):
    video.extract_faces(str(empty))
  wav = tmp_path / 'sound.wav'
  soundfile.write(str(wav), np.zeros(1600, np.float32), 16000)
  with pytest.raises(ValueError, match='no video stream'):
    video.extract_faces(str(wav))
  with pytest.raises(ValueError, match='missing.mp4'):
    video.extract_faces(str(tmp_path / 'missing.mp4'))


@pytest.mark.parametrize('fps', [45.0, 29.97, 10.0, 7.3])
@pytest.mark.parametrize('declared', [True, False])
def test_target_sampler_streams_target_frame_indices(fps, declared):
  """Pushed one time at a time, the sampler assigns what target_frame_indices computes at once."""
  rng = np.random.default_rng(int(fps * 10) + declared)
  for _ in range(20):
    steps = rng.choice([0.0, 1 / 60, 1 / 30, 1 / 29.97, 0.05, 0.2], size=rng.integers(1, 80))
    times = np.concatenate([[0.0], np.cumsum(steps)])  # Repeated timestamps included.
    # A declared duration may end anywhere; without one, it is where the decoded frames end.
    duration = times[-1] + (rng.choice([1 / 30, 0.0, -0.1, 0.5]) if declared else 1 / 30)
    expected = video.target_frame_indices(times, fps, duration)
    sampler = video.TargetSampler(fps, video.num_targets(duration, fps) if declared else None)
    decided = []
    for time in times:
      decided += sampler.push(float(time))
      # Frames are let go in order, and only once no later target can take them.
      assert [frame for frame, _ in decided] == list(range(len(decided)))
    decided += sampler.finish(video.num_targets(duration, fps))
    np.testing.assert_array_equal(sampler.source_index, expected)
    assert [frame for frame, sampled in decided if sampled] == sorted(set(expected.tolist()))
    assert len(decided) == len(times)


def test_frames_waiting_for_a_box_stay_within_the_memory_budget(two_tone_clip):
  """Frames 0-9 wait for frame 10's box; a budget of 3 frames forces a second decode for the rest."""
  kept = video.extract_faces(two_tone_clip, fps=45.0, image_size=48, detector=_FakeDetector())
  frame_bytes = WIDTH * HEIGHT
  tight = video.extract_faces(
    two_tone_clip, fps=45.0, image_size=48, detector=_FakeDetector(), max_pending_bytes=3 * frame_bytes
  )
  assert kept.redecoded_frames == 0 and kept.peak_pending_bytes >= 10 * frame_bytes
  assert tight.redecoded_frames >= 7 and tight.peak_pending_bytes <= 4 * frame_bytes
  np.testing.assert_array_equal(tight.crops, kept.crops)
  np.testing.assert_array_equal(tight.boxes, kept.boxes)
  np.testing.assert_array_equal(tight.frame_index, kept.frame_index)
  # Boxes in source pixels: frames up to the midpoint take frame 10's, later ones frame 90's.
  assert tuple(kept.boxes[0]) == tuple(kept.boxes[49]) == (20, 40, 100, 100)
  assert tuple(kept.boxes[51]) == tuple(kept.boxes[-1]) == (200, 40, 100, 100)
  assert kept.detected.sum() == 2 and kept.detected[10] and kept.detected[90]
  # No face anywhere: every frame waits to the end, the spilled ones keep their centre crops.
  faceless = video.extract_faces(two_tone_clip, fps=45.0, image_size=48, max_pending_bytes=3 * frame_bytes)
  reference = video.extract_faces(two_tone_clip, fps=45.0, image_size=48)
  assert not faceless.face_found and faceless.redecoded_frames == 0
  np.testing.assert_array_equal(faceless.crops, reference.crops)
  assert (faceless.boxes == [40, 0, 240, 240]).all()


def test_rotated_phone_video_is_turned_upright(tmp_path):
  """A portrait video stored sideways with a display rotation, as phones write it."""
  upright = np.full([96, 64], 200, np.uint8)  # Portrait: 64 wide, 96 high.
  upright[16:32, :32] = 20  # A dark block at the top left of the centre square.
  path = tmp_path / 'phone.mp4'
  with av.open(str(path), mode='w', format='mp4') as container:
    stream = container.add_stream('libx264', rate=30)
    stream.width, stream.height, stream.pix_fmt = 96, 64, 'yuv420p'
    stream.set_display_rotation(90)
    stored = np.ascontiguousarray(np.rot90(upright, k=-1))  # Turned clockwise; the player turns it back.
    for index in range(15):
      frame = av.VideoFrame.from_ndarray(np.repeat(stored[:, :, None], 3, axis=2), format='rgb24')
      frame.pts = index
      container.mux(stream.encode(frame))
    container.mux(stream.encode(None))
  faces = video.extract_faces(str(path), fps=30.0, image_size=32)
  assert (faces.width, faces.height, faces.rotation) == (64, 96, 90)
  assert tuple(faces.boxes[0]) == (0, 16, 64, 64)  # The centre square of the upright frame.
  crop = faces.crops[0, :, :, 0]  # [32, 32]: the dark block is its top-left quarter.
  assert crop[2, 2] < 60 and crop[2, 29] > 150 and crop[29, 2] > 150

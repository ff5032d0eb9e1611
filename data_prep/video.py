"""Video stage: decode a video with PyAV, sample it by timestamp and crop one face per frame.

The thesis extracted every frame at 45 fps to JPEG files with FFmpeg and ran the Haar cascade
on each at full resolution. Here a video is decoded once, in a stream: each target time
`k / fps` takes the nearest source frame by timestamp, and every DISTINCT source frame is
face-cropped once, as soon as it is known to be sampled: at 45 fps over a 29.97 fps source
about one target in three repeats a source frame, and `VideoFaces.frame_index` lets the
caller embed that frame once too. Only the crops and the few frames still waiting for a face
box are kept, so a minute-long recording needs little more memory than a clip.

Any problem with one file raises `ValueError` with one sentence naming the file, so the
caller can skip the clip and record why.
"""

import bisect
import collections
import dataclasses
import math
import time as time_lib

import av
import cv2
import numpy as np

from data_prep import media

HAAR_CASCADE = 'haarcascade_frontalface_default.xml'


def target_frame_indices(source_times: np.ndarray, fps: float, duration: float) -> np.ndarray:
  """Index of the nearest source frame for each target time `k / fps`.

  Args:
    source_times: [num_source] presentation times in seconds, non-decreasing.
    fps: target frame rate.
    duration: clip duration in seconds; targets are k = 0 .. floor(duration * fps) - 1.

  Returns:
    [num_targets] int64 indices into `source_times`; ties go to the earlier frame.
  """
  source_times = np.asarray(source_times, dtype=np.float64)
  if source_times.ndim != 1 or source_times.size == 0:
    raise ValueError(f'source_times must be a non-empty 1-D array, got shape {source_times.shape}.')
  num_targets = max(math.floor(duration * fps + 1e-6), 0)
  target_times = np.arange(num_targets, dtype=np.float64) / fps  # [num_targets]
  last = source_times.size - 1
  right = np.clip(np.searchsorted(source_times, target_times, side='left'), 0, last)
  left = np.clip(right - 1, 0, last)
  choose_left = (target_times - source_times[left]) <= (source_times[right] - target_times)
  return np.where(choose_left, left, right).astype(np.int64)


class FaceDetector:
  """OpenCV Haar frontal-face cascade run on a downscaled grayscale copy of a frame.

  Detecting at <= `detect_width` pixels wide instead of full resolution is what makes the
  detector affordable on 1280x720 RAVDESS frames; the box is mapped back so the crop keeps
  full-resolution detail.
  """

  def __init__(
    self,
    detect_width: int = 640,
    scale_factor: float = 1.3,
    min_neighbors: int = 5,
    min_face_fraction: float = 0.0,
  ):
    """Loads the cascade.

    Args:
      detect_width: frames wider than this are downscaled to it for detection.
      scale_factor: `detectMultiScale` pyramid step (1.3 as in the thesis).
      min_neighbors: `detectMultiScale` votes a face needs (5 as in the thesis).
      min_face_fraction: smallest face width searched, as a fraction of the detection image
        width; 0 searches down to the cascade's 24 px like the thesis. RAVDESS faces fill a
        large part of the frame, and skipping the small scales makes detection several times
        faster.
    """
    cascade_path = cv2.data.haarcascades + HAAR_CASCADE
    self.cascade = cv2.CascadeClassifier(cascade_path)
    if self.cascade.empty():
      raise RuntimeError(
        f'OpenCV could not load the Haar cascade {cascade_path}; reinstall opencv-python-headless 4.x.'
      )
    self.detect_width = detect_width
    self.scale_factor = scale_factor
    self.min_neighbors = min_neighbors
    self.min_face_fraction = min_face_fraction

  def detect(self, gray: np.ndarray) -> tuple[int, int, int, int] | None:
    """Largest face in a [height, width] uint8 frame as (x, y, w, h) in its pixels, or None."""
    height, width = gray.shape[:2]
    if width > self.detect_width:
      small_width = self.detect_width
      small_height = max(1, round(height * small_width / width))
      small = cv2.resize(gray, (small_width, small_height), interpolation=cv2.INTER_AREA)
    else:
      small = gray
    min_side = int(self.min_face_fraction * small.shape[1])
    boxes = self.cascade.detectMultiScale(
      small, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(min_side, min_side)
    )
    if len(boxes) == 0:
      return None
    x, y, w, h = max(boxes, key=lambda box: box[2] * box[3])
    scale_x = width / small.shape[1]
    scale_y = height / small.shape[0]
    return (
      round(float(x) * scale_x),
      round(float(y) * scale_y),
      round(float(w) * scale_x),
      round(float(h) * scale_y),
    )


# Frames that wait for a face box (no detection of their own, and no detected frame yet known
# to be the nearest) are kept up to this many bytes; past it, the oldest are dropped and
# decoded a second time once their box is known. 128 MiB is ~140 grey 720p frames, more than
# a RAVDESS clip ever waits for, so prep never decodes twice, while a long recording that
# shows no face for minutes keeps its memory bounded.
MAX_PENDING_BYTES = 128 * 2**20


@dataclasses.dataclass
class VideoFaces:
  """Face crops of one video sampled at a target frame rate.

  Rows are the DISTINCT source frames some target frame samples, in time order.

  Attributes:
    crops: [num_distinct, image_size, image_size, 3] uint8 RGB-ordered crops, one per distinct
      source frame (grayscale copied into 3 channels unless extracted with `rgb=True`).
    frame_index: [num_frames] int64, row of `crops` for each target frame.
    num_frames: number of target frames.
    face_detected_frames: target frames whose source frame had its own detection.
    face_found: False when no frame of the video had a detection (crops are centre crops).
    source_fps: frame rate of the source stream.
    timings: seconds spent in 'decode' and 'face'.
    boxes: [num_distinct, 4] int64 (x, y, width, height) of each row's crop in source pixels
      (of the upright frame): its own detection, the nearest detected frame's, or the centre
      square.
    detected: [num_distinct] bool, whether the row's source frame had its own detection.
    duration: the video's duration in seconds (declared by the container, else decoded).
    width: width of the upright frame in pixels.
    height: height of the upright frame in pixels.
    rotation: degrees the stored frames were turned counter-clockwise to stand upright (phone
      videos declare it; 0 for most files).
    redecoded_frames: frames decoded a second time because waiting for their box would have
      kept more than `MAX_PENDING_BYTES` of frames.
    peak_pending_bytes: the most bytes of frames kept at once while waiting for a box.
  """

  crops: np.ndarray
  frame_index: np.ndarray
  num_frames: int
  face_detected_frames: int
  face_found: bool
  source_fps: float
  timings: dict
  boxes: np.ndarray
  detected: np.ndarray
  duration: float
  width: int
  height: int
  rotation: int = 0
  redecoded_frames: int = 0
  peak_pending_bytes: int = 0


def _centre_box(height: int, width: int) -> tuple[int, int, int, int]:
  side = min(height, width)
  return ((width - side) // 2, (height - side) // 2, side, side)


def _crop(image: np.ndarray, box: tuple[int, int, int, int], image_size: int) -> np.ndarray:
  """[height, width(, 3)] frame -> [image_size, image_size, 3] uint8 crop of `box`."""
  height, width = image.shape[:2]
  x, y, w, h = box
  x0, y0 = max(0, x), max(0, y)
  x1, y1 = min(width, x + w), min(height, y + h)
  if x1 <= x0 or y1 <= y0:
    x0, y0, w, h = _centre_box(height, width)
    x1, y1 = x0 + w, y0 + h
  crop = cv2.resize(image[y0:y1, x0:x1], (image_size, image_size), interpolation=cv2.INTER_AREA)
  if crop.ndim == 2:
    crop = np.repeat(crop[:, :, None], 3, axis=2)
  return crop


def num_targets(duration: float, fps: float) -> int:
  """Target frames k = 0 .. n - 1 at k / fps that fit in `duration` seconds."""
  return max(math.floor(duration * fps + 1e-6), 0)


class TargetSampler:
  """`target_frame_indices` computed while the frames stream in, so frames can be let go early.

  After each `push` of a source time, every target whose nearest source frame can no longer
  change is assigned, with the same arithmetic as `target_frame_indices`: a target at or before
  the newest source time has both its neighbours. When the number of targets is not known yet
  (the container declares no duration), a target is only assigned two target periods before
  the newest frame, which is then surely inside the duration decided at the end.
  """

  def __init__(self, fps: float, num_targets: int | None = None):
    self.fps = fps
    self.num_targets = num_targets
    self.times = []  # [num_pushed] source times in seconds, non-decreasing.
    self.source_index = []  # Source frame of each assigned target, non-decreasing.
    self._reported = 0  # Frames [0, _reported) have been reported by `push` or `finish`.
    self._scan = 0  # First assigned target whose source frame is not below `_reported`.

  def _assign(self, target: int) -> int:
    """Nearest source frame to `target / fps` among those pushed (ties go to the earlier frame)."""
    target_time = target / self.fps
    last = len(self.times) - 1
    right = min(bisect.bisect_left(self.times, target_time), last)
    left = max(right - 1, 0)
    choose_left = (target_time - self.times[left]) <= (self.times[right] - target_time)
    return left if choose_left else right

  def _report(self, upto: int) -> list:
    decided = []
    for frame in range(self._reported, upto):
      while self._scan < len(self.source_index) and self.source_index[self._scan] < frame:
        self._scan += 1
      decided.append((frame, self._scan < len(self.source_index) and self.source_index[self._scan] == frame))
    self._reported = upto
    return decided

  def push(self, time: float) -> list:
    """Adds the next source frame's time; returns [(frame, sampled)] for frames now decided, in order."""
    self.times.append(time)
    lag = 0 if self.num_targets is not None else 2
    while self.num_targets is None or len(self.source_index) < self.num_targets:
      target = len(self.source_index)
      if (target + lag) / self.fps > time:
        break
      self.source_index.append(self._assign(target))
    if self.num_targets is not None and len(self.source_index) == self.num_targets:
      upto = len(self.times)  # Every target is assigned: later frames are never sampled.
    elif self.source_index:
      upto = self.source_index[-1] + 1  # Assignments only move forward in time.
    else:
      upto = 0
    return self._report(upto)

  def finish(self, num_targets: int) -> list:
    """Assigns the last targets once the duration is known; returns the frames still undecided."""
    if self.num_targets is not None and num_targets != self.num_targets:
      raise ValueError(f'TargetSampler was told {self.num_targets} targets, then {num_targets}.')
    del self.source_index[num_targets:]
    while len(self.source_index) < num_targets:
      self.source_index.append(self._assign(len(self.source_index)))
    return self._report(len(self.times))

  @property
  def next_time(self) -> float:
    """Earliest time a frame not yet reported can have (later frames are no earlier)."""
    return self.times[self._reported] if self._reported < len(self.times) else self.times[-1]


class _FaceTracker:
  """Detects a face on each sampled frame as it arrives and crops it, keeping only what must wait.

  A frame without a detection takes the box of the nearest (in time) detected frame, ties to
  the earlier one, as if every frame were at hand: the nearest earlier detection is known when
  the frame arrives, the nearest later one is the next detection, so the frame waits for that
  (or until the stream is far enough ahead that no later detection can be nearer).
  """

  def __init__(self, detector, image_size: int, rgb: bool, max_pending_bytes: int):
    self.detector = detector
    self.image_size = image_size
    self.rgb = rgb
    self.max_pending_bytes = max_pending_bytes
    self.crops = []  # Per row: [image_size, image_size, 3] uint8, None while its box is unknown.
    self.boxes = []  # Per row: (x, y, w, h), None while unknown.
    self.detected = []  # Per row: bool.
    self.source = []  # Per row: source frame index.
    self.pending = collections.deque()  # [row, time, image or None] rows waiting for a box, in time order.
    self.pending_bytes = 0
    self.peak_pending_bytes = 0
    self.spilled = {}  # row -> centre crop, for rows whose image was dropped while waiting.
    self.last = None  # (time, box) of the nearest detection so far (the earliest frame among equal times).
    self.shape = None
    self.face_seconds = 0.0

  def _set(self, row: int, box, image) -> None:
    self.boxes[row] = box
    self.crops[row] = _crop(image, box, self.image_size)

  def _resolve(self, row: int, image, box) -> None:
    if image is None:
      self.boxes[row] = box  # Cropped after a second decode.
    else:
      self._set(row, box, image)

  def add(self, source_index: int, time: float, image: np.ndarray) -> None:
    """Detects and crops one sampled frame ([height, width] grey or [height, width, 3] RGB)."""
    start = time_lib.perf_counter()
    self.shape = self.shape or image.shape[:2]
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if self.rgb else image
    box = self.detector.detect(gray)
    row = len(self.crops)
    self.crops.append(None)
    self.boxes.append(None)
    self.detected.append(box is not None)
    self.source.append(source_index)
    if box is not None:
      self._set(row, box, image)
      while self.pending:  # This is the nearest later detection of every waiting row.
        waiting, waiting_time, waiting_image = self.pending.popleft()
        earlier = self.last is not None and (waiting_time - self.last[0]) <= (time - waiting_time)
        self._resolve(waiting, waiting_image, self.last[1] if earlier else box)
      self.pending_bytes = 0
      if self.last is None or time > self.last[0]:
        self.last = (time, box)
    else:
      self.pending.append([row, time, image])
      self.pending_bytes += image.nbytes
      self.peak_pending_bytes = max(self.peak_pending_bytes, self.pending_bytes)
    self.face_seconds += time_lib.perf_counter() - start

  def advance(self, next_time: float) -> None:
    """Settles waiting rows no later detection (at `next_time` or after) can be nearer to; bounds memory."""
    start = time_lib.perf_counter()
    while self.pending and self.last is not None:
      row, waiting_time, image = self.pending[0]
      if (next_time - waiting_time) < (waiting_time - self.last[0]):
        break
      self.pending.popleft()
      self.pending_bytes -= 0 if image is None else image.nbytes
      self._resolve(row, image, self.last[1])
    for entry in self.pending:
      if self.pending_bytes <= self.max_pending_bytes:
        break
      row, _, image = entry
      if image is not None:
        if self.last is None:  # Kept in case no face ever shows up.
          self.spilled[row] = _crop(image, _centre_box(*image.shape[:2]), self.image_size)
        else:
          self.spilled[row] = None
        self.pending_bytes -= image.nbytes
        entry[2] = None
    self.face_seconds += time_lib.perf_counter() - start

  def finish(self) -> list:
    """Settles the rows still waiting; returns [(row, source index, box)] that need a second decode."""
    start = time_lib.perf_counter()
    if self.last is None:
      centre = _centre_box(*self.shape)
      for row, _, image in self.pending:
        self.boxes[row] = centre
        self.crops[row] = self.spilled[row] if image is None else _crop(image, centre, self.image_size)
    else:
      for row, _, image in self.pending:
        self._resolve(row, image, self.last[1])
    self.pending.clear()
    self.pending_bytes = 0
    self.face_seconds += time_lib.perf_counter() - start
    return [(row, self.source[row], self.boxes[row]) for row, crop in enumerate(self.crops) if crop is None]


def _upright(frame, image_format: str, rotation: int) -> np.ndarray:
  """A decoded frame as an array, turned as its stream asks (`rotation` counter-clockwise degrees)."""
  image = frame.to_ndarray(format=image_format)
  if rotation:
    image = np.ascontiguousarray(np.rot90(image, k=rotation // 90))
  return image


def _frames(container, stream, path: str):
  """Yields (index, time in seconds, av.VideoFrame) in decode order; bad data raise ValueError."""
  rate = stream.average_rate or stream.guessed_rate
  default_fps = float(rate) if rate else 30.0
  index = -1
  last_time = None
  try:
    for frame in container.decode(stream):
      index += 1
      frame_time = float(frame.time) if frame.time is not None else index / default_fps
      if last_time is not None and frame_time < last_time:
        raise ValueError(f'Video timestamps in {path} go backwards at {frame_time:.3f} s.')
      last_time = frame_time
      yield index, frame_time, frame
  except av.FFmpegError as err:
    raise ValueError(f'Cannot decode video {path} (truncated or corrupt): {media.error_reason(err)}.') from err


def _open(path: str):
  try:
    container = av.open(path)
  except (av.FFmpegError, OSError) as err:
    raise ValueError(f'Cannot open video {path}: {media.error_reason(err)}.') from err
  if not container.streams.video:
    container.close()
    raise media.MissingStreamError(f'{path} has no video stream.')
  stream = container.streams.video[0]
  stream.thread_type = 'AUTO'
  return container, stream


def _declared_duration(container, stream) -> float | None:
  if stream.duration is not None and stream.time_base is not None:
    return float(stream.duration * stream.time_base)
  if container.duration is not None:
    return container.duration / av.time_base
  return None


def extract_faces(
  path: str,
  *,
  fps: float = 45.0,
  image_size: int = 48,
  detect_width: int = 640,
  rgb: bool = False,
  detector: FaceDetector | None = None,
  max_pending_bytes: int = MAX_PENDING_BYTES,
) -> VideoFaces:
  """Decodes `path`, samples it at `fps` and returns one face crop per distinct source frame.

  A frame without a detection reuses the box of the nearest (in time) frame of the video that
  has one; a video without any detection gets centre square crops and `face_found=False`.
  Frames stream through: each sampled frame is face-detected and cropped as it is decoded, and
  only frames still waiting for a box are kept (at most `max_pending_bytes` of them, the rest
  decoded again once their box is known), so memory does not grow with the video's length.
  Frames are turned upright when the stream declares a rotation (portrait phone videos).

  Args:
    path: the video file.
    fps: target frame rate; target k is at k / fps seconds.
    image_size: side of the square crops.
    detect_width: detection width of the default detector (ignored when `detector` is given).
    rgb: crop the colour frame instead of grayscale copied into 3 channels.
    detector: a `FaceDetector` (or anything with its `detect`) to reuse across videos.
    max_pending_bytes: memory for frames waiting for a face box.

  Raises:
    ValueError: the file cannot be decoded, has no frames, is too short or truncated;
      `media.MissingStreamError` (a ValueError) when it has no video stream at all.
  """
  detector = detector or FaceDetector(detect_width=detect_width)
  image_format = 'rgb24' if rgb else 'gray'
  tracker = _FaceTracker(detector, image_size, rgb, max_pending_bytes)
  start = time_lib.perf_counter()
  container, stream = _open(path)
  with container:
    rate = stream.average_rate or stream.guessed_rate
    source_fps = float(rate) if rate else 0.0
    declared = _declared_duration(container, stream)
    sampler = TargetSampler(fps, None if declared is None else num_targets(declared, fps))
    held = {}  # index -> av.VideoFrame decoded but not yet known to be sampled.
    first_time = None
    rotation = None

    def take(decided):
      for index, sampled in decided:
        frame = held.pop(index)
        if sampled:
          tracker.add(index, sampler.times[index], _upright(frame, image_format, rotation))

    for index, frame_time, frame in _frames(container, stream, path):
      if first_time is None:
        first_time = frame_time
        rotation = round((frame.rotation or 0) / 90) % 4 * 90
      held[index] = frame
      take(sampler.push(frame_time - first_time))
      tracker.advance(sampler.next_time)
    if first_time is None:
      raise ValueError(f'{path} has a video stream with no decodable frames.')

    times = sampler.times
    if not source_fps:
      source_fps = (len(times) - 1) / times[-1] if times[-1] > 0 else 30.0
    decoded_end = times[-1] + 1.0 / source_fps
    duration = decoded_end if declared is None else declared
    if media.is_truncated(decoded_end, duration):
      raise ValueError(f'{path} looks truncated: its frames end at {decoded_end:.2f} s of a declared {duration:.2f} s.')
    count = num_targets(duration, fps)
    if count == 0:
      raise ValueError(f'{path} is too short ({duration:.3f} s) for one frame at {fps} fps.')
    take(sampler.finish(count))
  redecode = tracker.finish()
  if redecode:
    wanted = {source: (row, box) for row, source, box in redecode}
    container, stream = _open(path)
    with container:
      for index, _, frame in _frames(container, stream, path):
        if index in wanted:
          row, box = wanted.pop(index)
          tracker.crops[row] = _crop(_upright(frame, image_format, rotation), box, image_size)
        if not wanted:
          break
  face_seconds = tracker.face_seconds
  decode_seconds = time_lib.perf_counter() - start - face_seconds

  source_index = np.asarray(sampler.source_index, np.int64)  # [num_frames]
  distinct, frame_index = np.unique(source_index, return_inverse=True)  # rows in time order.
  if not np.array_equal(distinct, tracker.source):
    raise RuntimeError(f'Frame sampling of {path} went wrong: the streamed frames differ from the targets.')
  detected = np.asarray(tracker.detected, bool)  # [num_distinct]
  height, width = tracker.shape
  return VideoFaces(
    crops=np.stack(tracker.crops),
    frame_index=frame_index.astype(np.int64),
    num_frames=int(source_index.size),
    face_detected_frames=int(detected[frame_index].sum()),
    face_found=bool(detected.any()),
    source_fps=float(source_fps),
    timings={'decode': decode_seconds, 'face': face_seconds},
    boxes=np.asarray(tracker.boxes, np.int64).reshape([-1, 4]),
    detected=detected,
    duration=float(duration),
    width=int(width),
    height=int(height),
    rotation=int(rotation),
    redecoded_frames=len(redecode),
    peak_pending_bytes=int(tracker.peak_pending_bytes),
  )

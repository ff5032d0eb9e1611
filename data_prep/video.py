"""Video stage: decode a clip with PyAV, sample it by timestamp and crop one face per frame.

The thesis extracted every frame at 45 fps to JPEG files with FFmpeg and ran the Haar cascade
on each at full resolution. Here a clip is decoded once in memory, each target time
`k / fps` takes the nearest source frame by timestamp, and every DISTINCT source frame is
face-cropped once: at 45 fps over a 29.97 fps source about one target in three repeats a
source frame, and `VideoFaces.frame_index` lets the caller embed that frame once too.

Any problem with one clip raises `ValueError` with one sentence naming the file, so the
caller can skip the clip and record why.
"""

import dataclasses
import math
import time

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


@dataclasses.dataclass
class VideoFaces:
  """Face crops of one clip sampled at a target frame rate.

  Attributes:
    crops: [num_distinct, image_size, image_size, 3] uint8 RGB-ordered crops, one per distinct
      source frame (grayscale copied into 3 channels unless extracted with `rgb=True`).
    frame_index: [num_frames] int64, row of `crops` for each target frame.
    num_frames: number of target frames.
    face_detected_frames: target frames whose source frame had its own detection.
    face_found: False when no frame of the clip had a detection (crops are centre crops).
    source_fps: frame rate of the source stream.
    timings: seconds spent in 'decode' and 'face'.
  """

  crops: np.ndarray
  frame_index: np.ndarray
  num_frames: int
  face_detected_frames: int
  face_found: bool
  source_fps: float
  timings: dict


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


def _decode(path: str, rgb: bool):
  """Decodes every frame of the video stream (grayscale unless `rgb`: a 5 s 720p clip is ~140 MB).

  Returns:
    (source_times [num_source] seconds from the first frame, [num_source] frame arrays,
    duration in seconds, source fps).
  """
  image_format = 'rgb24' if rgb else 'gray'
  try:
    container = av.open(path)
  except (av.FFmpegError, OSError) as err:
    raise ValueError(f'Cannot open video {path}: {media.error_reason(err)}.') from err
  with container:
    if not container.streams.video:
      raise ValueError(f'{path} has no video stream.')
    stream = container.streams.video[0]
    stream.thread_type = 'AUTO'
    rate = stream.average_rate or stream.guessed_rate
    source_fps = float(rate) if rate else 0.0

    times = []
    images = []
    try:
      for frame in container.decode(stream):
        if frame.time is not None:
          frame_time = float(frame.time)
        else:
          frame_time = len(times) / (source_fps or 30.0)
        if times and frame_time < times[-1]:
          raise ValueError(f'Video timestamps in {path} go backwards at {frame_time:.3f} s.')
        times.append(frame_time)
        images.append(frame.to_ndarray(format=image_format))
    except av.FFmpegError as err:
      raise ValueError(f'Cannot decode video {path} (truncated or corrupt): {media.error_reason(err)}.') from err
    if not times:
      raise ValueError(f'{path} has a video stream with no decodable frames.')

    source_times = np.asarray(times, dtype=np.float64) - times[0]
    if not source_fps:
      source_fps = (len(times) - 1) / source_times[-1] if source_times[-1] > 0 else 30.0
    decoded_end = source_times[-1] + 1.0 / source_fps
    if stream.duration is not None and stream.time_base is not None:
      duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
      duration = container.duration / av.time_base
    else:
      duration = decoded_end
  if media.is_truncated(decoded_end, duration):
    raise ValueError(f'{path} looks truncated: its frames end at {decoded_end:.2f} s of a declared {duration:.2f} s.')
  return source_times, images, duration, source_fps


def extract_faces(
  path: str,
  *,
  fps: float = 45.0,
  image_size: int = 48,
  detect_width: int = 640,
  rgb: bool = False,
  detector: FaceDetector | None = None,
) -> VideoFaces:
  """Decodes `path`, samples it at `fps` and returns one face crop per distinct source frame.

  A frame without a detection reuses the box of the nearest (in time) frame of the clip that
  has one; a clip without any detection gets centre square crops and `face_found=False`.
  Memory is bounded by the clip: its decoded frames, as grayscale unless `rgb`.

  Args:
    path: the video file.
    fps: target frame rate; target k is at k / fps seconds.
    image_size: side of the square crops.
    detect_width: detection width of the default detector (ignored when `detector` is given).
    rgb: crop the colour frame instead of grayscale copied into 3 channels.
    detector: a `FaceDetector` (or anything with its `detect`) to reuse across clips.

  Raises:
    ValueError: the file cannot be decoded, has no video stream or frames, or is truncated.
  """
  detector = detector or FaceDetector(detect_width=detect_width)
  start = time.perf_counter()
  source_times, images, duration, source_fps = _decode(path, rgb)
  decode_seconds = time.perf_counter() - start

  start = time.perf_counter()
  source_index = target_frame_indices(source_times, fps, duration)  # [num_frames]
  if source_index.size == 0:
    raise ValueError(f'{path} is too short ({duration:.3f} s) for one frame at {fps} fps.')
  distinct, frame_index = np.unique(source_index, return_inverse=True)  # rows in time order.
  frames = [images[j] for j in distinct]
  del images  # Frames no target sampled are freed here.

  boxes = []
  for image in frames:
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if rgb else image
    boxes.append(detector.detect(gray))
  detected = np.array([box is not None for box in boxes])  # [num_distinct]
  face_found = bool(detected.any())
  if face_found:
    detected_rows = np.flatnonzero(detected)
    detected_times = source_times[distinct[detected_rows]]
    for row in np.flatnonzero(~detected):
      nearest = detected_rows[np.argmin(np.abs(detected_times - source_times[distinct[row]]))]
      boxes[row] = boxes[nearest]
  else:
    height, width = frames[0].shape[:2]
    boxes = [_centre_box(height, width)] * len(frames)
  crops = np.stack([_crop(image, box, image_size) for image, box in zip(frames, boxes)])
  face_seconds = time.perf_counter() - start

  return VideoFaces(
    crops=crops,
    frame_index=frame_index.astype(np.int64),
    num_frames=int(source_index.size),
    face_detected_frames=int(detected[frame_index].sum()),
    face_found=face_found,
    source_fps=float(source_fps),
    timings={'decode': decode_seconds, 'face': face_seconds},
  )

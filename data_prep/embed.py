"""One clip in, its embeddings out: the decode, face, VGG16 and VGGish steps shared by every caller.

`build_tfrecords.py` runs it on every RAVDESS clip; anything that scores a new video runs
the very same code, so what a model sees at inference is what it saw in training.

The work is split in two halves, so the shard builder can run the first in worker processes
that never import TensorFlow:
  `prepare`: decode the video, crop one face per distinct source frame
    (`data_prep.video`), read the audio and resample it to 16 kHz (`data_prep.audio`).
  `embed`: VGG16 once per distinct crop, VGGish on the padded waveform
    (`data_prep.extractors`, loaded by the caller).
"""

import dataclasses
import time

import numpy as np

from data_prep import audio as audio_lib
from data_prep import video


class MediaError(ValueError):
  """A clip's media cannot be used; `reason` is one sentence naming the file.

  Attributes:
    path: the file at fault.
    kind: 'video' or 'audio' (the file cannot be read as such), or 'error' (an unforeseen
      decoder or OpenCV failure).
    reason: the message.
  """

  def __init__(self, reason: str, path: str, kind: str):
    super().__init__(reason)
    self.reason = reason
    self.path = path
    self.kind = kind

  def __reduce__(self):
    return (MediaError, (self.reason, self.path, self.kind))


@dataclasses.dataclass(frozen=True)
class EmbedSettings:
  """What decides a clip's embeddings (the shard builder records the same values).

  Attributes:
    fps: target frame rate; target frame k is at k / fps seconds.
    image_size: side of the square face crops fed to VGG16.
    rgb: crop the colour frame instead of grayscale copied into 3 channels.
    min_audio_seconds: the 16 kHz waveform is zero-padded to at least this long.
  """

  fps: float = 45.0
  image_size: int = 48
  rgb: bool = False
  min_audio_seconds: float = 5.0


@dataclasses.dataclass
class PreparedClip:
  """A clip after the TensorFlow-free half: face crops and the 16 kHz waveform.

  Attributes:
    faces: the face crops (`data_prep.video.VideoFaces`).
    waveform: [num_samples] float32 at 16 kHz, zero-padded to `min_audio_seconds`.
    timings: seconds spent in 'decode', 'face' and 'audio'.
  """

  faces: video.VideoFaces
  waveform: np.ndarray
  timings: dict


@dataclasses.dataclass
class ClipEmbedding:
  """A clip's embeddings.

  Attributes:
    visual: [num_frames, 512] float32, one VGG16 row per target frame.
    audio: [num_audio_frames, 128] float32, one VGGish row per 0.96 s.
    timings: seconds spent in 'vgg16' and 'vggish'.
  """

  visual: np.ndarray
  audio: np.ndarray
  timings: dict


def prepare(video_path: str, audio_path: str, settings: EmbedSettings, detector: video.FaceDetector) -> PreparedClip:
  """The TensorFlow-free half: decode + face crops, read + resample the audio.

  Args:
    video_path: the file whose video stream gives the frames.
    audio_path: the file whose audio gives the waveform (may be `video_path`).
    settings: the embedding settings.
    detector: the face detector (loading one takes a while, so callers reuse it).

  Raises:
    MediaError: a file cannot be read (its `kind` says which half failed).
  """
  try:
    faces = video.extract_faces(
      video_path,
      fps=settings.fps,
      image_size=settings.image_size,
      detect_width=detector.detect_width,
      rgb=settings.rgb,
      detector=detector,
    )
  except (ValueError, OSError) as err:
    raise MediaError(str(err), video_path, 'video') from err
  except Exception as err:  # noqa: BLE001  An unforeseen decoder or OpenCV failure costs this clip, not the run.
    raise MediaError(f'unexpected {type(err).__name__} while reading the video: {err}', video_path, 'error') from err
  timings = dict(faces.timings)

  start = time.perf_counter()
  try:
    waveform, sample_rate = audio_lib.read_audio(audio_path)
    waveform = audio_lib.prepare_waveform(waveform, sample_rate, min_seconds=settings.min_audio_seconds)
  except (ValueError, OSError) as err:
    raise MediaError(str(err), audio_path, 'audio') from err
  except Exception as err:  # noqa: BLE001  As above, for the audio decoder and resampler.
    raise MediaError(f'unexpected {type(err).__name__} while reading the audio: {err}', audio_path, 'error') from err
  timings['audio'] = time.perf_counter() - start
  return PreparedClip(faces=faces, waveform=waveform, timings=timings)


def embed(prepared: PreparedClip, vgg16, vggish) -> ClipEmbedding:
  """The main-process half: VGG16 once per distinct crop, VGGish on the waveform.

  Args:
    prepared: what `prepare` returned.
    vgg16: a `data_prep.extractors.VGG16Embedder` (or anything with its call).
    vggish: a `data_prep.extractors.VGGishEmbedder` (or anything with its call).
  """
  faces = prepared.faces
  start = time.perf_counter()
  distinct_embedding = vgg16(faces.crops)  # [num_distinct, 512]
  visual = np.asarray(distinct_embedding)[faces.frame_index]  # [num_frames, 512]
  vgg16_seconds = time.perf_counter() - start

  start = time.perf_counter()
  audio = np.asarray(vggish(prepared.waveform))  # [num_audio_frames, 128]
  vggish_seconds = time.perf_counter() - start
  return ClipEmbedding(visual=visual, audio=audio, timings={'vgg16': vgg16_seconds, 'vggish': vggish_seconds})

"""One media file in, its embeddings out: the decode, face, VGG16 and VGGish steps every caller shares.

`build_tfrecords.py` runs it on every RAVDESS clip; anything that scores a new recording runs
the very same code, so a model sees at inference what it saw in training ("data_prep embeds,
emojax classifies").

The work is split in two halves, so the shard builder can run the first in worker processes
that never import TensorFlow:
  `prepare`: decode the video, crop one face per distinct source frame (`data_prep.video`),
    read the audio and resample it to 16 kHz (`data_prep.audio`).
  `embed`: VGG16 once per distinct crop, VGGish on the zero-padded waveform
    (`data_prep.extractors`, loaded once by the caller, e.g. with `load_extractors`).
`embed_file` runs both on one file.

Any media, not only RAVDESS: any size, aspect, frame rate and sample rate; a video without an
audio track gives the visual embedding only, an audio file (`AUDIO_EXTENSIONS`) the audio
embedding only, a video without a face anywhere no visual embedding (unless
`on_no_face='center_crop'`); `ClipEmbedding.reasons` says in plain words why a modality is
missing. A file that cannot be read raises `MediaError` (a ValueError) naming it.

Long recordings are scored window by window (`embed_windows`): the whole file is decoded,
face-detected and VGG16-embedded once, then each window takes the visual rows of its target
frames and the audio embedding of its slice of the waveform, prepared as a training clip's
audio is (zero-padded to `min_audio_seconds`, VGGish). A window that covers a whole clip gives
exactly the clip's embedding.
"""

import dataclasses
import math
import os
import time
from collections.abc import Mapping

import numpy as np

from data_prep import audio as audio_lib
from data_prep import media, video

VIDEO_EXTENSIONS = ('.mp4', '.mov', '.mkv', '.webm', '.avi')
AUDIO_EXTENSIONS = ('.wav', '.flac', '.mp3', '.m4a', '.ogg')
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS + AUDIO_EXTENSIONS
MODALITIES = ('audio', 'visual')

# Why a modality has no embedding, in plain words (`ClipEmbedding.reasons`, `Window.reasons`).
NO_VIDEO_STREAM = 'no video stream'
NO_AUDIO_TRACK = 'no audio track'
NO_FACE = 'no face found in any frame'
NO_FACE_IN_WINDOW = 'no face found in any frame of this window'
NO_FRAMES_IN_WINDOW = 'no video frames in this window'
NO_AUDIO_IN_WINDOW = 'no audio in this window'
TOO_SHORT_FOR_VGGISH = 'audio too short for VGGish (it gave no rows)'
NOT_REQUESTED = 'not requested (left out of the modalities)'


class MediaError(ValueError):
  """A media file cannot be used; the message is one sentence naming the file.

  Attributes:
    reason: the message.
    path: the file at fault.
    kind: 'video' or 'audio' (the half that could not be read), or 'error' (an unforeseen
      decoder or OpenCV failure). The shard builder records it as the skip's kind.
  """

  def __init__(self, reason: str, path: str, kind: str):
    super().__init__(reason)
    self.reason = reason
    self.path = path
    self.kind = kind

  def __reduce__(self):
    return (MediaError, (self.reason, self.path, self.kind))


def parse_modalities(value) -> tuple[str, ...]:
  """'audio,visual', 'audio' or a sequence of names -> the names in `MODALITIES` order.

  Raises:
    ValueError: an unknown or empty modality list.
  """
  names = value.split(',') if isinstance(value, str) else list(value)
  names = [name.strip() for name in names if name.strip()]
  unknown = sorted(set(names) - set(MODALITIES))
  if unknown or not names:
    raise ValueError(
      f'Modalities {value!r} are not a comma-separated list of {" and ".join(MODALITIES)}: '
      'pass e.g. audio,visual or audio.'
    )
  return tuple(name for name in MODALITIES if name in names)


@dataclasses.dataclass(frozen=True)
class EmbedSettings:
  """Everything that decides a file's embeddings; a dataset's settings.json holds the same values.

  Attributes:
    fps: target frame rate; target frame k is at k / fps seconds.
    image_size: side of the square face crops fed to VGG16.
    detect_width: face detection runs on a copy at most this wide.
    min_face_fraction: smallest face searched, as a fraction of the detection width. RAVDESS
      faces span about a quarter of the frame's width; skipping the smaller scales makes Haar
      ~3x faster.
    rgb: crop the colour frame instead of grayscale copied into 3 channels.
    min_audio_seconds: the 16 kHz waveform is zero-padded to at least this long.
    on_no_face: 'skip' (a video without any face gets no visual embedding) or 'center_crop'
      (it is embedded from centre square crops).
    modalities: which of 'audio' and 'visual' to compute.
  """

  fps: float = 45.0
  image_size: int = 48
  detect_width: int = 640
  min_face_fraction: float = 0.1
  rgb: bool = False
  min_audio_seconds: float = 5.0
  on_no_face: str = 'skip'
  modalities: tuple[str, ...] = MODALITIES

  def __post_init__(self):
    object.__setattr__(self, 'modalities', parse_modalities(self.modalities))
    if self.on_no_face not in ('skip', 'center_crop'):
      raise ValueError(f"on_no_face={self.on_no_face!r} is not one of 'skip', 'center_crop'.")

  @classmethod
  def from_settings(cls, settings: Mapping) -> 'EmbedSettings':
    """The embedding settings among a dataset's settings (dataset_info.json's 'settings'); others are ignored."""
    fields = {field.name for field in dataclasses.fields(cls)}
    return cls(**{key: value for key, value in settings.items() if key in fields and value is not None})


def make_detector(settings: EmbedSettings) -> video.FaceDetector:
  """The Haar face detector `settings` asks for (loading it takes a while: reuse it across files)."""
  return video.FaceDetector(detect_width=settings.detect_width, min_face_fraction=settings.min_face_fraction)


def load_extractors(settings: Mapping, cache_dir: str | None = None):
  """VGG16 and VGGish as a dataset's settings name them.

  Args:
    settings: dataset_info.json's 'settings' (or build_tfrecords' settings): 'vgg16_weights',
      'vggish_handle', 'image_size', 'extractor_seed' and, if present, 'modalities'.
    cache_dir: where the 'random' VGGish stand-in is kept (default $EMOJAX_CACHE or ~/.cache/emojax).

  Returns:
    (vgg16, vggish): `extractors.VGG16Embedder` and `extractors.VGGishEmbedder`, each None when
    its modality is left out (an audio-only dataset needs no VGG16 weights).

  Raises:
    extractors.ExtractorError: a model cannot be loaded.
  """
  from data_prep import extractors  # TensorFlow: only the main process loads the networks.

  modalities = parse_modalities(settings.get('modalities') or MODALITIES)
  seed = settings.get('extractor_seed', 0)
  vgg16 = vggish = None
  if 'visual' in modalities:
    vgg16 = extractors.VGG16Embedder(weights=settings['vgg16_weights'], image_size=settings['image_size'], seed=seed)
  if 'audio' in modalities:
    vggish = extractors.VGGishEmbedder(handle=settings['vggish_handle'], cache_dir=cache_dir, seed=seed)
  return vgg16, vggish


def stand_in_extractors(settings: Mapping) -> list[str]:
  """Names of the untrained stand-in ('random') extractors a dataset's settings use, e.g. ['VGG16', 'VGGish']."""
  modalities = parse_modalities(settings.get('modalities') or MODALITIES)
  names = []
  if 'visual' in modalities and settings.get('vgg16_weights') == 'random':
    names.append('VGG16')
  if 'audio' in modalities and settings.get('vggish_handle') == 'random':
    names.append('VGGish')
  return names


@dataclasses.dataclass(frozen=True)
class SourceFacts:
  """What the media files are.

  Attributes:
    video_path: the file the frames came from (None without a video stream).
    audio_path: the file the waveform came from (None without audio).
    duration: seconds, the longer of the video and the audio.
    video_seconds: the video's duration (declared by the container, else decoded), or None.
    audio_seconds: the audio's decoded duration, or None.
    fps: the video's frame rate, or None.
    width: width of the upright frames in pixels, or None.
    height: height of the upright frames in pixels, or None.
    rotation: degrees the stored frames were turned to stand upright (phone videos).
    sample_rate: the audio's sample rate in Hz, or None.
  """

  video_path: str | None
  audio_path: str | None
  duration: float
  video_seconds: float | None = None
  audio_seconds: float | None = None
  fps: float | None = None
  width: int | None = None
  height: int | None = None
  rotation: int = 0
  sample_rate: int | None = None


@dataclasses.dataclass
class PreparedClip:
  """A file after the TensorFlow-free half: face crops and the 16 kHz waveform.

  Attributes:
    settings: the settings it was prepared with.
    source: what the files are.
    faces: the face crops, one per distinct sampled source frame (`video.VideoFaces`), or None.
    waveform: [num_samples] float32 mono at 16 kHz, not padded, or None.
    reasons: modality -> why it is missing ('visual': 'no video stream', ...).
    timings: seconds spent in 'decode', 'face' and 'audio'.
  """

  settings: EmbedSettings
  source: SourceFacts
  faces: video.VideoFaces | None
  waveform: np.ndarray | None
  reasons: dict
  timings: dict


@dataclasses.dataclass
class ClipEmbedding:
  """A file's embeddings and the facts needed to show them.

  Attributes:
    visual: [num_frames, 512] float32, one VGG16 row per target frame k (at k / fps s), or None.
    audio: [num_audio_frames, 128] float32, one VGGish row per 0.96 s of the padded waveform, or None.
    reasons: modality -> why its embedding is None, in plain words.
    settings: the settings it was computed with.
    source: what the files are (duration, frame rate, size, sample rate).
    num_frames: target frames of the video (0 without one); set even when `visual` is None.
    face_detected_frames: target frames whose source frame had a face detection of its own.
    face_found: whether any frame had a detection.
    face_boxes: [num_frames, 4] int64 (x, y, width, height) in source pixels of the upright frame:
      the region each target frame's crop came from (its own detection, the nearest detected
      frame's, or the centre square).
    face_detected: [num_frames] bool, whether that box is the frame's own detection.
    waveform: [num_samples] float32 16 kHz audio, not padded (what `embed_windows` slices), or None.
    timings: seconds spent in each stage.
  """

  visual: np.ndarray | None
  audio: np.ndarray | None
  reasons: dict
  settings: EmbedSettings
  source: SourceFacts
  num_frames: int
  face_detected_frames: int
  face_found: bool
  face_boxes: np.ndarray
  face_detected: np.ndarray
  waveform: np.ndarray | None
  timings: dict

  @property
  def frame_times(self) -> np.ndarray:
    """[num_frames] seconds of each target frame."""
    return np.arange(self.num_frames) / self.settings.fps


def _extension(path: str) -> str:
  return os.path.splitext(path)[1].lower()


def _check_file(path: str, kind: str) -> None:
  if not os.path.isfile(path):
    raise MediaError(f'{path} does not exist or is not a file.', path, kind)
  if _extension(path) not in MEDIA_EXTENSIONS:
    raise MediaError(
      f'{path} is not a supported media file: expected one of {", ".join(MEDIA_EXTENSIONS)}.', path, kind
    )


def prepare(
  path: str,
  settings: EmbedSettings | None = None,
  detector: video.FaceDetector | None = None,
  *,
  audio_path: str | None = None,
) -> PreparedClip:
  """The TensorFlow-free half: decode + face crops, read + resample the audio.

  Args:
    path: the media file. A video (`VIDEO_EXTENSIONS`) gives the frames and, unless
      `audio_path` is given, its audio track; an audio file (`AUDIO_EXTENSIONS`) only audio.
    settings: the embedding settings (default `EmbedSettings()`).
    detector: a face detector to reuse (default: one made from `settings`).
    audio_path: take the audio from this file instead (RAVDESS pairs a video-only mp4 with a wav).

  Returns:
    The prepared clip; a missing stream is a reason, not an error.

  Raises:
    MediaError: a file is missing, of an unknown type, corrupt or truncated (its `kind` says
      which half failed).
  """
  settings = settings or EmbedSettings()
  path = os.fspath(path)
  audio_path = path if audio_path is None else os.fspath(audio_path)
  reasons, timings = {}, {}

  faces = None
  if 'visual' not in settings.modalities:
    reasons['visual'] = NOT_REQUESTED
  else:
    _check_file(path, 'video')
    if _extension(path) in AUDIO_EXTENSIONS:
      reasons['visual'] = NO_VIDEO_STREAM
    else:
      detector = detector or make_detector(settings)
      try:
        faces = video.extract_faces(
          path,
          fps=settings.fps,
          image_size=settings.image_size,
          detect_width=detector.detect_width,
          rgb=settings.rgb,
          detector=detector,
        )
      except media.MissingStreamError:
        reasons['visual'] = NO_VIDEO_STREAM
      except (ValueError, OSError) as err:
        raise MediaError(str(err), path, 'video') from err
      except Exception as err:  # noqa: BLE001  An unforeseen decoder or OpenCV failure costs this file, not the run.
        raise MediaError(
          f'unexpected {type(err).__name__} while reading the video {path}: {err}', path, 'error'
        ) from err
    if faces is not None:
      timings.update(faces.timings)

  waveform = sample_rate = audio_seconds = None
  if 'audio' not in settings.modalities:
    reasons['audio'] = NOT_REQUESTED
  else:
    _check_file(audio_path, 'audio')
    start = time.perf_counter()
    try:
      samples, sample_rate = audio_lib.read_audio(audio_path)
      audio_seconds = samples.size / sample_rate
      waveform = audio_lib.to_vggish_rate(samples, sample_rate)
    except media.MissingStreamError:
      reasons['audio'] = NO_AUDIO_TRACK
    except (ValueError, OSError) as err:
      raise MediaError(str(err), audio_path, 'audio') from err
    except Exception as err:  # noqa: BLE001  As above, for the audio decoder and resampler.
      raise MediaError(
        f'unexpected {type(err).__name__} while reading the audio {audio_path}: {err}', audio_path, 'error'
      ) from err
    timings['audio'] = time.perf_counter() - start

  video_seconds = faces.duration if faces is not None else None
  source = SourceFacts(
    video_path=path if faces is not None else None,
    audio_path=audio_path if waveform is not None else None,
    duration=max(video_seconds or 0.0, audio_seconds or 0.0),
    video_seconds=video_seconds,
    audio_seconds=audio_seconds,
    fps=faces.source_fps if faces is not None else None,
    width=faces.width if faces is not None else None,
    height=faces.height if faces is not None else None,
    rotation=faces.rotation if faces is not None else 0,
    sample_rate=sample_rate,
  )
  return PreparedClip(
    settings=settings, source=source, faces=faces, waveform=waveform, reasons=reasons, timings=timings
  )


def _vggish_rows(vggish, waveform_16k: np.ndarray, min_seconds: float) -> np.ndarray:
  """[num_rows, 128] VGGish rows of 16 kHz audio zero-padded as a training clip's is."""
  return np.asarray(vggish(audio_lib.pad_waveform(waveform_16k, min_seconds)))


def embed(prepared: PreparedClip, vgg16, vggish) -> ClipEmbedding:
  """The main-process half: VGG16 once per distinct crop, VGGish on the padded waveform.

  Args:
    prepared: what `prepare` returned.
    vgg16: an `extractors.VGG16Embedder` (or anything with its call); may be None when
      `prepared` has no frames.
    vggish: an `extractors.VGGishEmbedder` (or anything with its call); may be None when
      `prepared` has no audio.

  Raises:
    ValueError: an extractor a present modality needs is None.
  """
  settings = prepared.settings
  reasons = dict(prepared.reasons)
  faces = prepared.faces
  timings = dict(prepared.timings, vgg16=0.0, vggish=0.0)

  visual = None
  if faces is not None:
    if not faces.face_found and settings.on_no_face == 'skip':
      reasons['visual'] = NO_FACE
    elif vgg16 is None:
      raise ValueError(
        f'{prepared.source.video_path} has frames to embed but no VGG16 embedder was given: pass one, or leave '
        "'visual' out of EmbedSettings.modalities."
      )
    else:
      start = time.perf_counter()
      distinct_embedding = vgg16(faces.crops)  # [num_distinct, 512]
      visual = np.asarray(distinct_embedding)[faces.frame_index]  # [num_frames, 512]
      timings['vgg16'] = time.perf_counter() - start

  audio = None
  if prepared.waveform is not None:
    if vggish is None:
      raise ValueError(
        f'{prepared.source.audio_path} has audio to embed but no VGGish embedder was given: pass one, or leave '
        "'audio' out of EmbedSettings.modalities."
      )
    start = time.perf_counter()
    audio = _vggish_rows(vggish, prepared.waveform, settings.min_audio_seconds)  # [num_audio_frames, 128]
    timings['vggish'] = time.perf_counter() - start
    if audio.shape[0] == 0:
      audio = None
      reasons['audio'] = TOO_SHORT_FOR_VGGISH

  if faces is not None:
    face_boxes = faces.boxes[faces.frame_index]  # [num_frames, 4]
    face_detected = faces.detected[faces.frame_index]  # [num_frames]
  else:
    face_boxes, face_detected = np.zeros([0, 4], np.int64), np.zeros([0], bool)
  return ClipEmbedding(
    visual=visual,
    audio=audio,
    reasons=reasons,
    settings=settings,
    source=prepared.source,
    num_frames=faces.num_frames if faces is not None else 0,
    face_detected_frames=faces.face_detected_frames if faces is not None else 0,
    face_found=faces is not None and faces.face_found,
    face_boxes=face_boxes,
    face_detected=face_detected,
    waveform=prepared.waveform,
    timings=timings,
  )


def embed_file(
  path: str,
  settings: EmbedSettings | None,
  vgg16,
  vggish,
  detector: video.FaceDetector | None = None,
  *,
  audio_path: str | None = None,
) -> ClipEmbedding:
  """`prepare` then `embed`: one media file (or a video and a separate audio file) end to end.

  Args:
    path: the media file (any of `MEDIA_EXTENSIONS`).
    settings: the embedding settings (None: `EmbedSettings()`); for a trained model, those of
      its dataset (`EmbedSettings.from_settings`).
    vgg16: the VGG16 embedder (None if the settings leave 'visual' out).
    vggish: the VGGish embedder (None if the settings leave 'audio' out).
    detector: a face detector to reuse across files.
    audio_path: take the audio from this file instead of `path`.

  Raises:
    MediaError: a file is missing, of an unknown type, corrupt or truncated.
  """
  return embed(prepare(path, settings, detector, audio_path=audio_path), vgg16, vggish)


@dataclasses.dataclass
class Window:
  """One window of a recording, embedded as a training clip would be.

  Attributes:
    start: seconds from the start of the recording.
    end: seconds; the window covers [start, end).
    visual: [num_frames, 512] VGG16 rows of the target frames in the window, or None.
    audio: [num_audio_frames, 128] VGGish rows of the window's audio padded to
      `min_audio_seconds`, or None.
    first_frame: index of the window's first target frame in the recording's.
    num_frames: the window's target frames.
    face_detected_frames: of those, frames with a face detection of their own.
    reasons: modality -> why its embedding is None, in plain words.
  """

  start: float
  end: float
  visual: np.ndarray | None
  audio: np.ndarray | None
  first_frame: int
  num_frames: int
  face_detected_frames: int
  reasons: dict


def window_bounds(duration: float, window_seconds: float = 4.0, hop_seconds: float = 1.0) -> list:
  """[(start, end)] of the windows that cover a recording of `duration` seconds.

  Windows start every `hop_seconds` from 0 and last `window_seconds`; the last one ends at
  the recording's end, so it is up to half a hop longer or shorter than the others. A
  recording no longer than one window is the single window (0, duration).

  Raises:
    ValueError: a window or hop that is not positive.
  """
  if window_seconds <= 0 or hop_seconds <= 0:
    raise ValueError(f'Windows of {window_seconds} s every {hop_seconds} s: both must be positive.')
  if duration <= window_seconds + 1e-9:
    return [(0.0, float(duration))]
  count = round((duration - window_seconds) / hop_seconds) + 1
  bounds = [(k * hop_seconds, k * hop_seconds + window_seconds) for k in range(count)]
  bounds[-1] = (bounds[-1][0], float(duration))
  return bounds


def embed_windows(
  embedding: ClipEmbedding, vggish, window_seconds: float = 4.0, hop_seconds: float = 1.0
) -> list[Window]:
  """Embeds each window of a recording (`window_bounds`) from its whole-file embedding.

  Nothing is decoded or run through VGG16 again: a window's visual rows are the recording's
  rows of the target frames k with start <= k / fps < end. Its audio is the recording's 16 kHz
  waveform over [start, end), zero-padded to `min_audio_seconds` and run through VGGish, as a
  training clip's audio is. The last window runs to the end of both streams, so a window
  covering a whole clip gives exactly the clip's embedding.

  Args:
    embedding: `embed` or `embed_file` of the whole recording.
    vggish: the VGGish embedder (None if the recording has no audio).
    window_seconds: window length.
    hop_seconds: time between window starts.

  Returns:
    The windows in time order.
  """
  settings = embedding.settings
  bounds = window_bounds(embedding.source.duration, window_seconds, hop_seconds)
  rate = audio_lib.VGGISH_SAMPLE_RATE
  windows = []
  for index, (start, end) in enumerate(bounds):
    last = index == len(bounds) - 1
    reasons = {}
    first_frame = min(math.ceil(start * settings.fps - 1e-6), embedding.num_frames)
    end_frame = embedding.num_frames if last else min(math.ceil(end * settings.fps - 1e-6), embedding.num_frames)
    detected = int(embedding.face_detected[first_frame:end_frame].sum())
    visual = None
    if embedding.visual is None:
      reasons['visual'] = embedding.reasons['visual']
    elif end_frame <= first_frame:
      reasons['visual'] = NO_FRAMES_IN_WINDOW
    elif detected == 0 and settings.on_no_face == 'skip':
      reasons['visual'] = NO_FACE_IN_WINDOW
    else:
      visual = embedding.visual[first_frame:end_frame]  # [num_frames, 512]

    audio = None
    if embedding.waveform is None:
      reasons['audio'] = embedding.reasons['audio']
    else:
      waveform = embedding.waveform[round(start * rate) : None if last else round(end * rate)]
      if waveform.size == 0:
        reasons['audio'] = NO_AUDIO_IN_WINDOW
      else:
        audio = _vggish_rows(vggish, waveform, settings.min_audio_seconds)  # [num_audio_frames, 128]
        if audio.shape[0] == 0:
          audio = None
          reasons['audio'] = TOO_SHORT_FOR_VGGISH
    windows.append(
      Window(
        start=float(start),
        end=float(end),
        visual=visual,
        audio=audio,
        first_frame=first_frame,
        num_frames=end_frame - first_frame,
        face_detected_frames=detected,
        reasons=reasons,
      )
    )
  return windows

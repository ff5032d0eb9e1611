"""Finds the RAVDESS clips under a directory and pairs each clip's video and audio.

RAVDESS ships one recording in up to three files that share the six fields
after the modality (the clip id): a full audio-video mp4 (modality 01), a
video-only mp4 (02) and, in the separate audio zip, an audio-only wav (03).
The zips unpack into any nesting (`Video_Speech_Actor_01/Actor_01/...`,
`Audio_Speech_Actors_01-24/Actor_01/...`), so the walk is recursive and only
the file names matter.

One clip per clip id:
  video: the AV mp4 (01), else the video-only mp4 (02);
  audio: the wav (03) when present (the original 48 kHz studio track), else
    the AV mp4's own audio track.
A clip without a video source or without an audio source is skipped with a
reason, as is an .mp4/.wav whose name does not parse. An audio-only dataset
(`modalities=('audio',)`) needs no video: a wav alone is a clip (RAVDESS'
`Audio_Speech_Actors_01-24.zip` is enough), with no video source. Song and
calm clips are not errors: they are counted as `filtered` unless
`include_song` / `include_calm` keep them. Other files (.DS_Store, README.txt,
macOS `._*` resource forks) are ignored silently.
"""

import dataclasses
import hashlib
import os

from emojax import ravdess

MEDIA_EXTENSIONS = ('.mp4', '.wav')


@dataclasses.dataclass(frozen=True)
class Clip:
  """One recording: its name fields and where its video and audio come from.

  Attributes:
    name: the parsed name of the video file (modality 01 or 02), or of the audio
      source in an audio-only dataset.
    video_source: path of the mp4 relative to the input dir (POSIX separators);
      '' in an audio-only dataset.
    audio_source: path of the wav, or of the AV mp4 when there is no wav.
  """

  name: ravdess.ClipName
  video_source: str
  audio_source: str

  @property
  def clip_id(self) -> str:
    return self.name.clip_id


def _relative(path: str, root: str) -> str:
  return os.path.relpath(path, root).replace(os.sep, '/')


def _walk_media(input_dir: str):
  """Yields relative paths of .mp4/.wav files in a deterministic order."""
  for dirpath, dirnames, filenames in os.walk(input_dir):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith('.') and d != '__MACOSX')
    for filename in sorted(filenames):
      if filename.startswith('.'):
        continue
      if os.path.splitext(filename)[1].lower() in MEDIA_EXTENSIONS:
        yield _relative(os.path.join(dirpath, filename), input_dir)


def discover(
  input_dir: str,
  *,
  include_song: bool = False,
  include_calm: bool = False,
  modalities: tuple[str, ...] = ('audio', 'visual'),
):
  """Lists the clips under `input_dir`.

  Args:
    input_dir: root of an unpacked RAVDESS tree (any nesting).
    include_song: keep vocal channel 02 (song) clips.
    include_calm: keep emotion 02 (calm), which is not one of the 7 classes.
    modalities: ('audio', 'visual'), or ('audio',) for clips without video.

  Returns:
    (clips, skipped, filtered): `clips` is a list of `Clip` sorted by clip id;
    `skipped` a list of {'path', 'reason', 'kind'} dicts for files that cannot
    be used; `filtered` a dict {'song': n, 'calm': n} counting the clips (clip
    ids, whatever their number of files) left out on purpose.
  """
  skipped = []
  filtered = {'song': set(), 'calm': set()}
  # clip_id -> modality -> relative path (the first in walk order).
  by_clip = {}
  for path in _walk_media(input_dir):
    try:
      name = ravdess.parse_name(path)
    except ValueError as e:
      skipped.append({'path': path, 'reason': str(e), 'kind': 'unparsable name'})
      continue
    if name.vocal_channel == ravdess.VOCAL_CHANNEL_SONG and not include_song:
      filtered['song'].add(name.clip_id)
      continue
    if name.emotion == 'calm' and not include_calm:
      filtered['calm'].add(name.clip_id)
      continue
    sources = by_clip.setdefault(name.clip_id, {})
    if name.modality in sources:
      skipped.append(
        {
          'path': path,
          'reason': f'{path!r} duplicates {sources[name.modality]!r}, which is used instead.',
          'kind': 'duplicate',
        }
      )
      continue
    sources[name.modality] = (path, name)

  clips = []
  for clip_id in sorted(by_clip):
    sources = by_clip[clip_id]
    av = sources.get(ravdess.MODALITY_AUDIO_VIDEO)
    vo = sources.get(ravdess.MODALITY_VIDEO_ONLY)
    ao = sources.get(ravdess.MODALITY_AUDIO_ONLY)
    video = av or vo
    if video is None and 'visual' in modalities:
      skipped.append(
        {
          'path': ao[0],
          'reason': f'clip {clip_id} has no video source: no {ravdess.MODALITY_AUDIO_VIDEO:02d}- or '
          f'{ravdess.MODALITY_VIDEO_ONLY:02d}- mp4 for {ao[0]!r} anywhere under the input dir.',
          'kind': 'no video source',
        }
      )
      continue
    audio = ao or av
    if audio is None:
      skipped.append(
        {
          'path': vo[0],
          'reason': f'clip {clip_id} has no audio source: {vo[0]!r} is video-only and there is no '
          f'{ravdess.MODALITY_AUDIO_ONLY:02d}- wav or {ravdess.MODALITY_AUDIO_VIDEO:02d}- mp4 for it.',
          'kind': 'no audio source',
        }
      )
      continue
    if 'visual' in modalities:
      clips.append(Clip(name=video[1], video_source=video[0], audio_source=audio[0]))
    else:
      clips.append(Clip(name=audio[1], video_source='', audio_source=audio[0]))
  return clips, skipped, {reason: len(clip_ids) for reason, clip_ids in filtered.items()}


def count_found(clips: list, skipped: list, filtered: dict) -> int:
  """How many clips (clip ids) `discover` found, usable or not: the clips, those filtered out and those skipped."""
  unpaired = sum(entry['kind'] in ('no video source', 'no audio source') for entry in skipped)
  return len(clips) + sum(filtered.values()) + unpaired


def select_evenly(clips: list, max_clips: int | None) -> list:
  """`max_clips` clips spread evenly over the sorted list (all when None or enough).

  A smoke run takes clips from across the list rather than its head, because the
  head of a list sorted by clip id is a single emotion of a single actor.
  """
  if not max_clips or max_clips >= len(clips):
    return list(clips)
  return [clips[(i * len(clips)) // max_clips] for i in range(max_clips)]


def fingerprint(clips: list) -> str:
  """SHA-256 over the clip ids and sources: changes when the input tree changes."""
  digest = hashlib.sha256()
  for clip in clips:
    digest.update(f'{clip.clip_id}\t{clip.video_source}\t{clip.audio_source}\n'.encode())
  return digest.hexdigest()

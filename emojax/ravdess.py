"""RAVDESS file names and the class tables (7 thesis classes, 8 with calm), shared by data_prep and emojax.

A RAVDESS file name is seven two-digit fields, `MM-VV-EE-II-SS-RR-AA.ext`:
modality, vocal channel, emotion, intensity, statement, repetition, actor.
Example: `02-01-06-01-02-01-12.mp4` is video-only, speech, fearful, normal
intensity, statement 2 ("dogs"), first repetition, actor 12 (female).
"""

import dataclasses
import os
import re

# The 7 classes in the thesis' (alphabetical) order; a label is an index here.
EMOTIONS = ('anger', 'disgust', 'fear', 'happiness', 'neutral', 'sadness', 'surprise')
NUM_CLASSES = len(EMOTIONS)
# The class sets a run can be reported in, each alphabetical as the thesis' tables:
# 'thesis7' drops calm (the thesis' task), 'ravdess8' keeps all eight speech emotions.
CLASS_SETS = {
  'thesis7': EMOTIONS,
  'ravdess8': ('anger', 'calm', 'disgust', 'fear', 'happiness', 'neutral', 'sadness', 'surprise'),
}

# RAVDESS emotion code -> emotion name. `calm` (02) is not one of the 7 classes.
EMOTION_NAMES = {
  1: 'neutral',
  2: 'calm',
  3: 'happiness',
  4: 'sadness',
  5: 'anger',
  6: 'fear',
  7: 'disgust',
  8: 'surprise',
}
MODALITY_AUDIO_VIDEO = 1
MODALITY_VIDEO_ONLY = 2
MODALITY_AUDIO_ONLY = 3
MODALITY_NAMES = {1: 'audio-video', 2: 'video-only', 3: 'audio-only'}
MODALITY_EXTENSIONS = {1: '.mp4', 2: '.mp4', 3: '.wav'}
VOCAL_CHANNEL_SPEECH = 1
VOCAL_CHANNEL_SONG = 2
NUM_ACTORS = 24

_NAME_RE = re.compile(r'^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})$')


def label_of(emotion_code: int) -> int | None:
  """Index in `EMOTIONS` of a RAVDESS emotion code, or None for calm."""
  name = EMOTION_NAMES[emotion_code]
  return EMOTIONS.index(name) if name in EMOTIONS else None


def gender_of(actor: int) -> int:
  """0 for male (odd actor numbers), 1 for female (even)."""
  return 1 - actor % 2


@dataclasses.dataclass(frozen=True)
class ClipName:
  """The seven fields of a RAVDESS file name."""

  modality: int
  vocal_channel: int
  emotion_code: int
  intensity: int
  statement: int
  repetition: int
  actor: int

  @property
  def clip_id(self) -> str:
    """The six fields after the modality: one id per recording across modalities."""
    return '-'.join(
      f'{v:02d}'
      for v in (
        self.vocal_channel,
        self.emotion_code,
        self.intensity,
        self.statement,
        self.repetition,
        self.actor,
      )
    )

  @property
  def emotion(self) -> str:
    return EMOTION_NAMES[self.emotion_code]

  @property
  def label(self) -> int | None:
    return label_of(self.emotion_code)

  @property
  def gender(self) -> int:
    return gender_of(self.actor)

  def filename(self, modality: int | None = None) -> str:
    """The RAVDESS file name of this recording in `modality` (default: its own)."""
    modality = self.modality if modality is None else modality
    return f'{modality:02d}-{self.clip_id}{MODALITY_EXTENSIONS[modality]}'


def parse_name(path: str) -> ClipName:
  """Parses a RAVDESS file name (any directory, any extension).

  Raises:
    ValueError: one sentence naming the file and the field at fault.
  """
  base = os.path.basename(path)
  stem, ext = os.path.splitext(base)
  match = _NAME_RE.match(stem)
  if not match:
    raise ValueError(f'{base!r} is not a RAVDESS name: expected seven two-digit fields MM-VV-EE-II-SS-RR-AA.')
  m, v, e, i, s, r, a = (int(x) for x in match.groups())
  checks = (
    ('modality', m, MODALITY_NAMES),
    ('vocal channel', v, (VOCAL_CHANNEL_SPEECH, VOCAL_CHANNEL_SONG)),
    ('emotion', e, EMOTION_NAMES),
    ('intensity', i, (1, 2)),
    ('statement', s, (1, 2)),
    ('repetition', r, (1, 2)),
    ('actor', a, range(1, NUM_ACTORS + 1)),
  )
  for field, value, allowed in checks:
    if value not in allowed:
      raise ValueError(f'{base!r} has an invalid {field} field {value:02d}: allowed {sorted(allowed)}.')
  if ext.lower() != MODALITY_EXTENSIONS[m]:
    raise ValueError(
      f'{base!r} has modality {m:02d} ({MODALITY_NAMES[m]}) but extension {ext!r}: expected {MODALITY_EXTENSIONS[m]!r}.'
    )
  if e == 1 and i == 2:
    raise ValueError(f'{base!r} is neutral at strong intensity, which RAVDESS does not have.')
  return ClipName(m, v, e, i, s, r, a)

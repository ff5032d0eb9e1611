"""SYNTHETIC RAVDESS-format clips: stand-ins for tests, demos and benchmarks.

Nothing here is RAVDESS data and nothing written by this module may be called
real. It writes mp4 files that look, to the data pipeline, exactly like the
RAVDESS full audio-video speech clips: H.264 video at 29.97 fps, AAC audio at
48 kHz, named `01-01-EE-II-SS-RR-AA.mp4` under `Actor_XX/`, 60 clips per actor
(8 emotion codes including calm, 2 intensities except neutral, 2 statements,
2 repetitions). Real RAVDESS cannot be downloaded in our test environment, so
these clips let data_prep and emojax run end to end, offline, in seconds.

The clips carry learnable signal so that a model trained on them must learn
something: each emotion has its own drawn face (mouth opening and smile, brow
height and slant, eye opening, head motion amplitude and speed) and its own
voice (pitch level and contour, loudness, syllable rate, spectral tilt, tremor);
strong intensity exaggerates the difference from neutral. Each actor has its
own face size, position, skin tone, hair and background and a base pitch (odd
actors male and lower, even actors female); each take varies a little around
that, seeded from its file-name fields so the output is deterministic.

Faces are drawn as a frontal shading pattern (dark hair, brows and eye sockets
above bright cheeks, a bright nose bridge, a dark mouth, an oval on a
contrasting background) that OpenCV's Haar cascade
`haarcascade_frontalface_default.xml` finds in nearly every frame.

For scoring whole recordings, `write_recording` writes one longer take of one actor in which
the emotion changes at given times, and returns where each emotion lasts. Its file type comes
from the extension (video .mp4/.mov/.mkv, audio-only .wav/.flac/.ogg/.mp3/.m4a); `audio=False`
leaves the video without an audio track, `width=240, height=320` makes it portrait, and
`rotation=90` stores it sideways with a display rotation as phones do.

Usage:
  python -m data_prep.synthetic --output_dir=/tmp/synthetic_ravdess --num_actors=4
  python -m data_prep.synthetic --recording=/tmp/talk.mp4 --seconds=20
"""

import argparse
import dataclasses
import fractions
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import NamedTuple

import av
import cv2
import numpy as np
import soundfile
import tqdm

from emojax import ravdess

# RAVDESS statements: "Kids are talking by the door", "Dogs are sitting by the door".
_SYLLABLES_PER_STATEMENT = {1: 6, 2: 7}
# How much of an emotion's deviation from neutral each intensity shows.
_INTENSITY_SCALE = {1: 0.6, 2: 1.0}


@dataclasses.dataclass(frozen=True)
class _Style:
  """How one emotion looks and sounds (neutral is the reference)."""

  # Face.
  mouth_open: float  # Resting lip gap, in units of the face half-width.
  mouth_talk: float  # Extra opening at the peak of a syllable.
  mouth_width: float  # Relative to neutral.
  smile: float  # Mouth-corner lift: > 0 smile, < 0 frown.
  brow_raise: float  # Brow height above neutral, in face half-widths.
  brow_slant: float  # Inner-end lift: > 0 worried (sad, fear), < 0 frowning (anger).
  eye_open: float  # Eye opening relative to neutral.
  motion_amplitude: float  # Head sway, in face half-widths.
  motion_speed: float  # Head sway frequency, Hz.
  # Voice.
  pitch_scale: float  # Mean pitch relative to the actor's base pitch.
  pitch_range: float  # Depth of the intonation contour (fraction of f0).
  pitch_slope: float  # Contour over the sentence: < 0 falling, > 0 rising.
  loudness: float  # RMS while speaking, relative to the loudest emotion (anger).
  syllable_rate: float  # Syllables per second.
  brightness: float  # Spectral tilt: higher keeps more high-frequency energy.
  tremor: float  # Vibrato depth (fraction of f0) at about 6 Hz.


_STYLES = {
  # code: mouth_open, talk, width, smile, brow_raise, slant, eye, motion_amp, speed,
  #       pitch, range, slope, loud, rate, bright, tremor
  1: _Style(0.02, 0.16, 1.00, 0.00, 0.00, 0.00, 1.00, 0.04, 0.35, 1.00, 0.10, -0.4, 0.45, 4.0, 0.0, 0.000),
  2: _Style(0.00, 0.12, 0.95, 0.10, -0.02, 0.03, 0.80, 0.03, 0.25, 0.95, 0.07, -0.5, 0.35, 3.4, -0.4, 0.000),
  3: _Style(0.10, 0.22, 1.30, 0.55, 0.06, -0.02, 0.75, 0.08, 0.80, 1.25, 0.35, 0.2, 0.80, 5.0, 0.6, 0.000),
  4: _Style(0.00, 0.08, 0.85, -0.45, 0.02, 0.35, 0.70, 0.02, 0.20, 0.88, 0.05, -0.8, 0.30, 2.9, -0.8, 0.010),
  5: _Style(0.08, 0.24, 1.20, -0.35, -0.10, -0.35, 0.90, 0.10, 1.30, 1.15, 0.25, -0.6, 1.00, 5.2, 1.0, 0.000),
  6: _Style(0.12, 0.18, 0.85, -0.20, 0.10, 0.30, 1.35, 0.05, 2.50, 1.35, 0.20, 0.0, 0.70, 5.6, 0.4, 0.030),
  7: _Style(0.04, 0.12, 0.95, -0.40, -0.06, -0.15, 0.60, 0.05, 0.50, 0.92, 0.15, -0.3, 0.60, 3.3, -0.2, 0.000),
  8: _Style(0.20, 0.16, 0.80, 0.00, 0.10, 0.10, 1.45, 0.07, 1.00, 1.40, 0.45, 1.0, 0.80, 4.5, 0.5, 0.000),
}


def _emotion_style(emotion_code: int, intensity: int) -> _Style:
  """The style of an emotion at an intensity: neutral plus a scaled deviation."""
  if emotion_code not in _STYLES:
    raise ValueError(f'Emotion code {emotion_code} is not a RAVDESS emotion code: expected one of {sorted(_STYLES)}.')
  if intensity not in _INTENSITY_SCALE:
    raise ValueError(f'Intensity {intensity} is not a RAVDESS intensity: expected 1 (normal) or 2 (strong).')
  neutral, emotion = _STYLES[1], _STYLES[emotion_code]
  scale = _INTENSITY_SCALE[intensity]
  return _Style(
    **{
      field.name: getattr(neutral, field.name) + scale * (getattr(emotion, field.name) - getattr(neutral, field.name))
      for field in dataclasses.fields(_Style)
    }
  )


@dataclasses.dataclass(frozen=True)
class _Actor:
  """What stays fixed across one actor's clips."""

  face_height: float  # Face half-height as a fraction of the frame height.
  face_aspect: float  # Half-width over half-height.
  center_x: float  # Face centre as fractions of the frame size.
  center_y: float
  skin: tuple[float, float, float]  # BGR.
  hair: tuple[float, float, float]
  shirt: tuple[float, float, float]
  background: tuple[float, float, float]
  eye_spacing: float  # Eye offset from the centre line, in face half-widths.
  brow_thickness: float
  long_hair: bool
  base_pitch: float  # Hz.
  formant_scale: float  # Vocal-tract length: shorter (female) shifts formants up.


_SKIN_TONES = ((185, 205, 240), (150, 180, 225), (120, 155, 200), (85, 120, 170), (72, 102, 148))


def _make_actor(actor: int, seed: int) -> _Actor:
  rng = np.random.default_rng([seed, actor, 1])
  male = ravdess.gender_of(actor) == 0
  skin = np.array(_SKIN_TONES[(actor - 1) % len(_SKIN_TONES)], float) * rng.uniform(0.95, 1.05, 3)
  # Backgrounds are light, like RAVDESS's white studio wall, with a per-actor tint.
  background = rng.uniform(200, 250) * rng.uniform(0.92, 1.0, 3)
  return _Actor(
    face_height=rng.uniform(0.22, 0.27),
    face_aspect=rng.uniform(0.74, 0.82),
    center_x=0.5 + rng.uniform(-0.08, 0.08),
    center_y=0.44 + rng.uniform(-0.04, 0.04),
    skin=tuple(np.clip(skin, 0, 255)),
    hair=tuple(rng.uniform(15, 60) * rng.uniform(0.7, 1.0, 3)),
    shirt=tuple(rng.uniform(10, 70, 3)),
    background=tuple(background),
    eye_spacing=rng.uniform(0.36, 0.42),
    brow_thickness=rng.uniform(0.07, 0.10),
    long_hair=not male and rng.uniform() < 0.75,
    base_pitch=rng.uniform(95, 135) if male else rng.uniform(185, 235),
    formant_scale=rng.uniform(0.95, 1.02) if male else rng.uniform(1.12, 1.2),
  )


@dataclasses.dataclass(frozen=True)
class _Take:
  """What varies between two takes of the same actor, emotion and intensity."""

  rng_seed: int
  speech_start: float  # Fraction of the clip before speech begins.
  rate_jitter: float
  pitch_jitter: float
  loudness_jitter: float
  motion_phases: tuple[float, float, float]
  offset_x: float  # Small head-position shift, in face half-widths.
  offset_y: float
  blink_times: tuple[float, ...]  # Seconds.


def _make_take(seed: int, name: ravdess.ClipName) -> _Take:
  fields = (name.emotion_code, name.intensity, name.statement, name.repetition, name.actor)
  rng = np.random.default_rng([seed, *fields, 2])
  return _Take(
    rng_seed=int(rng.integers(2**31)),
    speech_start=rng.uniform(0.12, 0.2),
    rate_jitter=rng.uniform(0.93, 1.07),
    pitch_jitter=rng.uniform(0.97, 1.03),
    loudness_jitter=rng.uniform(0.92, 1.05),
    motion_phases=tuple(rng.uniform(0, 2 * np.pi, 3)),
    offset_x=rng.uniform(-0.1, 0.1),
    offset_y=rng.uniform(-0.06, 0.06),
    blink_times=tuple(np.sort(rng.uniform(0.3, 6.0, 2))),
  )


def _syllable_onsets(style: _Style, take: _Take, statement: int, seconds: float) -> tuple[np.ndarray, float]:
  """Syllable onset times [num_syllables] in seconds, and the syllable duration."""
  rate = style.syllable_rate * take.rate_jitter
  num_syllables = _SYLLABLES_PER_STATEMENT[statement]
  jitter = np.random.default_rng(take.rng_seed).uniform(-0.08, 0.08, num_syllables) / rate
  onsets = take.speech_start * seconds + np.arange(num_syllables) / rate + jitter
  return onsets, 1.0 / rate


def _speech_envelope(times: np.ndarray, onsets: np.ndarray, duration: float) -> np.ndarray:
  """A raised-cosine bump per syllable, in [0, 1], at sorted `times` [num_times]."""
  envelope = np.zeros(len(times))
  for onset in onsets:
    start, stop = np.searchsorted(times, (onset, onset + duration))
    bump = np.sin(np.pi * (times[start:stop] - onset) / duration) ** 2
    envelope[start:stop] = np.maximum(envelope[start:stop], bump)
  return envelope


# ----------------------------------------------------------------------------- audio


def _formant_response(freqs: np.ndarray, formants: Sequence[tuple[float, float, float]]) -> np.ndarray:
  """Magnitude response [num_freqs] of a bank of resonances (centre, bandwidth, gain)."""
  response = np.full_like(freqs, 0.12)  # The open tract between resonances.
  for centre, bandwidth, gain in formants:
    response += gain / (1.0 + ((freqs - centre) / (bandwidth / 2)) ** 2)
  return response


def _synthesize_audio(
  style: _Style, actor: _Actor, take: _Take, statement: int, seconds: float, sample_rate: int
) -> np.ndarray:
  """A voiced, speech-like waveform [num_samples] in [-1, 1], float32."""
  rng = np.random.default_rng(take.rng_seed + 1)
  num_samples = round(seconds * sample_rate)
  times = np.arange(num_samples) / sample_rate
  onsets, duration = _syllable_onsets(style, take, statement, seconds)
  envelope = _speech_envelope(times, onsets, duration)  # [num_samples]
  stress = rng.uniform(0.65, 1.0, len(onsets))
  stress_curve = np.interp(times, onsets + duration / 2, stress)

  # Pitch contour: a slope over the sentence, accents on syllables, vibrato.
  speech_begin, speech_end = onsets[0], onsets[-1] + duration
  progress = np.clip((times - speech_begin) / max(speech_end - speech_begin, 1e-3), 0, 1) - 0.5
  f0 = actor.base_pitch * style.pitch_scale * take.pitch_jitter
  contour = 1 + style.pitch_range * (style.pitch_slope * progress + 0.6 * envelope * stress_curve)
  contour += style.tremor * np.sin(2 * np.pi * 6.0 * times)
  pitch = f0 * contour  # [num_samples], Hz
  phase = np.cumsum(pitch) / sample_rate
  # A sawtooth glottal source: all harmonics at 1/k, shaped below.
  source = 2.0 * (phase - np.floor(phase)) - 1.0
  voiced = source * envelope * stress_curve + 0.03 * rng.standard_normal(num_samples) * envelope
  # Consonant bursts: short noise at each syllable onset.
  burst = _speech_envelope(times, onsets - 0.01, 0.04) * rng.standard_normal(num_samples) * 0.03

  # Vocal tract: two vowels alternating by syllable, plus a spectral tilt that
  # emotion controls (bright anger, dull sadness).
  spectrum_voiced = np.fft.rfft(voiced)
  spectrum_burst = np.fft.rfft(burst)
  freqs = np.fft.rfftfreq(num_samples, 1 / sample_rate)
  fs = actor.formant_scale
  tilt = (1.0 + freqs / 500.0) ** (-0.6 + 0.3 * style.brightness)
  vowel_a = _formant_response(freqs, ((750 * fs, 130, 1.0), (1200 * fs, 150, 0.6), (2600 * fs, 250, 0.25)))
  vowel_i = _formant_response(freqs, ((320 * fs, 100, 1.0), (2200 * fs, 200, 0.45), (3000 * fs, 300, 0.3)))
  a_part = np.fft.irfft(spectrum_voiced * vowel_a * tilt, num_samples)
  i_part = np.fft.irfft(spectrum_voiced * vowel_i * tilt, num_samples)
  burst_part = np.fft.irfft(spectrum_burst * np.exp(-(((freqs - 4500) / 1500) ** 2)), num_samples)
  vowel_mix = 0.5 + 0.5 * np.cos(np.pi * np.clip((times - onsets[0]) / duration, 0, None))
  speech = a_part * vowel_mix + i_part * (1 - vowel_mix) + burst_part

  # Loudness is the RMS while speaking, so it does not depend on a single peak.
  speaking_rms = np.sqrt(np.mean(speech[envelope > 0.5] ** 2)) if np.any(envelope > 0.5) else 1.0
  speech *= 0.12 * style.loudness * take.loudness_jitter / max(speaking_rms, 1e-6)
  speech += 3e-4 * rng.standard_normal(num_samples)  # Room noise floor.
  return np.clip(speech, -1, 1).astype(np.float32)


# ----------------------------------------------------------------------------- video


def _ellipse(image, cx, cy, ax, ay, color, angle=0.0, start=0, end=360):
  """A filled anti-aliased ellipse at sub-pixel position (cv2 takes fixed point)."""
  cv2.ellipse(
    image,
    (int(cx * 16), int(cy * 16)),
    (max(int(ax * 16), 1), max(int(ay * 16), 1)),
    angle,
    start,
    end,
    color,
    -1,
    cv2.LINE_AA,
    4,
  )


def _polygon(image, points, color):
  cv2.fillPoly(image, [np.round(points * 16).astype(np.int32)], color, cv2.LINE_AA, 4)


def _shade(color, factor):
  return tuple(float(min(255.0, c * factor)) for c in color)


def _background(actor: _Actor, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
  """The static backdrop [height, width, 3] uint8: a lit wall with a little texture."""
  ys = np.linspace(-1, 1, height, dtype=np.float32)[:, None]
  xs = np.linspace(-1, 1, width, dtype=np.float32)[None, :]
  light = 1.0 - 0.08 * (xs**2 + ys**2)  # [height, width]
  base = np.array(actor.background, np.float32)
  image = light[..., None] * base[None, None, :]
  noise = cv2.resize(rng.normal(0, 3, (max(height // 8, 2), max(width // 8, 2))).astype(np.float32), (width, height))
  return np.clip(image + noise[..., None], 0, 255).astype(np.uint8)


def _draw_face(image: np.ndarray, a: float, b: float, cx: float, cy: float, actor: _Actor, face: dict) -> None:
  """Draws a frontal face of half-width `a` and half-height `b` centred at (cx, cy)."""
  skin, hair = actor.skin, actor.hair
  # Long hair, shoulders, neck, hair behind the head, ears.
  if actor.long_hair:
    _ellipse(image, cx, cy + 0.35 * b, 1.3 * a, 1.3 * b, hair)
  _ellipse(image, cx, cy + 2.35 * b, 2.3 * a, 1.2 * b, actor.shirt)
  neck = [[-0.5, 0.6], [0.5, 0.6], [0.55, 1.35], [-0.55, 1.35]]
  _polygon(image, np.array([[cx + x * a, cy + y * b] for x, y in neck]), _shade(skin, 0.78))
  _ellipse(image, cx, cy - 0.18 * b, 1.16 * a, 0.98 * b, hair)
  for side in (-1, 1):
    _ellipse(image, cx + side * 0.98 * a, cy + 0.02 * b, 0.16 * a, 0.24 * b, _shade(skin, 0.9))
  # Face oval, darker at the rim so the cheeks read as the brightest area.
  _ellipse(image, cx, cy, a, b, _shade(skin, 0.82))
  _ellipse(image, cx, cy + 0.02 * b, 0.88 * a, 0.93 * b, skin)
  for side in (-1, 1):
    _ellipse(image, cx + side * 0.42 * a, cy + 0.22 * b, 0.3 * a, 0.22 * b, _shade(skin, 1.08))
  # Hairline: the top of the head is hair.
  _ellipse(image, cx, cy - 0.76 * b, 0.9 * a, 0.4 * b, hair, start=180, end=360)
  _ellipse(image, cx, cy - 0.76 * b, 0.9 * a, 0.05 * b, hair, start=0, end=180)

  eye_y = cy - 0.12 * b
  eye_dx = actor.eye_spacing * a
  eye_open = face['eye_open']
  for side in (-1, 1):
    ex = cx + side * eye_dx
    # Eye socket shadow, from the brow down to below the eye: the dark band that
    # Haar features key on, kept unbroken when the brows rise.
    brow_y = eye_y - 0.2 * b - face['brow_raise'] * a
    socket_bottom = eye_y + 0.13 * b
    _ellipse(image, ex, (brow_y + socket_bottom) / 2, 0.28 * a, (socket_bottom - brow_y) / 2, _shade(skin, 0.5))
    # Brow: a thick bar, its inner end lifted by `brow_slant`.
    inner_x, outer_x = cx + side * 0.12 * a, cx + side * (eye_dx + 0.3 * a)
    inner_y = brow_y - face['brow_slant'] * 0.25 * a
    thick = actor.brow_thickness * a
    brow = [(inner_x, inner_y - thick), (outer_x, brow_y - 0.6 * thick), (outer_x, brow_y + 0.4 * thick)]
    _polygon(image, np.array([*brow, (inner_x, inner_y + thick)]), hair)
    # Eye: a greyish white and a dark iris, both as open as `eye_open`.
    open_y = max(0.075 * a * eye_open, 0.012 * a)
    _ellipse(image, ex, eye_y, 0.15 * a, open_y, (165, 170, 175))
    _ellipse(image, ex, eye_y, 0.085 * a, min(0.085 * a, open_y), (30, 25, 25))
  # Nose: a bright bridge with shaded sides and dark nostrils.
  for side in (-1, 1):
    _ellipse(image, cx + side * 0.11 * a, cy + 0.12 * b, 0.05 * a, 0.2 * b, _shade(skin, 0.8))
    _ellipse(image, cx + side * 0.08 * a, cy + 0.34 * b, 0.06 * a, 0.03 * b, _shade(skin, 0.45))
  _ellipse(image, cx, cy + 0.08 * b, 0.07 * a, 0.24 * b, _shade(skin, 1.15))

  # Mouth: lips along a curve whose corners lift with `smile`, opened by `mouth_open`.
  mouth_y = cy + 0.56 * b
  half_width = 0.32 * a * face['mouth_width']
  u = np.linspace(-1, 1, 17)
  lift = face['smile'] * 0.18 * a * u**2
  gap = face['mouth_open'] * a * (1 - u**2)
  upper = np.stack([cx + u * half_width, mouth_y - lift - 0.35 * gap], axis=1)
  lower = np.stack([cx + u * half_width, mouth_y - lift + 0.65 * gap], axis=1)
  lip = 0.06 * a * (1 - 0.7 * u**2)
  lips = np.concatenate([upper - [0, 1] * lip[:, None], (lower + [0, 1] * lip[:, None])[::-1]])
  _polygon(image, lips, (skin[0] * 0.55, skin[1] * 0.5, skin[2] * 0.75))
  _polygon(image, np.concatenate([upper, lower[::-1]]), (25, 20, 45))


def _render_frames(
  style: _Style,
  actor: _Actor,
  take: _Take,
  statement: int,
  width: int,
  height: int,
  seconds: float,
  fps: float,
  times: np.ndarray | None = None,
):
  """Yields the take's frames, each [height, width, 3] uint8 BGR; the mouth moves with the audio's syllables.

  `times` ([num_frames] seconds into the take) defaults to every 1 / fps over `seconds`.
  """
  rng = np.random.default_rng(take.rng_seed + 2)
  background = _background(actor, width, height, rng)
  if times is None:
    times = np.arange(max(round(seconds * fps), 1)) / fps
  num_frames = len(times)
  onsets, duration = _syllable_onsets(style, take, statement, seconds)
  talking = _speech_envelope(times, onsets, duration)  # [num_frames]
  b = actor.face_height * height
  a = actor.face_aspect * b
  # Head sway: two sines across, one up-down, at the emotion's amplitude and speed.
  p0, p1, p2 = take.motion_phases
  w = 2 * np.pi * style.motion_speed * times
  sway_x = style.motion_amplitude * a * (np.sin(w + p0) + 0.4 * np.sin(2.3 * w + p1))
  sway_y = style.motion_amplitude * a * 0.6 * np.sin(0.7 * w + p2)
  centers_x = actor.center_x * width + take.offset_x * a + sway_x
  centers_y = actor.center_y * height + take.offset_y * a + sway_y + 0.03 * a * talking
  blink = np.zeros(num_frames)
  for blink_time in take.blink_times:
    blink = np.maximum(blink, np.clip(1 - np.abs(times - blink_time) * fps / 2.0, 0, 1))
  sigma = min(max(0.5, a / 60), 1.0)
  margin = int(3 * sigma) + 2
  for i in range(num_frames):
    frame = background.copy()
    face = {
      'mouth_open': style.mouth_open + style.mouth_talk * talking[i],
      'mouth_width': style.mouth_width,
      'smile': style.smile,
      'brow_raise': style.brow_raise,
      'brow_slant': style.brow_slant,
      'eye_open': style.eye_open * (1 - 0.85 * blink[i]),
    }
    _draw_face(frame, a, b, centers_x[i], centers_y[i], actor, face)
    # Soften only the head region: edges like a camera's, at the cost of a small blur.
    x0 = int(max(centers_x[i] - 1.4 * a - margin, 0))
    x1 = int(min(centers_x[i] + 1.4 * a + margin, width))
    y0 = int(max(centers_y[i] - 1.3 * b - margin, 0))
    y1 = int(min(centers_y[i] + 1.5 * b + margin, height))
    frame[y0:y1, x0:x1] = cv2.GaussianBlur(frame[y0:y1, x0:x1], (0, 0), sigma)
    yield frame


# ----------------------------------------------------------------------------- writing


def _write_video(path, frames, audio, width, height, frame_rate, sample_rate, container_format='mp4', rotation=0):
  """Encodes BGR `frames` as H.264 (yuv420p) and mono `audio` [num_samples] (or None: no track) as AAC.

  `rotation` (degrees counter-clockwise, a multiple of 90) stores each frame turned the other
  way with a display rotation that turns it back, as phones store portrait video.
  """
  turns = rotation // 90 % 4
  stored_width, stored_height = (height, width) if turns % 2 else (width, height)
  with av.open(path, mode='w', format=container_format) as container:
    video = container.add_stream('libx264', rate=frame_rate)
    video.width, video.height, video.pix_fmt = stored_width, stored_height, 'yuv420p'
    if turns:
      video.set_display_rotation(rotation)
    # One thread and fixed settings: identical bytes for identical input.
    video.codec_context.thread_count = 1
    video.options = {'preset': 'ultrafast', 'crf': '20'}
    if audio is not None:
      sound = container.add_stream('aac', rate=sample_rate, layout='mono')
      sound.bit_rate = 96000
      sound.options = {'aac_coder': 'fast'}  # The default coder takes 3x longer.
    for index, bgr in enumerate(frames):
      if turns:
        bgr = np.ascontiguousarray(np.rot90(bgr, k=-turns))
      # cv2's colour conversion is faster than letting PyAV convert bgr24.
      frame = av.VideoFrame.from_ndarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420), format='yuv420p')
      frame.pts = index
      frame.time_base = 1 / frame_rate
      container.mux(video.encode(frame))
    container.mux(video.encode(None))
    if audio is not None:
      # One frame holding the whole track: the encoder cuts it into AAC frames.
      audio_frame = av.AudioFrame.from_ndarray(audio[None, :], format='fltp', layout='mono')
      audio_frame.sample_rate = sample_rate
      audio_frame.pts = 0
      audio_frame.time_base = fractions.Fraction(1, sample_rate)
      container.mux(sound.encode(audio_frame))
      container.mux(sound.encode(None))


def _write_audio(path, audio, sample_rate, extension) -> None:
  """Writes mono `audio` [num_samples] float32 as an audio-only file of type `extension`."""
  if extension in _SOUNDFILE_FORMATS:
    soundfile.write(path, audio, sample_rate, format=_SOUNDFILE_FORMATS[extension])
    return
  container_format, codec = _AV_AUDIO_FORMATS[extension]
  with av.open(path, mode='w', format=container_format) as container:
    sound = container.add_stream(codec, rate=sample_rate, layout='mono')
    sound.bit_rate = 96000
    audio_frame = av.AudioFrame.from_ndarray(audio[None, :], format='fltp', layout='mono')
    audio_frame.sample_rate = sample_rate
    audio_frame.pts = 0
    audio_frame.time_base = fractions.Fraction(1, sample_rate)
    for chunk in _audio_chunks(audio_frame, audio, sample_rate, codec):
      container.mux(sound.encode(chunk))
    container.mux(sound.encode(None))


def _audio_chunks(whole, audio, sample_rate, codec):
  """The encoder input: the whole track as one frame, or 1152-sample frames for MP3 (which takes no more)."""
  if codec != 'libmp3lame':
    yield whole
    return
  for start in range(0, audio.size, 1152):
    chunk = av.AudioFrame.from_ndarray(audio[None, start : start + 1152], format='fltp', layout='mono')
    chunk.sample_rate = sample_rate
    chunk.pts = start
    chunk.time_base = fractions.Fraction(1, sample_rate)
    yield chunk


def _write_atomic(path: str, write) -> None:
  """Calls `write(partial_path)` and renames the result to `path`: an interrupted run leaves no half file."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  partial_path = path + '.partial'
  try:
    write(partial_path)
    os.replace(partial_path, path)
  finally:
    if os.path.exists(partial_path):  # Only after a failure.
      os.remove(partial_path)


def write_clip(
  path: str,
  *,
  emotion_code: int,
  intensity: int,
  statement: int,
  repetition: int,
  actor: int,
  width: int = 320,
  height: int = 240,
  seconds: float = 3.5,
  fps: float = 30000 / 1001,
  sample_rate: int = 48000,
  seed: int = 0,
) -> None:
  """Writes one SYNTHETIC clip: H.264 video and AAC mono audio in an mp4.

  The file appears at `path` only when complete (written under a temporary name,
  then renamed), so an interrupted run never leaves a truncated clip behind.

  Args:
    path: where to write the mp4; its name is not checked (any name works).
    emotion_code: RAVDESS emotion code 1-8 (1 neutral, 2 calm, ..., 8 surprise).
    intensity: 1 normal, 2 strong (exaggerates the emotion's face and voice).
    statement: 1 or 2 (6 or 7 syllables of speech).
    repetition: 1 or 2 (a different take).
    actor: 1-24; odd actors are male (lower pitch), even actors female.
    width: frame width in pixels, even (H.264 4:2:0).
    height: frame height in pixels, even.
    seconds: clip duration.
    fps: video frame rate (RAVDESS: 29.97).
    sample_rate: audio sample rate in Hz (RAVDESS: 48000).
    seed: varies every actor and take; the same seed gives the same clip.
  """
  if width % 2 or height % 2 or width < 32 or height < 32:
    raise ValueError(f'Frame size {width}x{height} is not usable: width and height must be even and at least 32.')
  if seconds <= 0:
    raise ValueError(f'Clip duration {seconds} s must be positive.')
  name = ravdess.ClipName(
    ravdess.MODALITY_AUDIO_VIDEO, ravdess.VOCAL_CHANNEL_SPEECH, emotion_code, intensity, statement, repetition, actor
  )
  ravdess.parse_name(name.filename())  # Raises a clear ValueError for a field RAVDESS does not have.
  style = _emotion_style(emotion_code, intensity)
  actor_look = _make_actor(actor, seed)
  take = _make_take(seed, name)
  audio = _synthesize_audio(style, actor_look, take, statement, seconds, sample_rate)  # [num_samples]

  frames = _render_frames(style, actor_look, take, statement, width, height, seconds, fps)
  frame_rate = fractions.Fraction(fps).limit_denominator(1001)
  _write_atomic(path, lambda partial: _write_video(partial, frames, audio, width, height, frame_rate, sample_rate))


# What write_recording can write, by file extension.
_VIDEO_FORMATS = {'.mp4': 'mp4', '.mov': 'mov', '.mkv': 'matroska'}
_SOUNDFILE_FORMATS = {'.wav': 'WAV', '.flac': 'FLAC', '.ogg': 'OGG'}
_AV_AUDIO_FORMATS = {'.mp3': ('mp3', 'libmp3lame'), '.m4a': ('ipod', 'aac')}
RECORDING_EXTENSIONS = tuple(_VIDEO_FORMATS) + tuple(_SOUNDFILE_FORMATS) + tuple(_AV_AUDIO_FORMATS)


class Segment(NamedTuple):
  """Where one emotion lasts in a SYNTHETIC recording: [start, end) seconds."""

  start: float
  end: float
  emotion: str  # RAVDESS emotion name, e.g. 'anger' ('calm' for code 2).
  emotion_code: int


def write_recording(
  path: str,
  *,
  emotion_codes: Sequence[int] = (1, 5, 3),
  change_times: Sequence[float] = (7.0, 14.0),
  seconds: float = 20.0,
  intensity: int = 2,
  actor: int = 1,
  width: int = 320,
  height: int = 240,
  fps: float = 30000 / 1001,
  sample_rate: int = 48000,
  utterance_seconds: float = 3.5,
  audio: bool = True,
  rotation: int = 0,
  seed: int = 0,
) -> list[Segment]:
  """Writes one SYNTHETIC recording in which the emotion changes at `change_times`.

  The same actor speaks throughout, with the faces and voices of `write_clip`: each segment
  is a run of utterances of `utterance_seconds` (a RAVDESS clip's length; the last of a
  segment takes what is left) in the segment's emotion, alternating the two statements and
  repetitions. Deterministic: the same arguments give the same file.

  The file's extension decides what is written: a video (.mp4, .mov, .mkv; H.264 with an AAC
  track unless `audio=False`) or audio only (.wav, .flac, .ogg, .mp3, .m4a).

  Args:
    path: where to write; its extension is one of `RECORDING_EXTENSIONS`.
    emotion_codes: RAVDESS emotion code of each segment, in order (1 neutral ... 8 surprise).
    change_times: seconds at which the next segment starts; one fewer than `emotion_codes`.
    seconds: the recording's duration.
    intensity: 1 normal or 2 strong, for every emotion but neutral (always normal).
    actor: 1-24; odd actors are male, even female.
    width: frame width as shown, even (240 x 320 is a portrait video).
    height: frame height as shown, even.
    fps: video frame rate.
    sample_rate: audio sample rate in Hz.
    utterance_seconds: length of one spoken sentence.
    audio: False writes a video without an audio track.
    rotation: store the video turned, with a display rotation of this many degrees
      counter-clockwise (0, 90, 180, 270) that turns it back, as phones do.
    seed: varies the actor's look and the takes.

  Returns:
    The segments, [Segment(start, end, emotion, emotion_code)] in time order.

  Raises:
    ValueError: an extension, frame size, emotion code or change time that does not fit.
  """
  extension = os.path.splitext(path)[1].lower()
  if extension not in RECORDING_EXTENSIONS:
    raise ValueError(f'{path}: write_recording writes {", ".join(RECORDING_EXTENSIONS)} files, not {extension!r}.')
  if width % 2 or height % 2 or width < 32 or height < 32:
    raise ValueError(f'Frame size {width}x{height} is not usable: width and height must be even and at least 32.')
  if rotation % 90:
    raise ValueError(f'Rotation {rotation} is not a multiple of 90 degrees.')
  bounds = [0.0, *map(float, change_times), float(seconds)]
  if len(bounds) != len(emotion_codes) + 1 or any(b <= a for a, b in zip(bounds, bounds[1:], strict=False)):
    raise ValueError(
      f'Change times {tuple(change_times)} must be {len(emotion_codes) - 1} increasing times inside '
      f'(0, {seconds}) s, one between each two of the emotion codes {tuple(emotion_codes)}.'
    )
  segments = []
  for code, start, end in zip(emotion_codes, bounds, bounds[1:], strict=False):
    _emotion_style(code, 1)  # A clear ValueError for a code RAVDESS does not have.
    segments.append(Segment(start, end, ravdess.EMOTION_NAMES[code], code))

  actor_look = _make_actor(actor, seed)
  num_frames = max(round(seconds * fps), 1)
  num_samples = round(seconds * sample_rate)
  sound = np.zeros([num_samples], np.float32)
  # Utterances: (start, end, emotion code, take index within the segment).
  utterances = []
  for segment in segments:
    starts = np.arange(segment.start, segment.end, utterance_seconds)
    if len(starts) > 1 and segment.end - starts[-1] < 1.0:  # A stub under a second joins the previous one.
      starts = starts[:-1]
    for index, start in enumerate(starts):
      end = starts[index + 1] if index + 1 < len(starts) else segment.end
      utterances.append((float(start), float(end), segment.emotion_code, index))

  def takes():
    for start, end, code, index in utterances:
      level = 1 if code == 1 else intensity
      statement, repetition = 1 + index % 2, 1 + index // 2 % 2
      name = ravdess.ClipName(
        ravdess.MODALITY_AUDIO_VIDEO, ravdess.VOCAL_CHANNEL_SPEECH, code, level, statement, repetition, actor
      )
      yield start, end, _emotion_style(code, level), _make_take(seed, name), statement

  for start, end, style, take, statement in takes():
    first, stop = round(start * sample_rate), round(end * sample_rate)
    sound[first:stop] = _synthesize_audio(style, actor_look, take, statement, (stop - first) / sample_rate, sample_rate)

  def frames():
    for start, end, style, take, statement in takes():
      first = math.ceil(start * fps - 1e-9)
      stop = num_frames if end >= seconds else math.ceil(end * fps - 1e-9)
      times = np.arange(first, stop) / fps - start  # Seconds into the utterance.
      yield from _render_frames(style, actor_look, take, statement, width, height, end - start, fps, times)

  if extension in _VIDEO_FORMATS:
    frame_rate = fractions.Fraction(fps).limit_denominator(1001)

    def write(partial):
      _write_video(
        partial,
        frames(),
        sound if audio else None,
        width,
        height,
        frame_rate,
        sample_rate,
        container_format=_VIDEO_FORMATS[extension],
        rotation=rotation,
      )

  else:

    def write(partial):
      _write_audio(partial, sound, sample_rate, extension)

  _write_atomic(path, write)
  return segments


def clip_names(
  num_actors: int = 2, first_actor: int = 1, emotion_codes: Sequence[int] = (1, 2, 3, 4, 5, 6, 7, 8)
) -> list[ravdess.ClipName]:
  """Every full-AV speech clip RAVDESS has for these actors and emotions.

  Ordered so that any prefix spreads over emotions, then actors, then takes:
  the first 8 are one take of each emotion, so a small `max_clips` still covers
  every class.
  """
  names = []
  for actor in range(first_actor, first_actor + num_actors):
    for emotion_code in emotion_codes:
      for intensity in (1,) if emotion_code == 1 else (1, 2):
        for statement in (1, 2):
          for repetition in (1, 2):
            names.append(
              ravdess.ClipName(
                ravdess.MODALITY_AUDIO_VIDEO,
                ravdess.VOCAL_CHANNEL_SPEECH,
                emotion_code,
                intensity,
                statement,
                repetition,
                actor,
              )
            )
  return sorted(names, key=lambda n: (n.repetition, n.statement, n.intensity, n.actor, n.emotion_code))


def generate(
  output_dir: str,
  *,
  num_actors: int = 2,
  first_actor: int = 1,
  width: int = 320,
  height: int = 240,
  seconds: float = 3.5,
  seed: int = 0,
  emotion_codes: Sequence[int] = (1, 2, 3, 4, 5, 6, 7, 8),
  max_clips: int | None = None,
  progress: bool = False,
) -> list[str]:
  """Writes SYNTHETIC RAVDESS-format clips as `output_dir/Actor_XX/01-01-EE-II-SS-RR-AA.mp4`.

  60 clips per actor with all 8 emotion codes, as in RAVDESS. Deterministic: the
  same arguments give the same clips. Existing files are overwritten.

  Args:
    output_dir: where the `Actor_XX` folders go (created if missing).
    num_actors: how many actors, numbered from `first_actor`.
    first_actor: the first actor's number (1-24; odd male, even female).
    width: frame width in pixels, even.
    height: frame height in pixels, even.
    seconds: duration of every clip.
    seed: varies every actor and take; the same seed gives the same clips.
    emotion_codes: RAVDESS emotion codes to write (default all 8, calm included).
    max_clips: write only the first this many of `clip_names`' order, which
      covers every emotion before repeating one.
    progress: show a progress bar.

  Returns:
    The written paths, sorted.
  """
  if num_actors < 1 or first_actor < 1 or first_actor + num_actors - 1 > ravdess.NUM_ACTORS:
    raise ValueError(
      f'Actors {first_actor}..{first_actor + num_actors - 1} are out of range: RAVDESS actors are 1..{ravdess.NUM_ACTORS}.'
    )
  names = clip_names(num_actors, first_actor, emotion_codes)
  if max_clips is not None:
    names = names[:max_clips]
  paths = []
  bar = tqdm.tqdm(
    names, desc='synthetic clips', unit='clip', disable=not progress, mininterval=0.5 if sys.stderr.isatty() else 30
  )
  for name in bar:
    path = os.path.join(output_dir, f'Actor_{name.actor:02d}', name.filename())
    write_clip(
      path,
      emotion_code=name.emotion_code,
      intensity=name.intensity,
      statement=name.statement,
      repetition=name.repetition,
      actor=name.actor,
      width=width,
      height=height,
      seconds=seconds,
      seed=seed,
    )
    paths.append(path)
  return sorted(paths)


def main(argv: Sequence[str] | None = None) -> None:
  """The command line: writes the clips (or one recording) and says, in one line, what was written."""
  parser = argparse.ArgumentParser(
    prog='python -m data_prep.synthetic',
    description='Writes SYNTHETIC RAVDESS-format clips (never real RAVDESS data) for tests, demos and benchmarks.',
  )
  parser.add_argument('--output_dir', help='Directory to write Actor_XX/*.mp4 into.')
  parser.add_argument(
    '--recording',
    help='Instead of clips, write one recording to this file, in which the emotion changes twice '
    '(neutral, anger, happiness; --seconds long).',
  )
  parser.add_argument('--num_actors', type=int, default=4, help='Number of actors (60 clips each).')
  parser.add_argument('--first_actor', type=int, default=1, help='Number of the first actor (1-24).')
  parser.add_argument('--width', type=int, default=320, help='Frame width in pixels (even).')
  parser.add_argument('--height', type=int, default=240, help='Frame height in pixels (even).')
  parser.add_argument('--seconds', type=float, default=None, help='Clip duration (3.5 s) or recording duration (20 s).')
  parser.add_argument('--seed', type=int, default=0, help='Seed for the actors and takes.')
  parser.add_argument('--max_clips', type=int, default=None, help='Write at most this many (spread over emotions).')
  args = parser.parse_args(argv)
  if (args.output_dir is None) == (args.recording is None):
    parser.error('pass exactly one of --output_dir (clips) and --recording (one recording).')
  start = time.perf_counter()
  try:
    if args.recording:
      seconds = args.seconds or 20.0
      segments = write_recording(
        args.recording,
        change_times=(round(seconds / 3, 2), round(2 * seconds / 3, 2)),
        seconds=seconds,
        width=args.width,
        height=args.height,
        seed=args.seed,
      )
    else:
      paths = generate(
        args.output_dir,
        num_actors=args.num_actors,
        first_actor=args.first_actor,
        width=args.width,
        height=args.height,
        seconds=args.seconds or 3.5,
        seed=args.seed,
        max_clips=args.max_clips,
        progress=True,
      )
  except (OSError, ValueError) as error:
    raise SystemExit(f'data_prep.synthetic: {error}') from None
  if args.recording:
    timeline = ', '.join(f'{s.emotion} {s.start:g}-{s.end:g} s' for s in segments)
    print(
      f'Wrote a SYNTHETIC recording (not real RAVDESS data) to {args.recording}: {timeline}; '
      f'{time.perf_counter() - start:.1f} s.'
    )
    return
  print(
    f'Wrote {len(paths)} SYNTHETIC RAVDESS-format clips (not real RAVDESS data) to {args.output_dir}: '
    f'{args.num_actors} actors, {args.width}x{args.height}, {args.seconds or 3.5} s, seed {args.seed}, '
    f'{time.perf_counter() - start:.1f} s.'
  )


if __name__ == '__main__':
  main()

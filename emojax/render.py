"""Pictures of predictions over time: the timeline PNG and the annotated copy of a video.

`timeline_png` draws each emotion's probability over a recording's windows, a panel per
model; `annotate_video`
re-encodes a video with the face box and a bar chart of the current window's probabilities
on every frame, keeping its audio. Both take plain arrays (window times, probabilities, face
boxes), so they know nothing of how the numbers were made.
"""

import math
import os
from collections.abc import Sequence

import av
import cv2
import numpy as np

# One colour per class, in label order (matplotlib's tab10, as RGB 0-255 for the video).
_TAB10 = (
  (31, 119, 180),
  (255, 127, 14),
  (44, 160, 44),
  (214, 39, 40),
  (148, 103, 189),
  (140, 86, 75),
  (227, 119, 194),
  (127, 127, 127),
  (188, 189, 34),
  (23, 190, 207),
)


def class_colour(index: int) -> tuple[int, int, int]:
  """RGB 0-255 of class `index`, the colour of its line in the timeline and its bar in the video."""
  return _TAB10[index % len(_TAB10)]


def window_edges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
  """[W + 1] seconds: window k stands for [edges[k], edges[k + 1]), the time nearer its centre than any other.

  Overlapping windows would otherwise claim the same seconds; the first edge is the first
  window's start and the last the last window's end.
  """
  centres = (np.asarray(starts, float) + np.asarray(ends, float)) / 2
  return np.concatenate([[starts[0]], (centres[1:] + centres[:-1]) / 2, [ends[-1]]])


def timeline_png(
  path: str,
  starts: Sequence[float],
  ends: Sequence[float],
  panels: dict[str, np.ndarray],
  class_names: Sequence[str],
  title: str,
) -> str:
  """Writes a PNG of each class's probability over time: one panel per model, one line per class, the top shaded.

  Args:
    path: the PNG to write (its directory is created).
    starts: [W] window start times in seconds.
    ends: [W] window end times.
    panels: panel title (such as a model's name) -> [W, classes] probabilities; a row of NaN
      (the model could not score that window) leaves a gap.
    class_names: the classes in label order.
    title: the figure's title.

  Returns:
    `path`.
  """
  from matplotlib.figure import Figure  # The object API: no pyplot state, no display backend.

  starts, ends = np.asarray(starts, float), np.asarray(ends, float)
  centres = (starts + ends) / 2
  edges = window_edges(starts, ends)
  colours = [np.array(class_colour(c)) / 255 for c in range(len(class_names))]
  figure = Figure(figsize=(10, 1.2 + 2.4 * len(panels)), layout='constrained')
  figure.suptitle(title, fontsize=10)
  all_axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
  for axes, (name, probabilities) in zip(all_axes, panels.items(), strict=True):
    probabilities = np.asarray(probabilities, float)
    for k, row in enumerate(probabilities):
      if np.all(np.isfinite(row)):
        axes.axvspan(edges[k], edges[k + 1], color=colours[int(row.argmax())], alpha=0.15, linewidth=0)
    for c, label in enumerate(class_names):
      axes.plot(centres, probabilities[:, c], color=colours[c], label=label, marker='.' if len(centres) < 40 else None)
    axes.set_ylim(0, 1)
    axes.set_ylabel(f'{name}\nprobability')
  all_axes[0].set_xlim(edges[0], edges[-1])
  all_axes[0].legend(loc='upper left', bbox_to_anchor=(1.01, 1.0), frameon=False)
  all_axes[-1].set_xlabel('time (s); each point is a window, at its centre; shading: the top emotion')
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  figure.savefig(path, dpi=100)
  return path


def _draw_chart(image: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str], caption: str) -> None:
  """Draws a bar per class in the top-left corner of `image` [height, width, 3] RGB, in place."""
  height, width = image.shape[:2]
  scale = max(min(height, width) / 480, 0.3)
  font, thickness = cv2.FONT_HERSHEY_SIMPLEX, max(1, round(scale))
  row = max(round(22 * scale), 9)
  label_width = max(cv2.getTextSize(name, font, 0.5 * scale, thickness)[0][0] for name in class_names)
  bar_width = round(min(150 * scale, width / 3))
  margin = round(8 * scale)
  panel_width = min(width, label_width + bar_width + round(60 * scale) + 3 * margin)
  panel_height = min(height, row * (len(class_names) + 1) + 2 * margin)
  # A dark panel behind the chart keeps it readable over any background.
  image[:panel_height, :panel_width] = (image[:panel_height, :panel_width] * 0.35).astype(np.uint8)
  cv2.putText(image, caption, (margin, margin + round(row * 0.7)), font, 0.45 * scale, (255, 255, 255), thickness)
  top = int(np.argmax(probabilities)) if np.all(np.isfinite(probabilities)) else -1
  for c, name in enumerate(class_names):
    y = margin + row * (c + 1)
    text_colour = (255, 255, 255) if c == top else (200, 200, 200)
    cv2.putText(image, name, (margin, y + round(row * 0.7)), font, 0.5 * scale, text_colour, thickness)
    x = 2 * margin + label_width
    p = float(probabilities[c]) if np.isfinite(probabilities[c]) else 0.0
    cv2.rectangle(image, (x, y + 2), (x + bar_width, y + row - 3), (90, 90, 90), 1)
    cv2.rectangle(image, (x, y + 2), (x + round(p * bar_width), y + row - 3), class_colour(c), -1)
    value = f'{p:.2f}' if np.isfinite(probabilities[c]) else '-'
    cv2.putText(
      image, value, (x + bar_width + margin, y + round(row * 0.7)), font, 0.45 * scale, text_colour, thickness
    )


def _even(value: int) -> int:
  return value - value % 2


def annotate_video(
  source: str,
  destination: str,
  *,
  fps: float,
  face_boxes: np.ndarray,
  face_detected: np.ndarray,
  rotation: int,
  starts: Sequence[float],
  ends: Sequence[float],
  probabilities: np.ndarray,
  class_names: Sequence[str],
  caption: str,
) -> dict:
  """Writes a copy of the video `source` with the face box and the current window's probabilities on every frame.

  The frames are re-encoded (H.264) at their own timestamps, turned upright when the source
  declares a rotation (the face boxes are in upright pixels); the audio track, if any, is
  re-encoded to AAC, which the mp4 container takes whatever the source's codec was.

  Args:
    source: the video the boxes and probabilities were computed from.
    destination: the .mp4 to write.
    fps: the target frame rate the boxes were sampled at (box k belongs to time k / fps).
    face_boxes: [num_frames, 4] (x, y, width, height) in upright source pixels.
    face_detected: [num_frames] bool: the box is the frame's own detection (drawn green) or a
      neighbour's (drawn yellow).
    rotation: degrees the source's frames are turned to stand upright.
    starts: [W] window starts in seconds; the frame at t shows the window whose centre is nearest.
    ends: [W] window ends.
    probabilities: [W, classes] (NaN rows: no model could score the window).
    class_names: the classes in label order.
    caption: a line above the bars, such as the model's name.

  Returns:
    {'frames': frames written, 'audio': whether an audio track was written}.

  Raises:
    ValueError: the source cannot be decoded.
  """
  centres = (np.asarray(starts, float) + np.asarray(ends, float)) / 2
  probabilities = np.asarray(probabilities, float)
  turns = round(rotation / 90) % 4
  os.makedirs(os.path.dirname(os.path.abspath(destination)), exist_ok=True)
  temporary = destination + '.partial.mp4'
  try:
    source_container = av.open(source)
  except (av.FFmpegError, OSError) as err:
    raise ValueError(f'Cannot open {source} to annotate it: {err}.') from err
  frames = 0
  with source_container, av.open(temporary, mode='w') as output:
    video_in = source_container.streams.video[0]
    audio_in = source_container.streams.audio[0] if source_container.streams.audio else None
    width, height = video_in.codec_context.width, video_in.codec_context.height
    if turns % 2:
      width, height = height, width
    video_out = output.add_stream('libx264', rate=video_in.average_rate or video_in.guessed_rate or 30)
    # 4:2:0 needs even sides: an odd last row or column is dropped.
    video_out.width, video_out.height, video_out.pix_fmt = _even(width), _even(height), 'yuv420p'
    video_out.time_base = video_in.time_base
    video_out.codec_context.time_base = video_in.time_base
    audio_out = resampler = None
    if audio_in is not None:
      layout = audio_in.codec_context.layout.name if audio_in.codec_context.layout else 'stereo'
      audio_out = output.add_stream('aac', rate=audio_in.codec_context.sample_rate, layout=layout)
      resampler = av.AudioResampler(format='fltp', layout=layout, rate=audio_in.codec_context.sample_rate)
    first_time = None
    streams = [video_in] + ([audio_in] if audio_in is not None else [])
    try:
      for packet in source_container.demux(*streams):
        for frame in packet.decode():
          if packet.stream is video_in:
            time = float(frame.time) if frame.time is not None else frames / float(video_out.rate)
            first_time = time if first_time is None else first_time
            image = frame.to_ndarray(format='rgb24')
            if turns:
              image = np.rot90(image, k=turns)
            image = np.ascontiguousarray(image[: _even(height), : _even(width)])
            t = time - first_time
            k = min(max(math.floor(t * fps + 0.5), 0), len(face_boxes) - 1) if len(face_boxes) else -1
            if k >= 0:
              x, y, w, h = (int(v) for v in face_boxes[k])
              colour = (0, 220, 0) if face_detected[k] else (240, 200, 0)
              cv2.rectangle(image, (x, y), (x + w, y + h), colour, max(2, round(min(width, height) / 240)))
            window = int(np.argmin(np.abs(centres - t)))
            _draw_chart(image, probabilities[window], class_names, caption)
            annotated = av.VideoFrame.from_ndarray(image, format='rgb24')
            annotated.pts = frame.pts if frame.pts is not None else frames
            annotated.time_base = frame.time_base or video_in.time_base
            output.mux(video_out.encode(annotated))
            frames += 1
          else:
            for resampled in resampler.resample(frame):
              output.mux(audio_out.encode(resampled))
    except av.FFmpegError as err:
      raise ValueError(f'Cannot decode {source} to annotate it (truncated or corrupt): {err}.') from err
    output.mux(video_out.encode(None))
    if audio_out is not None:
      for resampled in resampler.resample(None):
        output.mux(audio_out.encode(resampled))
      output.mux(audio_out.encode(None))
  os.replace(temporary, destination)
  return {'frames': frames, 'audio': audio_out is not None}

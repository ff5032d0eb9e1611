"""Rules shared by the audio and video readers, so a file is judged the same way by both."""

# A stream whose decoded media stops this much short of its declared duration is truncated
# (a partial download or copy), not merely rounded.
MIN_TRUNCATION_SECONDS = 0.25
MIN_TRUNCATION_FRACTION = 0.1


def is_truncated(decoded_seconds: float, declared_seconds: float) -> bool:
  """Whether the decoded media ends too far before the duration the container declares."""
  shortfall = declared_seconds - decoded_seconds
  return shortfall > max(MIN_TRUNCATION_SECONDS, MIN_TRUNCATION_FRACTION * declared_seconds)


def error_reason(err: Exception) -> str:
  """A decoder's error message, ready to end a one-sentence reason."""
  return str(err).rstrip('.') or type(err).__name__


class MissingStreamError(ValueError):
  """The file is readable but has no stream of the kind asked for (no video stream, no audio track)."""

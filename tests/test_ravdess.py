"""RAVDESS names, the 7-class table and the schema v1 round trip."""

import numpy as np
import pytest

from emojax import ravdess, schema


def test_parse_name_reads_every_field():
  name = ravdess.parse_name('/data/Actor_12/02-01-06-01-02-01-12.mp4')
  assert (name.modality, name.vocal_channel, name.emotion_code) == (2, 1, 6)
  assert (name.intensity, name.statement, name.repetition, name.actor) == (1, 2, 1, 12)
  assert name.clip_id == '01-06-01-02-01-12'
  assert name.emotion == 'fear' and name.label == ravdess.EMOTIONS.index('fear')
  assert name.gender == 1  # Even actors are female.
  assert ravdess.parse_name('03-01-05-02-01-01-01.wav').gender == 0
  assert name.filename(ravdess.MODALITY_AUDIO_ONLY) == '03-01-06-01-02-01-12.wav'


def test_label_table_is_the_thesis_order_and_drops_calm():
  assert ravdess.EMOTIONS == ('anger', 'disgust', 'fear', 'happiness', 'neutral', 'sadness', 'surprise')
  labels = {code: ravdess.label_of(code) for code in ravdess.EMOTION_NAMES}
  assert labels[2] is None  # calm
  assert sorted(v for v in labels.values() if v is not None) == list(range(7))
  assert labels[5] == 0 and labels[8] == 6 and labels[1] == 4


@pytest.mark.parametrize(
  'bad, field',
  [
    ('01-01-06-01-02-01.mp4', 'seven two-digit fields'),
    ('notes.txt', 'seven two-digit fields'),
    ('04-01-06-01-02-01-12.mp4', 'modality'),
    ('01-03-06-01-02-01-12.mp4', 'vocal channel'),
    ('01-01-09-01-02-01-12.mp4', 'emotion'),
    ('01-01-06-03-02-01-12.mp4', 'intensity'),
    ('01-01-06-01-02-01-25.mp4', 'actor'),
    ('01-01-06-01-02-01-00.mp4', 'actor'),
    ('03-01-06-01-02-01-12.mp4', 'extension'),
    ('01-01-01-02-02-01-12.mp4', 'neutral'),
  ],
)
def test_parse_name_rejects_invalid_names_naming_the_field(bad, field):
  with pytest.raises(ValueError, match=field) as error:
    ravdess.parse_name(bad)
  assert bad in str(error.value)


def test_sequence_example_round_trip():
  context = {
      'clip_id': '01-06-01-02-01-12', 'label': 2, 'emotion_code': 6, 'actor': 12, 'gender': 1, 'intensity': 1,
      'statement': 2, 'repetition': 1, 'vocal_channel': 1, 'num_frames': 3, 'num_audio_frames': 5,
      'face_detected_frames': 2, 'fps': 45.0, 'video_source': 'Actor_12/01-01-06-01-02-01-12.mp4',
      'audio_source': 'Actor_12/03-01-06-01-02-01-12.wav',
  }  # fmt: skip
  visual = np.random.default_rng(0).normal(size=(3, schema.VISUAL_DIM)).astype(np.float32)
  audio = np.random.default_rng(1).normal(size=(5, schema.AUDIO_DIM)).astype(np.float32)
  serialized = schema.to_sequence_example(context, visual, audio)
  assert serialized == schema.to_sequence_example(context, visual, audio)  # Deterministic bytes.
  parsed_context, sequences = schema.parse_sequence_example(serialized)
  for key, value in context.items():
    parsed = parsed_context[key].numpy()
    assert (parsed.decode() if isinstance(parsed, bytes) else parsed) == value, key
  np.testing.assert_array_equal(sequences[schema.VISUAL_KEY].numpy(), visual)
  np.testing.assert_array_equal(sequences[schema.AUDIO_KEY].numpy(), audio)
  with pytest.raises(ValueError, match='missing fields'):
    schema.to_sequence_example({'label': 1}, visual, audio)


def test_sequence_example_rejects_rows_of_the_wrong_width():
  context = dict.fromkeys(schema.INT_CONTEXT, 1) | dict.fromkeys(schema.FLOAT_CONTEXT, 45.0)
  context |= dict.fromkeys(schema.BYTES_CONTEXT, 'x')
  good_audio = np.zeros((5, schema.AUDIO_DIM), np.float32)
  with pytest.raises(ValueError, match=r'visual_embedding has shape \(4, 256\)'):
    schema.to_sequence_example(context, np.zeros((4, 256), np.float32), good_audio)
  schema.to_sequence_example(context, np.zeros((0, schema.VISUAL_DIM), np.float32), good_audio)  # No frames is valid.

"""Test summaries, report.json, the printed table and the heatmap image."""

import json
import os

import numpy as np
import pytest

from emojax import ravdess, report

# A small matrix with a class of zero support and no predictions (happiness), a
# class of zero support that is predicted once (neutral) and a class never
# predicted right (surprise).
#                anger disgust fear happiness neutral sadness surprise
SMALL_MATRIX = [
  [3, 1, 0, 0, 0, 0, 0],  # anger
  [2, 2, 0, 0, 0, 0, 0],  # disgust
  [0, 0, 1, 0, 0, 0, 1],  # fear
  [0, 0, 0, 0, 0, 0, 0],  # happiness
  [0, 0, 0, 0, 0, 0, 0],  # neutral
  [0, 0, 0, 0, 1, 1, 0],  # sadness
  [0, 0, 1, 0, 0, 0, 0],  # surprise
]


def _sklearn_f1(precision, recall):
  """scikit-learn's F1 from precision and recall, zero_division=0."""
  return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def test_summarize_small_matrix_by_hand():
  summary = report.summarize(SMALL_MATRIX)
  # Hand-counted: 13 examples, 3 + 2 + 1 + 1 on the diagonal.
  assert summary['num_examples'] == 13
  assert summary['accuracy'] == pytest.approx(7 / 13)
  # In class order: anger, disgust, fear, happiness, neutral, sadness, surprise.
  support = dict(zip(ravdess.EMOTIONS, [4, 4, 2, 0, 0, 2, 1]))
  recall = dict(zip(ravdess.EMOTIONS, [3 / 4, 2 / 4, 1 / 2, 0.0, 0.0, 1 / 2, 0.0]))
  # Column sums 5, 3, 2, 0, 1, 1, 1: happiness is never predicted -> 0.0.
  precision = dict(zip(ravdess.EMOTIONS, [3 / 5, 2 / 3, 1 / 2, 0.0, 0.0, 1.0, 0.0]))
  assert summary['support'] == support
  assert list(summary['per_class_recall']) == list(ravdess.EMOTIONS)
  for name in ravdess.EMOTIONS:
    assert summary['per_class_recall'][name] == pytest.approx(recall[name]), name
    assert summary['per_class_precision'][name] == pytest.approx(precision[name]), name
    assert summary['per_class_f1'][name] == pytest.approx(_sklearn_f1(precision[name], recall[name])), name
  # F1 per class: 2/3, 4/7, 1/2, 0, 0, 2/3, 0; macro over all 7 classes.
  assert summary['macro_f1'] == pytest.approx((2 / 3 + 4 / 7 + 1 / 2 + 2 / 3) / 7)
  assert summary['confusion_matrix'] == SMALL_MATRIX
  json.dumps(summary)  # Plain Python types only.


def test_summarize_thesis_stacker_matrix():
  matrix = np.array(report.THESIS_STACKER_CONFUSION)
  assert matrix.shape == (7, 7)
  assert matrix.sum() == 312  # 25% of 1,248 clips, as the thesis says.
  assert matrix.sum(axis=1).tolist() == [48, 48, 48, 48, 24, 48, 48]  # Neutral has half the clips.
  summary = report.summarize(report.THESIS_STACKER_CONFUSION)
  assert summary['accuracy'] == pytest.approx(272 / 312)  # 47+40+42+44+21+39+39 = 272.
  assert round(summary['accuracy'], 2) == report.THESIS_RESULTS['stacker']['test']
  assert summary['per_class_recall']['neutral'] == pytest.approx(21 / 24)


def test_summarize_rejects_bad_matrices():
  with pytest.raises(ValueError, match='shape'):
    report.summarize(np.ones((3, 3)))
  with pytest.raises(ValueError, match='all zeros'):
    report.summarize(np.zeros((7, 7)))
  with pytest.raises(ValueError, match='non-negative whole counts'):
    report.summarize(np.full((7, 7), -1))


def _full_report():
  summaries = {
    'audio': report.summarize(SMALL_MATRIX),
    'visual': report.summarize(np.eye(7, dtype=int) * 2 + 1),
    'stacker': report.summarize(report.THESIS_STACKER_CONFUSION),
  }
  return report.make_report(
    summaries,
    protocol='random',
    seed=7,
    partitions={'base': np.int64(624), 'stack': 312, 'test': 312},
    dataset={'dir': '/data/tfrecords', 'num_clips': 1248, 'stand_in_extractors': True},
  )


def test_write_report_round_trips(tmp_path):
  content = _full_report()
  workdir = tmp_path / 'run'
  path = report.write_report(str(workdir), content)
  assert path == str(workdir / 'report.json')
  path = workdir / 'report.json'
  assert os.listdir(workdir) == ['report.json']  # The temporary file was renamed, not left behind.
  text = path.read_text()
  loaded = json.loads(text)
  assert loaded == json.loads(json.dumps(content, default=int))
  assert text == json.dumps(loaded, sort_keys=True, indent=2) + '\n'
  for model in ('audio', 'visual', 'stacker'):
    entry = loaded[model]
    assert isinstance(entry['accuracy'], float) and isinstance(entry['macro_f1'], float)
    assert list(entry['per_class_recall']) == sorted(ravdess.EMOTIONS)  # sort_keys; names are the keys.
    assert np.array(entry['confusion_matrix']).shape == (7, 7)
  assert loaded['stacker']['accuracy'] == pytest.approx(272 / 312)
  assert loaded['protocol'] == 'random' and loaded['seed'] == 7
  assert loaded['partitions'] == {'base': 624, 'stack': 312, 'test': 312}
  assert loaded['thesis'] == report.THESIS_RESULTS
  assert loaded['dataset']['stand_in_extractors'] is True
  # Writing again replaces the file with identical bytes.
  report.write_report(str(workdir), content)
  assert path.read_text() == text


def test_write_report_refuses_nan(tmp_path):
  content = _full_report()
  content['audio']['accuracy'] = float('nan')
  with pytest.raises(ValueError, match='NaN'):
    report.write_report(str(tmp_path), content)
  assert os.listdir(tmp_path) == []


def test_make_report_rejects_unknown_models():
  with pytest.raises(ValueError, match='lstm'):
    report.make_report({'lstm': report.summarize(SMALL_MATRIX)}, protocol='random', seed=0, partitions={})


def test_format_report_shows_classes_matrices_and_partitions():
  text = report.format_report(_full_report())
  lines = text.splitlines()
  # Class names appear in the thesis order in the recall table.
  recall_start = lines.index('per-class recall (test)')
  assert [line.split()[0] for line in lines[recall_start + 2 : recall_start + 9]] == list(ravdess.EMOTIONS)
  # Confusion rows in the thesis layout.
  assert 'anger     47  0  0  0  0  1  0' in lines
  assert 'surprise   1  0  4  3  0  1 39' in lines
  assert 'anger      3  1  0  0  0  0  0' in lines
  # The thesis' train and test accuracy next to ours; no train accuracy in this report.
  stacker_row = next(line for line in lines if line.startswith('stacker '))
  assert stacker_row.split() == ['stacker', '-', f'{272 / 312:.4f}', stacker_row.split()[3], '0.94', '0.87']
  with_train = _full_report()
  with_train['audio']['train_accuracy'] = 0.8125
  audio_row = next(line for line in report.format_report(with_train).splitlines() if line.startswith('audio '))
  assert audio_row.split()[:2] == ['audio', '0.8125'] and audio_row.split()[-2:] == ['0.85', '0.58']
  assert 'partitions (clips): base 624, stack 312, test 312' in lines
  assert "protocol 'random'" in lines[0]
  assert 'stand-in extractors' in text
  # classification_report-style lines.
  assert any(line.split() == ['neutral', '0.95', '0.88', '0.91', '24'] for line in lines)
  assert any(line.split() == ['accuracy', '0.87', '312'] for line in lines)


def test_confusion_image_is_a_heatmap():
  image = report.confusion_image(report.THESIS_STACKER_CONFUSION, title='stacker test')
  assert image.dtype == np.uint8
  assert image.ndim == 4 and image.shape[0] == 1 and image.shape[-1] == 3
  assert image.shape[1] > 100 and image.shape[2] > 100
  assert image.min() < 50 and image.max() > 200  # Text and dark cells on a light background.
  assert len(np.unique(image.reshape(-1, 3), axis=0)) > 10

"""Test summaries, report.json, the printed table and the heatmap image."""

import json
import os
import subprocess

import numpy as np
import pytest

from emojax import models, ravdess, report

MODEL_NAMES = tuple(models.MODELS)

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
    fractions=(0.5, 0.25, 0.25),
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
  assert {name: loaded['thesis'][name]['test'] for name in MODEL_NAMES} == {
    name: figures['test'] for name, figures in report.THESIS_RESULTS.items()
  }
  assert loaded['thesis']['stacker']['confusion_matrix'] == report.THESIS_STACKER_CONFUSION
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


def test_make_report_records_the_models_in_stage_order():
  content = report.make_report(
    {'visual': report.summarize(SMALL_MATRIX), 'audio': report.summarize(SMALL_MATRIX)},
    protocol='random',
    seed=0,
    partitions={},
  )
  assert content['models'] == ['visual', 'audio']
  with pytest.raises(ValueError, match='at least one model'):
    report.make_report({}, protocol='random', seed=0, partitions={})


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
  # train, val, WA, UA, macro F1, then the thesis' train and test accuracy; no train or val accuracy here.
  stacker_row = next(line for line in lines if line.startswith('stacker '))
  assert stacker_row.split() == ['stacker', '-', '-', f'{272 / 312:.4f}', f'{293 / 336:.4f}'] + [
    stacker_row.split()[5],
    '0.94',
    '0.87',
  ]
  with_train = _full_report()
  with_train['audio'].update(train_accuracy=0.8125, val_accuracy=0.75)
  audio_row = next(line for line in report.format_report(with_train).splitlines() if line.startswith('audio '))
  assert audio_row.split()[:3] == ['audio', '0.8125', '0.7500'] and audio_row.split()[-2:] == ['0.85', '0.58']
  assert 'partitions (clips): base 624, stack 312, test 312' in lines
  assert "protocol 'random'" in lines[0]
  assert 'stand-in extractors' in text
  # classification_report-style lines.
  assert any(line.split() == ['neutral', '0.95', '0.88', '0.91', '24'] for line in lines)
  assert any(line.split() == ['accuracy', '0.87', '312'] for line in lines)


def test_confusion_image_is_a_heatmap():
  image = report.confusion_image(report.THESIS_STACKER_CONFUSION, 'stacker', 'test')
  assert image.dtype == np.uint8
  assert image.ndim == 4 and image.shape[0] == 1 and image.shape[-1] == 3
  assert image.shape[1] > 100 and image.shape[2] > 100
  assert image.min() < 50 and image.max() > 200  # Text and dark cells on a light background.
  assert len(np.unique(image.reshape(-1, 3), axis=0)) > 10


def test_uar_is_the_mean_recall_over_classes_with_examples():
  # Recalls of the classes with examples: anger 3/4, disgust 2/4, fear 1/2, sadness 1/2,
  # surprise 0/1; happiness and neutral have none and are left out.
  assert report.summarize(SMALL_MATRIX)['uar'] == pytest.approx((3 / 4 + 2 / 4 + 1 / 2 + 1 / 2 + 0) / 5)
  # The thesis' stacker: six classes of 48 clips and neutral of 24.
  stacker = report.summarize(report.THESIS_STACKER_CONFUSION)
  assert stacker['uar'] == pytest.approx(((47 + 40 + 42 + 44 + 39 + 39) / 48 + 21 / 24) / 7)
  assert stacker['uar'] != pytest.approx(stacker['accuracy'])  # Neutral's smaller share makes them differ.


def test_thesis_baseline_matches_only_the_thesis_protocol():
  everything = report.thesis_baseline('random', (0.5, 0.25, 0.25), 'thesis7', MODEL_NAMES)
  assert {name: (figures['train'], figures['test']) for name, figures in everything.items()} == {
    'audio': (0.85, 0.58),
    'visual': (0.85, 0.61),
    'stacker': (0.94, 0.87),
  }
  assert everything['stacker']['confusion_matrix'] == report.THESIS_STACKER_CONFUSION
  assert 'confusion_matrix' not in everything['audio']
  # An audio-only run gets the audio figures only, and no stacker matrix.
  assert report.thesis_baseline('random', [0.5, 0.25, 0.25], 'thesis7', ['audio']) == {
    'audio': {'train': 0.85, 'test': 0.58}
  }
  # Base models on 75%: test figures only, and never a stacker.
  assert report.thesis_baseline('random', (0.75, 0.0, 0.25), 'thesis7', MODEL_NAMES) == {
    'audio': {'test': 0.68},
    'visual': {'test': 0.72},
  }
  assert report.thesis_baseline('random', (0.75, 0.0, 0.25), 'thesis7', ['stacker']) is None
  for protocol, fractions, class_set in (
    ('actor', (0.5, 0.25, 0.25), 'thesis7'),
    ('random', (0.5, 0.25, 0.25), 'ravdess8'),
    ('random', (0.6, 0.2, 0.2), 'thesis7'),
    ('random', None, 'thesis7'),
  ):
    assert report.thesis_baseline(protocol, fractions, class_set, MODEL_NAMES) is None, (protocol, fractions)


def _audio_report(**kwargs):
  return report.make_report(
    {'audio': report.summarize(SMALL_MATRIX)}, seed=0, partitions={'base_train': 936, 'test': 312}, **kwargs
  )


def test_format_report_75_percent_run_shows_its_own_thesis_figure():
  content = _audio_report(protocol='random', fractions=(0.75, 0.0, 0.25))
  assert content['thesis'] == {'audio': {'test': 0.68}}
  lines = report.format_report(content).splitlines()
  header = next(line for line in lines if line.startswith('model '))
  assert header.split()[-2:] == ['thesis', 'test'] and 'thesis train' not in header
  audio_row = next(line for line in lines if line.startswith('audio '))
  assert audio_row.split()[-1] == '0.68'
  assert not any('0.58' in line for line in lines)  # Not the 50% figure.
  assert not any(line.startswith('thesis stacker') for line in lines)  # Nor the stacker's matrix.


def test_format_report_without_a_thesis_figure_says_so():
  content = _audio_report(protocol='actor', fractions=(0.5, 0.25, 0.25))
  assert content['thesis'] is None
  text = report.format_report(content)
  assert 'thesis has no figure for this protocol' in text
  header = next(line for line in text.splitlines() if line.startswith('model '))
  assert 'thesis' not in header
  assert json.loads(json.dumps(content))['thesis'] is None  # Stored as null.


def test_eight_class_report():
  names = ravdess.CLASS_SETS['ravdess8']
  assert names == ('anger', 'calm', 'disgust', 'fear', 'happiness', 'neutral', 'sadness', 'surprise')
  matrix = np.eye(8, dtype=int) * 5 + 1
  summary = report.summarize(matrix, names)
  assert list(summary['per_class_recall']) == list(names) and summary['uar'] == pytest.approx(6 / 13)
  content = report.make_report(
    {'visual': summary}, protocol='random', seed=0, partitions={}, fractions=(0.5, 0.25, 0.25), class_set='ravdess8'
  )
  assert content['classes'] == list(names) and content['thesis'] is None
  lines = report.format_report(content).splitlines()
  heads = lines[lines.index('visual: confusion matrix on test') + 1].split()[:8]
  assert heads == ['an', 'ca', 'di', 'fe', 'ha', 'ne', 'sa', 'su']  # Two letters tell the eight apart.
  assert 'calm       1  6  1  1  1  1  1  1' in lines
  recall_start = lines.index('per-class recall (test)')
  assert [line.split()[0] for line in lines[recall_start + 2 : recall_start + 10]] == list(names)
  assert any(line.split() == ['calm', '0.46', '0.46', '0.46', '13'] for line in lines)  # 6 of 13 each way.
  # A 7-class summary does not pass for an 8-class run, and an 8x8 matrix needs its names.
  with pytest.raises(ValueError, match='ravdess8'):
    report.make_report(
      {'audio': report.summarize(SMALL_MATRIX)}, protocol='random', seed=0, partitions={}, class_set='ravdess8'
    )
  with pytest.raises(ValueError, match='class names'):
    report.summarize(matrix)
  image = report.confusion_image(matrix, 'visual', 'test', class_names=names)
  assert image.shape[0] == 1 and image.shape[-1] == 3


def _dataset_info():
  return {
    'schema_version': 1,
    'settings': {'fps': 45.0, 'image_size': 48, 'on_no_face': 'skip', 'min_face_fraction': 0.1, 'detect_width': 640},
    'extractors': {
      'vgg16': {'name': 'keras.applications.VGG16', 'weights': 'imagenet', 'image_size': 48},
      'vggish': {'handle': 'https://tfhub.dev/google/vggish/1'},
    },
    'face_detection_rate': 0.97,
    'num_skipped': 3,
    'skipped_by_kind': {'no_face': 2, 'unreadable': 1},
  }


CLIP_IDS = ['01-05-01-01-01-01', '01-03-02-01-02-03', '01-01-01-02-01-12']


def test_provenance_records_code_data_and_clips(tmp_path):
  record = report.provenance(
    _dataset_info(),
    CLIP_IDS,
    str(tmp_path),  # Not a git checkout.
    devices=['TFRT_CPU_0'],
    parameter_counts={'audio': 395783},
    stage_seconds={'audio': 12.5},
  )
  assert record['versions']['emojax'] == '0.1.0'
  for package in ('jax', 'flax', 'optax', 'orbax-checkpoint', 'tensorflow'):
    assert record['versions'][package], package
  assert record['git'] == {'commit': None, 'dirty': None}
  assert record['devices'] == ['TFRT_CPU_0']
  assert record['date_utc'].endswith('+00:00')
  data = record['data']
  assert data['extractors']['vggish'] == {'handle': 'https://tfhub.dev/google/vggish/1'}
  assert data['extractors']['vgg16']['weights'] == 'imagenet'
  assert data['settings'] == {'fps': 45.0, 'image_size': 48, 'on_no_face': 'skip', 'min_face_fraction': 0.1}
  assert (data['face_detection_rate'], data['num_skipped']) == (0.97, 3)
  assert data['skipped_by_kind'] == {'no_face': 2, 'unreadable': 1}
  assert data['num_clips'] == 3
  assert record['parameter_counts'] == {'audio': 395783} and record['stage_seconds'] == {'audio': 12.5}
  json.dumps(record, allow_nan=False)
  # The clip hash ignores the order and changes when a clip is removed.
  assert data['clip_ids_sha256'] == report.clip_ids_sha256(CLIP_IDS[::-1])
  assert report.clip_ids_sha256(CLIP_IDS[:-1]) != data['clip_ids_sha256']
  assert len(data['clip_ids_sha256']) == 64


def test_git_state_of_a_checkout_and_without_git(tmp_path, monkeypatch):
  repo = tmp_path / 'repo'
  repo.mkdir()
  (repo / 'a.txt').write_text('a\n')
  git = ['git', '-C', str(repo), '-c', 'user.name=t', '-c', 'user.email=t@example.com']
  subprocess.run([*git, 'init', '-q'], check=True)
  subprocess.run([*git, 'add', 'a.txt'], check=True)
  subprocess.run([*git, 'commit', '-q', '-m', 'a'], check=True)
  head = subprocess.run([*git, 'rev-parse', 'HEAD'], check=True, capture_output=True, text=True).stdout.strip()
  assert report.git_state(str(repo)) == (head, False)
  (repo / 'b.txt').write_text('b\n')
  assert report.git_state(str(repo)) == (head, True)
  (repo / 'sub').mkdir()
  assert report.git_state(str(repo / 'sub')) == (None, None)  # Inside a checkout, not one itself.
  monkeypatch.setenv('PATH', str(tmp_path / 'empty'))  # No git at all.
  assert report.git_state(str(repo)) == (None, None)


def test_provenance_from_the_workdir_keeps_report_json_identical(tmp_path):
  workdir = str(tmp_path)
  record = report.provenance(_dataset_info(), CLIP_IDS, devices=('cpu:0',), stage_seconds={'audio': 1.0})
  report.write_provenance(workdir, record)
  summaries = {'audio': report.summarize(SMALL_MATRIX)}
  kwargs = {'protocol': 'random', 'seed': 0, 'partitions': {'test': 13}, 'fractions': (0.5, 0.25, 0.25)}
  trained = report.make_report(summaries, provenance=report.read_provenance(workdir), **kwargs)
  path = report.write_report(workdir, trained)
  with open(path) as f:
    first = f.read()
  # An eval run later: a new provenance would differ, but the report reads the recorded one.
  evaluated = report.make_report(summaries, provenance=report.read_provenance(workdir), **kwargs)
  report.write_report(workdir, evaluated)
  with open(path) as f:
    assert f.read() == first
  assert json.loads(first)['provenance'] == json.loads(json.dumps(record))
  assert 'provenance: emojax 0.1.0' in report.format_report(trained)
  assert report.read_provenance(str(tmp_path / 'elsewhere')) is None


def test_predictions_csv_accuracy_equals_the_summary(tmp_path):
  rng = np.random.default_rng(0)
  num_clips = 40
  labels = np.arange(num_clips) % 7
  logits = rng.normal(size=(num_clips, 7)) + 1.5 * np.eye(7)[labels]
  probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  predictions = logits.argmax(axis=1)
  matrix = np.zeros((7, 7), int)
  np.add.at(matrix, (labels, predictions), 1)
  summary = report.summarize(matrix)
  actors = np.arange(num_clips) % 24 + 1
  split = {
    'clip_id': np.array([f'01-01-01-01-01-{i:02d}' for i in range(num_clips)]),
    'actor': actors,
    'gender': 1 - actors % 2,
    'label': labels,
  }
  rows = report.prediction_rows('audio', split, probabilities, seed=3)
  assert rows[5]['clip_id'] == '01-01-01-01-01-05' and rows[5]['seed'] == 3 and rows[5]['fold'] is None
  path = report.write_predictions(str(tmp_path / report.PREDICTIONS_FILENAME), rows, ravdess.EMOTIONS)
  with open(path) as f:
    header = f.readline().strip().split(',')
  assert header == report.prediction_columns() and header[-7:] == [f'p_{name}' for name in ravdess.EMOTIONS]
  read = report.read_predictions(path)
  assert len(read) == num_clips
  assert np.mean([row['correct'] for row in read]) == pytest.approx(summary['accuracy'])
  recomputed = np.zeros((7, 7), int)
  for row in read:
    recomputed[ravdess.EMOTIONS.index(row['true']), ravdess.EMOTIONS.index(row['predicted'])] += 1
  assert recomputed.tolist() == summary['confusion_matrix']
  assert read[0]['fold'] is None and read[0]['gender'] == 'male' and read[1]['gender'] == 'female'
  assert read[0]['probabilities']['anger'] == pytest.approx(probabilities[0, 0], abs=1e-6)
  with pytest.raises(ValueError, match='7 finite probabilities'):
    report.write_predictions(str(tmp_path / 'bad.csv'), [dict(rows[0], probabilities=[0.5, 0.5])])


def _two_class_summary(correct_a: int, correct_b: int) -> dict:
  """10 clips of class a and 10 of b, `correct_*` of each predicted right."""
  return report.summarize([[correct_a, 10 - correct_a], [10 - correct_b, correct_b]], ('a', 'b'))


def test_aggregate_by_hand():
  # Fold 0 has two seeds (accuracy 0.5 and 0.7), fold 1 one (0.8).
  members = [_two_class_summary(5, 5), _two_class_summary(8, 6), _two_class_summary(9, 7)]
  result = report.aggregate(members, folds=[0, 0, 1])
  assert result['num_members'] == 3
  assert [(row['fold'], row['num_members']) for row in result['folds']] == [(0, 2), (1, 1)]
  assert [row['accuracy'] for row in result['folds']] == pytest.approx([0.6, 0.8])
  # Over folds: mean 0.7, sample std of (0.6, 0.8) = sqrt(0.02) = 0.14142.
  assert result['over_folds']['accuracy'] == pytest.approx({'mean': 0.7, 'std': 0.02**0.5, 'n': 2})
  # Over members: (0.5, 0.7, 0.8), mean 2/3, sample std sqrt((1/36 + 1/900 + 4/225) / 2) = 0.15275.
  assert result['over_members']['accuracy'] == pytest.approx({'mean': 2 / 3, 'std': 0.152753, 'n': 3}, abs=1e-6)
  assert result['over_folds']['uar']['mean'] == pytest.approx(0.7)  # Balanced classes: UA = WA.
  # Class a: fold 0 recalls 0.5 and 0.8 -> 0.65, fold 1 0.9 -> mean 0.775; class b: (0.55 + 0.7) / 2.
  assert result['per_class_recall'] == pytest.approx({'a': 0.775, 'b': 0.625})
  assert result['confusion_matrix'] == [[22, 8], [12, 18]] and result['num_examples'] == 60
  # One fold: std 0, not NaN.
  single = report.aggregate([_two_class_summary(5, 5)], folds=[3])
  assert single['over_folds']['macro_f1'] == {'mean': 0.5, 'std': 0.0, 'n': 1}
  text = report.format_aggregate({'audio': result})
  assert '0.7000 ± 0.1414' in text and '0.6667 ± 0.1528' in text
  fold_rows = [line.split() for line in text.splitlines() if line.split()[:1] in (['0'], ['1'])]
  assert [row[:3] for row in fold_rows] == [['0', '2', '0.6000'], ['1', '1', '0.8000']]
  with pytest.raises(ValueError, match='one each'):
    report.aggregate(members, folds=[0, 1])


UNIFORM = {'probabilities': [1 / 7] * 7}


@pytest.mark.parametrize('umask, mode', [(0o022, 0o644), (0o027, 0o640)])
def test_output_files_get_the_process_mode(tmp_path, umask, mode):
  old = os.umask(umask)
  try:
    paths = [
      report.write_report(str(tmp_path), _full_report()),
      report.write_provenance(str(tmp_path), report.provenance({}, CLIP_IDS, str(tmp_path))),
      report.write_predictions(
        str(tmp_path / 'predictions.csv'),
        [{'model': 'audio', 'fold': 0, 'seed': 0, 'clip_id': 'x', 'actor': 1, 'gender': 0, 'label': 0, **UNIFORM}],
      ),
    ]
  finally:
    os.umask(old)
  for path in paths:
    assert os.stat(path).st_mode & 0o777 == mode, path
  assert sorted(os.listdir(tmp_path)) == ['predictions.csv', 'provenance.json', 'report.json']  # No temporaries.

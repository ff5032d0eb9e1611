"""Test-set summaries, `report.json` and the printed comparison with the thesis.

Everything here works on confusion matrices (rows true, columns predicted, class
order `ravdess.EMOTIONS`), so it is plain numpy and needs no JAX. The report
holds no timestamps or paths chosen at run time, so an eval-only run on the same
checkpoints writes the same `report.json` byte for byte.
"""

import copy
import json
import os
import tempfile

import numpy as np

from emojax import ravdess

REPORT_FILENAME = 'report.json'
MODELS = ('audio', 'visual', 'stacker')

# Thesis results, 7 classes, random 50/25/25 split (THESIS.md "Results").
THESIS_RESULTS = {
  'audio': {'train': 0.85, 'test': 0.58},
  'visual': {'train': 0.85, 'test': 0.61},
  'stacker': {'train': 0.94, 'test': 0.87},
}

# The thesis' stacker confusion matrix on its 312 test clips: rows true,
# columns predicted, in the order of `ravdess.EMOTIONS`.
THESIS_STACKER_CONFUSION = [
  [47, 0, 0, 0, 0, 1, 0],  # anger
  [2, 40, 0, 1, 0, 5, 0],  # disgust
  [2, 1, 42, 1, 0, 1, 1],  # fear
  [0, 1, 1, 44, 0, 0, 2],  # happiness
  [0, 0, 0, 0, 21, 3, 0],  # neutral
  [0, 3, 4, 1, 1, 39, 0],  # sadness
  [1, 0, 4, 3, 0, 1, 39],  # surprise
]

_SUMMARY_KEYS = ('accuracy', 'macro_f1', 'per_class_recall', 'confusion_matrix')


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
  """numerator / denominator, 0.0 where the denominator is 0 (scikit-learn's zero_division=0)."""
  numerator = numerator.astype(np.float64)
  denominator = denominator.astype(np.float64)
  return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def _as_confusion_matrix(confusion_matrix) -> np.ndarray:
  """Checks a confusion matrix and returns it as a [7, 7] int64 array."""
  matrix = np.asarray(confusion_matrix)
  shape = (ravdess.NUM_CLASSES, ravdess.NUM_CLASSES)
  if matrix.shape != shape:
    raise ValueError(f'A confusion matrix must have shape {shape} (classes {ravdess.EMOTIONS}); got {matrix.shape}.')
  if not np.all(np.isfinite(matrix)) or np.any(matrix < 0) or np.any(matrix != np.round(matrix)):
    raise ValueError(f'A confusion matrix must hold non-negative whole counts; got {matrix.tolist()}.')
  return matrix.astype(np.int64)


def summarize(confusion_matrix) -> dict:
  """Accuracy, per-class precision / recall / F1 and macro F1 from a confusion matrix.

  The formulas are scikit-learn's with `zero_division=0` and the label set fixed
  to all 7 classes (`labels=range(7)`):
    recall_c    = tp_c / support_c           (0.0 when class c has no examples)
    precision_c = tp_c / predicted_c         (0.0 when nothing was predicted as c)
    f1_c        = 2 tp_c / (2 tp_c + fp_c + fn_c)  (0.0 when all three are 0)
    macro_f1    = mean of f1_c over all 7 classes.
  A class with no examples and no predictions therefore counts as F1 = 0 in the
  macro mean; scikit-learn's default label set (classes seen in y_true or
  y_pred) would leave it out. The training protocol refuses partitions with a
  missing class, so for real reports the two agree.

  Args:
    confusion_matrix: [7, 7] counts, rows true, columns predicted, classes in
      the order of `ravdess.EMOTIONS`.

  Returns:
    A JSON-ready dict: `accuracy`, `macro_f1`, `num_examples`,
    `per_class_recall`, `per_class_precision`, `per_class_f1`, `support`
    (each class name -> value) and `confusion_matrix` (7x7 list of int).
  """
  matrix = _as_confusion_matrix(confusion_matrix)
  num_examples = int(matrix.sum())
  if num_examples == 0:
    raise ValueError('The confusion matrix is all zeros: no test example was evaluated, so there is nothing to report.')
  true_positives = np.diag(matrix)  # [classes]
  support = matrix.sum(axis=1)  # [classes] examples of each true class
  predicted = matrix.sum(axis=0)  # [classes] examples predicted as each class
  recall = _safe_divide(true_positives, support)
  precision = _safe_divide(true_positives, predicted)
  # 2tp + fp + fn = predicted + support.
  f1 = _safe_divide(2 * true_positives, predicted + support)

  def by_class(values, kind=float):
    return {name: kind(value) for name, value in zip(ravdess.EMOTIONS, values)}

  return {
    'accuracy': float(true_positives.sum() / num_examples),
    'macro_f1': float(f1.mean()),
    'num_examples': num_examples,
    'per_class_recall': by_class(recall),
    'per_class_precision': by_class(precision),
    'per_class_f1': by_class(f1),
    'support': by_class(support, int),
    'confusion_matrix': matrix.tolist(),
  }


def make_report(
  summaries: dict[str, dict], *, protocol: str, seed: int, partitions: dict[str, int], dataset: dict | None = None
) -> dict:
  """Assembles the content of `report.json`.

  Args:
    summaries: model name ('audio', 'visual', 'stacker'; those that were
      evaluated) -> its `summarize()` on the test partition.
    protocol: the partition protocol, 'random' or 'actor'.
    seed: the run's seed.
    partitions: partition name -> number of clips in it.
    dataset: facts about the data (its directory, number of clips, whether the
      features came from stand-in extractors under the key
      `stand_in_extractors`); stored as given.

  Returns:
    A JSON-ready dict with one entry per model plus `protocol`, `seed`,
    `partitions`, `dataset`, `classes` and `thesis` (the thesis' accuracies).
  """
  unknown = sorted(set(summaries) - set(MODELS))
  if unknown:
    raise ValueError(f'Unknown model name(s) {unknown} in the report; expected some of {list(MODELS)}.')
  if not summaries:
    raise ValueError(f'The report needs the summary of at least one model of {list(MODELS)}; got none.')
  report = {}
  for name, summary in summaries.items():
    missing = [key for key in _SUMMARY_KEYS if key not in summary]
    if missing:
      raise ValueError(f'The summary of model {name!r} lacks {missing}; build it with emojax.report.summarize().')
    report[name] = copy.deepcopy(summary)
  report.update(
    protocol=str(protocol),
    seed=int(seed),
    partitions={str(name): int(count) for name, count in partitions.items()},
    dataset=copy.deepcopy(dict(dataset or {})),
    classes=list(ravdess.EMOTIONS),
    thesis=copy.deepcopy(THESIS_RESULTS),
  )
  return report


def _json_default(value):
  """Lets numpy scalars and arrays (say, in `dataset`) into the JSON file."""
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f'report.json cannot hold a value of type {type(value).__name__}: {value!r}.')


def write_report(workdir: str, report: dict) -> str:
  """Writes `workdir/report.json` atomically and returns its path.

  The file is written to a temporary name in the same directory and renamed
  over the old one, so a crash never leaves a half-written report. Keys are
  sorted and NaN is refused, so the file is strict, diffable JSON.
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, REPORT_FILENAME)
  try:
    text = json.dumps(report, sort_keys=True, indent=2, allow_nan=False, default=_json_default) + '\n'
  except ValueError as error:
    raise ValueError(f'Cannot write {path}: the report holds a NaN or infinite number ({error}).') from error
  file_descriptor, temporary_path = tempfile.mkstemp(prefix='.report.', suffix='.json.tmp', dir=workdir)
  try:
    with os.fdopen(file_descriptor, 'w') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary_path, path)
  except BaseException:
    if os.path.exists(temporary_path):
      os.remove(temporary_path)
    raise
  return path


def _format_confusion(matrix) -> list[str]:
  """The thesis' layout: one row per true class, counts per predicted class."""
  matrix = np.asarray(matrix, dtype=np.int64)
  name_width = max(len(name) for name in ravdess.EMOTIONS)
  cell_width = max(3, len(str(int(matrix.max()))) + 1)
  # Column heads are the classes' first letters, as many as fit (2 already tell them apart).
  header = ' ' * name_width + ''.join(f'{name[: cell_width - 1]:>{cell_width}}' for name in ravdess.EMOTIONS)
  lines = [header + '   (rows true, columns predicted)']
  for name, row in zip(ravdess.EMOTIONS, matrix):
    lines.append(f'{name:<{name_width}}' + ''.join(f'{int(count):>{cell_width}d}' for count in row))
  return lines


def _format_classification_report(summary: dict, digits: int = 2) -> list[str]:
  """Lines in the layout of scikit-learn's `classification_report`."""
  names = list(ravdess.EMOTIONS)
  width = max(len('weighted avg'), *(len(name) for name in names))
  lines = [f'{"":>{width}s} ' + ''.join(f' {title:>9}' for title in ('precision', 'recall', 'f1-score', 'support')), '']
  row = '{:>{width}s} ' + ' {:>9.{digits}f}' * 3 + ' {:>9}'
  precision = np.array([summary['per_class_precision'][name] for name in names])
  recall = np.array([summary['per_class_recall'][name] for name in names])
  f1 = np.array([summary['per_class_f1'][name] for name in names])
  support = np.array([summary['support'][name] for name in names])
  for i, name in enumerate(names):
    lines.append(row.format(name, precision[i], recall[i], f1[i], support[i], width=width, digits=digits))
  total = int(support.sum())
  lines.append('')
  lines.append(
    f'{"accuracy":>{width}s} ' + f' {"":>9} {"":>9}' + f' {summary["accuracy"]:>9.{digits}f}' + f' {total:>9}'
  )
  lines.append(row.format('macro avg', precision.mean(), recall.mean(), f1.mean(), total, width=width, digits=digits))
  weights = support / max(total, 1)
  lines.append(
    row.format(
      'weighted avg',
      (precision * weights).sum(),
      (recall * weights).sum(),
      (f1 * weights).sum(),
      total,
      width=width,
      digits=digits,
    )
  )
  return lines


def format_report(report: dict) -> str:
  """The printed comparison: accuracies next to the thesis, recalls, confusion matrices, per-class reports."""
  models = [name for name in MODELS if name in report]
  lines = [f'emojax test results: protocol {report.get("protocol")!r}, seed {report.get("seed")}']
  partitions = report.get('partitions', {})
  lines.append('partitions (clips): ' + ', '.join(f'{name} {count}' for name, count in partitions.items()))
  dataset = report.get('dataset') or {}
  if dataset:
    lines.append('dataset: ' + ', '.join(f'{key} {value}' for key, value in sorted(dataset.items())))
  if dataset.get('stand_in_extractors'):
    lines.append('NOTE: features come from stand-in extractors, not VGGish/VGG16: do not compare with the thesis.')
  if report.get('protocol') != 'random':
    lines.append('NOTE: the thesis used a random split; its numbers are for that protocol only.')

  header = f'{"model":<8} {"train acc":>9} {"test acc":>9} {"macro F1":>9} {"thesis train":>13} {"thesis test":>12}'
  lines += ['', header]
  for name in models:
    thesis = THESIS_RESULTS[name]
    train = report[name].get('train_accuracy')
    train = '-' if train is None else f'{train:.4f}'
    lines.append(
      f'{name:<8} {train:>9} {report[name]["accuracy"]:>9.4f} {report[name]["macro_f1"]:>9.4f} '
      f'{thesis["train"]:>13.2f} {thesis["test"]:>12.2f}'
    )
  if any('train_accuracy' in report[name] for name in models):
    lines.append('(train acc: running mean over the best epoch, dropout on, as Keras and the thesis report it)')

  name_width = max(len(name) for name in ravdess.EMOTIONS)
  lines += ['', 'per-class recall (test)', f'{"":<{name_width}}' + ''.join(f' {name:>8}' for name in models)]
  for emotion in ravdess.EMOTIONS:
    lines.append(
      f'{emotion:<{name_width}}' + ''.join(f' {report[m]["per_class_recall"][emotion]:>8.4f}' for m in models)
    )

  for name in models:
    lines += ['', f'{name}: confusion matrix on test']
    lines += _format_confusion(report[name]['confusion_matrix'])
    if all(key in report[name] for key in ('per_class_precision', 'per_class_f1', 'support')):
      lines += ['', f'{name}: classification report']
      lines += _format_classification_report(report[name])
  lines += ['', 'thesis stacker: confusion matrix on its 312 test clips (random split)']
  lines += _format_confusion(THESIS_STACKER_CONFUSION)
  return '\n'.join(lines) + '\n'


def confusion_image(confusion_matrix, title: str = '') -> np.ndarray:
  """Renders a confusion matrix as a heatmap for `clu` `writer.write_images`.

  Colours are normalised per row (the recall of each true class), so the rare
  neutral class is as readable as the others; the cells show the raw counts.

  Args:
    confusion_matrix: [7, 7] counts, rows true, columns predicted.
    title: text above the plot.

  Returns:
    [1, height, width, 3] uint8 image.
  """
  # Imported here so that importing emojax.report stays cheap; a bare Figure on
  # the Agg canvas touches no pyplot state, so nothing global is left open.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  matrix = _as_confusion_matrix(confusion_matrix)
  row_fraction = _safe_divide(matrix, matrix.sum(axis=1, keepdims=True))  # [true, predicted] in [0, 1]
  figure = Figure(figsize=(5.5, 5.0), dpi=100)
  canvas = FigureCanvasAgg(figure)
  axes = figure.add_subplot()
  axes.imshow(row_fraction, cmap='Blues', vmin=0.0, vmax=1.0)
  ticks = np.arange(ravdess.NUM_CLASSES)
  axes.set_xticks(ticks, labels=ravdess.EMOTIONS, rotation=45, ha='right')
  axes.set_yticks(ticks, labels=ravdess.EMOTIONS)
  axes.set_xlabel('predicted')
  axes.set_ylabel('true')
  if title:
    axes.set_title(title)
  for i in range(ravdess.NUM_CLASSES):
    for j in range(ravdess.NUM_CLASSES):
      color = 'white' if row_fraction[i, j] > 0.5 else 'black'
      axes.text(j, i, str(matrix[i, j]), ha='center', va='center', color=color, fontsize=9)
  figure.tight_layout()
  canvas.draw()
  image = np.array(canvas.buffer_rgba(), dtype=np.uint8)[..., :3]  # [height, width, 3]
  figure.clear()
  return image[None]

"""Results a paper can cite: summaries, `report.json`, `predictions.csv`, provenance, the printed tables.

Everything here works on confusion matrices (rows true, columns predicted, classes in the
order of the run's class set, `ravdess.CLASS_SETS`) and plain records, so it is numpy and
the standard library only, no JAX.

`report.json` is a function of the checkpoints, the data and the `provenance.json` that the
training run wrote: nothing in it is chosen at the time it is written (no date, no path of
the evaluating process), so an eval-only run on the same checkpoints writes it byte for byte
again. What changes from process to process (date, git state, devices, wall times) is
recorded once, by training, in `provenance.json` (`provenance`, `write_provenance`) and
copied into the report from there (`read_provenance`, `make_report(provenance=...)`).

Every file is written by `atomic_write`: under a temporary name that is then renamed, with
the permissions any file this process creates gets (0666 less the umask).
"""

import copy
import csv
import datetime
import hashlib
import importlib.metadata
import io
import json
import os
import platform
import secrets
import subprocess
from collections.abc import Mapping, Sequence

import numpy as np

from emojax import ravdess

REPORT_FILENAME = 'report.json'
PROVENANCE_FILENAME = 'provenance.json'
PREDICTIONS_FILENAME = 'predictions.csv'
DEFAULT_CLASS_SET = 'thesis7'

# Thesis results, 7 classes, random 50/25/25 split: base models on the first 50%, the
# stacker on the next 25%, all tested on the last 25% (312 clips).
THESIS_RESULTS = {
  'audio': {'train': 0.85, 'test': 0.58},
  'visual': {'train': 0.85, 'test': 0.61},
  'stacker': {'train': 0.94, 'test': 0.87},
}
# The base models trained on the first 75% (base + stack) and tested on the same 25%. The
# thesis gives no train accuracy for this variant, and there is no stacker.
THESIS_RESULTS_75 = {'audio': {'test': 0.68}, 'visual': {'test': 0.72}}
# partition fractions (base, stack, test) -> the thesis' figures for that split.
_THESIS_SPLITS = (((0.5, 0.25, 0.25), THESIS_RESULTS), ((0.75, 0.0, 0.25), THESIS_RESULTS_75))

# The thesis' stacker confusion matrix on its 312 test clips: rows true,
# columns predicted, in the order of `ravdess.CLASS_SETS['thesis7']`.
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
# The metrics that cross-validation averages.
AGGREGATED_METRICS = ('accuracy', 'uar', 'macro_f1')
# Installed distributions whose versions can change a number.
_VERSIONED_PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'clu', 'tensorflow', 'numpy')
# The data preparation settings that decide what the features are.
_PREP_SETTINGS = ('fps', 'image_size', 'on_no_face', 'min_face_fraction')
_GENDERS = ('male', 'female')  # The schema's gender index: 0 male, 1 female.


# ----------------------------------------------------------------------------- files


def atomic_write(path: str, content: str | bytes) -> str:
  """Writes `content` to `path` through a temporary file and a rename; returns `path`.

  A reader, or a crash, never sees half a file. The temporary file is created by
  `os.open(..., 0o666)`, so the kernel gives it the permissions of any file this process
  creates (0644 under the usual umask 022); `tempfile.mkstemp` would make it 0600, which
  hides results from the rest of a group sharing the run directory.

  Args:
    path: the file to (re)place; its directory must exist.
    content: text (written as UTF-8) or bytes.
  """
  data = content.encode('utf-8') if isinstance(content, str) else bytes(content)
  directory, name = os.path.split(os.path.abspath(path))
  temporary = os.path.join(directory, f'.{name}.{secrets.token_hex(6)}.tmp')
  descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    with os.fdopen(descriptor, 'wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise
  return path


def _json_default(value):
  """Lets numpy scalars and arrays (say, in `dataset`) into the JSON files."""
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f'A JSON result file cannot hold a value of type {type(value).__name__}: {value!r}.')


def write_json(path: str, content) -> str:
  """Writes `content` as strict, diffable JSON (sorted keys, no NaN) with `atomic_write`."""
  try:
    text = json.dumps(content, sort_keys=True, indent=2, allow_nan=False, default=_json_default) + '\n'
  except ValueError as error:
    raise ValueError(f'Cannot write {path}: the content holds a NaN or infinite number ({error}).') from error
  return atomic_write(path, text)


# ----------------------------------------------------------------------------- summaries


def class_names_of(class_set: str) -> tuple[str, ...]:
  """The class names of `class_set` ('thesis7' or 'ravdess8'), in label order."""
  if class_set not in ravdess.CLASS_SETS:
    raise ValueError(f'Unknown class set {class_set!r}: use one of {sorted(ravdess.CLASS_SETS)}.')
  return ravdess.CLASS_SETS[class_set]


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
  """numerator / denominator, 0.0 where the denominator is 0 (scikit-learn's zero_division=0)."""
  numerator = numerator.astype(np.float64)
  denominator = denominator.astype(np.float64)
  return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def _as_confusion_matrix(confusion_matrix, class_names: Sequence[str]) -> np.ndarray:
  """Checks a confusion matrix against the class names and returns it as a [classes, classes] int64 array."""
  matrix = np.asarray(confusion_matrix)
  shape = (len(class_names), len(class_names))
  if matrix.shape != shape:
    raise ValueError(
      f'A confusion matrix over the classes {tuple(class_names)} must have shape {shape}; got {matrix.shape} '
      '(pass the class names of the run).'
    )
  if not np.all(np.isfinite(matrix)) or np.any(matrix < 0) or np.any(matrix != np.round(matrix)):
    raise ValueError(f'A confusion matrix must hold non-negative whole counts; got {matrix.tolist()}.')
  return matrix.astype(np.int64)


def summarize(confusion_matrix, class_names: Sequence[str] = ravdess.EMOTIONS) -> dict:
  """Accuracy (WA), unweighted average recall (UA), per-class precision / recall / F1 and macro F1.

  The formulas are scikit-learn's with `zero_division=0` and the label set fixed
  to all classes (`labels=range(len(class_names))`):
    recall_c    = tp_c / support_c           (0.0 when class c has no examples)
    precision_c = tp_c / predicted_c         (0.0 when nothing was predicted as c)
    f1_c        = 2 tp_c / (2 tp_c + fp_c + fn_c)  (0.0 when all three are 0)
    macro_f1    = mean of f1_c over all classes
    uar         = mean of recall_c over the classes with at least one example
                  (`balanced_accuracy_score`; a recall is undefined without examples).
  A class with no examples and no predictions therefore counts as F1 = 0 in the
  macro mean; scikit-learn's default label set (classes seen in y_true or
  y_pred) would leave it out. The training protocol refuses partitions with a
  missing class, so for real reports the conventions agree.

  Args:
    confusion_matrix: [classes, classes] counts, rows true, columns predicted.
    class_names: the classes in label order; the 7 thesis classes by default.

  Returns:
    A JSON-ready dict: `accuracy`, `uar`, `macro_f1`, `num_examples`,
    `per_class_recall`, `per_class_precision`, `per_class_f1`, `support`
    (each class name -> value) and `confusion_matrix` (list of lists of int).
  """
  matrix = _as_confusion_matrix(confusion_matrix, class_names)
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
    return {name: kind(value) for name, value in zip(class_names, values)}

  return {
    'accuracy': float(true_positives.sum() / num_examples),
    'uar': float(recall[support > 0].mean()),
    'macro_f1': float(f1.mean()),
    'num_examples': num_examples,
    'per_class_recall': by_class(recall),
    'per_class_precision': by_class(precision),
    'per_class_f1': by_class(f1),
    'support': by_class(support, int),
    'confusion_matrix': matrix.tolist(),
  }


# ----------------------------------------------------------------------------- the thesis


def thesis_baseline(
  protocol: str, fractions: Sequence[float] | None, class_set: str, models: Sequence[str]
) -> dict | None:
  """The thesis' figures that a run of this protocol can be compared with, or None.

  The thesis reports one protocol, the random split, 7 classes, with two sets of fractions:
    (0.5, 0.25, 0.25): audio train .85 / test .58, visual .85 / .61, stacker .94 / .87,
      and the stacker's test confusion matrix;
    (0.75, 0.0, 0.25): the base models trained on 75%, test only: audio .68, visual .72.
  Any other protocol (actor-independent, folds), class set or fractions has no thesis figure.

  Args:
    protocol: the partition protocol of the run, e.g. 'random' or 'actor'.
    fractions: the run's (base, stack, test) fractions (`config.data.fractions`); None
      when unknown, which matches nothing.
    class_set: the run's class set, 'thesis7' or 'ravdess8'.
    models: the models of the run; only these get figures.

  Returns:
    model -> {'train': accuracy (where the thesis gives one), 'test': accuracy}, the stacker
    also with 'confusion_matrix' (rows true, thesis7 order); None when nothing matches.
  """
  if protocol != 'random' or class_set != 'thesis7' or fractions is None:
    return None
  try:
    fractions = tuple(float(fraction) for fraction in fractions)
  except (TypeError, ValueError):
    return None
  for split, figures in _THESIS_SPLITS:
    if len(fractions) == len(split) and np.allclose(fractions, split, rtol=0.0, atol=1e-9):
      baseline = {name: dict(figures[name]) for name in models if name in figures}
      if 'stacker' in baseline:
        baseline['stacker']['confusion_matrix'] = copy.deepcopy(THESIS_STACKER_CONFUSION)
      return baseline or None
  return None


# ----------------------------------------------------------------------------- report.json


def make_report(
  summaries: dict[str, dict],
  *,
  protocol: str,
  seed: int,
  partitions: dict[str, int],
  dataset: dict | None = None,
  fractions: Sequence[float] | None = None,
  class_set: str = DEFAULT_CLASS_SET,
  provenance: dict | None = None,
) -> dict:
  """Assembles the content of `report.json`.

  Args:
    summaries: model name ('audio', 'visual', 'stacker'; those that were
      evaluated) -> its `summarize()` on the test partition, to which the trainer may
      add `train_accuracy`, `val_accuracy` (both at the best epoch), `loss` and
      `best_epoch`.
    protocol: the partition protocol, e.g. 'random' or 'actor'.
    seed: the run's seed.
    partitions: partition name -> number of clips in it.
    dataset: facts about the data (its directory, number of clips, whether the
      features came from stand-in extractors under the key
      `stand_in_extractors`); stored as given.
    fractions: `partitions.fractions_of(config)`, which decides which thesis figures apply;
      None (a protocol that splits by actors or folds, or unknown) gives no thesis figures.
    class_set: the run's class set, 'thesis7' (default) or 'ravdess8'.
    provenance: what `read_provenance(workdir)` returns (None when the workdir has no
      `provenance.json`); stored as given.

  Returns:
    A JSON-ready dict with one entry per model plus `protocol`, `seed`, `fractions`,
    `partitions`, `dataset`, `class_set`, `classes`, `thesis` (`thesis_baseline()`, or
    None) and `provenance`.
  """
  class_names = class_names_of(class_set)
  if not summaries:
    raise ValueError('The report needs the summary of at least one model; got none.')
  report = {}
  for name, summary in summaries.items():
    missing = [key for key in _SUMMARY_KEYS if key not in summary]
    if missing:
      raise ValueError(f'The summary of model {name!r} lacks {missing}; build it with emojax.report.summarize().')
    if list(summary['per_class_recall']) != list(class_names):
      raise ValueError(
        f'The summary of model {name!r} is over the classes {list(summary["per_class_recall"])}, not those of '
        f'class set {class_set!r} {list(class_names)}: pass the class set the run was trained on.'
      )
    report[name] = copy.deepcopy(summary)
  report.update(
    models=list(summaries),
    protocol=str(protocol),
    seed=int(seed),
    fractions=None if fractions is None else [float(fraction) for fraction in fractions],
    partitions={str(name): int(count) for name, count in partitions.items()},
    dataset=copy.deepcopy(dict(dataset or {})),
    class_set=class_set,
    classes=list(class_names),
    thesis=thesis_baseline(protocol, fractions, class_set, list(summaries)),
    provenance=copy.deepcopy(provenance),
  )
  return report


def write_report(workdir: str, report: dict) -> str:
  """Writes `workdir/report.json` atomically (`atomic_write`) and returns its path.

  Keys are sorted and NaN is refused, so the file is strict, diffable JSON.
  """
  os.makedirs(workdir, exist_ok=True)
  return write_json(os.path.join(workdir, REPORT_FILENAME), report)


# ----------------------------------------------------------------------------- provenance


def _package_version(name: str) -> str | None:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


def _git(repo_dir: str, *args: str) -> str:
  return subprocess.run(
    ['git', '-C', repo_dir, *args], check=True, capture_output=True, text=True, timeout=30
  ).stdout.strip()


def git_state(repo_dir: str) -> tuple[str | None, bool | None]:
  """(commit, dirty) of the git checkout at `repo_dir`; (None, None) when there is none.

  `dirty` is whether `git status --porcelain` lists anything, untracked files included. A
  directory inside a larger checkout (say, site-packages in a project's venv) is not a
  checkout of its own, so it gives (None, None) rather than that project's commit. Never
  raises: a missing git, a timeout or a broken repository all give (None, None).
  """
  try:
    top = _git(repo_dir, 'rev-parse', '--show-toplevel')
    if os.path.realpath(top) != os.path.realpath(repo_dir):
      return None, None
    commit = _git(repo_dir, 'rev-parse', 'HEAD')
    dirty = bool(_git(repo_dir, 'status', '--porcelain'))
  except (OSError, subprocess.SubprocessError):
    return None, None
  return commit, dirty


def clip_ids_sha256(clip_ids: Sequence[str]) -> str:
  """sha256 (hex) of the sorted clip ids joined by newlines, UTF-8: one clip more or less changes it."""
  return hashlib.sha256('\n'.join(sorted(str(clip_id) for clip_id in clip_ids)).encode('utf-8')).hexdigest()


def provenance(
  dataset_info: dict,
  clip_ids: Sequence[str],
  repo_dir: str | None = None,
  *,
  devices: Sequence[str] = (),
  parameter_counts: Mapping[str, int] | None = None,
  stage_seconds: Mapping[str, float] | None = None,
) -> dict:
  """Where a number comes from: code, libraries, hardware, data preparation and clips.

  Args:
    dataset_info: the parsed `dataset_info.json` of the data directory.
    clip_ids: the ids of every clip the run used (all partitions), in any order.
    repo_dir: the checkout the code runs from; by default the directory above the emojax
      package. Not a git checkout (an installed package) gives commit and dirty None.
    devices: `[str(d) for d in jax.devices()]`, described by the caller so that this
      module needs no JAX.
    parameter_counts: model name -> number of trainable parameters.
    stage_seconds: stage name -> wall-clock seconds it trained for.

  Returns:
    A JSON-ready dict: `date_utc` (ISO 8601), `versions` (emojax, python and the libraries;
    None for one not installed), `git` ({'commit', 'dirty'}), `devices`, `data` (extractor
    identities and preparation settings from dataset_info.json, the face detection rate,
    skipped clip counts, and `num_clips` / `clip_ids_sha256` of the clips used),
    `parameter_counts` and `stage_seconds`.
  """
  if repo_dir is None:
    repo_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  commit, dirty = git_state(repo_dir)
  settings = dataset_info.get('settings') or {}
  versions = {'emojax': _package_version('emojax'), 'python': platform.python_version()}
  versions.update({name: _package_version(name) for name in _VERSIONED_PACKAGES})
  return {
    'date_utc': datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
    'versions': versions,
    'git': {'commit': commit, 'dirty': dirty},
    'devices': [str(device) for device in devices],
    'data': {
      'schema_version': dataset_info.get('schema_version'),
      'extractors': copy.deepcopy(dataset_info.get('extractors')),
      'settings': {key: settings.get(key) for key in _PREP_SETTINGS},
      'face_detection_rate': dataset_info.get('face_detection_rate'),
      'num_skipped': dataset_info.get('num_skipped'),
      'skipped_by_kind': copy.deepcopy(dataset_info.get('skipped_by_kind')),
      'num_clips': len(clip_ids),
      'clip_ids_sha256': clip_ids_sha256(clip_ids),
    },
    'parameter_counts': {str(name): int(count) for name, count in (parameter_counts or {}).items()},
    'stage_seconds': {str(name): float(seconds) for name, seconds in (stage_seconds or {}).items()},
  }


def write_provenance(workdir: str, record: dict) -> str:
  """Writes `workdir/provenance.json` (what `provenance()` returned); returns its path.

  Training writes it once its stages are done; an eval-only run only reads it, so that
  the report it embeds it in is the same bytes as the training run's.
  """
  os.makedirs(workdir, exist_ok=True)
  return write_json(os.path.join(workdir, PROVENANCE_FILENAME), record)


def read_provenance(workdir: str) -> dict | None:
  """The content of `workdir/provenance.json`, or None for a workdir trained before it existed."""
  path = os.path.join(workdir, PROVENANCE_FILENAME)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


# ----------------------------------------------------------------------------- predictions.csv


def prediction_columns(class_names: Sequence[str] = ravdess.EMOTIONS) -> list[str]:
  """The header of `predictions.csv`: the clip's facts, then one probability column per class."""
  fixed = ['model', 'fold', 'seed', 'clip_id', 'actor', 'gender', 'true', 'predicted', 'correct']
  return fixed + [f'p_{name}' for name in class_names]


def _gender_name(gender) -> str:
  if isinstance(gender, str) and gender in _GENDERS:
    return gender
  if int(gender) in (0, 1):
    return _GENDERS[int(gender)]
  raise ValueError(f'gender must be 0 (male), 1 (female) or their names; got {gender!r}.')


def write_predictions(path: str, rows: Sequence[Mapping], class_names: Sequence[str] = ravdess.EMOTIONS) -> str:
  """Writes `predictions.csv`: one row per test clip and model (member), in the order given.

  Args:
    path: the file to write (atomically); its directory must exist.
    rows: one dict per clip and model, with the keys
      model: str, e.g. 'stacker';
      fold: int, or None outside cross-validation (an empty cell);
      seed: int, the member's seed;
      clip_id: str, as in the TFRecords;
      actor: int, 1..24;
      gender: 0 (male) or 1 (female) as in the TFRecords, or 'male' / 'female';
      label: int, the true class's index in `class_names`;
      probabilities: [classes] floats, the softmax of the model's logits;
      prediction: int, optional; the predicted class's index, by default the argmax of
        `probabilities`. Pass the argmax of the logits to match the confusion matrix
        exactly where float32 softmax rounds two top classes to the same probability.
    class_names: the run's classes in label order.

  Returns:
    `path`. Columns: see `prediction_columns`; `true` and `predicted` are class names,
    `correct` is 1 or 0, probabilities have 6 decimals.
  """
  num_classes = len(class_names)
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator='\n')
  writer.writerow(prediction_columns(class_names))
  for row in rows:
    where = f'prediction row of model {row.get("model")!r}, clip {row.get("clip_id")!r}'
    probabilities = np.asarray(row['probabilities'], dtype=np.float64)
    if probabilities.shape != (num_classes,) or not np.all(np.isfinite(probabilities)):
      raise ValueError(
        f'The {where} needs {num_classes} finite probabilities (one per class of {tuple(class_names)}); '
        f'got {probabilities.tolist()}.'
      )
    label = int(row['label'])
    prediction = int(row['prediction']) if row.get('prediction') is not None else int(np.argmax(probabilities))
    if not (0 <= label < num_classes and 0 <= prediction < num_classes):
      raise ValueError(f'The {where} has label {label} / prediction {prediction} outside 0..{num_classes - 1}.')
    fold = row.get('fold')
    writer.writerow(
      [
        str(row['model']),
        '' if fold is None else int(fold),
        int(row['seed']),
        str(row['clip_id']),
        int(row['actor']),
        _gender_name(row['gender']),
        class_names[label],
        class_names[prediction],
        int(label == prediction),
      ]
      + [f'{p:.6f}' for p in probabilities]
    )
  return atomic_write(path, buffer.getvalue())


def prediction_rows(
  model: str,
  split: Mapping[str, np.ndarray],
  probabilities: np.ndarray,
  *,
  fold: int | None = None,
  seed: int = 0,
  predictions: np.ndarray | None = None,
) -> list[dict]:
  """The `write_predictions` rows of one model (member) on one partition.

  Args:
    model: the model's name.
    split: the partition as the input pipeline holds it: `clip_id`, `actor`, `gender` and
      `label`, each [N].
    probabilities: [N, classes] softmax outputs, in the order of `split`.
    fold: the member's fold, or None outside cross-validation.
    seed: the member's seed.
    predictions: [N] predicted class indices (the argmax of the logits), or None for the
      argmax of `probabilities`.
  """
  probabilities = np.asarray(probabilities)
  if len(probabilities) != len(split['label']):
    raise ValueError(
      f'Model {model!r}: {len(probabilities)} rows of probabilities for {len(split["label"])} clips; pass one per clip.'
    )
  return [
    {
      'model': model,
      'fold': fold,
      'seed': seed,
      'clip_id': str(split['clip_id'][i]),
      'actor': int(split['actor'][i]),
      'gender': int(split['gender'][i]),
      'label': int(split['label'][i]),
      'probabilities': probabilities[i],
      'prediction': None if predictions is None else int(predictions[i]),
    }
    for i in range(len(probabilities))
  ]


def read_predictions(path: str) -> list[dict]:
  """Reads `predictions.csv` back: one dict per row with typed values.

  Returns:
    Dicts with `model`, `clip_id`, `gender`, `true`, `predicted` (str), `fold` (int or
    None), `seed`, `actor` (int), `correct` (bool) and `probabilities` (class name ->
    float, in column order).
  """
  with open(path, newline='') as f:
    rows = []
    for record in csv.DictReader(f):
      probabilities = {key[2:]: float(value) for key, value in record.items() if key.startswith('p_')}
      rows.append(
        {
          'model': record['model'],
          'fold': int(record['fold']) if record['fold'] else None,
          'seed': int(record['seed']),
          'clip_id': record['clip_id'],
          'actor': int(record['actor']),
          'gender': record['gender'],
          'true': record['true'],
          'predicted': record['predicted'],
          'correct': record['correct'] == '1',
          'probabilities': probabilities,
        }
      )
  return rows


# ----------------------------------------------------------------------------- cross-validation


def _mean_std(values: Sequence[float]) -> dict:
  """{'mean', 'std', 'n'}; std is the sample standard deviation (ddof=1), 0.0 for one value."""
  values = np.asarray(values, dtype=np.float64)
  std = float(values.std(ddof=1)) if len(values) >= 2 else 0.0
  return {'mean': float(values.mean()), 'std': std, 'n': len(values)}


def aggregate(member_summaries: Sequence[dict], folds: Sequence[int]) -> dict:
  """Cross-validation figures of one model from its members' test summaries (members = folds x seeds).

  Seeds are averaged within each fold first, so that a fold with more seeds does not weigh
  more, then the fold means are averaged. Standard deviations are sample standard
  deviations (ddof=1, the spread one would expect over new folds or seeds) when there are
  at least two values, and 0.0 for a single value.

  Args:
    member_summaries: one `summarize()` per member, all over the same classes.
    folds: the fold of each member, aligned with `member_summaries`.

  Returns:
    A JSON-ready dict:
      num_members: number of summaries;
      folds: [{'fold', 'num_members', 'accuracy', 'uar', 'macro_f1'}] sorted by fold, each
        metric the mean over that fold's seeds;
      over_folds: metric -> {'mean', 'std', 'n'} over the fold means (the figure to cite);
      over_members: metric -> {'mean', 'std', 'n'} over all members;
      per_class_recall: class -> mean over folds of the seed-averaged recall;
      confusion_matrix: the members' matrices summed (with several seeds per fold, each
        test clip is counted once per seed), and num_examples its total.
  """
  if not member_summaries:
    raise ValueError('aggregate() needs the summary of at least one member; got none.')
  if len(member_summaries) != len(folds):
    raise ValueError(f'aggregate() got {len(member_summaries)} member summaries but {len(folds)} folds: pass one each.')
  class_names = list(member_summaries[0]['per_class_recall'])
  for index, summary in enumerate(member_summaries):
    missing = [key for key in (*AGGREGATED_METRICS, 'per_class_recall', 'confusion_matrix') if key not in summary]
    if missing:
      raise ValueError(
        f'Member {index} (fold {folds[index]}) lacks {missing}; build it with emojax.report.summarize().'
      )
    if list(summary['per_class_recall']) != class_names:
      raise ValueError(f'Member {index} (fold {folds[index]}) is over other classes than member 0: {class_names}.')

  by_fold = {}
  for fold, summary in zip(folds, member_summaries):
    by_fold.setdefault(int(fold), []).append(summary)
  fold_rows, fold_recalls = [], []
  for fold in sorted(by_fold):
    members = by_fold[fold]
    row = {'fold': fold, 'num_members': len(members)}
    row.update({metric: float(np.mean([m[metric] for m in members])) for metric in AGGREGATED_METRICS})
    fold_rows.append(row)
    fold_recalls.append([np.mean([m['per_class_recall'][name] for m in members]) for name in class_names])
  matrix = np.sum([_as_confusion_matrix(m['confusion_matrix'], class_names) for m in member_summaries], axis=0)
  return {
    'num_members': len(member_summaries),
    'folds': fold_rows,
    'over_folds': {metric: _mean_std([row[metric] for row in fold_rows]) for metric in AGGREGATED_METRICS},
    'over_members': {metric: _mean_std([m[metric] for m in member_summaries]) for metric in AGGREGATED_METRICS},
    'per_class_recall': {name: float(value) for name, value in zip(class_names, np.mean(fold_recalls, axis=0))},
    'confusion_matrix': matrix.tolist(),
    'num_examples': int(matrix.sum()),
  }


def _plus_minus(stats: dict) -> str:
  return f'{stats["mean"]:.4f} ± {stats["std"]:.4f}'


def format_aggregate(aggregates: Mapping[str, dict]) -> str:
  """The printed cross-validation table: per model, one row per fold and a `mean ± std` row.

  Args:
    aggregates: model name -> its `aggregate()`.
  """
  titles = ('test WA', 'test UA', 'macro F1')
  width = len('0.0000 ± 0.0000')
  lines = ['cross-validation on test (seeds averaged within each fold; std: sample, ddof=1)']
  for name, result in aggregates.items():
    lines += ['', f'{name}', f'{"fold":>12} {"members":>7} ' + ' '.join(f'{title:>{width}}' for title in titles)]
    for row in result['folds']:
      values = ' '.join(f'{row[metric]:>{width}.4f}' for metric in AGGREGATED_METRICS)
      lines.append(f'{row["fold"]:>12} {row["num_members"]:>7} {values}')
    for label, key in (('mean ± std', 'over_folds'), ('all members', 'over_members')):
      stats = result[key]
      values = ' '.join(f'{_plus_minus(stats[metric]):>{width}}' for metric in AGGREGATED_METRICS)
      lines.append(f'{label:>12} {stats["accuracy"]["n"]:>7} {values}')
  return '\n'.join(lines) + '\n'


# ----------------------------------------------------------------------------- printed report


def _column_heads(class_names: Sequence[str], width: int) -> list[str]:
  """The shortest prefixes (at least 2 letters, at most `width`) that tell the class names apart."""
  for length in range(2, width + 1):
    heads = [name[:length] for name in class_names]
    if len(set(heads)) == len(heads):
      return heads
  return [name[:width] for name in class_names]


def _format_confusion(matrix, class_names: Sequence[str]) -> list[str]:
  """The thesis' layout: one row per true class, counts per predicted class."""
  matrix = np.asarray(matrix, dtype=np.int64)
  name_width = max(len(name) for name in class_names)
  cell_width = max(3, len(str(int(matrix.max()))) + 1)
  heads = _column_heads(class_names, cell_width - 1)
  header = ' ' * name_width + ''.join(f'{head:>{cell_width}}' for head in heads)
  lines = [header + '   (rows true, columns predicted)']
  for name, row in zip(class_names, matrix):
    lines.append(f'{name:<{name_width}}' + ''.join(f'{int(count):>{cell_width}d}' for count in row))
  return lines


def _format_classification_report(summary: dict, class_names: Sequence[str], digits: int = 2) -> list[str]:
  """Lines in the layout of scikit-learn's `classification_report`."""
  names = list(class_names)
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


def _format_provenance(record: dict) -> str:
  """One line: the code, libraries and clips behind the numbers."""
  versions = record.get('versions') or {}
  git = record.get('git') or {}
  data = record.get('data') or {}
  commit = git.get('commit')
  code = f'git {commit[:12]}{" (dirty)" if git.get("dirty") else ""}' if commit else 'not a git checkout'
  libraries = ', '.join(f'{name} {versions[name]}' for name in ('jax', 'flax', 'optax') if versions.get(name))
  clips = f'{data.get("num_clips")} clips sha256 {str(data.get("clip_ids_sha256"))[:12]}'
  return f'provenance: emojax {versions.get("emojax")}, {code}, {libraries}; {clips}; trained {record.get("date_utc")}'


def _cell(value, digits: int = 4) -> str:
  return '-' if value is None else f'{value:.{digits}f}'


def format_report(report: dict) -> str:
  """The printed comparison: WA / UA / macro F1 (next to the thesis where it applies), recalls, matrices."""
  models = report['models']
  class_names = report.get('classes') or list(ravdess.EMOTIONS)
  fractions = report.get('fractions')
  lines = [
    f'emojax test results: protocol {report.get("protocol")!r}, seed {report.get("seed")}, '
    f'class set {report.get("class_set", DEFAULT_CLASS_SET)!r} ({len(class_names)} classes)'
    + ('' if fractions is None else f', fractions {tuple(fractions)}')
  ]
  partitions = report.get('partitions', {})
  lines.append('partitions (clips): ' + ', '.join(f'{name} {count}' for name, count in partitions.items()))
  dataset = report.get('dataset') or {}
  if dataset:
    lines.append('dataset: ' + ', '.join(f'{key} {value}' for key, value in sorted(dataset.items())))
  if report.get('provenance'):
    lines.append(_format_provenance(report['provenance']))
  if dataset.get('stand_in_extractors'):
    lines.append('NOTE: features come from stand-in extractors, not VGGish/VGG16: do not compare with the thesis.')
  thesis = report.get('thesis') or {}
  if not thesis and fractions is None and report.get('protocol', 'random') == 'random':
    lines.append('NOTE: the report does not record the partition fractions, so no thesis figure is shown.')
  elif not thesis:
    lines.append(
      'NOTE: the thesis has no figure for this protocol (it reports the random split, 7 classes, fractions '
      '(0.5, 0.25, 0.25) and (0.75, 0.0, 0.25)): no thesis column.'
    )
  thesis_train = any('train' in figures for figures in thesis.values())

  header = (
    f'{"model":<8} {"train acc":>9} {"val acc":>9} {"test WA":>9} {"test UA":>9} {"macro F1":>9}'
    + (f' {"thesis train":>13}' if thesis_train else '')
    + (f' {"thesis test":>12}' if thesis else '')
  )
  lines += ['', header]
  for name in models:
    summary = report[name]
    figures = thesis.get(name, {})
    row = (
      f'{name:<8} {_cell(summary.get("train_accuracy")):>9} {_cell(summary.get("val_accuracy")):>9} '
      f'{summary["accuracy"]:>9.4f} {_cell(summary.get("uar")):>9} {summary["macro_f1"]:>9.4f}'
    )
    if thesis_train:
      row += f' {_cell(figures.get("train"), 2):>13}'
    if thesis:
      row += f' {_cell(figures.get("test"), 2):>12}'
    lines.append(row)
  lines.append('(WA: accuracy over all test clips; UA: unweighted average recall, the mean of the per-class recalls)')
  if any('train_accuracy' in report[name] for name in models):
    lines.append('(train acc: running mean over the best epoch, dropout on, as Keras and the thesis report it)')
  if thesis and not thesis_train:
    lines.append('(thesis: base models trained on base + stack, 75%, tested on the same 25%: test accuracy only)')
  aggregates = {name: report[name]['aggregate'] for name in models if 'aggregate' in report[name]}
  if aggregates:
    lines.append(
      f'(several members: each row above pools the test predictions of all {report[models[0]]["aggregate"]["num_members"]} '
      'members; the cross-validation figures to cite are below)'
    )
    lines += ['', *format_aggregate(aggregates).splitlines()]

  name_width = max(len(name) for name in class_names)
  lines += ['', 'per-class recall (test)', f'{"":<{name_width}}' + ''.join(f' {name:>8}' for name in models)]
  for emotion in class_names:
    lines.append(
      f'{emotion:<{name_width}}' + ''.join(f' {report[m]["per_class_recall"][emotion]:>8.4f}' for m in models)
    )

  for name in models:
    lines += ['', f'{name}: confusion matrix on test']
    lines += _format_confusion(report[name]['confusion_matrix'], class_names)
    if all(key in report[name] for key in ('per_class_precision', 'per_class_f1', 'support')):
      lines += ['', f'{name}: classification report']
      lines += _format_classification_report(report[name], class_names)
  if 'confusion_matrix' in thesis.get('stacker', {}):
    lines += ['', 'thesis stacker: confusion matrix on its 312 test clips (random split)']
    lines += _format_confusion(thesis['stacker']['confusion_matrix'], ravdess.CLASS_SETS['thesis7'])
  return '\n'.join(lines) + '\n'


# ----------------------------------------------------------------------------- images


def confusion_image(
  confusion_matrix, model: str = '', split: str = '', *, class_names: Sequence[str] = ravdess.EMOTIONS
) -> np.ndarray:
  """Renders a confusion matrix as a heatmap for `clu` `writer.write_images`.

  The title says what is shown and how well it did, e.g. "stacker · test · acc 0.87 ·
  n=312". Colours are the share of each true class (row-normalised recall), so the rare
  neutral class reads like the others; every cell prints its count. Fonts are sized for
  TensorBoard, which shows the 640 x 600 image scaled to its card width.

  Args:
    confusion_matrix: [classes, classes] counts, rows true, columns predicted.
    model: the model's name, first in the title ('' leaves it out).
    split: the partition, e.g. 'test' or 'validation' ('' leaves it out).
    class_names: the classes in label order; the 7 thesis classes by default.

  Returns:
    [1, height, width, 3] uint8 image.
  """
  # Imported here so that importing emojax.report stays cheap; a bare Figure on
  # the Agg canvas touches no pyplot state, so nothing global is left open.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  matrix = _as_confusion_matrix(confusion_matrix, class_names)
  num_classes = len(class_names)
  total = int(matrix.sum())
  accuracy = np.trace(matrix) / total if total else 0.0
  title = ' · '.join([part for part in (model, split) if part] + [f'acc {accuracy:.2f}', f'n={total}'])
  row_fraction = _safe_divide(matrix, matrix.sum(axis=1, keepdims=True))  # [true, predicted] in [0, 1]

  figure = Figure(figsize=(6.4, 6.0), dpi=100)
  canvas = FigureCanvasAgg(figure)
  axes = figure.add_subplot()
  image = axes.imshow(row_fraction, cmap='Blues', vmin=0.0, vmax=1.0)
  ticks = np.arange(num_classes)
  axes.set_xticks(ticks, labels=class_names, rotation=40, ha='right', rotation_mode='anchor', fontsize=12)
  axes.set_yticks(ticks, labels=class_names, fontsize=12)
  axes.set_xlabel('predicted', fontsize=12)
  axes.set_ylabel('true', fontsize=12)
  axes.set_title(title, fontsize=14, fontweight='bold')
  count_size = 13 if num_classes <= 8 else 10
  for i in range(num_classes):
    for j in range(num_classes):
      color = 'white' if row_fraction[i, j] > 0.5 else 'black'
      axes.text(j, i, str(matrix[i, j]), ha='center', va='center', color=color, fontsize=count_size)
  colorbar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.03)
  colorbar.set_label('share of the true class', fontsize=11)
  colorbar.ax.tick_params(labelsize=10)
  figure.tight_layout()
  canvas.draw()
  pixels = np.array(canvas.buffer_rgba(), dtype=np.uint8)[..., :3]  # [height, width, 3]
  figure.clear()
  return pixels[None]

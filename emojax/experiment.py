"""The thesis' experiment, over folds and seeds: base models, their features, the stacker, the report.

`run(config, workdir)` draws the folds of `config.data.protocol` (one for the thesis' single
split) and makes one *member* per (fold, seed) of `config.seeds`. Then, for the models in
`config.models`, stage by stage, every member at once (`emojax.train` vmaps them):
  1. each base model ('audio', 'visual') on its member's base partition, early stopping on
     its validation part;
  2. 'features': the best base parameters, frozen, turn each member's stack and test
     partitions into the stacker's inputs (audio 256 + visual 100 penultimate outputs),
     saved in `workdir/features/` so they are computed once;
  3. 'stacker' on the stack partition's features;
and tests every trained member on its fold's test partition. The report (`workdir/report.json`,
printed too) gives each member's figures and, over several members, their mean ± std.

How one stage is fitted, checkpointed and resumed is `emojax.train`'s; which clips go where
is `emojax.partitions`'. Everything random is a function of (seed, stage, fold, step or
epoch), so a resumed run ends with the same report as an uninterrupted one, wherever it was
killed. A workdir belongs to the code version, config and data that started it: any other is
refused before anything compiles (`check_workdir`). Eval reads the finished stages only
(`stages_to_evaluate`).
"""

import dataclasses
import importlib.metadata
import json
import os
import time
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers

from emojax import input_pipeline, lock, models, partitions, report, train

PARTITIONS_FILENAME = 'partitions.json'
CONFIG_FILENAME = 'config.json'
FINGERPRINT_FILENAME = 'fingerprint.json'
DATA_SETTINGS_FILENAME = 'data_settings.json'
STACKER_PARTITIONS = ('stack_train', 'stack_val', 'test')
# Config fields that do not change what a run computes, so a workdir may be resumed or
# evaluated with other values: what the run does with it, how often it logs and saves, where
# the data lie (the data themselves are compared by their fingerprint) and how the members
# are laid out on the devices (the device count is not in the config either).
RESULT_NEUTRAL_FIELDS = (
  'mode',
  'log_every_secs',
  'checkpoint_every_secs',
  'data.dir',
  'mesh.member_shards',
  'compact_stopped_members',
)
# The most differing fields one error names.
_MAX_LISTED_DIFFERENCES = 6


@dataclasses.dataclass(frozen=True)
class Paths:
  """Where a run keeps what: one place for the workdir layout."""

  workdir: str

  def stage(self, name: str) -> str:
    return os.path.join(self.workdir, name)

  def checkpoints(self, name: str) -> str:
    return os.path.join(self.stage(name), 'checkpoints')

  def normalization(self, name: str) -> str:
    return os.path.join(self.stage(name), 'normalization.npz')

  def test_events(self, name: str) -> str:
    return os.path.join(self.stage(name), 'test')

  def features(self, partition: str) -> str:
    return os.path.join(self.workdir, 'features', f'{partition}.npz')

  @property
  def config(self) -> str:
    return os.path.join(self.workdir, CONFIG_FILENAME)

  @property
  def partitions(self) -> str:
    return os.path.join(self.workdir, PARTITIONS_FILENAME)

  @property
  def fingerprint(self) -> str:
    return os.path.join(self.workdir, FINGERPRINT_FILENAME)

  @property
  def data_settings(self) -> str:
    return os.path.join(self.workdir, DATA_SETTINGS_FILENAME)

  def done(self, name: str) -> str:
    return os.path.join(self.stage(name), train.DONE_FILENAME)


@dataclasses.dataclass(frozen=True)
class Member:
  """One model of each stage: a fold's partitions trained with one seed."""

  fold: partitions.Fold
  seed: int

  @property
  def name(self) -> str:
    return f'{self.fold.name}/seed_{self.seed}'


def seeds_of(config) -> tuple[int, ...]:
  """The training seeds: `config.seeds`, or `config.seed` alone when it is empty."""
  return tuple(config.get('seeds') or ()) or (config.seed,)


def stage_index(name: str) -> int:
  """The model's place in `models.MODELS`, folded into the seed so each stage has its own keys and batch orders."""
  return list(models.MODELS).index(name)


def member_key(member: Member, name: str) -> jax.Array:
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(member.seed), stage_index(name)), member.fold.index)


def shuffle_seed(member: Member, name: str) -> tuple[int, ...]:
  """The seed of member's batch order in stage `name` (`MemberData.shuffle_seed`)."""
  return (member.seed, 2, stage_index(name), member.fold.index)


def _stage(config, name: str, paths: Paths, members, train_data, val_data) -> train.Stage:
  """A `train.Stage` of model `name` for `members`, from each member's training and validation data."""
  keys = models.MODELS[name].inputs
  options = dict(keys=keys, time_bucket=config.data.time_bucket)

  def train_batches(epoch, active):
    return input_pipeline.member_batches(
      train_data, config.batch_size, epoch=epoch, active=active, length_chunk=config.data.length_chunk, **options
    )

  def val_batches():
    return input_pipeline.member_batches(val_data, config.batch_size, **options)

  return train.Stage(
    name=name,
    directory=paths.stage(name),
    model=models.build_model(name, config.model, len(partitions.class_names(config))),
    members=tuple(member.name for member in members),
    keys=jax.numpy.stack([member_key(member, name) for member in members]),
    train_batches=train_batches,
    val_batches=val_batches,
    example_batch=next(input_pipeline.member_batches(train_data, config.batch_size, **options)),
    num_train_batches=max(input_pipeline.num_batches(len(data.indices), config.batch_size) for data in train_data),
    class_names=partitions.class_names(config),
  )


def agreed(decide: Callable[[], object]):
  """`decide()` run on process 0 alone; its result, or its ValueError / FileNotFoundError, on every process.

  Decisions taken from files in the workdir (is it locked, does it fit the config, which
  stages finished) are taken once: a process that read the disk at another moment, or
  through another NFS cache, and decided otherwise would stop, or skip a collective, while
  the others wait for it. The result must be something JSON can hold.
  """
  outcome = None
  if jax.process_index() == 0:
    try:
      outcome = {'value': decide()}
    except (ValueError, FileNotFoundError) as error:
      outcome = {'error': 'FileNotFoundError' if isinstance(error, FileNotFoundError) else 'ValueError'}
      outcome['message'] = str(error)
  outcome = train.from_process_zero(outcome)
  if 'error' in outcome:
    raise (FileNotFoundError if outcome['error'] == 'FileNotFoundError' else ValueError)(outcome['message'])
  return outcome['value']


def fingerprint(clips, info: dict) -> dict:
  """What a workdir's checkpoints depend on besides the config: the code that wrote them and the data.

  The data are named by their clips (`report.clip_ids_sha256`) and by how their features
  were made (dataset_info.json's schema version, extractors and settings), not by the
  bytes of the shards, which a rebuild with the same settings reproduces.
  """
  try:
    version = importlib.metadata.version('emojax')
  except importlib.metadata.PackageNotFoundError:  # Run from a checkout that was never installed.
    version = None
  return {
    'code': {'emojax': version, 'checkpoint_layout': train.CHECKPOINT_LAYOUT_VERSION},
    'data': {
      'num_clips': len(clips['clip_id']),
      'clip_ids_sha256': report.clip_ids_sha256(clips['clip_id'].tolist()),
      'schema_version': info.get('schema_version'),
      'extractors': info.get('extractors'),
      'settings': info.get('settings'),
    },
  }


def _flatten(value, prefix: str = '') -> dict:
  """A JSON object as {dotted field: leaf value}; lists are leaves."""
  if not isinstance(value, dict) or not value:
    return {prefix: value}
  flat = {}
  for key, child in value.items():
    flat.update(_flatten(child, f'{prefix}.{key}' if prefix else str(key)))
  return flat


def differences(old: dict, new: dict, ignore: tuple[str, ...] = ()) -> list[str]:
  """'field: X there, Y now' for every dotted field of two JSON objects that differs, but those in `ignore`."""
  old, new = _flatten(old), _flatten(new)

  def show(flat, field):
    text = json.dumps(flat[field]) if field in flat else 'absent'
    return text if len(text) <= 40 else text[:37] + '...'

  fields = sorted(
    field for field in old.keys() | new.keys() if field not in ignore and old.get(field, ()) != new.get(field, ())
  )
  return [f'{field}: {show(old, field)} there, {show(new, field)} now' for field in fields]


def _listed(items: list[str]) -> str:
  shown = '; '.join(items[:_MAX_LISTED_DIFFERENCES])
  return shown + (f'; and {len(items) - _MAX_LISTED_DIFFERENCES} more' if len(items) > _MAX_LISTED_DIFFERENCES else '')


def _partitions_record(config, clips, folds) -> dict:
  return {
    'protocol': config.data.protocol,
    'seed': config.seed,
    'folds': [
      {
        'index': fold.index,
        'test_actors': list(fold.test_actors),
        'clip_ids': {name: sorted(clips['clip_id'][indices].tolist()) for name, indices in fold.parts.items()},
      }
      for fold in folds
    ],
  }


def check_workdir(paths: Paths, config, clips, info: dict, folds, *, is_training: bool) -> None:
  """Refuses a workdir whose checkpoints another code version, config or data wrote; records this run's.

  Checked against the files an earlier run left, in this order: `fingerprint.json` (the
  emojax version and checkpoint layout, then the data), `config.json` (every field but
  `RESULT_NEUTRAL_FIELDS`) and `partitions.json` (the clips of every partition). A training
  run then writes them: the fingerprint and partitions once, the config every time (it
  records the latest run's neutral fields, such as a moved `data.dir`).

  Raises:
    ValueError: one sentence naming what differs and what to do.
  """
  workdir = paths.workdir
  current = fingerprint(clips, info)
  if os.path.exists(paths.fingerprint):
    recorded = train.read_json(paths.fingerprint)
    if recorded.get('code') != current['code']:
      old, new = recorded.get('code') or {}, current['code']
      raise ValueError(
        f'{workdir} was written by emojax {old.get("emojax")} (checkpoint layout {old.get("checkpoint_layout")}), '
        f'this is emojax {new["emojax"]} (layout {new["checkpoint_layout"]}), whose results may differ: use a new '
        '--workdir, or the emojax version of that run.'
      )
    data = differences(recorded.get('data') or {}, current['data'])
    if data:
      raise ValueError(
        f'{workdir} was trained on other data than config.data.dir {config.data.dir} holds ({_listed(data)}): use a '
        'new --workdir, or the data of that run.'
      )
  elif os.path.exists(paths.config) or os.path.exists(paths.partitions):
    raise ValueError(
      f'{workdir} was written by an emojax older than checkpoint layout {train.CHECKPOINT_LAYOUT_VERSION} (it has no '
      f'{FINGERPRINT_FILENAME}), whose checkpoints this one may not restore: use a new --workdir.'
    )
  config_json = json.loads(config.to_json_best_effort())
  if os.path.exists(paths.config):
    fields = differences(train.read_json(paths.config), config_json, RESULT_NEUTRAL_FIELDS)
    if fields:
      raise ValueError(
        f'{workdir} was trained with another config ({_listed(fields)}): use a new --workdir, or the config of that '
        f'run, which {paths.config} holds (--config=configs/from_workdir.py:{workdir} loads it).'
      )
  partitions_json = _partitions_record(config, clips, folds)
  if os.path.exists(paths.partitions) and train.read_json(paths.partitions)['folds'] != partitions_json['folds']:
    raise ValueError(
      f'{workdir} was trained on other partitions than this config draws from these data (see {paths.partitions}): '
      'use a new --workdir, or the emojax version of that run.'
    )
  if is_training:
    # The fingerprint first: a workdir with a config.json but none is one an older emojax wrote.
    if not os.path.exists(paths.fingerprint):
      report.write_json(paths.fingerprint, current)
    report.write_json(paths.config, config_json)
    report.write_json(paths.data_settings, data_settings(info, config))  # What predict needs of the data.
    if not os.path.exists(paths.partitions):
      report.write_json(paths.partitions, partitions_json)


def stages_to_evaluate(paths: Paths, config) -> tuple[list[str], list[str]]:
  """(stages eval restores, stages it leaves out): eval reads finished stages only.

  A stage that did not finish (no DONE file: its training was killed, or is still to run)
  would be evaluated at an epoch that is not its result, so eval leaves it out, and the
  stacker too unless both base models finished; the report then holds the finished ones and
  names the others under `unfinished_stages`.

  Raises:
    FileNotFoundError: no stage has a checkpoint (never trained here), or none finished.
  """
  names = list(config.models)
  if not any(os.path.isdir(paths.checkpoints(name)) for name in names):
    raise FileNotFoundError(
      f"No checkpoints for stage '{names[0]}' in {paths.checkpoints(names[0])}: train first (--config.mode=train) or "
      'point --workdir at a trained run.'
    )
  finished = [name for name in names if os.path.exists(paths.done(name))]
  evaluated = [name for name in finished if not models.MODELS[name].stacked or set(models.BASE_MODELS) <= set(finished)]
  if not evaluated:
    raise FileNotFoundError(
      f'No stage of {paths.workdir} has finished training (no {train.DONE_FILENAME} file in {", ".join(names)}): '
      'finish it by rerunning the same train command, which resumes from the latest checkpoints, then evaluate.'
    )
  unfinished = [name for name in names if name not in evaluated]
  if unfinished:
    logging.warning(
      'Stages %s of %s have not finished training: evaluating %s only. Rerun the same train command to finish them.',
      ', '.join(unfinished),
      paths.workdir,
      ', '.join(evaluated),
    )
  return evaluated, unfinished


def _made_by(training: dict) -> np.ndarray:
  """Which base checkpoints made the stacker's features: [K, bases, (best epoch, best val loss)]."""
  return np.array(
    [[[s['best_epoch'], s['best_val_loss']] for s in training[base]] for base in models.BASE_MODELS]
  ).transpose(1, 0, 2)


def _stacker_features(states, training, clips, members, statistics, config, paths, mesh, *, cache: bool) -> dict:
  """Each member's stacker inputs on its stack and test partitions, from its frozen base models.

  Cached in workdir/features/ with a record of which base checkpoints (best epoch and
  validation loss of every member) made them, so features of base models that were
  retrained since are computed again. A multi-process run writes the cache but does not
  read it (see below).

  Returns:
    partition -> per member {'features' [N, 256 + 100], 'label' [N], 'clip_id' [N]}.
  """
  made_by = _made_by(training)
  result = {}
  for partition in STACKER_PARTITIONS:
    path = paths.features(partition)
    splits = [input_pipeline.take(clips, member.fold.parts[partition]) for member in members]
    # Only a single process reads the cache: with several, one that found another file on disk
    # than the others would skip the collectives they run; every process computes them instead.
    if cache and jax.process_count() == 1 and os.path.exists(path):
      with np.load(path) as saved:
        if np.array_equal(saved['made_by'], made_by) and all(
          saved[f'clip_id_{k}'].tolist() == split['clip_id'].tolist() for k, split in enumerate(splits)
        ):
          result[partition] = [
            {'features': saved[f'features_{k}'], 'label': split['label'], 'clip_id': split['clip_id']}
            for k, split in enumerate(splits)
          ]
          continue
    per_base = []
    for base in models.BASE_MODELS:
      data = [
        input_pipeline.MemberData(clips, member.fold.parts[partition], statistics[base][k])
        for k, member in enumerate(members)
      ]
      batches = input_pipeline.member_batches(
        data, config.batch_size, keys=models.MODELS[base].inputs, time_bucket=config.data.time_bucket
      )
      per_base.append(train.predict(states[base], batches, mesh, [len(split['label']) for split in splits]))
    result[partition] = [
      {
        'features': np.concatenate([outputs[k]['penultimate'] for outputs in per_base], axis=1),  # [N, 256 + 100]
        'label': split['label'],
        'clip_id': split['clip_id'],
      }
      for k, split in enumerate(splits)
    ]
    if cache and jax.process_index() == 0:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      arrays = {'made_by': made_by}
      for k, member_split in enumerate(result[partition]):
        arrays[f'features_{k}'], arrays[f'clip_id_{k}'] = member_split['features'], member_split['clip_id']
      temporary = path + '.tmp.npz'
      np.savez(temporary, **arrays)
      os.replace(temporary, path)
  return result


def _test(state, name, test_data, config, mesh) -> list[dict]:
  """Each member's test outputs: logits, probabilities, mean loss and confusion matrix."""
  batches = input_pipeline.member_batches(
    test_data, config.batch_size, keys=models.MODELS[name].inputs, time_bucket=config.data.time_bucket
  )
  outputs = train.predict(state, batches, mesh, [len(data.indices) for data in test_data])
  results = []
  for data, output in zip(test_data, outputs):
    labels = data.arrays['label'][data.indices]
    logits = output['logits'].astype(np.float64)
    log_probabilities = logits - logits.max(1, keepdims=True)
    log_probabilities -= np.log(np.exp(log_probabilities).sum(1, keepdims=True))
    num_classes = logits.shape[1]
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (labels, logits.argmax(1)), 1)
    results.append(
      {
        'loss': float(-log_probabilities[np.arange(len(labels)), labels].mean()),
        'probabilities': np.exp(log_probabilities),
        'confusion_matrix': confusion,
      }
    )
  return results


def data_settings(info: dict, config) -> dict:
  """What scoring new media needs of the data a run trained on, so it works without the TFRecords.

  Args:
    info: the data's dataset_info.json.
    config: the run's config.

  Returns:
    {'schema_version', 'settings' (how clips were embedded: fps, image size, face detection,
    min_audio_seconds, on_no_face, modalities, the extractor flags), 'extractors' (their
    identities), 'feature_dims', 'class_set', 'classes' (in label order), 'stand_in_extractors',
    'fake' (random embeddings from `emojax.fake_records`, which no media file can be embedded as)}.
  """
  return {
    'schema_version': info.get('schema_version'),
    'settings': info.get('settings', {}),
    'extractors': info.get('extractors', {}),
    'feature_dims': info.get('feature_dims', {}),
    'class_set': config.data.classes,
    'classes': list(partitions.class_names(config)),
    'stand_in_extractors': input_pipeline.uses_stand_in_extractors(info),
    'fake': bool(info.get('fake')),
  }


def check_config(config) -> None:
  """Refuses config values that would fail later, before anything is read or compiled."""
  unknown = [m for m in config.models if m not in models.MODELS]
  if unknown or not config.models:
    raise ValueError(f'config.models must name some of {tuple(models.MODELS)}; got {tuple(config.models)}.')
  if 'stacker' in config.models and not set(models.BASE_MODELS) <= set(config.models):
    raise ValueError(f'config.models {tuple(config.models)}: the stacker needs {" and ".join(models.BASE_MODELS)}.')
  if config.mode not in ('train', 'eval'):
    raise ValueError(f"config.mode must be 'train' or 'eval'; got {config.mode!r}.")
  member_shards = config.mesh.member_shards
  data_shards = jax.device_count() // member_shards if jax.device_count() % member_shards == 0 else 0
  if not data_shards:
    raise ValueError(
      f'config.mesh.member_shards {member_shards} does not divide the {jax.device_count()} devices: use a divisor.'
    )
  if config.batch_size % data_shards:
    raise ValueError(
      f'config.batch_size {config.batch_size} is not divisible by the {data_shards} devices of the data axis: '
      f'use a multiple of {data_shards}.'
    )


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (mode 'train') or restores (mode 'eval') the models of `config.models`, tests them.

  Args:
    config: see configs/default.py.
    workdir: checkpoints, TensorBoard events, features, config.json, data_settings.json (how the data
      was embedded, for prediction) and report.json.

  Returns:
    The report written to `workdir/report.json` (see `emojax.report.make_report`).
  """
  check_config(config)
  # One run per workdir: process 0 holds the lock for the whole job (the others share its
  # workdir), and a refusal stops every process of the job.
  workdir_lock = lock.DirectoryLock(workdir, purpose=config.mode)

  def take_lock():
    if config.mode == 'eval' and not os.path.isdir(workdir):
      raise FileNotFoundError(f'{workdir} does not exist: eval mode needs the workdir of a training run.')
    workdir_lock.acquire()

  agreed(take_lock)
  try:
    return _run(config, workdir)
  finally:
    workdir_lock.release()  # A no-op on the processes that did not take it.


def _run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  paths = Paths(workdir)
  is_training = config.mode == 'train'
  clips, info = input_pipeline.load_clips(config)  # Checks dataset_info.json before anything compiles.
  folds = partitions.make_folds(clips, config)
  members = [Member(fold, seed) for fold in folds for seed in seeds_of(config)]
  if len(members) % config.mesh.member_shards:
    raise ValueError(
      f'The run has {len(members)} members ({len(folds)} folds x {len(seeds_of(config))} seeds), which '
      f'config.mesh.member_shards {config.mesh.member_shards} does not divide.'
    )
  logging.info(
    'Protocol %s, seed %d: %d fold(s) x %d seed(s) = %d member(s); partitions of the first: %s',
    config.data.protocol,
    config.seed,
    len(folds),
    len(seeds_of(config)),
    len(members),
    {name: len(indices) for name, indices in folds[0].parts.items()},
  )

  def check():
    """The stages to run and those eval leaves out, once the workdir is known to fit; before anything compiles."""
    names, unfinished = (list(config.models), []) if is_training else stages_to_evaluate(paths, config)
    check_workdir(paths, config, clips, info, folds, is_training=is_training)
    return names, unfinished

  names, unfinished = agreed(check)
  mesh = train.make_mesh(config.mesh.member_shards)

  def scaled(name, splits):
    """Each member's statistics for stage `name` from its training split; saved with the stage."""
    statistics = [
      input_pipeline.normalization_statistics(split, (models.MODELS[name].stream,), config.data.normalize)
      for split in splits
    ]
    if is_training and jax.process_index() == 0:
      input_pipeline.save_normalization(paths.normalization(name), config.data.normalize, statistics)
    return statistics

  stage_seconds, parameter_counts = {}, {}

  def fit_or_restore(name, train_data, val_data):
    stage = _stage(config, name, paths, members, train_data, val_data)
    start = time.perf_counter()
    state, summaries = train.fit(config, stage, mesh) if is_training else train.restore(config, stage, mesh)
    stage_seconds[name] = time.perf_counter() - start
    parameter_counts[name] = sum(leaf.size for leaf in jax.tree.leaves(state.params)) // len(members)
    return state, summaries

  states, training, tests, statistics = {}, {}, {}, {}
  for name in models.BASE_MODELS:
    if name not in names:
      continue
    statistics[name] = scaled(name, [input_pipeline.take(clips, m.fold.parts['base_train']) for m in members])
    data = {
      partition: [
        input_pipeline.MemberData(
          clips,
          member.fold.parts[partition],
          statistics[name][k],
          shuffle_seed(member, name) if partition == 'base_train' else None,
        )
        for k, member in enumerate(members)
      ]
      for partition in ('base_train', 'base_val', 'test')
    }
    states[name], training[name] = fit_or_restore(name, data['base_train'], data['base_val'])
    tests[name] = _test(states[name], name, data['test'], config, mesh)
  if 'stacker' in names:
    features = _stacker_features(states, training, clips, members, statistics, config, paths, mesh, cache=is_training)
    statistics['stacker'] = scaled('stacker', features['stack_train'])
    data = {
      partition: [
        input_pipeline.MemberData(
          member_features,
          np.arange(len(member_features['label'])),
          statistics['stacker'][k],
          shuffle_seed(member, 'stacker') if partition == 'stack_train' else None,
        )
        for k, (member, member_features) in enumerate(zip(members, features[partition]))
      ]
      for partition in STACKER_PARTITIONS
    }
    states['stacker'], training['stacker'] = fit_or_restore('stacker', data['stack_train'], data['stack_val'])
    tests['stacker'] = _test(states['stacker'], 'stacker', data['test'], config, mesh)

  if is_training and jax.process_index() == 0:
    record = report.provenance(
      info,
      clips['clip_id'].tolist(),
      devices=[str(device) for device in jax.devices()],
      parameter_counts=parameter_counts,
      stage_seconds=stage_seconds,
    )
    report.write_provenance(workdir, record)
  final = _report(config, clips, info, members, training, tests, report.read_provenance(workdir))
  if unfinished:
    final['unfinished_stages'] = unfinished
  if jax.process_index() == 0:
    _write_test_events(paths, members, tests, training, partitions.class_names(config), is_training=is_training)
    test_splits = [input_pipeline.take(clips, member.fold.parts['test']) for member in members]
    report.write_predictions(
      os.path.join(workdir, report.PREDICTIONS_FILENAME),
      _prediction_rows(members, tests, test_splits),
      final['classes'],
    )
    path = report.write_report(workdir, final)
    print(report.format_report(final), flush=True)
    print(f'Wrote {path}', flush=True)
  return final


def _member_summary(result: dict, training: dict, class_names) -> dict:
  """The test summary of one member, with its loss and the train / validation accuracy of its best epoch."""
  summary = report.summarize(result['confusion_matrix'], class_names)
  # As Keras reports it (and the thesis' train column): the running mean over the best epoch's batches.
  best = training['history'][training['best_epoch'] - 1]
  summary.update(
    loss=result['loss'],
    best_epoch=training['best_epoch'],
    train_accuracy=best['train_accuracy'],
    val_accuracy=best['val_accuracy'],
  )
  return summary


def _report(config, clips, info, members, training, tests, provenance) -> dict:
  """report.json's content: one summary per model; with several members, each member's and their aggregate."""
  class_names = partitions.class_names(config)
  summaries = {}
  for name, results in tests.items():
    member_summaries = [_member_summary(result, training[name][k], class_names) for k, result in enumerate(results)]
    if len(members) == 1:
      summaries[name] = member_summaries[0]
      continue
    pooled = report.summarize(sum(result['confusion_matrix'] for result in results), class_names)
    pooled['members'] = [
      {'fold': member.fold.index, 'seed': member.seed, 'test_actors': list(member.fold.test_actors), **summary}
      for member, summary in zip(members, member_summaries)
    ]
    pooled['aggregate'] = report.aggregate(member_summaries, [member.fold.index for member in members])
    summaries[name] = pooled
  final = report.make_report(
    summaries,
    protocol=config.data.protocol,
    seed=config.seed,
    partitions={name: len(indices) for name, indices in members[0].fold.parts.items()},
    dataset={
      'dir': os.path.abspath(config.data.dir),
      'num_clips': len(clips['label']),
      'stand_in_extractors': input_pipeline.uses_stand_in_extractors(info),
    },
    fractions=partitions.fractions_of(config),
    class_set=config.data.classes,
    provenance=provenance,
  )
  final['training'] = {name: training[name][0] if len(members) == 1 else training[name] for name in tests}
  if len(members) > 1:
    final['members'] = [member.name for member in members]
  return final


def _prediction_rows(members, tests: dict, test_splits: dict) -> list[dict]:
  """predictions.csv: one row per test clip, model and member."""
  rows = []
  for name, results in tests.items():
    for k, (member, result) in enumerate(zip(members, results)):
      rows += report.prediction_rows(
        name,
        test_splits[k],
        result['probabilities'],
        fold=member.fold.index if len(members) > 1 else None,
        seed=member.seed,
        predictions=result['probabilities'].argmax(1),
      )
  return rows


def _write_test_events(paths: Paths, members, tests: dict, training: dict, class_names, *, is_training: bool) -> None:
  """Test loss, accuracy and confusion image per stage in `<stage>/test`, once: eval runs add no events file."""
  for name, results in tests.items():
    directory = paths.test_events(name)
    if not is_training and os.path.isdir(directory) and os.listdir(directory):
      continue
    epoch = max(summary['epochs_run'] for summary in training[name])
    writer = metric_writers.create_default_writer(directory)
    scalars = {}
    for member, result in zip(members, results):
      accuracy = float(np.trace(result['confusion_matrix']) / result['confusion_matrix'].sum())
      prefix = '' if len(members) == 1 else f'{member.name}/'
      scalars.update({f'{prefix}loss': result['loss'], f'{prefix}accuracy': accuracy})
    writer.write_scalars(epoch, scalars)
    summed = sum(result['confusion_matrix'] for result in results)
    writer.write_images(
      epoch, {'confusion_matrix': report.confusion_image(summed, name, 'test', class_names=class_names)}
    )
    writer.close()

"""The thesis' experiment: base models, their features, the stacker, the test report.

`run(config, workdir)` runs, for the models in `config.models`:
  1. each base model ('audio', 'visual') on the base partition, early stopping on its
     validation part;
  2. 'features': the best base checkpoints, frozen, turn the stack and test partitions into
     the stacker's inputs (audio 256 + visual 100 penultimate outputs), saved in
     `workdir/features/` so they are computed once;
  3. 'stacker' on the stack partition's features;
and tests every trained model on the test partition, writing `workdir/report.json`.

How one stage is fitted, checkpointed and resumed is `emojax.train`'s; which clips go where
is `emojax.partitions`'. Everything random is a function of (seed, stage, step or epoch), so
a resumed run ends with the same report as an uninterrupted one.
"""

import dataclasses
import json
import os

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers

from emojax import input_pipeline, models, partitions, report, train

PARTITIONS_FILENAME = 'partitions.json'
CONFIG_FILENAME = 'config.json'


@dataclasses.dataclass(frozen=True)
class Paths:
  """Where a run keeps what: one place for the workdir layout."""

  workdir: str

  def stage(self, name: str) -> str:
    return os.path.join(self.workdir, name)

  def checkpoints(self, name: str) -> str:
    return os.path.join(self.stage(name), 'checkpoints')

  def features(self, partition: str) -> str:
    return os.path.join(self.workdir, 'features', f'{partition}.npz')

  @property
  def config(self) -> str:
    return os.path.join(self.workdir, CONFIG_FILENAME)

  @property
  def partitions(self) -> str:
    return os.path.join(self.workdir, PARTITIONS_FILENAME)


def stage_index(name: str) -> int:
  """The model's place in `models.MODELS`, folded into the seed so each stage has its own keys and batch orders."""
  return list(models.MODELS).index(name)


def _stage(config, name: str, paths: Paths, train_split: dict, val_split: dict, mesh) -> train.Stage:
  """A `train.Stage` for model `name` on host arrays: shuffled training batches, ordered validation batches."""
  keys = models.MODELS[name].inputs
  batch_options = dict(
    keys=keys,
    time_bucket=config.data.time_bucket,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  shuffle_seed = (config.seed, 2, stage_index(name))

  def train_batches(epoch):
    return input_pipeline.batches(
      train_split, config.batch_size, shuffle_seed=shuffle_seed, epoch=epoch, **batch_options
    )

  def val_batches():
    return input_pipeline.batches(val_split, config.batch_size, **batch_options)

  return train.Stage(
    name=name,
    directory=paths.stage(name),
    model=models.build_model(name, config.model),
    key=jax.random.fold_in(jax.random.key(config.seed), stage_index(name)),
    train_batches=train_batches,
    val_batches=val_batches,
    example_batch=next(input_pipeline.batches(train_split, config.batch_size, **batch_options)),
    num_train_batches=input_pipeline.num_batches(len(train_split['label']), config.batch_size),
  )


def _test_batches(config, name: str, split: dict):
  return input_pipeline.batches(
    split,
    config.batch_size,
    keys=models.MODELS[name].inputs,
    time_bucket=config.data.time_bucket,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )


def _check_partitions(paths: Paths, config, clips, fold, *, is_training: bool) -> None:
  """Refuses a workdir whose checkpoints were trained on other partitions (another seed, protocol or data)."""
  current = {name: sorted(clips['clip_id'][indices].tolist()) for name, indices in fold.items()}
  if os.path.exists(paths.partitions):
    if train.read_json(paths.partitions)['clip_ids'] != current:
      raise ValueError(
        f'{paths.workdir} was trained on other partitions than this config draws (seed, data.protocol, fractions or '
        f'the data differ; see {paths.partitions}): use a new --workdir, or the config of that run.'
      )
  elif is_training:
    train.write_json(paths.partitions, {'protocol': config.data.protocol, 'seed': config.seed, 'clip_ids': current})


def _stacker_split(states, training, clips, fold, partition, config, paths, mesh, *, cache: bool) -> dict:
  """The stacker's inputs for one partition from the frozen base models, cached in workdir/features/.

  The cache records which base checkpoints (best epoch and validation loss of each) made
  it, so features of a base model that was retrained since are computed again.
  """
  split = input_pipeline.take(clips, fold[partition])
  path = paths.features(partition)
  made_by = np.array([[training[base]['best_epoch'], training[base]['best_val_loss']] for base in models.BASE_MODELS])
  if cache and os.path.exists(path):
    with np.load(path) as saved:
      if saved['clip_id'].tolist() == split['clip_id'].tolist() and np.array_equal(saved['made_by'], made_by):
        return {'features': saved['features'], 'label': saved['label'], 'clip_id': saved['clip_id']}
  features = np.concatenate(
    [
      train.penultimate_features(states[base], _test_batches(config, base, split), mesh, len(split['label']))
      for base in models.BASE_MODELS
    ],
    axis=1,
  )  # [N, 256 + 100]
  result = {'features': features, 'label': split['label'], 'clip_id': split['clip_id']}
  if cache and jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = path + '.tmp.npz'
    np.savez(temporary, made_by=made_by, **result)
    os.replace(temporary, path)
  return result


def check_config(config) -> None:
  """Refuses config values that would fail later, before anything is read or compiled."""
  unknown = [m for m in config.models if m not in models.MODELS]
  if unknown or not config.models:
    raise ValueError(f'config.models must name some of {tuple(models.MODELS)}; got {tuple(config.models)}.')
  if 'stacker' in config.models and not set(models.BASE_MODELS) <= set(config.models):
    raise ValueError(f'config.models {tuple(config.models)}: the stacker needs {" and ".join(models.BASE_MODELS)}.')
  if config.mode not in ('train', 'eval'):
    raise ValueError(f"config.mode must be 'train' or 'eval'; got {config.mode!r}.")
  if config.batch_size % jax.device_count():
    raise ValueError(f'config.batch_size {config.batch_size} is not divisible by the {jax.device_count()} devices.')


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (mode 'train') or restores (mode 'eval') the models of `config.models`, tests them.

  Args:
    config: see configs/default.py.
    workdir: checkpoints, TensorBoard events, features, config.json and report.json.

  Returns:
    The report written to `workdir/report.json` (see `emojax.report.make_report`), with
    each model's test `loss` and `best_epoch` added to its summary and the training
    history of each stage under 'training'.
  """
  check_config(config)
  paths = Paths(workdir)
  is_training = config.mode == 'train'
  if not is_training and not os.path.isdir(workdir):
    raise FileNotFoundError(f'{workdir} does not exist: eval mode needs the workdir of a training run.')
  clips, info = input_pipeline.load_clips(config)  # Checks dataset_info.json before anything compiles.
  (fold,) = partitions.make_folds(clips, config)
  if config.data.standardize:
    base_train = input_pipeline.take(clips, fold['base_train'])
    clips = input_pipeline.standardize(clips, input_pipeline.feature_statistics(base_train, ('visual', 'audio')))
  counts = {name: len(indices) for name, indices in fold.items()}
  logging.info('Partitions (%s protocol, seed %d): %s', config.data.protocol, config.seed, counts)
  mesh = train.make_mesh()
  if is_training:
    os.makedirs(workdir, exist_ok=True)
    train.write_json(paths.config, json.loads(config.to_json_best_effort()))
  else:
    for name in config.models:  # Every missing checkpoint is reported before any work.
      if not os.path.isdir(paths.checkpoints(name)):
        raise FileNotFoundError(
          f"No checkpoints for stage '{name}' in {paths.checkpoints(name)}: train first (--config.mode=train) or "
          'point --workdir at a trained run.'
        )
  _check_partitions(paths, config, clips, fold, is_training=is_training)

  def fit_or_restore(name, train_split, val_split):
    stage = _stage(config, name, paths, train_split, val_split, mesh)
    return train.fit(config, stage, mesh) if is_training else train.restore(config, stage, mesh)

  states, training, results = {}, {}, {}
  test_split = input_pipeline.take(clips, fold['test'])
  for name in models.BASE_MODELS:
    if name in config.models:
      base_train = input_pipeline.take(clips, fold['base_train'])
      base_val = input_pipeline.take(clips, fold['base_val'])
      states[name], training[name] = fit_or_restore(name, base_train, base_val)
      results[name] = train.evaluate(states[name], _test_batches(config, name, test_split), mesh)
  if 'stacker' in config.models:
    features = {
      partition: _stacker_split(states, training, clips, fold, partition, config, paths, mesh, cache=is_training)
      for partition in ('stack_train', 'stack_val', 'test')
    }
    if config.data.standardize:
      statistics = input_pipeline.feature_statistics(features['stack_train'], ('features',))
      features = {partition: input_pipeline.standardize(split, statistics) for partition, split in features.items()}
    states['stacker'], training['stacker'] = fit_or_restore('stacker', features['stack_train'], features['stack_val'])
    results['stacker'] = train.evaluate(states['stacker'], _test_batches(config, 'stacker', features['test']), mesh)

  summaries = {}
  for name, result in results.items():
    summaries[name] = report.summarize(result['confusion_matrix'])
    best_epoch = training[name]['best_epoch']
    # As Keras reports it (and the thesis' train column): the running mean over the best epoch's batches.
    best = next(epoch for epoch in training[name]['history'] if epoch['epoch'] == best_epoch)
    summaries[name].update(loss=result['loss'], best_epoch=best_epoch, train_accuracy=best['train_accuracy'])
    if jax.process_index() == 0:
      step = int(states[name].step)
      writer = metric_writers.create_default_writer(paths.stage(name))
      writer.write_scalars(step, {'test_loss': result['loss'], 'test_accuracy': result['accuracy']})
      writer.write_images(step, {'test_confusion_matrix': report.confusion_image(result['confusion_matrix'])})
      writer.close()
  final = report.make_report(
    summaries,
    protocol=config.data.protocol,
    seed=config.seed,
    partitions=counts,
    dataset={
      'dir': os.path.abspath(config.data.dir),
      'num_clips': len(clips['label']),
      'stand_in_extractors': input_pipeline.uses_stand_in_extractors(info),
    },
  )
  final['training'] = {name: training[name] for name in results}
  if jax.process_index() == 0:
    path = report.write_report(workdir, final)
    logging.info('Wrote %s', path)
    print(report.format_report(final), flush=True)
  return final

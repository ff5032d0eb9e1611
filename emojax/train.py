"""Training, stacking and evaluation: the three stages of the thesis's system.

`train_and_evaluate(config, workdir)` runs, for the models in `config.models`:
  1. 'audio' and 'visual' on the base partition (early stopping on its validation part);
  2. 'features': the best audio and visual checkpoints, frozen, turn the stack and test
     partitions into 356-D features (audio 256 + visual 100 penultimate outputs), saved in
     `workdir/features/` so they are computed once;
  3. 'stacker' on the stack partition's features;
and tests every trained model on the test partition, writing `workdir/report.json`.

Each stage keeps its own orbax checkpoints (`workdir/<stage>/checkpoints`, the best by
validation loss and the latest) and TensorBoard events (`workdir/<stage>/`). A finished
stage leaves `workdir/<stage>/DONE` and is not redone; a stage killed midway resumes from
its latest checkpoint. Everything random is a function of (seed, stage, step or epoch):
dropout keys are `fold_in(stage key, step)` and the batch order comes from
(seed, stage, epoch), so a resumed run ends with the same report as an uninterrupted one.

Data parallelism: one mesh axis 'data' over all devices; the train state is replicated and
each batch is split along its first axis, so the same code runs on one CPU, several GPUs,
a TPU host or several hosts (each process feeds its slice of the global batch).
"""

import contextlib
import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from clu import metric_writers, periodic_actions
from flax.training import train_state
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from emojax import input_pipeline, metrics, models, report

BASE_MODELS = ('audio', 'visual')
# The arrays each model reads from a batch (besides 'label' and 'mask').
MODEL_INPUTS = {'audio': ('audio',), 'visual': ('visual', 'num_frames'), 'stacker': ('features',)}
# Stage index, folded into the seed so each stage has its own keys and batch orders.
STAGE_INDEX = {'audio': 0, 'visual': 1, 'stacker': 2}
DONE_FILENAME = 'DONE'
PARTITIONS_FILENAME = 'partitions.json'


# ----------------------------------------------------------------------------- steps


def create_train_state(config, model, rng: jax.Array, example_batch: dict) -> train_state.TrainState:
  """Initialises `model` on `example_batch` and pairs it with Adamax (Keras defaults by config)."""
  params_rng, dropout_rng = jax.random.split(rng)
  params = _jitted_init(model)({'params': params_rng, 'dropout': dropout_rng}, example_batch)['params']
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=_optimizer(config.optimizer))
  # A strong int32 step, as a restored checkpoint has: otherwise the steps compile twice.
  return state.replace(step=jnp.zeros((), jnp.int32))


def build_model(name: str, config):
  """`models.build_model`, one instance per distinct model config.

  Reusing the instance keeps `apply_fn` (a static field of the TrainState) equal between
  stages and runs in one process, so jit reuses its compiled steps instead of recompiling.
  """
  return _cached_model(name, config.model.to_json())


@functools.cache
def _cached_model(name: str, model_config_json: str):
  return models.build_model(name, ml_collections.ConfigDict(json.loads(model_config_json)))


@functools.cache
def _jitted_init(model):
  return jax.jit(functools.partial(model.init, train=False))


def _optimizer(optimizer_config) -> optax.GradientTransformation:
  return _adamax(
    float(optimizer_config.learning_rate),
    float(optimizer_config.b1),
    float(optimizer_config.b2),
    float(optimizer_config.eps),
  )


@functools.cache
def _adamax(learning_rate: float, b1: float, b2: float, eps: float) -> optax.GradientTransformation:
  # Cached so that equal settings give the same object: the TrainState's static fields then
  # compare equal and the jitted steps are not recompiled for every stage and run.
  return optax.adamax(learning_rate=learning_rate, b1=b1, b2=b2, eps=eps)


def cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """Per-example softmax cross-entropy: logits [batch, classes], labels [batch] -> [batch]."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def masked_mean(values: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """Mean of `values` [batch] over the rows where `mask` [batch] is True."""
  return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def train_step(state: train_state.TrainState, batch: dict, dropout_rng: jax.Array):
  """One Adamax step on the masked mean cross-entropy.

  Args:
    state: the replicated train state.
    batch: the model's inputs plus `label` [batch] int32 and `mask` [batch] bool.
    dropout_rng: the stage's dropout key; the step number is folded in, so a resumed run
      draws the same dropout masks.

  Returns:
    (new state, `metrics.TrainMetrics` of this batch).
  """
  dropout_rng = jax.random.fold_in(dropout_rng, state.step)

  def loss_fn(params):
    logits, _ = state.apply_fn({'params': params}, batch, train=True, rngs={'dropout': dropout_rng})
    per_example = cross_entropy(logits, batch['label'])  # [batch]
    return masked_mean(per_example, batch['mask']), (logits, per_example)

  (_, (logits, per_example)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads)
  batch_metrics = metrics.TrainMetrics.single_from_model_output(
    logits=logits, labels=batch['label'], loss=per_example, mask=batch['mask']
  )
  return state, batch_metrics


def eval_step(state: train_state.TrainState, batch: dict) -> metrics.EvalMetrics:
  """Loss, accuracy and confusion matrix of one batch, padding rows excluded."""
  logits, _ = state.apply_fn({'params': state.params}, batch, train=False)
  return metrics.EvalMetrics.single_from_model_output(
    logits=logits, labels=batch['label'], loss=cross_entropy(logits, batch['label']), mask=batch['mask']
  )


def predict_step(state: train_state.TrainState, batch: dict) -> jnp.ndarray:
  """The penultimate representation [batch, features], what the stacker reads."""
  _, penultimate = state.apply_fn({'params': state.params}, batch, train=False)
  return penultimate


def make_mesh() -> jax.sharding.Mesh:
  """One 'data' axis over every device (of every process)."""
  # Built directly: jax.make_mesh defaults to Explicit axes, under which nn.RNN fails (trap 1).
  return jax.sharding.Mesh(np.array(jax.devices()), ('data',))


@functools.cache
def _jitted_steps(mesh: jax.sharding.Mesh):
  """train / eval / predict steps jitted for `mesh`: state replicated, batch split on 'data'."""
  replicated = NamedSharding(mesh, P())
  data = NamedSharding(mesh, P('data'))
  train = jax.jit(
    train_step, in_shardings=(replicated, data, replicated), out_shardings=(replicated, replicated), donate_argnums=0
  )
  evaluate = jax.jit(eval_step, in_shardings=(replicated, data), out_shardings=replicated)
  predict = jax.jit(predict_step, in_shardings=(replicated, data), out_shardings=replicated)
  return train, evaluate, predict


def _to_device(batch: dict, mesh: jax.sharding.Mesh) -> dict:
  """This process's rows of a global batch -> global arrays split on 'data'."""
  data = NamedSharding(mesh, P('data'))
  return {key: jax.make_array_from_process_local_data(data, value) for key, value in batch.items()}


# ----------------------------------------------------------------------------- helpers


def _batches(split, config, keys, *, shuffle_seed=None, epoch=0):
  return input_pipeline.batches(
    split,
    config.batch_size,
    keys=keys,
    shuffle_seed=shuffle_seed,
    epoch=epoch,
    time_bucket=config.data.time_bucket,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )


def evaluate(state, split, config, name: str, mesh) -> dict:
  """Runs `eval_step` over `split`; returns {'loss', 'accuracy', 'confusion_matrix' [7, 7] np.int64}."""
  _, eval_fn, _ = _jitted_steps(mesh)
  collection = None
  for batch in _batches(split, config, MODEL_INPUTS[name]):
    batch_metrics = eval_fn(state, _to_device(batch, mesh))
    collection = batch_metrics if collection is None else collection.merge(batch_metrics)
  computed = collection.compute()
  return {
    'loss': float(computed['loss']),
    'accuracy': float(computed['accuracy']),
    'confusion_matrix': np.asarray(computed['confusion_matrix'], np.int64),
  }


def penultimate_features(state, split, config, name: str, mesh) -> np.ndarray:
  """`predict_step` over `split` in order: [N, features] float32 (padding rows dropped)."""
  _, _, predict_fn = _jitted_steps(mesh)
  outputs = []
  remaining = len(split['label'])
  for batch in _batches(split, config, MODEL_INPUTS[name]):
    features = np.asarray(predict_fn(state, _to_device(batch, mesh)))  # [batch_size, features], replicated
    outputs.append(features[: min(remaining, config.batch_size)])
    remaining -= config.batch_size
  return np.concatenate(outputs).astype(np.float32)


def _flat_hparams(config) -> dict:
  """The config flattened to dotted names with scalar values, for `write_hparams`."""
  flat = {}

  def visit(prefix, value):
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      for key, child in value.items():
        visit(f'{prefix}.{key}' if prefix else key, child)
    elif isinstance(value, (bool, int, float, str)):
      flat[prefix] = value
    else:
      flat[prefix] = str(value)

  visit('', config.to_dict())
  return flat


def _write_json(path: str, content) -> None:
  """Atomic JSON write (temporary name, then rename), from process 0 only."""
  if jax.process_index() != 0:
    return
  temporary = f'{path}.tmp'
  with open(temporary, 'w') as f:
    json.dump(content, f, indent=2, sort_keys=True)
  os.replace(temporary, path)


def _read_json(path: str):
  with open(path) as f:
    return json.load(f)


def _checkpoint_manager(stage_dir: str, *, read_only: bool = False) -> ocp.CheckpointManager:
  """Keeps the latest checkpoint (resume) and the best by validation loss (restore)."""
  policy = ocp.checkpoint_managers.AnyPreservationPolicy(
    [
      ocp.checkpoint_managers.LatestN(n=1),
      # Ranked by (loss, epoch) in descending order and the last kept: the lowest loss,
      # the earliest epoch among equals, which is the one early stopping calls best.
      ocp.checkpoint_managers.BestN(get_metric_fn=lambda m: (m['val_loss'], m['epoch']), reverse=True, n=1),
    ]
  )
  options = ocp.CheckpointManagerOptions(
    best_fn=lambda m: m['val_loss'], best_mode='min', preservation_policy=policy, read_only=read_only
  )
  return ocp.CheckpointManager(os.path.join(stage_dir, 'checkpoints'), options=options)


def _abstract_state(config, model, example_batch, mesh):
  """The TrainState's shapes and shardings, without computing it: the restore target (trap 9)."""
  abstract = jax.eval_shape(
    lambda: create_train_state(config, model, jax.random.key(0), example_batch),
  )
  replicated = NamedSharding(mesh, P())
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract)


def _restore(manager, step: int, abstract_state):
  restored = manager.restore(
    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
  )
  return restored['state'], restored['meta']


def _example_batch(split, config, name):
  return next(_batches(split, config, MODEL_INPUTS[name]))


# ----------------------------------------------------------------------------- one stage


def train_stage(config, name: str, workdir: str, train_split, val_split, mesh) -> tuple[train_state.TrainState, dict]:
  """Trains one model with early stopping and returns (best state, training summary).

  A stage with a DONE file is only restored. Otherwise training starts from the latest
  checkpoint in `workdir/<name>/checkpoints` if there is one, else from scratch.

  Raises:
    FloatingPointError: the training or validation loss is NaN or infinite; the
      checkpoints written so far (all finite) are kept.
  """
  stage_dir = os.path.join(workdir, name)
  done_path = os.path.join(stage_dir, DONE_FILENAME)
  model = build_model(name, config)
  example_batch = _example_batch(train_split, config, name)
  abstract_state = _abstract_state(config, model, example_batch, mesh)
  stage_key = jax.random.fold_in(jax.random.key(config.seed), STAGE_INDEX[name])
  init_rng, dropout_rng = jax.random.split(stage_key)

  if os.path.exists(done_path):
    done = _read_json(done_path)
    with _checkpoint_manager(stage_dir, read_only=True) as manager:
      state, _ = _restore(manager, done['best_epoch'], abstract_state)
    logging.info("Stage '%s' finished earlier (best epoch %d): restored.", name, done['best_epoch'])
    return state, done

  train_fn, _, _ = _jitted_steps(mesh)
  replicated = NamedSharding(mesh, P())
  steps_per_epoch = input_pipeline.num_batches(len(train_split['label']), config.batch_size)
  writer = metric_writers.create_default_writer(stage_dir, just_logging=jax.process_index() > 0)
  with contextlib.closing(writer), _checkpoint_manager(stage_dir) as manager:
    latest = manager.latest_step()
    if latest is None:
      state = jax.device_put(create_train_state(config, model, init_rng, example_batch), replicated)
      meta = {'epoch': 0, 'best_epoch': 0, 'best_val_loss': None, 'bad_epochs': 0, 'history': []}
      writer.write_hparams(_flat_hparams(config))
      logging.info("Stage '%s': training from scratch, %d steps per epoch.", name, steps_per_epoch)
    else:
      state, meta = _restore(manager, latest, abstract_state)
      logging.info("Stage '%s': resuming after epoch %d (step %d).", name, meta['epoch'], int(state.step))

    report_progress = periodic_actions.ReportProgress(
      num_train_steps=config.num_epochs * steps_per_epoch,
      writer=writer,
      every_steps=steps_per_epoch,  # At least once an epoch, so short stages get steps/s too.
      every_secs=config.log_every_secs,
    )
    stopped_early = meta['bad_epochs'] >= config.patience
    step = int(state.step)  # Counted on the host: reading state.step each step would wait for the device.
    for epoch in range(meta['epoch'] + 1, config.num_epochs + 1):
      if stopped_early:
        break
      train_metrics = None
      shuffle_seed = (config.seed, 2, STAGE_INDEX[name])
      for batch in _batches(train_split, config, MODEL_INPUTS[name], shuffle_seed=shuffle_seed, epoch=epoch):
        state, batch_metrics = train_fn(state, _to_device(batch, mesh), dropout_rng)
        train_metrics = batch_metrics if train_metrics is None else train_metrics.merge(batch_metrics)
        step += 1
        report_progress(step)  # Every step: clu's periodic actions must not skip one (trap 10).
      train_computed = train_metrics.compute()
      with report_progress.timed('eval'):
        val = evaluate(state, val_split, config, name, mesh)
      train_loss = float(train_computed['loss'])
      for what, loss in (('training', train_loss), ('validation', val['loss'])):
        if not np.isfinite(loss):
          kept = f'epoch {meta["epoch"]}' if meta['epoch'] else 'none: no epoch finished'
          raise FloatingPointError(
            f"Stage '{name}': the {what} loss is {loss} in epoch {epoch}; training stopped. The last good "
            f'checkpoint ({kept}) is kept in {manager.directory}. Lower --config.optimizer.learning_rate or '
            'check the data for NaN or infinite values.'
          )
      scalars = {
        'train_loss': train_loss,
        'train_accuracy': float(train_computed['accuracy']),
        'val_loss': val['loss'],
        'val_accuracy': val['accuracy'],
        'epoch': epoch,
      }
      writer.write_scalars(step, scalars)
      improved = meta['best_val_loss'] is None or val['loss'] < meta['best_val_loss']
      if improved:
        meta.update(best_epoch=epoch, best_val_loss=val['loss'], bad_epochs=0)
      else:
        meta['bad_epochs'] += 1
      meta['epoch'] = epoch
      meta['history'].append(scalars)
      manager.save(
        epoch,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        # Plain Python floats: orbax fails later, in a background thread, on numpy scalars (trap 8).
        metrics={'val_loss': float(val['loss']), 'epoch': float(epoch)},
      )
      logging.info(
        "Stage '%s' epoch %d: train loss %.4f acc %.4f, val loss %.4f acc %.4f%s",
        name,
        epoch,
        train_loss,
        scalars['train_accuracy'],
        val['loss'],
        val['accuracy'],
        ' (best)' if improved else '',
      )
      stopped_early = meta['bad_epochs'] >= config.patience
    manager.wait_until_finished()
    best_epoch = meta['best_epoch']
    if best_epoch == 0:
      raise ValueError(f"Stage '{name}' has no finished epoch: config.num_epochs is {config.num_epochs}.")
    state, _ = _restore(manager, best_epoch, abstract_state)
    # One heatmap, of the epoch that is kept: rendering one per epoch costs more than a tiny epoch.
    val = evaluate(state, val_split, config, name, mesh)
    writer.write_images(int(state.step), {'val_confusion_matrix': report.confusion_image(val['confusion_matrix'])})
  done = {
    'best_epoch': best_epoch,
    'best_val_loss': meta['best_val_loss'],
    'epochs_run': meta['epoch'],
    'stopped_early': bool(stopped_early),
    'history': meta['history'],
  }
  _write_json(done_path, done)
  logging.info("Stage '%s' done: best epoch %d, val loss %.4f.", name, best_epoch, meta['best_val_loss'])
  return state, done


def restore_stage(config, name: str, workdir: str, example_split, mesh) -> tuple[train_state.TrainState, dict]:
  """The best checkpoint of a stage, for eval-only runs; a clear error when there is none."""
  stage_dir = os.path.join(workdir, name)
  checkpoint_dir = os.path.join(stage_dir, 'checkpoints')
  if not os.path.isdir(checkpoint_dir):
    raise FileNotFoundError(
      f"No checkpoints for stage '{name}' in {checkpoint_dir}: train first (--config.mode=train) or point "
      '--workdir at a trained run.'
    )
  model = build_model(name, config)
  abstract_state = _abstract_state(config, model, _example_batch(example_split, config, name), mesh)
  done_path = os.path.join(stage_dir, DONE_FILENAME)
  with _checkpoint_manager(stage_dir, read_only=True) as manager:
    if os.path.exists(done_path):
      done = _read_json(done_path)
      step = done['best_epoch']
    else:
      latest = manager.latest_step()
      if latest is None:
        raise FileNotFoundError(f"{checkpoint_dir} holds no checkpoint of stage '{name}': train first.")
      _, meta = _restore(manager, latest, abstract_state)
      step = meta['best_epoch']
      done = {
        'best_epoch': step,
        'best_val_loss': meta['best_val_loss'],
        'epochs_run': meta['epoch'],
        'stopped_early': False,
        'history': meta['history'],
      }
      logging.warning("Stage '%s' did not finish; evaluating its best epoch so far (%d).", name, step)
    state, _ = _restore(manager, step, abstract_state)
  return state, done


# ----------------------------------------------------------------------------- the run


def _check_partitions(workdir: str, config, clips, partitions, *, train: bool) -> None:
  """Refuses a workdir whose checkpoints were trained on other partitions (another seed, protocol or data)."""
  path = os.path.join(workdir, PARTITIONS_FILENAME)
  current = {name: sorted(clips['clip_id'][indices].tolist()) for name, indices in partitions.items()}
  if os.path.exists(path):
    if _read_json(path)['clip_ids'] != current:
      raise ValueError(
        f'{workdir} was trained on other partitions than this config draws (seed, data.protocol, fractions or the '
        f'data differ; see {path}): use a new --workdir, or the config of that run.'
      )
  elif train:
    _write_json(path, {'protocol': config.data.protocol, 'seed': config.seed, 'clip_ids': current})


def _stacker_split(states, training, clips, partitions, name, config, workdir, mesh, *, cache: bool) -> dict:
  """356-D features of one partition from the frozen base models, cached in workdir/features/.

  The cache records which base checkpoints (best epoch and validation loss of each) made
  it, so features of a base model that was retrained since are computed again.
  """
  split = input_pipeline.take(clips, partitions[name])
  path = os.path.join(workdir, 'features', f'{name}.npz')
  made_by = np.array([[training[base]['best_epoch'], training[base]['best_val_loss']] for base in BASE_MODELS])
  if cache and os.path.exists(path):
    with np.load(path) as saved:
      if saved['clip_id'].tolist() == split['clip_id'].tolist() and np.array_equal(saved['made_by'], made_by):
        return {'features': saved['features'], 'label': saved['label'], 'clip_id': saved['clip_id']}
  features = np.concatenate(
    [penultimate_features(states[base], split, config, base, mesh) for base in BASE_MODELS], axis=1
  )  # [N, 256 + 100]
  result = {'features': features, 'label': split['label'], 'clip_id': split['clip_id']}
  if cache and jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = path + '.tmp.npz'
    np.savez(temporary, made_by=made_by, **result)
    os.replace(temporary, path)
  return result


def _check_config(config) -> None:
  unknown = [m for m in config.models if m not in MODEL_INPUTS]
  if unknown or not config.models:
    raise ValueError(f"config.models must name some of 'audio', 'visual', 'stacker'; got {tuple(config.models)}.")
  if 'stacker' in config.models and not set(BASE_MODELS) <= set(config.models):
    raise ValueError(f"config.models {tuple(config.models)}: the stacker needs both 'audio' and 'visual'.")
  if config.mode not in ('train', 'eval'):
    raise ValueError(f"config.mode must be 'train' or 'eval'; got {config.mode!r}.")
  if config.batch_size % jax.device_count():
    raise ValueError(f'config.batch_size {config.batch_size} is not divisible by the {jax.device_count()} devices.')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (mode 'train') or restores (mode 'eval') the models of `config.models`, tests them.

  Args:
    config: see configs/default.py.
    workdir: checkpoints, TensorBoard events, features, config.json and report.json.

  Returns:
    The report written to `workdir/report.json` (see `emojax.report.make_report`), with
    each model's test `loss` and `best_epoch` added to its summary and the training
    history of each stage under 'training'.
  """
  _check_config(config)
  train = config.mode == 'train'
  if not train and not os.path.isdir(workdir):
    raise FileNotFoundError(f'{workdir} does not exist: eval mode needs the workdir of a training run.')
  clips, info = input_pipeline.load_clips(config)  # Checks dataset_info.json before anything compiles.
  partitions = input_pipeline.make_partitions(clips, config)
  if config.data.standardize:
    base_train = input_pipeline.take(clips, partitions['base_train'])
    clips = input_pipeline.standardize(clips, input_pipeline.feature_statistics(base_train, ('visual', 'audio')))
  counts = {name: len(indices) for name, indices in partitions.items()}
  logging.info('Partitions (%s protocol, seed %d): %s', config.data.protocol, config.seed, counts)
  mesh = make_mesh()
  if train:
    os.makedirs(workdir, exist_ok=True)
    _write_json(os.path.join(workdir, 'config.json'), json.loads(config.to_json_best_effort()))
  else:
    for name in config.models:  # Every missing checkpoint is reported before any work.
      checkpoint_dir = os.path.join(workdir, name, 'checkpoints')
      if not os.path.isdir(checkpoint_dir):
        raise FileNotFoundError(
          f"No checkpoints for stage '{name}' in {checkpoint_dir}: train first (--config.mode=train) or point "
          '--workdir at a trained run.'
        )
  _check_partitions(workdir, config, clips, partitions, train=train)

  def stage(name, train_split, val_split):
    if train:
      return train_stage(config, name, workdir, train_split, val_split, mesh)
    return restore_stage(config, name, workdir, train_split, mesh)

  states, training, results = {}, {}, {}
  test_split = input_pipeline.take(clips, partitions['test'])
  for name in BASE_MODELS:
    if name in config.models:
      base_train = input_pipeline.take(clips, partitions['base_train'])
      base_val = input_pipeline.take(clips, partitions['base_val'])
      states[name], training[name] = stage(name, base_train, base_val)
      results[name] = evaluate(states[name], test_split, config, name, mesh)
  if 'stacker' in config.models:
    features = {
      name: _stacker_split(states, training, clips, partitions, name, config, workdir, mesh, cache=train)
      for name in ('stack_train', 'stack_val', 'test')
    }
    if config.data.standardize:
      statistics = input_pipeline.feature_statistics(features['stack_train'], ('features',))
      features = {name: input_pipeline.standardize(split, statistics) for name, split in features.items()}
    states['stacker'], training['stacker'] = stage('stacker', features['stack_train'], features['stack_val'])
    results['stacker'] = evaluate(states['stacker'], features['test'], config, 'stacker', mesh)

  summaries = {}
  for name, result in results.items():
    summaries[name] = report.summarize(result['confusion_matrix'])
    best_epoch = training[name]['best_epoch']
    # As Keras reports it (and the thesis' train column): the running mean over the best epoch's batches.
    best = next(epoch for epoch in training[name]['history'] if epoch['epoch'] == best_epoch)
    summaries[name].update(loss=result['loss'], best_epoch=best_epoch, train_accuracy=best['train_accuracy'])
    if jax.process_index() == 0:
      step = int(states[name].step)
      writer = metric_writers.create_default_writer(os.path.join(workdir, name))
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

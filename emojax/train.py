"""Fitting one stage: a model, its batches, early stopping, checkpoints and TensorBoard.

A stage is stage-agnostic here: `fit` trains (or resumes, or restores a finished) model
from the batch iterators it is given, and `restore` loads its best checkpoint for eval-only
runs. What the stages are and how they chain (base models, features, stacker) is
`emojax.experiment`'s business.

Each stage keeps its own orbax checkpoints (`<stage dir>/checkpoints`, the best by
validation loss and the latest) and TensorBoard events (`<stage dir>/`). A finished stage
leaves `<stage dir>/DONE` and is only restored afterwards; a stage killed midway resumes
from its latest checkpoint. Everything random is a function of the stage's key and the
step: dropout keys are `fold_in(dropout key, step)`, and the caller's batch order must
depend only on the epoch, so a resumed run ends with the same state as an uninterrupted one.

Data parallelism: one mesh axis 'data' over all devices; the train state is replicated and
each batch is split along its first axis, so the same code runs on one CPU, several GPUs,
a TPU host or several hosts (each process feeds its slice of the global batch).
"""

import contextlib
import dataclasses
import functools
import json
import os
from collections.abc import Callable, Iterable

import flax.linen as nn
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

from emojax import metrics, report

DONE_FILENAME = 'DONE'


# ----------------------------------------------------------------------------- steps


def create_train_state(optimizer_config, model: nn.Module, rng: jax.Array, example_batch: dict):
  """Initialises `model` on `example_batch` and pairs it with Adamax (`config.optimizer`)."""
  params_rng, dropout_rng = jax.random.split(rng)
  params = _jitted_init(model)({'params': params_rng, 'dropout': dropout_rng}, example_batch)['params']
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=_optimizer(optimizer_config))
  # A strong int32 step, as a restored checkpoint has: otherwise the steps compile twice.
  return state.replace(step=jnp.zeros((), jnp.int32))


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
  # Built directly: jax.make_mesh defaults to Explicit axes, under which nn.RNN's scan fails.
  return jax.sharding.Mesh(np.array(jax.devices()), ('data',))


@functools.cache
def jitted_steps(mesh: jax.sharding.Mesh):
  """train / eval / predict steps jitted for `mesh`: state replicated, batch split on 'data'."""
  replicated = NamedSharding(mesh, P())
  data = NamedSharding(mesh, P('data'))
  train = jax.jit(
    train_step, in_shardings=(replicated, data, replicated), out_shardings=(replicated, replicated), donate_argnums=0
  )
  evaluate = jax.jit(eval_step, in_shardings=(replicated, data), out_shardings=replicated)
  predict = jax.jit(predict_step, in_shardings=(replicated, data), out_shardings=replicated)
  return train, evaluate, predict


def to_device(batch: dict, mesh: jax.sharding.Mesh) -> dict:
  """This process's rows of a global batch -> global arrays split on 'data'."""
  data = NamedSharding(mesh, P('data'))
  return {key: jax.make_array_from_process_local_data(data, value) for key, value in batch.items()}


# ----------------------------------------------------------------------------- a stage


@dataclasses.dataclass(frozen=True)
class Stage:
  """One model to fit, and how it sees its data.

  Attributes:
    name: for logs and errors ('audio', 'visual', 'stacker').
    directory: where its checkpoints, TensorBoard events and DONE file go.
    model: the unbound Flax module.
    key: the stage's PRNG key; initial parameters and dropout keys derive from it.
    train_batches: epoch (1-based) -> that epoch's training batches, in an order that
      depends only on the epoch (so a resumed run sees the same batches).
    val_batches: () -> the validation batches, for early stopping.
    example_batch: one batch with the shapes the model is initialised on.
    num_train_batches: batches per epoch, for the progress report.
  """

  name: str
  directory: str
  model: nn.Module
  key: jax.Array
  train_batches: Callable[[int], Iterable[dict]]
  val_batches: Callable[[], Iterable[dict]]
  example_batch: dict
  num_train_batches: int


def evaluate(state, batches: Iterable[dict], mesh) -> dict:
  """Runs `eval_step` over `batches`; returns {'loss', 'accuracy', 'confusion_matrix' [7, 7] np.int64}."""
  _, eval_fn, _ = jitted_steps(mesh)
  collection = None
  for batch in batches:
    batch_metrics = eval_fn(state, to_device(batch, mesh))
    collection = batch_metrics if collection is None else collection.merge(batch_metrics)
  computed = collection.compute()
  return {
    'loss': float(computed['loss']),
    'accuracy': float(computed['accuracy']),
    'confusion_matrix': np.asarray(computed['confusion_matrix'], np.int64),
  }


def penultimate_features(state, batches: Iterable[dict], mesh, num_examples: int) -> np.ndarray:
  """`predict_step` over `batches`, in order: [num_examples, features] float32 (padding rows dropped)."""
  _, _, predict_fn = jitted_steps(mesh)
  outputs = []
  remaining = num_examples
  for batch in batches:
    features = np.asarray(predict_fn(state, to_device(batch, mesh)))  # [batch_size, features], replicated
    outputs.append(features[: min(remaining, len(features))])
    remaining -= len(features)
  return np.concatenate(outputs).astype(np.float32)


def flat_hparams(config) -> dict:
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


def write_json(path: str, content) -> None:
  """Atomic JSON write (temporary name, then rename), from process 0 only."""
  if jax.process_index() != 0:
    return
  temporary = f'{path}.tmp'
  with open(temporary, 'w') as f:
    json.dump(content, f, indent=2, sort_keys=True)
  os.replace(temporary, path)


def read_json(path: str):
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


def _abstract_state(optimizer_config, stage: Stage, mesh):
  """The TrainState's shapes and shardings, without computing it: the restore target.

  orbax returns plain dicts, not a TrainState, when it restores without one.
  """
  abstract = jax.eval_shape(lambda: create_train_state(optimizer_config, stage.model, stage.key, stage.example_batch))
  replicated = NamedSharding(mesh, P())
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract)


def _restore(manager, step: int, abstract_state):
  restored = manager.restore(
    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
  )
  return restored['state'], restored['meta']


def fit(config, stage: Stage, mesh) -> tuple[train_state.TrainState, dict]:
  """Trains one stage with early stopping and returns (best state, training summary).

  A stage with a DONE file is only restored. Otherwise training starts from the latest
  checkpoint in `<stage dir>/checkpoints` if there is one, else from scratch.

  Args:
    config: the run's config (optimizer, num_epochs, patience, log_every_secs; all of it
      goes to TensorBoard's hparams).
    stage: the model and its batches.
    mesh: from `make_mesh`.

  Returns:
    The state of the best epoch, and {'best_epoch', 'best_val_loss', 'epochs_run',
    'stopped_early', 'history'} (one dict of scalars per epoch in 'history').

  Raises:
    FloatingPointError: the training or validation loss is NaN or infinite; the
      checkpoints written so far (all finite) are kept.
  """
  name, stage_dir = stage.name, stage.directory
  done_path = os.path.join(stage_dir, DONE_FILENAME)
  abstract_state = _abstract_state(config.optimizer, stage, mesh)
  init_rng, dropout_rng = jax.random.split(stage.key)

  if os.path.exists(done_path):
    done = read_json(done_path)
    with _checkpoint_manager(stage_dir, read_only=True) as manager:
      state, _ = _restore(manager, done['best_epoch'], abstract_state)
    logging.info("Stage '%s' finished earlier (best epoch %d): restored.", name, done['best_epoch'])
    return state, done

  train_fn, _, _ = jitted_steps(mesh)
  replicated = NamedSharding(mesh, P())
  steps_per_epoch = stage.num_train_batches
  writer = metric_writers.create_default_writer(stage_dir, just_logging=jax.process_index() > 0)
  with contextlib.closing(writer), _checkpoint_manager(stage_dir) as manager:
    latest = manager.latest_step()
    if latest is None:
      state = jax.device_put(
        create_train_state(config.optimizer, stage.model, init_rng, stage.example_batch), replicated
      )
      meta = {'epoch': 0, 'best_epoch': 0, 'best_val_loss': None, 'bad_epochs': 0, 'history': []}
      writer.write_hparams(flat_hparams(config))
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
      for batch in stage.train_batches(epoch):
        state, batch_metrics = train_fn(state, to_device(batch, mesh), dropout_rng)
        train_metrics = batch_metrics if train_metrics is None else train_metrics.merge(batch_metrics)
        step += 1
        # Every step: clu's periodic actions never fire on their first call and refuse a skipped step.
        report_progress(step)
      train_computed = train_metrics.compute()
      with report_progress.timed('eval'):
        val = evaluate(state, stage.val_batches(), mesh)
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
        # Plain Python floats: orbax fails later, in a background thread, on numpy scalars.
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
    val = evaluate(state, stage.val_batches(), mesh)
    writer.write_images(int(state.step), {'val_confusion_matrix': report.confusion_image(val['confusion_matrix'])})
  done = {
    'best_epoch': best_epoch,
    'best_val_loss': meta['best_val_loss'],
    'epochs_run': meta['epoch'],
    'stopped_early': bool(stopped_early),
    'history': meta['history'],
  }
  write_json(done_path, done)
  logging.info("Stage '%s' done: best epoch %d, val loss %.4f.", name, best_epoch, meta['best_val_loss'])
  return state, done


def restore(config, stage: Stage, mesh) -> tuple[train_state.TrainState, dict]:
  """The best checkpoint of a stage, for eval-only runs; a clear error when there is none."""
  checkpoint_dir = os.path.join(stage.directory, 'checkpoints')
  if not os.path.isdir(checkpoint_dir):
    raise FileNotFoundError(
      f"No checkpoints for stage '{stage.name}' in {checkpoint_dir}: train first (--config.mode=train) or point "
      '--workdir at a trained run.'
    )
  abstract_state = _abstract_state(config.optimizer, stage, mesh)
  done_path = os.path.join(stage.directory, DONE_FILENAME)
  with _checkpoint_manager(stage.directory, read_only=True) as manager:
    if os.path.exists(done_path):
      done = read_json(done_path)
      step = done['best_epoch']
    else:
      latest = manager.latest_step()
      if latest is None:
        raise FileNotFoundError(f"{checkpoint_dir} holds no checkpoint of stage '{stage.name}': train first.")
      _, meta = _restore(manager, latest, abstract_state)
      step = meta['best_epoch']
      done = {
        'best_epoch': step,
        'best_val_loss': meta['best_val_loss'],
        'epochs_run': meta['epoch'],
        'stopped_early': False,
        'history': meta['history'],
      }
      logging.warning("Stage '%s' did not finish; evaluating its best epoch so far (%d).", stage.name, step)
    state, _ = _restore(manager, step, abstract_state)
  return state, done

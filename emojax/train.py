"""Fitting one stage: many members of one model in one compiled program, with early stopping.

A stage trains K *members* of one model at once: the (fold, seed) pairs of a
cross-validation run, or a single member for the thesis' one split. The train state
carries a leading member axis on every leaf (parameters, Adamax state, step, dropout key,
best parameters), and the train, eval and predict steps are `jax.vmap`s of the
single-member steps over it, so K small models cost one program, one compile and one
checkpoint. Each member has its own batches (the caller's batches are [K, batch, ...] with
per-member masks), its own early stopping and its own best parameters, kept on the device:
a member that stopped is frozen (its updates are masked out) and the stage ends when every
member has stopped or reached `num_epochs`. With `config.compact_stopped_members` (the
default), an epoch's steps run on the members still training only, taken out of the stacked
state and written back after the epoch (`training_group`): the same numbers up to float
rounding (XLA may order a sum differently for another member count: 1e-7 relative, no best
epoch moved in a 6 folds x 3 seeds run), without the arithmetic of stopped members.

`fit` trains (or resumes, or restores a finished) stage from the batch iterators it is
given; `restore` loads it for eval-only runs. What the stages are and how they chain is
`emojax.experiment`'s business.

Checkpoints: one orbax manager per stage (`<stage dir>/checkpoints`) keeps the latest
state, best parameters included, written at most every `config.checkpoint_every_secs` and
always at the end; a finished stage leaves `<stage dir>/DONE`. Everything random is a
function of the members' keys, the step and the epoch, so a stage killed anywhere and
started again replays the lost epochs exactly and ends in the same state.

Devices: a mesh of ('members', 'data') axes over all devices; the state is split along the
member axis (`config.mesh.member_shards` ways, 1 by default) and each batch along both, so
the same code runs on one CPU, several GPUs, a TPU host or several hosts.
"""

import contextlib
import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

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
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from emojax import metrics, report

DONE_FILENAME = 'DONE'
# The layout of a stage's checkpoints: the TrainState's fields, the leading member axis and
# the meta JSON. Bump it when any of them changes, so that a workdir written under another
# layout is refused before its checkpoints fail to restore.
CHECKPOINT_LAYOUT_VERSION = 1
# Process 0's decisions travel to the others padded to a multiple of this many bytes, so that
# the broadcast compiles for a few shapes only.
_BROADCAST_BLOCK = 256


class TrainState(train_state.TrainState):
  """Flax's TrainState plus what one member needs to train alone.

  Attributes:
    dropout_key: raw PRNG key data (uint32 [2]); the step is folded in at every step.
    best_params: the parameters of the member's best epoch so far (lowest validation loss).
  """

  dropout_key: jax.Array
  best_params: Any


# ----------------------------------------------------------------------------- steps


def create_train_state(
  tx: optax.GradientTransformation, model: nn.Module, key: jax.Array, example_batch: dict
) -> TrainState:
  """One member's state: `model` initialised on `example_batch` ([batch, ...]), with the optimizer `tx`."""
  params_key, dropout_key = jax.random.split(key)
  params = model.init({'params': params_key, 'dropout': dropout_key}, example_batch, train=False)['params']
  return TrainState.create(
    apply_fn=model.apply,
    params=params,
    tx=tx,
    dropout_key=jax.random.key_data(dropout_key),
    best_params=jax.tree.map(jnp.copy, params),  # Its own buffers: the train step donates the state.
  ).replace(step=jnp.zeros((), jnp.int32))  # A strong int32, as a restored checkpoint has.


def create_member_states(optimizer_config, model: nn.Module, keys: jax.Array, example_batch: dict) -> TrainState:
  """K members' states stacked on a leading axis, Adamax as `config.optimizer`; `keys` [K], `example_batch` [K, batch, ...].

  Run op by op, not jitted: the LSTM's orthogonal initialiser is a batched LAPACK QR, and in
  one compiled program two of them (one per layer) can each wait, on a 2-thread CPU pool, for
  work queued behind the other: jaxlib 0.10.2 deadlocks there.
  """
  member_batch = jax.tree.map(lambda x: x[0], example_batch)
  tx = _optimizer(optimizer_config)
  return jax.vmap(lambda key: create_train_state(tx, model, key, member_batch))(keys)


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


def train_step(state: TrainState, batch: dict, active: jnp.ndarray):
  """One member's Adamax step on its masked mean cross-entropy.

  Args:
    state: the member's state.
    batch: its inputs plus `label` [batch] int32 and `mask` [batch] bool.
    active: bool []; False for a member that stopped early. A member whose batch is all
      padding (its epoch has fewer batches than another member's) is left alone too.

  Returns:
    (new state, `metrics.TrainMetrics` of this batch).
  """
  dropout_rng = jax.random.fold_in(jax.random.wrap_key_data(state.dropout_key), state.step)

  def loss_fn(params):
    logits, _ = state.apply_fn({'params': params}, batch, train=True, rngs={'dropout': dropout_rng})
    per_example = cross_entropy(logits, batch['label'])  # [batch]
    return masked_mean(per_example, batch['mask']), (logits, per_example)

  (_, (logits, per_example)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updated = state.apply_gradients(grads=grads)
  # Adamax moves parameters even on a zero gradient (its momentum), so a frozen member's
  # update is dropped as a whole, step counter included.
  take = jnp.logical_and(active, jnp.any(batch['mask']))
  state = jax.tree.map(lambda new, old: jnp.where(take, new, old), updated, state)
  batch_metrics = metrics.TrainMetrics.single_from_model_output(
    logits=logits, labels=batch['label'], loss=per_example, mask=batch['mask']
  )
  return state, batch_metrics


def eval_step(state: TrainState, batch: dict) -> metrics.EvalMetrics:
  """One member's loss, accuracy and confusion matrix of one batch, padding rows excluded."""
  logits, _ = state.apply_fn({'params': state.params}, batch, train=False)
  return metrics.EvalMetrics.single_from_model_output(
    logits=logits, labels=batch['label'], loss=cross_entropy(logits, batch['label']), mask=batch['mask']
  )


def predict_step(state: TrainState, batch: dict) -> tuple[jnp.ndarray, jnp.ndarray]:
  """One member's logits [batch, classes] and penultimate representation [batch, features]."""
  return state.apply_fn({'params': state.params}, batch, train=False)


def keep_best(state: TrainState, improved: jnp.ndarray) -> TrainState:
  """Copies the parameters into `best_params` where the member `improved` (bool [])."""
  best = jax.tree.map(lambda new, old: jnp.where(improved, new, old), state.params, state.best_params)
  return state.replace(best_params=best)


def make_mesh(member_shards: int = 1) -> jax.sharding.Mesh:
  """A ('members', 'data') mesh over every device (of every process)."""
  devices = np.array(jax.devices())
  if devices.size % member_shards:
    raise ValueError(f'config.mesh.member_shards {member_shards} does not divide the {devices.size} devices.')
  # Built directly: jax.make_mesh defaults to Explicit axes, under which the LSTM's scan fails.
  return jax.sharding.Mesh(devices.reshape(member_shards, -1), ('members', 'data'))


@functools.cache
def jitted_steps(mesh: jax.sharding.Mesh):
  """The vmapped train / eval / predict / keep-best steps, jitted for `mesh`.

  The state and per-member vectors are split on 'members', batches on ('members', 'data');
  metrics and predictions come back replicated, so every process can read them.
  """
  members = NamedSharding(mesh, P('members'))
  batch = NamedSharding(mesh, P('members', 'data'))
  replicated = NamedSharding(mesh, P())
  train = jax.jit(
    jax.vmap(train_step),
    in_shardings=(members, batch, members),
    out_shardings=(members, replicated),
    donate_argnums=0,
  )
  evaluate = jax.jit(jax.vmap(eval_step), in_shardings=(members, batch), out_shardings=replicated)
  predict = jax.jit(jax.vmap(predict_step), in_shardings=(members, batch), out_shardings=replicated)
  best = jax.jit(jax.vmap(keep_best), in_shardings=(members, members), out_shardings=members, donate_argnums=0)
  return train, evaluate, predict, best


def to_device(batch: dict, mesh: jax.sharding.Mesh) -> dict:
  """A global [K, batch, ...] host batch (the same on every process) -> global arrays split on the mesh.

  Each process hands over only the pieces its own devices hold.
  """
  sharding = NamedSharding(mesh, P('members', 'data'))
  return {
    key: jax.make_array_from_callback(value.shape, sharding, lambda index, value=value: value[index])
    for key, value in batch.items()
  }


def from_process_zero(value):
  """Process 0's `value` (anything JSON can hold) on every process; in a single-process run, `value` itself.

  What a process decides from the clock or from files (a DONE file, a cached file, when to
  save) can differ from process to process, and a process that decided otherwise would skip
  a collective the others run: the job would hang. Such decisions are taken by process 0
  and followed by all.
  """
  if jax.process_count() == 1:
    return value
  encoded = json.dumps(value).encode() if jax.process_index() == 0 else b''
  size = int(multihost_utils.broadcast_one_to_all(np.int32(-(-len(encoded) // _BROADCAST_BLOCK) * _BROADCAST_BLOCK)))
  padded = np.zeros(size, np.uint8)
  padded[: len(encoded)] = np.frombuffer(encoded, np.uint8)
  # JSON text holds no NUL byte (json.dumps escapes control characters): the padding strips off.
  return json.loads(bytes(multihost_utils.broadcast_one_to_all(padded)).rstrip(b'\0').decode())


def compute_members(collection) -> dict[str, np.ndarray]:
  """`compute()` of a clu Collection whose leaves carry a leading member axis: each metric as [K, ...]."""
  return jax.device_get(jax.vmap(lambda member: member.compute())(collection))


def _on_members(values: np.ndarray, mesh: jax.sharding.Mesh) -> jax.Array:
  """A host [K] vector -> a global array split on 'members'."""
  sharding = NamedSharding(mesh, P('members'))
  return jax.make_array_from_callback(values.shape, sharding, lambda index: values[index])


def training_group(active: np.ndarray, member_shards: int) -> np.ndarray:
  """The members an epoch's steps run on: every active one, padded with stopped ones to a size G.

  G is the active count rounded up to `member_shards` times a power of two (at most K), so a
  stage whose members stop one by one compiles its steps for a handful of sizes, and stopped
  members stop costing arithmetic (on a CPU a member costs what it computes, stopped or not).
  Chosen from `active` alone: a resumed run picks the same groups.
  """
  num_members, num_active = len(active), int(np.sum(active))
  size = member_shards
  while size < num_active:
    size *= 2
  size = min(size, num_members)
  stopped = np.flatnonzero(~active)
  return np.sort(np.concatenate([np.flatnonzero(active), stopped[: size - num_active]]))


@functools.cache
def _group_ops(mesh: jax.sharding.Mesh):
  """Jitted (take, put): a group's rows of the stacked state, and those rows written back."""
  members, replicated = NamedSharding(mesh, P('members')), NamedSharding(mesh, P())
  take = jax.jit(lambda state, group: jax.tree.map(lambda x: x[group], state), out_shardings=members)
  put = jax.jit(
    lambda state, rows, group: jax.tree.map(lambda x, y: x.at[group].set(y), state, rows),
    out_shardings=members,
    donate_argnums=0,
  )

  def on_devices(group: np.ndarray) -> jax.Array:  # The same indices on every process.
    return jax.make_array_from_callback(group.shape, replicated, lambda index: group[index])

  def take_group(state: TrainState, group: np.ndarray) -> TrainState:
    return take(state, on_devices(group))

  def put_group(state: TrainState, rows: TrainState, group: np.ndarray) -> TrainState:
    return put(state, rows, on_devices(group))

  return take_group, put_group


def _rows_of(batches: Iterable[dict], group: np.ndarray | None) -> Iterator[dict]:
  """[K, batch, ...] batches cut to the `group`'s members (None: all of them)."""
  for batch in batches:
    yield batch if group is None else {key: value[group] for key, value in batch.items()}


def _to_all_members(values: dict, group: np.ndarray | None, num_members: int) -> dict:
  """Per-member metrics of a group ([G, ...]) placed at their members' rows of [K, ...] (zeros elsewhere)."""
  if group is None:
    return values
  placed = {}
  for key, value in values.items():
    placed[key] = np.zeros((num_members, *np.shape(value)[1:]), np.asarray(value).dtype)
    placed[key][group] = value
  return placed


# ----------------------------------------------------------------------------- a stage


@dataclasses.dataclass(frozen=True)
class Stage:
  """One model to fit as K members, and how they see their data.

  Attributes:
    name: for logs and errors ('audio', 'visual', 'stacker').
    directory: where its checkpoints, TensorBoard events and DONE file go.
    model: the unbound Flax module.
    members: a name per member, such as 'fold_0/seed_1' (TensorBoard tags, errors).
    keys: [K] PRNG keys; each member's initial parameters and dropout keys derive from its own.
    train_batches: (epoch, active [K] bool) -> that epoch's [K, batch, ...] training
      batches; member k's rows must depend only on the epoch (a resumed run sees the same
      batches), and a member that is not active may be given empty rows.
    val_batches: () -> the [K, batch, ...] validation batches, for early stopping.
    example_batch: one [K, batch, ...] batch with the shapes the model is initialised on.
    num_train_batches: batches per epoch (of the member with the most), for steps/s.
    class_names: the classes, in label order (for the confusion images).
  """

  name: str
  directory: str
  model: nn.Module
  members: tuple[str, ...]
  keys: jax.Array
  train_batches: Callable[[int, np.ndarray], Iterable[dict]]
  val_batches: Callable[[], Iterable[dict]]
  example_batch: dict
  num_train_batches: int
  class_names: tuple[str, ...]


def evaluate(state: TrainState, batches: Iterable[dict], mesh) -> dict:
  """`eval_step` of every member over `batches`: {'loss' [K], 'accuracy' [K], 'confusion_matrix' [K, C, C]}."""
  _, eval_fn, _, _ = jitted_steps(mesh)
  collection = None
  for batch in batches:
    batch_metrics = eval_fn(state, to_device(batch, mesh))
    collection = batch_metrics if collection is None else collection.merge(batch_metrics)
  computed = compute_members(collection)
  return {
    'loss': np.asarray(computed['loss'], np.float64),
    'accuracy': np.asarray(computed['accuracy'], np.float64),
    'confusion_matrix': np.asarray(computed['confusion_matrix'], np.int64),
  }


def predict(state: TrainState, batches: Iterable[dict], mesh, num_examples: Sequence[int]) -> list[dict]:
  """Every member's outputs over `batches`, in order, padding rows dropped.

  Returns:
    Per member k: {'logits' [num_examples[k], classes], 'penultimate' [num_examples[k], features]}, float32.
  """
  _, _, predict_fn, _ = jitted_steps(mesh)
  outputs = [{'logits': [], 'penultimate': []} for _ in num_examples]
  for batch in batches:
    logits, penultimate = jax.device_get(predict_fn(state, to_device(batch, mesh)))  # [K, batch, ...]
    for k, mask in enumerate(batch['mask']):
      outputs[k]['logits'].append(logits[k][mask])
      outputs[k]['penultimate'].append(penultimate[k][mask])
  result = []
  for k, count in enumerate(num_examples):
    member = {key: np.concatenate(values).astype(np.float32) for key, values in outputs[k].items()}
    if len(member['logits']) != count:
      raise ValueError(f'Prediction gave {len(member["logits"])} rows for member {k}, expected {count}.')
    result.append(member)
  return result


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
  """`report.write_json` (atomic, readable by all) from process 0 only: the others share its files."""
  if jax.process_index() == 0:
    report.write_json(path, content)


def read_json(path: str):
  with open(path) as f:
    return json.load(f)


def _checkpoint_manager(stage_dir: str, *, read_only: bool = False) -> ocp.CheckpointManager:
  """Keeps the latest state; the best parameters of every member travel inside it.

  A save writes its step under `<step>.orbax-checkpoint-tmp` and renames it to `<step>` once
  complete, so a step that a kill left half-written is never listed, hence never restored;
  a training manager removes such leftovers when it opens. Process 0 alone lists the steps
  and tells the others, so that every process resumes from the same one.
  """
  options = ocp.CheckpointManagerOptions(
    max_to_keep=1, read_only=read_only, cleanup_tmp_directories=not read_only, single_host_load_and_broadcast=True
  )
  return ocp.CheckpointManager(os.path.join(stage_dir, 'checkpoints'), options=options)


def _abstract_state(optimizer_config, stage: Stage, mesh) -> TrainState:
  """The stacked state's shapes and shardings, without computing it: the restore target.

  orbax returns plain dicts, not a TrainState, when it restores without one.
  """
  abstract = jax.eval_shape(
    lambda: create_member_states(optimizer_config, stage.model, stage.keys, stage.example_batch)
  )
  members = NamedSharding(mesh, P('members'))
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=members), abstract)


def _restore(manager, step: int, abstract_state):
  restored = manager.restore(
    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
  )
  return restored['state'], restored['meta']


def _summary(meta: dict) -> list[dict]:
  """What the DONE file and the report keep of each member's training."""
  return [
    {
      'best_epoch': member['best_epoch'],
      'best_val_loss': member['best_val_loss'],
      'epochs_run': len(member['history']),
      'stopped_early': member['stopped'],
      'history': member['history'],
    }
    for member in meta['members']
  ]


def best_state(state: TrainState) -> TrainState:
  """The state with each member's best parameters in `params`, for evaluation and prediction."""
  return state.replace(params=state.best_params)


def _tag(stage: Stage, k: int, metric: str) -> str:
  """TensorBoard tag of member k's metric: plain for one member, 'fold_3/seed_0/loss' for many."""
  return metric if len(stage.members) == 1 else f'{stage.members[k]}/{metric}'


def fit(config, stage: Stage, mesh) -> tuple[TrainState, list[dict]]:
  """Trains every member of a stage with early stopping; returns (state with best params, summaries).

  A stage with a DONE file is only restored. Otherwise training starts from the latest
  checkpoint in `<stage dir>/checkpoints` if there is one, else from scratch.

  Args:
    config: the run's config (optimizer, num_epochs, patience, checkpoint_every_secs,
      log_every_secs; all of it goes to TensorBoard's hparams).
    stage: the model, its members and their batches.
    mesh: from `make_mesh`.

  Returns:
    The state whose `params` are each member's best, and per member {'best_epoch',
    'best_val_loss', 'epochs_run', 'stopped_early', 'history'} (one dict of scalars per
    epoch in 'history').

  Raises:
    FloatingPointError: a member's training or validation loss is NaN or infinite; the
      checkpoints written so far (all finite) are kept.
  """
  name, stage_dir = stage.name, stage.directory
  num_members = len(stage.members)
  done_path = os.path.join(stage_dir, DONE_FILENAME)
  abstract_state = _abstract_state(config.optimizer, stage, mesh)
  if from_process_zero(os.path.exists(done_path)):
    state, summaries = restore(config, stage, mesh)
    logging.info("Stage '%s' finished earlier: restored.", name)
    return state, summaries

  train_fn, _, _, best_fn = jitted_steps(mesh)
  take_group, put_group = _group_ops(mesh)
  is_main = jax.process_index() == 0
  writers = {
    split: metric_writers.create_default_writer(os.path.join(stage_dir, split), just_logging=not is_main)
    for split in ('train', 'val')
  }
  progress_writer = metric_writers.create_default_writer(stage_dir, just_logging=not is_main)
  with contextlib.ExitStack() as stack:
    for writer in (*writers.values(), progress_writer):
      stack.enter_context(contextlib.closing(writer))
    manager = stack.enter_context(_checkpoint_manager(stage_dir))
    latest = manager.latest_step()
    if latest is None:
      state = create_member_states(config.optimizer, stage.model, stage.keys, stage.example_batch)
      state = jax.device_put(state, NamedSharding(mesh, P('members')))
      meta = {
        'epoch': 0,
        'members': [
          {'best_epoch': 0, 'best_val_loss': None, 'bad_epochs': 0, 'stopped': False, 'history': []}
          for _ in stage.members
        ],
      }
      progress_writer.write_hparams({'stage': name, **flat_hparams(config)})
      logging.info(
        "Stage '%s': training %d member(s) from scratch, %d steps per epoch.",
        name,
        num_members,
        stage.num_train_batches,
      )
    else:
      state, meta = _restore(manager, latest, abstract_state)
      logging.info("Stage '%s': resuming after epoch %d.", name, meta['epoch'])

    report_progress = periodic_actions.ReportProgress(
      num_train_steps=config.num_epochs * stage.num_train_batches,
      writer=progress_writer,
      every_steps=stage.num_train_batches,  # At least once an epoch, so short stages get steps/s too.
      every_secs=config.log_every_secs,
    )
    step = meta['epoch'] * stage.num_train_batches  # The progress counter, on the host.
    last_save = time.monotonic()
    for epoch in range(meta['epoch'] + 1, config.num_epochs + 1):
      stopped = np.array([member['stopped'] for member in meta['members']])
      if stopped.all():
        break
      active = ~stopped
      group = training_group(active, mesh.shape['members']) if config.compact_stopped_members else None
      if group is not None and len(group) == num_members:
        group = None
      # Stopped members outside the group are left out of this epoch's steps altogether.
      training = state if group is None else take_group(state, group)
      active_on_devices = _on_members(active if group is None else active[group], mesh)
      train_metrics = None
      for batch in _rows_of(stage.train_batches(epoch, active), group):
        training, batch_metrics = train_fn(training, to_device(batch, mesh), active_on_devices)
        train_metrics = batch_metrics if train_metrics is None else train_metrics.merge(batch_metrics)
        step += 1
        # Every step: clu's periodic actions never fire on their first call and refuse a skipped step.
        report_progress(step)
      train_computed = _to_all_members(compute_members(train_metrics), group, num_members)
      with report_progress.timed('eval'):
        val = _to_all_members(evaluate(training, _rows_of(stage.val_batches(), group), mesh), group, num_members)
      state = training if group is None else put_group(state, training, group)
      improved = np.zeros(num_members, bool)
      for k in np.flatnonzero(active):
        member = meta['members'][k]
        scalars = {
          'train_loss': float(train_computed['loss'][k]),
          'train_accuracy': float(train_computed['accuracy'][k]),
          'val_loss': float(val['loss'][k]),
          'val_accuracy': float(val['accuracy'][k]),
          'epoch': epoch,
        }
        for what in ('train', 'val'):
          loss = scalars[f'{what}_loss']
          if not np.isfinite(loss):
            kept = f'epoch {meta["epoch"]}' if meta['epoch'] else 'none: no epoch finished'
            who = f"Stage '{name}'" + (f' member {stage.members[k]}' if num_members > 1 else '')
            raise FloatingPointError(
              f'{who}: the {"training" if what == "train" else "validation"} loss is {loss} in epoch {epoch}; '
              f'training stopped. The last good checkpoint ({kept}) is kept in {manager.directory}. Lower '
              '--config.optimizer.learning_rate or check the data for NaN or infinite values.'
            )
          writers[what].write_scalars(
            epoch,
            {_tag(stage, k, 'loss'): loss, _tag(stage, k, 'accuracy'): scalars[f'{what}_accuracy']},
          )
        improved[k] = member['best_val_loss'] is None or scalars['val_loss'] < member['best_val_loss']
        if improved[k]:
          member.update(best_epoch=epoch, best_val_loss=scalars['val_loss'], bad_epochs=0)
        else:
          member['bad_epochs'] += 1
        member['stopped'] = member['bad_epochs'] >= config.patience
        member['history'].append(scalars)
      state = best_fn(state, _on_members(improved, mesh))
      meta['epoch'] = epoch
      if num_members == 1:
        scalars = meta['members'][0]['history'][-1]
        logging.info(
          "Stage '%s' epoch %d: train loss %.4f acc %.4f, val loss %.4f acc %.4f%s",
          name,
          epoch,
          scalars['train_loss'],
          scalars['train_accuracy'],
          scalars['val_loss'],
          scalars['val_accuracy'],
          ' (best)' if improved[0] else '',
        )
      else:
        logging.info(
          "Stage '%s' epoch %d: %d of %d members training, %d improved; mean val loss %.4f.",
          name,
          epoch,
          int(active.sum()),
          num_members,
          int(improved.sum()),
          float(np.mean(val['loss'][active])),
        )
      finished = epoch == config.num_epochs or all(member['stopped'] for member in meta['members'])
      # Every process saves (orbax's save is collective), so process 0's clock decides for all.
      if finished or from_process_zero(time.monotonic() - last_save >= config.checkpoint_every_secs):
        manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
        last_save = time.monotonic()
    manager.wait_until_finished()
    if meta['epoch'] == 0:
      raise ValueError(f"Stage '{name}' has no finished epoch: config.num_epochs is {config.num_epochs}.")
    state = best_state(state)
    if num_members == 1:
      # One heatmap, of the epoch that is kept: rendering one per epoch costs more than a tiny epoch.
      val = evaluate(state, stage.val_batches(), mesh)
      image = report.confusion_image(val['confusion_matrix'][0], name, 'validation', class_names=stage.class_names)
      writers['val'].write_images(meta['epoch'], {'confusion_matrix': image})
  summaries = _summary(meta)
  write_json(done_path, {'epoch': meta['epoch'], 'members': summaries})
  logging.info(
    "Stage '%s' done after %d epochs; best epochs %s.", name, meta['epoch'], [s['best_epoch'] for s in summaries]
  )
  return state, summaries


def restore(config, stage: Stage, mesh) -> tuple[TrainState, list[dict]]:
  """A stage's last checkpoint with each member's best parameters, for eval-only runs.

  Returns:
    As `fit`. A stage that did not finish is evaluated at its best epochs so far, with a
    warning; `emojax.experiment`'s eval restores finished stages only.
  """
  checkpoint_dir = os.path.join(stage.directory, 'checkpoints')
  if not os.path.isdir(checkpoint_dir):
    raise FileNotFoundError(
      f"No checkpoints for stage '{stage.name}' in {checkpoint_dir}: train first (--config.mode=train) or point "
      '--workdir at a trained run.'
    )
  abstract_state = _abstract_state(config.optimizer, stage, mesh)
  with _checkpoint_manager(stage.directory, read_only=True) as manager:
    latest = manager.latest_step()
    if latest is None:
      raise FileNotFoundError(f"{checkpoint_dir} holds no checkpoint of stage '{stage.name}': train first.")
    state, meta = _restore(manager, latest, abstract_state)
  if len(meta['members']) != len(stage.members):
    raise ValueError(
      f"{checkpoint_dir} holds {len(meta['members'])} members of stage '{stage.name}', but this config has "
      f'{len(stage.members)}: evaluate with the config of that run.'
    )
  if not os.path.exists(os.path.join(stage.directory, DONE_FILENAME)):
    logging.warning("Stage '%s' did not finish; evaluating its best epochs so far.", stage.name)
  return best_state(state), _summary(meta)

r"""Training speed of emojax (JAX/Flax) against the same models in Keras 3, on SYNTHETIC clips.

  python bench/train_bench.py [--epochs=3] [--num_clips=1248] [--unroll=...] [--time_bucket=...]

About 2-2.5 minutes at the defaults on a 2-core CPU; `--epochs=1 --num_clips=96` for a quick look.

The data are SYNTHETIC, RAVDESS-sized, in memory (not real RAVDESS): --num_clips clips with
140-180 VGG16 frames each (512-D, stored zero-padded to `data.max_frames` as emojax's
input pipeline stores them), 5 VGGish rows (128-D) and a label; each class adds its own mean
to the noise so both frameworks have something to learn.

emojax side: the real training path, `configs/default.py` -> `models.build_model` ->
`train.create_member_states`, the jitted `train.train_step` (as `train.py` jits it for the
mesh) fed by `input_pipeline.batches` (each batch's time axis cut to its longest clip rounded
up to `data.time_bucket`), training metrics merged every step as `train.fit` does;
features with `train.penultimate_features`.
Keras side: the thesis's models written in Keras 3 (TensorFlow backend), `model.fit(x, y,
batch_size=32, shuffle=True)` on arrays padded to the longest clip (what
`keras.utils.pad_sequences` gives), `Masking` before the LSTMs, Adamax with the same
settings, sparse categorical cross-entropy on logits and an accuracy metric; features with
`predict` on a model cut at the penultimate layer.

Both run in this one process, on the CPU, taking turns epoch by epoch (emojax epoch 1, Keras
epoch 1, emojax epoch 2, ...) so that other load on a shared machine hits both alike.
TensorFlow's intra- and inter-op pools are set to the core count, which is the size of
XLA's CPU pool. Compile time (emojax: init + one step per batch shape; Keras: building,
`compile` and a first `fit` on one batch of each shape, which traces the graph) is measured
apart from the timed epochs. The whole stack = audio and visual training, penultimate
features of every clip from both, stacker training on them (each framework on its own
features), without validation or checkpoints on either side.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
if __package__ in (None, ''):
  try:
    import emojax  # noqa: F401
  except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import dataclasses
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from configs import default as default_config
from emojax import experiment, input_pipeline, models, partitions, ravdess, schema, train

MIN_FRAMES, MAX_FRAMES = 140, 180  # Synthetic clip lengths (RAVDESS at 45 fps: ~135-240).
MODELS = tuple(models.MODELS)


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument(
    '--mode',
    choices=('epochs', 'lstm', 'folds'),
    default='epochs',
    help='epochs: each model and the stack against Keras; lstm: A/B of LSTM implementations and members; '
    'folds: six EmoBox folds of the visual LSTM as members against a Keras loop',
  )
  parser.add_argument('--epochs', type=int, default=3, help='timed epochs per model and framework')
  parser.add_argument('--num_clips', type=int, default=1248, help='synthetic clips (RAVDESS speech, 7 classes: 1,248)')
  parser.add_argument('--batch_size', type=int, default=None, help="default: configs/default.py's batch_size")
  parser.add_argument('--unroll', type=int, default=None, help="LSTM scan unroll; default: VisualLSTM's default")
  parser.add_argument('--time_bucket', type=int, default=None, help="0 = no cut; default: config's data.time_bucket")
  parser.add_argument('--max_frames', type=int, default=None, help="stored length; default: config's data.max_frames")
  parser.add_argument('--threads', type=int, default=os.cpu_count(), help='TensorFlow intra- and inter-op threads')
  parser.add_argument('--skip_keras', action='store_true', help='time emojax alone (no comparison)')
  parser.add_argument('--members', type=int, default=6, help='--mode=lstm: members of the vmapped run')
  parser.add_argument(
    '--length_chunk',
    type=int,
    default=8,
    help='--mode=lstm and folds: batches per length-sorted chunk (0: skip those runs)',
  )
  parser.add_argument('--seed', type=int, default=0)
  return parser.parse_args()


# ----------------------------------------------------------------------------- data


def synthetic_clips(num_clips: int, max_frames: int, num_audio_frames: int, seed: int) -> dict:
  """RAVDESS-sized SYNTHETIC clips laid out as `input_pipeline.load_clips` returns them, dealt to 24 actors."""
  rng = np.random.default_rng(seed)
  label = np.arange(num_clips, dtype=np.int32) % ravdess.NUM_CLASSES
  actor = (np.arange(num_clips) // ravdess.NUM_CLASSES) % ravdess.NUM_ACTORS + 1
  num_frames = rng.integers(MIN_FRAMES, min(MAX_FRAMES, max_frames) + 1, num_clips).astype(np.int32)
  visual_means = rng.standard_normal((ravdess.NUM_CLASSES, schema.VISUAL_DIM), np.float32)
  audio_means = rng.standard_normal((ravdess.NUM_CLASSES, num_audio_frames, schema.AUDIO_DIM), np.float32)
  visual = np.zeros((num_clips, max_frames, schema.VISUAL_DIM), np.float32)  # [N, max_frames, 512]
  for i, length in enumerate(num_frames):
    visual[i, :length] = 0.3 * visual_means[label[i]] + rng.standard_normal((length, schema.VISUAL_DIM), np.float32)
  audio = 0.3 * audio_means[label] + rng.standard_normal((num_clips, num_audio_frames, schema.AUDIO_DIM), np.float32)
  gender = np.array([ravdess.gender_of(int(a)) for a in actor], np.int32)
  return {'visual': visual, 'num_frames': num_frames, 'audio': audio, 'label': label, 'actor': actor, 'gender': gender}


def lstm_train_flops(time_steps: int, batch_size: int, input_dim: int, lstm_sizes) -> float:
  """Multiply-add FLOPs of one LSTM-stack training step over `time_steps` frames (dense layers left out).

  Per frame and layer: forward x W and h U; backward the same again for the weight gradients,
  h's gradient through U, and the input's gradient through W except for the first layer,
  whose input is data.
  """
  flops, dim = 0.0, input_dim
  for i, hidden in enumerate(lstm_sizes):
    forward = 2 * batch_size * (dim + hidden) * 4 * hidden
    input_gradient = 2 * batch_size * dim * 4 * hidden if i else 0
    flops += 2 * forward + 2 * batch_size * hidden * 4 * hidden + input_gradient
    dim = hidden
  return flops * time_steps


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
  """This machine's float32 matmul speed through XLA, best of a few runs, for scale."""
  a = jax.numpy.ones((size, size), jax.numpy.float32)
  matmul = jax.jit(lambda a: a @ a)
  matmul(a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best / 1e9


class Timer:
  """Wall and CPU (all threads of this process) seconds of a block."""

  def __enter__(self):
    self.wall, self.cpu = time.perf_counter(), time.process_time()
    return self

  def __exit__(self, *_):
    self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


# ----------------------------------------------------------------------------- emojax


def one_member(split: dict, config, name: str):
  """All of `split` as the training data of one member, shuffled per epoch as `emojax.experiment` shuffles it."""
  shuffle = (config.seed, 2, experiment.stage_index(name), 0)
  return input_pipeline.MemberData(split, np.arange(len(split['label'])), shuffle_seed=shuffle)


class EmojaxRunner:
  """K members of one model trained with emojax's own config, state, vmapped step and input pipeline."""

  def __init__(self, name: str, config, data: list, mesh, epochs: int, model=None):
    """Builds and compiles (timed as `compile_seconds`).

    Args:
      name: the model ('audio', 'visual', 'stacker').
      config: an emojax config.
      data: one `input_pipeline.MemberData` per member.
      mesh: `train.make_mesh()`.
      epochs: the epochs that will be timed (each batch shape they see is compiled here).
      model: a module to use instead of `models.build_model(name, ...)` (A/B of implementations).
    """
    self.name, self.config, self.data, self.mesh, self.epochs = name, config, data, mesh, epochs
    self.keys = models.MODELS[name].inputs
    self.train_fn, _, _, _ = train.jitted_steps(mesh)
    self.active = np.ones(len(data), bool)
    with Timer() as timer:
      model = model or models.build_model(name, config.model)
      example_batch = next(self._batches(epoch=0))
      keys = jax.random.split(jax.random.key(config.seed), len(data))
      state = train.create_member_states(config.optimizer, model, keys, example_batch)
      # Split on the member axis as in `train.fit`, so the first timed step does not compile again.
      self.state = jax.device_put(state, NamedSharding(mesh, P('members')))
      # The epoch's code path once on one batch of each shape the timed epochs will see
      # (visual: one per time bucket), so that every step and metric op is compiled.
      self._train(self._one_batch_per_shape())
    self.compile_seconds = timer.wall
    self.last_metrics = None

  def _batches(self, epoch: int):
    return input_pipeline.member_batches(
      self.data,
      self.config.batch_size,
      keys=self.keys,
      epoch=epoch,
      time_bucket=self.config.data.time_bucket,
      length_chunk=self.config.data.length_chunk,
    )

  def _one_batch_per_shape(self):
    seen = set()
    for epoch in range(1, self.epochs + 1):
      for batch in self._batches(epoch):
        shape = tuple(value.shape for value in batch.values())
        if shape not in seen:
          seen.add(shape)
          yield batch

  def _train(self, batches) -> dict:
    train_metrics = None
    for batch in batches:
      self.state, batch_metrics = self.train_fn(self.state, train.to_device(batch, self.mesh), self.active)
      train_metrics = batch_metrics if train_metrics is None else train_metrics.merge(batch_metrics)
    computed = train.compute_members(train_metrics)
    return {key: float(np.mean(value)) for key, value in computed.items() if np.ndim(value) == 1}

  def visual_steps_per_epoch(self) -> int:
    """Frames the LSTM steps through per epoch, summed over batches (each cut to its bucket)."""
    return sum(batch['visual'].shape[2] for batch in self._batches(1))

  def epoch(self, epoch: int) -> Timer:
    with Timer() as timer:
      self.last_metrics = self._train(self._batches(epoch))
    return timer

  def features(self) -> np.ndarray:
    """Member 0's penultimate features of its rows, in order."""
    unshuffled = [dataclasses.replace(data, shuffle_seed=None) for data in self.data]
    batches = input_pipeline.member_batches(
      unshuffled, self.config.batch_size, keys=self.keys, time_bucket=self.config.data.time_bucket
    )
    return train.predict(self.state, batches, self.mesh, [len(d.indices) for d in self.data])[0]['penultimate']


# ----------------------------------------------------------------------------- Keras


def build_keras_model(name: str, model_config, optimizer_config, num_frames: int):
  """The same model in Keras 3 (as the thesis wrote it), compiled; its penultimate layer is named."""
  import keras

  layers = keras.layers
  if name == 'audio':
    cfg = model_config.audio
    inputs = keras.Input((cfg.num_audio_frames, schema.AUDIO_DIM))
    x = layers.Flatten()(inputs)
  elif name == 'visual':
    cfg = model_config.visual
    inputs = keras.Input((num_frames, schema.VISUAL_DIM))
    x = layers.Masking(mask_value=0.0)(inputs)
    for i, size in enumerate(cfg.lstm_sizes):
      last = i == len(cfg.lstm_sizes) - 1
      x = layers.LSTM(size, return_sequences=not last, name='penultimate' if last else None)(x)
    if cfg.dropout_rate:
      x = layers.Dropout(cfg.dropout_rate)(x)
  else:
    cfg = model_config.stacker
    inputs = keras.Input((256 + model_config.visual.lstm_sizes[-1],))
    x = inputs
  if name in ('audio', 'stacker'):
    for i, width in enumerate(cfg.hidden_sizes):
      last = i == len(cfg.hidden_sizes) - 1
      x = layers.Dense(width, activation='relu', name='penultimate' if last else None)(x)
      x = layers.Dropout(cfg.dropout_rate)(x)
  outputs = layers.Dense(ravdess.NUM_CLASSES)(x)
  model = keras.Model(inputs, outputs)
  optimizer = keras.optimizers.Adamax(
    learning_rate=optimizer_config.learning_rate,
    beta_1=optimizer_config.b1,
    beta_2=optimizer_config.b2,
    epsilon=optimizer_config.eps,
  )
  loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  model.compile(optimizer=optimizer, loss=loss, metrics=['accuracy'])
  return model


class KerasRunner:
  """One model trained with `model.fit`, one epoch per call, timed by a callback."""

  def __init__(self, name: str, config, inputs: np.ndarray, labels: np.ndarray):
    import keras

    self.inputs, self.labels, self.batch_size = inputs, labels, config.batch_size
    with Timer() as timer:
      self.model = build_keras_model(name, config.model, config.optimizer, inputs.shape[1])
      # One fit on a full batch and the last, partial one: traces every shape the epochs use.
      warmup = slice(0, self.batch_size + len(labels) % self.batch_size)
      self.model.fit(inputs[warmup], labels[warmup], batch_size=self.batch_size, epochs=1, verbose=0)
    self.compile_seconds = timer.wall
    self.penultimate = keras.Model(self.model.inputs, self.model.get_layer('penultimate').output)
    self.last_metrics = None

  def epoch(self, epoch: int) -> Timer:
    import keras

    timer = Timer()

    class EpochTimer(keras.callbacks.Callback):
      def on_epoch_begin(self, *_, **__):
        timer.__enter__()

      def on_epoch_end(self, *_, **__):
        timer.__exit__()

    history = self.model.fit(
      self.inputs,
      self.labels,
      batch_size=self.batch_size,
      epochs=epoch,
      initial_epoch=epoch - 1,
      shuffle=True,
      verbose=0,
      callbacks=[EpochTimer()],
    )
    self.last_metrics = {key: float(values[-1]) for key, values in history.history.items()}
    return timer

  def features(self) -> np.ndarray:
    return self.penultimate.predict(self.inputs, batch_size=self.batch_size, verbose=0)


# ----------------------------------------------------------------------------- main


def run_stage(name, make_emojax, make_keras, epochs: int, results: dict) -> tuple:
  """Builds both runners (compile timed apart), then alternates their epochs."""
  runners = {'emojax': make_emojax()}
  if make_keras is not None:
    runners['keras'] = make_keras()
  for framework, runner in runners.items():
    results[framework][name] = {'compile': runner.compile_seconds, 'wall': [], 'cpu': []}
  for epoch in range(1, epochs + 1):
    for framework, runner in runners.items():
      timer = runner.epoch(epoch)
      results[framework][name]['wall'].append(timer.wall)
      results[framework][name]['cpu'].append(timer.cpu)
    line = '  '.join(
      f'{fw} {results[fw][name]["wall"][-1]:6.2f} s (cpu {results[fw][name]["cpu"][-1]:6.2f})' for fw in runners
    )
    print(f'  {name:8s} epoch {epoch}: {line}', flush=True)
  for framework, runner in runners.items():
    results[framework][name]['metrics'] = runner.last_metrics
  return runners


def time_features(runners_by_model: dict, framework: str) -> tuple[np.ndarray, dict]:
  """Penultimate features of every clip from both base models: a warm-up pass (compiles), then a timed one."""
  with Timer() as warmup:
    for runner in runners_by_model.values():
      runner[framework].features()
  with Timer() as timer:
    features = [runner[framework].features() for runner in runners_by_model.values()]
  timing = {'compile': warmup.wall, 'wall': [timer.wall], 'cpu': [timer.cpu]}
  return np.concatenate(features, axis=1).astype(np.float32), timing


def print_table(results: dict, num_clips: int, epochs: int) -> None:
  """Per model: compile, median epoch, clips/s, CPU seconds; the stack total; Keras / emojax ratios."""
  frameworks = list(results)
  columns = f'{"compile s":>10s} {"epoch s":>8s} {"clips/s":>8s} {"cpu s":>7s}'
  print('\n' + ' ' * 10 + ''.join(f' | {fw:^36s}' for fw in frameworks) + (' | speedup' if len(frameworks) > 1 else ''))
  print(f'{"":10s}' + f' | {columns}' * len(frameworks) + (' | Keras/emojax' if len(frameworks) > 1 else ''))
  stack = {fw: [0.0, 0.0, 0.0] for fw in frameworks}  # compile, wall, cpu
  for name in (*MODELS[:2], 'features', MODELS[2]):
    row, median_wall = f'{name:10s}', {}
    for fw in frameworks:
      r = results[fw][name]
      median_wall[fw] = statistics.median(r['wall'])
      stack[fw][0] += r['compile']
      stack[fw][1] += sum(r['wall'])
      stack[fw][2] += sum(r['cpu'])
      cpu = statistics.median(r['cpu'])
      row += f' | {r["compile"]:10.1f} {median_wall[fw]:8.2f} {num_clips / median_wall[fw]:8.0f} {cpu:7.2f}'
    if len(frameworks) > 1:
      row += f' | {median_wall["keras"] / median_wall["emojax"]:6.2f}x'
    print(row)
  row = f'{"stack":10s}'
  for fw in frameworks:
    row += f' | {stack[fw][0]:10.1f} {stack[fw][1]:8.2f} {"":8s} {stack[fw][2]:7.2f}'
  if len(frameworks) > 1:
    row += f' | {stack["keras"][1] / stack["emojax"][1]:6.2f}x'
  print(row)
  print(
    f'epoch s, cpu s: median over the {epochs} timed epochs (features: one pass over every clip through both base '
    f'models); stack: total seconds of {epochs} epochs of each model plus the feature pass, compile excluded; '
    'compile s: emojax init + compile + one step per batch shape, Keras build + compile + tracing fit (or the '
    'warm-up pass for features); cpu s: CPU seconds of all threads.'
  )


class LegacyVisualLSTM(nn.Module):
  """emojax's visual model before Keras' initialisers and the hand-written gradient: Flax's nn.RNN over
  OptimizedLSTMCell, `seq_lengths` masking. Kept here only as the baseline of `--mode=lstm`."""

  lstm_sizes: tuple = (200, 100)
  num_classes: int = ravdess.NUM_CLASSES

  @nn.compact
  def __call__(self, batch: dict, *, train: bool):
    visual = jnp.asarray(batch['visual'], jnp.float32)
    num_frames = jnp.maximum(jnp.asarray(batch['num_frames'], jnp.int32), 1)
    is_real = jnp.arange(visual.shape[1])[None, :] < num_frames[:, None]
    x = jnp.where(is_real[..., None], visual, 0.0)
    for i, size in enumerate(self.lstm_sizes):
      lstm = nn.RNN(nn.OptimizedLSTMCell(features=size, name=f'lstm_{i}'), return_carry=True)
      (_, last_hidden), x = lstm(x, seq_lengths=num_frames)
    return nn.Dense(self.num_classes, name='head')(last_hidden), last_hidden


def alternate(runners: dict, epochs: int) -> dict:
  """Epochs of each runner in turn (A B C A B C ...); returns each one's median epoch seconds."""
  walls = {name: [] for name in runners}
  for epoch in range(1, epochs + 1):
    for name, runner in runners.items():
      walls[name].append(runner.epoch(epoch).wall)
    print('  epoch ' + str(epoch) + ': ' + ', '.join(f'{n} {w[-1]:.2f} s' for n, w in walls.items()), flush=True)
  return {name: statistics.median(values) for name, values in walls.items()}


def lstm_mode(args, config, clips, mesh) -> None:
  """One member's visual LSTM: the old Flax layer, the new scan under autodiff, the hand-written gradient; and K members."""
  visual = config.model.visual
  variants = {
    'flax nn.RNN (before)': LegacyVisualLSTM(tuple(visual.lstm_sizes)),
    'scan, autodiff': models.VisualLSTM(tuple(visual.lstm_sizes), scan=models.lstm_scan_autodiff),
    'scan, custom_vjp': models.VisualLSTM(tuple(visual.lstm_sizes), scan=models.lstm_scan),
  }
  member = one_member(clips, config, 'visual')
  runners = {}
  for name, model in variants.items():
    runners[name] = EmojaxRunner('visual', config, [member], mesh, args.epochs, model=model)
    print(f'{name}: compiled in {runners[name].compile_seconds:.1f} s', flush=True)
  members = [dataclasses.replace(member, shuffle_seed=(config.seed, 2, 1, k)) for k in range(args.members)]
  runners[f'{args.members} members, custom_vjp'] = EmojaxRunner('visual', config, members, mesh, args.epochs)
  if args.length_chunk:
    chunked = ml_collections.ConfigDict(config.to_dict())
    chunked.data.length_chunk = args.length_chunk
    runners[f'custom_vjp, length chunks of {args.length_chunk}'] = EmojaxRunner(
      'visual', chunked, [member], mesh, args.epochs
    )
    runners[f'{args.members} members, length chunks'] = EmojaxRunner('visual', chunked, members, mesh, args.epochs)
  medians = alternate(runners, args.epochs)
  base = medians['flax nn.RNN (before)']
  print(f'\nvisual LSTM, one epoch of {args.num_clips} clips (median of {args.epochs}); speed-up over the old layer:')
  for name, seconds in medians.items():
    per_member = seconds / (args.members if 'members' in name else 1)
    print(f'  {name:34s} {seconds:7.2f} s   per member {per_member:6.2f} s   {base / per_member:5.2f}x')


def folds_mode(args, config, clips, mesh) -> None:
  """Six EmoBox folds of the visual LSTM: six members in one program against Keras' fit looped over the folds."""
  fold_config = ml_collections.ConfigDict(config.to_dict())
  fold_config.models = ('visual',)  # No stacker: each fold's base partition is every actor it does not test.
  fold_config.data.protocol = 'actor_folds'
  folds = partitions.make_folds(clips, fold_config)
  data = [
    input_pipeline.MemberData(clips, fold.parts['base_train'], shuffle_seed=(config.seed, 2, 1, fold.index))
    for fold in folds
  ]
  print(f'{len(folds)} folds, base partitions of {[len(d.indices) for d in data]} clips', flush=True)
  with Timer() as one:
    runner = EmojaxRunner('visual', config, data[:1], mesh, args.epochs)
    for epoch in range(1, args.epochs + 1):
      runner.epoch(epoch)
  print(f'emojax, one member (fold 0): {one.wall:.1f} s (compile {runner.compile_seconds:.1f} s)', flush=True)
  with Timer() as six:
    runner = EmojaxRunner('visual', config, data, mesh, args.epochs)
    for epoch in range(1, args.epochs + 1):
      runner.epoch(epoch)
  print(f'emojax, {len(data)} members in one program: {six.wall:.1f} s (compile {runner.compile_seconds:.1f} s)')
  chunked = None
  if args.length_chunk:
    chunked_config = ml_collections.ConfigDict(config.to_dict())
    chunked_config.data.length_chunk = args.length_chunk
    with Timer() as chunked:
      runner = EmojaxRunner('visual', chunked_config, data, mesh, args.epochs)
      for epoch in range(1, args.epochs + 1):
        runner.epoch(epoch)
    print(f'emojax, {len(data)} members, length chunks of {args.length_chunk}: {chunked.wall:.1f} s', flush=True)
  if args.skip_keras:
    return
  longest = int(clips['num_frames'].max())
  with Timer() as loop:
    for fold_data in data:
      inputs = np.ascontiguousarray(clips['visual'][fold_data.indices, :longest])
      model = build_keras_model('visual', config.model, config.optimizer, longest)
      model.fit(inputs, clips['label'][fold_data.indices], batch_size=config.batch_size, epochs=args.epochs, verbose=0)
  print(f'Keras model.fit looped over the {len(data)} folds: {loop.wall:.1f} s (build and compile included)')
  print(
    f'\n{args.epochs} epochs per fold, compile included: Keras loop / emojax members {loop.wall / six.wall:.2f}x; '
    f'emojax {len(data)} members / one member {six.wall / one.wall:.2f}x'
  )
  if chunked is not None:
    print(
      f'with length chunks of {args.length_chunk} (data.length_chunk): Keras loop / emojax members '
      f'{loop.wall / chunked.wall:.2f}x; emojax {len(data)} members / one member {chunked.wall / one.wall:.2f}x'
    )


def main():
  args = parse_args()
  config = default_config.get_config()
  if args.batch_size:
    config.batch_size = args.batch_size
  if args.time_bucket is not None:
    config.data.time_bucket = args.time_bucket or None
  if args.max_frames:
    config.data.max_frames = args.max_frames
  if args.unroll:
    config.model.visual.unroll = args.unroll
  config.seed = args.seed
  unroll = config.model.visual.get('unroll', models.VisualLSTM.unroll)

  jax.config.update('jax_platforms', 'cpu')
  if not args.skip_keras:
    import keras
    import tensorflow as tf

    tf.config.set_visible_devices([], 'GPU')
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    keras_line = f'Keras {keras.__version__} (TensorFlow {tf.__version__}, {args.threads} intra/inter-op threads)'
  else:
    keras_line = 'Keras skipped'

  print(
    f'SYNTHETIC data: {args.num_clips} clips, {MIN_FRAMES}-{MAX_FRAMES} frames, batch {config.batch_size}, '
    f'{args.epochs} timed epochs per model\n'
    f'emojax: jax {jax.__version__} on {jax.devices()}, time axis stored at {config.data.max_frames} and cut per '
    f'batch to a multiple of {config.data.time_bucket}, LSTM unroll {unroll}\n'
    f'{keras_line}, time axis padded to the longest clip\n'
    f'{os.cpu_count()} CPU cores; load average at start {os.getloadavg()[0]:.1f}',
    flush=True,
  )
  with Timer() as data_timer:
    clips = synthetic_clips(args.num_clips, config.data.max_frames, config.model.audio.num_audio_frames, args.seed)
    longest = int(clips['num_frames'].max())
    keras_visual = np.ascontiguousarray(clips['visual'][:, :longest])  # What pad_sequences would give.
  print(f'data: {data_timer.wall:.1f} s', flush=True)

  mesh = train.make_mesh()
  if args.mode != 'epochs':
    {'lstm': lstm_mode, 'folds': folds_mode}[args.mode](args, config, clips, mesh)
    print(f'load average at end {os.getloadavg()[0]:.1f}')
    return
  results = {'emojax': {}} if args.skip_keras else {'emojax': {}, 'keras': {}}
  keras_inputs = {'audio': clips['audio'], 'visual': keras_visual}
  runners = {}
  with Timer() as total:
    for name in MODELS[:2]:
      print(f'{name}: compiling', flush=True)
      runners[name] = run_stage(
        name,
        lambda name=name: EmojaxRunner(name, config, [one_member(clips, config, name)], mesh, args.epochs),
        None if args.skip_keras else lambda name=name: KerasRunner(name, config, keras_inputs[name], clips['label']),
        args.epochs,
        results,
      )
    print('features: one warm-up pass, one timed pass', flush=True)
    stacker_splits = {}
    for framework, timings in results.items():
      features, timings['features'] = time_features(runners, framework)
      stacker_splits[framework] = {'features': features, 'label': clips['label']}
    print('stacker: compiling', flush=True)
    runners['stacker'] = run_stage(
      'stacker',
      lambda: EmojaxRunner(
        'stacker', config, [one_member(stacker_splits['emojax'], config, 'stacker')], mesh, args.epochs
      ),
      None
      if args.skip_keras
      else lambda: KerasRunner('stacker', config, stacker_splits['keras']['features'], clips['label']),
      args.epochs,
      results,
    )

  print_table(results, args.num_clips, args.epochs)
  for fw in results:
    final = ', '.join(
      f'{name} loss {results[fw][name]["metrics"]["loss"]:.3f} acc {results[fw][name]["metrics"]["accuracy"]:.3f}'
      for name in MODELS
    )
    print(f'{fw} training metrics of the last epoch: {final}')
  if 'keras' in results:
    frames = {
      'emojax': runners['visual']['emojax'].visual_steps_per_epoch(),
      'keras': input_pipeline.num_batches(args.num_clips, config.batch_size) * longest,
    }
    lstm_sizes = config.model.visual.lstm_sizes
    speeds = ', '.join(
      f'{fw} {lstm_train_flops(frames[fw], config.batch_size, schema.VISUAL_DIM, lstm_sizes) / 1e9:.0f} GFLOP in '
      f'{statistics.median(results[fw]["visual"]["wall"]):.1f} s = '
      f'{lstm_train_flops(frames[fw], config.batch_size, schema.VISUAL_DIM, lstm_sizes) / 1e9 / statistics.median(results[fw]["visual"]["wall"]):.0f} GFLOP/s'
      for fw in results
    )
    print(
      f'visual LSTM matmul work per epoch: {speeds}; float32 matmul (2048^3, XLA) here: {matmul_gflops():.0f} GFLOP/s'
    )
  print(f'load average at end {os.getloadavg()[0]:.1f}; whole bench {total.wall + data_timer.wall:.0f} s')


if __name__ == '__main__':
  main()

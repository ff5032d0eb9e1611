r"""Does emojax learn as well as the thesis' Keras models? Both, side by side, on the same data.

  python bench/parity.py --data_dir=TFRECORDS [--seeds=0,1,2] [--config=configs/stack.py] [--override=k=v ...]
  python bench/parity.py --fake [--fake_frames=40,80]   # a RAVDESS-sized FAKE set (1,248 clips), written once

For each seed, on the same schema-v1 directory:
  emojax: `emojax.experiment.run` with the config (the whole stack: audio MLP, visual LSTM,
    stacker), in a fresh workdir, timed end to end: reading the data, compile, training with
    early stopping, checkpoints, the stacker's features, evaluation and the report.
  Keras 3: the thesis' models as `bench/train_bench.py` builds them (Dense/LSTM with Keras'
    own initialisers, Masking before the LSTMs), trained with `model.fit(batch_size, epochs=
    num_epochs, shuffle=True)` and `EarlyStopping(monitor='val_loss', patience, restore_best_
    weights=True)` on EXACTLY the partitions emojax drew (its partitions.json), scaled by the
    statistics emojax saved for each stage (none by default); the stacker on the Keras base
    models' own penultimate features. Timed from building the models to the test accuracy.

--paired takes the seeds' noise out, to test the two implementations' arithmetic: Keras then
starts from emojax's initial weights (each member's own, from its seed) and trains on emojax's
batches in emojax's order (model.fit once per epoch on the rows emojax's batches hold, early
stopping as Keras' EarlyStopping does it), and dropout is off on both sides (its masks cannot
be shared). The two sides should then agree up to float rounding, seed by seed.

Printed: per seed and model both test accuracies, then mean ± std (sample std) over the
seeds, and each side's wall time. Random embeddings from `emojax.fake_records` are not
RAVDESS: this measures whether the two implementations learn alike, not emotion recognition.
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
import json
import shutil
import statistics
import tempfile
import time

import jax
import numpy as np

from emojax import experiment, fake_records, input_pipeline, models, partitions, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument('--data_dir', help='schema-v1 TFRecords (data_prep output or fake records)')
  parser.add_argument('--fake', action='store_true', help='write a RAVDESS-sized FAKE set into --work_dir and use it')
  parser.add_argument('--fake_frames', default='40,80', help='frame range of the fake clips')
  parser.add_argument('--fake_separation', type=float, default=0.25, help='class signal of the fake clips (audio)')
  parser.add_argument('--fake_visual_separation', type=float, default=0.15, help='class signal of the fake frames')
  parser.add_argument(
    '--config', default=os.path.join(REPO, 'configs', 'stack.py'), help='emojax config file, optionally FILE:ARG'
  )
  parser.add_argument('--override', action='append', default=[], help='config override KEY=VALUE (repeatable)')
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--work_dir', default=os.path.join(tempfile.gettempdir(), 'emojax_parity'))
  parser.add_argument('--skip_keras', action='store_true')
  parser.add_argument(
    '--paired', action='store_true', help="Keras starts from emojax's weights and sees its batches; no dropout"
  )
  return parser.parse_args()


def load_config(args, data_dir: str, seed: int):
  import importlib.util

  import ml_collections

  path, _, argument = args.config.partition(':')  # configs/stack.py:demo, as --config takes it.
  spec = importlib.util.spec_from_file_location('parity_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(argument or None)
  config.data.dir = data_dir
  config.seed = seed
  config.log_every_secs = 1e9
  if args.paired:  # Dropout masks cannot be shared between the two frameworks.
    for name in models.MODELS:
      config.model[name].dropout_rate = 0.0
  for override in args.override:
    key, value = override.split('=', 1)
    node = config
    *parents, leaf = key.split('.')
    for parent in parents:
      node = node[parent]
    node[leaf] = type(node[leaf])(json.loads(value)) if not isinstance(node[leaf], str) else value
  assert isinstance(config, ml_collections.ConfigDict)
  return config


# ----------------------------------------------------------------------------- Keras


def keras_split(clips: dict, indices: np.ndarray, name: str, longest: int, statistics: dict) -> tuple:
  """(inputs, labels) of one partition for Keras' model `name`, scaled as emojax scaled it."""
  split = input_pipeline.normalize(input_pipeline.take(clips, indices), statistics)
  if name == 'visual':
    return split['visual'][:, :longest], split['label']  # Zero-padded at the end, like pad_sequences(padding='post').
  return split['audio'], split['label']


def keras_fit(model, train: tuple, val: tuple, config) -> int:
  """`model.fit` with the thesis' early stopping; the best epoch's weights are restored either way."""
  import keras

  stopping = keras.callbacks.EarlyStopping(monitor='val_loss', patience=config.patience, restore_best_weights=True)
  history = model.fit(
    train[0],
    train[1],
    batch_size=config.batch_size,
    epochs=config.num_epochs,
    shuffle=True,
    validation_data=val,
    callbacks=[stopping],
    verbose=0,
  )
  if stopping.best_weights is not None:  # Keras restores them only when it stopped early.
    model.set_weights(stopping.best_weights)
  return int(np.argmin(history.history['val_loss'])) + 1


def keras_fit_paired(model, train: tuple, val: tuple, config, shuffle_seed: tuple) -> int:
  """`model.fit` on emojax's batches: each epoch's rows in the order emojax's member draws them.

  One `fit` call per epoch (the optimizer's step count carries over), with EarlyStopping's
  rule done here: the lowest val_loss so far is kept, and `patience` epochs without a lower
  one stop training.
  """
  member = input_pipeline.MemberData({'label': train[1]}, np.arange(len(train[1])), shuffle_seed=shuffle_seed)
  best_loss, best_epoch, best_weights, bad_epochs = np.inf, 0, model.get_weights(), 0
  for epoch in range(1, config.num_epochs + 1):
    order = np.concatenate(member.batch_rows(epoch, config.batch_size))
    history = model.fit(
      train[0][order],
      train[1][order],
      batch_size=config.batch_size,
      shuffle=False,
      validation_data=val,
      verbose=0,
    )
    val_loss = history.history['val_loss'][-1]
    if val_loss < best_loss:
      best_loss, best_epoch, best_weights, bad_epochs = val_loss, epoch, model.get_weights(), 0
    else:
      bad_epochs += 1
      if bad_epochs >= config.patience:
        break
  model.set_weights(best_weights)
  return best_epoch


def emojax_initial_weights(config, name: str, member, arrays: dict) -> list[np.ndarray]:
  """Member `member`'s initial parameters of stage `name`, as emojax draws them, in Keras' `get_weights` order."""
  model = models.build_model(name, config.model, len(partitions.class_names(config)))
  data = [input_pipeline.MemberData(arrays, np.arange(len(arrays['label'])))]
  example = next(
    input_pipeline.member_batches(
      data, config.batch_size, keys=models.MODELS[name].inputs, time_bucket=config.data.time_bucket
    )
  )
  key = experiment.member_key(member, name)[None]
  params = jax.tree.map(
    lambda x: np.asarray(x[0]), train.create_member_states(config.optimizer, model, key, example).params
  )
  if name == 'visual':  # Keras' LSTM holds kernel, recurrent_kernel, bias; Dense kernel, bias.
    layers, leaves = (
      [f'lstm_{i}' for i in range(len(config.model.visual.lstm_sizes))],
      ('kernel', 'recurrent_kernel', 'bias'),
    )
  else:
    layers, leaves = [f'hidden_{i}' for i in range(len(config.model[name].hidden_sizes))], ('kernel', 'bias')
  return [params[layer][leaf] for layer in layers for leaf in leaves] + [
    params['head']['kernel'],
    params['head']['bias'],
  ]


def keras_run(config, clips: dict, member, workdir: str, *, paired: bool) -> dict:
  """The thesis' stack in Keras 3 on emojax's partitions; returns test accuracies and best epochs.

  `paired`: each model starts from emojax's initial weights for `member` and trains on its batches.
  """
  import keras
  import train_bench  # bench/train_bench.py, beside this file.

  keras.utils.set_random_seed(member.seed)
  fold = member.fold.parts

  def fit(model, name, train_split, val_split, arrays):
    if not paired:
      return keras_fit(model, train_split, val_split, config)
    model.set_weights(emojax_initial_weights(config, name, member, arrays))
    return keras_fit_paired(model, train_split, val_split, config, experiment.shuffle_seed(member, name))

  longest = int(clips['num_frames'].max())
  results, penultimate = {}, {}
  for name in models.BASE_MODELS:
    _, (statistics,) = input_pipeline.load_normalization(os.path.join(workdir, name, 'normalization.npz'))
    data = {p: keras_split(clips, fold[p], name, longest, statistics) for p in partitions.PARTITIONS}
    model = train_bench.build_keras_model(name, config.model, config.optimizer, longest)
    arrays = input_pipeline.take(clips, fold['base_train'])
    best_epoch = fit(model, name, data['base_train'], data['base_val'], arrays)
    _, accuracy = model.evaluate(*data['test'], batch_size=config.batch_size, verbose=0)
    results[name] = {'accuracy': float(accuracy), 'best_epoch': best_epoch}
    cut = keras.Model(model.inputs, model.get_layer('penultimate').output)
    penultimate[name] = {
      p: cut.predict(data[p][0], batch_size=config.batch_size, verbose=0) for p in ('stack_train', 'stack_val', 'test')
    }
  features = {
    p: {'features': np.concatenate([penultimate[name][p] for name in models.BASE_MODELS], axis=1).astype(np.float32)}
    for p in ('stack_train', 'stack_val', 'test')
  }
  statistics = input_pipeline.normalization_statistics(features['stack_train'], ('features',), config.data.normalize)
  data = {p: (input_pipeline.normalize(features[p], statistics)['features'], clips['label'][fold[p]]) for p in features}
  model = train_bench.build_keras_model('stacker', config.model, config.optimizer, longest)
  arrays = {'features': data['stack_train'][0], 'label': data['stack_train'][1]}
  best_epoch = fit(model, 'stacker', data['stack_train'], data['stack_val'], arrays)
  _, accuracy = model.evaluate(*data['test'], batch_size=config.batch_size, verbose=0)
  results['stacker'] = {'accuracy': float(accuracy), 'best_epoch': best_epoch}
  return results


# ----------------------------------------------------------------------------- main


def mean_std(values) -> str:
  std = statistics.stdev(values) if len(values) > 1 else 0.0
  return f'{statistics.mean(values):.3f} ± {std:.3f}'


def main():
  args = parse_args()
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

  jax.config.update('jax_platforms', 'cpu')
  import tensorflow as tf

  tf.config.set_visible_devices([], 'GPU')
  data_dir = args.data_dir
  if args.fake:
    low, high = (int(x) for x in args.fake_frames.split(','))
    data_dir = os.path.join(args.work_dir, f'fake_{low}_{high}_{args.fake_separation}_{args.fake_visual_separation}')
    if not os.path.exists(os.path.join(data_dir, 'dataset_info.json')):
      fake_records.write_fake_dataset(
        data_dir,
        num_actors=24,
        clips_per_actor=52,
        min_frames=low,
        max_frames=high,
        num_shards=8,
        separation=args.fake_separation,
        visual_separation=args.fake_visual_separation,
      )
  if not data_dir:
    raise SystemExit('parity: pass --data_dir=TFRECORDS or --fake.')
  seeds = [int(s) for s in args.seeds.split(',')]
  rows = {'emojax': {m: [] for m in models.MODELS}, 'keras': {m: [] for m in models.MODELS}}
  wall = {'emojax': [], 'keras': []}
  paired = ' PAIRED (same initial weights and batches, no dropout)' if args.paired else ''
  print(f'data: {data_dir}; config {args.config} {args.override}; seeds {seeds}{paired}', flush=True)
  for seed in seeds:
    config = load_config(args, data_dir, seed)
    if args.paired and config.data.length_chunk:
      # Keras' fit cuts an epoch's rows into consecutive batches; length chunks can put a short batch mid-epoch.
      raise SystemExit('parity: --paired needs data.length_chunk=0 (random batches, the default).')
    workdir = os.path.join(args.work_dir, f'emojax_seed{seed}')
    shutil.rmtree(workdir, ignore_errors=True)
    start = time.perf_counter()
    report = experiment.run(config, workdir)
    wall['emojax'].append(time.perf_counter() - start)
    for name in models.MODELS:
      rows['emojax'][name].append(report[name]['accuracy'])
    line = f'seed {seed}: emojax {wall["emojax"][-1]:.0f} s ' + ', '.join(
      f'{m} {report[m]["accuracy"]:.3f} (epoch {report[m]["best_epoch"]})' for m in models.MODELS
    )
    if not args.skip_keras:
      clips, _ = input_pipeline.load_clips(config)
      (fold,) = partitions.make_folds(clips, config)
      with open(os.path.join(workdir, experiment.PARTITIONS_FILENAME)) as f:
        (drawn,) = json.load(f)['folds']
      assert all(sorted(clips['clip_id'][fold.parts[p]].tolist()) == ids for p, ids in drawn['clip_ids'].items())
      start = time.perf_counter()
      keras_results = keras_run(config, clips, experiment.Member(fold, seed), workdir, paired=args.paired)
      wall['keras'].append(time.perf_counter() - start)
      for name in models.MODELS:
        rows['keras'][name].append(keras_results[name]['accuracy'])
      line += f' | keras {wall["keras"][-1]:.0f} s ' + ', '.join(
        f'{m} {keras_results[m]["accuracy"]:.3f} (epoch {keras_results[m]["best_epoch"]})' for m in models.MODELS
      )
    print(line, flush=True)

  sides = ['emojax'] if args.skip_keras else ['emojax', 'keras']
  print(f'\ntest accuracy, mean ± std over seeds {seeds}')
  print(f'{"model":<8} ' + ' '.join(f'{side:>15}' for side in sides) + ('   emojax - keras' if len(sides) > 1 else ''))
  for name in models.MODELS:
    line = f'{name:<8} ' + ' '.join(f'{mean_std(rows[side][name]):>15}' for side in sides)
    if len(sides) > 1:
      difference = round(statistics.mean(rows['emojax'][name]) - statistics.mean(rows['keras'][name]), 3) + 0.0
      line += f'   {difference:+.3f}'  # + 0.0: no '-0.000' for equal means.
    print(line)
  print(
    'wall s per seed (whole stack; emojax: data read, compile, checkpoints and evaluation included; Keras: build, '
    'fit, predict, evaluate): ' + ', '.join(f'{side} {mean_std(wall[side])}' for side in sides)
  )


if __name__ == '__main__':
  main()

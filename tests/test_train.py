"""Tests for emojax.train and emojax.experiment: steps, end-to-end stacking, eval-only, resume, devices, failures.

One tiny stacking run on fake schema-v1 TFRecords (6 actors x 28 clips) is shared by most
tests; later runs in the same process reuse its compiled steps.
"""

import dataclasses
import glob
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import stack
from emojax import experiment, fake_records, input_pipeline, models, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(data_dir, **overrides):
  """The smoke config, shrunk further: one time bucket, 10 epochs of small models."""
  config = stack.get_config('smoke')
  config.data.dir = str(data_dir)
  config.data.max_frames = 32
  config.data.time_bucket = 32  # One visual shape: one compile per step function.
  config.num_epochs = 10
  config.patience = 4
  config.batch_size = 16
  config.optimizer.learning_rate = 3e-3
  config.log_every_secs = 1e6
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return fake_records.write_fake_dataset(
    str(tmp_path_factory.mktemp('data')), num_actors=6, clips_per_actor=28, min_frames=8, max_frames=32
  )


@pytest.fixture(scope='module')
def trained(data_dir, tmp_path_factory):
  """(workdir, report) of one uninterrupted stacking run."""
  workdir = str(tmp_path_factory.mktemp('run'))
  return workdir, experiment.run(tiny_config(data_dir), workdir)


def test_stacking_end_to_end_beats_chance_and_writes_report(trained):
  workdir, report = trained
  with open(os.path.join(workdir, 'report.json')) as f:
    written = json.load(f)
  assert written == json.loads(json.dumps(report))
  for name in ('audio', 'visual', 'stacker'):
    summary = written[name]
    assert set(summary) >= {'accuracy', 'macro_f1', 'per_class_recall', 'confusion_matrix'}
    assert np.array(summary['confusion_matrix']).shape == (7, 7)
    assert np.array(summary['confusion_matrix']).sum() == written['partitions']['test'] == 42
    best = written['training'][name]['history'][summary['best_epoch'] - 1]
    assert best['epoch'] == summary['best_epoch'] and summary['train_accuracy'] == best['train_accuracy'] > 0
  assert written['stacker']['accuracy'] > 0.5  # Chance is 1/7.
  assert written['protocol'] == 'random' and written['seed'] == 0
  assert sum(written['partitions'].values()) == 6 * 28
  import tensorflow as tf  # Already loaded by the input pipeline; reads the TensorBoard events.

  for name in ('audio', 'visual', 'stacker'):
    tags = set()
    for path in glob.glob(os.path.join(workdir, name, 'events.out.tfevents.*')):
      tags |= {value.tag for event in tf.compat.v1.train.summary_iterator(path) for value in event.summary.value}
    expected = {'train_loss', 'train_accuracy', 'val_loss', 'val_accuracy', 'test_accuracy', 'steps_per_sec'}
    expected |= {'val_confusion_matrix', 'test_confusion_matrix', '_hparams_/session_start_info'}
    assert expected <= tags, (name, tags)
    assert os.path.exists(os.path.join(workdir, name, train.DONE_FILENAME))
  assert sorted(os.listdir(os.path.join(workdir, 'features'))) == ['stack_train.npz', 'stack_val.npz', 'test.npz']
  with np.load(os.path.join(workdir, 'features', 'test.npz')) as features:
    assert features['features'].shape == (42, 32 + 16)  # audio (64, 32) + visual (32, 16) penultimates.


def test_eval_only_reproduces_report(trained, data_dir):
  workdir, report = trained
  with open(os.path.join(workdir, 'report.json')) as f:
    before = f.read()
  again = experiment.run(tiny_config(data_dir, mode='eval'), workdir)
  assert again == report
  with open(os.path.join(workdir, 'report.json')) as f:
    assert f.read() == before


def test_eval_without_checkpoints_is_a_clear_error(data_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match=r"No checkpoints for stage 'audio' in .*train first"):
    experiment.run(tiny_config(data_dir, mode='eval'), str(tmp_path))


def test_interrupted_run_resumes_to_the_same_report(trained, data_dir, tmp_path, monkeypatch):
  _, uninterrupted = trained
  workdir = str(tmp_path)
  fit = train.fit
  visual_evals = []

  def interrupt_in_visual_epoch_3(config, stage, mesh):
    if stage.name == 'visual':
      val_batches = stage.val_batches

      def counting_val_batches():
        visual_evals.append(1)
        if len(visual_evals) == 3:  # After epoch 3's training, before its checkpoint: like a kill.
          raise KeyboardInterrupt
        return val_batches()

      stage = dataclasses.replace(stage, val_batches=counting_val_batches)
    return fit(config, stage, mesh)

  monkeypatch.setattr(train, 'fit', interrupt_in_visual_epoch_3)
  with pytest.raises(KeyboardInterrupt):
    experiment.run(tiny_config(data_dir), workdir)
  monkeypatch.undo()
  assert os.path.exists(os.path.join(workdir, 'audio', train.DONE_FILENAME))
  assert not os.path.exists(os.path.join(workdir, 'visual', train.DONE_FILENAME))
  assert not os.path.exists(os.path.join(workdir, 'report.json'))
  resumed = experiment.run(tiny_config(data_dir), workdir)
  assert resumed == uninterrupted


def test_four_devices_give_the_same_losses(trained, data_dir, tmp_path):
  _, report = trained
  config = tiny_config(data_dir, models=('audio', 'visual'), num_epochs=2)
  script = (
    'import json, sys, jax, ml_collections\n'
    'from emojax import experiment\n'
    'assert jax.device_count() == 4, jax.devices()\n'
    'config = ml_collections.ConfigDict(json.loads(sys.argv[1]))\n'
    'report = experiment.run(config, sys.argv[2])\n'
    'print("TRAINING=" + json.dumps(report["training"]))\n'
  )
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4', JAX_PLATFORMS='cpu')
  env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
  result = subprocess.run(
    [sys.executable, '-c', script, config.to_json(), str(tmp_path)],
    env=env,
    capture_output=True,
    text=True,
    cwd=REPO,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  line = next(line for line in result.stdout.splitlines() if line.startswith('TRAINING='))
  four = json.loads(line[len('TRAINING=') :])
  for name in ('audio', 'visual'):
    one_device = report['training'][name]['history'][:2]
    for epoch_one, epoch_four in zip(one_device, four[name]['history'], strict=True):
      for key in ('train_loss', 'val_loss'):
        assert epoch_four[key] == pytest.approx(epoch_one[key], abs=1e-5), (name, key)


def test_nan_loss_stops_with_a_clear_message(data_dir, tmp_path):
  config = tiny_config(data_dir, models=('audio',), num_epochs=3)
  config.optimizer.learning_rate = 1e30
  with pytest.raises(FloatingPointError, match=r"Stage 'audio': the (training|validation) loss is (nan|inf)"):
    experiment.run(config, str(tmp_path))
  assert not os.path.exists(os.path.join(str(tmp_path), 'audio', train.DONE_FILENAME))


def _one_batch(name, data_dir, config):
  if name == 'stacker':
    rng = np.random.default_rng(0)
    split = {'features': rng.normal(size=(16, 48)).astype(np.float32), 'label': np.arange(16, dtype=np.int32) % 7}
  else:
    clips, _ = input_pipeline.load_clips(config)
    split = input_pipeline.take(clips, np.arange(16))
  return next(input_pipeline.batches(split, 16, keys=models.MODELS[name].inputs, time_bucket=config.data.time_bucket))


@pytest.mark.parametrize('name', ['audio', 'visual', 'stacker'])
def test_one_step_changes_every_parameter(name, data_dir):
  config = tiny_config(data_dir)
  model = models.build_model(name, config.model)
  batch = _one_batch(name, data_dir, config)
  state = train.create_train_state(config.optimizer, model, jax.random.key(0), batch)
  mesh = train.make_mesh()
  train_fn, _, _ = train.jitted_steps(mesh)
  before = jax.device_get(state.params)
  new_state, batch_metrics = train_fn(state, train.to_device(batch, mesh), jax.random.key(1))
  after = jax.device_get(new_state.params)
  changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), before, after)
  assert all(jax.tree.leaves(changed)), changed
  assert int(new_state.step) == 1
  assert np.isfinite(float(batch_metrics.compute()['loss']))


def test_nan_in_a_later_epoch_keeps_the_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
  config = tiny_config(data_dir, models=('audio',), num_epochs=4, patience=4)
  real_evaluate = train.evaluate
  calls = []

  def evaluate_with_nan_from_epoch_two(*args, **kwargs):
    result = real_evaluate(*args, **kwargs)
    calls.append(result)
    return dict(result, loss=float('nan')) if len(calls) >= 2 else result

  monkeypatch.setattr(train, 'evaluate', evaluate_with_nan_from_epoch_two)
  with pytest.raises(FloatingPointError, match=r'validation loss is nan in epoch 2.*\(epoch 1\) is kept'):
    experiment.run(config, str(tmp_path))
  with train._checkpoint_manager(str(tmp_path / 'audio'), read_only=True) as manager:
    assert manager.all_steps() == [1]
    meta = manager.restore(1, args=train.ocp.args.Composite(meta=train.ocp.args.JsonRestore()))['meta']
  assert calls[0]['loss'] == pytest.approx(meta['best_val_loss'])

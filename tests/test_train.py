"""Tests for emojax.train and emojax.experiment: steps, members, folds, eval-only, resume, devices, failures.

Two tiny runs on fake schema-v1 TFRecords (6 actors x 28 clips) are shared by most tests:
the thesis' single split (one member) and 3 actor folds x 2 seeds (six members); later
runs in the same process reuse their compiled steps.
"""

import dataclasses
import glob
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import stack
from emojax import experiment, fake_records, input_pipeline, models, report, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDS = ((1, 2), (3, 4), (5, 6))


def tiny_config(data_dir, **overrides):
  """The smoke config, shrunk further: one time bucket, 10 epochs of small models, a checkpoint every epoch."""
  config = stack.get_config('smoke')
  config.data.dir = str(data_dir)
  config.data.max_frames = 32
  config.data.time_bucket = 32  # One visual shape: one compile per step function.
  config.num_epochs = 10
  config.patience = 4
  config.batch_size = 16
  config.optimizer.learning_rate = 3e-3
  config.log_every_secs = 1e6
  config.checkpoint_every_secs = 0.0
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def folds_config(data_dir, **overrides):
  # A fast learning rate and patience 1: members stop early, at epochs of their own.
  defaults = {
    'data.protocol': 'actor_folds',
    'data.folds': FOLDS,
    'seeds': (0, 1),
    'patience': 1,
    'optimizer.learning_rate': 0.02,
  }
  return tiny_config(data_dir, **{**defaults, **overrides})


def results(content: dict) -> dict:
  """A report without its provenance (the date and wall times of the run that wrote it)."""
  return {key: value for key, value in content.items() if key != 'provenance'}


def event_tags(directory: str) -> set:
  import tensorflow as tf  # Already loaded by the input pipeline; reads the TensorBoard events.

  return {
    value.tag
    for path in glob.glob(os.path.join(directory, 'events.out.tfevents.*'))
    for event in tf.compat.v1.train.summary_iterator(path)
    for value in event.summary.value
  }


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return fake_records.write_fake_dataset(
    str(tmp_path_factory.mktemp('data')), num_actors=6, clips_per_actor=28, min_frames=8, max_frames=32
  )


@pytest.fixture(scope='module')
def trained(data_dir, tmp_path_factory):
  """(workdir, report) of one uninterrupted stacking run on the thesis' split."""
  workdir = str(tmp_path_factory.mktemp('run'))
  return workdir, experiment.run(tiny_config(data_dir), workdir)


@pytest.fixture(scope='module')
def folds_trained(data_dir, tmp_path_factory):
  """(workdir, report) of 3 actor folds x 2 seeds: six members per stage."""
  workdir = str(tmp_path_factory.mktemp('folds'))
  return workdir, experiment.run(folds_config(data_dir), workdir)


# ----------------------------------------------------------------------------- one member


def test_stacking_end_to_end_beats_chance_and_writes_report(trained):
  workdir, content = trained
  with open(os.path.join(workdir, 'report.json')) as f:
    written = json.load(f)
  assert written == json.loads(json.dumps(content))
  for name in ('audio', 'visual', 'stacker'):
    summary = written[name]
    assert set(summary) >= {'accuracy', 'uar', 'macro_f1', 'per_class_recall', 'confusion_matrix', 'val_accuracy'}
    assert np.array(summary['confusion_matrix']).shape == (7, 7)
    assert np.array(summary['confusion_matrix']).sum() == written['partitions']['test'] == 42
    best = written['training'][name]['history'][summary['best_epoch'] - 1]
    assert best['epoch'] == summary['best_epoch'] and summary['train_accuracy'] == best['train_accuracy'] > 0
    assert summary['val_accuracy'] == best['val_accuracy']
    assert 'members' not in summary and 'aggregate' not in summary  # One member: the thesis' layout.
  assert written['stacker']['accuracy'] > 0.5  # Chance is 1/7.
  assert written['protocol'] == 'random' and written['seed'] == 0 and written['class_set'] == 'thesis7'
  assert sum(written['partitions'].values()) == 6 * 28
  assert written['provenance']['parameter_counts']['audio'] == 64 * 5 * 128 + 64 + 64 * 32 + 32 + 32 * 7 + 7
  assert set(written['provenance']['stage_seconds']) == {'audio', 'visual', 'stacker'}
  assert sorted(os.listdir(os.path.join(workdir, 'features'))) == ['stack_train.npz', 'stack_val.npz', 'test.npz']
  with np.load(os.path.join(workdir, 'features', 'test.npz')) as features:
    assert features['features_0'].shape == (42, 32 + 16)  # audio (64, 32) + visual (32, 16) penultimates.
  rows = report.read_predictions(os.path.join(workdir, report.PREDICTIONS_FILENAME))
  for name in ('audio', 'visual', 'stacker'):
    mine = [row for row in rows if row['model'] == name]
    assert len(mine) == 42
    assert np.mean([row['correct'] for row in mine]) == pytest.approx(written[name]['accuracy'])


def test_tensorboard_curves_per_epoch_and_one_hparams_session_per_stage(trained):
  workdir, _ = trained
  import tensorflow as tf

  for name in ('audio', 'visual', 'stacker'):
    stage = os.path.join(workdir, name)
    # Train and validation under one tag each, in two runs: one chart per metric.
    assert {'loss', 'accuracy'} <= event_tags(os.path.join(stage, 'train'))
    assert {'loss', 'accuracy', 'confusion_matrix'} <= event_tags(os.path.join(stage, 'val'))
    assert {'loss', 'accuracy', 'confusion_matrix'} <= event_tags(os.path.join(stage, 'test'))
    assert {'steps_per_sec', '_hparams_/session_start_info'} <= event_tags(stage)
    steps = {
      event.step
      for path in glob.glob(os.path.join(stage, 'train', 'events.out.tfevents.*'))
      for event in tf.compat.v1.train.summary_iterator(path)
      if any(value.tag == 'loss' for value in event.summary.value)
    }
    epochs = json.load(open(os.path.join(stage, train.DONE_FILENAME)))['epoch']
    assert steps == set(range(1, epochs + 1))  # Against the epoch, not the optimizer step.
  # Each stage is its own session, told apart by a 'stage' hparam.
  from tensorboard.plugins.hparams import plugin_data_pb2

  stages = set()
  for path in glob.glob(os.path.join(workdir, '*', 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == '_hparams_/session_start_info':
          data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
          stages.add(data.session_start_info.hparams['stage'].string_value)
  assert stages == {'audio', 'visual', 'stacker'}


def test_eval_only_reproduces_report_and_adds_no_events_file(trained, data_dir):
  workdir, content = trained
  with open(os.path.join(workdir, 'report.json')) as f:
    before = f.read()
  events_before = sorted(glob.glob(os.path.join(workdir, '**', 'events.out.tfevents.*'), recursive=True))
  again = experiment.run(tiny_config(data_dir, mode='eval'), workdir)
  assert again == content
  with open(os.path.join(workdir, 'report.json')) as f:
    assert f.read() == before
  assert sorted(glob.glob(os.path.join(workdir, '**', 'events.out.tfevents.*'), recursive=True)) == events_before


def test_eval_of_a_partly_trained_workdir_reports_the_finished_stages(trained, data_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(trained[0], workdir)
  os.remove(os.path.join(workdir, 'stacker', train.DONE_FILENAME))  # Killed while the stacker trained.
  os.remove(os.path.join(workdir, 'report.json'))
  partial = experiment.run(tiny_config(data_dir, mode='eval'), workdir)
  assert partial['models'] == ['audio', 'visual'] and partial['unfinished_stages'] == ['stacker']
  for name in ('audio', 'visual'):
    assert partial[name] == trained[1][name]
  assert 'stacker' not in partial and 'unfinished_stages' not in trained[1]


def test_eval_without_checkpoints_is_a_clear_error(data_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match=r"No checkpoints for stage 'audio' in .*train first"):
    experiment.run(tiny_config(data_dir, mode='eval'), str(tmp_path))


def test_nan_loss_stops_with_a_clear_message(data_dir, tmp_path):
  config = tiny_config(data_dir, models=('audio',), num_epochs=3)
  config.optimizer.learning_rate = 1e30
  with pytest.raises(FloatingPointError, match=r"Stage 'audio': the (training|validation) loss is (nan|inf)"):
    experiment.run(config, str(tmp_path))
  assert not os.path.exists(os.path.join(str(tmp_path), 'audio', train.DONE_FILENAME))


def test_nan_in_a_later_epoch_keeps_the_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
  config = tiny_config(data_dir, models=('audio',), num_epochs=4, patience=4)
  real_evaluate = train.evaluate
  calls = []

  def evaluate_with_nan_from_epoch_two(*args, **kwargs):
    result = real_evaluate(*args, **kwargs)
    calls.append(result)
    return dict(result, loss=np.full_like(result['loss'], np.nan)) if len(calls) >= 2 else result

  monkeypatch.setattr(train, 'evaluate', evaluate_with_nan_from_epoch_two)
  with pytest.raises(FloatingPointError, match=r'validation loss is nan in epoch 2.*\(epoch 1\) is kept'):
    experiment.run(config, str(tmp_path))
  with train._checkpoint_manager(str(tmp_path / 'audio'), read_only=True) as manager:
    assert manager.all_steps() == [1]
    meta = manager.restore(1, args=train.ocp.args.Composite(meta=train.ocp.args.JsonRestore()))['meta']
  assert calls[0]['loss'][0] == pytest.approx(meta['members'][0]['best_val_loss'])


# ----------------------------------------------------------------------------- steps


def _member_batch(name, data_dir, config, num_members=1):
  if name == 'stacker':
    rng = np.random.default_rng(0)
    split = {'features': rng.normal(size=(16, 48)).astype(np.float32), 'label': np.arange(16, dtype=np.int32) % 7}
  else:
    clips, _ = input_pipeline.load_clips(config)
    split = input_pipeline.take(clips, np.arange(16))
  data = [input_pipeline.MemberData(split, np.arange(16))] * num_members
  return next(
    input_pipeline.member_batches(data, 16, keys=models.MODELS[name].inputs, time_bucket=config.data.time_bucket)
  )


@pytest.mark.parametrize('name', ['audio', 'visual', 'stacker'])
def test_one_step_changes_every_parameter(name, data_dir):
  config = tiny_config(data_dir)
  model = models.build_model(name, config.model)
  batch = _member_batch(name, data_dir, config)
  mesh = train.make_mesh()
  state = train.create_member_states(config.optimizer, model, jax.random.split(jax.random.key(0), 1), batch)
  train_fn, _, _, _ = train.jitted_steps(mesh)
  before = jax.device_get(state.params)
  new_state, batch_metrics = train_fn(state, train.to_device(batch, mesh), np.array([True]))
  after = jax.device_get(new_state.params)
  changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), before, after)
  assert all(jax.tree.leaves(changed)), changed
  assert new_state.step.tolist() == [1]
  assert np.isfinite(train.compute_members(batch_metrics)['loss']).all()


def test_a_stopped_member_does_not_change(data_dir):
  config = tiny_config(data_dir)
  model = models.build_model('audio', config.model)
  batch = _member_batch('audio', data_dir, config, num_members=3)
  batch['mask'][2] = False  # Member 2's epoch has run out of batches: all its rows are padding.
  mesh = train.make_mesh()
  keys = jax.random.split(jax.random.key(0), 3)
  state = train.create_member_states(config.optimizer, model, keys, batch)
  train_fn, _, _, _ = train.jitted_steps(mesh)
  before = jax.device_get(state)
  active = np.array([True, False, True])  # Member 1 stopped early.
  after = jax.device_get(train_fn(state, train.to_device(batch, mesh), active)[0])
  for k, should_change in enumerate((True, False, False)):
    member_before = jax.tree.map(lambda x: x[k], before)
    member_after = jax.tree.map(lambda x: x[k], after)
    same = jax.tree.leaves(jax.tree.map(np.array_equal, member_before, member_after))
    assert (not all(same)) if should_change else all(same), k
  assert after.step.tolist() == [1, 0, 0]


# ----------------------------------------------------------------------------- members and folds


def test_folds_report_each_member_and_their_mean_and_std(folds_trained):
  workdir, content = folds_trained
  assert content['members'] == [f'fold_{f}/seed_{s}' for f in range(3) for s in (0, 1)]
  for name in ('audio', 'visual', 'stacker'):
    summary = content[name]
    assert [(m['fold'], m['seed']) for m in summary['members']] == [(f, s) for f in range(3) for s in (0, 1)]
    assert [m['test_actors'] for m in summary['members']] == [list(FOLDS[f]) for f in range(3) for _ in (0, 1)]
    aggregate = summary['aggregate']
    fold_means = [np.mean([m['accuracy'] for m in summary['members'] if m['fold'] == f]) for f in range(3)]
    assert aggregate['over_folds']['accuracy']['mean'] == pytest.approx(np.mean(fold_means))
    assert aggregate['over_folds']['accuracy']['std'] == pytest.approx(np.std(fold_means, ddof=1))
    # Every clip is tested once per seed: 6 actors x 28 clips x 2 seeds.
    assert np.array(summary['confusion_matrix']).sum() == aggregate['num_examples'] == 6 * 28 * 2
    assert len(content['training'][name]) == 6
  # Members stop on their own: some ran fewer epochs than others.
  assert len({member['epochs_run'] for name in ('audio', 'visual') for member in content['training'][name]}) > 1
  text = report.format_report(content)
  assert 'mean ± std' in text and 'fold' in text
  # Folds are drawn by actors, not by data.fractions: the header does not claim any.
  assert content['fractions'] is None and 'fractions (' not in text.splitlines()[0]
  assert 'thesis has no figure for this protocol' in text
  rows = report.read_predictions(os.path.join(workdir, report.PREDICTIONS_FILENAME))
  assert len(rows) == 3 * 6 * 28 * 2  # models x clips x seeds
  assert {(row['fold'], row['seed']) for row in rows} == {(f, s) for f in range(3) for s in (0, 1)}
  # Per-member curves in TensorBoard.
  assert {'fold_2/seed_1/loss', 'fold_0/seed_0/accuracy'} <= event_tags(os.path.join(workdir, 'visual', 'val'))


def test_members_equal_separate_single_member_runs(folds_trained, data_dir, tmp_path):
  """A member trained among six gives what it gives trained alone (same fold, same seed)."""
  _, together = folds_trained
  for fold, seed in ((1, 1), (2, 0)):
    alone = experiment.run(
      folds_config(data_dir, seeds=(seed,), **{'data.only_folds': (fold,)}), str(tmp_path / f'{fold}_{seed}')
    )
    k = 2 * fold + seed
    for name in ('audio', 'visual', 'stacker'):
      mine = together['training'][name][k]
      assert mine['best_epoch'] == alone['training'][name]['best_epoch'], (name, fold, seed)
      for epoch_together, epoch_alone in zip(mine['history'], alone['training'][name]['history'], strict=True):
        for key in ('train_loss', 'val_loss'):
          assert epoch_together[key] == pytest.approx(epoch_alone[key], abs=1e-5), (name, key, fold, seed)
      assert together[name]['members'][k]['confusion_matrix'] == alone[name]['confusion_matrix'], (name, fold, seed)


def test_interrupted_folds_resume_to_the_same_report(folds_trained, data_dir, tmp_path, monkeypatch):
  _, uninterrupted = folds_trained
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
    experiment.run(folds_config(data_dir), workdir)
  monkeypatch.undo()
  assert os.path.exists(os.path.join(workdir, 'audio', train.DONE_FILENAME))
  assert not os.path.exists(os.path.join(workdir, 'visual', train.DONE_FILENAME))
  with train._checkpoint_manager(os.path.join(workdir, 'visual'), read_only=True) as manager:
    assert manager.latest_step() == 2  # It resumes from a checkpoint, not from scratch.
  assert not os.path.exists(os.path.join(workdir, 'report.json'))
  resumed = experiment.run(folds_config(data_dir), workdir)
  assert results(resumed) == results(uninterrupted)


def test_training_group_leaves_stopped_members_out_in_few_sizes():
  active = np.ones(18, bool)
  assert train.training_group(active, 1).tolist() == list(range(18))
  active[[0, 4, 5]] = False  # 15 training: rounded up to 16, with the first stopped member as padding.
  assert train.training_group(active, 1).tolist() == [0, *range(1, 4), *range(6, 18)]
  active[:12] = False  # 6 training: 8 with one member shard, 8 with two, 6 + 2 stopped ones.
  assert train.training_group(active, 1).tolist() == [0, 1, *range(12, 18)]
  active[:17] = False
  assert train.training_group(active, 1).tolist() == [17]
  assert train.training_group(active, 2).tolist() == [0, 17]  # Divisible by the member shards.
  sizes = {len(train.training_group(np.arange(18) >= stopped, 1)) for stopped in range(18)}
  assert sizes == {18, 16, 8, 4, 2, 1}  # At most six compiled sizes while 18 members stop one by one.


def test_compacting_stopped_members_changes_no_result(folds_trained, data_dir, tmp_path):
  _, compacted = folds_trained
  epochs_run = [member['epochs_run'] for member in compacted['training']['visual']]
  assert min(epochs_run) < max(epochs_run)  # Some epochs ran without some members.
  all_members = experiment.run(folds_config(data_dir, compact_stopped_members=False), str(tmp_path))
  # XLA may sum in another order for another member count: losses may differ in the last bits.
  for name in ('audio', 'visual', 'stacker'):
    for mine, theirs in zip(compacted['training'][name], all_members['training'][name], strict=True):
      assert (mine['best_epoch'], mine['epochs_run']) == (theirs['best_epoch'], theirs['epochs_run']), name
      for epoch_mine, epoch_theirs in zip(mine['history'], theirs['history'], strict=True):
        assert epoch_mine == pytest.approx(epoch_theirs, rel=1e-5, abs=1e-6), name
    for mine, theirs in zip(compacted[name]['members'], all_members[name]['members'], strict=True):
      assert mine['confusion_matrix'] == theirs['confusion_matrix'], name  # The same test predictions.
      assert mine['loss'] == pytest.approx(theirs['loss'], rel=1e-5), name


def test_members_sharded_over_four_devices_give_the_same_losses(folds_trained, data_dir, tmp_path):
  _, content = folds_trained
  # Every epoch: members stop at their own epochs, so groups of active members are split too.
  config = folds_config(data_dir, models=('audio', 'visual', 'stacker'))
  config.mesh.member_shards = 2  # A 2 x 2 mesh: three members on each half, batches split in two.
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
  for name in ('audio', 'visual', 'stacker'):
    for k in range(6):
      one_device = content['training'][name][k]['history']
      for epoch_one, epoch_four in zip(one_device, four[name][k]['history'], strict=True):
        for key in ('train_loss', 'val_loss'):
          assert epoch_four[key] == pytest.approx(epoch_one[key], abs=1e-5), (name, k, key)


def test_eight_classes_from_the_same_records(tmp_path):
  data_dir = fake_records.write_fake_dataset(
    str(tmp_path / 'data'), num_actors=4, clips_per_actor=28, calm_clips_per_actor=4, min_frames=4, max_frames=8
  )
  config = tiny_config(data_dir, models=('audio',), num_epochs=2, **{'data.max_frames': 8})
  seven, _ = input_pipeline.load_clips(config)
  config.data.classes = 'ravdess8'
  eight, _ = input_pipeline.load_clips(config)
  assert len(seven['label']) == 4 * 28 and len(eight['label']) == 4 * (28 + 4)
  assert np.bincount(eight['label']).tolist() == [16, 16, 16, 16, 16, 16, 16, 16]  # calm is label 1.
  calm = np.isin(eight['clip_id'], seven['clip_id'], invert=True)
  assert set(eight['label'][calm]) == {1}
  content = experiment.run(config, str(tmp_path / 'run'))
  assert content['class_set'] == 'ravdess8' and content['classes'][1] == 'calm'
  assert np.array(content['audio']['confusion_matrix']).shape == (8, 8)

"""Tests for emojax.input_pipeline: dataset_info checks, partitions, padded masked batches."""

import json
import os

import numpy as np
import pytest

from configs import default
from emojax import fake_records, input_pipeline, ravdess, schema


def _config(data_dir, **data_overrides):
  config = default.get_config('smoke')
  config.data.dir = str(data_dir)
  config.data.max_frames = 24
  for key, value in data_overrides.items():
    setattr(config.data, key, value)
  return config


@pytest.fixture(scope='module')
def six_actor_dir(tmp_path_factory):
  """6 actors x 28 clips (4 per class), frames 5..30 so some clips exceed max_frames=24."""
  return fake_records.write_fake_dataset(
    str(tmp_path_factory.mktemp('six_actors')), num_actors=6, clips_per_actor=28, min_frames=5, max_frames=30
  )


@pytest.fixture(scope='module')
def clips(six_actor_dir):
  clips, _ = input_pipeline.load_clips(_config(six_actor_dir))
  return clips


def test_load_clips_shapes_and_padding(clips):
  n = 6 * 28
  assert clips['visual'].shape == (n, 24, schema.VISUAL_DIM)
  assert clips['audio'].shape == (n, 5, schema.AUDIO_DIM)
  assert clips['num_frames'].min() >= 1 and clips['num_frames'].max() == 24  # Longer clips were cut.
  for i in range(n):  # Zero past each clip's end.
    assert not np.any(clips['visual'][i, clips['num_frames'][i] :])
  assert list(clips['clip_id']) == sorted(clips['clip_id'])
  assert np.bincount(clips['label'], minlength=ravdess.NUM_CLASSES).tolist() == [24] * ravdess.NUM_CLASSES


def test_missing_directory_and_info_are_named(tmp_path):
  missing = tmp_path / 'nowhere'
  with pytest.raises(FileNotFoundError, match=str(missing)):
    input_pipeline.load_clips(_config(missing))
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match=os.path.join(str(empty), schema.DATASET_INFO)):
    input_pipeline.load_clips(_config(empty))


@pytest.mark.parametrize(
  'change, message',
  [
    ({'schema_version': 2}, r'schema_version 2.*config.data.schema_version is 1'),
    ({'feature_dims': {'visual_embedding': 4096, 'audio_embedding': 128}}, r'feature_dims.visual_embedding = 4096'),
  ],
)
def test_dataset_info_mismatch_is_a_clear_error(tmp_path, change, message):
  info = {'schema_version': schema.SCHEMA_VERSION, 'feature_dims': dict(schema.FEATURE_DIMS), 'num_clips': 0}
  info.update(change)
  (tmp_path / schema.DATASET_INFO).write_text(json.dumps(info))
  with pytest.raises(ValueError, match=message):
    input_pipeline.load_clips(_config(tmp_path))


def test_random_partitions_disjoint_stratified_deterministic(clips):
  config = _config('unused')
  parts = input_pipeline.make_partitions(clips, config)
  everything = np.concatenate(list(parts.values()))
  assert len(everything) == len(np.unique(everything)) == len(clips['label'])  # Disjoint, cover all clips.
  per_class = 24  # 6 actors x 4 clips of each class.
  base = np.concatenate([parts['base_train'], parts['base_val']])
  stack = np.concatenate([parts['stack_train'], parts['stack_val']])
  for indices, fraction in ((base, 0.5), (stack, 0.25), (parts['test'], 0.25)):
    counts = np.bincount(clips['label'][indices], minlength=ravdess.NUM_CLASSES)
    assert np.all(np.abs(counts - fraction * per_class) <= 1), counts
  again = input_pipeline.make_partitions(clips, config)
  assert all(np.array_equal(parts[k], again[k]) for k in parts)
  config.seed = 1
  other = input_pipeline.make_partitions(clips, config)
  assert not np.array_equal(parts['test'], other['test'])


def test_actor_partitions_share_no_actor_and_are_gender_balanced(clips):
  config = _config('unused', protocol='actor', actor_split=(2, 2, 2))
  parts = input_pipeline.make_partitions(clips, config)
  groups = {
    'base': np.concatenate([parts['base_train'], parts['base_val']]),
    'stack': np.concatenate([parts['stack_train'], parts['stack_val']]),
    'test': parts['test'],
  }
  actors = {name: set(clips['actor'][indices].tolist()) for name, indices in groups.items()}
  assert not (actors['base'] & actors['stack'] or actors['base'] & actors['test'] or actors['stack'] & actors['test'])
  for name, members in actors.items():
    assert sorted(ravdess.gender_of(a) for a in members) == [0, 1], name
  assert input_pipeline.make_partitions(clips, config)['test'].tolist() == parts['test'].tolist()


def test_actor_protocol_on_four_actors_names_partition_and_counts(tmp_path):
  data_dir = fake_records.write_fake_dataset(str(tmp_path), num_actors=4, clips_per_actor=7, max_frames=12)
  config = _config(data_dir, protocol='actor')  # Default actor_split (12, 6, 6).
  four, _ = input_pipeline.load_clips(config)
  with pytest.raises(ValueError, match=r"partition 'base' with 2 male \+ 2 female actors \(28 clips.*asks for 6 \+ 6"):
    input_pipeline.make_partitions(four, config)


def test_random_protocol_missing_class_names_partition(clips):
  config = _config('unused', fractions=(0.98, 0.01, 0.01))
  with pytest.raises(ValueError, match=r"partition 'stack_train' with 0 clips, per class \{'anger': 0"):
    input_pipeline.make_partitions(clips, config)


def test_batches_pad_mask_and_bucket_time():
  n = 10
  split = {
    'visual': np.ones((n, 64, 3), np.float32),
    'num_frames': np.array([3, 5, 9, 2, 40, 4, 6, 7, 8, 1], np.int32),
    'label': np.arange(n, dtype=np.int32) % 7,
  }
  out = list(input_pipeline.batches(split, 4, keys=('visual', 'num_frames'), time_bucket=8))
  assert [b['mask'].tolist() for b in out] == [[True] * 4, [True] * 4, [True, True, False, False]]
  assert [b['visual'].shape for b in out] == [(4, 16, 3), (4, 40, 3), (4, 8, 3)]  # Longest clip rounded up to 8.
  last = out[-1]
  assert last['label'].tolist()[:2] == [1, 2] and last['num_frames'].tolist() == [8, 1, 1, 1]
  assert not np.any(last['visual'][2:])  # Padding rows are zero.
  seen = np.concatenate([b['label'][b['mask']] for b in out])
  assert seen.tolist() == split['label'].tolist()  # Every clip exactly once, in order.


def test_shuffled_batches_are_deterministic_per_epoch_and_split_by_process():
  split = {'features': np.arange(20, dtype=np.float32)[:, None], 'label': np.zeros(20, np.int32)}

  def order(epoch, **kwargs):
    batches = input_pipeline.batches(split, 8, keys=('features',), shuffle_seed=(0, 2), epoch=epoch, **kwargs)
    return [b['features'][b['mask'], 0].tolist() for b in batches]

  assert order(1) == order(1)
  assert order(1) != order(2)
  assert sorted(x for batch in order(3) for x in batch) == list(range(20))
  # Process 1 of 2 gets the second half of each global batch.
  halves = [b[4:] for b in order(1)]
  assert order(1, process_index=1, process_count=2) == halves


def test_standardize_uses_reference_statistics_and_keeps_padding_zero():
  rng = np.random.default_rng(0)
  num_frames = np.array([2, 3, 1, 4], np.int32)
  visual = np.zeros((4, 5, 2), np.float32)
  for i, length in enumerate(num_frames):
    visual[i, :length] = rng.normal(loc=[10.0, -3.0], scale=[2.0, 0.5], size=(length, 2))
  audio = rng.normal(loc=5.0, scale=3.0, size=(4, 2, 3)).astype(np.float32)
  audio[:, :, 2] = 7.0  # A constant dimension is centred, not divided by zero.
  split = {'visual': visual, 'num_frames': num_frames, 'audio': audio, 'label': np.zeros(4, np.int32)}
  reference = np.array([0, 1])  # A training partition: clips 2 and 3 must not shape the statistics.

  statistics = input_pipeline.feature_statistics(input_pipeline.take(split, reference), ('visual', 'audio'))
  out = input_pipeline.standardize(split, statistics)

  real_reference_frames = np.concatenate([visual[0, :2], visual[1, :3]])  # Padding frames excluded.
  np.testing.assert_allclose(statistics['visual'][0], real_reference_frames.mean(0), rtol=1e-6)
  np.testing.assert_allclose(
    out['visual'][0, :2], (visual[0, :2] - real_reference_frames.mean(0)) / real_reference_frames.std(0), atol=1e-5
  )
  standardized_reference = np.concatenate([out['visual'][0, :2], out['visual'][1, :3]])
  np.testing.assert_allclose(standardized_reference.mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(standardized_reference.std(0), 1.0, atol=1e-5)
  for i, length in enumerate(num_frames):
    assert not np.any(out['visual'][i, length:])  # Padding stays zero.
  np.testing.assert_allclose(out['audio'][..., 2], 0.0)
  assert out['label'] is split['label'] and out['visual'].dtype == np.float32
  # Clips outside the reference use the reference's statistics, not their own.
  mean, std = statistics['audio']
  np.testing.assert_allclose(out['audio'][2:, :, :2], (audio[2:, :, :2] - mean[:2]) / std[:2], atol=1e-5)


def test_thesis_75_percent_variant_keeps_the_same_test_clips(six_actor_dir, clips):
  # Base models trained on base + stack (the thesis' 68% / 72% rows) are tested on the same clips.
  thesis = input_pipeline.make_partitions(clips, _config(six_actor_dir))
  config = _config(six_actor_dir, fractions=(0.75, 0.0, 0.25))
  config.models = ('audio', 'visual')
  wider = input_pipeline.make_partitions(clips, config)
  np.testing.assert_array_equal(wider['test'], thesis['test'])
  assert len(wider['stack_train']) == len(wider['stack_val']) == 0
  base = lambda p: np.concatenate([p['base_train'], p['base_val']])
  np.testing.assert_array_equal(
    np.sort(base(wider)), np.sort(np.concatenate([base(thesis), thesis['stack_train'], thesis['stack_val']]))
  )

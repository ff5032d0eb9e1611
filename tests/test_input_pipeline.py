"""Tests for emojax.input_pipeline: dataset_info checks, loading, padded masked batches, standardisation."""

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

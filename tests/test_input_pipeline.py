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
  coarse = input_pipeline.batches(split, 4, keys=('visual', 'num_frames'), time_bucket=32)
  assert [b['visual'].shape[1] for b in coarse] == [32, 40, 32]  # Never past the data's longest clip (40 < 64).
  last = out[-1]
  assert last['label'].tolist()[:2] == [1, 2] and last['num_frames'].tolist() == [8, 1, 1, 1]
  assert not np.any(last['visual'][2:])  # Padding rows are zero.
  seen = np.concatenate([b['label'][b['mask']] for b in out])
  assert seen.tolist() == split['label'].tolist()  # Every clip exactly once, in order.


def test_shuffled_batches_are_deterministic_per_epoch():
  split = {'features': np.arange(20, dtype=np.float32)[:, None], 'label': np.zeros(20, np.int32)}

  def order(epoch, **kwargs):
    batches = input_pipeline.batches(split, 8, keys=('features',), shuffle_seed=(0, 2), epoch=epoch, **kwargs)
    return [b['features'][b['mask'], 0].tolist() for b in batches]

  assert order(1) == order(1)
  assert order(1) != order(2)
  assert sorted(x for batch in order(3) for x in batch) == list(range(20))


def test_member_batches_stack_each_members_own_rows_scaled_by_its_statistics():
  n = 10
  shared = {
    'visual': np.ones((n, 40, 2), np.float32),
    'num_frames': np.array([3, 5, 9, 2, 30, 4, 6, 7, 8, 1], np.int32),
    'label': np.arange(n, dtype=np.int32) % 7,
  }
  statistics = {'visual': (np.array([1.0, 0.0]), np.array([2.0, 4.0]))}
  members = [
    input_pipeline.MemberData(shared, np.array([0, 1, 2])),  # One batch of 2 and one of 1.
    input_pipeline.MemberData(shared, np.array([3, 4, 5, 6, 7]), statistics),  # Three batches.
  ]
  out = list(input_pipeline.member_batches(members, 2, keys=('visual', 'num_frames'), time_bucket=8))
  assert [b['mask'].tolist() for b in out] == [
    [[True, True], [True, True]],
    [[True, False], [True, True]],
    [[False, False], [True, False]],  # Member 0 has run out: padding rows, which the step ignores.
  ]
  # One time axis for both: the longest clip of the batch over all members (30), rounded up to 8
  # but not past the data's longest clip (30).
  assert [b['visual'].shape for b in out] == [(2, 2, 30, 2), (2, 2, 16, 2), (2, 2, 8, 2)]
  assert out[0]['num_frames'].tolist() == [[3, 5], [2, 30]] and out[2]['num_frames'].tolist() == [[1, 1], [7, 1]]
  # Member 1 is scaled by its statistics, frames past each clip's end stay zero; member 0 is raw.
  np.testing.assert_array_equal(out[0]['visual'][1, 0, :2], [[0.0, 0.25], [0.0, 0.25]])
  assert not out[0]['visual'][1, 0, 2:].any()
  np.testing.assert_array_equal(out[0]['visual'][0, 0, :3], np.ones((3, 2)))
  # A member that is not active gets no rows at all.
  quiet = list(
    input_pipeline.member_batches(members, 2, keys=('visual', 'num_frames'), time_bucket=8, active=[False, True])
  )
  assert len(quiet) == 3 and not any(b['mask'][0].any() for b in quiet)


def test_per_dim_normalization_uses_reference_statistics_and_keeps_padding_zero():
  rng = np.random.default_rng(0)
  num_frames = np.array([2, 3, 1, 4], np.int32)
  visual = np.zeros((4, 5, 2), np.float32)
  for i, length in enumerate(num_frames):
    visual[i, :length] = rng.normal(loc=[10.0, -3.0], scale=[2.0, 0.5], size=(length, 2))
  audio = rng.normal(loc=5.0, scale=3.0, size=(4, 2, 3)).astype(np.float32)
  audio[:, :, 2] = 7.0  # A constant dimension is centred, not divided by zero.
  split = {'visual': visual, 'num_frames': num_frames, 'audio': audio, 'label': np.zeros(4, np.int32)}
  reference = np.array([0, 1])  # A training partition: clips 2 and 3 must not shape the statistics.

  statistics = input_pipeline.normalization_statistics(
    input_pipeline.take(split, reference), ('visual', 'audio'), 'per_dim'
  )
  out = input_pipeline.normalize(split, statistics)

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


def test_global_normalization_keeps_the_relative_scale_of_dimensions(tmp_path):
  rng = np.random.default_rng(1)
  audio = rng.normal(loc=[1.0, 4.0, -2.0], scale=[1.0, 10.0, 0.1], size=(6, 2, 3)).astype(np.float32)
  split = {'audio': audio, 'label': np.zeros(6, np.int32)}
  statistics = input_pipeline.normalization_statistics(split, ('audio',), 'global')
  mean, std = statistics['audio']
  assert mean.shape == std.shape == ()
  assert mean == pytest.approx(audio.mean()) and std == pytest.approx(audio.std(), rel=1e-5)
  out = input_pipeline.normalize(split, statistics)['audio']
  assert out.mean() == pytest.approx(0.0, abs=1e-5) and out.std() == pytest.approx(1.0, rel=1e-5)
  # One scale for every dimension: their ratios of spread are unchanged.
  np.testing.assert_allclose(
    out.std(axis=(0, 1)) / out.std(axis=(0, 1))[0], audio.std(axis=(0, 1)) / audio.std(axis=(0, 1))[0], rtol=1e-4
  )
  assert input_pipeline.normalization_statistics(split, ('audio',), 'none') == {}
  with pytest.raises(ValueError, match=r"config.data.normalize must be one of .*'zscore'"):
    input_pipeline.normalization_statistics(split, ('audio',), 'zscore')
  path = str(tmp_path / 'normalization.npz')
  input_pipeline.save_normalization(path, 'global', [statistics, {'audio': (mean + 1, std * 2)}])
  kind, (first, second) = input_pipeline.load_normalization(path)
  assert kind == 'global' and float(first['audio'][0]) == float(mean) and float(first['audio'][1]) == float(std)
  assert float(second['audio'][0]) == float(mean) + 1 and float(second['audio'][1]) == float(std) * 2


def test_length_chunks_batch_clips_of_similar_length_on_one_schedule_for_all_members():
  rng = np.random.default_rng(0)
  n = 64
  shared = {'num_frames': rng.integers(1, 200, n).astype(np.int32), 'label': np.zeros(n, np.int32)}
  members = [
    input_pipeline.MemberData(shared, np.arange(0, 32), shuffle_seed=(0, 2, 1, 0)),
    input_pipeline.MemberData(shared, np.arange(32, 64), shuffle_seed=(0, 2, 1, 1)),
  ]
  random_rows = members[0].batch_rows(epoch=1, batch_size=4)
  sorted_rows = members[0].batch_rows(epoch=1, batch_size=4, length_chunk=4)
  # The same clips each epoch, in batches of 4; a chunk of 4 batches holds the same clips either way.
  assert sorted(np.concatenate(sorted_rows).tolist()) == list(range(32))
  for chunk in range(2):
    assert sorted(np.concatenate(sorted_rows[4 * chunk : 4 * chunk + 4]).tolist()) == sorted(
      np.concatenate(random_rows[4 * chunk : 4 * chunk + 4]).tolist()
    )
  # Sorted within a chunk: far less padding to the longest clip of each batch.
  padding = lambda rows: sum(
    int(shared['num_frames'][r].max()) * len(r) - int(shared['num_frames'][r].sum()) for r in rows
  )
  assert padding(sorted_rows) < padding(random_rows) / 2
  # Both members take their batches in the same rank order within each chunk.
  ranks = [
    [
      int(np.argsort(np.argsort([shared['num_frames'][b].max() for b in rows[4 * c : 4 * c + 4]]))[i])
      for c in range(2)
      for i in range(4)
    ]
    for rows in (m.batch_rows(epoch=1, batch_size=4, length_chunk=4) for m in members)
  ]
  assert ranks[0] == ranks[1]
  # Unshuffled data (validation, test) keep their order.
  plain = input_pipeline.MemberData(shared, np.arange(8))
  assert [r.tolist() for r in plain.batch_rows(epoch=1, batch_size=4, length_chunk=4)] == [[0, 1, 2, 3], [4, 5, 6, 7]]

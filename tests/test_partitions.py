"""Tests for emojax.partitions: the protocols draw disjoint, stratified, deterministic partitions."""

import numpy as np
import pytest

from configs import default
from emojax import fake_records, input_pipeline, partitions, ravdess


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


def make_fold(clips, config):
  (fold,) = partitions.make_folds(clips, config)
  return fold


def test_random_partitions_disjoint_stratified_deterministic(clips):
  config = _config('unused')
  parts = make_fold(clips, config)
  everything = np.concatenate(list(parts.values()))
  assert len(everything) == len(np.unique(everything)) == len(clips['label'])  # Disjoint, cover all clips.
  per_class = 24  # 6 actors x 4 clips of each class.
  base = np.concatenate([parts['base_train'], parts['base_val']])
  stack = np.concatenate([parts['stack_train'], parts['stack_val']])
  for indices, fraction in ((base, 0.5), (stack, 0.25), (parts['test'], 0.25)):
    counts = np.bincount(clips['label'][indices], minlength=ravdess.NUM_CLASSES)
    assert np.all(np.abs(counts - fraction * per_class) <= 1), counts
  again = make_fold(clips, config)
  assert all(np.array_equal(parts[k], again[k]) for k in parts)
  config.seed = 1
  other = make_fold(clips, config)
  assert not np.array_equal(parts['test'], other['test'])


def test_actor_partitions_share_no_actor_and_are_gender_balanced(clips):
  config = _config('unused', protocol='actor', actor_split=(2, 2, 2))
  parts = make_fold(clips, config)
  groups = {
    'base': np.concatenate([parts['base_train'], parts['base_val']]),
    'stack': np.concatenate([parts['stack_train'], parts['stack_val']]),
    'test': parts['test'],
  }
  actors = {name: set(clips['actor'][indices].tolist()) for name, indices in groups.items()}
  assert not (actors['base'] & actors['stack'] or actors['base'] & actors['test'] or actors['stack'] & actors['test'])
  for name, members in actors.items():
    assert sorted(ravdess.gender_of(a) for a in members) == [0, 1], name
  assert make_fold(clips, config)['test'].tolist() == parts['test'].tolist()


def test_actor_protocol_on_four_actors_names_partition_and_counts(tmp_path):
  data_dir = fake_records.write_fake_dataset(str(tmp_path), num_actors=4, clips_per_actor=7, max_frames=12)
  config = _config(data_dir, protocol='actor')  # Default actor_split (12, 6, 6).
  four, _ = input_pipeline.load_clips(config)
  with pytest.raises(ValueError, match=r"partition 'base' with 2 male \+ 2 female actors \(28 clips.*asks for 6 \+ 6"):
    make_fold(four, config)


def test_random_protocol_missing_class_names_partition(clips):
  config = _config('unused', fractions=(0.98, 0.01, 0.01))
  with pytest.raises(ValueError, match=r"partition 'stack_train' with 0 clips, per class \{'anger': 0"):
    make_fold(clips, config)


def test_thesis_75_percent_variant_keeps_the_same_test_clips(six_actor_dir, clips):
  # Base models trained on base + stack (the thesis' 68% / 72% rows) are tested on the same clips.
  thesis = make_fold(clips, _config(six_actor_dir))
  config = _config(six_actor_dir, fractions=(0.75, 0.0, 0.25))
  config.models = ('audio', 'visual')
  wider = make_fold(clips, config)
  np.testing.assert_array_equal(wider['test'], thesis['test'])
  assert len(wider['stack_train']) == len(wider['stack_val']) == 0
  base = lambda p: np.concatenate([p['base_train'], p['base_val']])
  np.testing.assert_array_equal(
    np.sort(base(wider)), np.sort(np.concatenate([base(thesis), thesis['stack_train'], thesis['stack_val']]))
  )

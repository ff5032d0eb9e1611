"""Tests for emojax.partitions: the protocols draw disjoint, stratified, deterministic partitions."""

import numpy as np
import pytest

from configs import default
from emojax import partitions, ravdess


def _config(**data_overrides):
  """The smoke config with `config.data` fields overridden."""
  config = default.get_config('smoke')
  for key, value in data_overrides.items():
    setattr(config.data, key, value)
  return config


@pytest.fixture(scope='module')
def clips():
  """6 actors x 28 clips, 4 per class, as load_clips returns their metadata."""
  return metadata(num_actors=6, clips_per_class=4)


def make_fold(clips, config):
  (fold,) = partitions.make_folds(clips, config)
  return fold.parts


def test_random_partitions_disjoint_stratified_deterministic(clips):
  config = _config()
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
  config = _config(protocol='actor', actor_split=(2, 2, 2))
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


def test_actor_protocol_on_four_actors_names_partition_and_counts():
  config = _config(protocol='actor')  # Default actor_split (12, 6, 6).
  four = metadata(num_actors=4, clips_per_class=1)
  with pytest.raises(ValueError, match=r"partition 'base' with 2 male \+ 2 female actors \(28 clips.*asks for 6 \+ 6"):
    make_fold(four, config)


def test_random_protocol_missing_class_names_partition(clips):
  config = _config(fractions=(0.98, 0.01, 0.01))
  with pytest.raises(ValueError, match=r"partition 'stack_train' with 0 clips, per class \{'anger': 0"):
    make_fold(clips, config)


def test_thesis_75_percent_variant_keeps_the_same_test_clips(clips):
  # Base models trained on base + stack (the thesis' 68% / 72% rows) are tested on the same clips.
  thesis = make_fold(clips, _config())
  config = _config(fractions=(0.75, 0.0, 0.25))
  config.models = ('audio', 'visual')
  wider = make_fold(clips, config)
  np.testing.assert_array_equal(wider['test'], thesis['test'])
  assert len(wider['stack_train']) == len(wider['stack_val']) == 0
  base = lambda p: np.concatenate([p['base_train'], p['base_val']])
  np.testing.assert_array_equal(
    np.sort(base(wider)), np.sort(np.concatenate([base(thesis), thesis['stack_train'], thesis['stack_val']]))
  )


# ----------------------------------------------------------------------------- folds


def metadata(num_actors=24, clips_per_class=8):
  """Clip metadata as load_clips returns it, RAVDESS-shaped: every actor has clips of every class."""
  actor = np.repeat(np.arange(1, num_actors + 1), 7 * clips_per_class)
  label = np.tile(np.repeat(np.arange(7), clips_per_class), num_actors)
  return {
    'actor': actor.astype(np.int32),
    'gender': np.array([ravdess.gender_of(int(a)) for a in actor], np.int32),
    'label': label.astype(np.int32),
    'clip_id': np.array([f'{i:05d}' for i in range(len(actor))]),
  }


def actors_of(clips, indices):
  return set(clips['actor'][indices].tolist())


def test_emobox_folds_test_every_actor_once_and_keep_partitions_actor_disjoint():
  clips = metadata()
  folds = partitions.make_folds(clips, _config(protocol='actor_folds'))
  assert [fold.test_actors for fold in folds] == [tuple(sorted(group)) for group in partitions.EMOBOX_FOLDS]
  assert sorted(a for fold in folds for a in fold.test_actors) == list(range(1, 25))
  for fold in folds:
    base = actors_of(clips, np.concatenate([fold.parts['base_train'], fold.parts['base_val']]))
    stack = actors_of(clips, np.concatenate([fold.parts['stack_train'], fold.parts['stack_val']]))
    test = actors_of(clips, fold.parts['test'])
    assert not (base & stack or base & test or stack & test), fold.index
    assert base | stack | test == set(range(1, 25))
    # 20 actors left: 1/3 of the men and 1/3 of the women to the stacker, the rest to base.
    assert len(base) + len(stack) == 20
    for gender in (0, 1):
      available = [a for a in base | stack if ravdess.gender_of(a) == gender]
      assert len([a for a in stack if ravdess.gender_of(a) == gender]) == round(len(available) / 3), fold.index


def test_loso_has_one_fold_per_actor_and_only_folds_keeps_their_indices():
  clips = metadata()
  folds = partitions.make_folds(clips, _config(protocol='loso'))
  assert [fold.test_actors for fold in folds] == [(a,) for a in range(1, 25)]
  some = partitions.make_folds(clips, _config(protocol='loso', only_folds=(3, 17)))
  assert [(fold.index, fold.test_actors) for fold in some] == [(3, (4,)), (17, (18,))]
  assert all(np.array_equal(some[0].parts[p], folds[3].parts[p]) for p in partitions.PARTITIONS)
  with pytest.raises(ValueError, match=r'only_folds names folds \[30\]'):
    partitions.make_folds(clips, _config(protocol='loso', only_folds=(30,)))


def test_random_folds_test_every_clip_once_stratified():
  clips = metadata(num_actors=6)
  folds = partitions.make_folds(clips, _config(protocol='random_folds', num_folds=4))
  tested = np.concatenate([fold.parts['test'] for fold in folds])
  assert sorted(tested.tolist()) == list(range(len(clips['label'])))
  for fold in folds:
    counts = np.bincount(clips['label'][fold.parts['test']], minlength=7)
    assert counts.max() - counts.min() <= 1  # 48 clips per class over 4 folds: 12 each.
    everything = np.concatenate(list(fold.parts.values()))
    assert len(everything) == len(np.unique(everything)) == len(clips['label'])


def test_validation_by_actor_holds_out_whole_training_actors():
  clips = metadata()
  (fold,) = partitions.make_folds(clips, _config(protocol='actor_folds', val_by_actor=True, only_folds=(0,)))
  for part in ('base', 'stack'):
    train, val = actors_of(clips, fold.parts[f'{part}_train']), actors_of(clips, fold.parts[f'{part}_val'])
    assert val and not train & val, part


@pytest.mark.parametrize(
  'folds, message',
  [
    (((1, 2, 3), (3, 4, 5, 6)), r'overlap: actors \[3\] are in more than one fold'),
    (((1, 2), (3, 4)), r'leave out actors \[5, 6\], which are in the data'),
  ],
)
def test_bad_folds_name_the_actors(folds, message):
  with pytest.raises(ValueError, match=message):
    partitions.make_folds(metadata(num_actors=6), _config(protocol='actor_folds', folds=folds))


def test_a_fold_without_a_class_names_the_fold_partition_and_counts():
  clips = metadata(num_actors=6)
  keep = ~((clips['actor'] == 2) & (clips['label'] == 3))  # Actor 2 has no happiness clip.
  clips = {key: value[keep] for key, value in clips.items()}
  config = _config(protocol='actor_folds', folds=((1,), (2,), (3, 4), (5, 6)))
  with pytest.raises(
    ValueError, match=r"fold 1 of protocol 'actor_folds' leaves partition 'test' with 48 clips, .*'happiness': 0"
  ):
    partitions.make_folds(clips, config)

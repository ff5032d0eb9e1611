"""Partition protocols: which clips train the base models, which the stacker, which test.

No split is baked into the data: a protocol draws the partitions from the clip metadata,
deterministically for `config.seed`. Every protocol is one function in `PROTOCOLS`,
registered by name, returning the (base, stack, test) clips of each of its folds:

  'random' (the thesis): one fold; stratified by emotion, `data.fractions` of each class to
    base / stack / test. The same actors appear in training and test.
  'actor': one fold; whole actors to each partition, `data.actor_split` actors, half male
    and half female: nobody in the test partition was seen in training.
  'actor_folds': one fold per actor group of `data.folds` (default: EmoBox's six), the
    group being the fold's test set: subject-independent k-fold cross-validation.
  'loso': leave one actor out, one fold per actor.
  'random_folds': stratified k-fold over clips (`data.num_folds`): the thesis' protocol
    repeated k times, so its (actor-leaky) figure gets an error bar too.

In the fold protocols, what is not tested is split into base and stack partitions: by
whole actors, gender-balanced, `data.stack_fraction` of them to the stack (by clips,
stratified, for 'random_folds'); without a stacker in `config.models` everything goes to
base. Then, inside every fold, a validation part is taken from each training partition for
early stopping: `data.val_fraction` of its clips, stratified by emotion, or of its actors
with `data.val_by_actor`.
"""

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
from absl import logging

from emojax import ravdess

# Partition names, in the order they are drawn.
PARTITIONS = ('base_train', 'base_val', 'stack_train', 'stack_val', 'test')
# EmoBox's RAVDESS folds: each actor group is the test set of one fold.
EMOBOX_FOLDS = ((1, 11, 20, 21), (4, 10, 12, 14), (8, 9, 19, 23), (3, 5, 7, 24), (2, 15, 16, 18), (6, 13, 17, 22))
# name -> protocol(clips, config) -> [(fold index, (base, stack, test) clip indices)] of its folds.
PROTOCOLS: dict[str, Callable] = {}


@dataclasses.dataclass(frozen=True)
class Fold:
  """One fold of a protocol.

  Attributes:
    index: its place in the protocol's list of folds (stable, whatever `data.only_folds` keeps).
    test_actors: the actors of its test partition.
    parts: partition name (`PARTITIONS`) -> sorted indices into the clips.
  """

  index: int
  test_actors: tuple[int, ...]
  parts: dict[str, np.ndarray]

  @property
  def name(self) -> str:
    return f'fold_{self.index}'


def register(name: str):
  """Adds a protocol to `PROTOCOLS` under `name`."""

  def add(protocol):
    PROTOCOLS[name] = protocol
    return protocol

  return add


def class_names(config) -> tuple[str, ...]:
  """The class set of `config.data.classes`."""
  classes = config.data.get('classes', 'thesis7')
  if classes not in ravdess.CLASS_SETS:
    raise ValueError(f'config.data.classes must be one of {sorted(ravdess.CLASS_SETS)}; got {classes!r}.')
  return ravdess.CLASS_SETS[classes]


def class_counts(labels: np.ndarray, names: Sequence[str] = ravdess.EMOTIONS) -> dict[str, int]:
  """Clips per class name, every class listed (0 included)."""
  return {name: int(np.sum(labels == c)) for c, name in enumerate(names)}


def split_stratified(
  indices: np.ndarray, labels: np.ndarray, fractions: Sequence[float], rng: np.random.Generator
) -> list[np.ndarray]:
  """Deals each class's clips to len(fractions) parts; per-class counts are within 1 of the fraction."""
  parts = [[] for _ in fractions]
  bounds = np.cumsum(fractions)
  for c in np.unique(labels[indices]):
    members = rng.permutation(indices[labels[indices] == c])
    cuts = np.round(bounds[:-1] * len(members)).astype(int)
    for part, piece in zip(parts, np.split(members, cuts)):
      part.append(piece)
  return [np.sort(np.concatenate(part)) if part else np.zeros(0, np.int64) for part in parts]


def take_validation(indices: np.ndarray, labels: np.ndarray, fraction: float, rng: np.random.Generator):
  """Splits `indices` into (train, val), `fraction` of each class to val (at least one when a class has two)."""
  train, val = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
  for c in np.unique(labels[indices]):
    members = rng.permutation(indices[labels[indices] == c])
    count = round(fraction * len(members))
    if fraction > 0 and len(members) >= 2:
      count = min(max(count, 1), len(members) - 1)
    val.append(members[:count])
    train.append(members[count:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _actors_by_gender(actors) -> dict[int, np.ndarray]:
  actors = np.asarray(sorted(actors), np.int64)
  return {g: actors[[ravdess.gender_of(int(a)) == g for a in actors]] for g in (0, 1)}


def split_actors(actors, fraction: float, rng: np.random.Generator, *, at_least_one: bool) -> tuple[list, list]:
  """Splits `actors` into (rest, chosen): `fraction` of each gender chosen, gender-balanced.

  With `at_least_one`, one actor is chosen even when the fraction rounds to none (from the
  larger gender), as long as one is left for the rest.
  """
  by_gender = {g: list(rng.permutation(group)) for g, group in _actors_by_gender(actors).items()}
  chosen = {g: [by_gender[g].pop() for _ in range(round(fraction * len(by_gender[g])))] for g in (0, 1)}
  total = len(actors)
  if at_least_one and fraction > 0 and not chosen[0] + chosen[1] and total >= 2:
    larger = max((0, 1), key=lambda g: len(by_gender[g]))
    chosen[larger].append(by_gender[larger].pop())
  return sorted(int(a) for a in by_gender[0] + by_gender[1]), sorted(int(a) for a in chosen[0] + chosen[1])


def _stack_fraction(config) -> float:
  return config.data.stack_fraction if 'stacker' in config.models else 0.0


@register('random')
def random_protocol(clips: dict, config) -> list:
  """One fold: `data.fractions` of each class to base / stack / test."""
  fractions = tuple(config.data.fractions)
  if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
    raise ValueError(
      f'data.fractions must be three non-negative numbers summing to 1 (base, stack, test); got {fractions}.'
    )
  labels = clips['label']
  rng = np.random.default_rng([config.seed, 0])
  return [(0, tuple(split_stratified(np.arange(len(labels)), labels, fractions, rng)))]


def fractions_of(config) -> tuple[float, ...] | None:
  """The (base, stack, test) fractions the run's protocol draws by: only 'random' uses `data.fractions`."""
  return tuple(config.data.fractions) if config.data.protocol == 'random' else None


@register('actor')
def actor_protocol(clips: dict, config) -> list:
  """One fold: whole actors to base / stack / test, half of each partition's actors male and half female."""
  actor_split = tuple(config.data.actor_split)
  if len(actor_split) != 3:
    raise ValueError(f'data.actor_split must be three actor counts (base, stack, test); got {actor_split}.')
  rng = np.random.default_rng([config.seed, 0])
  actors, first = np.unique(clips['actor'], return_index=True)
  genders = clips['gender'][first]
  by_gender = {g: list(rng.permutation(actors[genders == g])) for g in (0, 1)}
  available = {g: len(by_gender[g]) for g in (0, 1)}
  parts = []
  for name, count in zip(('base', 'stack', 'test'), actor_split):
    wanted = {0: count // 2, 1: count - count // 2}  # An odd count gives the extra actor to the women.
    chosen = {g: [by_gender[g].pop(0) for _ in range(min(wanted[g], len(by_gender[g])))] for g in (0, 1)}
    members = np.flatnonzero(np.isin(clips['actor'], chosen[0] + chosen[1]))
    if len(chosen[0]) < wanted[0] or len(chosen[1]) < wanted[1]:
      raise ValueError(
        f"Protocol 'actor' leaves partition '{name}' with {len(chosen[0])} male + {len(chosen[1])} female actors "
        f'({len(members)} clips, per class {class_counts(clips["label"][members], class_names(config))}), but '
        f'data.actor_split={actor_split} asks for {wanted[0]} + {wanted[1]}; the data has {available[0]} male and '
        f'{available[1]} female actors. Lower data.actor_split or use --config.data.protocol=random.'
      )
    parts.append(members)
  unused = by_gender[0] + by_gender[1]
  if unused:
    logging.warning(
      "Protocol 'actor': actors %s are in no partition (data.actor_split=%s).", sorted(unused), actor_split
    )
  return [(0, tuple(parts))]


def _actor_group_folds(clips: dict, config, groups: Sequence[Sequence[int]], protocol: str) -> list:
  """Folds whose test sets are actor groups; the other actors split into base and stack by actor."""
  present = sorted(int(a) for a in np.unique(clips['actor']))
  listed = [int(a) for group in groups for a in group]
  repeated = sorted({a for a in listed if listed.count(a) > 1})
  if repeated:
    raise ValueError(f'data.folds of protocol {protocol!r} overlap: actors {repeated} are in more than one fold.')
  untested = sorted(set(present) - set(listed))
  if untested:
    raise ValueError(
      f'data.folds of protocol {protocol!r} leave out actors {untested}, which are in the data: add them to a fold, '
      'or rebuild the data without them.'
    )
  folds = []
  for index, group in enumerate(groups):
    test_actors = sorted(set(int(a) for a in group) & set(present))
    if not test_actors:
      logging.warning(
        'Protocol %r: fold %d (actors %s) has no actor in the data; it is left out.', protocol, index, group
      )
      continue
    rng = np.random.default_rng([config.seed, 2, index])
    base_actors, stack_actors = split_actors(
      sorted(set(present) - set(test_actors)), _stack_fraction(config), rng, at_least_one=True
    )
    parts = tuple(
      np.flatnonzero(np.isin(clips['actor'], actors)) for actors in (base_actors, stack_actors, test_actors)
    )
    folds.append((index, parts))
  return folds


@register('actor_folds')
def actor_folds_protocol(clips: dict, config) -> list:
  """One fold per actor group of `data.folds` (default EmoBox's six)."""
  return _actor_group_folds(clips, config, config.data.folds, 'actor_folds')


@register('loso')
def loso_protocol(clips: dict, config) -> list:
  """Leave one actor out: one fold per actor in the data."""
  return _actor_group_folds(clips, config, [[int(a)] for a in np.unique(clips['actor'])], 'loso')


@register('random_folds')
def random_folds_protocol(clips: dict, config) -> list:
  """Stratified k-fold over clips: each class dealt evenly to `data.num_folds` test sets."""
  num_folds = config.data.num_folds
  labels = clips['label']
  if num_folds < 2:
    raise ValueError(f"data.num_folds must be at least 2 for protocol 'random_folds'; got {num_folds}.")
  rng = np.random.default_rng([config.seed, 0])
  fold_of = np.zeros(len(labels), np.int64)
  for c in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == c))
    fold_of[members] = np.arange(len(members)) % num_folds
  stack_fraction = _stack_fraction(config)
  folds = []
  for index in range(num_folds):
    rest = np.flatnonzero(fold_of != index)
    base, stack = split_stratified(
      rest, labels, (1 - stack_fraction, stack_fraction), np.random.default_rng([config.seed, 2, index])
    )
    folds.append((index, (base, stack, np.flatnonzero(fold_of == index))))
  return folds


def _validation(clips: dict, indices: np.ndarray, config, rng: np.random.Generator):
  """(train, val) of one training partition: by clips, stratified, or by whole actors."""
  if not config.data.get('val_by_actor', False) or len(indices) == 0:
    return take_validation(indices, clips['label'], config.data.val_fraction, rng)
  actors = np.unique(clips['actor'][indices])
  train_actors, val_actors = split_actors(actors, config.data.val_fraction, rng, at_least_one=True)
  return (
    indices[np.isin(clips['actor'][indices], train_actors)],
    indices[np.isin(clips['actor'][indices], val_actors)],
  )


def make_folds(clips: dict, config) -> list[Fold]:
  """Draws the folds of `config.data.protocol`: disjoint partitions, deterministic per `config.seed`.

  Returns:
    The folds kept by `data.only_folds` (all when it is empty), in the protocol's order.

  Raises:
    ValueError: an unknown protocol, bad protocol settings, or a partition the run needs
      left empty or without some class (naming the fold, the partition and its counts).
  """
  protocol = config.data.protocol
  if protocol not in PROTOCOLS:
    raise ValueError(f'config.data.protocol must be one of {sorted(PROTOCOLS)}; got {protocol!r}.')
  if not 0 < config.data.val_fraction < 1:
    raise ValueError(
      f'data.val_fraction must be in (0, 1): early stopping needs a validation part; got {config.data.val_fraction}.'
    )
  names = class_names(config)
  labels = clips['label']
  drawn = PROTOCOLS[protocol](clips, config)
  only = tuple(config.data.get('only_folds', ()))
  unknown = sorted(set(only) - {index for index, _ in drawn})
  if unknown:
    raise ValueError(
      f'data.only_folds names folds {unknown}, but protocol {protocol!r} has folds {[i for i, _ in drawn]} on this data.'
    )
  folds = []
  for index, (base, stack, test) in drawn:
    if only and index not in only:
      continue
    val_rng = np.random.default_rng([config.seed, 1, index])
    base_train, base_val = _validation(clips, base, config, val_rng)
    stack_train, stack_val = _validation(clips, stack, config, val_rng)
    parts = dict(zip(PARTITIONS, (base_train, base_val, stack_train, stack_val, test)))
    needed = [name for name in PARTITIONS if 'stacker' in config.models or not name.startswith('stack')]
    where = f'fold {index} of protocol {protocol!r}' if len(drawn) > 1 else f'protocol {protocol!r}'
    for name in needed:
      counts = class_counts(labels[parts[name]], names)
      if min(counts.values()) == 0:
        raise ValueError(
          f"The {where} leaves partition '{name}' with {len(parts[name])} clips, per class {counts}: every class "
          'needs at least one clip. Use more data, or change data.fractions / data.actor_split / data.folds / '
          'data.stack_fraction / data.val_fraction.'
        )
    test_actors = tuple(int(a) for a in np.unique(clips['actor'][test]))
    folds.append(Fold(index=index, test_actors=test_actors, parts=parts))
  return folds

"""Partition protocols: which clips train the base models, which the stacker, which test.

No split is baked into the data: a protocol draws the partitions from the clip metadata,
deterministically for a seed. Every protocol is one function in `PROTOCOLS`, registered by
name, and returns the list of its folds; a fold maps each name of `PARTITIONS` to sorted
indices into the clips.

  'random' (the thesis): stratified by emotion, seeded, `data.fractions` of each class to
    base / stack / test. The same actor appears in training and test.
  'actor': whole actors to each partition, `data.actor_split` actors, half male and half
    female, seeded: nobody in the test partition was seen in training.

Inside every fold, `data.val_fraction` of each training partition (base, stack), stratified
by emotion, becomes its validation partition for early stopping.
"""

from collections.abc import Callable, Sequence

import numpy as np
from absl import logging

from emojax import ravdess

# Partition names, in the order they are drawn.
PARTITIONS = ('base_train', 'base_val', 'stack_train', 'stack_val', 'test')
Fold = dict[str, np.ndarray]
# name -> protocol(clips, config) -> (base, stack, test) index arrays of each fold.
PROTOCOLS: dict[str, Callable] = {}


def register(name: str):
  """Adds a protocol to `PROTOCOLS` under `name`."""

  def add(protocol):
    PROTOCOLS[name] = protocol
    return protocol

  return add


def class_counts(labels: np.ndarray) -> dict[str, int]:
  """Clips per class name, every class listed (0 included)."""
  return {name: int(np.sum(labels == c)) for c, name in enumerate(ravdess.EMOTIONS)}


def split_stratified(
  indices: np.ndarray, labels: np.ndarray, fractions: Sequence[float], rng: np.random.Generator
) -> list[np.ndarray]:
  """Deals each class's clips to len(fractions) parts; per-class counts are within 1 of the fraction."""
  parts = [[] for _ in fractions]
  bounds = np.cumsum(fractions)
  for c in range(ravdess.NUM_CLASSES):
    members = rng.permutation(indices[labels[indices] == c])
    cuts = np.round(bounds[:-1] * len(members)).astype(int)
    for part, piece in zip(parts, np.split(members, cuts)):
      part.append(piece)
  return [np.sort(np.concatenate(part)) for part in parts]


def take_validation(indices: np.ndarray, labels: np.ndarray, fraction: float, rng: np.random.Generator):
  """Splits `indices` into (train, val), `fraction` of each class to val (at least one when a class has two)."""
  train, val = [], []
  for c in range(ravdess.NUM_CLASSES):
    members = rng.permutation(indices[labels[indices] == c])
    count = round(fraction * len(members))
    if fraction > 0 and len(members) >= 2:
      count = min(max(count, 1), len(members) - 1)
    val.append(members[:count])
    train.append(members[count:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


@register('random')
def random_protocol(clips: dict, config) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """One fold: `data.fractions` of each class to base / stack / test."""
  fractions = tuple(config.data.fractions)
  if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
    raise ValueError(
      f'data.fractions must be three non-negative numbers summing to 1 (base, stack, test); got {fractions}.'
    )
  labels = clips['label']
  rng = np.random.default_rng([config.seed, 0])
  return [tuple(split_stratified(np.arange(len(labels)), labels, fractions, rng))]


@register('actor')
def actor_protocol(clips: dict, config) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
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
        f'({len(members)} clips, per class {class_counts(clips["label"][members])}), but data.actor_split='
        f'{actor_split} asks for {wanted[0]} + {wanted[1]}; the data has {available[0]} male and '
        f'{available[1]} female actors. Lower data.actor_split or use --config.data.protocol=random.'
      )
    parts.append(members)
  unused = by_gender[0] + by_gender[1]
  if unused:
    logging.warning(
      "Protocol 'actor': actors %s are in no partition (data.actor_split=%s).", sorted(unused), actor_split
    )
  return [tuple(parts)]


def make_folds(clips: dict, config) -> list[Fold]:
  """Draws every fold of `config.data.protocol`: disjoint partitions, deterministic per `config.seed`.

  Returns:
    One dict per fold: partition name (`PARTITIONS`) -> sorted indices into `clips`.

  Raises:
    ValueError: an unknown protocol, bad protocol settings, or a partition the run needs
      left empty or without some class (naming the partition and its counts).
  """
  protocol = config.data.protocol
  if protocol not in PROTOCOLS:
    raise ValueError(f'data.protocol must be one of {sorted(PROTOCOLS)}; got {protocol!r}.')
  if not 0 < config.data.val_fraction < 1:
    raise ValueError(
      f'data.val_fraction must be in (0, 1): early stopping needs a validation part; got {config.data.val_fraction}.'
    )
  labels = clips['label']
  folds = []
  for base, stack, test in PROTOCOLS[protocol](clips, config):
    val_rng = np.random.default_rng([config.seed, 1])
    base_train, base_val = take_validation(base, labels, config.data.val_fraction, val_rng)
    stack_train, stack_val = take_validation(stack, labels, config.data.val_fraction, val_rng)
    fold = dict(zip(PARTITIONS, (base_train, base_val, stack_train, stack_val, test)))
    needed = [name for name in PARTITIONS if 'stacker' in config.models or not name.startswith('stack')]
    for name in needed:
      counts = class_counts(labels[fold[name]])
      if min(counts.values()) == 0:
        raise ValueError(
          f"Protocol {protocol!r} leaves partition '{name}' with {len(fold[name])} clips, per class {counts}: "
          'every class needs at least one clip. Use more data, or change data.fractions / data.actor_split / '
          'data.val_fraction.'
        )
    folds.append(fold)
  return folds

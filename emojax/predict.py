r"""Emotions in any video or recording, from a trained workdir.

  python -m emojax.predict --workdir=RUN PATH [PATH ...] [--output=FILE.jsonl|FILE.csv]

PATH is a media file (`data_prep.embed.MEDIA_EXTENSIONS`: mp4, mov, mkv, webm, avi; wav,
flac, mp3, m4a, ogg) or a directory, walked for them. Each file is embedded by
`data_prep.embed.embed_file` with the settings and extractors the run's data was built with
(recorded in RUN/data_settings.json), packed, normalised and batched by the same
`emojax.input_pipeline` functions as training, and scored by every model of the run that
its modalities allow: the audio model when it has audio, the visual model when a face was
found, the stacker when both. A run of several members (folds x seeds) is an ensemble: each
model's probabilities are the mean of its members'.

A file longer than the models' clip length (the data's min_audio_seconds, 5 s for RAVDESS
settings), or any file when --window_seconds or --hop_seconds is given, is scored window by
window (`data_prep.embed.embed_windows`: the file is decoded, face-detected and VGG16-embedded
once, each window takes its frames and its own slice of the audio), and gets a timeline PNG
of each emotion's probability over time. --annotate=OUT.mp4 writes a copy of one video with
the face box and the current window's probabilities drawn on every frame.

Output: a table per file on stdout, and with --output one JSON object per file (or per
window) in a .jsonl file, or one row per file (or window) and model in a .csv file. A file
that cannot be read is one line; the others are still scored, and the exit status is 1.

This is the one emojax module that imports `data_prep`: inference needs both halves, and runs
the embedding through data_prep's one-clip function, the one the shard builder calls.
`Predictor` (load a workdir once, score embeddings) needs nothing of data_prep.
"""

import csv
import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence

import jax
import ml_collections
import numpy as np

from emojax import cli

if __name__ == '__main__':
  # As in emojax.main: TensorFlow only runs the extractors, on the CPU, and leaves the
  # accelerators' memory to JAX. Done before clu imports TensorFlow below.
  cli.hide_gpus_from_tensorflow()
# These import TensorFlow (through clu): its start-up lines on a machine without GPUs are dropped.
with cli.filtered_native_stderr():
  from emojax import experiment, input_pipeline, models, partitions, schema, train

DEFAULT_WINDOW_SECONDS = 4.0
DEFAULT_HOP_SECONDS = 1.0
OUTPUT_FORMATS = ('.jsonl', '.csv')
# The extractor flags of data_prep that predict takes too, and the extractor each one picks.
EXTRACTOR_FLAGS = {'vgg16_weights': 'vgg16', 'vggish_handle': 'vggish'}
FINAL_MEAN = 'audio+visual'  # The mean of the two base models, for a run without a stacker.


# ----------------------------------------------------------------------------- a trained workdir


@dataclasses.dataclass
class Embeddings:
  """One clip's embeddings, as `Predictor.score` reads them (`data_prep.embed.ClipEmbedding` and `Window` fit too).

  Attributes:
    visual: [frames, 512] VGG16 rows, or None.
    audio: [rows, 128] VGGish rows, or None.
    reasons: modality -> why its embedding is None, in plain words.
  """

  visual: np.ndarray | None
  audio: np.ndarray | None
  reasons: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Prediction:
  """What the run's models say about one clip or window.

  Attributes:
    probabilities: model -> [classes] float64, the mean over members of each member's softmax.
    member_probabilities: model -> [members, classes] float64, each member's softmax.
    not_used: model -> why it did not score this clip, in plain words ('no audio track').
  """

  probabilities: dict[str, np.ndarray]
  member_probabilities: dict[str, np.ndarray]
  not_used: dict[str, str]

  def final(self) -> tuple[str, np.ndarray] | None:
    """(which, [classes]): the stacker's when it scored, else the one base model that did.

    When both base models scored and the run has no stacker, their mean (`FINAL_MEAN`). None
    when no model could score the clip.
    """
    if 'stacker' in self.probabilities:
      return 'stacker', self.probabilities['stacker']
    bases = [name for name in models.BASE_MODELS if name in self.probabilities]
    if len(bases) == 1:
      return bases[0], self.probabilities[bases[0]]
    if bases:
      return FINAL_MEAN, np.mean([self.probabilities[name] for name in bases], axis=0)
    return None


def read_data_settings(workdir: str, config) -> dict:
  """The workdir's record of how its data was embedded (`experiment.data_settings`).

  A workdir trained before that record existed falls back to its data's dataset_info.json,
  if config.data.dir still holds it.

  Raises:
    FileNotFoundError: neither the record nor the data can be found.
  """
  path = experiment.Paths(workdir).data_settings
  if os.path.exists(path):
    return train.read_json(path)
  data_dir = config.data.get('dir')
  try:
    info = input_pipeline.read_dataset_info(data_dir)
  except (FileNotFoundError, ValueError):
    raise FileNotFoundError(
      f'{path} does not exist and the data it was trained on ({data_dir}) cannot be read: retrain the run with '
      'this emojax, which records how its data was embedded.'
    ) from None
  return experiment.data_settings(info, config)


def _member_names(workdir: str, config) -> list[str]:
  """'fold_0/seed_1', ... in the order of the run's member axis (folds, then seeds)."""
  path = experiment.Paths(workdir).partitions
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist: pass --workdir=DIR, the workdir of a finished training run.')
  recorded = train.read_json(path)['folds']
  folds = [partitions.Fold(fold['index'], tuple(fold['test_actors']), {}) for fold in recorded]
  return [experiment.Member(fold, seed).name for fold in folds for seed in experiment.seeds_of(config)]


class Predictor:
  """A trained workdir, loaded once: scores clips' embeddings with every model and member of the run.

  Each stage's best parameters are restored once, with the normalisation statistics of each
  member (`<stage>/normalization.npz`); clips are packed (`input_pipeline.pack_embeddings`),
  scaled and batched (`input_pipeline.member_batches`) and run through the jitted, member-
  vmapped predict step (`train.predict`) exactly as eval does.

  Attributes:
    workdir: the run's directory.
    config: the run's config (config.json).
    data_settings: how its data was embedded (data_settings.json): 'settings', 'extractors', ...
    class_names: the classes, in label order.
    models: the run's models, in stage order ('audio', 'visual', 'stacker').
    member_names: one per member, e.g. 'fold_0/seed_0'.
  """

  def __init__(self, workdir: str):
    """Restores every stage of the run in `workdir`.

    Raises:
      FileNotFoundError: the workdir, its config.json or a stage's checkpoints are missing.
      ValueError: the run was trained on fake embeddings, or its files disagree with each other.
    """
    self.workdir = workdir
    paths = experiment.Paths(os.path.abspath(workdir))  # orbax takes absolute paths only.
    if not os.path.isfile(paths.config):
      raise FileNotFoundError(f'{paths.config} does not exist: pass --workdir=DIR, the workdir of a training run.')
    self.config = ml_collections.ConfigDict(train.read_json(paths.config))
    self.data_settings = read_data_settings(workdir, self.config)
    if self.data_settings.get('fake'):
      raise ValueError(
        f'{workdir} was trained on fake embeddings (emojax.fake_records), which no media file can be embedded as: '
        'train on TFRecords from data_prep/build_tfrecords.py to score media.'
      )
    self.class_names = tuple(self.data_settings['classes'])
    self.models = tuple(name for name in models.MODELS if name in self.config.models)  # The stacker last.
    self.member_names = _member_names(workdir, self.config)
    self.mesh = train.make_mesh()
    # Rows per batch: the run's batch size, a multiple of this machine's devices.
    devices = jax.device_count()
    self.batch_size = -(-self.config.batch_size // devices) * devices
    self.states, self.statistics = {}, {}
    for name in self.models:
      self.statistics[name] = self._load_statistics(paths, name)
      self.states[name] = self._restore(paths, name)
    # Compiles every stage for one clip now, so that the first file does not pay for it; the
    # batch of windows compiles when a recording first needs it.
    self.score([Embeddings(np.zeros((1, schema.VISUAL_DIM), np.float32), np.zeros((1, schema.AUDIO_DIM), np.float32))])

  @property
  def num_members(self) -> int:
    return len(self.member_names)

  def _load_statistics(self, paths: experiment.Paths, name: str) -> list[dict]:
    path = paths.normalization(name)
    if not os.path.exists(path):
      if self.config.data.normalize != 'none':
        raise FileNotFoundError(
          f"{path} does not exist, but the run scales stage '{name}' ({self.config.data.normalize}): retrain the "
          'stage with this emojax, which saves its statistics.'
        )
      return [{} for _ in self.member_names]
    _, statistics = input_pipeline.load_normalization(path)
    if len(statistics) != self.num_members:
      raise ValueError(
        f'{path} holds {len(statistics)} members but {paths.partitions} and config.json make {self.num_members}: '
        'the workdir holds files of different runs; retrain it.'
      )
    return statistics

  def _example_batch(self, name: str) -> dict:
    """One [members, rows, ...] batch with the shapes stage `name` was initialised on."""
    if models.MODELS[name].stacked:
      width = sum(self._penultimate_width(base) for base in models.BASE_MODELS)
      arrays = {'features': np.zeros((1, width), np.float32), 'label': np.zeros(1, np.int32)}
    else:
      arrays = self._pack([None], [None])
    data = [input_pipeline.MemberData(arrays, np.arange(1)) for _ in self.member_names]
    return next(self._batches(name, data))

  def _penultimate_width(self, name: str) -> int:
    """The width of base model `name`'s penultimate features, which the stacker reads."""
    batch = self._example_batch(name)
    _, penultimate = jax.eval_shape(jax.vmap(train.predict_step), self.states[name], batch)
    return penultimate.shape[-1]

  def _restore(self, paths: experiment.Paths, name: str) -> train.TrainState:
    stage = train.Stage(
      name=name,
      directory=paths.stage(name),
      model=models.build_model(name, self.config.model, len(self.class_names)),
      members=tuple(self.member_names),
      keys=jax.random.split(jax.random.key(0), self.num_members),  # Shapes only: the parameters are restored.
      train_batches=lambda epoch, active: iter(()),
      val_batches=lambda: iter(()),
      example_batch=self._example_batch(name),
      num_train_batches=0,
      class_names=self.class_names,
    )
    state, _ = train.restore(self.config, stage, self.mesh)
    return state

  def _pack(self, visual: Sequence, audio: Sequence) -> dict:
    packed = input_pipeline.pack_embeddings(
      visual, audio, self.config.data.max_frames, self.config.model.audio.num_audio_frames
    )
    packed['label'] = np.zeros(len(visual), np.int32)  # The batches carry labels; prediction ignores them.
    return packed

  def _batches(self, name: str, data: Sequence[input_pipeline.MemberData]) -> Iterator[dict]:
    """The members' batches as eval makes them, in two shapes only, so that jit compiles each once.

    One clip (the common case: a file of a clip's length) takes one row per device; more take
    the run's batch size. The time axis is always `data.max_frames`: padding frames are
    masked, so the results equal eval's time-bucketed batches, and no clip length compiles anew.
    """
    devices = jax.device_count()
    rows = devices if max(len(member.indices) for member in data) <= devices else self.batch_size
    return input_pipeline.member_batches(data, rows, keys=models.MODELS[name].inputs, time_bucket=None)

  def _outputs(self, name: str, arrays: Sequence[dict]) -> list[dict]:
    """Every member's logits and penultimate features of stage `name` on its `arrays` (one per member)."""
    data = [
      input_pipeline.MemberData(member_arrays, np.arange(len(member_arrays['label'])), statistics)
      for member_arrays, statistics in zip(arrays, self.statistics[name], strict=True)
    ]
    return train.predict(self.states[name], self._batches(name, data), self.mesh, [len(a['label']) for a in arrays])

  def score(self, examples: Sequence) -> list[Prediction]:
    """Scores clips or windows with every model of the run that their embeddings allow.

    Args:
      examples: anything with `visual` ([frames, 512] VGG16 rows or None), `audio` ([rows,
        128] VGGish rows or None) and `reasons` (modality -> why it is None), such as
        `data_prep.embed.ClipEmbedding` and `data_prep.embed.Window`.

    Returns:
      One `Prediction` per example, in order.
    """
    examples = list(examples)
    results = [Prediction({}, {}, {}) for _ in examples]
    if not examples:
      return results
    packed = self._pack([e.visual for e in examples], [e.audio for e in examples])
    # Base model -> {example index: its row}, and per member its penultimate features [rows, features].
    rows, penultimates = {}, {}
    for name in self.models:
      stream = models.MODELS[name].stream
      if models.MODELS[name].stacked:
        continue
      indices = [i for i, e in enumerate(examples) if getattr(e, stream) is not None]
      for i, e in enumerate(examples):
        if getattr(e, stream) is None:
          results[i].not_used[name] = e.reasons.get(stream, f'no {stream} embedding')
      if indices:
        outputs = self._outputs(name, [input_pipeline.take(packed, np.array(indices))] * self.num_members)
        self._record(name, indices, outputs, results)
        rows[name] = {i: row for row, i in enumerate(indices)}
        penultimates[name] = [output['penultimate'] for output in outputs]
    if 'stacker' in self.models:
      # The stacker reads both base models' features of the same clip, so it scores clips with both.
      both = [i for i in range(len(examples)) if all(i in rows.get(base, {}) for base in models.BASE_MODELS)]
      for i in sorted(set(range(len(examples))) - set(both)):
        missing = [results[i].not_used[base] for base in models.BASE_MODELS if base in results[i].not_used]
        results[i].not_used['stacker'] = 'needs audio and visual: ' + '; '.join(missing)
      if both:
        features = [
          np.concatenate([penultimates[base][k][[rows[base][i] for i in both]] for base in models.BASE_MODELS], axis=1)
          for k in range(self.num_members)
        ]  # Per member [len(both), 256 + 100], in the order the stacker was trained on.
        arrays = [{'features': member, 'label': np.zeros(len(both), np.int32)} for member in features]
        self._record('stacker', both, self._outputs('stacker', arrays), results)
    return results
    packed = self._pack([e.visual for e in examples], [e.audio for e in examples])
    penultimates = {}  # base model -> (example indices, per member [n, features])
    for name in self.models:
      spec = models.MODELS[name]
      if spec.stacked:
        continue
      indices = [i for i, e in enumerate(examples) if getattr(e, spec.stream) is not None]
      for i, e in enumerate(examples):
        if getattr(e, spec.stream) is None:
          results[i].not_used[name] = e.reasons.get(spec.stream, f'no {spec.stream} embedding')
      if not indices:
        continue
      split = input_pipeline.take(packed, np.array(indices))
      outputs = self._outputs(name, [split] * self.num_members)
      self._record(name, indices, outputs, results)
      penultimates[name] = (indices, [output['penultimate'] for output in outputs])
    if 'stacker' in self.models:
      both = [i for i in range(len(examples)) if all(i in penultimates.get(b, ((), ()))[0] for b in models.BASE_MODELS)]
      for i, e in enumerate(examples):
        if i not in both:
          missing = [
            e.reasons.get(models.MODELS[b].stream, 'not scored') for b in models.BASE_MODELS if b in results[i].not_used
          ]
          results[i].not_used['stacker'] = 'needs audio and visual: ' + '; '.join(missing)
      if both:
        arrays = []
        for k in range(self.num_members):
          rows = []
          for base in models.BASE_MODELS:
            indices, features = penultimates[base]
            position = {example: row for row, example in enumerate(indices)}
            rows.append(features[k][[position[i] for i in both]])
          arrays.append({'features': np.concatenate(rows, axis=1), 'label': np.zeros(len(both), np.int32)})
        self._record('stacker', both, self._outputs('stacker', arrays), results)
    return results

  def _record(self, name: str, indices: Sequence[int], outputs: list[dict], results: list[Prediction]) -> None:
    logits = np.stack([output['logits'] for output in outputs]).astype(np.float64)  # [members, n, classes]
    logits -= logits.max(-1, keepdims=True)
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    for row, i in enumerate(indices):
      results[i].member_probabilities[name] = probabilities[:, row]
      results[i].probabilities[name] = probabilities[:, row].mean(0)


def check_extractors(recorded: dict, identities: dict, source: str) -> None:
  """Refuses extractors other than those the run's data was embedded with.

  Args:
    recorded: the run's extractor identities (data_settings.json's 'extractors').
    identities: name ('vgg16', 'vggish') -> the identity of the extractor about to be used.
    source: the file the recorded identities come from, for the message.

  Raises:
    ValueError: naming the first extractor and field that differ.
  """
  for name, identity in identities.items():
    expected = recorded.get(name)
    if expected is None or identity == expected:
      continue
    field = next(key for key in sorted(set(expected) | set(identity)) if expected.get(key) != identity.get(key))
    flag = next(flag for flag, extractor in EXTRACTOR_FLAGS.items() if extractor == name)
    raise ValueError(
      f'The models were trained on {name} embeddings with {field}={expected.get(field)!r} ({source}), but this run '
      f'would use {field}={identity.get(field)!r}: pass --{flag} to match, or a workdir trained on those features.'
    )


# ----------------------------------------------------------------------------- files in, results out


@dataclasses.dataclass
class FileResult:
  """One input file's outcome.

  Attributes:
    path: the file.
    error: why it could not be scored (one sentence), or None.
    embedding: its `data_prep.embed.ClipEmbedding`, or None after an error.
    windows: its `data_prep.embed.Window`s when it was scored window by window, else None.
    predictions: one `Prediction` for the whole file, or one per window.
    seconds: wall time spent on it.
  """

  path: str
  error: str | None = None
  embedding: object = None
  windows: list | None = None
  predictions: list[Prediction] = dataclasses.field(default_factory=list)
  seconds: float = 0.0

  @property
  def spans(self) -> list[tuple[float, float]]:
    """(start, end) seconds of each prediction: the windows', or the whole file's."""
    if self.windows is not None:
      return [(w.start, w.end) for w in self.windows]
    return [(0.0, self.embedding.source.duration)]


def find_media(paths: Sequence[str]) -> tuple[list[str], list[str]]:
  """The media files named by `paths`: files as given (whatever their type), directories walked.

  Returns:
    (files, ignored): `files` in the order given, each directory's sorted; `ignored` the
    files found in directories that are not media (`MEDIA_EXTENSIONS`).
  """
  from data_prep import embed

  files, ignored = [], []
  for path in paths:
    if not os.path.isdir(path):
      files.append(path)
      continue
    for root, directories, names in os.walk(path):
      directories[:] = sorted(d for d in directories if not d.startswith('.'))
      for name in sorted(names):
        if name.startswith('.'):
          continue
        full = os.path.join(root, name)
        (files if os.path.splitext(name)[1].lower() in embed.MEDIA_EXTENSIONS else ignored).append(full)
  return files, ignored


class MediaScorer:
  """A `Predictor` with the extractors and face detector its data was embedded with, each loaded once.

  Attributes:
    predictor: the loaded workdir.
    settings: the `data_prep.embed.EmbedSettings` of its data, for the modalities its models read.
  """

  def __init__(
    self,
    predictor: Predictor,
    *,
    vgg16_weights: str | None = None,
    vggish_handle: str | None = None,
    cache_dir: str | None = None,
  ):
    """Loads the extractors the run's data was embedded with (or those the arguments name).

    Raises:
      ValueError: an extractor differs from the recorded one, naming the difference.
      data_prep.extractors.ExtractorError: an extractor cannot be loaded.
    """
    from data_prep import embed

    self.predictor = predictor
    data = predictor.data_settings
    source = experiment.Paths(predictor.workdir).data_settings
    recorded = dict(data['settings'])
    needed = input_pipeline.required_modalities(predictor.models)
    present = recorded.get('modalities') or input_pipeline.MODALITIES
    settings = dict(recorded, modalities=[m for m in needed if m in present])
    # The flags are checked against the record before anything loads: a wrong one could
    # otherwise start a download, or fail offline with a message about the network.
    for flag, value in (('vgg16_weights', vgg16_weights), ('vggish_handle', vggish_handle)):
      name = EXTRACTOR_FLAGS[flag]
      modality = 'visual' if name == 'vgg16' else 'audio'
      if value is None or modality not in settings['modalities']:
        continue
      if recorded.get(flag) not in (None, value):
        raise ValueError(
          f'The models were trained on {name} embeddings from --{flag}={recorded[flag]} ({source}), not {value}: '
          f'pass --{flag}={recorded[flag]}, or a workdir trained on those features.'
        )
      settings[flag] = value
    self.settings = embed.EmbedSettings.from_settings(settings)
    self.vgg16, self.vggish = embed.load_extractors(settings, cache_dir)
    identities = {name: e.identity for name, e in (('vgg16', self.vgg16), ('vggish', self.vggish)) if e is not None}
    check_extractors(data.get('extractors', {}), identities, source)
    self.detector = embed.make_detector(self.settings) if 'visual' in self.settings.modalities else None
    self._warm_up()

  def _warm_up(self) -> None:
    """Runs each extractor once, so that the first file does not pay for tracing and JIT compilation."""
    from data_prep import audio

    if self.vgg16 is not None:
      size = self.settings.image_size
      self.vgg16(np.zeros((1, size, size, 3), np.uint8))
    if self.vggish is not None:
      # The resampler compiles (numba) on its first call, whatever the rates.
      waveform = audio.to_vggish_rate(np.zeros(4800, np.float32), 48000)
      self.vggish(audio.pad_waveform(waveform, self.settings.min_audio_seconds))

  @property
  def clip_seconds(self) -> float:
    """The models' clip length: a longer file is scored window by window."""
    return self.settings.min_audio_seconds

  def score_file(
    self,
    path: str,
    *,
    windows: bool | None = None,
    window_seconds: float = DEFAULT_WINDOW_SECONDS,
    hop_seconds: float = DEFAULT_HOP_SECONDS,
  ) -> FileResult:
    """Embeds and scores one file; a file that cannot be read gives a result with its `error`.

    Args:
      path: the media file.
      windows: True scores it window by window, False as one clip, None window by window only
        when it is longer than `clip_seconds`.
      window_seconds: window length.
      hop_seconds: time between window starts.
    """
    from data_prep import embed

    start = time.perf_counter()
    result = FileResult(path)
    try:
      result.embedding = embed.embed_file(path, self.settings, self.vgg16, self.vggish, self.detector)
    except embed.MediaError as error:
      result.error = str(error)
      result.seconds = time.perf_counter() - start
      return result
    if windows is None:
      windows = result.embedding.source.duration > self.clip_seconds + 1e-6
    if windows:
      result.windows = embed.embed_windows(result.embedding, self.vggish, window_seconds, hop_seconds)
      result.predictions = self.predictor.score(result.windows)
    else:
      result.predictions = self.predictor.score([result.embedding])
    result.seconds = time.perf_counter() - start
    return result


# ----------------------------------------------------------------------------- text, JSONL and CSV


def _probabilities(values: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
  return {name: round(float(p), 6) for name, p in zip(class_names, values, strict=True)}


def _source_line(result: FileResult) -> str:
  source = result.embedding.source
  parts = [f'{source.duration:.1f} s']
  if source.width:
    parts.append(f'{source.width}x{source.height} {source.fps:.2f} fps')
    if result.embedding.num_frames:
      share = result.embedding.face_detected_frames / result.embedding.num_frames
      parts.append(f'face in {100 * share:.0f}% of frames')
  if source.sample_rate:
    parts.append(f'audio {source.sample_rate} Hz')
  return ', '.join(parts)


def header_lines(predictor: Predictor) -> list[str]:
  """What every output starts with: the run, its models, its members and its extractors."""
  data = predictor.data_settings
  lines = [f'emojax predict: {predictor.workdir} ({", ".join(predictor.models)}; classes {data["class_set"]})']
  if predictor.num_members > 1:
    lines.append(
      f"  ensemble of {predictor.num_members} members ({', '.join(predictor.member_names)}): each model's "
      "probabilities are the mean of its members'."
    )
  if data.get('stand_in_extractors'):
    lines.append(
      '  extractors: UNTRAINED stand-ins (random weights): these numbers show that the pipeline runs, not what '
      'anyone feels.'
    )
  return lines


def format_result(result: FileResult, class_names: Sequence[str], models_of_run: Sequence[str]) -> str:
  """The stdout table of one file: each model's top emotion and probabilities, or the timeline of its windows."""
  if result.error:
    return f'{result.path}: error: {result.error}'
  width = max(6, *(len(name) for name in class_names)) + 1
  lines = [f'{result.path}: {_source_line(result)}']
  heads = ''.join(f'{name[: width - 1]:>{width}}' for name in class_names)
  if result.windows is None:
    prediction = result.predictions[0]
    lines.append(f'  {"model":<9}{"emotion":<{width + 1}}{heads}')
    for name in models_of_run:
      if name in prediction.probabilities:
        p = prediction.probabilities[name]
        cells = ''.join(f'{value:>{width}.2f}' for value in p)
        lines.append(f'  {name:<9}{class_names[int(p.argmax())]:<{width + 1}}{cells}')
      else:
        lines.append(f'  {name:<9}not used: {prediction.not_used[name]}')
    final = prediction.final()
    if final is None:
      lines.append('  => no model could score this file.')
    else:
      which, p = final
      lines.append(f'  => {class_names[int(p.argmax())]} ({which}, p={p.max():.2f})')
    return '\n'.join(lines)

  windows = result.windows
  lines[0] += f'; {len(windows)} windows of {windows[0].end - windows[0].start:g} s'
  # Each model's top emotion; the probabilities are the final model's, marked with '*'.
  tops = ''.join(f'{name:<{width + 2}}' for name in models_of_run)
  lines.append(f'  {"start":>6}{"end":>7}  {tops}{heads}')
  runs = []  # [top emotion, first window, last window]
  for k, (window, prediction) in enumerate(zip(windows, result.predictions, strict=True)):
    final = prediction.final()
    if final is None:
      reasons = '; '.join(f'{name}: {why}' for name, why in prediction.not_used.items())
      lines.append(f'  {window.start:>6.1f}{window.end:>7.1f}  not scored ({reasons})')
      continue
    which, p = final
    cells = []
    for name in models_of_run:
      top = class_names[int(prediction.probabilities[name].argmax())] if name in prediction.probabilities else '-'
      cells.append(f'{top + ("*" if name == which else ""):<{width + 2}}')
    values = ''.join(f'{value:>{width}.2f}' for value in p)
    lines.append(f'  {window.start:>6.1f}{window.end:>7.1f}  {"".join(cells)}{values}')
    top = class_names[int(p.argmax())]
    if runs and runs[-1][0] == top and runs[-1][2] == k - 1:
      runs[-1][2] = k
    else:
      runs.append([top, k, k])
  if runs:
    from emojax import render

    edges = render.window_edges(np.array([w.start for w in windows]), np.array([w.end for w in windows]))
    spans = [f'{edges[first]:.1f}-{edges[last + 1]:.1f} s {top}' for top, first, last in runs]
    lines.append('  => ' + '; '.join(spans))
  return '\n'.join(lines)


def records(result: FileResult, class_names: Sequence[str]) -> list[dict]:
  """The JSONL objects of one file: one for the whole file, or one per window, or one with its error."""
  if result.error:
    return [{'file': result.path, 'error': result.error}]
  source = dataclasses.asdict(result.embedding.source)
  rows = []
  for k, ((start, end), prediction) in enumerate(zip(result.spans, result.predictions, strict=True)):
    row = {'file': result.path, 'window': k if result.windows is not None else None, 'start': start, 'end': end}
    row['models'] = {
      name: {'top': class_names[int(p.argmax())], 'probabilities': _probabilities(p, class_names)}
      for name, p in prediction.probabilities.items()
    }
    row['not_used'] = dict(prediction.not_used)
    final = prediction.final()
    row['final'] = (
      None
      if final is None
      else {
        'model': final[0],
        'top': class_names[int(final[1].argmax())],
        'probability': round(float(final[1].max()), 6),
      }
    )
    row['source'] = source
    rows.append(row)
  return rows


def csv_columns(class_names: Sequence[str]) -> list[str]:
  return ['file', 'window', 'start', 'end', 'model', 'top', *(f'p_{name}' for name in class_names), 'note']


def csv_rows(result: FileResult, class_names: Sequence[str], models_of_run: Sequence[str]) -> list[list]:
  """The CSV rows of one file: per whole file or window, one per model (probabilities, or why not) and 'final'."""
  empty = [''] * len(class_names)
  if result.error:
    return [[result.path, '', '', '', '', '', *empty, result.error]]
  rows = []
  for k, ((start, end), prediction) in enumerate(zip(result.spans, result.predictions, strict=True)):
    where = [result.path, k if result.windows is not None else '', f'{start:.3f}', f'{end:.3f}']
    for name in models_of_run:
      if name in prediction.probabilities:
        p = prediction.probabilities[name]
        rows.append([*where, name, class_names[int(p.argmax())], *(f'{v:.6f}' for v in p), ''])
      else:
        rows.append([*where, name, '', *empty, f'not used: {prediction.not_used[name]}'])
    final = prediction.final()
    if final is None:
      rows.append([*where, 'final', '', *empty, 'no model could score this'])
    else:
      which, p = final
      rows.append([*where, 'final', class_names[int(p.argmax())], *(f'{v:.6f}' for v in p), which])
  return rows


def timeline_path(result: FileResult, directory: str, taken: set) -> str:
  """`directory/<file name>.timeline.png`, numbered when two inputs share a name."""
  stem = os.path.basename(result.path)
  path = os.path.join(directory, f'{stem}.timeline.png')
  count = 1
  while path in taken:
    count += 1
    path = os.path.join(directory, f'{stem}.{count}.timeline.png')
  taken.add(path)
  return path


def final_series(result: FileResult, num_classes: int) -> tuple[np.ndarray, str]:
  """([predictions, classes] final probabilities, NaN where no model scored; which models gave them)."""
  series = np.full((len(result.predictions), num_classes), np.nan)
  which = []
  for k, prediction in enumerate(result.predictions):
    final = prediction.final()
    if final is not None:
      series[k] = final[1]
      which.append(final[0])
  return series, ', '.join(dict.fromkeys(which)) or 'none'


def model_series(result: FileResult, name: str, num_classes: int) -> np.ndarray:
  """[predictions, classes] probabilities of model `name`, NaN where it did not score."""
  series = np.full((len(result.predictions), num_classes), np.nan)
  for k, prediction in enumerate(result.predictions):
    if name in prediction.probabilities:
      series[k] = prediction.probabilities[name]
  return series


def write_timeline(result: FileResult, path: str, predictor: Predictor) -> str:
  """The timeline PNG of a file scored window by window: a panel per model that scored some window."""
  from emojax import render

  num_classes = len(predictor.class_names)
  panels = {
    name: model_series(result, name, num_classes)
    for name in predictor.models
    if any(name in prediction.probabilities for prediction in result.predictions)
  }
  if not panels:
    panels = {'no model could score': np.full((len(result.predictions), num_classes), np.nan)}
  starts, ends = zip(*result.spans, strict=True)
  title = os.path.basename(result.path)
  if predictor.num_members > 1:
    title += f': ensemble of {predictor.num_members} members'
  if predictor.data_settings.get('stand_in_extractors'):
    title += ' (UNTRAINED stand-in extractors)'
  return render.timeline_png(path, starts, ends, panels, predictor.class_names, title)


def annotate(result: FileResult, destination: str, predictor: Predictor) -> dict:
  """Writes the annotated copy of a scored video (`render.annotate_video`)."""
  from emojax import render

  embedding = result.embedding
  series, which = final_series(result, len(predictor.class_names))
  starts, ends = zip(*result.spans, strict=True)
  return render.annotate_video(
    result.path,
    destination,
    fps=embedding.settings.fps,
    face_boxes=embedding.face_boxes,
    face_detected=embedding.face_detected,
    rotation=embedding.source.rotation,
    starts=starts,
    ends=ends,
    probabilities=series,
    class_names=predictor.class_names,
    caption=which,
  )


class OutputFile:
  """--output: JSONL (one object per file or window) or CSV (one row per file or window and model), written as results come."""

  def __init__(self, path: str, class_names: Sequence[str], models_of_run: Sequence[str]):
    extension = os.path.splitext(path)[1].lower()
    if extension not in OUTPUT_FORMATS:
      raise ValueError(f'--output={path} must end in {" or ".join(OUTPUT_FORMATS)}.')
    self.path, self.format = path, extension
    self.class_names, self.models = class_names, models_of_run
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self._file = open(path, 'w', newline='', encoding='utf-8')  # noqa: SIM115  Closed by close().
    self._csv = csv.writer(self._file, lineterminator='\n') if extension == '.csv' else None
    if self._csv:
      self._csv.writerow(csv_columns(class_names))

  def write(self, result: FileResult) -> None:
    if self._csv:
      self._csv.writerows(csv_rows(result, self.class_names, self.models))
    else:
      for record in records(result, self.class_names):
        self._file.write(json.dumps(record) + '\n')
    self._file.flush()

  def close(self) -> None:
    self._file.close()


def run(
  workdir: str,
  paths: Sequence[str],
  *,
  output: str | None = None,
  windows: bool | None = None,
  window_seconds: float = DEFAULT_WINDOW_SECONDS,
  hop_seconds: float = DEFAULT_HOP_SECONDS,
  timeline_dir: str | None = None,
  annotate_path: str | None = None,
  vgg16_weights: str | None = None,
  vggish_handle: str | None = None,
  cache_dir: str | None = None,
  scorer: MediaScorer | None = None,
  stdout=None,
) -> int:
  """The command line's work: scores every file of `paths`, prints and writes the results.

  Args:
    workdir: a trained run.
    paths: files and directories.
    output: a .jsonl or .csv file to write, or None.
    windows: see `MediaScorer.score_file`.
    window_seconds: window length.
    hop_seconds: time between window starts.
    timeline_dir: where timeline PNGs go (default: next to `output`, else the current directory).
    annotate_path: an .mp4 to write the annotated copy of the (single, video) input to.
    vgg16_weights: VGG16 weights (default: the recorded ones).
    vggish_handle: VGGish handle (default: the recorded one).
    cache_dir: where the 'random' VGGish stand-in is kept.
    scorer: a `MediaScorer` already loaded for `workdir` (then the extractor arguments are
      unused); by default one is loaded.
    stdout: where the tables go (default sys.stdout).

  Returns:
    The exit status: 1 when a file failed, else 0.

  Raises:
    ValueError, FileNotFoundError: a problem with the whole run (one sentence).
  """
  stdout = stdout or sys.stdout
  if window_seconds <= 0 or hop_seconds <= 0:
    raise ValueError(f'--window_seconds={window_seconds} and --hop_seconds={hop_seconds} must both be positive.')
  files, ignored = find_media(paths)
  if not files:
    raise FileNotFoundError(
      f'No media files in {", ".join(paths)}: pass video ({", ".join(_video_extensions())}) or audio files, or '
      'directories holding them.'
    )
  if annotate_path is not None:
    if len(files) != 1 or os.path.splitext(files[0])[1].lower() not in _video_extensions():
      raise ValueError(f'--annotate={annotate_path} draws on one video: pass exactly one video file.')
    if os.path.splitext(annotate_path)[1].lower() != '.mp4':
      raise ValueError(f'--annotate={annotate_path} must end in .mp4.')
  if output is not None and os.path.splitext(output)[1].lower() not in OUTPUT_FORMATS:
    raise ValueError(f'--output={output} must end in {" or ".join(OUTPUT_FORMATS)}.')
  if scorer is None:
    predictor = Predictor(workdir)
    scorer = MediaScorer(predictor, vgg16_weights=vgg16_weights, vggish_handle=vggish_handle, cache_dir=cache_dir)
  predictor = scorer.predictor
  if timeline_dir is None:
    timeline_dir = os.path.dirname(os.path.abspath(output)) if output else os.getcwd()
  print('\n'.join(header_lines(predictor)), file=stdout)
  if 'visual' in predictor.models:
    longest = predictor.config.data.max_frames / scorer.settings.fps
    if max(window_seconds, scorer.clip_seconds) > longest:
      print(
        f'  note: the visual model reads at most {predictor.config.data.max_frames} frames ({longest:.1f} s at '
        f'{scorer.settings.fps:g} fps), as in training: longer clips and windows are cut.',
        file=stdout,
      )
  if ignored:
    shown = ', '.join(os.path.basename(path) for path in ignored[:3]) + (', ...' if len(ignored) > 3 else '')
    print(f'  ignored {len(ignored)} file(s) that are not media: {shown}', file=stdout)
  writer = OutputFile(output, predictor.class_names, predictor.models) if output else None
  failed, taken = 0, set()
  try:
    for path in files:
      result = scorer.score_file(path, windows=windows, window_seconds=window_seconds, hop_seconds=hop_seconds)
      print('\n' + format_result(result, predictor.class_names, predictor.models), file=stdout, flush=True)
      failed += result.error is not None
      if writer:
        writer.write(result)
      if result.error is None and result.windows is not None:
        png = write_timeline(result, timeline_path(result, timeline_dir, taken), predictor)
        print(f'  timeline: {png}', file=stdout)
      if result.error is None and annotate_path is not None:
        if result.embedding.num_frames == 0:
          print(f'  annotate: {path} has no video frames to draw on.', file=stdout)
          failed += 1
        else:
          written = annotate(result, annotate_path, predictor)
          sound = 'with its audio' if written['audio'] else 'no audio track'
          print(f'  annotated: {annotate_path} ({written["frames"]} frames, {sound})', file=stdout)
  finally:
    if writer:
      writer.close()
  summary = f'\n{len(files) - failed} of {len(files)} file(s) scored'
  if writer:
    summary += f'; results in {output}'
  print(summary + ('; see the errors above.' if failed else '.'), file=stdout, flush=True)
  return 1 if failed else 0


def _video_extensions() -> tuple[str, ...]:
  from data_prep import embed

  return embed.VIDEO_EXTENSIONS


# ----------------------------------------------------------------------------- command line


def _define_flags() -> None:
  from absl import flags

  flags.DEFINE_string('workdir', None, 'The workdir of a training run (python -m emojax.main).')
  flags.DEFINE_string('output', None, 'Write the results to this .jsonl (one object per file or window) or .csv.')
  flags.DEFINE_float('window_seconds', DEFAULT_WINDOW_SECONDS, 'Window length; giving it scores every file by windows.')
  flags.DEFINE_float(
    'hop_seconds', DEFAULT_HOP_SECONDS, 'Time between windows; giving it scores every file by windows.'
  )
  flags.DEFINE_string('timeline_dir', None, 'Where timeline PNGs go (default: next to --output, else here).')
  flags.DEFINE_string('annotate', None, 'Write a copy of the (one) input video with faces and probabilities drawn.')
  flags.DEFINE_string('vgg16_weights', None, 'VGG16 weights as data_prep takes them (default: what the run used).')
  flags.DEFINE_string('vggish_handle', None, 'VGGish handle as data_prep takes it (default: what the run used).')
  flags.DEFINE_string('cache_dir', None, "Where the 'random' VGGish stand-in is kept (as data_prep's --cache_dir).")
  flags.mark_flags_as_required(['workdir'])


def main(argv: list[str]) -> None:
  from absl import flags

  flag_values = flags.FLAGS
  cli.filter_start_up_noise()
  if len(argv) < 2:
    cli.fail('pass the media files or directories to score, e.g. python -m emojax.predict --workdir=RUN clip.mp4')
  windowed = True if flag_values['window_seconds'].present or flag_values['hop_seconds'].present else None
  from data_prep import extractors

  try:
    status = run(
      flag_values.workdir,
      argv[1:],
      output=flag_values.output,
      windows=windowed,
      window_seconds=flag_values.window_seconds,
      hop_seconds=flag_values.hop_seconds,
      timeline_dir=flag_values.timeline_dir,
      annotate_path=flag_values.annotate,
      vgg16_weights=flag_values.vgg16_weights,
      vggish_handle=flag_values.vggish_handle,
      cache_dir=flag_values.cache_dir,
    )
  except (ValueError, FileNotFoundError, extractors.ExtractorError) as error:
    cli.fail(str(error))
  sys.exit(status)


if __name__ == '__main__':
  from absl import app

  _define_flags()
  app.run(main)

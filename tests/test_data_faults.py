"""Bad data fails in load_clips, before anything compiles, with one sentence naming the file or the clip.

Each test damages a copy of one small fake dataset the way a shared machine does: a shard cut
short by a full disk or a killed copy, flipped bytes, a shard lost or left from another
build, a NaN from an extractor, a label that disagrees with its emotion code, a hand-edited
dataset_info.json.
"""

import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from configs import default
from emojax import fake_records, input_pipeline, schema

NUM_SHARDS = 2
SHARD = schema.shard_name(1, NUM_SHARDS)  # The shard every test damages.
REBUILD = rf'delete it and .*{schema.SHARD_INFO_DIR}/{os.path.splitext(SHARD)[0]}\.json, then rerun the same '


def _config(data_dir, models=('audio', 'visual', 'stacker')):
  config = default.get_config('smoke')
  config.data.dir = str(data_dir)
  config.data.max_frames = 8
  config.models = models
  return config


@pytest.fixture(scope='module')
def pristine(tmp_path_factory):
  return fake_records.write_fake_dataset(
    str(tmp_path_factory.mktemp('pristine')), num_actors=2, clips_per_actor=7, min_frames=2, max_frames=6
  )


@pytest.fixture
def data_dir(pristine, tmp_path):
  """A fresh copy of the pristine dataset for one test to damage."""
  return shutil.copytree(pristine, tmp_path / 'data')


def _edit_info(data_dir, edit):
  path = data_dir / schema.DATASET_INFO
  info = json.loads(path.read_text())
  edit(info)
  path.write_text(json.dumps(info))


def _rewrite_first_clip(path, edit):
  """Decodes the first record of shard `path`, lets `edit(context, visual, audio)` change it, writes it back."""
  records = [r.numpy() for r in tf.data.TFRecordDataset(str(path))]
  example = tf.train.SequenceExample.FromString(records[0])
  context = {}
  for key in schema.INT_CONTEXT:
    context[key] = example.context.feature[key].int64_list.value[0]
  for key in schema.FLOAT_CONTEXT:
    context[key] = example.context.feature[key].float_list.value[0]
  for key in schema.BYTES_CONTEXT:
    context[key] = example.context.feature[key].bytes_list.value[0].decode()
  rows = lambda key: np.array([f.float_list.value for f in example.feature_lists.feature_list[key].feature], np.float32)
  visual, audio = rows(schema.VISUAL_KEY), rows(schema.AUDIO_KEY)
  edit(context, visual, audio)
  records[0] = schema.to_sequence_example(context, visual, audio)
  with tf.io.TFRecordWriter(str(path)) as writer:
    for record in records:
      writer.write(record)
  return context['clip_id']


def test_a_truncated_shard_is_named_with_how_to_rebuild_it(data_dir):
  path = data_dir / SHARD
  path.write_bytes(path.read_bytes()[:-100])
  with pytest.raises(ValueError, match=rf'^{path} is damaged \(truncated record at \d+\): {REBUILD}') as error:
    input_pipeline.load_clips(_config(data_dir))
  assert '\n' not in str(error.value)


def test_the_command_line_prints_a_damaged_shard_as_one_line(data_dir, tmp_path):
  path = data_dir / SHARD
  path.write_bytes(path.read_bytes()[:-100])
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'emojax.main',
      '--config=configs/audio.py:smoke',
      f'--workdir={tmp_path / "run"}',
      f'--config.data.dir={data_dir}',
    ],
    check=False,
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', JAX_PLATFORMS='cpu'),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(f'emojax: error: {path} is damaged (truncated record at ')


def test_flipped_bytes_inside_a_record_name_the_shard(data_dir):
  path = data_dir / SHARD
  data = bytearray(path.read_bytes())
  (length,) = struct.unpack('<Q', data[:8])  # A TFRecord: length, its CRC, the payload, the payload's CRC.
  data[12 + length // 2] ^= 0xFF
  path.write_bytes(bytes(data))
  with pytest.raises(ValueError, match=rf'^{path} is damaged \(corrupted record at 12\): {REBUILD}'):
    input_pipeline.load_clips(_config(data_dir))


def test_a_record_that_is_not_a_schema_v1_clip_names_the_shard(data_dir):
  path = data_dir / SHARD
  with tf.io.TFRecordWriter(str(path)) as writer:  # Valid TFRecords, but not SequenceExamples of clips.
    writer.write(b'not a clip')
  with pytest.raises(ValueError, match=rf'^{path} holds a record that is not a schema-v1 clip \(.+\): {REBUILD}'):
    input_pipeline.load_clips(_config(data_dir))


def test_a_listed_shard_missing_on_disk_is_named(data_dir):
  os.remove(data_dir / SHARD)
  with pytest.raises(FileNotFoundError, match=rf'^{data_dir} lacks 1 of the 2 shards .* lists \({SHARD}\)'):
    input_pipeline.load_clips(_config(data_dir))


def test_a_shard_on_disk_but_not_listed_is_named(data_dir):
  stray = schema.shard_name(3, 4)
  shutil.copy(data_dir / SHARD, data_dir / stray)
  with pytest.raises(
    ValueError, match=rf'^{data_dir} holds 1 shards that .* does not list \({stray}\): .*another build'
  ):
    input_pipeline.load_clips(_config(data_dir))


def test_a_shard_holding_other_clips_than_listed_is_named(data_dir):
  path = data_dir / SHARD
  records = [r.numpy() for r in tf.data.TFRecordDataset(str(path))][:3]  # Replaced by a shorter shard.
  with tf.io.TFRecordWriter(str(path)) as writer:
    for record in records:
      writer.write(record)
  with pytest.raises(ValueError, match=rf'^{path} holds 3 clips, but .* lists 7: the shard was replaced .*{REBUILD}'):
    input_pipeline.load_clips(_config(data_dir))


@pytest.mark.parametrize('key, value', [('visual', np.nan), ('audio', np.inf)])
def test_a_non_finite_embedding_names_the_clip_and_the_shard(data_dir, key, value):
  def poison(context, visual, audio):
    (visual if key == 'visual' else audio)[0, 3] = value

  clip = _rewrite_first_clip(data_dir / SHARD, poison)
  with pytest.raises(ValueError, match=rf'^Clip {clip} in {data_dir / SHARD} has NaN or inf in its {key} embedding'):
    input_pipeline.load_clips(_config(data_dir))


@pytest.mark.parametrize(
  'change, message',
  [
    ({'label': 9}, r'label 9, outside -1 \(calm\) and 0..6'),
    ({'label': -2}, r'label -2, outside -1 \(calm\) and 0..6'),
    ({'emotion_code': 9}, r"emotion_code 9, outside RAVDESS' 1..8"),
    ({'emotion_code': 5, 'label': 3}, r'label 3 but emotion_code 5 \(anger\), whose label is 0'),
    ({'emotion_code': 2, 'label': 0}, r'label 0 but emotion_code 2 \(calm\), whose label is -1'),
  ],
)
def test_an_impossible_label_names_the_clip(data_dir, change, message):
  clip = _rewrite_first_clip(data_dir / SHARD, lambda context, visual, audio: context.update(change))
  with pytest.raises(ValueError, match=rf'^Clip {clip} in {data_dir / SHARD} has {message}: '):
    input_pipeline.load_clips(_config(data_dir))


def test_dataset_info_that_is_not_json_names_the_file_and_place(data_dir):
  path = data_dir / schema.DATASET_INFO
  path.write_text(path.read_text()[:-40])  # Cut short, as by a full disk.
  with pytest.raises(ValueError, match=rf'^{path} is not valid JSON \(.* at line \d+, column \d+\): rerun the same'):
    input_pipeline.load_clips(_config(data_dir))
  path.write_text('[1, 2]')
  with pytest.raises(ValueError, match=rf'^{path} holds a list where a JSON object belongs'):
    input_pipeline.load_clips(_config(data_dir))


@pytest.mark.parametrize(
  'edit, message',
  [
    (
      lambda info: info.update(extractors={'visual': 'fake', 'audio': 'fake'}),
      r"extractors.visual = 'fake', a string where emojax expects an object",
    ),
    (lambda info: info.update(num_clips='14'), r"num_clips = '14', a string where emojax expects an integer"),
    (lambda info: info['shards'][1].update(name=7), r'shards\[1\].name = 7, an integer where emojax expects a string'),
    (lambda info: info.update(shards={'a': 1}), r"shards = \{'a': 1\}, an object where emojax expects a list"),
    (
      lambda info: info['feature_dims'].update(audio_embedding=128.0),
      r'feature_dims.audio_embedding = 128.0, a number where emojax expects an integer',
    ),
    (lambda info: info['settings'].update(modalities='audio'), r"settings.modalities = 'audio', a string where"),
    (lambda info: info.pop('shards'), r'no field shards, which emojax needs'),
    (lambda info: info['shards'][0].pop('name'), r'no field shards\[0\].name, which emojax needs'),
    (
      lambda info: info['settings'].update(modalities=['video']),
      r"settings.modalities = \['video'\]: expected some of",
    ),
  ],
)
def test_a_malformed_dataset_info_field_is_named_with_its_type(data_dir, edit, message):
  _edit_info(data_dir, edit)
  with pytest.raises(ValueError, match=rf'^{data_dir / schema.DATASET_INFO} has {message}'):
    input_pipeline.load_clips(_config(data_dir))


def test_fake_records_describe_their_extractors_as_data_prep_does(pristine):
  info = input_pipeline.read_dataset_info(pristine)
  assert all(isinstance(identity, dict) for identity in info['extractors'].values())
  assert input_pipeline.uses_stand_in_extractors(info)
  assert input_pipeline.dataset_modalities(info) == ('audio', 'visual')


def test_models_that_need_video_on_an_audio_only_dataset_say_what_to_do(tmp_path):
  data_dir = fake_records.write_fake_dataset(
    str(tmp_path), num_actors=1, clips_per_actor=7, modalities=('audio',), num_shards=1
  )
  message = (
    r"holds audio only \(settings.modalities = \['audio'\]\); config.models \('audio', 'visual', 'stacker'\) needs "
    r'visual too: train configs/audio.py, or rebuild with --modalities=audio,visual\.$'
  )
  with pytest.raises(ValueError, match=message):
    input_pipeline.load_clips(_config(data_dir))
  with pytest.raises(ValueError, match=r"config.models \('visual',\) needs visual too"):
    input_pipeline.load_clips(_config(data_dir, models=('visual',)))
  clips, _ = input_pipeline.load_clips(_config(data_dir, models=('audio',)))
  assert clips['audio'].shape == (7, 5, schema.AUDIO_DIM) and np.any(clips['audio'])
  assert not np.any(clips['visual']) and clips['num_frames'].tolist() == [1] * 7  # One zero frame each.


@pytest.mark.parametrize(
  'models, needed',
  [
    (('audio',), ('audio',)),
    (('visual',), ('visual',)),
    (('audio', 'visual'), ('audio', 'visual')),
    (('audio', 'visual', 'stacker'), ('audio', 'visual')),
  ],
)
def test_required_modalities(models, needed):
  assert input_pipeline.required_modalities(models) == needed


def test_a_dataset_info_without_modalities_holds_both():
  assert input_pipeline.dataset_modalities({'settings': {'fps': 45.0}}) == ('audio', 'visual')
  assert input_pipeline.dataset_modalities({}) == ('audio', 'visual')

"""A workdir is resumed or evaluated only by the code, config and data that wrote it.

One tiny audio run is trained once; each test works on a copy of its workdir. Refusals are
ValueErrors raised before anything compiles (the command line prints them as one line, see
tests/test_main.py).
"""

import json
import os
import shutil

import pytest

from configs import audio
from emojax import experiment, fake_records, train


def audio_config(data_dir: str, **overrides):
  config = audio.get_config('smoke')
  config.data.dir = data_dir
  config.data.max_frames = 16
  config.num_epochs = 2
  config.log_every_secs = 1e6
  config.update(overrides)
  return config


def results(content: dict) -> dict:
  return {key: value for key, value in content.items() if key != 'provenance'}


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return fake_records.write_fake_dataset(
    str(tmp_path_factory.mktemp('data')), num_actors=4, clips_per_actor=28, min_frames=4, max_frames=16
  )


@pytest.fixture(scope='module')
def trained(data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('trained') / 'run')
  return workdir, experiment.run(audio_config(data_dir), workdir)


@pytest.fixture
def workdir(trained, tmp_path):
  """A copy of the trained workdir."""
  copy = str(tmp_path / 'run')
  shutil.copytree(trained[0], copy)
  return copy


def read_json(path):
  with open(path) as f:
    return json.load(f)


def test_the_fingerprint_names_code_and_data(workdir, trained):
  recorded = read_json(os.path.join(workdir, experiment.FINGERPRINT_FILENAME))
  assert recorded['code']['checkpoint_layout'] == train.CHECKPOINT_LAYOUT_VERSION
  assert recorded['data']['num_clips'] == 4 * 28
  assert recorded['data']['clip_ids_sha256'] == trained[1]['provenance']['data']['clip_ids_sha256']
  assert recorded['data']['extractors'] == {'vgg16': {'weights': 'fake'}, 'vggish': {'handle': 'fake'}}


def test_other_data_are_refused_naming_what_differs(workdir, data_dir, tmp_path):
  other = fake_records.write_fake_dataset(
    str(tmp_path / 'other'), num_actors=4, clips_per_actor=28, min_frames=4, max_frames=16, seed=1
  )
  with pytest.raises(
    ValueError, match=r'was trained on other data .*settings\.seed: 0 there, 1 now.*use a new --workdir'
  ):
    experiment.run(audio_config(other), workdir)
  fewer = fake_records.write_fake_dataset(
    str(tmp_path / 'fewer'), num_actors=4, clips_per_actor=21, min_frames=4, max_frames=16
  )
  with pytest.raises(ValueError, match=r'clip_ids_sha256: .* there, .* now; num_clips: 112 there, 84 now'):
    experiment.run(audio_config(fewer), workdir)
  with open(os.path.join(workdir, experiment.CONFIG_FILENAME)) as f:
    assert json.load(f)['data']['dir'] == data_dir  # Refused runs record nothing.


def test_another_config_is_refused_naming_every_field(workdir, data_dir):
  config = audio_config(data_dir, num_epochs=3, seed=4)
  config.model.audio.hidden_sizes = (128, 32)
  with pytest.raises(ValueError, match=r'another config') as error:
    experiment.run(config, workdir)
  message = str(error.value)
  for difference in ('model.audio.hidden_sizes: [64, 32] there, [128, 32] now', 'num_epochs: 2 there, 3 now'):
    assert difference in message
  assert 'seed: 0 there, 4 now' in message
  assert f'--config=configs/from_workdir.py:{workdir}' in message


def test_another_code_version_is_refused(workdir, data_dir, monkeypatch):
  path = os.path.join(workdir, experiment.FINGERPRINT_FILENAME)
  recorded = read_json(path)
  monkeypatch.setattr(train, 'CHECKPOINT_LAYOUT_VERSION', train.CHECKPOINT_LAYOUT_VERSION + 1)
  with pytest.raises(ValueError, match=r'checkpoint layout 1\), this is emojax .* \(layout 2\).*use a new --workdir'):
    experiment.run(audio_config(data_dir), workdir)
  monkeypatch.undo()
  recorded['code']['emojax'] = '0.0.1'
  with open(path, 'w') as f:
    json.dump(recorded, f)
  with pytest.raises(ValueError, match=r'was written by emojax 0\.0\.1 '):
    experiment.run(audio_config(data_dir, mode='eval'), workdir)


def test_a_workdir_from_before_fingerprints_is_refused(workdir, data_dir):
  os.remove(os.path.join(workdir, experiment.FINGERPRINT_FILENAME))
  with pytest.raises(ValueError, match=r'older than checkpoint layout 1 \(it has no fingerprint\.json\)'):
    experiment.run(audio_config(data_dir), workdir)


def test_fields_that_do_not_change_results_and_moved_data_are_accepted(workdir, trained, data_dir, tmp_path):
  moved = str(tmp_path / 'moved')
  shutil.copytree(data_dir, moved)
  config = audio_config(moved, checkpoint_every_secs=7.0, log_every_secs=3.0)
  again = experiment.run(config, workdir)
  assert results(again) == {**results(trained[1]), 'dataset': {**trained[1]['dataset'], 'dir': moved}}
  recorded = read_json(os.path.join(workdir, experiment.CONFIG_FILENAME))
  assert recorded['data']['dir'] == moved and recorded['checkpoint_every_secs'] == 7.0  # The latest run's.


def test_differences_lists_changed_added_and_removed_fields():
  old = {'a': 1, 'b': {'c': [1, 2], 'd': 'x'}, 'mode': 'train', 'gone': True}
  new = {'a': 1, 'b': {'c': [1, 3], 'd': 'x', 'e': 0}, 'mode': 'eval'}
  assert experiment.differences(old, new, ignore=('mode',)) == [
    'b.c: [1, 2] there, [1, 3] now',
    'b.e: absent there, 0 now',
    'gone: true there, absent now',
  ]

"""Fixtures shared by the data_prep tests."""

import pytest


@pytest.fixture(scope='session')
def cache_dir(tmp_path_factory):
  """Where the stand-in VGGish SavedModel is built, once per session."""
  return tmp_path_factory.mktemp('extractor_cache')


@pytest.fixture(scope='session')
def stand_in_extractors(cache_dir):
  """(vgg16, vggish): the untrained offline stand-ins that --vgg16_weights=random --vggish_handle=random load."""
  from data_prep import embed

  settings = {'vgg16_weights': 'random', 'vggish_handle': 'random', 'image_size': 48, 'extractor_seed': 0}
  return embed.load_extractors(settings, str(cache_dir))

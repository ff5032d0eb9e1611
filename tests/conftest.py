"""Fixtures shared by the tests."""

import os

import pytest


@pytest.fixture(scope='session', autouse=True)
def compilation_cache(tmp_path_factory):
  """One persistent JAX compilation cache for the session, the test processes and those they start.

  Many tests train the same tiny models in fresh processes (the command line, restarts after a
  kill, several hosts); loading a step compiled before instead of compiling it again changes
  how long they take, not what they compute.
  """
  import jax

  directory = str(tmp_path_factory.mktemp('jax_compilation_cache'))
  previous = {
    key: os.environ.get(key) for key in ('JAX_COMPILATION_CACHE_DIR', 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS')
  }
  os.environ.update(JAX_COMPILATION_CACHE_DIR=directory, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  jax.config.update('jax_compilation_cache_dir', directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  yield directory
  for key, value in previous.items():
    if value is None:
      os.environ.pop(key, None)
    else:
      os.environ[key] = value


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

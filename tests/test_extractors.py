"""Tests for data_prep.extractors: the VGG16 and VGGish embedders and their offline stand-ins."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub

from data_prep import extractors


@pytest.fixture(scope='session')
def vggish_cache(tmp_path_factory):
  """A cache dir holding the stand-in VGGish SavedModel, built once per session."""
  cache_dir = str(tmp_path_factory.mktemp('emojax-cache'))
  extractors.build_random_vggish(os.path.join(cache_dir, 'vggish-random-seed0'), seed=0)
  return cache_dir


@pytest.fixture(scope='session')
def vggish(vggish_cache):
  return extractors.VGGishEmbedder('random', cache_dir=vggish_cache, seed=0)


@pytest.fixture(scope='session')
def vgg16():
  return extractors.VGG16Embedder('random', image_size=48, seed=0, batch_size=128)


def random_crops(num, seed=0):
  return np.random.default_rng(seed).integers(0, 256, size=[num, 48, 48, 3], dtype=np.uint8)


def test_vgg16_random_shapes_determinism_and_batching(vgg16):
  crops = random_crops(10)
  embedding = vgg16(crops)  # one batch of 10
  assert embedding.shape == (10, 512) and embedding.dtype == np.float32
  assert np.all(np.isfinite(embedding)) and embedding.std() > 0
  assert vgg16(crops[:0]).shape == (0, 512)
  assert vgg16.identity == {'name': 'keras.applications.VGG16', 'weights': 'random', 'seed': 0, 'image_size': 48}
  # A second instance with the same seed has the same weights; batches of 4, 4, 2 and single
  # frames give the same embeddings as one batch.
  again = extractors.VGG16Embedder('random', image_size=48, seed=0, batch_size=4)
  np.testing.assert_allclose(again(crops), embedding, rtol=1e-5, atol=1e-5)
  single = np.concatenate([vgg16(crops[i : i + 1]) for i in range(10)])
  np.testing.assert_allclose(single, embedding, rtol=1e-5, atol=1e-5)


def test_repeated_frames_reuse_their_embedding(vgg16):
  # 45 fps over 29.97 fps: embed each distinct source frame once, then gather per target frame.
  distinct = random_crops(7, seed=2)
  frame_index = np.array([0, 1, 1, 2, 3, 3, 4, 5, 5, 6])
  reused = vgg16(distinct)[frame_index]  # [num_frames, 512]
  recomputed = vgg16(distinct[frame_index])
  np.testing.assert_allclose(reused, recomputed, rtol=1e-5, atol=1e-5)


def test_vgg16_preprocess_is_caffe_style(vgg16):
  # Pure red and pure blue crops must differ: preprocess_input flips RGB to BGR before the net.
  red = np.zeros([1, 48, 48, 3], np.uint8)
  red[..., 0] = 255
  blue = red[..., ::-1].copy()
  assert not np.allclose(vgg16(red), vgg16(blue))
  with pytest.raises(ValueError, match='48, 48, 3'):
    vgg16(np.zeros([2, 32, 32, 3], np.uint8))


def test_vgg16_weights_file_and_missing_file(vgg16, tmp_path):
  path = str(tmp_path / 'vgg16.weights.h5')
  vgg16.model.save_weights(path)
  from_file = extractors.VGG16Embedder(path, image_size=48)
  crops = random_crops(3, seed=3)
  np.testing.assert_allclose(from_file(crops), vgg16(crops), rtol=1e-6, atol=1e-6)
  assert from_file.identity['weights'] == path
  with pytest.raises(extractors.ExtractorError, match='missing.h5'):
    extractors.VGG16Embedder(str(tmp_path / 'missing.h5'))


def test_vggish_random_loads_through_hub(vggish_cache, monkeypatch):
  loaded = []
  hub_load = tensorflow_hub.load

  def spy(handle, *args, **kwargs):
    loaded.append(handle)
    return hub_load(handle, *args, **kwargs)

  monkeypatch.setattr(tensorflow_hub, 'load', spy)
  # The cached SavedModel is reused, not rebuilt.
  monkeypatch.setattr(extractors, 'build_random_vggish', lambda *args: pytest.fail('rebuilt a cached stand-in'))
  embedder = extractors.VGGishEmbedder('random', cache_dir=vggish_cache, seed=0)
  model_dir = os.path.join(vggish_cache, 'vggish-random-seed0')
  assert loaded == [model_dir]
  assert os.path.isfile(os.path.join(model_dir, 'saved_model.pb'))
  assert embedder.identity == {'handle': 'random', 'seed': 0}
  # A local SavedModel directory is a handle too, loaded the same way.
  by_path = extractors.VGGishEmbedder(model_dir)
  assert loaded[-1] == model_dir and by_path.identity == {'handle': model_dir}
  waveform = np.random.default_rng(0).uniform(-0.5, 0.5, 80000).astype(np.float32)
  np.testing.assert_array_equal(by_path(waveform), embedder(waveform))


@pytest.mark.parametrize(
  'num_samples',
  [80000, 15600, 15599, 300, 0, 16000 * 10, 16000 * 3 + 7],
)
def test_vggish_rows_follow_vggish_framing(vggish, num_samples):
  waveform = np.random.default_rng(num_samples).uniform(-0.5, 0.5, num_samples).astype(np.float32)
  embedding = vggish(waveform)
  # vggish_input: STFT frames = 1 + (N - 400) // 160, examples = 1 + (frames - 96) // 96 (none if short).
  num_stft_frames = 1 + (num_samples - 400) // 160 if num_samples >= 400 else 0
  expected_rows = 1 + (num_stft_frames - 96) // 96 if num_stft_frames >= 96 else 0
  assert embedding.shape == (expected_rows, 128) and embedding.dtype == np.float32
  if num_samples == 80000:
    assert expected_rows == 5  # 5 s, the padded minimum
  assert np.all(np.isfinite(embedding))


def test_vggish_stand_in_is_seeded(vggish, vggish_cache, tmp_path):
  waveform = np.random.default_rng(1).uniform(-0.5, 0.5, 32000).astype(np.float32)
  other_seed = extractors.VGGishEmbedder('random', cache_dir=str(tmp_path), seed=1)
  assert os.listdir(tmp_path) == ['vggish-random-seed1']  # no temporary directory left behind
  assert not np.allclose(other_seed(waveform), vggish(waveform))
  # Each 0.96 s patch is embedded on its own: the first row depends only on the first patch.
  longer = np.concatenate([waveform, np.zeros(16000, np.float32)])
  np.testing.assert_allclose(vggish(longer)[0], vggish(waveform)[0], rtol=1e-5, atol=1e-5)


def test_log_mel_front_end_matches_vggish_numpy_reference():
  # The mel matrix equals TensorFlow's HTK-scale one (which VGGish's mel_features also builds).
  reference_mel = tf.signal.linear_to_mel_weight_matrix(64, 257, 16000, 125.0, 7500.0).numpy()
  np.testing.assert_allclose(extractors.mel_weight_matrix(), reference_mel, atol=1e-4)
  # vggish_input / mel_features in numpy: frame, periodic Hann, |rfft(512)|, mel, log(+0.01).
  waveform = np.random.default_rng(0).uniform(-0.5, 0.5, 16000 * 2).astype(np.float32)
  num_frames = 1 + (waveform.size - 400) // 160
  frames = np.stack([waveform[i * 160 : i * 160 + 400] for i in range(num_frames)])
  window = 0.5 - 0.5 * np.cos(2 * np.pi / 400 * np.arange(400))
  log_mel = np.log(np.abs(np.fft.rfft(frames * window, 512)) @ reference_mel + 0.01)
  expected = log_mel[: 2 * 96].reshape(2, 96, 64)
  patches = extractors.log_mel_patches(tf.constant(waveform), tf.constant(extractors.mel_weight_matrix())).numpy()
  assert patches.shape == (2, 96, 64)
  np.testing.assert_allclose(patches, expected, atol=2e-3)


def test_bad_vggish_handle_is_a_clear_extractor_error(tmp_path):
  missing = str(tmp_path / 'no-such-model')
  with pytest.raises(extractors.ExtractorError, match='Could not load VGGish from .*no-such-model.*SavedModel'):
    extractors.VGGishEmbedder(missing)
  not_a_model = tmp_path / 'empty-dir'
  not_a_model.mkdir()
  with pytest.raises(extractors.ExtractorError, match='empty-dir'):
    extractors.VGGishEmbedder(str(not_a_model))
  with pytest.raises(extractors.ExtractorError, match='already exists'):
    extractors.build_random_vggish(str(not_a_model))

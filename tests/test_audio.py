"""Tests for data_prep.audio: reading wavs and mp4 tracks, resampling and padding for VGGish."""

import os

import av
import numpy as np
import pytest
import resampy
import soundfile

from data_prep import audio

RAVDESS_SAMPLE = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'ravdess-sample')
STEREO_WAV = os.path.join(RAVDESS_SAMPLE, 'audio', 'Actor_01', '03-01-02-01-01-02-01.wav')
REAL_CLIP = os.path.join(RAVDESS_SAMPLE, 'video', 'Actor_01', '01-01-07-02-02-01-01.mp4')


def write_stereo_aac(path, left, right, sample_rate=48000):
  """Encodes two float channels as an AAC track in an mp4 with PyAV."""
  with av.open(str(path), mode='w', format='mp4') as container:
    stream = container.add_stream('aac', rate=sample_rate, layout='stereo')
    frame = av.AudioFrame.from_ndarray(np.stack([left, right]).astype(np.float32), format='fltp', layout='stereo')
    frame.sample_rate = sample_rate
    frame.pts = 0
    container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def test_read_real_stereo_wav_mixes_to_mono():
  if not os.path.isfile(STEREO_WAV):
    pytest.skip('the real RAVDESS sample (../shared/data/ravdess-sample) is not here')
  waveform, sample_rate = audio.read_audio(STEREO_WAV)
  channels, _ = soundfile.read(STEREO_WAV, dtype='float32')
  assert channels.ndim == 2 and channels.shape[1] == 2
  assert sample_rate == 48000
  assert waveform.dtype == np.float32 and waveform.shape == (channels.shape[0],)
  assert -1.0 <= waveform.min() and waveform.max() <= 1.0
  np.testing.assert_allclose(waveform, channels.mean(axis=1), atol=1e-7)


def test_read_mp4_audio_track_mixes_to_mono(tmp_path):
  sample_rate = 48000
  t = np.arange(sample_rate) / sample_rate  # 1 s
  left = 0.5 * np.sin(2 * np.pi * 440 * t)
  path = tmp_path / 'stereo.mp4'
  write_stereo_aac(path, left, np.zeros_like(left))
  waveform, rate = audio.read_audio(str(path))
  assert rate == sample_rate
  assert waveform.dtype == np.float32 and waveform.ndim == 1
  assert abs(waveform.size - sample_rate) < 0.05 * sample_rate
  # The mean of a 0.5 sine and silence is a 0.25 sine: RMS 0.25 / sqrt(2) (AAC is lossy).
  middle = waveform[sample_rate // 4 : 3 * sample_rate // 4]
  assert np.sqrt(np.mean(middle**2)) == pytest.approx(0.25 / np.sqrt(2), rel=0.1)


def test_read_real_mp4_audio_track():
  if not os.path.isfile(REAL_CLIP):
    pytest.skip('the real RAVDESS sample (../shared/data/ravdess-sample) is not here')
  waveform, sample_rate = audio.read_audio(REAL_CLIP)
  assert sample_rate == 44100
  assert waveform.size / sample_rate == pytest.approx(4.0, abs=0.1)
  assert np.abs(waveform).max() <= 1.0 and np.abs(waveform).max() > 0.01


def test_bad_audio_files_raise_value_error(tmp_path):
  empty_wav = tmp_path / 'empty.wav'
  soundfile.write(str(empty_wav), np.zeros([0], np.float32), 48000)
  with pytest.raises(ValueError, match='empty.wav has no audio samples'):
    audio.read_audio(str(empty_wav))
  zero_byte = tmp_path / 'zero.wav'
  zero_byte.write_bytes(b'')
  with pytest.raises(ValueError, match='zero.wav'):
    audio.read_audio(str(zero_byte))
  zero_mp4 = tmp_path / 'zero.mp4'
  zero_mp4.write_bytes(b'')
  with pytest.raises(ValueError, match='zero.mp4'):
    audio.read_audio(str(zero_mp4))
  silent_video = tmp_path / 'silent.mp4'
  with av.open(str(silent_video), mode='w', format='mp4') as container:
    stream = container.add_stream('libx264', rate=30)
    stream.width, stream.height, stream.pix_fmt = 64, 64, 'yuv420p'
    container.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros([64, 64, 3], np.uint8), format='rgb24')))
    container.mux(stream.encode(None))
  with pytest.raises(ValueError, match='silent.mp4 has no audio track'):
    audio.read_audio(str(silent_video))


def test_truncated_mp4_audio_raises_value_error(tmp_path):
  sample_rate = 48000
  tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(4 * sample_rate) / sample_rate)
  path = tmp_path / 'clip.mp4'
  write_stereo_aac(path, tone, tone)
  data = path.read_bytes()
  truncated = tmp_path / 'truncated.mp4'
  truncated.write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match='truncated.mp4'):
    audio.read_audio(str(truncated))


def test_prepare_waveform_resamples_with_resampy_and_pads(monkeypatch):
  calls = []
  resample = resampy.resample

  def spy(*args, **kwargs):
    calls.append(args[1:3])
    return resample(*args, **kwargs)

  monkeypatch.setattr(audio.resampy, 'resample', spy)
  sample_rate = 48000
  tone = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(sample_rate) / sample_rate).astype(np.float32)  # 1 s
  prepared = audio.prepare_waveform(tone, sample_rate, min_seconds=5.0)
  assert calls == [(48000, 16000)]
  assert prepared.dtype == np.float32 and prepared.shape == (5 * 16000,)
  # The 1 kHz tone survives resampling; everything after the first second is zero padding.
  spectrum = np.abs(np.fft.rfft(prepared[:16000]))
  assert np.argmax(spectrum) == pytest.approx(1000, abs=2)  # 1 Hz bins over 1 s
  assert np.all(prepared[16000 + 100 :] == 0)
  with pytest.raises(ValueError, match='cannot be resampled'):
    audio.prepare_waveform(np.ones([1], np.float32), 48000)


def test_prepare_waveform_keeps_16k_and_long_audio(monkeypatch):
  monkeypatch.setattr(audio.resampy, 'resample', lambda *args, **kwargs: pytest.fail('resampled a 16 kHz input'))
  waveform = np.random.default_rng(0).uniform(-1, 1, 6 * 16000).astype(np.float32)
  prepared = audio.prepare_waveform(waveform, audio.VGGISH_SAMPLE_RATE, min_seconds=5.0)
  np.testing.assert_array_equal(prepared, waveform)  # longer than 5 s: neither cut nor padded
  short = audio.prepare_waveform(waveform[:100], 16000, min_seconds=0.975)
  assert short.shape == (15600,)
  with pytest.raises(ValueError, match='mono'):
    audio.prepare_waveform(np.zeros([100, 2], np.float32), 16000)

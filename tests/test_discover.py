"""Tests for data_prep.discover: pairing of AV, VO and AO files, filters, bad names."""

import os

from data_prep import discover


def _touch(root, *relative_paths):
  for relative in relative_paths:
    path = os.path.join(root, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, 'wb').close()


def _by_id(clips):
  return {c.clip_id: c for c in clips}


def test_pairing_of_av_vo_and_ao(tmp_path):
  _touch(
    tmp_path,
    # AV + AO: video from the AV mp4, audio from the wav.
    'Video_Speech_Actor_01/Actor_01/01-01-03-01-01-01-01.mp4',
    'Audio_Speech_Actors_01-24/Actor_01/03-01-03-01-01-01-01.wav',
    # VO + AO: video from the VO mp4, audio from the wav.
    'Video_Speech_Actor_01/Actor_01/02-01-04-01-01-01-01.mp4',
    'Audio_Speech_Actors_01-24/Actor_01/03-01-04-01-01-01-01.wav',
    # AV only: audio from the AV mp4's own track.
    'Video_Speech_Actor_02/Actor_02/01-01-05-02-02-02-02.mp4',
    # AV + VO + AO: the AV mp4 wins over the VO one.
    'Video_Speech_Actor_02/Actor_02/01-01-06-01-01-01-02.mp4',
    'Video_Speech_Actor_02/Actor_02/02-01-06-01-01-01-02.mp4',
    'Actor_02/03-01-06-01-01-01-02.wav',
    # VO only: no audio source.
    'Video_Speech_Actor_02/Actor_02/02-01-07-01-01-01-02.mp4',
    # AO only: no video source.
    'Actor_02/03-01-08-01-01-01-02.wav',
  )
  clips, skipped, filtered = discover.discover(str(tmp_path))
  clips = _by_id(clips)
  assert sorted(clips) == ['01-03-01-01-01-01', '01-04-01-01-01-01', '01-05-02-02-02-02', '01-06-01-01-01-02']
  assert clips['01-03-01-01-01-01'].video_source == 'Video_Speech_Actor_01/Actor_01/01-01-03-01-01-01-01.mp4'
  assert clips['01-03-01-01-01-01'].audio_source == 'Audio_Speech_Actors_01-24/Actor_01/03-01-03-01-01-01-01.wav'
  assert clips['01-04-01-01-01-01'].video_source.endswith('/02-01-04-01-01-01-01.mp4')
  assert clips['01-04-01-01-01-01'].audio_source.endswith('/03-01-04-01-01-01-01.wav')
  av_only = clips['01-05-02-02-02-02']
  assert av_only.audio_source == av_only.video_source == 'Video_Speech_Actor_02/Actor_02/01-01-05-02-02-02-02.mp4'
  assert clips['01-06-01-01-01-02'].video_source.endswith('/01-01-06-01-01-01-02.mp4')
  assert clips['01-06-01-01-01-02'].audio_source == 'Actor_02/03-01-06-01-01-01-02.wav'
  # The clip's name fields come from its video file.
  assert clips['01-05-02-02-02-02'].name.intensity == 2 and clips['01-05-02-02-02-02'].name.actor == 2
  kinds = {s['path']: s['kind'] for s in skipped}
  assert kinds == {
    'Video_Speech_Actor_02/Actor_02/02-01-07-01-01-01-02.mp4': 'no audio source',
    'Actor_02/03-01-08-01-01-01-02.wav': 'no video source',
  }
  assert all('01-07-01-01-01-02' in s['reason'] or '01-08-01-01-01-02' in s['reason'] for s in skipped)
  assert filtered == {'song': 0, 'calm': 0}


def test_song_and_calm_filtered_by_default_and_kept_with_flags(tmp_path):
  _touch(
    tmp_path,
    'a/01-01-01-01-01-01-03.mp4',  # speech neutral
    'a/01-01-02-01-01-01-03.mp4',  # speech calm
    'b/01-02-03-01-01-01-03.mp4',  # song happy
    'b/01-02-02-02-01-01-03.mp4',  # song calm
  )
  clips, skipped, filtered = discover.discover(str(tmp_path))
  assert [c.clip_id for c in clips] == ['01-01-01-01-01-03']
  assert skipped == []
  assert filtered == {'song': 2, 'calm': 1}

  clips, _, filtered = discover.discover(str(tmp_path), include_calm=True)
  assert [c.clip_id for c in clips] == ['01-01-01-01-01-03', '01-02-01-01-01-03']
  assert filtered == {'song': 2, 'calm': 0}

  clips, _, filtered = discover.discover(str(tmp_path), include_song=True, include_calm=True)
  assert len(clips) == 4 and filtered == {'song': 0, 'calm': 0}
  assert {c.name.vocal_channel for c in clips} == {1, 2}


def test_unparsable_names_skipped_with_reason_other_files_ignored(tmp_path):
  _touch(
    tmp_path,
    'Actor_01/01-01-01-01-01-01-01.mp4',
    'Actor_01/clip.mp4',  # not a RAVDESS name
    'Actor_01/01-01-09-01-01-01-01.mp4',  # emotion 09 does not exist
    'Actor_01/03-01-01-01-01-01-01.mp4',  # audio-only modality with an .mp4 extension
    'Actor_01/.DS_Store',
    'Actor_01/README.txt',
    'Actor_01/._01-01-01-01-01-01-01.mp4',  # macOS resource fork
    '__MACOSX/Actor_01/01-01-01-01-01-02-01.mp4',
  )
  clips, skipped, _ = discover.discover(str(tmp_path))
  assert [c.clip_id for c in clips] == ['01-01-01-01-01-01']
  reasons = {s['path']: s['reason'] for s in skipped}
  assert sorted(reasons) == [
    'Actor_01/01-01-09-01-01-01-01.mp4',
    'Actor_01/03-01-01-01-01-01-01.mp4',
    'Actor_01/clip.mp4',
  ]
  assert 'not a RAVDESS name' in reasons['Actor_01/clip.mp4']
  assert 'emotion' in reasons['Actor_01/01-01-09-01-01-01-01.mp4']
  assert all(s['kind'] == 'unparsable name' for s in skipped)


def test_nested_layouts_sorted_and_duplicates(tmp_path):
  _touch(
    tmp_path,
    'x/y/z/Actor_05/01-01-08-02-02-02-05.mp4',
    'Video_Speech_Actor_04/Actor_04/01-01-03-01-01-01-04.mp4',
    'deep/er/still/03-01-03-01-01-01-04.wav',
    'copy/Actor_04/01-01-03-01-01-01-04.mp4',  # the same AV file twice
  )
  clips, skipped, _ = discover.discover(str(tmp_path))
  assert [c.clip_id for c in clips] == ['01-03-01-01-01-04', '01-08-02-02-02-05']
  assert clips[0].audio_source == 'deep/er/still/03-01-03-01-01-01-04.wav'
  # Walk order is sorted ('V' < 'c' in ASCII), so the copy under 'copy/' is the duplicate.
  assert clips[0].video_source == 'Video_Speech_Actor_04/Actor_04/01-01-03-01-01-01-04.mp4'
  assert [s['kind'] for s in skipped] == ['duplicate']
  assert clips[1].audio_source == clips[1].video_source == 'x/y/z/Actor_05/01-01-08-02-02-02-05.mp4'


def test_select_evenly_and_fingerprint(tmp_path):
  _touch(tmp_path, *[f'Actor_01/01-01-{e:02d}-01-01-01-01.mp4' for e in (1, 3, 4, 5, 6, 7, 8)])
  clips, _, _ = discover.discover(str(tmp_path))
  assert discover.select_evenly(clips, None) == clips
  assert discover.select_evenly(clips, 100) == clips
  picked = discover.select_evenly(clips, 3)
  assert [c.name.emotion_code for c in picked] == [1, 4, 6]
  assert discover.fingerprint(clips) == discover.fingerprint(list(clips))
  assert discover.fingerprint(clips) != discover.fingerprint(clips[1:])


def test_audio_only_pairing_and_filtered_clips_counted_once(tmp_path):
  _touch(
    tmp_path,
    'Audio_Speech_Actors_01-24/Actor_01/03-01-03-01-01-01-01.wav',  # A wav alone is a clip.
    'Video_Speech_Actor_02/Actor_02/01-01-05-02-02-02-02.mp4',  # AV alone: its audio track.
    'Video_Speech_Actor_02/Actor_02/02-01-07-01-01-01-02.mp4',  # VO alone: no sound at all.
    # One calm recording in all three files counts as one clip left out.
    'Video_Speech_Actor_02/Actor_02/01-01-02-01-01-01-02.mp4',
    'Video_Speech_Actor_02/Actor_02/02-01-02-01-01-01-02.mp4',
    'Actor_02/03-01-02-01-01-01-02.wav',
  )
  clips, skipped, filtered = discover.discover(str(tmp_path), modalities=('audio',))
  clips = _by_id(clips)
  assert sorted(clips) == ['01-03-01-01-01-01', '01-05-02-02-02-02']
  assert clips['01-03-01-01-01-01'].video_source == ''
  assert clips['01-03-01-01-01-01'].audio_source == 'Audio_Speech_Actors_01-24/Actor_01/03-01-03-01-01-01-01.wav'
  assert clips['01-03-01-01-01-01'].name.emotion_code == 3
  assert clips['01-05-02-02-02-02'].audio_source.endswith('/01-01-05-02-02-02-02.mp4')
  assert [s['kind'] for s in skipped] == ['no audio source'] and filtered == {'song': 0, 'calm': 1}
  assert discover.count_found(list(clips.values()), skipped, filtered) == 4
  # With video, the lone wav is a clip without a video source.
  clips, skipped, _ = discover.discover(str(tmp_path))
  assert [c.clip_id for c in clips] == ['01-05-02-02-02-02']
  assert sorted(s['kind'] for s in skipped) == ['no audio source', 'no video source']
  assert discover.count_found(clips, skipped, filtered) == 4

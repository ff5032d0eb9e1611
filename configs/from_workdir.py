"""The config a workdir was trained with, for eval-only runs.

`python -m emojax.main --config=configs/from_workdir.py:DIR --workdir=DIR --config.mode=eval`
(what `./launch.sh eval DIR` runs) restores the exact settings of the run in DIR from
`DIR/config.json`; further `--config.x=y` overrides still apply.
"""

import json
import os

import ml_collections


def get_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist: pass the workdir of a training run, or --config=configs/stack.py.')
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  config.mode = 'eval'
  return config

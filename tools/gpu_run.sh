#!/usr/bin/env bash
# Run one chapter with papermill on a bare GPU machine (torch present; no papermill, no index).
# usage: tools/gpu_run.sh <chapter.ipynb> [extra papermill args, e.g. -p seed 1]
# Needs the wheels from `make gpu-wheels` in .whl/ (or $NOISEFIT_WHEELS). Writes the executed
# notebook and the results file under $NOISEFIT_RUNS_DIR (default: runs/).
set -euo pipefail
if [ $# -lt 1 ] || [ ! -f "$1" ]; then
  echo "usage: tools/gpu_run.sh <chapter.ipynb> [papermill args, e.g. -p seed 1]" >&2
  echo "  runs the chapter's full preset on CUDA; then: python tools/promote_run.py <results json>" >&2
  exit 2
fi
root=$(cd "$(dirname "$0")/.." && pwd)
nb=$(realpath "$1"); shift
wheels=${NOISEFIT_WHEELS:-$root/.whl}
site=${NOISEFIT_SITE:-/tmp/noisefit-site}
export NOISEFIT_RUNS_DIR=${NOISEFIT_RUNS_DIR:-$root/runs}
# a copied tree without .git: pass NOISEFIT_GIT_COMMIT=<commit> so that results name their code
export NOISEFIT_GIT_COMMIT=${NOISEFIT_GIT_COMMIT:-$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)}
if ! PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" python3 -c "import papermill, ipykernel" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" \
    "$wheels"/*.whl
fi
export PYTHONPATH="$root:$site${PYTHONPATH:+:$PYTHONPATH}" PATH="$site/bin:$PATH"
python3 "$root/tools/check_deps.py"   # every dependency present before a long run, or stop here
# papermill only warns about a parameter the chapter lacks (a typo would run the default): refuse
python3 "$root/tools/run_chapter.py" --check-papermill-args "$nb" "$@"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 PYDEVD_DISABLE_FILE_VALIDATION=1
python3 -m ipykernel install --prefix "$site/kernel" --name python3 >/dev/null
export JUPYTER_PATH="$site/kernel/share/jupyter"
mkdir -p "$NOISEFIT_RUNS_DIR"
out="$NOISEFIT_RUNS_DIR/$(basename "$nb" .ipynb)-gpu.ipynb"
python3 -m papermill "$nb" "$out" -p preset full -p device cuda "$@" \
  --cwd "$(dirname "$nb")" --kernel python3 --log-output --no-progress-bar
echo "executed notebook: $out"
echo "promote its results with: python tools/promote_run.py $NOISEFIT_RUNS_DIR/<chapter>/full-seed0.json"

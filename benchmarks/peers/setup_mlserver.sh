#!/usr/bin/env bash
# MLServer 1.7.1 + mlserver-sklearn in its own venv (its pins conflict with ours; see PEERS.md).
# uvloop<0.22: MLServer workers crash with newer uvloop (SeldonIO/MLServer#2286); httptools: +34-48%.
# scikit-learn is pinned to the version in the calling environment so the same joblib file loads.
set -euo pipefail
CACHE="${MLOPS_CACHE:-$HOME/.cache/mlops-operator}"
VENV="$CACHE/bench-venvs/mlserver"
SKLEARN="${SKLEARN_VERSION:-$(python3 -c 'import sklearn; print(sklearn.__version__)')}"
if [ -x "$VENV/bin/mlserver" ] && "$VENV/bin/python" -c "import sklearn; assert sklearn.__version__ == '$SKLEARN'" 2>/dev/null; then
  echo "$VENV"; exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
  "mlserver==1.7.1" "mlserver-sklearn==1.7.1" "uvloop<0.22" httptools "scikit-learn==$SKLEARN" >&2
echo "$VENV"

#!/usr/bin/env bash
# KServe 0.21 Python ModelServer in its own venv. KServe's `sklearnserver` runtime is not on PyPI, so
# benchmarks/peers/kserve_sklearn.py is a small kserve.Model subclass answering the v1 protocol,
# like the upstream runtime (see PEERS.md). scikit-learn is pinned to the calling environment's.
set -euo pipefail
CACHE="${MLOPS_CACHE:-$HOME/.cache/mlops-operator}"
VENV="$CACHE/bench-venvs/kserve"
SKLEARN="${SKLEARN_VERSION:-$(python3 -c 'import sklearn; print(sklearn.__version__)')}"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import kserve, sklearn; assert sklearn.__version__ == '$SKLEARN'" 2>/dev/null; then
  echo "$VENV"; exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "kserve==0.21.0" "scikit-learn==$SKLEARN" joblib >&2
echo "$VENV"

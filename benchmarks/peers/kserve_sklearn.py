"""KServe ModelServer with a scikit-learn model, as KServe's `sklearnserver` runtime does it.

The upstream runtime is not published on PyPI, so this is the same shape: a ``kserve.Model`` that
loads a joblib file and answers the v1 protocol (``POST /v1/models/<name>:predict`` with
``{"instances": [[...]]}``). Runs inside the kserve venv made by setup_kserve.sh.
"""

from __future__ import annotations

import argparse

import joblib
import kserve
import numpy as np


class SKLearnModel(kserve.Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.model = None
        self.load()

    def load(self) -> bool:
        self.model = joblib.load(self.path)
        self.ready = True
        return self.ready

    def predict(self, payload, headers=None, response_headers=None):  # noqa: ANN001 - kserve's signature
        instances = np.asarray(payload["instances"])
        return {"predictions": self.model.predict(instances).tolist()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_dir", required=True, help="path of the joblib file")
    args, _ = parser.parse_known_args()
    kserve.ModelServer().start([SKLearnModel(args.model_name, args.model_dir)])

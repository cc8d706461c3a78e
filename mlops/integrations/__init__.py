"""Optional bridges to third-party MLOps systems (MLflow). Nothing here imports its third-party
package at module import time: each bridge imports it on first use, so the rest of ``mlops`` never
pays for an extra it does not use."""

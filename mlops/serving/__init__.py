"""The HTTP processes the operator runs in every pod: model server, monitoring sidecar, router."""

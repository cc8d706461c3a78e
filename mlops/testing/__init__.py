"""Test support shipped with the package: the local Kubernetes control plane and helpers that the
project's own test-suite (and users' integration tests) start real components with."""

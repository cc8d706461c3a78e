"""mlops-operator: Kubernetes-native monitoring, A/B testing, retraining and serving for ML models.

The package is layered (checked by import-linter, see pyproject.toml):
``core`` is pure logic, ``store`` is durable state, ``monitoring`` is the user's Python API,
``serving`` the HTTP processes, ``operator`` the kopf operator, and ``cli``/``commands`` the
`mlops` command.
"""

__version__ = "0.1.0"

"""The user's Python API (production_monitor, drift_detection, ab_testing, data_trigger):
thin stateful facades over ``mlops.core`` (the rules) and ``mlops.store`` (durable state)."""

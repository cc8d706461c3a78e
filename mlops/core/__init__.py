"""Pure logic: statistics, drift tests, baseline profiles, alert rules, A/B analysis, assignment
hashing and retrain decisions.

Nothing here performs I/O or reads a clock: every function is a function of its inputs, so the
rules are tested without sleeping, servers or databases. import-linter and
``tests/unit/test_core_purity.py`` enforce it.
"""

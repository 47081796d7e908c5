"""What the tests share: stacks of real servers, ports, trades and the oracle, Prefect helpers.

Tests import from here, never from ``tests/conftest.py`` (which only declares fixtures and
hooks built on these modules).
"""

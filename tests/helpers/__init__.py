"""Plain helpers shared by the test modules, imported as ``from tests.helpers.<module> import ...``.

Fixtures live in ``tests/conftest.py``, where pytest finds them without an import.
"""

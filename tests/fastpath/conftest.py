"""Every fast-path test runs on both twins: the `impl` fixture (tests/conftest.py), ids `cy`
(compiled) and `py` (the reference)."""

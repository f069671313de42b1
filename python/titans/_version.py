# The project's version (the repository's VERSION file; tests/version_test.py keeps them equal).
__version__ = "0.1.0"

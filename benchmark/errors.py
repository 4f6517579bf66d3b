"""User-facing errors: the CLI prints these as one line and exits non-zero."""


class BenchmarkError(Exception):
    """Bad input (dataset folder, protocol value, method name, ...) described in one line."""


class DataError(BenchmarkError):
    """A dataset folder or image that cannot be used as it is."""

"""Errors about what the user passed (as opposed to compiler faults, which get a reproducer)."""


class UsageError(ValueError):
    """Bad input or configuration; raised as is, never wrapped or turned into a reproducer."""


class ArtifactError(ValueError):
    """The file is not a (valid) qcompile artifact."""


class FloatWeightsWarning(UserWarning):
    """Weighted layers of the compiled model stay float (see compile(strict=True))."""

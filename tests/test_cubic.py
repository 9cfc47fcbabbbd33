"""torchext.cubic: the shared checks (tests/_checks.py) and what is particular to it."""

from _checks import OpChecks


class TestCubic(OpChecks):
    op = "cubic"

"""torchext.legendre_p3: the shared checks (tests/_checks.py) and what is particular to it."""

from _checks import OpChecks


class TestLegendreP3(OpChecks):
    op = "legendre_p3"

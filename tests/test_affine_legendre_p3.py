"""torchext.affine_legendre_p3: the shared checks (tests/_checks.py) and what is particular to
it."""

from _checks import OpChecks


class TestAffineLegendreP3(OpChecks):
    op = "affine_legendre_p3"

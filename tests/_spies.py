"""Spies on the solver's internals, shared by the tests."""

from couplings.solvers import _softmin


def spy_absorptions(monkeypatch):
    """The address of the kernel written by each absorption of the ``"kernel"`` backend, in
    order."""
    pointers = []
    absorb = _softmin.KernelSoftmin._absorb

    def spy(self, alpha, beta):
        absorb(self, alpha, beta)
        pointers.append(self.kt.data_ptr())

    monkeypatch.setattr(_softmin.KernelSoftmin, "_absorb", spy)
    return pointers

from pkt.methods import Method


class BaseMethod(Method):
    """No intervention: the neutral evaluation prompt only."""

from pkt.methods import Method, Setting


class BaseMethod(Method):
    """No intervention: the neutral evaluation prompt only."""

    expresses_traits = False

    def __init__(self, ctx: Setting, name: str = "base"):
        super().__init__(ctx, name)

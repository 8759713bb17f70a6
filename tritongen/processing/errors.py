class PreprocessError(ValueError):
    """An input the pipeline cannot turn into a model tensor; the message is for the user."""


class OpConfigError(ValueError):
    """A preprocessing op whose name or parameters are not supported; ``key`` names the culprit."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key

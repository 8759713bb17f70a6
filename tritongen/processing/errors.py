class PreprocessError(ValueError):
    """An input the pipeline cannot turn into a model tensor; the message is for the user."""


class OpConfigError(ValueError):
    """A preprocessing op whose name or parameters are not supported; ``key`` names the culprit."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


def invalid_argument(pb_utils, message: str):
    """For the generated Python models (preprocess, fused), which pass their
    ``triton_python_backend_utils`` (this package never imports Triton): a TritonError with status
    INVALID_ARGUMENT (the client sent a bad image), where the Python backend knows status codes."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)

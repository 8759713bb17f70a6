"""One exception family: the CLI prints these as a message, never a traceback."""


class TritongenError(Exception):
    """Base of every error tritongen reports to a user."""


class IntakeError(TritongenError):
    """The model source (directory, yaml, zoo name) cannot be read."""


class ZooError(IntakeError):
    """A zoo model cannot be downloaded or verified."""


class ConversionError(TritongenError):
    """Paddle -> ONNX (or another format) failed or gave a model that disagrees with Paddle."""


class EmitError(TritongenError):
    """A Triton repository cannot be written."""


class ServeError(TritongenError):
    """tritonserver cannot be started, or a repository cannot be served here."""


class ClientError(TritongenError):
    """A request to Triton failed; the message is the server's (or why it is unreachable)."""


class PerfError(TritongenError):
    """A performance measurement cannot run or gave no valid result."""

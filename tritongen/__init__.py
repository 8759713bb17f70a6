"""tritongen: Paddle vision models -> NVIDIA Triton model repositories."""
# paddlepaddle 2.6 ships its own zlib symbols; anything that links zlib and is imported after
# paddle (tritonclient.grpc, scipy) then crashes. Loading the real zlib first avoids that.
import zlib  # noqa: F401  (must stay the first import)

__version__ = "0.1.0"

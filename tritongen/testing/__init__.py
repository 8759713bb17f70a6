"""Generated test and demo models (tiny Paddle exports, an identity Triton model); never used by the build pipeline."""

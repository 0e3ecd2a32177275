"""livevsr: real-time live-stream 4x video super-resolution."""

__version__ = "0.1.0"

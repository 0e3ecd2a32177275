"""The size a stream goes out at (``streams[].output_height``), and the scaler that gets it there.

Engines produce their native scale (4x); a stream may ask for another height. The width then follows
the input's aspect ratio, rounded to an even number (yuv420p and H.264 need even sizes), so every
input of one aspect ratio goes out at one size: with ``output_height: 1080``, 480x270, 640x360 and
1280x720 all give 1920x1080.
"""

from __future__ import annotations

import av

NATIVE_SCALE = 4


def output_size(width: int, height: int, output_height: int, scale: int = NATIVE_SCALE) -> tuple[int, int]:
    """The (width, height) a ``width`` x ``height`` input goes out at.

    ``output_height`` 0 is the engine's native ``scale`` x the input. Otherwise the height is
    ``output_height`` and the width is ``width * output_height / height`` rounded to the nearest even
    number (halves up), at least 2. Integer arithmetic: the same input always gives the same size,
    wherever it is computed (engine, encoder, file writer).
    """
    if width < 1 or height < 1:
        raise ValueError(f"input size must be positive, got {width}x{height}")
    if not output_height:
        return width * scale, height * scale
    if output_height < 2 or output_height % 2:
        raise ValueError(f"output height must be even and >= 2, got {output_height}")
    # nearest even: 2 * floor(width * output_height / (2 * height) + 1/2)
    even_width = 2 * ((width * output_height + height) // (2 * height))
    return max(2, even_width), output_height


def resize(frame: av.VideoFrame, width: int, height: int) -> av.VideoFrame:
    """``frame`` as yuv420p at ``width`` x ``height``: Lanczos when it shrinks (no aliasing from the
    engine's detail), bicubic when it grows. A frame already that size and format comes back as is."""
    if (frame.width, frame.height) == (width, height) and frame.format.name == "yuv420p":
        return frame
    shrinks = width * height < frame.width * frame.height
    return frame.reformat(
        width=width, height=height, format="yuv420p", interpolation="LANCZOS" if shrinks else "BICUBIC"
    )

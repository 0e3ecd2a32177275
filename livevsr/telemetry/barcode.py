"""A binary timestamp barcode burned into the top rows of a frame, for glass-to-glass latency.

The publisher burns ``now_us() mod 2^48`` into each frame; a viewer reads it back from the decoded
(and possibly 4x upscaled) picture and subtracts it from its own clock. Black and white square cells
survive H.264 and bicubic scaling far better than digits, and need no OCR.

Layout, in cells of ``cell_px`` x ``cell_px`` pixels, row-major from the top-left corner, wrapping
at ``width // cell_px`` cells per row (so the layout is the same after a 4x upscale read at
``cell_px * 4``):

    8 start cells  1 0 1 0 1 1 0 0        black and white references, and a fixed pattern
    48 data cells  the value, most significant bit first
    16 check cells CRC-16/CCITT-FALSE of the value's 6 big-endian bytes

White is 1, black is 0. Cells after the last one, up to the end of the band, are black. A read
samples the centre half of each cell, thresholds halfway between the start pattern's white and black
means, and refuses (returns None) when contrast is low, a cell is ambiguous, or the CRC disagrees.
``web/viewer.js`` reads the same layout in the browser; keep the two in step.
"""

from __future__ import annotations

import time

import numpy as np

START_BITS = (1, 0, 1, 0, 1, 1, 0, 0)
VALUE_BITS = 48
CRC_BITS = 16
TOTAL_CELLS = len(START_BITS) + VALUE_BITS + CRC_BITS  # 72
VALUE_MOD = 1 << VALUE_BITS  # µs; wraps after ~8.9 years

MIN_CONTRAST = 64  # luma levels between the start pattern's white and black means
AMBIGUOUS = (0.3, 0.7)  # a cell whose normalised level falls in here is unreadable

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # BT.601, as libswscale converts rgb24


def now_us() -> int:
    """Wall-clock microseconds modulo 2^48: the value the publisher burns."""
    return time.time_ns() // 1000 % VALUE_MOD


def latency_us(value_us: int, at_us: int | None = None) -> int:
    """Microseconds from ``value_us`` (a burned stamp) to ``at_us`` (default now), modulo 2^48."""
    return ((now_us() if at_us is None else at_us) - value_us) % VALUE_MOD


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF), the check cells."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def encode_bits(value_us: int) -> list[int]:
    """The 72 cell bits for ``value_us`` (taken modulo 2^48)."""
    value = value_us % VALUE_MOD
    data = [(value >> (VALUE_BITS - 1 - i)) & 1 for i in range(VALUE_BITS)]
    crc = crc16(value.to_bytes(6, "big"))
    check = [(crc >> (CRC_BITS - 1 - i)) & 1 for i in range(CRC_BITS)]
    return [*START_BITS, *data, *check]


def band_rows(width: int, cell_px: int = 8) -> int:
    """Cell rows the barcode needs in a frame ``width`` pixels wide."""
    per_row = width // cell_px
    if per_row < len(START_BITS):
        raise ValueError(f"barcode: a {width} px wide frame holds {per_row} cells of {cell_px} px; "
                         f"need at least {len(START_BITS)}; use a smaller cell_px")
    return -(-TOTAL_CELLS // per_row)


def band_height(width: int, cell_px: int = 8) -> int:
    """Pixel rows at the top of the frame the barcode covers."""
    return band_rows(width, cell_px) * cell_px


def burn(rgb: np.ndarray, value_us: int, cell_px: int = 8) -> None:
    """Draw the barcode for ``value_us`` into the top rows of ``rgb`` ([H, W, 3] uint8), in place."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"barcode.burn: expected an [H, W, 3] uint8 array, got {rgb.shape} {rgb.dtype}")
    height, width = rgb.shape[:2]
    per_row = width // cell_px
    rows = band_rows(width, cell_px)
    if rows * cell_px > height:
        raise ValueError(f"barcode.burn: needs {rows * cell_px} px rows, the frame has {height}")
    cells = np.zeros(rows * per_row, dtype=np.uint8)
    cells[:TOTAL_CELLS] = encode_bits(value_us)
    # [rows, per_row] cells -> [rows*cell_px, per_row*cell_px] pixels
    band = np.kron(cells.reshape(rows, per_row) * 255, np.ones((cell_px, cell_px), dtype=np.uint8))
    rgb[: rows * cell_px, : per_row * cell_px] = band[:, :, None]
    rgb[: rows * cell_px, per_row * cell_px:] = 0


def _cell_levels(gray: np.ndarray, cell_px: float, per_row: int, height: int) -> np.ndarray | None:
    """Mean level of the centre half of each of the 72 cells, or None if the frame is too short."""
    rows = -(-TOTAL_CELLS // per_row)
    if rows * cell_px > height:
        return None
    lo, hi = cell_px * 0.25, cell_px * 0.75
    levels = np.empty(TOTAL_CELLS, dtype=np.float32)
    for i in range(TOTAL_CELLS):
        r, c = divmod(i, per_row)
        y0, y1 = int(r * cell_px + lo), max(int(r * cell_px + hi), int(r * cell_px + lo) + 1)
        x0, x1 = int(c * cell_px + lo), max(int(c * cell_px + hi), int(c * cell_px + lo) + 1)
        levels[i] = gray[y0:y1, x0:x1].mean()
    return levels


def read(image: np.ndarray, cell_px: float = 8) -> int | None:
    """The burned value in ``image`` ([H, W] luma or [H, W, 3] rgb), or None if there is no readable one.

    ``cell_px`` is the cell size in this image: 8 on the source, 32 on a 4x upscale of it.
    """
    if image.ndim not in (2, 3):
        raise ValueError(f"barcode.read: expected [H, W] or [H, W, 3], got shape {image.shape}")
    per_row = int(image.shape[1] // cell_px)
    if per_row < len(START_BITS):
        return None
    band = image[: int(np.ceil(-(-TOTAL_CELLS // per_row) * cell_px))]
    gray = band[..., :3].astype(np.float32) @ _LUMA if band.ndim == 3 else band
    levels = _cell_levels(gray, cell_px, per_row, image.shape[0])
    if levels is None:
        return None
    start = np.array(START_BITS, dtype=bool)
    white, black = levels[: len(START_BITS)][start].mean(), levels[: len(START_BITS)][~start].mean()
    if white - black < MIN_CONTRAST:
        return None
    norm = (levels - black) / (white - black)
    if np.any((norm > AMBIGUOUS[0]) & (norm < AMBIGUOUS[1])):
        return None
    bits = (norm >= 0.5).astype(np.int64)
    if tuple(bits[: len(START_BITS)]) != START_BITS:
        return None
    value = 0
    for b in bits[len(START_BITS): len(START_BITS) + VALUE_BITS]:
        value = (value << 1) | int(b)
    check = 0
    for b in bits[len(START_BITS) + VALUE_BITS:]:
        check = (check << 1) | int(b)
    if check != crc16(value.to_bytes(6, "big")):
        return None
    return value

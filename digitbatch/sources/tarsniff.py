"""A member's bytes that are certainly not a tar header: the check the compiled vouchers share.

:func:`.members.looks_like_tar` (``ustar`` at 257, or a header checksum
that adds up) is what the Python path refuses as a nested archive.
:func:`maybe_tar` is a cheaper, wider form of it, written so that numba
compiles it: False only when the bytes cannot be a tar header. Each kernel
module (:mod:`.jpegvouch`, :mod:`.pngvouch`) compiles it with its own
kernels; as plain Python it serves their tests.
"""

from __future__ import annotations


def maybe_tar(buf, a, n):
    """False only when the ``n`` bytes at ``a`` of ``buf`` (uint8) are certainly
    not a tar header."""
    if n < 512:
        return False
    if (buf[a + 257] == 117 and buf[a + 258] == 115 and buf[a + 259] == 116
            and buf[a + 260] == 97 and buf[a + 261] == 114):  # "ustar"
        return True
    blank = True
    for x in range(148, 156):  # the checksum field: octal digits, NUL, space, + - _
        c = buf[a + x]
        if not (c == 0 or c == 32 or 48 <= c <= 55 or c == 43 or c == 45 or c == 95):
            return False
        if c != 0 and c != 32:
            blank = False
    return not blank  # (a blank field is no number: no tar)

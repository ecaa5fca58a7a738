"""Reading the user's text files: bytes decoded with a message naming the file and line when they are not text."""

from __future__ import annotations

import codecs
from pathlib import Path

from .errors import MinnowError


class NotText(ValueError):
    """Bytes that are not text in the expected encoding; ``line`` is 1-based within them."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line = line


def decode(data: bytes, encoding: str = "utf-8", hint: str = "save it as UTF-8") -> str:
    """``data`` as text (a UTF-8 byte-order mark dropped); NotText for undecodable bytes or a NUL (binary files)."""
    try:
        text = data.decode("utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding)
    except UnicodeDecodeError as e:
        raise NotText(
            data[: e.start].count(b"\n") + 1, f"not {encoding} text (byte 0x{data[e.start]:02x}); {hint}"
        ) from None
    if "\x00" in text:
        raise NotText(text[: text.index("\x00")].count("\n") + 1, "a NUL character: a binary file, not text")
    return text


def read_text(file: Path, encoding: str = "utf-8", hint: str = "save it as UTF-8") -> str:
    """The whole file as text; MinnowError naming ``file:line`` when it is not text."""
    try:
        return decode(file.read_bytes(), encoding, hint)
    except NotText as e:
        raise MinnowError(f"{file}:{e.line}: {e}") from None

"""Type stubs for ``huey._native``, the Rust core of huey-rs."""

from typing import Any, Optional, final

__all__ = ["Crontab", "Framing", "derive_signing_key", "signature"]

@final
class Crontab:
    """A parsed crontab; calling it with a datetime says whether that minute matches."""

    def __new__(
        cls,
        minute: str = "*",
        hour: str = "*",
        day: str = "*",
        month: str = "*",
        day_of_week: str = "*",
        strict: bool = False,
    ) -> Crontab: ...
    def __call__(self, timestamp: Any) -> bool: ...
    def matches(self, timestamp: Any) -> bool: ...
    def matches_fields(
        self, month: int, day: int, day_of_week: int, hour: int, minute: int
    ) -> bool: ...

@final
class Framing:
    """Sign-then-compress on encode, decompress-then-verify on decode."""

    def __new__(
        cls,
        compression: bool = False,
        level: int = 6,
        use_zlib: bool = False,
        key: Optional[bytes] = None,
    ) -> Framing: ...
    def encode(self, payload: bytes) -> bytes: ...
    def decode(self, data: bytes) -> bytes: ...

def derive_signing_key(secret: bytes, salt: bytes) -> bytes: ...
def signature(key: bytes, message: bytes) -> bytes: ...

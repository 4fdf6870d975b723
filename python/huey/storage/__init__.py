"""Storage backends. ``from huey.storage import X`` works for every storage huey ships."""

from huey.storage.base import BaseStorage, BlackHoleStorage
from huey.storage.file import FileStorage
from huey.storage.memory import MemoryStorage

__all__ = ['BaseStorage', 'BlackHoleStorage', 'FileStorage', 'MemoryStorage']

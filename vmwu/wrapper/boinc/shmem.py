"""The app <-> client shared memory: ``boinc_mmap_file`` in the slot directory.

BOINC's ``SHARED_MEM`` (lib/app_ipc.h) is eight channels of 1024 bytes each, in this
order. A channel's first byte says "a message is pending"; the message follows as
NUL-terminated text. The sender writes only into a clear channel (text first, then the
flag); the receiver takes the text and clears the flag (``MSG_CHANNEL::get_msg`` /
``send_msg`` in lib/app_ipc.cpp). A message holds at most 1022 bytes of text.
"""

from __future__ import annotations

import mmap
import os
from enum import IntEnum
from pathlib import Path

from vmwu.errors import BadInput

MMAP_FILE = "boinc_mmap_file"
CHANNEL_SIZE = 1024
MAX_TEXT = CHANNEL_SIZE - 2  # the flag byte, and room for the terminating NUL


class Channel(IntEnum):
    """The channels of ``SHARED_MEM``, by index; who writes each is in the comment."""

    PROCESS_CONTROL_REQUEST = 0  # client -> app: <suspend/>, <resume/>, <quit/>, <abort/>
    PROCESS_CONTROL_REPLY = 1  # app -> client (unused)
    GRAPHICS_REQUEST = 2  # client -> app (unused)
    GRAPHICS_REPLY = 3  # app -> client: <web_graphics_url>, <remote_desktop_addr>
    HEARTBEAT = 4  # client -> app, every second
    APP_STATUS = 5  # app -> client: CPU times and fraction done
    TRICKLE_UP = 6  # app -> client
    TRICKLE_DOWN = 7  # client -> app


SIZE = CHANNEL_SIZE * len(Channel)


def decode(raw: bytes) -> str:
    """A channel's text: up to the first NUL, bytes that are not UTF-8 replaced."""
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")


class SharedMemory:
    """The channels in a ``boinc_mmap_file`` (or any file of at least 8192 bytes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as exc:
            raise BadInput(f"cannot open the BOINC shared memory {path}: {exc.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            if size < SIZE:
                raise BadInput(
                    f"the BOINC shared memory {path} holds {size} bytes, not {SIZE}",
                    hint="it is written by the BOINC client; is this a BOINC slot directory?",
                )
            self._map = mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)

    @staticmethod
    def _base(channel: Channel) -> int:
        return int(channel) * CHANNEL_SIZE

    def pending(self, channel: Channel) -> bool:
        return self._map[self._base(channel)] != 0

    def receive(self, channel: Channel) -> str | None:
        """The pending message of ``channel`` (clearing its flag), or None."""
        base = self._base(channel)
        if self._map[base] == 0:
            return None
        text = decode(self._map[base + 1 : base + CHANNEL_SIZE])
        self._map[base] = 0
        return text

    def send(self, channel: Channel, text: str, *, overwrite: bool = False) -> bool:
        """Put ``text`` (cut to 1022 bytes) into ``channel``; False, and nothing
        written, while the receiver has not taken the previous message (unless
        ``overwrite``)."""
        base = self._base(channel)
        if self._map[base] != 0 and not overwrite:
            return False
        data = text.encode("utf-8", errors="replace")[:MAX_TEXT]
        self._map[base + 1 : base + 1 + len(data) + 1] = data + b"\0"
        self._map[base] = 1
        return True

    def close(self) -> None:
        self._map.close()

"""A fake BOINC client for unit tests: the client's side of the same files and mmap
layout (lib/app_ipc.h), driven by the test. The real client is in ``client.py``."""

from __future__ import annotations

import mmap
from pathlib import Path

from vmwu.wrapper.boinc.shmem import CHANNEL_SIZE, SIZE, Channel

HEARTBEAT = "<heartbeat/><wss>1000.0</wss><max_wss>2000.0</max_wss>"
SAMPLE_INIT_DATA = Path(__file__).parent.parent / "data" / "boinc" / "init_data.xml"


def init_data_xml(project_dir: Path, **fields: object) -> str:
    """An init_data.xml like the real client's, with ``fields`` replaced or added."""
    values: dict[str, object] = {
        "major_version": 7,
        "minor_version": 20,
        "release": 5,
        "app_name": "vmwu",
        "project_dir": project_dir,
        "wu_name": "wu1",
        "result_name": "wu1_0",
        "slot": 0,
        "client_pid": 0,
        "checkpoint_period": 60.0,
        "fraction_done_start": 0.0,
        "fraction_done_end": 1.0,
        "wu_cpu_time": 0.0,
        "ncpus": 1.0,
    }
    values.update(fields)
    body = "".join(f"<{k}>{v}</{k}>\n" for k, v in values.items())
    return f"<app_init_data>\n{body}</app_init_data>\n"


class FakeClient:
    """Lays out a slot (``init_data.xml``, an 8192-byte ``boinc_mmap_file``) and speaks
    the client's side of the channels."""

    def __init__(self, data: Path, **fields: object) -> None:
        self.data = data
        self.slot = slot = data / "slots" / "0"
        self.project_dir = project_dir = data / "projects" / "127.0.0.1_8000"
        slot.mkdir(parents=True, exist_ok=True)
        project_dir.mkdir(parents=True, exist_ok=True)
        (slot / "init_data.xml").write_text(init_data_xml(project_dir, **fields))
        path = slot / "boinc_mmap_file"
        path.write_bytes(b"\0" * SIZE)
        self._file = open(path, "r+b")
        self.map = mmap.mmap(self._file.fileno(), SIZE)

    def close(self) -> None:
        self.map.close()
        self._file.close()

    def _base(self, channel: Channel) -> int:
        return int(channel) * CHANNEL_SIZE

    def send(self, channel: Channel, text: str) -> bool:
        """MSG_CHANNEL::send_msg: only into a clear channel."""
        base = self._base(channel)
        if self.map[base]:
            return False
        data = text.encode()[: CHANNEL_SIZE - 2] + b"\0"
        self.map[base + 1 : base + 1 + len(data)] = data
        self.map[base] = 1
        return True

    def receive(self, channel: Channel) -> str | None:
        base = self._base(channel)
        if not self.map[base]:
            return None
        raw = self.map[base + 1 : base + CHANNEL_SIZE].split(b"\0", 1)[0]
        self.map[base] = 0
        return raw.decode()

    def pending(self, channel: Channel) -> bool:
        return bool(self.map[self._base(channel)])

    def heartbeat(self) -> bool:
        return self.send(Channel.HEARTBEAT, HEARTBEAT)

    def control(self, tag: str) -> bool:
        return self.send(Channel.PROCESS_CONTROL_REQUEST, f"<{tag}/>")

    def link(self, name: str, physical: str, content: bytes | None = None) -> Path:
        """A soft-link file ``name`` in the slot to ``physical`` in the project dir."""
        target = self.project_dir / physical
        if content is not None:
            target.write_bytes(content)
        rel = f"../../projects/{self.project_dir.name}/{physical}"
        (self.slot / name).write_text(f"<soft_link>{rel}</soft_link>\n")
        return target

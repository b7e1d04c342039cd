"""The guest scripts and vmwu.guest.protocol agree (issue 12): every name the host relies
on is the one the agent and its helpers use, and the agent's version is the host's."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmwu import guest
from vmwu.guest import protocol
from vmwu.guest.protocol import Event, KernelOption, Label

AGENT = guest.read(guest.AGENT).decode()
PROGRESS = guest.read(guest.PROGRESS).decode()
SCRIPTS = "\n".join(
    guest.read(name).decode()
    for name in (
        guest.AGENT,
        guest.PROGRESS,
        guest.MOUNT,
        guest.FINDLABEL,
        guest.TINY_INIT,
        guest.DEBIAN_START,
        guest.DEBIAN_INITRAMFS_INIT,
        guest.DEFAULT_TEMPLATE,
        guest.THESIS_TEMPLATE,
    )
)


def test_the_agent_reports_the_hosts_protocol_version() -> None:
    m = re.search(r"^VMWU_AGENT_VERSION=(\d+)$", AGENT, re.M)
    assert m is not None and int(m.group(1)) == protocol.AGENT_VERSION
    assert protocol.AGENT_VERSION in protocol.KNOWN_AGENT_VERSIONS
    for event in (Event.BOOTED, Event.RESUMED):  # both carry the version
        assert f'\\"event\\":\\"{event}\\",\\"agent\\":$VMWU_AGENT_VERSION' in AGENT


def test_every_event_is_one_the_agent_or_its_helper_sends() -> None:
    sent = set(re.findall(r'\\"event\\":\\"([a-z]+)\\"', AGENT))
    sent |= set(re.findall(r'"event":"([a-z]+)"', PROGRESS))
    assert sent == {e.value for e in Event}


def test_every_kernel_option_is_read_in_the_guest() -> None:
    read = set(re.findall(r"(vmwu\.[a-z_]+)=", SCRIPTS))
    assert {o.value for o in KernelOption} <= read
    assert read <= {o.value for o in KernelOption}, "the guest reads an option the host lacks"


def test_disk_labels_and_paths() -> None:
    waited = re.search(r'^WAIT_LABELS="([^"]*)"$', AGENT, re.M)
    assert waited is not None
    assert waited.group(1).split() == [Label.APP, Label.OUTPUT, Label.INSTANCE]
    for label in (Label.APP, Label.OUTPUT, Label.INSTANCE):
        assert f"mount_disk {label}" in AGENT or f"mount_label {label}" in AGENT
    for path in (
        protocol.ISO_TIME,
        protocol.ISO_SEED,
        protocol.SCRIPT_BIN,
        protocol.AUTORUN_NAME_FILE,
    ):
        assert f"/{path}" in AGENT, path
    assert f'STATE="$OUT_DIR/{protocol.GUEST_STATE_DIR}"' in AGENT
    assert f'"$STATE/{protocol.GUEST_STATUS}"' in AGENT
    template = guest.read(guest.DEFAULT_TEMPLATE).decode()
    for path in (
        protocol.PARAM_FILE,
        protocol.PARAM_SH,
        protocol.ISO_INSTANCE_SCRIPT,
        protocol.ISO_INSTANCE_POST_SCRIPT,
    ):
        assert f"###CDROM_DIRECTORY###/{path}" in template, path
    for option, default in (
        ("APP_DIR", protocol.DEFAULT_APP_DIR),
        ("OUT_DIR", protocol.DEFAULT_OUTPUT_DIR),
        ("CDROM_DIR", protocol.DEFAULT_CDROM_DIR),
    ):
        assert f"\n{option}={default}\n" in AGENT


def test_an_agent_of_another_protocol_is_refused() -> None:
    from vmwu.guest.events import InstanceState

    state = InstanceState()
    state.apply({"event": "booted", "agent": 1}, 1.0)
    assert state.agent_error is None and state.agent_version == 1
    state = InstanceState()
    state.apply({"event": "resumed", "agent": 99}, 1.0)
    assert state.agent_error is not None and "protocol 99" in state.agent_error
    state = InstanceState()
    state.apply({"event": "booted"}, 1.0)  # an agent older than versioned events
    assert state.agent_error is None


# -- a base's agent version as the catalog and the descriptor write it -------------------------


@given(st.none() | st.integers(min_value=0, max_value=999_999))
def test_agent_version_text_round_trips(version: int | None) -> None:
    assert protocol.parse_agent_version(protocol.agent_version_text(version)) == version


def test_agent_version_texts_on_disk_read_as_before() -> None:
    assert protocol.agent_version_text(None) == "none"
    assert protocol.agent_version_text(1) == "1"
    assert protocol.parse_agent_version("none") is None
    assert protocol.parse_agent_version(" 1\n") == 1
    # empty: a catalog row or unit from before the field was filled, read as pack always did
    assert protocol.parse_agent_version("") == protocol.AGENT_VERSION


@given(st.text(max_size=60))
def test_agent_version_garbage_is_one_line(text: str) -> None:
    value = text.strip()
    if value == "" or value == "none" or re.fullmatch(r"[0-9]{1,6}", value):
        return  # the texts that mean something (above)
    with pytest.raises(ValueError) as err:
        protocol.parse_agent_version(text)
    message = str(err.value)
    assert "\n" not in message and "neither a number nor 'none'" in message


@pytest.mark.parametrize("text", ["None", "v1", "1.0", "-1", "+1", "١", "1 2", "1234567", "0x1"])
def test_agent_version_rejects_lookalikes(text: str) -> None:
    with pytest.raises(ValueError, match="neither a number nor 'none'"):
        protocol.parse_agent_version(text)

"""The pointer of a saved guest whose RAM is a file (vmwu.vmm.warm): only names vmwu
writes are followed, whatever the file holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmwu.vmm import warm

KEY = "warm-0123456789abcdef0123456789abcdef"


def write_entry(tmp: Path, *, base: bool) -> Path:
    token = "a1b2c3d4e5f60718"
    names = {"ram": f"{KEY}.ram-{token}", "state": f"{KEY}.sstate-{token}", "base": None}
    if base:
        names["base"] = f"{KEY}.sbase-{token}.qcow2"
    for name in names.values():
        if name is not None:
            (tmp / name).write_bytes(b"x")
    pointer = tmp / f"{KEY}.shared"
    pointer.write_text(json.dumps({"v": 1, **names}))
    return pointer


@pytest.mark.parametrize("base", [False, True])
def test_a_pointer_vmwu_wrote_names_its_files(tmp_path: Path, base: bool) -> None:
    save = warm.read_shared(write_entry(tmp_path, base=base), KEY)
    assert save.ram.parent == tmp_path and save.ram.name.startswith(f"{KEY}.ram-")
    assert (save.base is not None) == base
    assert len(save.files()) == (3 if base else 2)


def test_a_pointer_whose_files_are_gone_is_refused(tmp_path: Path) -> None:
    pointer = write_entry(tmp_path, base=False)
    next(tmp_path.glob("*.ram-*")).unlink()
    with pytest.raises(FileNotFoundError):
        warm.read_shared(pointer, KEY)
    warm.drop_shared(pointer, KEY)
    assert list(tmp_path.iterdir()) == []


names = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=80),
    st.sampled_from(["../../etc/passwd", f"{KEY}.ram-../x", f"{KEY}.ram-/abs", f"{KEY}.ram-"]),
    st.builds(lambda t: f"{KEY}.ram-{t}", st.text(max_size=70)),
)


@settings(max_examples=300, deadline=None)
@given(
    raw=st.one_of(
        st.binary(max_size=300),
        st.fixed_dictionaries({"v": st.sampled_from([1, 2, "1"]), "ram": names, "state": names}),
        st.dictionaries(st.sampled_from(["v", "ram", "state", "base"]), names),
    )
)
def test_any_pointer_names_files_of_the_entry_or_is_refused(
    tmp_path_factory: pytest.TempPathFactory, raw: object
) -> None:
    tmp = tmp_path_factory.mktemp("p")
    pointer = tmp / f"{KEY}.shared"
    data = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
    pointer.write_bytes(data)
    try:
        save = warm.read_shared(pointer, KEY)
    except (ValueError, OSError):
        return  # refused (json.JSONDecodeError and UnicodeDecodeError are ValueErrors)
    for path in save.files():
        assert path.parent == tmp and path.name.startswith(f"{KEY}.")
        assert "/" not in path.name and ".." not in path.name

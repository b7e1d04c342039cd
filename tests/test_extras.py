"""dask, distributed and matplotlib are optional (the ``dask`` and ``report`` extras): without
them the Dask executor and ``vmwu sweep report`` say in one line which extra to install
(exit 242), and everything else, a local sweep included, works.

"Without them" is made real in a subprocess by ``sys.modules[name] = None``, which makes
every import of that package fail as if it were not installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from vmwu.errors import ExitCode
from vmwu.extras import EXTRAS, require

WITHOUT = """
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None
from vmwu.cli import main
sys.exit(main(sys.argv[2:]))
"""

PLAN = """parameter n integer range from 1 to 2 step 1
task main
    node:execute echo ${n} > out.txt
    copy node:out.txt out_${n}.txt
endtask
"""

ALL = ",".join(m for modules in EXTRAS.values() for m in modules)


def vmwu_without(modules: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT, modules, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def one_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_the_extras_are_installed_here() -> None:
    for extra in EXTRAS:
        require(extra, f"the {extra} extra")


def test_sweep_report_names_the_report_extra(tmp_path: Path) -> None:
    result = vmwu_without("matplotlib", "sweep", "report", str(tmp_path), cwd=tmp_path)
    line = one_line(result, int(ExitCode.MISSING_TOOL))
    assert "vmwu sweep report needs the Python package 'matplotlib'" in line
    assert "pip install 'vmwu[report]'" in line


def test_the_dask_executor_names_the_dask_extra_before_creating_anything(tmp_path: Path) -> None:
    (tmp_path / "t.plan").write_text(PLAN)
    for module in EXTRAS["dask"]:
        result = vmwu_without(
            module, "sweep", "t.plan", "--executor", "dask", "--results", "res", cwd=tmp_path
        )
        line = one_line(result, int(ExitCode.MISSING_TOOL))
        assert f"the dask executor needs the Python package '{module}'" in line
        assert "pip install 'vmwu[dask]'" in line
        assert not (tmp_path / "res").exists()


def test_a_local_sweep_needs_no_extra(tmp_path: Path) -> None:
    (tmp_path / "t.plan").write_text(PLAN)
    result = vmwu_without(ALL, "sweep", "t.plan", "--results", "res", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "res" / "out_1.txt").read_text() == "1\n"
    assert (tmp_path / "res" / "out_2.txt").read_text() == "2\n"
    status = vmwu_without(ALL, "sweep", "status", "res", cwd=tmp_path)
    assert "2: 2 done, 0 failed" in status.stdout, status.stderr

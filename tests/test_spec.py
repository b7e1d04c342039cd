"""The packager spec: thesis .gvap files, TOML, command-line overrides, errors, paths."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from vmwu.errors import BadInput, SpecError
from vmwu.options import RawValue, parse_cli, parse_gvap
from vmwu.pack.spec import OPTIONS, MiB, Spec, load_spec

THESIS = Path(__file__).parent / "data" / "thesis"
DOCS = Path(__file__).parent.parent / "docs" / "spec-options.md"

MANDELBROT_LAUNCH = (
    "/app/mandelbrot `cat /cdrom/para` > /output/mandelbrot.out 2> /output/mandelbrot.err"
)
MANDELBROT_TOML = """\
package-name = "mandelbrot"
app-import = "./mandelbrot/"
app-launch = "/app/mandelbrot `cat /cdrom/para` > /output/mandelbrot.out 2> /output/mandelbrot.err"
app-architecture = "x86"
app-os = "linux2.6"
base-image-autosource = true
base-image-autosource-interaction = 1
script-template = "../../script_templates/script.sh"
edit-script = true
vmddb = "../../db/vmd.db"
input-import-dir = "/data/"
vmm-type = "QEMU"
compress = true
"""
MINIMAL = 'app-import-dir="app"\napp-launch="/app/run"\n'


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def cli(*args: str) -> list[RawValue]:
    return parse_cli(args, OPTIONS)


def spec_error(path: Path | None, *overrides: str, cwd: Path | None = None) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_spec(path, cli(*overrides), cwd=cwd)
    return info.value


# --- the thesis's own files (figures 6.2 and 6.5) -----------------------------------------


def test_thesis_mandelbrot_loads_verbatim() -> None:
    spec = load_spec(THESIS / "mandelbrot.gvap")
    assert spec.package_name == "mandelbrot"
    assert spec.app_import_dir == THESIS / "mandelbrot"
    assert spec.app_launch == MANDELBROT_LAUNCH
    assert (spec.app_architecture, spec.app_os) == ("x86", "linux2.6")
    assert spec.base_image_autosource and spec.base_image_autosource_interaction
    assert spec.script_template == THESIS / "../../script_templates/script.sh"
    assert spec.edit_script is True
    assert spec.vmddb == THESIS / "../../db/vmd.db"  # does not exist: still parses
    assert spec.input_import_dir == Path("/data")
    assert spec.vmm_type == "qemu"
    assert spec.compress is True
    assert spec.spec_path == THESIS / "mandelbrot.gvap"
    assert spec.origin("app-launch") == f"{THESIS / 'mandelbrot.gvap'}:3"
    assert spec.origin("app_import_dir").endswith("mandelbrot.gvap:2")  # given as app-import
    assert spec.origin("app-buffer") == "default"
    assert spec.app_buffer == 16 * MiB and spec.vmm_memory == 512  # defaults


def test_thesis_phaser_loads_verbatim() -> None:
    spec = load_spec(THESIS / "phaser.gvap")
    assert spec.package_name == "phaser"
    assert spec.app_import_dir == THESIS / "phaser"
    assert spec.app_launch == (
        "/app/phaser < /cdrom/input.pha > /output/phaser.out 2> /output/phaser.err"
    )
    assert spec.input_import_dir is None
    assert spec.origin("compress").endswith("phaser.gvap:12")


def test_toml_and_gvap_equivalents_are_equal(tmp_path: Path) -> None:
    gvap = shutil.copy(THESIS / "mandelbrot.gvap", tmp_path / "mandelbrot.gvap")
    toml = write(tmp_path, "mandelbrot.toml", MANDELBROT_TOML)
    from_gvap, from_toml = load_spec(Path(gvap)), load_spec(toml)
    assert from_gvap == from_toml
    assert from_toml.origin("vmm-type") == f"{toml}:12"


# --- file forms ---------------------------------------------------------------------------


def test_gvap_quoting_comments_and_command_line_style_lines() -> None:
    text = """\
# a comment

package-name = 'single quoted'
app-launch="/app/run \\"a b\\" c\\\\d"   # trailing comment after the quote
-app-os linux
--app-architecture=x86_64
  vmm-type =  QEMU
--edit-script
description=unquoted # kept as text
"""
    raw = {v.name: (v.value, v.origin) for v in parse_gvap(text, "s.gvap")}
    assert raw["package-name"] == ("single quoted", "s.gvap:3")
    assert raw["app-launch"] == ('/app/run "a b" c\\d', "s.gvap:4")
    assert raw["app-os"] == ("linux", "s.gvap:5")
    assert raw["app-architecture"] == ("x86_64", "s.gvap:6")
    assert raw["vmm-type"] == ("QEMU", "s.gvap:7")
    assert raw["edit-script"] == (True, "s.gvap:8")
    assert raw["description"] == ("unquoted # kept as text", "s.gvap:9")


def test_aliases_underscores_and_case(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "u.gvap",
        'APP_IMPORT="app"\napp_launch="/app/run"\nvm-interaction=yes\n'
        "virtual-machine-disk-database=db.sqlite\nVMM_Memory=1G\n",
    )
    spec = load_spec(path)
    assert spec.app_import_dir == tmp_path / "app"
    assert spec.base_image_autosource_interaction is True
    assert spec.vmddb == tmp_path / "db.sqlite"
    assert spec.vmm_memory == 1024
    toml = write(tmp_path, "u.toml", 'app_import_dir = "app"\n"app_launch" = "/app/run"\n')
    assert load_spec(toml).app_import_dir == tmp_path / "app"


def test_empty_value_means_default(tmp_path: Path) -> None:
    # The thesis screenshots print unset options as "vmm-architecture =".
    path = write(tmp_path, "e.gvap", MINIMAL + "vmm-architecture =\napp-os=\ncompress=\n")
    spec = load_spec(path)
    assert (spec.vmm_architecture, spec.app_os, spec.compress) == (None, "linux", True)


@pytest.mark.parametrize(
    ("written", "mib"), [("512", 512), ("512M", 512), ("1G", 1024), ("2GiB", 2048)]
)
def test_vmm_memory_is_mib(tmp_path: Path, written: str, mib: int) -> None:
    path = write(tmp_path, "m.gvap", MINIMAL + f"vmm-memory={written}\n")
    assert load_spec(path).vmm_memory == mib


def test_toml_integers_sizes_bools_and_floats(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "t.toml",
        'app-import-dir = "app"\napp-launch = "/app/run"\napp-output-size = 2097152\n'
        'app-buffer = "1M"\nvmm-memory = 256\ncompress = 0\ntimeout = 90\nvmm-cpus = 2\n',
    )
    spec = load_spec(path)
    assert (spec.app_output_size, spec.app_buffer) == (2 * MiB, MiB)
    assert (spec.vmm_memory, spec.compress, spec.timeout, spec.vmm_cpus) == (256, False, 90.0, 2)


# --- command line -------------------------------------------------------------------------


def test_parse_cli_forms() -> None:
    raw = cli("--app-launch", "x", "-compress", "1", "--edit-script", "--package-name=foo")
    assert [(v.name, v.value, v.origin) for v in raw] == [
        ("app-launch", "x", "command line (--app-launch)"),
        ("compress", "1", "command line (-compress)"),
        ("edit-script", True, "command line (--edit-script)"),
        ("package-name", "foo", "command line (--package-name)"),
    ]
    assert [v.value for v in cli("--app-launch", "-x", "--edit-script")] == ["-x", True]
    assert [(v.name, v.value) for v in cli("--no-compress")] == [("compress", False)]
    assert cli("--app_launch", "y")[0].name == "app-launch"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--app-lanch", "x"], "command line (--app-lanch): unknown option 'app-lanch'"),
        (["--app-launch"], "--app-launch needs a value"),
        (["--no-compress=1"], "--no-compress takes no value"),
        (["--no-app-launch"], "unknown option 'no-app-launch'"),
    ],
)
def test_parse_cli_errors(args: list[str], message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cli(*args)


def test_parse_cli_rejects_positional_arguments() -> None:
    with pytest.raises(BadInput, match="unexpected argument 'stray'"):
        cli("--compress", "1", "stray")


def test_unknown_cli_option_suggests() -> None:
    with pytest.raises(SpecError) as info:
        cli("--app-lanch", "x")
    assert info.value.hint == "did you mean 'app-launch'?"


def test_command_line_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, "o.gvap", MINIMAL + "compress=1\npackage-name=file\n")
    spec = load_spec(
        path, cli("--app-launch", "/app/other", "-compress", "0", "--package-name=cli")
    )
    assert (spec.app_launch, spec.compress, spec.package_name) == ("/app/other", False, "cli")
    assert spec.origin("app-launch") == "command line (--app-launch)"
    assert spec.origin("app-import-dir") == f"{path}:1"


def test_command_line_alone_and_config_option(tmp_path: Path) -> None:
    spec = load_spec(None, cli("--app-import", "app", "--app-launch", "/app/run"), cwd=tmp_path)
    assert (spec.package_name, spec.app_import_dir, spec.spec_path) == (
        "unit",
        tmp_path / "app",
        None,
    )
    write(tmp_path, "sub/named.gvap", MINIMAL)
    spec = load_spec(None, cli("--config", "sub/named.gvap"), cwd=tmp_path)
    assert (spec.package_name, spec.app_import_dir) == ("named", tmp_path / "sub" / "app")


def test_vmwu_toml_is_named_after_its_directory(tmp_path: Path) -> None:
    path = write(tmp_path, "mandel/vmwu.toml", 'app-import-dir = "."\napp-launch = "/app/m"\n')
    assert load_spec(path).package_name == "mandel"


# --- errors -------------------------------------------------------------------------------


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.gvap", MINIMAL + "this is not an option\n")
    err = spec_error(path)
    assert err.where == f"{path}:3" and "expected option=value" in err.message


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('app-os="linux\n', 'missing closing "'),
        ('app-os="linux" junk\n', "unexpected text after the closing quote: 'junk'"),
    ],
)
def test_bad_quoting(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path, "q.gvap", MINIMAL + line)
    err = spec_error(path)
    assert err.where == f"{path}:3" and message in err.message


def test_toml_syntax_error_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.toml", 'app-import-dir = "app"\n\napp-launch = /app/run\n')
    err = spec_error(path)
    assert err.where == f"{path}:3"
    assert "invalid TOML" in err.message and "column" in err.message


def test_toml_tables_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "t.toml", '# spec\n[vmwu]\napp-launch = "/app/run"\n')
    err = spec_error(path)
    assert err.where == f"{path}:2" and "tables are not used" in err.message


@pytest.mark.parametrize(
    ("name", "text", "line"),
    [
        ("u.gvap", MINIMAL + 'app-lanch="/x"\n', 3),
        ("u.toml", 'app-import-dir = "app"\napp-launch = "/app/run"\n\n  app-lanch = "/x"\n', 4),
    ],
)
def test_unknown_option_did_you_mean(tmp_path: Path, name: str, text: str, line: int) -> None:
    path = write(tmp_path, name, text)
    err = spec_error(path)
    assert err.where == f"{path}:{line}"
    assert err.message.endswith("unknown option 'app-lanch'")
    assert err.hint == "did you mean 'app-launch'?"


def test_missing_app_import_dir(tmp_path: Path) -> None:
    path = write(tmp_path, "m.gvap", 'app-launch="/app/run"\n')
    err = spec_error(path)
    assert err.where == str(path) and "app-import-dir is required" in err.message
    err = spec_error(None, "--app-launch", "/app/run", cwd=tmp_path)
    assert err.where == "command line"


def test_empty_app_import_dir_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "m.gvap", 'app-import-dir=""\napp-launch="/app/run"\n')
    err = spec_error(path)
    assert err.where == f"{path}:1" and "app-import-dir is empty" in err.message


def test_blank_or_missing_app_launch(tmp_path: Path) -> None:
    path = write(tmp_path, "b.gvap", 'app-import-dir="app"\napp-launch="   "\n')
    err = spec_error(path)
    assert err.where == f"{path}:2" and "app-launch is empty" in err.message
    path = write(tmp_path, "n.gvap", 'app-import-dir="app"\n')
    assert "app-launch is required" in spec_error(path).message


def test_unparsable_size_names_option_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "s.gvap", MINIMAL + "app-output-size=lots\n")
    err = spec_error(path)
    assert err.where == f"{path}:3"
    assert "bad value for app-output-size" in err.message and "64M" in err.message


def test_duplicate_option_names_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "d.gvap", MINIMAL + "compress=1\ncompress=0\n")
    err = spec_error(path)
    assert err.where == f"{path}:4" and f"(first at {path}:3)" in err.message
    path = write(tmp_path, "a.gvap", MINIMAL + 'app-import="other"\n')  # alias = same option
    assert "app-import-dir is given twice" in spec_error(path).message


def test_edit_vm_is_unsupported_only_when_true(tmp_path: Path) -> None:
    path = write(tmp_path, "v.gvap", MINIMAL + "edit-vm=1\n")
    err = spec_error(path)
    assert err.where == f"{path}:3"
    assert "option edit-vm is not supported: editing a shared" in err.message
    assert load_spec(write(tmp_path, "ok.gvap", MINIMAL + "edit-vm=0\n")).edit_vm is False


def test_unknown_vmm_type(tmp_path: Path) -> None:
    path = write(tmp_path, "t.gvap", MINIMAL + "vmm-type=VMware\n")
    err = spec_error(path)
    assert err.where == f"{path}:3"
    assert "vmm-type 'vmware' is not supported (supported: qemu)" in err.message


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("config=other.gvap", "config is a command-line option"),
        ("compress=maybe", "bad value for compress: expected 1/0, true/false"),
        ("vmm-memory=1000K", "bad value for vmm-memory: expected a whole number of MiB"),
        ("vmm-cpus=two", "bad value for vmm-cpus: expected a whole number"),
        ("vmm-cpus=0", "vmm-cpus must be at least 1"),
        ("timeout=-5", "timeout must be more than 0 seconds"),
        ("timeout=inf", "bad value for timeout: expected a number"),
        ("app-output-size=4096", "app-output-size must be at least 1M"),
        ("app-dir=app", "app-dir must be an absolute path in the guest"),
        ("app-working-dir=tmp", "app-working-dir must be an absolute path"),
        ("app-cdrom-dir=/app/", "app-cdrom-dir '/app' cannot be a mount point"),
        ("app-output-dir=/", "app-output-dir '/' cannot be a mount point"),
        ("script-name=bin/run.sh", "script-name must be a plain file name"),
        ("base-image-filesystem=xfs", "base-image-filesystem 'xfs' is not supported"),
        ("package-name=../evil", "package-name '../evil' is not a safe file name"),
        ("package-name=.hidden", "is not a safe file name"),
        ("--package-name", "bad value for package-name: expected text"),
    ],
)
def test_invalid_values_name_their_line(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path, "x.gvap", MINIMAL + line + "\n")
    err = spec_error(path)
    assert message in err.message
    assert err.where == f"{path}:3"


def test_normalised_values(tmp_path: Path) -> None:
    text = MINIMAL + "app-output-dir=/output/\nbase-image-filesystem=EXT4\nvmm-type= Qemu \n"
    spec = load_spec(write(tmp_path, "n.gvap", text))
    assert (spec.app_output_dir, spec.base_image_filesystem, spec.vmm_type) == (
        "/output",
        "ext4",
        "qemu",
    )


def test_missing_spec_file(tmp_path: Path) -> None:
    err = spec_error(tmp_path / "nope.gvap")
    assert "no such file" in err.message


# --- path resolution ----------------------------------------------------------------------


def test_paths_in_file_are_relative_to_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "proj/s.gvap", MINIMAL + "script-template=t/s.sh\nvmddb=~/db\n")
    spec = load_spec(path, cwd=tmp_path / "elsewhere")
    assert spec.app_import_dir == tmp_path / "proj" / "app"
    assert spec.script_template == tmp_path / "proj" / "t" / "s.sh"
    assert spec.vmddb == Path.home() / "db"
    assert spec.anchor("base-image") == tmp_path / "proj"


def test_paths_on_command_line_are_relative_to_cwd(tmp_path: Path) -> None:
    path = write(tmp_path, "proj/s.gvap", MINIMAL)
    spec = load_spec(path, cli("--app-import-dir", "mine", "--base-image", "b.qcow2"), cwd=tmp_path)
    assert spec.app_import_dir == tmp_path / "mine"
    assert spec.base_image == "b.qcow2"  # kept as given; pack resolves against the anchor
    assert spec.anchor("base-image") == tmp_path
    assert spec.anchor("app-launch") == tmp_path / "proj"


def test_relative_spec_path_is_relative_to_cwd(tmp_path: Path) -> None:
    write(tmp_path, "proj/s.gvap", MINIMAL)
    spec = load_spec(Path("proj/s.gvap"), cwd=tmp_path)
    assert spec.spec_path == tmp_path / "proj" / "s.gvap"
    assert spec.app_import_dir == tmp_path / "proj" / "app"
    assert spec.origin("app-launch") == "proj/s.gvap:2"


def test_current_directory_in_file_anchors_every_relative_path(tmp_path: Path) -> None:
    path = write(tmp_path, "proj/s.gvap", MINIMAL + "current-directory=../work\nvmddb=/abs/db\n")
    spec = load_spec(path, cli("--input-import-dir", "data"), cwd=tmp_path / "cwd")
    work = tmp_path / "proj" / "../work"
    assert spec.current_directory == work
    assert spec.app_import_dir == work / "app"
    assert spec.input_import_dir == work / "data"  # given on the command line, still work/
    assert spec.vmddb == Path("/abs/db")
    assert spec.anchor("base-image") == work


def test_current_directory_on_command_line_is_relative_to_cwd(tmp_path: Path) -> None:
    path = write(tmp_path, "proj/s.gvap", MINIMAL)
    spec = load_spec(path, cli("--current-directory", "w"), cwd=tmp_path)
    assert spec.current_directory == tmp_path / "w"
    assert spec.app_import_dir == tmp_path / "w" / "app"


# --- schema -------------------------------------------------------------------------------

PROVENANCE = {"spec_path", "origins", "anchors"}


def test_every_spec_field_is_an_option_with_the_same_default() -> None:
    by_name = {o.name.replace("-", "_"): o for o in OPTIONS}
    for f in dataclasses.fields(Spec):
        if f.name in PROVENANCE:
            continue
        assert f.name in by_name, f.name
        default = None if f.default is dataclasses.MISSING else f.default
        assert by_name[f.name].default == default, f.name
    assert set(by_name) - {f.name for f in dataclasses.fields(Spec)} == {"config"}


def test_docs_list_every_option_and_alias() -> None:
    docs = DOCS.read_text()
    for option in OPTIONS:
        for name in (option.name, *option.aliases):
            assert f"`{name}`" in docs, name

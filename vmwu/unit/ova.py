"""Temporary compatibility names for modules being rewritten on another branch (issue 12).

The ``.ova`` format now lives in one module per concern: :mod:`vmwu.unit.descriptor`
(vocabulary and consistency), :mod:`vmwu.unit.ovf_render` and :mod:`vmwu.unit.ovf_parse`
(the OVF XML), :mod:`vmwu.unit.manifest` (the ``.mf``), :mod:`vmwu.unit.archive` (writing
the tar) and :mod:`vmwu.unit.reader` (reading a hostile one); file digests are in
:mod:`vmwu.digest`. Import from those: this module goes once ``vmwu/run`` does.
"""

from vmwu.digest import file_sha256
from vmwu.unit.archive import write_ova
from vmwu.unit.reader import OvaReader

__all__ = ["OvaReader", "file_sha256", "write_ova"]

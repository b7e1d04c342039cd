"""vmwu: Virtual Machine Work Units.

Pack an application into a work unit (base image + application disk + output disk + OVF
descriptor in one ``.ova``), then launch it many times under QEMU with per-instance
parameters and files, getting the output files and the exit code back.
"""

__version__ = "0.1.0"

"""BOINC-style wrapper: ``vmwu wrap job.xml`` runs a job's host and VM tasks in sequence,
with checkpoints, suspend/resume, a status file and a control socket (docs/wrapper.md).

Modules: ``jobxml`` (the job file), ``tasks_host`` / ``tasks_vm`` / ``vmunit`` (running a
task), ``checkpoint`` + ``fsutil`` (checkpoints on disk), ``state`` (what survives a
restart), ``status`` (the status file), ``control`` (signals and the socket), ``wrapper``
(the task sequence), ``cli`` (``vmwu wrap`` and ``vmwu wrap ctl``).
"""

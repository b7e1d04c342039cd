"""``vmwu wrap`` as a BOINC application: the app side of the client protocol.

Modules: ``shmem`` (the channels of ``boinc_mmap_file``), ``initdata`` (``init_data.xml``),
``links`` (logical names: the slot's soft-link files), ``api`` (:class:`BoincSession`:
heartbeat, process control, app status, finish, temporary exit), ``control`` (the
session as a control source for the wrapper's loop), ``package`` (what a project ships).
docs/boinc.md is the user's guide.
"""

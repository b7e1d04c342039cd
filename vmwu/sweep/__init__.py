"""Parameter sweeps: plans (Nimrod or TOML), job expansion, a resumable journal, executors
(local, Slurm, Dask) and the node-side runner that executes one job's task.

Data flow: plan.py / plan_toml.py parse a plan into a :class:`~vmwu.sweep.model.Plan`;
expand.py turns it into jobs (cross product, ids from parameter values); driver.py records
them in the journal (journal.py) and hands them to an executor (executors/), which starts
``vmwu sweep exec-job`` (runner.py) for each; results land in ``RESULTS/jobs/JOBID/`` by
an atomic rename; export.py and report.py read plans and journals.
"""

"""Controller services: what routes call and what runs in the background.

``tasks`` (the task service behind ``/api/v1/tasks`` and ``/api/v1/runs``), ``dispatch`` (the
dispatcher: locks, launch, follow, record, reconcile), ``locks`` (FIFO all-or-nothing named locks and
GPU slots, in the DB), ``refs`` (git ref -> commit, artifact name/alias -> digest), ``outputs`` (the
job workspace in and out), ``task_records`` (one transaction per task state change).
"""

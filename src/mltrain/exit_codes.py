"""Process exit codes shared by the trainer and the launchers' recovery logic.

torchrun collapses worker exit codes into 1, so the trainer also writes the reason
as one word into `<run>/control/exit_reason`; the Slurm batch script reads that file.
"""

DONE = 0
CONFIG_ERROR = 2  # never requeued
REQUEUE = 75  # preempted / time limit: checkpoint written, please requeue (EX_TEMPFAIL)
HANG = 76  # watchdog fired: stacks dumped, the job should fail fast and be restarted
INTERRUPTED = 130  # a second Ctrl-C: aborted at once, no checkpoint (128 + SIGINT, as shells report it)

# Words written to <run>/control/exit_reason by rank 0.
REASON_DONE = "done"
REASON_PREEMPTED = "preempted"
REASON_HANG = "hang"
REASON_CONFIG_ERROR = "config_error"
REASON_FAILED = "failed"
# a second Ctrl-C: aborted by the user, not a crash (launchers treat it like a failure)
REASON_INTERRUPTED = "interrupted"
# stopped at a step boundary before the run's deadline (train/deadline.py), checkpointed: resumable, but the
# Slurm batch script does not requeue it unless the deadline was only the job's time limit
REASON_DEADLINE = "deadline"

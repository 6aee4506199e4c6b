"""Where experiments run: local processes, Slurm jobs, SkyPilot clusters."""

from backends.base import Backend, Finished, JobHandle, JobState, RunSpec, Worker

__all__ = ["Backend", "Finished", "JobHandle", "JobState", "RunSpec", "Worker"]

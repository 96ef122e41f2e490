"""Run a training job in a subprocess at lower priority, restarting it from its checkpoint after a crash.

``python -m feedback.train_job JOB.json`` is the subprocess: it lowers its own priority
(``os.nice``), bounds torch's threads, runs :func:`feedback.training.train` and prints the result
as JSON. Exit codes: 0 done, 2 the job cannot run (bad dataset, unloadable model or adapter; the
message is on stderr), 3 the process that started it is gone, anything else (or a signal) a crash.
A trainer never trains on alone: when the worker that started it dies (killed, out of memory), it
stops within a second, so the restarted worker's refresh resumes from the checkpoint without a
second trainer writing beside it.

:func:`run_training` starts it and waits. A crash (killed, out of memory, an unexpected error) is
retried up to ``settings.restarts`` times; each retry resumes from the latest checkpoint, so at
most ``checkpoint_every`` steps or ``checkpoint_every_s`` seconds of work are lost. A job that
cannot run fails at once with :class:`TrainingError`. Training never registers anything and only
reads the parent adapter: a failed run leaves the champion as it was, and no ``adapter/`` or
``result.json`` in the output directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import torch

from feedback.distributed import processes_for
from feedback.errors import FlywheelError
from feedback.model.runtime import resolve_device
from feedback.training import RESULT_FILE, TrainingError, TrainingJob, TrainingResult, train

JOB_FILE = "job.json"
EXIT_CANNOT_RUN = 2
EXIT_ORPHANED = 3
PARENT_ENV = "FLYWHEEL_TRAINING_PARENT"  # the pid of the process that started the trainer
_TAIL_BYTES = 4096


def run_training(
    job: TrainingJob,
    *,
    on_spawn: Callable[[int], None] | None = None,
    echo: IO[str] | None = sys.stderr,
) -> TrainingResult:
    """Train ``job`` in a subprocess (resuming any checkpoint it left) and return the result.

    ``on_spawn`` is called with each subprocess's pid (to record or cancel it); ``echo`` receives
    the subprocess's stderr (the progress bar) as it comes, or nothing when None.

    Raises:
        TrainingError: the job cannot run, or it crashed more than ``settings.restarts`` times.
    """
    job.output_dir.mkdir(parents=True, exist_ok=True)
    job_file = job.output_dir / JOB_FILE
    job_file.write_text(job.to_json(), encoding="utf-8")
    (job.output_dir / RESULT_FILE).unlink(missing_ok=True)
    failure = ""
    processes = processes_for(job.settings.processes, resolve_device(job.settings.device))
    for _attempt in range(job.settings.restarts + 1):
        code, tail = _run_once(job_file, job.settings.threads, processes, on_spawn, echo)
        if code == 0:
            return TrainingResult.from_json((job.output_dir / RESULT_FILE).read_text(encoding="utf-8"))
        if code == EXIT_CANNOT_RUN:
            raise TrainingError(tail.strip().splitlines()[-1] if tail.strip() else "training failed")
        failure = f"exit code {code}" + (f": {tail.strip()[-500:]}" if tail.strip() else "")
    raise TrainingError(f"training crashed {job.settings.restarts + 1} times; the last crash: {failure}")


def command(job_file: Path, processes: int = 1) -> list[str]:
    """The command line of the training subprocess for the job in ``job_file``: torchrun for several processes."""
    trainer = ["-m", "feedback.train_job", str(job_file)]
    if processes == 1:
        return [sys.executable, *trainer]
    # one machine, a rendezvous of its own on a free port, one process per rank
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", *trainer]


def environment(threads: int) -> dict[str, str]:
    """The subprocess's environment: this one with thread pools bounded before torch starts them, and our pid."""
    bounded = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return {**os.environ, **bounded, "HF_HUB_OFFLINE": "1", PARENT_ENV: str(os.getpid())}


def exit_with_parent(parent: int, interval_s: float = 0.5, *, launched: bool = False) -> None:
    """End this process (``EXIT_ORPHANED``) as soon as ``parent`` is no longer its parent, from a daemon thread.

    ``launched``: a rank that torchrun started, whose own parent is torchrun: it ends when ``parent`` has.
    """

    def watch() -> None:
        while _alive(parent) if launched else os.getppid() == parent:
            time.sleep(interval_s)
        print("training stopped: the process that started it is gone", file=sys.stderr)
        os._exit(EXIT_ORPHANED)  # no cleanup to run: checkpoints are written whole or not at all

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _run_once(
    job_file: Path, threads: int, processes: int, on_spawn: Callable[[int], None] | None, echo: IO[str] | None
) -> tuple[int, str]:
    with subprocess.Popen(
        command(job_file, processes),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=environment(threads),
        text=True,
    ) as process:
        try:
            if on_spawn is not None:
                on_spawn(process.pid)
            tail: list[str] = []
            assert process.stderr is not None
            reader = threading.Thread(target=_relay, args=(process.stderr, echo, tail), daemon=True)
            reader.start()
            code = process.wait()
            reader.join()
            return code, "".join(tail)[-_TAIL_BYTES:]
        finally:
            if process.poll() is None:  # the caller was interrupted: the child must not train on alone
                process.kill()


def _relay(stream: IO[str], echo: IO[str] | None, tail: list[str]) -> None:
    for chunk in iter(lambda: stream.read(256), ""):
        tail.append(chunk)
        if len(tail) > 64:
            del tail[: len(tail) - 64]
        if echo is not None:
            echo.write(chunk)
            echo.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """The subprocess: lower priority, bound threads, train, print the result as JSON."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m feedback.train_job JOB.json", file=sys.stderr)
        return EXIT_CANNOT_RUN
    if PARENT_ENV in os.environ:
        exit_with_parent(int(os.environ[PARENT_ENV]), launched="LOCAL_RANK" in os.environ)
    try:
        job = TrainingJob.from_json(Path(args[0]).read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"training failed: job file {args[0]!r} is unreadable: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    os.nice(job.settings.niceness)
    torch.set_num_threads(job.settings.threads)
    try:
        result = train(job)
    except FlywheelError as exc:
        print(f"training failed: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    print(result.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())

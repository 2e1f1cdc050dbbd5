"""What every entry point shares: the ``--data`` flag, and turning the
project's errors and interrupts into one line and an exit status.

Exit statuses: 0 done, 2 bad input or a failed run (one ``error:`` line),
130 / 143 interrupted by SIGINT / SIGTERM (one ``interrupted`` line with the
command that resumes). Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable, Sequence


def add_data_arg(
  p,
  *,
  default: str | None = "odir5k-synth",
  example: str = "odir5k:/data/odir5k",
) -> None:
  from agt_jax.data.registry import DATA_FLAG_HELP

  p.add_argument(
    "--data",
    default=default,
    required=default is None,
    metavar="NAME[:PATH]",
    help=f"{DATA_FLAG_HELP} (e.g. {example})",
  )


def add_distributed_args(p) -> None:
  """Flags that join a multi-process run (docs/distributed.md)."""
  g = p.add_argument_group(
    "many processes",
    "JAX's distributed runtime; automatic under srun "
    "(Slurm), mpirun (Open MPI) or with JAX_COORDINATOR_ADDRESS set",
  )
  g.add_argument(
    "--distributed",
    action="store_true",
    help="join a multi-process run even when no launcher is "
    "detected (JAX's own cluster detection)",
  )
  g.add_argument(
    "--coordinator",
    default=None,
    metavar="HOST:PORT",
    help="process 0's address, the same for every process",
  )
  g.add_argument("--num-processes", type=int, default=None, metavar="N")
  g.add_argument("--process-id", type=int, default=None, metavar="I")


def start_distributed(a) -> None:
  """Joins the run the flags or the environment describe; call before
  anything touches a device."""
  from agt_jax import distributed

  distributed.initialize(
    distributed.detect(
      coordinator=a.coordinator,
      num_processes=a.num_processes,
      process_id=a.process_id,
      force=a.distributed,
    )
  )


def resume_command(
  prog: str, argv: Sequence[str], *, resume_flag: str | None
) -> str:
  """The command that continues an interrupted run: the same arguments,
  plus ``resume_flag`` where the command needs one."""
  args = list(argv)
  if resume_flag and resume_flag not in args:
    args.append(resume_flag)
  return " ".join(["python -m", prog, *map(shlex.quote, args)])


def guarded(
  fn: Callable[[], int],
  *,
  prog: str,
  argv: Sequence[str] | None,
  resume_flag: str | None = None,
) -> int:
  """Runs ``fn`` and maps the project's errors to exit statuses."""
  from agt_jax.errors import AgtError, Interrupted
  from agt_jax.runtime import enable_compilation_cache
  from agt_jax.train import interrupts

  argv = sys.argv[1:] if argv is None else list(argv)
  enable_compilation_cache()
  try:
    with interrupts.handle_signals():
      return fn()
  except Interrupted as e:
    print(
      f"interrupted ({e.signal_name}) {e.where}; resume with: "
      f"{resume_command(prog, argv, resume_flag=resume_flag)}",
      file=sys.stderr,
      flush=True,
    )
    return e.exit_code
  except KeyboardInterrupt:  # before the handlers were installed
    print(
      f"interrupted (SIGINT) before training started; rerun with: "
      f"{resume_command(prog, argv, resume_flag=None)}",
      file=sys.stderr,
      flush=True,
    )
    return 130
  except AgtError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 2

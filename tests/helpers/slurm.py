"""Stand-ins for SLURM's ``scontrol`` and ``srun``: dry runs of ``launch/slurm.sbatch`` here.

:func:`install` writes ``scontrol`` and ``srun`` executables into a directory that a test puts
first on ``PATH``; both run this file:

- ``scontrol show hostnames [HOSTLIST]`` expands a hostlist (default ``SLURM_JOB_NODELIST``)
  into one host per line, like the real command.
- ``srun [--option=value ...] COMMAND ...`` prints its own command line, then runs COMMAND once
  per host of the allocation, in turn, with the variables srun gives each task of a
  one-task-per-node step (``SLURM_NODEID``, ``SLURMD_NODENAME``, ``SLURM_PROCID``,
  ``SLURM_LOCALID``, ...). Options must be written ``--name=value``: the first argument not
  starting with ``-`` begins the command.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

COMMANDS = ("scontrol", "srun")


def expand_hostlist(hostlist: str) -> list[str]:
    """``gpu-[07-08,10],login1`` -> ``gpu-07 gpu-08 gpu-10 login1`` (zero padding kept).

    Covers SLURM's ``prefix[ranges]`` form with one bracket at the end of a name, which is what
    allocations on a single naming scheme look like.
    """
    hosts: list[str] = []
    for prefix, ranges in re.findall(r"([^,\[\]]+)(?:\[([^\]]+)\])?", hostlist):
        if not ranges:
            hosts.append(prefix)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            hosts += [f"{prefix}{n:0{len(lo)}d}" for n in range(int(lo), int(hi or lo) + 1)]
    return hosts


def scontrol(args: list[str]) -> int:
    """``scontrol show hostnames [HOSTLIST]``; anything else is refused."""
    if args[:2] != ["show", "hostnames"] or len(args) > 3:
        print(f"scontrol stand-in: unsupported arguments {args}", file=sys.stderr)
        return 2
    hostlist = args[2] if len(args) == 3 else os.environ["SLURM_JOB_NODELIST"]
    print("\n".join(expand_hostlist(hostlist)))
    return 0


def srun(args: list[str]) -> int:
    """Print ``srun ARGS``, then run the command once per node; the worst exit status."""
    print(shlex.join(["srun", *args]), flush=True)  # before the tasks write to the same stdout
    command = list(args)
    while command and command[0].startswith("-"):
        command.pop(0)
    hosts = expand_hostlist(os.environ["SLURM_JOB_NODELIST"])
    status = 0
    for node, host in enumerate(hosts):
        task = {
            "SLURM_NODEID": str(node),
            "SLURMD_NODENAME": host,
            "SLURM_PROCID": str(node),  # one task per node: task id = node index
            "SLURM_LOCALID": "0",
            "SLURM_STEP_NUM_NODES": str(len(hosts)),
            "SLURM_STEP_NUM_TASKS": str(len(hosts)),
            "SLURM_STEPID": "0",
        }
        status = max(status, subprocess.run(command, env={**os.environ, **task}).returncode)
    return status


def install(bin_dir: Path) -> Path:
    """Write ``scontrol`` and ``srun`` into ``bin_dir`` (created); returns ``bin_dir``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in COMMANDS:
        exe = bin_dir / name
        exe.write_text(
            f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(__file__)} {name} "$@"\n'
        )
        exe.chmod(0o755)
    return bin_dir


def main(argv: list[str]) -> int:
    """``python slurm.py COMMAND ARGS...``: run one stand-in."""
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: slurm.py {{{','.join(COMMANDS)}}} ARGS...", file=sys.stderr)
        return 2
    return {"scontrol": scontrol, "srun": srun}[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

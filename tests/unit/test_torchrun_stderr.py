"""launch/torchrun.sh's stderr filter: the agent's traceback after a stop signal becomes one line;
every other line, and any other traceback, passes as it is."""

from __future__ import annotations

import subprocess
import sys

AGENT_TRACEBACK = """\
Traceback (most recent call last):
  File "/venv/bin/torchrun", line 8, in <module>
    sys.exit(main())
             ^^^^^^
  File "/venv/lib/python3.11/site-packages/torch/distributed/run.py", line 1028, in main
    run(args)
  File "/venv/lib/python3.11/site-packages/torch/distributed/elastic/agent/server/api.py", \
line 923, in _invoke_run
    time.sleep(monitor_interval)
  File "/venv/lib/python3.11/site-packages/torch/distributed/elastic/multiprocessing/api.py", \
line 86, in _terminate_process_handler
    raise SignalException(f"Process {os.getpid()} got signal: {sigval}", sigval=sigval)
torch.distributed.elastic.multiprocessing.api.SignalException: Process 3648 got signal: 15
"""
RANK = (
    "[rank0] 20:56:33 WARNING dist_face.train: stopped by SIGTERM at step 17 with its checkpoint\n"
)
OTHER = """\
Traceback (most recent call last):
  File "x.py", line 1, in <module>
    boom()
ValueError: a real failure
"""


def _filter(text: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "dist_face.cli.torchrun_stderr"],
        input=text,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


def test_the_agents_traceback_after_a_signal_is_one_line_and_the_rest_passes() -> None:
    out = _filter(RANK + AGENT_TRACEBACK)
    assert out == RANK + (
        "torchrun: stopped by SIGTERM (agent 3648); the ranks' lines above say where each "
        "stopped and whether its checkpoint was written; RESUME=auto continues the run\n"
    )


def test_any_other_traceback_passes_whole() -> None:
    assert _filter(OTHER + RANK) == OTHER + RANK
    assert _filter(RANK + OTHER[:-27]) == RANK + OTHER[:-27]  # cut short: still printed

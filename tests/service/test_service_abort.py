"""systemd's watchdog ends a hung agent with SIGABRT: `edge-defender run` then leaves
its Python stack on stderr (the journal), not a bare "status=6/ABRT"."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import agent

REPO = Path(agent.__file__).resolve().parents[1]


def test_sigabrt_to_run_prints_the_python_stack(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\n[sampling]\ninterval_s = 0.2\n'
        f'[detect]\nprofiles = ["{tmp_path}/none/*.json"]\n'
    )
    config.chmod(0o600)
    run = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (0, 0)),  # no core file
    )
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "state" / "status.json").exists():  # past its first sample
            assert run.poll() is None and time.monotonic() < deadline, run.stderr
            time.sleep(0.05)
        run.send_signal(signal.SIGABRT)
        _, err = run.communicate(timeout=20)
    finally:
        run.kill()
        run.wait()
    assert run.returncode == -signal.SIGABRT
    lines = err.splitlines()
    abort = lines.index("Fatal Python error: Aborted")
    stack = [line.strip() for line in lines[abort:]]
    assert any(line.startswith('File "') and "daemon.py" in line for line in stack), err
    assert any("in main" in line and "cli.py" in line for line in stack), err

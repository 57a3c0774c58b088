"""scripts/train.sh from a fresh checkout: it finds wubugen on PATH or in the checkout's .venv, makes the .venv once
when there is neither, and quotes every path (a checkout and a run directory with spaces)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def checkout(tmp_path) -> Path:
    """A checkout in a directory with a space in its name (the launcher only needs its scripts/ and its .venv)."""
    repo = tmp_path / "my checkout"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "train.sh", repo / "scripts" / "train.sh")
    return repo


def bare_path() -> str:
    """PATH without any wubugen (the test's own venv is not on it)."""
    return os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if p and not (Path(p) / "wubugen").exists()) or "/usr/bin:/bin"


def test_train_sh_uses_the_checkouts_venv_and_quotes_paths(tmp_path):
    repo = checkout(tmp_path)
    (repo / ".venv").symlink_to(Path(sys.prefix))  # as `make train` left it
    env = {**os.environ, "PATH": bare_path(), "PRESET": "tiny", "EPOCHS": "1", "CHECKPOINT_OUTPUT_DIR": "runs/phase 1",
           "Q_CONTROLLER_ENABLED": "false"}
    proc = subprocess.run(["bash", str(repo / "scripts" / "train.sh"), "--max_steps", "2", "--progress", "false",
                           "--cache_dir", str(tmp_path / "cache dir")], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (repo / "runs" / "phase 1" / "summary.json").is_file()
    assert "setting up" not in proc.stderr


def test_train_sh_sets_up_the_venv_once_in_a_fresh_clone(tmp_path):
    """No wubugen anywhere: the launcher makes <checkout>/.venv with $PYTHON and installs the checkout into it (here a
    stand-in python records the calls and makes a stand-in wubugen, so no packages are fetched)."""
    repo = checkout(tmp_path)
    log = tmp_path / "calls.log"
    fake = tmp_path / "fake python"
    fake.write_text(f"""#!/usr/bin/env bash
echo "python $*" >> "{log}"
if [ "$1 $2" = "-m venv" ]; then
  mkdir -p "$3/bin"
  printf '#!/usr/bin/env bash\\necho "venv-python $*" >> "{log}"\\n' > "$3/bin/python"
  printf '#!/usr/bin/env bash\\nfor a in "$@"; do echo "arg [$a]" >> "{log}"; done\\n' > "$3/bin/wubugen"
  chmod +x "$3/bin/python" "$3/bin/wubugen"
fi
""")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": bare_path(), "PYTHON": str(fake), "CHECKPOINT_OUTPUT_DIR": "runs/a b",
           "VIDEO_DATA_PATH": "/data/my footage"}
    run = lambda: subprocess.run(["bash", str(repo / "scripts" / "train.sh")], cwd=tmp_path, env=env,  # noqa: E731
                                 capture_output=True, text=True, timeout=60)
    first = run()
    assert first.returncode == 0, first.stderr
    assert "setting up" in first.stderr
    calls = log.read_text().splitlines()
    assert f"python -m venv {repo}/.venv" in calls
    assert f"venv-python -m pip install --quiet -e {repo}" in calls
    assert "arg [runs/a b]" in calls and "arg [/data/my footage]" in calls  # one argument each, spaces kept
    log.write_text("")
    second = run()
    assert second.returncode == 0 and "setting up" not in second.stderr
    assert not any(c.startswith("python -m venv") for c in log.read_text().splitlines())

"""`pam-unshare demo`, the README's main job: isolation shown, host files untouched."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from conftest import HOST_ROOT, require_root, require_tools

HOST_ETC = HOST_ROOT / "etc"


def _fingerprint() -> dict:
    files = sorted(p for p in (HOST_ETC / "pam.d").rglob("*") if p.is_file())
    files += [HOST_ETC / name for name in ("passwd", "group", "shadow", "gshadow")]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.exists()}


def test_demo_shows_isolation_and_leaves_the_host_untouched():
    require_root()
    require_tools("su", "ps")
    script = Path(sys.executable).parent / "pam-unshare"
    assert script.exists(), f"the console script is not installed next to {sys.executable}"
    before = _fingerprint()
    result = subprocess.run([str(script), "demo"], capture_output=True, text=True, timeout=120)
    after = _fingerprint()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "isolation holds" in result.stdout
    rows = [line.split(" | ", 1) for line in result.stdout.splitlines() if " | " in line]
    host_column = "\n".join(row[0] for row in rows)
    session_column = "\n".join(row[1] for row in rows)
    assert "--password=hunter2" in host_column
    assert "--password=hunter2" not in session_column
    assert "pam_unshare-init" in session_column
    assert before == after
    assert not any("pam_unshare" in (HOST_ETC / "pam.d" / name).read_text(errors="replace")
                   for name in ("su", "sudo", "sshd"))
    assert "pu-demo" not in (HOST_ETC / "passwd").read_text()

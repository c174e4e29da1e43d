"""Run deploy/aks/prepare-cluster.sh --dry-run and read the commands it would run."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

__all__ = ["SCRIPT", "dry_run", "role_actions"]

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "aks" / "prepare-cluster.sh"
BASE = ["--subscription", "00000000-0000-0000-0000-000000000001", "--resource-group", "rg-ai", "--cluster", "aks-ai"]


def dry_run(*args: str) -> tuple[list[list[str]], str]:
    """(every command printed, as argv lists; the whole output). No az, helm or kubectl on PATH: none may run."""
    result = subprocess.run(
        ["bash", str(SCRIPT), *BASE, *args, "--dry-run"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")},
        timeout=60,
    )
    output = result.stdout + result.stderr
    commands = [shlex.split(line[2:]) for line in output.splitlines() if line.startswith("+ ")]
    return commands, output


def role_actions() -> set[str]:
    """The actions of the custom roles the script defines for the operator's identity (agent pools, quota)."""
    commands, _ = dry_run()
    roles = [
        c for c in commands if c[:4] in (["az", "role", "definition", "create"], ["az", "role", "definition", "update"])
    ]
    return {action for role in roles for action in json.loads(role[role.index("--role-definition") + 1])["Actions"]}

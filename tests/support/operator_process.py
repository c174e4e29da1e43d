"""Run `tokenplane operator` as its own process, configured as the chart configures the pod.

Kubernetes comes from a kubeconfig pointing at kmock; Azure from AKS workload identity: a federated
service-account token file that ``DefaultAzureCredential`` trades for an access token at
``AZURE_AUTHORITY_HOST``, here the ARM emulator acting as Entra ID. Nothing is injected in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import yaml

from tests.operator.conftest import CLUSTER, RESOURCE_GROUP, SUBSCRIPTION, WORKLOAD_IDENTITY
from tests.support.arm_emulator import ArmEmulator
from tests.support.kopf_harness import OperatorHarness, free_port

__all__ = ["OperatorProcess", "free_port"]


class OperatorProcess(OperatorHarness):
    """The operator CLI in a child process; the driving helpers (create, wait_ready, ...) are the harness's.

    Args:
        k: The kmock emulator the kubeconfig points at.
        arm: An ARM emulator started with ``workload_identity=WORKLOAD_IDENTITY``.
        workdir: Where the kubeconfig, token file and operator log go.
        env: Extra ``TOKENPLANE_*`` settings (poll interval, backoffs).
        args: The command line after ``operator`` (the chart's ``--all-namespaces`` or ``--namespace=NS``...).
    """

    def __init__(
        self,
        k: kmock.KubernetesEmulator,
        arm: ArmEmulator,
        workdir: Path,
        env: dict[str, str],
        args: tuple[str, ...] = ("--all-namespaces",),
    ) -> None:
        super().__init__(k, arm)
        self.workdir = workdir
        self.extra_env = env
        self.args = args
        self.health_port = free_port()
        self.metrics_port = free_port()
        self.log_path = workdir / "operator.log"
        self.process: asyncio.subprocess.Process | None = None

    def _environment(self) -> dict[str, str]:
        kubeconfig = self.workdir / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
                    "users": [{"name": "operator", "user": {"token": "service-account-token"}}],
                    "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "operator"}}],
                    "current-context": "kmock",
                }
            )
        )
        tenant, client_id, federated_token = WORKLOAD_IDENTITY
        token_file = self.workdir / "azure-identity-token"
        token_file.write_text(federated_token)
        inherited = {key: value for key, value in os.environ.items() if not key.startswith(("TOKENPLANE_", "AZURE_"))}
        return inherited | {
            "KUBECONFIG": str(kubeconfig),
            "AZURE_TENANT_ID": tenant,
            "AZURE_CLIENT_ID": client_id,
            "AZURE_FEDERATED_TOKEN_FILE": str(token_file),
            "AZURE_AUTHORITY_HOST": self.arm.base_url,
            "SSL_CERT_FILE": str(self.arm.ca_pem),  # trust the emulator's CA for the Entra ID call too
            "TOKENPLANE_SUBSCRIPTION_ID": SUBSCRIPTION,
            "TOKENPLANE_RESOURCE_GROUP": RESOURCE_GROUP,
            "TOKENPLANE_CLUSTER_NAME": CLUSTER,
            "TOKENPLANE_ARM_ENDPOINT": self.arm.base_url,
            "TOKENPLANE_ARM_CA_BUNDLE": str(self.arm.ca_pem),
            "TOKENPLANE_HEALTH_PORT": str(self.health_port),
            "TOKENPLANE_OPERATOR_METRICS_PORT": str(self.metrics_port),
            # Pods of the KubeRay peer sit on loopback: scrapes go to a port nothing listens on unless a test says.
            "TOKENPLANE_METRICS_PORT": str(free_port()),
            **self.extra_env,
        }

    async def start(self) -> None:
        """Start the process and wait until its /healthz answers.

        `free_port` only finds a port free when asked: another process on the machine (a Ray test, a parallel
        run) may bind it before the operator does. A start that fails on that alone is retried on new ports.
        """
        for attempt in range(3):
            logged = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                await self._start_once()
                return
            except RuntimeError:
                tail = self.log_path.read_bytes()[logged:].decode(errors="replace")
                if attempt == 2 or "address already in use" not in tail:
                    raise
            self.health_port, self.metrics_port = free_port(), free_port()

    async def _start_once(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tokenplane_operator",
                "operator",
                *self.args,
                env=self._environment(),
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        # A short timeout: whatever else holds the port may take the connection and never answer.
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while time.monotonic() < deadline:
                if self.process.returncode is not None:
                    raise RuntimeError(f"the operator exited with {self.process.returncode}:\n{self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"http://127.0.0.1:{self.health_port}/healthz") as response:
                        if response.status == 200 and self._watching():
                            return
                await asyncio.sleep(0.2)
        raise RuntimeError(f"the operator's /healthz did not answer within 60 s:\n{self.log_tail()}")

    def _watching(self) -> bool:
        """Whether kopf has asked to watch InferenceDeployments: kmock streams to a watch only the objects that
        exist when it starts and the events after it, so a CR created before that would go unseen."""
        accessed = getattr(self.k, "accessed", None)  # ApiServerEmulator's record of the requests
        return accessed is None or any(a.resource == "inferencedeployments" and a.verb == "watch" for a in accessed)

    async def stop(self, *, kill: bool = False) -> int | None:
        """SIGTERM (graceful) or SIGKILL (a crashed pod); returns the exit code."""
        if self.process is None or self.process.returncode is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), 30)
        except TimeoutError:
            self.process.kill()
            return await self.process.wait()

    def peak_rss_mib(self) -> float:
        """The process's peak resident memory (VmHWM) so far, in MiB."""
        return self._memory_mib("VmHWM:")

    def rss_mib(self) -> float:
        """The process's resident memory (VmRSS) now, in MiB."""
        return self._memory_mib("VmRSS:")

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the process has used so far: a cost the machine's load does not inflate."""
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _memory_mib(self, field: str) -> float:
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kib = next(line.split()[1] for line in status.splitlines() if line.startswith(field))
        return int(kib) / 1024

    def log_tail(self, lines: int = 40) -> str:
        """The last lines the operator logged."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def events(self, name: str, *, namespace: str = "default") -> list[dict[str, Any]]:
        """Kubernetes Events kopf posted about an InferenceDeployment."""
        return [
            dict(obj)
            for (res, ns, _), obj in list(self.k.objects.items())
            if getattr(res, "plural", "") == "events" and ns == namespace and not obj.deleted
            if obj.get("involvedObject", {}).get("name") == name
        ]

"""`tokenplane render`: print or write every object the operator would create, without contacting anything."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml
from rich.console import Console
from rich.markup import escape

from tokenplane_cli.files import ManifestError, load_documents
from tokenplane_cli.validate import check_document, operator_render_config
from tokenplane_operator.desired.agentpool import to_arm_body
from tokenplane_operator.desired.bundle import DesiredState

__all__ = ["render_command", "render_files", "render_text"]


class _Dumper(yaml.SafeDumper):
    """Readable manifests: no anchors for repeated values, multi-line strings (serveConfigV2) as `|` blocks."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render_files(state: DesiredState) -> dict[str, str]:
    """Serialize a desired state as files: the ARM agent-pool body as JSON, each Kubernetes object as YAML.

    Args:
        state: The desired state of one deployment.

    Returns:
        File name (`<kind>-<name>.yaml`, `agentpool-<pool>.json`) to content, in apply order.
    """
    files: dict[str, str] = {}
    if state.agent_pool is not None:
        body = to_arm_body(state.agent_pool)
        files[f"agentpool-{state.agent_pool.name}.json"] = json.dumps(body, indent=2, sort_keys=True) + "\n"
    for obj in state.kubernetes_objects():
        name = f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
        files[name] = yaml.dump(obj, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)
    return files


def render_text(state: DesiredState) -> str:
    """Join a desired state into one YAML stream; the agent pool is a JSON document, which is also YAML."""
    documents = []
    for name, content in render_files(state).items():
        documents.append(f"# {name}\n{content}")
    return "---\n".join(documents)


def _placement(state: DesiredState) -> str:
    plan = state.plan
    mig = f" {plan.mig_profile}" if plan.mig_profile else ""
    return (
        f"{plan.vm_size}{mig}, {plan.gpus_per_replica:g} GPU(s) per replica, TP {plan.tensor_parallel_size} "
        f"x PP {plan.pipeline_parallel_size} (capacity planner)"
    )


def render_command(file: Path, out_dir: Path | None, *, err: Console | None = None) -> int:
    """Render every InferenceDeployment in a file.

    Args:
        file: YAML with one or more InferenceDeployments.
        out_dir: Write one file per object here (created if missing); None prints one YAML stream to stdout.
        err: Where problems go; stderr by default.

    Returns:
        0 on success, 1 when a document is invalid or cannot be planned (nothing is written for it).
    """
    err = err or Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        documents = load_documents(file)
    except ManifestError as exc:
        err.print(f"[red]✗[/] {escape(str(exc))}")
        return 1
    config = operator_render_config()
    failed = 0
    streams: list[str] = []
    written: dict[str, str] = {}  # file name -> the document that wrote it in this run
    for document in documents:
        checked = check_document(document.body, config)
        if checked.problems or checked.state is None:
            failed += 1
            if checked.unplanned is not None:
                reason, message = checked.unplanned.reason.value, checked.unplanned.message
                err.print(f"[red]✗[/] {escape(document.label)}: {reason}: {escape(message)}")
                continue
            err.print(f"[red]✗[/] {escape(document.label)}")
            for problem in checked.problems:
                err.print(f"    {escape(str(problem))}")
            continue
        state = checked.state
        if checked.deployment is not None and checked.deployment.spec.hardware.vm_size == "auto" and state.vm_size:
            err.print(f"[cyan]i[/] {escape(document.label)}: vmSize auto -> {escape(_placement(state))}")
        if out_dir is None:
            streams.append(render_text(state))
            continue
        files = render_files(state)
        taken = sorted(name for name in files if name in written)
        if taken:  # two documents naming the same objects (e.g. one name in two namespaces) would overwrite
            failed += 1
            err.print(
                f"[red]✗[/] {escape(document.label)}: would overwrite {escape(', '.join(taken))}, written for "
                f"{escape(written[taken[0]])}; render these documents into separate directories"
            )
            continue
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            for name, content in files.items():
                (out_dir / name).write_text(content, encoding="utf-8")
                written[name] = document.label
                err.print(f"[green]✓[/] wrote {escape(str(out_dir / name))}")
        except OSError as exc:
            err.print(f"[red]✗[/] {escape(str(out_dir))}: cannot write: {escape(exc.strerror or str(exc))}")
            return 1
    if streams:
        sys.stdout.write("---\n".join(streams))
    return 1 if failed else 0

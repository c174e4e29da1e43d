"""`tokenplane bench` commands: argument parsing only; the work is imported when a command runs."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from tokenplane_cli.output import Output, OutputFormat

__all__ = ["bench_app"]


class _RunByDefault(TyperGroup):
    """`tokenplane bench URL ...` means `tokenplane bench run URL ...`; subcommand names still win."""

    # ctx is typer's vendored click Context, which typer does not export under a public name.
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


bench_app = typer.Typer(
    cls=_RunByDefault,
    help="Measure an OpenAI-compatible endpoint: TTFT, TPOT, ITL, E2EL, goodput, tokens per GPU-hour, $ per token.",
    no_args_is_help=True,
)

Url = Annotated[str, typer.Argument(help="Endpoint root, e.g. http://127.0.0.1:8000 (with or without /v1).")]
Model = Annotated[str | None, typer.Option("--model", help="Model name to send; default: the first in /v1/models.")]
ApiKey = Annotated[str | None, typer.Option("--api-key", envvar="OPENAI_API_KEY", help="Bearer key, if any.")]
NumPrompts = Annotated[int, typer.Option("--num-prompts", "-n", help="Requests per run.")]
InputTokens = Annotated[int, typer.Option("--input-tokens", help="Prompt content tokens per request (turn).")]
OutputTokens = Annotated[int, typer.Option("--output-tokens", help="Output tokens per request (max_tokens).")]
Turns = Annotated[int, typer.Option("--turns", help="Turns per session: each resends the conversation so far.")]
PrefixTokens = Annotated[
    int, typer.Option("--prefix-tokens", help="Tokens of a prefix shared by sessions (shows prefix caching).")
]
PrefixGroups = Annotated[int, typer.Option("--prefix-groups", help="Distinct shared prefixes (round-robin).")]
TraceFile = Annotated[
    Path | None,
    typer.Option(
        "--trace-file", help="Replay JSONL lines {t, input_tokens, output_tokens, session}, or an Azure LLM trace CSV."
    ),
]
Tokenizer = Annotated[
    str | None,
    typer.Option("--tokenizer", help="The served model's tokenizer (dir or hub id); default: size by server usage."),
]
Seed = Annotated[int, typer.Option("--seed", help="Seed of prompts and arrivals.")]
Goodput = Annotated[str | None, typer.Option("--goodput", help="SLOs for goodput: ttft:MS,tpot:MS,e2el:MS.")]
VmSize = Annotated[str | None, typer.Option("--vm-size", help="Azure VM size behind the endpoint (catalog price).")]
Vms = Annotated[int, typer.Option("--vms", help="How many such VMs serve the endpoint.")]
Prices = Annotated[
    Path | None, typer.Option("--prices", help="A values file whose `prices:` map overrides list prices.")
]
Gpus = Annotated[float | None, typer.Option("--gpus", help="GPUs behind the endpoint (instead of --vm-size).")]
UsdPerHour = Annotated[float | None, typer.Option("--usd-per-hour", help="What the endpoint costs per hour.")]
IgnoreEos = Annotated[
    bool, typer.Option("--ignore-eos/--no-ignore-eos", help="Send vLLM's ignore_eos so answers are full length.")
]
ContentParts = Annotated[
    bool,
    typer.Option(
        "--content-parts/--content-string",
        help="Send prompts as a list of content parts, as vLLM's benchmark client does, or as a string.",
    ),
]
Timeout = Annotated[float, typer.Option("--timeout", help="Seconds per request before it counts as failed.")]


class MaxTokensField(StrEnum):
    """The request field that bounds an answer's length."""

    max_completion_tokens = "max_completion_tokens"  # OpenAI's current name; vLLM's benchmark client sends it
    max_tokens = "max_tokens"  # the older name, all some servers know


MaxTokens = Annotated[
    MaxTokensField,
    typer.Option(
        "--max-tokens-field",
        help="Bound answers with max_completion_tokens (vLLM's client, OpenAI) or max_tokens (servers that know "
        "only the older name).",
    ),
]
Insecure = Annotated[
    bool,
    typer.Option("--insecure", "-k", help="Do not verify an https endpoint's certificate (self-signed), as curl -k."),
]
CaBundle = Annotated[
    Path | None,
    typer.Option(
        "--ca-bundle",
        help="Verify an https endpoint's certificate against these CA certificates (PEM), as curl --cacert.",
    ),
]


@bench_app.command("run")
def run(
    ctx: typer.Context,
    url: Url,
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", "-c", help="Closed loop: requests in flight at most.")
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option(
            "--rate",
            help="Open loop: Poisson arrivals per second, of sessions (each then sends its --turns one after "
            "another); with --trace-file, instead of the trace's t.",
        ),
    ] = None,
    model: Model = None,
    api_key: ApiKey = None,
    num_prompts: Annotated[
        int | None,
        typer.Option(
            "--num-prompts",
            "-n",
            help="Requests per run (default 64); with --trace-file, the trace's first N by t (default: all).",
        ),
    ] = None,
    input_tokens: InputTokens = 128,
    output_tokens: OutputTokens = 64,
    turns: Turns = 1,
    prefix_tokens: PrefixTokens = 0,
    prefix_groups: PrefixGroups = 1,
    trace_file: TraceFile = None,
    tokenizer: Tokenizer = None,
    seed: Seed = 0,
    goodput: Goodput = None,
    vm_size: VmSize = None,
    vms: Vms = 1,
    prices: Prices = None,
    gpus: Gpus = None,
    usd_per_hour: UsdPerHour = None,
    ignore_eos: IgnoreEos = True,
    content_parts: ContentParts = True,
    timeout: Timeout = 600.0,
    insecure: Insecure = False,
    ca_bundle: CaBundle = None,
    max_tokens_field: MaxTokens = MaxTokensField.max_completion_tokens,
    output: Output = OutputFormat.table,
    save_requests: Annotated[
        Path | None, typer.Option("--save-requests", help="Write one JSON line per request here.")
    ] = None,
) -> None:
    """Run one workload against URL and report (closed loop with --concurrency, open loop with --rate)."""
    from tokenplane_cli.bench.commands import run_command

    raise typer.Exit(run_command(locals()))


@bench_app.command("sweep")
def sweep(
    url: Url,
    concurrency: Annotated[
        str | None, typer.Option("--concurrency", "-c", help="Concurrency steps, e.g. 1,2,4,8,16,32.")
    ] = None,
    rate: Annotated[str | None, typer.Option("--rate", help="Poisson rate steps (req/s), e.g. 0.5,1,2,4.")] = None,
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Where the JSON and PNGs go.")] = Path("results/bench"),
    name: Annotated[str, typer.Option("--name", help="Name of the run in files and charts.")] = "sweep",
    min_gain: Annotated[
        float,
        typer.Option(
            "--min-gain",
            help="Throughput gain below which a step counts as flat (0.05 = 5%), judged against earlier steps at "
            "least twice that much lower in load.",
        ),
    ] = 0.05,
    ttft_growth: Annotated[
        float, typer.Option("--ttft-growth", help="Median TTFT growth above which it counts as climbing.")
    ] = 0.5,
    max_failed: Annotated[
        float,
        typer.Option(
            "--max-failed",
            help="Share of a step's requests that may fail (429, 5xx, timeouts...) before the sweep stops there.",
        ),
    ] = 0.05,
    model: Model = None,
    api_key: ApiKey = None,
    num_prompts: NumPrompts = 64,
    input_tokens: InputTokens = 128,
    output_tokens: OutputTokens = 64,
    turns: Turns = 1,
    prefix_tokens: PrefixTokens = 0,
    prefix_groups: PrefixGroups = 1,
    tokenizer: Tokenizer = None,
    seed: Seed = 0,
    goodput: Goodput = None,
    vm_size: VmSize = None,
    vms: Vms = 1,
    prices: Prices = None,
    gpus: Gpus = None,
    usd_per_hour: UsdPerHour = None,
    ignore_eos: IgnoreEos = True,
    content_parts: ContentParts = True,
    timeout: Timeout = 600.0,
    insecure: Insecure = False,
    ca_bundle: CaBundle = None,
    max_tokens_field: MaxTokens = MaxTokensField.max_completion_tokens,
    output: Output = OutputFormat.table,
) -> None:
    """Step the load up (concurrency or rate) until past saturation; write sweep JSON, curve and CDF PNGs."""
    from tokenplane_cli.bench.commands import sweep_command

    raise typer.Exit(sweep_command(locals()))


@bench_app.command("compare")
def compare(
    url_a: Annotated[str, typer.Argument(metavar="TOKENPLANE_URL", help="The endpoint under test (numerator).")],
    url_b: Annotated[str, typer.Argument(metavar="BASELINE_URL", help="Bare vLLM, same model and engine args.")],
    pairs: Annotated[int, typer.Option("--pairs", help="Interleaved A B pairs per concurrency.")] = 5,
    concurrency: Annotated[str, typer.Option("--concurrency", "-c", help="Concurrency levels, e.g. 16,1.")] = "16,1",
    label_a: Annotated[str, typer.Option("--label-a", help="Name of the first endpoint.")] = "tokenplane",
    label_b: Annotated[str, typer.Option("--label-b", help="Name of the second endpoint.")] = "vllm",
    api_key_b: Annotated[str | None, typer.Option("--api-key-b", help="Key of the second endpoint.")] = None,
    warmup: Annotated[int, typer.Option("--warmup", help="Unmeasured requests per endpoint per level.")] = 4,
    out: Annotated[Path, typer.Option("--out", help="Where the JSON goes.")] = Path("results/bench/compare.json"),
    model: Model = None,
    api_key: ApiKey = None,
    num_prompts: NumPrompts = 64,
    input_tokens: InputTokens = 128,
    output_tokens: OutputTokens = 64,
    tokenizer: Tokenizer = None,
    seed: Seed = 0,
    ignore_eos: IgnoreEos = True,
    content_parts: ContentParts = True,
    timeout: Timeout = 600.0,
    insecure: Insecure = False,
    ca_bundle: CaBundle = None,
    max_tokens_field: MaxTokens = MaxTokensField.max_completion_tokens,
    output: Output = OutputFormat.table,
) -> None:
    """One workload against two endpoints, interleaved A B A B; ratios A/B with min/median/max over pairs."""
    from tokenplane_cli.bench.commands import compare_command

    raise typer.Exit(compare_command(locals()))


@bench_app.command("plot")
def plot(
    files: Annotated[list[Path], typer.Argument(help="Report JSON files of `bench -o json` or `bench sweep`.")],
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Where the PNGs go.")] = Path("results/bench"),
    latency: Annotated[
        str, typer.Option("--latency", help="Latency axis of the frontier: a report key such as p95_e2el_ms.")
    ] = "p95_e2el_ms",
) -> None:
    """Overlay runs (e.g. prefix caching on/off, SKUs): cost per million tokens vs P95 latency with the frontier."""
    from tokenplane_cli.bench.commands import plot_command

    raise typer.Exit(plot_command(files, out_dir, latency))

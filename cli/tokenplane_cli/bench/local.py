"""`make bench`, `make bench-crosscheck`, `make bench-coldstart`: tokenplane against bare vLLM on the tiny model.

Starts `tokenplane up <example>` and `python -m vllm.entrypoints.openai.api_server` with the same engine arguments
(bf16, max-model-len 1024, max-num-seqs 16, enforce-eager, 1 GiB KV cache) on free ports, one after the other so
each cold start is timed alone, runs the benchmark, and stops both. Run it under the machine's live lock.

    python -m tokenplane_cli.bench.local bench --out results/bench
    python -m tokenplane_cli.bench.local crosscheck --out results/bench
    python -m tokenplane_cli.bench.local coldstart --pairs 3 --out results/bench
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tokenplane_cli.bench.client import Endpoint
from tokenplane_cli.bench.compare import compare_runs, sweep_runs
from tokenplane_cli.bench.plots import plot_cdfs, plot_curves
from tokenplane_cli.bench.runner import WorkloadSpec, run_sync
from tokenplane_cli.bench.stats import RequestRecord

__all__ = ["main"]

MODEL_ID = "tiny"


@dataclass
class Server:
    """A server process this harness started."""

    name: str
    process: subprocess.Popen[bytes]
    base_url: str
    startup_s: float
    log: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(base_url: str) -> bool:
    body = json.dumps({"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}).encode()
    request = urllib.request.Request(
        f"{base_url}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


# The load generator shares the machine with the server it measures. vLLM's engine processes spin on their queues
# (`sched_yield` for a second after every read) and, on 2 cores, a client at the same priority was seen starved for
# 100-600 ms at a time: every token that arrived meanwhile was read at once, so the client recorded clumps and late
# first tokens the server never made (a packet capture on lo showed the server's tokens leaving 5-7 ms apart). Both
# servers therefore run this much below the client, alike.
SERVER_NICENESS = 10


def _below_the_client(pid: int) -> None:
    """Lower the server session `pid` leads to `SERVER_NICENESS` below this process: its autogroup and its leader.

    Linux schedules a session's processes as one group (`sched_autogroup_enabled`), weighted by the group's nice, not
    the processes' own; without autogroups the processes' nice counts, and their children inherit the leader's.
    Raising a nice value needs no privilege; where the kernel has no autogroups the file is absent.
    """
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/autogroup").write_text(f"{SERVER_NICENESS}\n", encoding="utf-8")
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, pid, os.getpriority(os.PRIO_PROCESS, 0) + SERVER_NICENESS)


def _start(name: str, command: list[str], port: int, log: Path, env: dict[str, str], timeout_s: float) -> Server:
    """Start a server and wait until it answers a chat completion (not just /v1/models, which a proxy answers early).

    The server runs in a session of its own, below the client's priority (`_below_the_client`).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    _below_the_client(process.pid)
    base_url = f"http://127.0.0.1:{port}"
    while time.monotonic() - started < timeout_s:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode} before it was ready; see {log}")
        if _answers(base_url):
            server = Server(name, process, base_url, time.monotonic() - started, log)
            print(f"[bench] {name} ready in {server.startup_s:.1f}s at {base_url}", flush=True)
            return server
        time.sleep(1.0)
    _stop(Server(name, process, base_url, 0, log))
    raise RuntimeError(f"{name} was not ready after {timeout_s:.0f}s; see {log}")


def _stop(server: Server) -> None:
    """SIGTERM the server (both shut their engines down on it), then SIGKILL whatever is left in its process group."""
    _signal_session(server, signal.SIGCONT)  # a server paused by `Pauser` cannot handle SIGTERM
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.process.wait(timeout=90)
    # The session is the server's own (start_new_session): engine or Ray workers that outlived it go too, even
    # those in process groups of their own.
    _signal_session(server, signal.SIGKILL)
    server.process.wait(timeout=30)
    print(f"[bench] {server.name} stopped", flush=True)


def _session_pids(leader: int) -> list[int]:
    """Every process in the server's session: Ray's workers start their own process groups, but not sessions."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getsid(int(entry.name)) == leader:
                    pids.append(int(entry.name))
    return pids


def _signal_session(server: Server, signum: int) -> None:
    for pid in _session_pids(server.process.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


class Pauser:
    """Keeps only the server being measured running: SIGSTOP the other one's whole session, SIGCONT it back.

    An idle `tokenplane up` still spends about 13% of a core (Ray's controller, agents, GCS, the engine loop), which
    on a 2-core machine is taken from bare vLLM while it is measured, and the reverse; pausing the idle server
    measures each alone.
    """

    def __init__(self, servers: dict[str, Server]) -> None:
        self.servers = servers
        self.running = set(servers)

    def only(self, label: str) -> None:
        """Resume `label` (waiting until it answers again) and pause every other server."""
        for name, server in self.servers.items():
            if name != label and name in self.running:
                _signal_session(server, signal.SIGSTOP)
                self.running.discard(name)
        if label not in self.running:
            server = self.servers[label]
            _signal_session(server, signal.SIGCONT)
            self.running.add(label)
            deadline = time.monotonic() + 120
            while not _answers(server.base_url) and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(5.0)  # timers and health checks that came due while stopped run now, not in the measurement


def _engine_args(example: Path) -> dict[str, Any]:
    """Read the example's model and engine settings, for bare vLLM's command line."""
    spec = yaml.safe_load(example.read_text(encoding="utf-8"))["spec"]
    return {
        "model": spec["model"]["source"],
        "dtype": spec["model"].get("dtype", "bfloat16"),
        "max_model_len": spec["model"]["maxModelLen"],
        "max_num_seqs": spec["engine"]["maxNumSeqs"],
        "enforce_eager": spec["engine"].get("enforceEager", False),
        "prefix_caching": spec["engine"].get("enablePrefixCaching", True),
        "kv_gib": spec["hardware"]["cpu"]["kvCacheGiB"],
    }


def bare_vllm_command(args: dict[str, Any], port: int) -> list[str]:
    """Bare vLLM's command line with the example's engine arguments (`_engine_args`), prefix cache included."""
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", args["model"], "--served-model-name", MODEL_ID, "--dtype", args["dtype"],
        "--max-model-len", str(args["max_model_len"]), "--max-num-seqs", str(args["max_num_seqs"]),
        "--host", "127.0.0.1", "--port", str(port),
    ] + (["--enforce-eager"] if args["enforce_eager"] else []) + (
        [] if args["prefix_caching"] else ["--no-enable-prefix-caching"]
    )  # fmt: skip


def _launch(name: str, example: Path, out: Path, log_name: str | None = None) -> Server:
    """Start bare vLLM (`name` "vllm") or `tokenplane up` on `example` on a free port; return once it answers.

    Both get the example's engine arguments; `startup_s` is the cold start to the first answered completion.
    """
    args = _engine_args(example)
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=str(args["kv_gib"]))
    port = _free_port()
    if name == "vllm":
        command = bare_vllm_command(args, port)
    else:
        tokenplane = str(Path(sys.executable).with_name("tokenplane"))
        command = [tokenplane, "up", str(example), "--host", "127.0.0.1", "--port", str(port)]
    return _start(name, command, port, out / "logs" / f"{log_name or name}.log", env, 600)


@contextlib.contextmanager
def servers(example: Path, out: Path) -> Iterator[tuple[Server, Server]]:
    """Bare vLLM, then tokenplane (each cold start timed alone); both stopped on the way out."""
    started: list[Server] = []
    try:
        started.append(_launch("vllm", example, out))
        started.append(_launch("tokenplane", example, out))
        yield started[1], started[0]
    finally:
        for server in reversed(started):
            _stop(server)


def coldstart(example: Path, out: Path, pairs: int) -> None:
    """Time cold starts alone, alternating bare vLLM and tokenplane (A B A B ...); write coldstart.json.

    Each server is stopped before the next starts, so every cold start has the machine to itself. The ratio is
    tokenplane's median over bare vLLM's median; every run's seconds are kept beside it.
    """
    seconds: dict[str, list[float]] = {"vllm": [], "tokenplane": []}
    for pair in range(pairs):
        for name in ("vllm", "tokenplane"):
            server = _launch(name, example, out, log_name=f"coldstart-{name}-{pair + 1}")
            _stop(server)
            seconds[name].append(round(server.startup_s, 2))
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    doc = {
        "commit": _git_commit(),
        "example": str(example),
        "ready": "first chat completion answered (1 token), timed from the process start",
        "coldStartSeconds": seconds,
        "medianSeconds": medians,
        "coldStartRatio": medians["tokenplane"] / medians["vllm"],
        "pairRatios": [round(t / v, 3) for v, t in zip(seconds["vllm"], seconds["tokenplane"], strict=True)],
    }
    (out / "coldstart.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(
        f"[coldstart] vLLM {seconds['vllm']} s, tokenplane {seconds['tokenplane']} s; "
        f"ratio of medians {doc['coldStartRatio']:.2f}",
        flush=True,
    )


def _git_commit() -> str:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
    return "unknown"


def bench(
    example: Path, out: Path, pairs: int, levels: list[int], num_prompts: int, sweep: list[int], pause_idle: bool
) -> None:
    """Compare (interleaved pairs at each level) and sweep both endpoints; write JSON and PNGs under out."""
    spec = WorkloadSpec(
        num_prompts=num_prompts, input_tokens=128, output_tokens=64, tokenizer=_engine_args(example)["model"]
    )
    with servers(example, out) as (tp, bare):
        a, b = Endpoint(f"{tp.base_url}/v1", MODEL_ID), Endpoint(f"{bare.base_url}/v1", MODEL_ID)
        pauser = Pauser({"tokenplane": tp, "vllm": bare})

        def on_run(label: str, level: int, pair: int, result: Any) -> None:
            r = result.report
            print(
                f"[bench] c={level} pair {pair + 1} {label}: {r['output_throughput']:.0f} tok/s, "
                f"P95 TTFT {r['p95_ttft_ms']:.0f} ms, P95 ITL {r['p95_itl_ms']:.1f} ms, failed {r['failed']}",
                flush=True,
            )

        doc, results = compare_runs(
            a, b, spec, levels=levels, pairs=pairs, warmup=4, on_run=on_run,
            before_run=pauser.only if pause_idle else None,
        )  # fmt: skip
        doc |= {
            "idleServerPaused": pause_idle,
            "workload": spec.describe(),
            "commit": _git_commit(),
            "coldStartSeconds": {"tokenplane": tp.startup_s, "vllm": bare.startup_s},
            "coldStartRatio": tp.startup_s / bare.startup_s,
        }
        plot_cdfs(
            {
                f"{label} c={level}": [r for res in runs for r in res.records]
                for (label, level), runs in results.items()
            },
            out / "compare-cdf.png",
        )
        (out / "compare.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        print(
            f"[bench] at c={doc['ratiosAtConcurrency']}: throughput {doc['throughputRatio']:.2f}x, "
            f"P95 TTFT {doc['p95TtftRatio']:.2f}x, P95 ITL {doc['p95ItlRatio']:.2f}x; cold start "
            f"{doc['coldStartRatio']:.2f}x",
            flush=True,
        )
        curves = {}
        for label, endpoint in (("tokenplane", a), ("vllm", b)):
            if pause_idle:
                pauser.only(label)
            steps, stop = sweep_runs(endpoint, spec, loads=sweep, by="concurrency")
            saturated = stop.index if stop is not None else None
            curves[label] = [s.report for s in steps]
            (out / f"sweep-{label}.json").write_text(
                json.dumps(
                    {"name": label, "by": "concurrency", "saturated_at": saturated, "steps": curves[label]}, indent=2
                )
                + "\n",
                encoding="utf-8",
            )
        plot_curves(curves, out / "throughput-latency.png", "concurrency")
    print(f"[bench] wrote {out}/compare.json, compare-cdf.png, sweep-*.json, throughput-latency.png", flush=True)


def _vllm_client(
    base_url: str,
    tokenizer: str,
    num_prompts: int,
    concurrency: int,
    seed: int,
    output_len: int = 64,
    detailed: bool = False,
) -> dict[str, Any]:
    """Run vLLM's own benchmark client from Python (the `vllm` console script is broken with vllm-cpu).

    With `detailed`, the result keeps vLLM's per-request lists (`start_times`, `ttfts`, `itls`, `latencies`...).
    """
    from vllm.benchmarks import serve
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()  # type: ignore[no-untyped-call]
    serve.add_cli_args(parser)
    args = parser.parse_args(
        [
            "--backend", "openai-chat", "--endpoint", "/v1/chat/completions", "--base-url", base_url,
            "--model", MODEL_ID, "--tokenizer", tokenizer, "--dataset-name", "random",
            "--random-input-len", "128", "--random-output-len", str(output_len), "--num-prompts", str(num_prompts),
            "--max-concurrency", str(concurrency), "--ignore-eos", "--seed", str(seed), "--percentile-metrics",
            "ttft,tpot,itl,e2el", "--metric-percentiles", "50,95,99", "--num-warmups", "0",
        ] + (["--save-detailed"] if detailed else [])
    )  # fmt: skip
    return dict(serve.main(args))


def without_prefix_caching(example: Path, out: Path) -> Path:
    """Write a copy of `example` with the engine's prefix cache off (`spec.engine.enablePrefixCaching: false`).

    vLLM's random dataset makes each prompt a run of consecutive token ids from a random start; with the tiny
    model's tokenizer (about 1,100 usable ids) starts repeat: of 64 prompts, 5-8 repeat one of their own run and
    9-20 one of an earlier run's (seeds 100-104), and a server with a prefix cache answers those without their
    prefill. Our prompts (random words) never repeat, so with the cache on the two clients' workloads differ.
    """
    doc = yaml.safe_load(example.read_text(encoding="utf-8"))
    doc["spec"].setdefault("engine", {})["enablePrefixCaching"] = False
    copy = out / f"{example.stem}-no-prefix-cache.yaml"
    copy.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return copy


CROSSCHECK_KEYS = (
    "duration", "completed", "total_input_tokens", "total_output_tokens", "output_throughput", "mean_ttft_ms",
    "median_ttft_ms", "p95_ttft_ms", "mean_itl_ms", "median_itl_ms", "p95_itl_ms", "mean_tpot_ms", "mean_e2el_ms",
)  # fmt: skip
CROSSCHECK_RATIOS = ("output_throughput", "mean_ttft_ms", "mean_itl_ms")


def timeline(report: dict[str, Any], records: list[RequestRecord] | None = None) -> list[list[float]]:
    """Per request, in send order: [start, ttft, e2el] in ms (start from the run's first send) and token events.

    Reads our records, or a detailed vLLM result (`start_times`, `ttfts`, `latencies`, `itls`), so the two
    clients' requests can be laid side by side.
    """
    if records is not None:
        done = [r for r in records if r.success and r.ttft is not None and r.e2el is not None]
        rows = [(r.start, r.ttft or 0.0, r.e2el or 0.0, r.chunks) for r in done]
    else:
        rows = [
            (start, ttft, latency, len(itl) + 1)
            for start, ttft, latency, itl in zip(
                report["start_times"], report["ttfts"], report["latencies"], report["itls"], strict=True
            )
            if ttft > 0
        ]
    rows.sort()
    zero = rows[0][0] if rows else 0.0
    return [[round((s - zero) * 1000, 1), round(t * 1000, 1), round(e * 1000, 1), n] for s, t, e, n in rows]


def _ours(endpoint: Endpoint, spec: WorkloadSpec, concurrency: int) -> tuple[dict[str, Any], list[list[float]]]:
    result = run_sync(endpoint, spec, concurrency=concurrency, rate=None)
    return result.report, timeline(result.report, result.records)


def crosscheck(example: Path, out: Path, pairs: int, num_prompts: int, concurrency: int) -> None:
    """Run our client and vLLM's against the same endpoints and workload, interleaved, and compare.

    Both run in this process, one after the other, on the same workload: 128 prompt tokens (vLLM's random dataset
    for its client, random words cut with the model's tokenizer for ours), 64 output tokens with ignore-eos, on
    servers with the example's engine settings but the prefix cache off (see `without_prefix_caching`).
    crosscheck.json keeps each run's figures, the ratios (ours over vLLM's, of each client's medians over the
    pairs) and every request's [start, TTFT, E2EL, token events] of both clients, for a side-by-side look at any
    gap.
    """
    tokenizer = _engine_args(example)["model"]
    doc: dict[str, Any] = {
        "commit": _git_commit(),
        "concurrency": concurrency,
        "num_prompts": num_prompts,
        "prefixCaching": False,
    }
    with servers(without_prefix_caching(example, out), out) as (tp, bare):
        pauser = Pauser({"tokenplane": tp, "vllm": bare})
        for server in (tp, bare):
            pauser.only(server.name)
            runs = []
            for i in range(pairs):
                spec = WorkloadSpec(
                    num_prompts=num_prompts, input_tokens=128, output_tokens=64, tokenizer=tokenizer, seed=100 + i
                )
                endpoint = Endpoint(f"{server.base_url}/v1", MODEL_ID)
                # Alternate who goes first, so a drift in the machine's load does not favour one client.
                if i % 2:
                    mine, my_requests = _ours(endpoint, spec, concurrency)
                vllm = _vllm_client(server.base_url, tokenizer, num_prompts, concurrency, 100 + i, detailed=True)
                if not i % 2:
                    mine, my_requests = _ours(endpoint, spec, concurrency)
                runs.append(
                    {
                        "first": "tokenplane_bench" if i % 2 else "vllm_client",
                        "vllm_client": {k: vllm.get(k) for k in CROSSCHECK_KEYS},
                        "tokenplane_bench": {k: mine[k] for k in CROSSCHECK_KEYS},
                        "requests": {"vllm_client": timeline(vllm), "tokenplane_bench": my_requests},
                    }
                )
                print(
                    f"[crosscheck] {server.name} pair {i + 1}: throughput ours {mine['output_throughput']:.0f} vs "
                    f"vLLM's {vllm['output_throughput']:.0f} tok/s; mean TTFT ours {mine['mean_ttft_ms']:.0f} vs "
                    f"{vllm['mean_ttft_ms']:.0f} ms; mean ITL ours {mine['mean_itl_ms']:.1f} vs "
                    f"{vllm['mean_itl_ms']:.1f} ms",
                    flush=True,
                )
            doc[server.name] = crosscheck_summary(runs)
    (out / "crosscheck.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    for name in ("tokenplane", "vllm"):
        r = doc[name]["oursOverVllmOfMedians"]
        print(
            f"[crosscheck] {name} endpoint: ours/vLLM's throughput {r['output_throughput']:.3f}, "
            f"mean TTFT {r['mean_ttft_ms']:.3f}, mean ITL {r['mean_itl_ms']:.3f}; within 10% (throughput and "
            f"mean TTFT): {doc[name]['within10Percent']}",
            flush=True,
        )


def crosscheck_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each client's medians over the pairs, their ratios (ours over vLLM's) and whether the two agree.

    Per-pair ratios swing with the machine's load; the ratio of each client's medians is the steadier figure.
    The target (within 10%) is on output throughput and mean TTFT; mean ITL's ratio is reported beside them.
    """
    medians = {
        client: {k: statistics.median(r[client][k] for r in runs) for k in CROSSCHECK_RATIOS}
        for client in ("tokenplane_bench", "vllm_client")
    }
    ratios = {k: medians["tokenplane_bench"][k] / medians["vllm_client"][k] for k in CROSSCHECK_RATIOS}
    return {
        "runs": runs,
        "medians": medians,
        "oursOverVllmOfMedians": ratios,
        "medianOfPairRatios": {
            k: statistics.median(r["tokenplane_bench"][k] / r["vllm_client"][k] for r in runs)
            for k in CROSSCHECK_RATIOS
        },
        "within10Percent": all(abs(ratios[k] - 1) <= 0.10 for k in ("output_throughput", "mean_ttft_ms")),
    }


def main(argv: list[str] | None = None) -> int:
    """Command line of `make bench`, `make bench-crosscheck` and `make bench-coldstart`."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("bench", "crosscheck", "coldstart"))
    parser.add_argument("--example", type=Path, default=Path("deploy/examples/local-tiny.yaml"))
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--levels", default="16,1", help="Concurrency levels of the comparison.")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--sweep", default="1,2,4,8,16,32", help="Concurrency steps of the sweeps.")
    parser.add_argument(
        "--no-pause-idle",
        dest="pause_idle",
        action="store_false",
        help="Keep the server not being measured running (by default its processes are stopped meanwhile).",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.what == "bench":
        bench(
            args.example,
            args.out,
            args.pairs,
            [int(v) for v in args.levels.split(",")],
            args.num_prompts,
            [int(v) for v in args.sweep.split(",")],
            args.pause_idle,
        )
    elif args.what == "coldstart":
        coldstart(args.example, args.out, args.pairs)
    else:
        crosscheck(args.example, args.out, args.pairs, args.num_prompts, int(args.levels.split(",")[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

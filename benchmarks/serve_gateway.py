"""Gateway overhead, side by side: the same tiny model, engine arguments and CPU
binding served by (a) vLLM's own OpenAI server, bare (Ray not running), (b) plain
`ray.serve.llm.build_openai_app`, (c) the Sekisho gateway with auth, limits and
audit on. Streamed chat, 64 output tokens, concurrency 1, 8 and 32.

    .venv/bin/python benchmarks/serve_gateway.py [--rounds 1] [--repeats 3]

Run it in a loopback-only namespace like everything else:
    unshare -n sh -c 'ip link set lo up && .venv/bin/python benchmarks/serve_gateway.py'

Each arm starts its server once per round; at each concurrency one wave of
`c` requests warms it up (first batches of a new size), then `--repeats` timed
loads run and their medians are reported (one load is a few seconds: on the
shared 2-core machine single loads varied by 25%). Each load also reports how
much CPU processes outside the benchmark's own tree took meanwhile; loads with
more than 15% of a core of such traffic are set aside from the medians when the
same arm and concurrency has a quiet one ("loads: quiet/all" in the table).

Each arm also prints its engine processes' niceness: bare vLLM has the
benchmark's (0); plain Ray Serve LLM runs them at Ray's worker niceness (15),
as it does on any cluster; Sekisho sets `engine.niceness` (default 0).

`--pin-engine` lays every arm out as on the reference cluster, where a node has
cores to spare beside its engines: the engine alone on one core, everything
else of the arm (the OpenAI server with the gateway, ledger, Ray, Serve's
actors, the load client) on the other. Without it, all share both cores.

Last line: result: gateway_vs_bare_vllm=MIN over concurrencies of (c)/(a) tokens/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from foundation import offline  # noqa: E402

offline.apply()
# The same CPU binding in every arm: a Serve replica reserving one CPU gets
# OMP_NUM_THREADS=1 from Ray; set here, every arm's processes inherit it (Ray
# keeps a value that is already set). vLLM binds its CPU worker's own threads.
os.environ["OMP_NUM_THREADS"] = "1"

CONCURRENCY = (1, 8, 32)
TARGET = 0.9  # (c)/(a) tokens/s at every concurrency, with TTFT p50 at c=1 no more than 15 ms worse
REQUESTS = {1: 24, 8: 96, 32: 384}  # per timed load: 24, 12 and 12 waves
OUTPUT_TOKENS = 64
ENGINE = {
    "max_model_len": 512,
    "max_num_seqs": 32,
    "tensor_parallel_size": 1,
    "dtype": "float32",
    "max_loras": 1,
    "max_lora_rank": 16,
    "kv_cache_gb": 1,
    "startup_timeout_s": 600,
}
AUDIT: list[str] = []  # one line per Sekisho arm run
PROMPT = [{"role": "user", "content": "第七倉庫の合言葉は何ですか。"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def one_request(session, url, headers, model) -> tuple[float, int, float, float]:
    """(time to first token, tokens, mean time between tokens, last token to the
    response's end): where a slower arm loses its time."""
    body = {
        "model": model,
        "messages": PROMPT,
        "max_tokens": OUTPUT_TOKENS,
        "stream": True,
        "temperature": 0,
        "ignore_eos": True,
    }
    start = time.perf_counter()
    ttft, tokens, last = None, 0, start
    async with session.post(url, json=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        buf = b""
        async for chunk in resp.content.iter_any():
            buf += chunk
            *events, buf = buf.split(b"\n\n")
            for ev in events:
                if ev.startswith(b"data: {") and b'"content":"' in ev:
                    tokens += 1
                    last = time.perf_counter()
                    if ttft is None:
                        ttft = last - start
    end = time.perf_counter()
    itl = (last - start - ttft) / (tokens - 1) if ttft is not None and tokens > 1 else float("nan")
    return ttft or float("nan"), tokens, itl, end - last


def _processes():
    """(pid, name, ppid, utime + stime ticks) of every process still running."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rfind(")") + 2 :].split()
        yield (
            int(pid),
            st[st.find("(") + 1 : st.rfind(")")],
            int(fields[1]),
            int(fields[11]) + int(fields[12]),
        )


def _tree(root: int, procs: list[tuple[int, str, int, int]]) -> set[int]:
    """`root` and every process below it, among `procs` (from _processes)."""
    children: dict[int, list[int]] = {}
    for pid, _, ppid, _ in procs:
        children.setdefault(ppid, []).append(pid)
    ours, frontier = {root}, [root]
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child not in ours:
                ours.add(child)
                frontier.append(child)
    return ours


def _cpu_ticks() -> tuple[int, int]:
    """CPU ticks used so far by this benchmark's process tree (the client and the
    arm's servers) and by everything else on the machine."""
    procs = list(_processes())
    ours = _tree(os.getpid(), procs)
    mine = sum(ticks for pid, _, _, ticks in procs if pid in ours)
    with open("/proc/stat") as f:  # the whole machine's busy time, processes that exited meanwhile included
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in f.readline().split()[1:9])
    return mine, user + nice + system + irq + softirq + steal - mine


ROLES = (  # (role, what its command line or process name holds), first match wins
    ("ledger", "serve.gateway.ledger"),
    ("engine", "VLLM::"),
    ("api-server", "vllm.entrypoints"),
    ("api-server", "serve.vllm_main"),  # how Sekisho starts vLLM's server (serve/vllm_main.py)
    # Serve's replica actors: plain ray.serve.llm's server (its arm's API server),
    # or Sekisho's engine replica beside its vLLM process (health checks, route
    # publishing, the alias follower): shown apart, not counted as the gateway's.
    ("serve-replica", "ServeReplica"),
    ("client", "serve_gateway.py"),
)


def cpu_by_role() -> dict[str, int]:
    """CPU ticks used so far by the benchmark's processes, by role: the OpenAI
    server (with Sekisho's gateway inside it), Serve's replica actors, the engine
    (core and worker), the gateway's ledger child, the load client, the rest."""
    out: dict[str, int] = {}
    for pid, name, _, ticks in _processes():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        role = next((r for r, mark in ROLES if mark in cmd or mark in name), "other")
        out[role] = out.get(role, 0) + ticks
    return out


def _set_affinity(pid: int, cpus: set[int]) -> None:
    """Every thread of `pid` onto `cpus` (new threads inherit it from their creator)."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:
            pass  # the thread ended meanwhile


def pin_engine_apart() -> str:
    """The reference cluster's layout on this machine: the engine (vLLM's engine core and
    worker) alone on one core, everything else of the arm (the OpenAI server with the
    gateway inside, the ledger, Ray, Serve's actors, this load client) on the others.
    The engine keeps the core vLLM bound its worker to, if it did. Returns what was done."""
    procs = list(_processes())
    tree = _tree(os.getpid(), procs)
    names = {pid: name for pid, name, _, _ in procs if pid in tree}
    engine = [pid for pid, name in names.items() if name.startswith("VLLM::")]
    if not engine:
        return "no engine process found; nothing pinned"
    bound = set()
    for pid in engine:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                cpus = os.sched_getaffinity(int(tid))
            except OSError:
                continue
            if len(cpus) == 1:
                bound |= cpus
    core = min(bound) if len(bound) == 1 else (os.cpu_count() or 1) - 1
    rest = set(range(os.cpu_count() or 1)) - {core}
    for pid in tree:
        _set_affinity(pid, {core} if pid in engine else rest)
    return f"engine ({len(engine)} processes) alone on CPU {core}; {len(tree) - len(engine)} others on {sorted(rest)}"


FOREIGN_OK = 0.15  # loads during which other processes took more than this share of a core are set aside
QUIET_WAIT_S = 90.0


def wait_quiet() -> None:
    """Before a timed load: wait (up to QUIET_WAIT_S) for a second in which other
    processes take less than FOREIGN_OK of a core (the machine is shared)."""
    deadline = time.monotonic() + QUIET_WAIT_S
    while True:
        _, f0 = _cpu_ticks()
        time.sleep(1.0)
        _, f1 = _cpu_ticks()
        share = (f1 - f0) / os.sysconf("SC_CLK_TCK")
        if share <= FOREIGN_OK:
            return
        if time.monotonic() >= deadline:
            print(
                f"  (other processes still take {share * 100:.0f}% of a core; measuring anyway)", flush=True
            )
            return


async def load(base_url: str, model: str, key: str | None, concurrency: int) -> dict:
    import aiohttp

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = base_url + "/chat/completions"
    n = REQUESTS[concurrency]
    queue = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    results = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        # Warm-up: one wave at this concurrency (connections, the engine's first
        # batches of this size), not timed.
        await asyncio.gather(*(one_request(session, url, headers, model) for _ in range(concurrency)))

        async def worker():
            while not queue.empty():
                queue.get_nowait()
                results.append(await one_request(session, url, headers, model))

        admit0 = await admission_totals(session, base_url)
        roles0 = cpu_by_role()
        _, foreign0 = _cpu_ticks()
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
        _, foreign1 = _cpu_ticks()
        admit1 = await admission_totals(session, base_url)
        roles1 = cpu_by_role()
    ttfts = sorted(r[0] for r in results)
    return {
        "tok_s": sum(r[1] for r in results) / wall,
        "ttft_p50": statistics.median(ttfts),
        "itl_p50": statistics.median(r[2] for r in results),
        "tail_p50": statistics.median(r[3] for r in results),
        "ttft_p99": ttfts[min(len(ttfts) - 1, int(len(ttfts) * 0.99))],
        "requests": n + concurrency,
        "foreign": (foreign1 - foreign0) / os.sysconf("SC_CLK_TCK") / wall,
        # CPU milliseconds per request, by role (where an arm's extra work goes).
        "cpu_ms": {
            role: (roles1.get(role, 0) - roles0.get(role, 0)) / os.sysconf("SC_CLK_TCK") * 1000 / n
            for role in sorted(set(roles0) | set(roles1))
            if roles1.get(role, 0) > roles0.get(role, 0)
        },
        # Mean time the gateway took to record each request as admitted (fail closed),
        # from its own metrics; nan for the arms without Sekisho's gateway.
        "admit_ms": (admit1[0] - admit0[0]) / max(admit1[1] - admit0[1], 1) * 1000
        if admit0 and admit1
        else float("nan"),
    }


async def admission_totals(session, base_url: str) -> tuple[float, float] | None:
    """(sum of seconds, count) of the gateway's audit admissions so far, from its
    /metrics; None where the server has no such metric (the other arms)."""
    async with session.get(base_url.removesuffix("/v1") + "/metrics") as resp:
        text = await resp.text() if resp.status == 200 else ""
    found = dict(re.findall(r"^sekisho_audit_admit_seconds_(sum|count) (\S+)$", text, re.M))
    return (float(found["sum"]), float(found["count"])) if len(found) == 2 else None


def engine_niceness() -> str:
    """The scheduling priority of the running engine's processes (part of each arm's CPU setup:
    Ray starts its workers at niceness 15)."""
    import psutil

    nice = sorted(
        {
            p.nice()
            for p in psutil.process_iter(["name"])
            if (p.info["name"] or "").startswith(("VLLM::Worker", "VLLM::EngineCor"))
        }
    )
    return ",".join(map(str, nice)) or "?"


PIN_ENGINE = False  # --pin-engine


def measure(arm: str, base_url: str, model: str, key: str | None, out: dict, repeats: int) -> int:
    """Timed loads at each concurrency; returns the number of requests sent (warm-ups included)."""
    print(f"  {arm}: engine core and worker at niceness {engine_niceness()}", flush=True)
    if PIN_ENGINE:
        print(f"  {arm}: {pin_engine_apart()}", flush=True)
    sent = 0
    for c in CONCURRENCY:
        for _ in range(repeats):
            if PIN_ENGINE:
                pin_engine_apart()  # processes started since (the ledger child, Ray workers) too
            wait_quiet()
            r = asyncio.run(load(base_url, model, key, c))
            sent += r["requests"]
            out.setdefault((arm, c), []).append(r)
            print(
                f"  {arm} c={c:<3} {r['tok_s']:7.1f} tok/s  TTFT p50 {r['ttft_p50'] * 1000:6.1f} ms  "
                f"p99 {r['ttft_p99'] * 1000:6.1f} ms  between tokens {r['itl_p50'] * 1000:5.2f} ms  "
                f"last token to end {r['tail_p50'] * 1000:5.1f} ms  "
                + ("" if r["admit_ms"] != r["admit_ms"] else f"audit admission {r['admit_ms']:.2f} ms  ")
                + "CPU ms/request "
                + " ".join(f"{k} {v:.1f}" for k, v in r["cpu_ms"].items())
                + f"  (other processes: {r['foreign'] * 100:.0f}% of a core"
                f"{', set aside' if r['foreign'] > FOREIGN_OK else ''})",
                flush=True,
            )
    return sent


def wait_http(url: str, timeout: float = 600) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(url)


def arm_bare(model_dir: Path, out: dict, repeats: int) -> None:
    from serve.vllm_process import engine_env, vllm_command

    port = free_port()
    cmd = vllm_command(str(model_dir), "tiny-base", {}, ENGINE, "127.0.0.1", port)
    # Bare: vLLM's own server, without the guard Sekisho puts in front of every engine.
    guard = cmd.index("serve.engine_guard.EngineGuard")
    del cmd[guard - 1 : guard + 1]
    env = {**os.environ, **engine_env(ENGINE)}  # the process layout Sekisho's engines get
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_http(f"http://127.0.0.1:{port}/health")
            measure("a:bare-vllm", f"http://127.0.0.1:{port}/v1", "tiny-base", None, out, repeats)
        finally:
            proc.terminate()
            proc.wait(60)


def arm_ray_serve_llm(model_dir: Path, home: Path, out: dict, repeats: int) -> None:
    import ray
    from ray import serve
    from ray.serve.llm import LLMConfig, build_openai_app

    from cluster.local import start_local

    start_local(home, num_cpus=4)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    cfg = LLMConfig(
        model_loading_config={"model_id": "tiny-base", "model_source": str(model_dir)},
        engine_kwargs={
            "max_model_len": ENGINE["max_model_len"],
            "max_num_seqs": ENGINE["max_num_seqs"],
            "dtype": ENGINE["dtype"],
            "tensor_parallel_size": 1,
        },
        deployment_config={"num_replicas": 1},
        placement_group_config={"bundles": [{"CPU": 1}]},  # CPU engine, as in the other arms
        runtime_env={"env_vars": {"VLLM_CPU_KVCACHE_SPACE": str(ENGINE["kv_cache_gb"])}},
    )
    serve.run(build_openai_app({"llm_configs": [cfg]}), name="bench-b", route_prefix="/")
    wait_http(f"http://127.0.0.1:{port}/v1/models")
    try:
        measure("b:ray-serve-llm", f"http://127.0.0.1:{port}/v1", "tiny-base", None, out, repeats)
    finally:
        serve.shutdown()
        ray.shutdown()


def arm_sekisho(
    model_dir: Path,
    home: Path,
    out: dict,
    repeats: int,
    placement: str = "embedded",
    routing: str = "affinity",
) -> None:
    import ray
    from ray import serve

    from cluster.local import start_local
    from serve import ModelSpec, ServeAppConfig, deploy, resolve_app
    from serve.gateway import AuditLog, KeyStore

    start_local(home, num_cpus=4)
    port = free_port()
    cfg = ServeAppConfig(
        name="bench",
        port=port,
        gateway={"placement": placement, "routing": {"by": routing}},
        models=[ModelSpec(name="tiny-base", source=str(model_dir), engine=ENGINE)],
    )
    arm = "c:sekisho-gateway" if placement == "embedded" else "d:gateway-separate"
    if routing == "connection":
        arm = "e:sekisho-unrouted"
    base_url = deploy(resolve_app(cfg, home / "cache"))
    key = KeyStore().create(f"bench-{time.time_ns()}", ["tiny-base"])
    audit = AuditLog("bench")
    before = audit.verify().records
    sent = 0
    try:
        sent = measure(arm, base_url, "tiny-base", key, out, repeats)
    finally:
        after = audit.verify()
        line = (
            f"{arm} audit: {after.records - before} new records for {sent} requests sent, chain "
            f"{'intact' if after.ok else 'BROKEN'}"
        )
        AUDIT.append(line)
        print("  " + line, flush=True)
        serve.shutdown()
        ray.shutdown()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--rounds", type=int, default=1, help="start each arm this many times; medians are compared"
    )
    p.add_argument("--repeats", type=int, default=3, help="timed loads per concurrency in each round")
    p.add_argument(
        "--arms",
        default="abc",
        help="a bare vLLM, b ray.serve.llm, c Sekisho (embedded "
        "gateway), d Sekisho with the gateway as a separate deployment, e Sekisho without "
        "per-request routing (gateway.routing.by: connection)",
    )
    p.add_argument(
        "--pin-engine",
        action="store_true",
        help="give the engine a core of its own and everything else the other cores, in every arm "
        "(the reference cluster's layout: an H100 node has cores to spare beside its engines)",
    )
    args = p.parse_args()
    global PIN_ENGINE
    PIN_ENGINE = args.pin_engine
    home = Path(tempfile.mkdtemp(prefix="sekisho-bench-"))
    os.environ["SEKISHO_HOME"] = str(home)
    from data import read_chat_jsonl
    from train import build_tiny_model

    sample = Path(__file__).resolve().parent.parent / "data" / "samples" / "internal_faq_ja.jsonl"
    conv = read_chat_jsonl(sample).conversations
    model_dir = build_tiny_model(home / "tiny-base", [m["content"] for c in conv for m in c])
    print(
        f"engine args {json.dumps(ENGINE)}; OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}; "
        f"VLLM_CPU_OMP_THREADS_BIND="
        f"{os.environ.get('VLLM_CPU_OMP_THREADS_BIND', 'auto (unset)')}; cores {os.cpu_count()}",
        flush=True,
    )
    out: dict = {}
    for rnd in range(args.rounds):
        print(f"round {rnd + 1}", flush=True)
        if "a" in args.arms:
            arm_bare(model_dir, out, args.repeats)
        if "b" in args.arms:
            arm_ray_serve_llm(model_dir, home, out, args.repeats)
        if "c" in args.arms:
            arm_sekisho(model_dir, home, out, args.repeats)
        if "d" in args.arms:  # for comparison: the gateway as its own deployment (one more hop)
            arm_sekisho(model_dir, home, out, args.repeats, placement="separate")
        if "e" in args.arms:  # what per-request routing costs on one replica: the kernel's spreading instead
            arm_sekisho(model_dir, home, out, args.repeats, routing="connection")
    # Medians over the loads no other process disturbed (all of them if none was quiet).
    quiet = {k: [r for r in rs if r["foreign"] <= FOREIGN_OK] or rs for k, rs in out.items()}
    med = {
        k: {
            m: statistics.median(r[m] for r in rs)
            for m in ("tok_s", "ttft_p50", "ttft_p99", "itl_p50", "tail_p50", "admit_ms")
        }
        for k, rs in quiet.items()
    }
    print(f"\nmedians over {args.rounds} round(s) x {args.repeats} timed loads")
    print(
        f"{'arm':20} {'c':>3} {'tok/s':>8} {'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8} {'tail p50':>9} {'loads':>9}"
    )
    for (arm, c), m in sorted(med.items()):
        print(
            f"{arm:20} {c:>3} {m['tok_s']:8.1f} {m['ttft_p50'] * 1000:8.1f}ms {m['ttft_p99'] * 1000:8.1f}ms "
            f"{m['itl_p50'] * 1000:6.2f}ms {m['tail_p50'] * 1000:7.1f}ms {len(quiet[(arm, c)])}/{len(out[(arm, c)])} quiet"
        )
    ratios = []
    for c in CONCURRENCY:
        a, b, cc = (med.get((arm, c)) for arm in ("a:bare-vllm", "b:ray-serve-llm", "c:sekisho-gateway"))
        if a and cc:
            ratios.append(cc["tok_s"] / a["tok_s"])
            line = f"c={c}: (c)/(a) tokens/s {ratios[-1]:.2f}, TTFT p50 added {(cc['ttft_p50'] - a['ttft_p50']) * 1000:+.1f} ms"
            # Committed while the engine starts on the request (fail closed: before the first byte).
            line += f"; the admission's commit took {cc['admit_ms']:.2f} ms, beside the prefill"
            if b:
                line += f"; (c)/(b) tokens/s {cc['tok_s'] / b['tok_s']:.2f}"
            e = med.get(("e:sekisho-unrouted", c))
            if e:
                line += f"; (c)/(e) tokens/s {cc['tok_s'] / e['tok_s']:.2f} (what routing costs)"
            print(line)
    if not ratios:
        print(f"result: gateway_vs_bare_vllm=nan target=>={TARGET} fail")
        return 1
    added = (med[("c:sekisho-gateway", 1)]["ttft_p50"] - med[("a:bare-vllm", 1)]["ttft_p50"]) * 1000
    ok_ttft = added <= 15
    print(f"ttft_added_c1_ms={added:.1f} target=<=15 {'pass' if ok_ttft else 'fail'}")
    for line in AUDIT:
        print(line)
    worst = min(ratios)
    print(
        f"result: gateway_vs_bare_vllm={worst:.2f} target=>={TARGET} "
        f"{'pass' if worst >= TARGET and ok_ttft else 'fail'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

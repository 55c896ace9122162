"""Serving benchmark on trained vectors: index recall, HTTP transports, mlflow side by side, swap under load.

    # once: two real `led train` exports of one synthetic shop (~10 min on 2 shared cores)
    nice -n 10 .venv/bin/python benchmarks/serving.py --prepare /work/bench-serving
    # the run (~12 min): wrk must be installed (`apt-get install -y wrk`; the script says so if missing)
    nice -n 10 .venv/bin/python benchmarks/serving.py --models /work/bench-serving
    nice -n 10 .venv/bin/python benchmarks/serving.py --models DIR --quick    # 3 s points, fewer loads

``--prepare DIR`` runs ``led generate --users 60000 --items 20000 --days 15``
then ``led train --date 2026-01-16 --window 14`` at d=128 and d=600 (issue 11's
recipe: ~22k items). For each export:

1. The slot ``led push`` would build (settings n_trees / search_k; bias scale
   and the small-k search_k picked by measured recall), its ANN recall@100 and
   recall@10 against exact scoring on the export's held-out timelines, and
   in-process recommend latency (wall and CPU time).
2. HTTP with ``wrk`` (POST /recommend, k=10, the export's held-out timelines,
   keep-alive, 1 thread, 10 s per point) at 1, 2, 4, 8 and 16 connections, for
   every transport, each with 2 workers:
   ``legacy`` (the hand-written asyncio HTTP/1.1 + ``os.fork`` workers sharing
   one accept socket: ``led serve`` before issue 11, the baseline),
   ``uvicorn`` (gunicorn arbiter + uvicorn httptools/uvloop workers on
   SO_REUSEPORT: today's default) and ``gunicorn-asgi`` (gunicorn's own ASGI
   worker, same arbiter and sockets). Server CPU per request comes from /proc
   (the server's whole process tree), so it is not inflated by other jobs.
3. ``mlflow models serve`` (2 workers) on the same export, logged and
   registered as the pyfunc the registry holds (``infra.registry``), at 4 and 8
   connections: throughput and p99 ratios.
4. Swap under load: moto S3 + ``led serve --workers 2`` following ACTIVE, the
   d=600 export pushed while wrk runs on the d=128 one: non-2xx and socket errors.
5. A plot of p50 / p90 / p99 latency against offered load (connections) per
   transport: ``benchmarks/results/serving_latency.png``.

wrk shares the 2 cores with the server; the load average is printed next to
every figure (the machine is shared). BLAS is pinned to one thread (per-request
work is one small mat-vec), set before numpy is imported.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infra.settings import Settings  # noqa: E402
from models.export import load_model  # noqa: E402
from serving.app import Limits, Service, load_slot_dir  # noqa: E402
from serving.index import IndexParams, Recommender, measure_recall  # noqa: E402
from infra.stack import free_port  # noqa: E402
from serving.publish import build_slot_files  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "serving.json"
PLOT = ROOT / "benchmarks" / "results" / "serving_latency.png"  # NAME_latency.png with --out NAME
LED = [sys.executable, "-m", "cli.main"]
TRANSPORTS = ("legacy", "uvicorn", "gunicorn-asgi")
DIMS = (128, 600)
PREPARE_DATE = "2026-01-16"


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values) * 1e3, q))


def load1() -> float:
    return round(os.getloadavg()[0], 2)


# --- 0: the trained exports ------------------------------------------------------------------------

def prepare(root: Path) -> None:
    """issue 11's recipe: one synthetic shop, two `led train` exports (d=128, d=600)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    events = root / "events"
    if not events.exists():
        subprocess.run([*LED, "generate", "--users", "60000", "--items", "20000", "--days", "15", "--out",
                        str(events)], check=True, cwd=ROOT, env=env)
    for dim in DIMS:
        out = root / f"model-d{dim}"
        if not out.exists():
            subprocess.run([*LED, "train", "--events", str(events), "--date", PREPARE_DATE, "--window", "14",
                            "--out", str(out), "--dim", str(dim)], check=True, cwd=ROOT, env=env)


# --- 1: index + in-process -------------------------------------------------------------------------

def make_slot(model_dir: Path, root: Path, settings: Settings) -> tuple[Path, dict, float]:
    """The slot `led push` would upload, as a local directory."""
    start = time.perf_counter()
    built = build_slot_files(model_dir, root / f"work-{model_dir.name}", settings.n_trees,
                             settings.search_k, settings.min_ann_recall, settings.seed)
    files, manifest = built.files, built.manifest
    build_s = time.perf_counter() - start
    slot = root / f"slot-{model_dir.name}"
    slot.mkdir()
    for name, path in files.items():
        shutil.copyfile(path, slot / name)
    (slot / "manifest.json").write_text(json.dumps(manifest, default=str))
    return slot, manifest, build_s


def in_process(model_dir: Path, slot: Path, queries: int) -> dict:
    model = load_model(model_dir)
    loaded = load_slot_dir(slot, "local", "local")
    rec = loaded.recommender
    exact = Recommender(model.item_ids, np.asarray(model.V), model.b, model.counts)
    timelines = model.eval_timelines[:500]
    recall100 = measure_recall(rec, exact, timelines, k=100)["recall"]
    recall10 = measure_recall(rec, exact, timelines, k=10)["recall"]
    service = Service(Limits())
    service.swap(loaded)
    bodies = [json.dumps({"items": t, "k": 10}).encode() for t in timelines]
    for t in timelines[:50]:  # warm caches
        rec.recommend(t, 10)
    rec_t, handle_t, cpu_t, exact_cpu = [], [], [], []
    for i in range(queries):
        t, body = timelines[i % len(timelines)], bodies[i % len(bodies)]
        c, s = time.thread_time(), time.perf_counter()
        rec.recommend(t, 10)
        rec_t.append(time.perf_counter() - s)
        cpu_t.append(time.thread_time() - c)  # CPU time: immune to being descheduled by other jobs
        s = time.perf_counter()
        service.handle("POST", "/recommend", body)
        handle_t.append(time.perf_counter() - s)
        if i < 300:
            c = time.thread_time()
            exact.recommend(t, 10)
            exact_cpu.append(time.thread_time() - c)
    return {"ann_recall_at_100": round(recall100, 4), "ann_recall_at_10": round(recall10, 4),
            "recommend_ms_p50": round(pct(rec_t, 50), 3), "recommend_ms_p99": round(pct(rec_t, 99), 3),
            "handler_ms_p50": round(pct(handle_t, 50), 3), "handler_ms_p99": round(pct(handle_t, 99), 3),
            "recommend_cpu_ms_p50": round(pct(cpu_t, 50), 3), "recommend_cpu_ms_p99": round(pct(cpu_t, 99), 3),
            "exact_numpy_cpu_ms_p50": round(pct(exact_cpu, 50), 3), "load_average": load1()}


# --- 2: HTTP with wrk -----------------------------------------------------------------------------

def wrk_script(bodies: list[str], path: Path, url_path: str = "/recommend") -> Path:
    lua = ",".join("[[" + b + "]]" for b in bodies[:300])
    path.write_text(f"""bodies = {{{lua}}}
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, "{url_path}", nil, bodies[(counter % #bodies) + 1])
end
""")
    return path


def tree_cpu_seconds(root_pid: int) -> float:
    """user+system CPU of ``root_pid`` and all its live descendants (workers, their children)."""
    import psutil

    try:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def run_wrk(port: int, script: Path, seconds: float, connections: int, server_pid: int | None = None,
            url_path: str = "/") -> dict:
    import resource

    load = load1()
    server_cpu = tree_cpu_seconds(server_pid) if server_pid else 0.0
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{max(1, int(round(seconds)))}s", "--latency",
                          "--timeout", "5s", "-s", str(script), f"http://127.0.0.1:{port}{url_path}"],
                         capture_output=True, text=True, timeout=seconds + 60)
    text = out.stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    server_cpu = (tree_cpu_seconds(server_pid) - server_cpu) if server_pid else None
    if out.returncode != 0 or "Requests/sec" not in text:
        print(f"wrk failed ({out.returncode}): {out.stderr.strip()[:300]}", file=sys.stderr)

    def ms(label: str) -> float | None:
        m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        if not m:
            return None
        return round(float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)], 3)

    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    requests = int(total.group(1)) if total else 0
    cpu = {}
    if server_cpu and requests:
        cpu = {"server_cpu_ms_per_request": round(1e3 * server_cpu / requests, 4),
               "wrk_cpu_ms_per_request": round(1e3 * wrk_cpu / requests, 4),
               "projected_idle_2core_rps": round(2 * requests / (server_cpu + wrk_cpu))}
    return {**cpu, "requests_per_s": float(rps.group(1)) if rps else None, "requests": requests,
            "p50_ms": ms("50%"), "p90_ms": ms("90%"), "p99_ms": ms("99%"),
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": sum(map(int, sock.groups())) if sock else 0, "connections": connections,
            "load_average": load}


def wait_ready(port: int, timeout: float = 120, path: str = "/readyz") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1).status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server on {port} not ready")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


LEGACY = """
import json, sys
from pathlib import Path
from serving.app import Limits, Service, load_slot_dir
from serving.legacy_http import bind, serve_forked
sock = bind("127.0.0.1", 0)
print(json.dumps({"listening": "http://127.0.0.1:%d" % sock.getsockname()[1]}), flush=True)
def make_service():
    svc = Service(Limits()); svc.swap(load_slot_dir(Path(sys.argv[1]), "local", "local")); return svc
serve_forked(make_service, sock, int(sys.argv[2]))
"""

MAINTAINED = """
import sys
from pathlib import Path
from infra.settings import get_settings
from serving.server import run_server
sys.exit(run_server(get_settings(), 0, Path(sys.argv[3]), workers=int(sys.argv[2]), http=sys.argv[4],
                    slot_dir=Path(sys.argv[1])))
"""


def serve_slot(slot: Path, workers: int, transport: str, root: Path) -> tuple[subprocess.Popen, int]:
    """The slot behind one transport, ``workers`` processes; returns (process, port) once ready."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LED_HOME": str(root / "home")}
    if transport == "legacy":
        args = [sys.executable, "-c", LEGACY, str(slot), str(workers)]
    else:
        args = [sys.executable, "-c", MAINTAINED, str(slot), str(workers), str(root / "cache"), transport]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    port = int(json.loads(proc.stdout.readline())["listening"].rsplit(":", 1)[1])
    wait_ready(port)
    return proc, port


def fmt_http(r: dict) -> str:
    if r.get("requests_per_s") is None:
        return f"wrk output not parsed: {r}"
    cpu = f"; server CPU {r['server_cpu_ms_per_request']} ms/req" if "server_cpu_ms_per_request" in r else ""
    return (f"{r['requests_per_s']:.0f} req/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, "
            f"non-2xx {r['non_2xx']}, socket errors {r['socket_errors']}{cpu} (load {r['load_average']})")


def http_sweep(slot: Path, bodies: list[str], root: Path, seconds: float, loads: list[int], workers: int) -> dict:
    script = wrk_script(bodies, root / "post.lua")
    out: dict = {}
    for transport in TRANSPORTS:
        proc, port = serve_slot(slot, workers, transport, root)
        try:
            run_wrk(port, script, 1, 4)  # warm-up: page in the index, open connections
            out[transport] = {}
            for connections in loads:
                r = run_wrk(port, script, seconds, connections, proc.pid)
                out[transport][connections] = r
                print(f"    {transport:13s} c={connections:<3d}: {fmt_http(r)}", flush=True)
        finally:
            stop(proc)
    return out


# --- 3: mlflow models serve -----------------------------------------------------------------------

REGISTER = """
import sys
from pathlib import Path
from infra.settings import Settings
from models.registration import register_export
settings = Settings(mlflow_tracking_uri=sys.argv[2], mlflow_model_name="bench-serving", home=Path(sys.argv[3]))
info = register_export(settings, Path(sys.argv[1]), "2026-01-16")
print(info.model_version)
"""


def mlflow_side_by_side(model_dir: Path, timelines, root: Path, seconds: float, loads: list[int],
                        workers: int) -> dict:
    """The export registered as the registry's pyfunc, served by `mlflow models serve`, same wrk."""
    tracking = f"sqlite:///{root}/mlflow.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": tracking, "MLFLOW_REGISTRY_URI": tracking,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run([sys.executable, "-c", REGISTER, str(model_dir), tracking, str(root / "mlflow-home")], cwd=root,
                   env=env, check=True, capture_output=True)
    port = free_port()
    log = open(root / "mlflow-serve.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m",
                             "models:/bench-serving@challenger", "--env-manager", "local", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", str(workers)], cwd=root, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(port, timeout=180, path="/ping")
        bodies = [json.dumps({"dataframe_records": [{"items": t}], "params": {"k": 10}}) for t in timelines]
        script = wrk_script(bodies, root / "mlflow.lua", "/invocations")
        run_wrk(port, script, 1, 2)
        out = {}
        for connections in loads:
            out[connections] = run_wrk(port, script, seconds, connections, proc.pid)
            print(f"    mlflow serve  c={connections:<3d}: {fmt_http(out[connections])}", flush=True)
        return out
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


# --- 4: swap under load ----------------------------------------------------------------------------

def swap_under_load(root: Path, model_a: Path, model_b: Path, bodies: list[str], seconds: float,
                    connections: int, workers: int) -> dict:
    from serving.publish import publish_model
    from serving.storage import BlueGreenStore, push_slot

    port = free_port()
    moto = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        settings = Settings(s3_endpoint_url=url, s3_bucket="led-bench", s3_prefix="bench", home=root / "swap-home",
                            serve_poll_seconds=0.5)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "LED_S3_ENDPOINT_URL": url, "LED_S3_BUCKET": "led-bench",
               "LED_S3_PREFIX": "bench", "LED_HOME": str(root / "swap-home"), "LED_SERVE_POLL_SECONDS": "0.5"}
        store = BlueGreenStore.from_settings(settings)
        first = publish_model(model_a, settings, store)
        # Index the second model up front: the swap under test is upload + verify + flip + reload.
        built = build_slot_files(model_b, root / "swap-b-work", settings.n_trees, settings.search_k,
                                 settings.min_ann_recall)
        files, manifest = built.files, built.manifest
        proc = subprocess.Popen([*LED, "serve", "--port", "0", "--workers", str(workers)], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            sport = int(json.loads(proc.stdout.readline())["listening"].rsplit(":", 1)[1])
            wait_ready(sport)
            script = wrk_script(bodies, root / "swap.lua")
            result: dict = {}
            runner = threading.Thread(
                target=lambda: result.update(run_wrk(sport, script, seconds, connections, proc.pid)))
            runner.start()
            time.sleep(2)
            push_start = time.time()
            second = push_slot(store, files, manifest)
            push_s = time.time() - push_start
            swapped_after = wait_for_version(sport, second.model_version, workers, push_start)
            runner.join()
            served = {json.loads(urllib.request.urlopen(f"http://127.0.0.1:{sport}/model", timeout=5).read())
                      ["model"]["model_version"] for _ in range(8 * workers)}
        finally:
            stop(proc)
        return {**result, "push_seconds": round(push_s, 2), "before": first["model_version"],
                "after": second.model_version, "served_after": sorted(served), "workers": workers,
                "seconds_from_push_to_all_workers_swapped": swapped_after}
    finally:
        stop(moto)


def wait_for_version(port: int, version: str, workers: int, since: float, timeout: float = 120) -> float | None:
    """Seconds from ``since`` until fresh connections (any worker) all answer with ``version``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        seen = set()
        for _ in range(6 * workers):
            try:
                body = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/model", timeout=2).read())
                seen.add((body.get("model") or {}).get("model_version"))
            except OSError:
                seen.add(None)
        if seen == {version}:
            return round(time.time() - since, 2)
        time.sleep(0.1)
    return None


# --- 5: the plot -----------------------------------------------------------------------------------

def plot(results: dict, path: Path) -> None:
    """Top: p50 / p90 / p99 latency against offered load (keep-alive connections, closed loop); bottom:
    throughput. One column per d, one colour per transport, mlflow models serve in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = list(results["dims"])
    fig, axes = plt.subplots(2, len(dims), figsize=(6.5 * len(dims), 8), squeeze=False, sharex=True)
    styles = {"p50_ms": ":", "p90_ms": "--", "p99_ms": "-"}
    colours = dict(zip(TRANSPORTS, ("tab:gray", "tab:blue", "tab:green")))
    for column, dim in enumerate(dims):
        lat, thr = axes[0][column], axes[1][column]
        series = dict(results["dims"][dim]["http"])
        if results["dims"][dim].get("mlflow"):
            series["mlflow models serve"] = results["dims"][dim]["mlflow"]
        for name, sweep in series.items():
            colour = colours.get(name, "tab:red")
            points = sorted(sweep.items(), key=lambda kv: int(kv[0]))
            conns = [int(c) for c, _ in points]
            for key, style in styles.items():
                lat.plot(conns, [p[key] for _, p in points], style, color=colour, marker="o", markersize=3,
                         label=f"{name} {key[:3]}")
            thr.plot(conns, [p["requests_per_s"] for _, p in points], "-", color=colour, marker="o", label=name)
        lat.axhline(5 if results["dims"][dim].get("d", 128) > 128 else 2, color="black", linewidth=0.6)
        thr.axhline(3200, color="black", linewidth=0.6)
        loads = [p["load_average"] for sweep in series.values() for p in sweep.values()]
        lat.set_title(f"{dim}: POST /recommend k=10, 2 workers (load avg {min(loads):.0f}-{max(loads):.0f})")
        lat.set_yscale("log")
        lat.set_ylabel("latency (ms); line: target p99")
        thr.set_ylabel("requests/s; line: 3200 target")
        thr.set_xscale("log", base=2)
        thr.set_xlabel("offered load: keep-alive connections (wrk, closed loop, same 2 cores)")
        lat.legend(fontsize=6, ncol=2)
        thr.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown_tables(results: dict, shown: tuple[int, ...] = (4, 8)) -> str:
    """The README tables: one per d, a row per transport at the target loads (the plot has the sweep)."""
    out = []
    for dim, entry in results["dims"].items():
        index = entry["index"]
        out += [f"**{dim}** (d={entry.get('d', dim)}), {entry['items']} items: n_trees {index['n_trees']}, bias_scale "
                f"{index['bias_scale']:.2f}, recall@100 {entry['ann_recall_at_100']} (search_k {index['search_k']}), "
                f"recall@10 {entry['ann_recall_at_10']} (k<=10 search_k {index['small_search_k']}); in-process "
                f"recommend CPU p50 {entry['recommend_cpu_ms_p50']} ms (exact numpy {entry['exact_numpy_cpu_ms_p50']} ms)",
                "", "| transport | conns | req/s | p50 ms | p99 ms | server CPU ms/req | non-2xx | load avg |",
                "|---|---|---|---|---|---|---|---|"]
        series = dict(entry["http"])
        if entry.get("mlflow"):
            series["mlflow models serve"] = entry["mlflow"]
        for name, sweep in series.items():
            for conns, r in sorted(sweep.items(), key=lambda kv: int(kv[0])):
                if int(conns) not in shown:
                    continue
                out.append(f"| {name} | {conns} | {r['requests_per_s']:.0f} | {r['p50_ms']} | {r['p99_ms']} | "
                           f"{r.get('server_cpu_ms_per_request')} | {r['non_2xx']} | {r['load_average']} |")
        for conns, ratio in (entry.get("vs_mlflow") or {}).items():
            out.append(f"\nvs mlflow models serve at {conns} connections: throughput led serve / mlflow = "
                       f"{ratio['throughput_ratio']}x, p99 mlflow / led serve = {ratio['p99_ratio']}x")
        out.append("")
    return "\n".join(out)


# --- optional: LED vs Mult-VAE (synthetic arrays) ----------------------------------------------------------------------------

def vae_forward_top100(W1, b1, W2, b2, W3, b3, W4, b4, items: np.ndarray) -> np.ndarray:
    """Mult-VAE inference for one user: multi-hot input (row gather), 600-200(mean)-600, logits over I."""
    h = np.tanh(W1[items].sum(axis=0) * np.float32(1 / np.sqrt(len(items))) + b1)  # L2-normalised multi-hot
    mu = h @ W2 + b2  # 200-d posterior mean (no sampling at inference)
    h = np.tanh(mu @ W3 + b3)
    logits = h @ W4 + b4
    assert logits.dtype == np.float32  # a float64 upcast would copy W4 on every call and flatter LED
    logits[items] = -np.inf
    top = np.argpartition(-logits, 99)[:100]
    return top[np.argsort(-logits[top])]


def led_vs_vae(root: Path, items: int, dim: int, settings: Settings, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    from serving.synthetic import make_synthetic_model

    model_dir = make_synthetic_model(root / f"vae-{items}", items=items, dim=dim, seed=11, timelines=500)
    slot, manifest, build_s = make_slot(model_dir, root, settings)
    model = load_model(model_dir)
    loaded = load_slot_dir(slot, "local", "local")
    exact = Recommender(model.item_ids, np.asarray(model.V), model.b, model.counts)
    timelines = model.eval_timelines
    params = loaded.recommender.params
    result = {"items": items, "dim": dim, "index_build_seconds": round(build_s, 2),
              "bias_scale": manifest["index"]["bias_scale"]}
    s = 0.01
    W1 = (rng.standard_normal((items, 600), dtype=np.float32) * s)
    W2, W3 = (rng.standard_normal((600, 200), dtype=np.float32) * s), (rng.standard_normal((200, 600), dtype=np.float32) * s)
    W4 = rng.standard_normal((600, items), dtype=np.float32) * s
    b1, b2, b3, b4 = (np.zeros(n, np.float32) for n in (600, 200, 600, items))
    positions = [np.array([loaded.recommender.position[i] for i in t]) for t in timelines]
    vae_t = []
    for i in range(repeats):
        x = positions[i % len(positions)]
        t0 = time.perf_counter()
        vae_forward_top100(W1, b1, W2, b2, W3, b3, W4, b4, x)
        vae_t.append(time.perf_counter() - t0)
    result["vae_ms_p50"] = round(pct(vae_t, 50), 3)
    result["vae_ms_p99"] = round(pct(vae_t, 99), 3)
    del W1, W4
    points = []
    for search_k in sorted({settings.search_k, 4 * settings.search_k, 10 * settings.search_k}):
        p = IndexParams(params.dim, params.n_trees, search_k, params.bias_shift, params.bias_scale)
        rec = Recommender(model.item_ids, loaded.recommender.V, loaded.recommender.b, loaded.recommender.counts,
                          loaded.recommender.index, p)
        recall = measure_recall(rec, exact, timelines[:200], k=100)["recall"]
        led_t = []
        for i in range(repeats * 4):
            t = timelines[i % len(timelines)]
            t0 = time.perf_counter()
            rec.recommend(t, 100)
            led_t.append(time.perf_counter() - t0)
        led50 = pct(led_t, 50)
        points.append({"search_k": search_k, "ann_recall_at_100": round(recall, 4), "led_ms_p50": round(led50, 3),
                       "led_ms_p99": round(pct(led_t, 99), 3), "speedup_p50": round(result["vae_ms_p50"] / led50, 1)})
    result["led"] = points
    # Exact numpy LED scoring, for reference (what the ANN index saves).
    ex_t = []
    for i in range(repeats):
        t = timelines[i % len(timelines)]
        t0 = time.perf_counter()
        exact.recommend(t, 100)
        ex_t.append(time.perf_counter() - t0)
    result["led_exact_numpy_ms_p50"] = round(pct(ex_t, 50), 3)
    return result


# --- main ----------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prepare", type=Path, default=None, help="write the two trained exports into this folder")
    ap.add_argument("--models", type=Path, default=None,
                    help="folder of exports named model-*/ (--prepare writes model-d128/ and model-d600/)")
    ap.add_argument("--out", default="serving", help="results name: benchmarks/results/NAME.json (+ _latency.png)")
    ap.add_argument("--quick", action="store_true", help="3 s points, loads 4 and 8 only, no swap/mlflow")
    ap.add_argument("--seconds", type=float, default=None, help="wrk duration per point")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-mlflow", action="store_true")
    ap.add_argument("--headline", action="store_true", help="also LED vs Mult-VAE per user (synthetic arrays)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    if args.prepare:
        prepare(args.prepare)
        return 0
    exports = sorted(args.models.glob("model-*")) if args.models else []
    if not exports:
        print("need --models DIR holding exports named model-*/ (make two with --prepare DIR)", file=sys.stderr)
        return 2
    if shutil.which("wrk") is None:
        print("wrk (the load generator) is not installed: apt-get update && apt-get install -y wrk", file=sys.stderr)
        return 2
    seconds = args.seconds or (3 if args.quick else 10)
    loads = [4, 8] if args.quick else [1, 2, 4, 8, 16]
    settings = Settings()
    print(f"settings: n_trees={settings.n_trees} search_k={settings.search_k} min_ann_recall="
          f"{settings.min_ann_recall}; {os.cpu_count()} cores, load {load1()}", flush=True)
    results: dict = {"settings": {"n_trees": settings.n_trees, "search_k": settings.search_k},
                     "workers": args.workers, "wrk_seconds": seconds, "load_average_at_start": os.getloadavg(),
                     "dims": {}}
    root = Path(tempfile.mkdtemp(prefix="led-bench-serving-"))
    try:
        for model_dir in exports:
            model = load_model(model_dir)
            dim = model_dir.name.removeprefix("model-")  # the results key: d128, d600, ml20m-d128 ...
            print(f"\n== trained export {model_dir.name} (d={model.dim}): {len(model.item_ids)} items, "
                  f"{len(model.eval_timelines)} held-out timelines", flush=True)
            slot, manifest, build_s = make_slot(model_dir, root, settings)
            index = manifest["index"]
            ip = in_process(model_dir, slot, 500 if args.quick else 3000)
            print(f"  index: build+measure {build_s:.1f} s, n_trees {index['n_trees']}, bias_scale "
                  f"{index['bias_scale']:.2f}; recall@100 {ip['ann_recall_at_100']} (search_k {index['search_k']}), "
                  f"recall@10 {ip['ann_recall_at_10']} (search_k {index['small_search_k']})", flush=True)
            print(f"  in-process recommend k=10: wall p50 {ip['recommend_ms_p50']} / p99 {ip['recommend_ms_p99']} ms, "
                  f"CPU p50 {ip['recommend_cpu_ms_p50']} / p99 {ip['recommend_cpu_ms_p99']} ms (exact numpy CPU p50 "
                  f"{ip['exact_numpy_cpu_ms_p50']} ms); handler wall p50 {ip['handler_ms_p50']} / p99 "
                  f"{ip['handler_ms_p99']} ms (load {ip['load_average']})", flush=True)
            bodies = [json.dumps({"items": t, "k": 10}) for t in model.eval_timelines[:300]]
            print(f"  HTTP (wrk -t1 -cN -d{seconds:.0f}s, POST /recommend k=10, {args.workers} workers):", flush=True)
            http = http_sweep(slot, bodies, root, seconds, loads, args.workers)
            entry = {"d": model.dim, "items": len(model.item_ids), "index_build_seconds": round(build_s, 2), "index": index,
                     "ann_report_small_k": manifest["ann_report"]["small_k"], **ip, "http": http}
            if not (args.quick or args.skip_mlflow):
                print("  mlflow models serve (registered pyfunc, same export, same wrk):", flush=True)
                entry["mlflow"] = mlflow_side_by_side(model_dir, model.eval_timelines[:300], root, seconds, [4, 8],
                                                      args.workers)
                for c in (4, 8):
                    ours, theirs = http["uvicorn"][c], entry["mlflow"][c]
                    entry.setdefault("vs_mlflow", {})[c] = {
                        "throughput_ratio": round(ours["requests_per_s"] / theirs["requests_per_s"], 1),
                        "p99_ratio": round(theirs["p99_ms"] / ours["p99_ms"], 1)}
                    print(f"    c={c}: throughput led serve / mlflow = {entry['vs_mlflow'][c]['throughput_ratio']}x, "
                          f"p99 mlflow / led serve = {entry['vs_mlflow'][c]['p99_ratio']}x", flush=True)
            results["dims"][dim] = entry
        if not args.quick and all((args.models / f"model-d{d}").is_dir() for d in DIMS):
            print("\n== swap under load (moto S3 + led serve --workers 2; d=600 export pushed while wrk runs on "
                  "d=128 timelines)", flush=True)
            bodies = [json.dumps({"items": t, "k": 10}) for t in load_model(args.models / "model-d128").eval_timelines[:300]]
            swap = swap_under_load(root, args.models / "model-d128", args.models / "model-d600", bodies,
                                   max(2 * seconds, 20), 8, args.workers)
            print(f"    {fmt_http(swap)}; pushed {swap['before']} -> {swap['after']} in {swap['push_seconds']} s, "
                  f"all workers swapped {swap['seconds_from_push_to_all_workers_swapped']} s after the push started",
                  flush=True)
            results["swap_under_load"] = swap
        if args.headline:
            results["headline"] = [led_vs_vae(root, n, 128, settings, 300) for n in (20000, 200000)]
            for r in results["headline"]:
                print(f"  {r['items']} items: Mult-VAE p50 {r['vae_ms_p50']} ms, LED {r['led']}", flush=True)
        results["load_average_at_end"] = os.getloadavg()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    name = args.out + ("-quick" if args.quick else "")
    out = RESULTS.with_name(f"{name}.json")
    out.write_text(json.dumps(results, indent=2))
    plot(results, PLOT.with_name(f"{name}_latency.png"))
    print("\n" + markdown_tables(results))
    print(f"\nwrote {out} and the latency plot")
    return 0


if __name__ == "__main__":
    sys.exit(main())

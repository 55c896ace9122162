"""Serving benchmark: recall, in-process latency, HTTP throughput, swap under load, LED vs Mult-VAE.

    nice -n 10 .venv/bin/python benchmarks/serving.py            # full run (~4-6 min on 2 cores)
    nice -n 10 .venv/bin/python benchmarks/serving.py --quick    # smaller, shorter (smoke)

What it measures (all on this machine, loopback only, bounded durations):

1. For 20k items at d=600 and d=128 (synthetic clustered catalog, Zipf
   popularity, topical held-out timelines; ``serving.synthetic``): index build
   time and exact-vs-ANN recall@100 / recall@10 at the configured search_k.
2. In-process latency of ``Recommender.recommend`` (k=10) and of the whole
   request handler (JSON parse + recommend + JSON encode): p50 / p99.
3. HTTP throughput and latency with ``wrk`` (POST /recommend, k=10, keep-alive,
   1 thread, ``--connections``), for the asyncio transport with 1 and 2 worker
   processes and the stdlib ThreadingHTTPServer (the comparison stack). wrk runs
   on the same 2 cores, so server and load generator compete for CPU.
4. Swap under load: moto S3 server + ``led serve`` following ACTIVE; wrk runs
   while a second model is pushed; counts non-2xx and socket errors.
5. The paper's headline: LED per-user recommend (encode + Annoy top-100)
   against a Mult-VAE forward pass (600-200-600 MLP, tanh, random weights; the
   sparse input layer done as a row gather, which favours the VAE) + top-100,
   batch size 1, at 20k and 200k items; ratio of medians, with the ANN recall.

BLAS is pinned to one thread (per-request work is one small mat-vec, and the
machine is shared): set before numpy is imported.
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
import socket  # noqa: E402
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
from serving.index import Recommender, measure_recall, IndexParams  # noqa: E402
from serving.publish import build_slot_files  # noqa: E402
from serving.synthetic import make_synthetic_model  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "serving.json"


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values) * 1e3, q))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- 1/2: index + in-process ------------------------------------------------------------------------

def make_slot(root: Path, items: int, dim: int, settings: Settings, seed: int = 0, version: str | None = None):
    """Synthetic export + index (recall measured on its held-out timelines) as a local slot dir."""
    model_dir = make_synthetic_model(root / f"model-{items}-{dim}-{seed}", items=items, dim=dim, seed=seed,
                                     timelines=500, card={"model_version": version} if version else None)
    start = time.perf_counter()
    files, manifest = build_slot_files(model_dir, root / f"work-{items}-{dim}-{seed}", settings.n_trees,
                                       settings.search_k, settings.min_ann_recall)
    build_s = time.perf_counter() - start
    slot = root / f"slot-{items}-{dim}-{seed}"
    slot.mkdir()
    for name, path in files.items():
        shutil.copyfile(path, slot / name)
    (slot / "manifest.json").write_text(json.dumps(manifest, default=str))
    return model_dir, slot, manifest, build_s


def in_process(model_dir: Path, slot: Path, queries: int) -> dict:
    model = load_model(model_dir)
    loaded = load_slot_dir(slot, "local", "local")
    rec = loaded.recommender
    exact = Recommender(model.item_ids, np.asarray(model.V), model.b, model.counts)
    timelines = model.eval_timelines
    recall100 = measure_recall(rec, exact, timelines, k=100)["recall"]
    recall10 = measure_recall(rec, exact, timelines, k=10)["recall"]
    service = Service(Limits())
    service.swap(loaded)
    bodies = [json.dumps({"items": t, "k": 10}).encode() for t in timelines]
    for t in timelines[:50]:  # warm caches
        rec.recommend(t, 10)
    rec_t, handle_t, cpu_t = [], [], []
    for i in range(queries):
        t, body = timelines[i % len(timelines)], bodies[i % len(bodies)]
        c, s = time.thread_time(), time.perf_counter()
        rec.recommend(t, 10)
        rec_t.append(time.perf_counter() - s)
        cpu_t.append(time.thread_time() - c)  # CPU time: immune to being descheduled by other jobs
        s = time.perf_counter()
        service.handle("POST", "/recommend", body)
        handle_t.append(time.perf_counter() - s)
    return {"ann_recall_at_100": round(recall100, 4), "ann_recall_at_10": round(recall10, 4),
            "recommend_ms_p50": round(pct(rec_t, 50), 3), "recommend_ms_p99": round(pct(rec_t, 99), 3),
            "handler_ms_p50": round(pct(handle_t, 50), 3), "handler_ms_p99": round(pct(handle_t, 99), 3),
            "recommend_cpu_ms_p50": round(pct(cpu_t, 50), 3), "recommend_cpu_ms_p99": round(pct(cpu_t, 99), 3)}


# --- 3: HTTP with wrk -----------------------------------------------------------------------------

def wrk_script(timelines: list[list[str]], path: Path) -> Path:
    bodies = ",".join("[[" + json.dumps({"items": t, "k": 10}) + "]]" for t in timelines[:300])
    path.write_text(f"""bodies = {{{bodies}}}
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, "/recommend", nil, bodies[(counter % #bodies) + 1])
end
""")
    return path


def process_tree_cpu_seconds(pid: int) -> float:
    """user+system CPU of ``pid`` and its direct children (the serving workers), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:  # fields[1] = ppid
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def run_wrk(port: int, script: Path, seconds: float, connections: int, server_pid: int | None = None) -> dict:
    import resource

    server_cpu = process_tree_cpu_seconds(server_pid) if server_pid else 0.0
    wrk_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{max(1, int(round(seconds)))}s", "--latency", "-s", str(script),
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=seconds + 30)
    text = out.stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (after.ru_utime + after.ru_stime) - (wrk_cpu.ru_utime + wrk_cpu.ru_stime)
    server_cpu = (process_tree_cpu_seconds(server_pid) - server_cpu) if server_pid else None
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
        # What the same code would do on this box if it were idle: requests per CPU-second of server + wrk,
        # times the 2 cores (contention from other jobs inflates wall time, not CPU time).
        cpu = {"server_cpu_ms_per_request": round(1e3 * server_cpu / requests, 4),
               "wrk_cpu_ms_per_request": round(1e3 * wrk_cpu / requests, 4),
               "projected_idle_2core_rps": round(2 * requests / (server_cpu + wrk_cpu))}
    return {**cpu, "requests_per_s": float(rps.group(1)) if rps else None, "requests": requests,
            "p50_ms": ms("50%"), "p90_ms": ms("90%"), "p99_ms": ms("99%"),
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": sum(map(int, sock.groups())) if sock else 0, "connections": connections}


def start_server(args: list[str], env: dict | None = None) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--port", "0", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    port = int(json.loads(proc.stdout.readline())["listening"].rsplit(":", 1)[1])
    return proc, port


def serve_slot(slot: Path, workers: int, http: str) -> tuple[subprocess.Popen, int]:
    """Run the real service on a prebuilt slot dir (same code path as ``led serve``)."""
    code = (
        "import os,sys,json; os.environ.setdefault('OPENBLAS_NUM_THREADS','1')\n"
        "from pathlib import Path\n"
        "from infra.settings import Settings\n"
        "from serving.app import bind, serve_forever\n"
        "import signal\n"
        f"s = Settings(); sock = bind('127.0.0.1', 0)\n"
        "print(json.dumps({'listening': 'http://127.0.0.1:%d' % sock.getsockname()[1]}), flush=True)\n"
        f"workers = {workers}\n"
        "kids = []\n"
        "for _ in range(workers if workers > 1 else 0):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        f"        serve_forever(s, sock, Path('.'), Path({str(slot)!r}), {http!r}); os._exit(0)\n"
        "    kids.append(pid)\n"
        "if kids:\n"
        "    signal.signal(signal.SIGTERM, lambda *a: [os.kill(k, signal.SIGTERM) for k in kids])\n"
        "    [os.waitpid(k, 0) for k in kids]\n"
        "else:\n"
        f"    serve_forever(s, sock, Path('.'), Path({str(slot)!r}), {http!r})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    port = int(json.loads(proc.stdout.readline())["listening"].rsplit(":", 1)[1])
    wait_ready(port)
    return proc, port


def wait_for_version(port: int, version: str, workers: int, since: float, timeout: float = 60) -> float | None:
    """Seconds from ``since`` until fresh connections (any worker) all answer with ``version``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        seen = set()
        for _ in range(4 * workers):
            try:
                body = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/model", timeout=2).read())
                seen.add((body.get("model") or {}).get("model_version"))
            except OSError:
                seen.add(None)
        if seen == {version}:
            return round(time.time() - since, 2)
        time.sleep(0.1)
    return None


def wait_ready(port: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on {port} not ready")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def http_runs(slot: Path, timelines, tmp: Path, seconds: float, connections: int, transports) -> dict:
    script = wrk_script(timelines, tmp / "post.lua")
    out = {}
    for http, workers in transports:
        proc, port = serve_slot(slot, workers, http)
        try:
            run_wrk(port, script, 1, connections)  # warm-up
            out[f"{http}-{workers}w"] = run_wrk(port, script, seconds, connections, proc.pid)
        finally:
            stop(proc)
        print(f"    {http:8s} workers={workers}: {fmt_http(out[f'{http}-{workers}w'])}", flush=True)
    return out


def fmt_http(r: dict) -> str:
    if r.get("requests_per_s") is None:
        return f"wrk output not parsed: {r}"
    cpu = (f"; server CPU {r['server_cpu_ms_per_request']} ms/req, wrk {r['wrk_cpu_ms_per_request']} ms/req "
           f"-> idle 2-core projection {r['projected_idle_2core_rps']} req/s") if "server_cpu_ms_per_request" in r else ""
    return (f"{r['requests_per_s']:.0f} req/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, "
            f"non-2xx {r['non_2xx']}, socket errors {r['socket_errors']}{cpu}")


# --- 4: swap under load ----------------------------------------------------------------------------

def swap_under_load(root: Path, model_a: Path, model_b: Path, timelines, seconds: float, connections: int,
                    workers: int) -> dict:
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
        settings = Settings(s3_endpoint_url=url, s3_bucket="led-bench", s3_prefix="bench", home=root / "home",
                            serve_poll_seconds=0.5)
        env = {**os.environ, "LED_S3_ENDPOINT_URL": url, "LED_S3_BUCKET": "led-bench", "LED_S3_PREFIX": "bench",
               "LED_HOME": str(root / "home"), "LED_SERVE_POLL_SECONDS": "0.5",
               "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
               "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing")}
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        store = BlueGreenStore.from_settings(settings)
        first = publish_model(model_a, settings, store)
        # Index the second model up front: the swap under test is upload + verify + flip + reload.
        files, manifest = build_slot_files(model_b, root / "swap-b-work", settings.n_trees, settings.search_k,
                                           settings.min_ann_recall)
        proc, sport = start_server(["--workers", str(workers)], env)
        try:
            wait_ready(sport)
            script = wrk_script(timelines, root / "swap.lua")
            result: dict = {}
            runner = threading.Thread(
                target=lambda: result.update(run_wrk(sport, script, seconds, connections, proc.pid)))
            runner.start()
            time.sleep(2)
            push_start = time.time()
            second = push_slot(store, files, manifest)
            push_s = time.time() - push_start
            swapped_after = wait_for_version(sport, second["model_version"], workers, push_start)
            runner.join()
            # Fresh connections land on any worker: every worker must now serve the new model.
            served = {json.loads(urllib.request.urlopen(f"http://127.0.0.1:{sport}/model", timeout=5).read())
                      ["model"]["model_version"] for _ in range(8 * workers)}
        finally:
            stop(proc)
        return {**result, "push_seconds": round(push_s, 2), "before": first["model_version"],
                "after": second["model_version"], "served_after": sorted(served), "workers": workers,
                "seconds_from_push_to_all_workers_swapped": swapped_after}
    finally:
        stop(moto)


# --- 5: LED vs Mult-VAE ----------------------------------------------------------------------------

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
    model_dir, slot, manifest, build_s = make_slot(root, items, dim, settings, seed=11)
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
    ap.add_argument("--quick", action="store_true", help="smaller catalogs and shorter runs (smoke test)")
    ap.add_argument("--seconds", type=float, default=None, help="wrk duration per run")
    ap.add_argument("--connections", type=int, default=8, help="wrk keep-alive connections")
    ap.add_argument("--skip-headline", action="store_true")
    args = ap.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop the servers, wrk and moto we started.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    quick = args.quick
    items = 5000 if quick else 20000
    seconds = args.seconds or (3 if quick else 10)
    settings = Settings()
    print(f"settings: n_trees={settings.n_trees} search_k={settings.search_k} "
          f"min_ann_recall={settings.min_ann_recall}; machine: {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    results: dict = {"settings": {"n_trees": settings.n_trees, "search_k": settings.search_k},
                     "load_average_at_start": os.getloadavg(), "items": items, "dims": {}}
    root = Path(tempfile.mkdtemp(prefix="led-bench-serving-"))
    try:
        for dim in (600, 128):
            print(f"\n== {items} items, d={dim}", flush=True)
            model_dir, slot, manifest, build_s = make_slot(root, items, dim, settings)
            ip = in_process(model_dir, slot, 500 if quick else 3000)
            print(f"  index: build+measure {build_s:.1f} s, bias_scale {manifest['index']['bias_scale']:.2f}; "
                  f"ANN recall@100 {ip['ann_recall_at_100']} (search_k {manifest['index']['search_k']}), recall@10 "
                  f"{ip['ann_recall_at_10']} (search_k {manifest['index']['small_search_k']})", flush=True)
            print(f"  in-process recommend k=10: p50 {ip['recommend_ms_p50']} ms, p99 {ip['recommend_ms_p99']} ms; "
                  f"full handler (JSON in/out): p50 {ip['handler_ms_p50']} ms, p99 {ip['handler_ms_p99']} ms; "
                  f"recommend CPU time p50 {ip['recommend_cpu_ms_p50']} ms, p99 {ip['recommend_cpu_ms_p99']} ms",
                  flush=True)
            timelines = load_model(model_dir).eval_timelines
            transports = [("asyncio", 1), ("asyncio", 2), ("stdlib", 1)] if dim == 128 else [("asyncio", 1),
                                                                                            ("asyncio", 2)]
            print(f"  HTTP (wrk -t1 -c{args.connections} -d{seconds}s, POST /recommend k=10):", flush=True)
            http = http_runs(slot, timelines, root, seconds, args.connections, transports)
            results["dims"][dim] = {"index_build_seconds": round(build_s, 2),
                                    "bias_scale": manifest["index"]["bias_scale"],
                                    "search_k": manifest["index"]["search_k"],
                                    "small_search_k": manifest["index"]["small_search_k"], **ip, "http": http}
            if dim == 128:
                model_b = make_synthetic_model(root / "swap-b", items=items, dim=dim, seed=5, timelines=500,
                                               card={"model_version": "bench-b"})
                model_a = make_synthetic_model(root / "swap-a", items=items, dim=dim, seed=0, timelines=500,
                                               card={"model_version": "bench-a"})
                print("  swap under load (moto S3 + led serve --workers 2, push during wrk):", flush=True)
                swap = swap_under_load(root, model_a, model_b, timelines, max(2 * seconds, 12), args.connections, 2)
                print(f"    {fmt_http(swap)}; pushed {swap['before']} -> {swap['after']} in {swap['push_seconds']} s "
                      f"(all workers swapped {swap['seconds_from_push_to_all_workers_swapped']} s after the push "
                      f"started), serving {swap['served_after']} after", flush=True)
                results["swap_under_load"] = swap
        if not args.skip_headline:
            print("\n== LED vs Mult-VAE, per user (batch 1), top-100", flush=True)
            results["headline"] = []
            for n in ((5000, 50000) if quick else (20000, 200000)):
                r = led_vs_vae(root, n, 128, settings, 100 if quick else 300)
                results["headline"].append(r)
                for p in r["led"]:
                    print(f"  {n:>6} items: Mult-VAE p50 {r['vae_ms_p50']} ms; LED (d=128) search_k={p['search_k']} "
                          f"p50 {p['led_ms_p50']} ms, recall@100 {p['ann_recall_at_100']} -> {p['speedup_p50']}x "
                          f"(exact numpy LED {r['led_exact_numpy_ms_p50']} ms)", flush=True)
        results["load_average_at_end"] = os.getloadavg()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if not quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {RESULTS}")
    else:
        print(json.dumps(results)[:2000])
    return 0


if __name__ == "__main__":
    sys.exit(main())

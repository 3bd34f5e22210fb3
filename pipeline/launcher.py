"""Starts generator processes (`run.py generate ...`) and stops them, leaving no orphans.

Generators are separate OS processes started from the command line, not forked: each gets a clean
interpreter for vLLM, and the same command starts one on another machine.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline.config import Config, dumps, dumps_generator
from pipeline.transport import Addresses

log = logging.getLogger(__name__)

RUN_PY = Path(__file__).resolve().parent.parent / "run.py"


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int) -> None:
    """In a launched generator: ask the kernel to send SIGTERM when the learner that started it dies,
    however it dies (SIGKILL, out-of-memory kill), so no engine outlives its run. Needs nothing of the
    dead process. If the learner is already gone, exit now."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d); generator.learner_timeout_s still applies",
                        ctypes.get_errno())
    if os.getppid() != parent_pid:  # it died before the request above took effect
        raise SystemExit(f"the learner (pid {parent_pid}) that launched this generator is gone")


def cpu_binding(workers: int) -> str:
    """vLLM's CPU backend binds each tensor-parallel worker's threads to cores (`VLLM_CPU_OMP_THREADS_BIND`;
    without it, start-up fails on NUMA binding): this process's cores, split evenly among the workers."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < workers:
        raise ValueError(f"generator.tensor_parallel_size = {workers} on CPU needs a core per worker; "
                         f"this process may use {len(cores)}")
    per = len(cores) // workers
    return "|".join(",".join(map(str, cores[i * per:(i + 1) * per])) for i in range(workers))


class Launcher:
    def __init__(self, cfg: Config, addresses: Addresses, model_path: str = "", initial_version: int = 0,
                 extra_args: list[str] | None = None, weights_backend: str | None = None):
        """`weights_backend`: the weight group's, as the learner chose it from its device."""
        self.cfg = cfg
        self.weights_backend = weights_backend
        self.addresses = addresses
        self.model_path = model_path
        self.initial_version = initial_version
        self.extra_args = extra_args or []  # e.g. the benchmark's stand-in engine
        self.run_dir = cfg.run_dir
        (self.run_dir / "resolved_config.json").write_text(dumps(cfg))  # the whole run's, for people
        self.config_file = self.run_dir / "generator.json"  # what a generator reads: its sections only
        self.config_file.write_text(dumps_generator(cfg))
        self.procs: dict[int, subprocess.Popen] = {}

    def starting_from(self, model_path: str, version: int, weights_backend: str) -> None:
        """What every generator starts from, as the learner decided it (a resumed run's checkpoint)."""
        self.model_path, self.initial_version, self.weights_backend = model_path, version, weights_backend

    def command(self, generator_id: int) -> list[str]:
        a = self.addresses
        return [sys.executable, str(RUN_PY), "generate", "--config-json", str(self.config_file),
                "--generator-id", str(generator_id), "--host", a.host,
                "--control-port", str(a.control_port), "--rollout-port", str(a.rollout_port),
                "--model-path", self.model_path, "--initial-version", str(self.initial_version),
                "--parent-pid", str(os.getpid()),
                *(["--weights-backend", self.weights_backend] if self.weights_backend else []), *self.extra_args]

    def start(self, generator_id: int) -> None:
        env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0",
                   OMP_NUM_THREADS=str(self.cfg.run.torch_threads))
        devices = self.cfg.generator.devices
        if devices:  # split pools: each generator sees only its own GPU(s)
            env["CUDA_VISIBLE_DEVICES"] = devices[generator_id % len(devices)]
        elif self.cfg.generator.tensor_parallel_size > 1:
            env.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_binding(self.cfg.generator.tensor_parallel_size))
        cmd = self.command(generator_id)
        logfile = open(self.run_dir / f"generator-{generator_id}.log", "ab")
        # the exact command first: the template for starting a generator by hand on another node
        logfile.write(f"# {shlex.join(cmd)}\n".encode())
        logfile.flush()
        # A new session: the generator's own children (verifier pool) go with its process group.
        self.procs[generator_id] = subprocess.Popen(cmd, env=env, stdout=logfile,
                                                    stderr=subprocess.STDOUT, start_new_session=True)
        logfile.close()

    def kill(self, generator_id: int) -> None:
        p = self.procs.get(generator_id)
        if p is not None and p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=10)

    def manages(self, generator_id: int) -> bool:
        """Started by this launcher (else it joined the run by itself)."""
        return generator_id in self.procs

    def dead(self) -> dict[int, int]:
        """Generators that have exited, with their exit codes."""
        return {i: p.returncode for i, p in self.procs.items() if p.poll() is not None}

    def log_tail(self, generator_id: int, lines: int = 20) -> str:
        path = self.run_dir / f"generator-{generator_id}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self, timeout_s: float = 20.0) -> None:
        """Wait for generators told to stop; then SIGTERM, then SIGKILL their process groups."""
        deadline = time.monotonic() + timeout_s
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            for p in self.procs.values():
                if p.poll() is None and sig is not None:
                    try:
                        os.killpg(p.pid, sig)
                    except ProcessLookupError:
                        pass
            while time.monotonic() < deadline and any(p.poll() is None for p in self.procs.values()):
                time.sleep(0.1)
            if all(p.poll() is not None for p in self.procs.values()):
                return
            deadline = time.monotonic() + 5.0

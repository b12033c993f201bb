"""`pgolf train | eval | audit | info | data | bundle | bench | export | stats | plot | compare | sample`: the command line.

Every command resolves one Config (preset < --config < env vars < --set), and every user
error ends as one line on stderr with exit status 2.
"""

import json
import os
import sys
from pathlib import Path

from pgolf.cli_args import build_parser
from pgolf.config import ConfigError, config_to_dict, resolve_config
from pgolf.config_tree import Config
from pgolf.errors import PgolfError
from pgolf.interrupts import RunInterrupted


def _config_from_args(args) -> tuple[Config, list[str]]:
    preset = args.preset if (args.preset or args.config) else "smoke"
    return resolve_config(preset, args.config, None, args.set)


def _use_embedded_corpus(cfg: Config, log=print) -> None:
    """Point an unset data.path at the embedded corpus, preparing it on the first rank only."""
    if cfg.data.path:
        return
    from pgolf.data.corpus import prepare_embedded_corpus
    from pgolf.data.paths import corpus_cache_root
    from pgolf.dist import init_comm
    root = corpus_cache_root(cfg.data.cache_dir)
    try:
        os.makedirs(root, exist_ok=True)
        writable = os.access(root, os.W_OK | os.X_OK)
    except OSError as e:
        raise ConfigError(f"cannot create the data cache {root} ({e.strerror}): set PGOLF_CACHE or "
                          "data.cache_dir to a writable folder") from None
    if not writable:
        raise ConfigError(f"the data cache {root} is not writable: set PGOLF_CACHE or data.cache_dir to a "
                          "writable folder")
    comm = init_comm(cfg.run.device, cfg.run.collective_timeout_seconds)
    info = None
    if comm.rank == 0:
        info = prepare_embedded_corpus(cfg.data.cache_dir, cfg.model.vocab_size, log=log,
                                       tokenizer_path=cfg.data.tokenizer_path)
    comm.barrier()
    if info is None:
        info = prepare_embedded_corpus(cfg.data.cache_dir, cfg.model.vocab_size, log=lambda *_: None,
                                       tokenizer_path=cfg.data.tokenizer_path)
    cfg.data.path = info["data_path"]
    cfg.data.train_pattern = os.path.basename(info["train_pattern"])
    cfg.data.val_pattern = os.path.basename(info["val_pattern"])
    cfg.data.tokenizer_path = info["tokenizer_path"]


def bundle_code_bytes(cfg: Config) -> int:
    """Bytes of the counted train_gpt.py this run would ship (the challenge's code bytes):
    the file `pgolf export` writes, so without this machine's paths."""
    from pgolf.bundle import shipped_files
    return len(shipped_files(cfg)["train_gpt.py"].encode("utf-8"))


def info_precision(cfg: Config) -> dict[str, str]:
    """What a run of cfg would choose on this machine for run.low_precision, and why
    (run.device=cuda is taken at its word, so `info` works where CUDA is absent)."""
    import torch

    from pgolf.hw import choose_precision, pick_device
    device = torch.device("cuda") if cfg.run.device == "cuda" else pick_device(cfg.run.device)
    return choose_precision(cfg.run.low_precision, device).fields(cfg.model.embed_dtype)


def cmd_train(args) -> int:
    from pgolf.bundle import shipped_files
    from pgolf.eval.legality import audit
    from pgolf.run import resume_config, train
    if args.resume:
        if args.preset or args.config or args.set:
            raise ConfigError("--resume continues a run with its saved config.toml; drop --preset/--config/--set")
        cfg, warnings, out = resume_config(args.resume), [], args.resume
    else:
        cfg, warnings = _config_from_args(args)
        out = args.out or ""
        if not out and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            out = os.path.join("runs", "torchrun-" + os.environ.get("TORCHELASTIC_RUN_ID", "run"))
    from pgolf.trackers import check_trackers, open_trackers
    check_trackers(cfg.run.trackers)  # a missing package fails now, not mid-run
    sinks = (lambda d: open_trackers(cfg.run.trackers, d, config_to_dict(cfg))) if cfg.run.trackers else None
    code_files = shipped_files(cfg)
    _use_embedded_corpus(cfg)
    metrics = train(cfg, out, code_bytes=len(code_files["train_gpt.py"].encode("utf-8")), resume=bool(args.resume),
                    warnings=warnings, auditor=audit, code_files=code_files, sinks=sinks)
    if int(os.environ.get("RANK", "0")) == 0:
        from pgolf.plot import write_run_plots
        write_run_plots(metrics["out_dir"], warn=lambda m: print(m, file=sys.stderr))
        from pgolf.run import stopped_note
        print(f"val_bpb:{metrics['val_bpb']:.6f} val_loss:{metrics['val_loss']:.6f} "
              f"artifact_bytes:{metrics['artifact_bytes']} legal:{metrics['legal']} "
              f"train_time_s:{metrics['train_time_s']:.1f} wall_time_s:{metrics['wall_time_s']:.1f}"
              f"{stopped_note(metrics)}")
    return 0


def _load_run(target: str, sets: list[str]) -> tuple[Config, str]:
    """(config, artifact path) from a run folder or an artifact file."""
    from pgolf.runfolder import open_run
    run = open_run(target, sets)
    for note in run.notes:
        print(f"note: {note}", file=sys.stderr)
    return run.config, str(run.artifact)


def cmd_eval(args) -> int:
    from pgolf.data.paths import load_val
    from pgolf.dist import init_comm
    from pgolf.eval.runner import evaluate
    from pgolf.quant.export import load_round_trip
    from pgolf.runlog import RunLog
    cfg, artifact = _load_run(args.target, args.set)
    comm = init_comm(cfg.run.device, cfg.run.collective_timeout_seconds)
    val = load_val(cfg, comm.device)
    model = load_round_trip(artifact, cfg, comm.device)
    log = RunLog(None, enabled=comm.is_main, stream=sys.stderr)  # stdout carries the JSON alone
    res = evaluate(model, val.tokens, val.tables, cfg.eval, comm, comm.device, log.line,
                   compile=cfg.model.compile)
    if comm.is_main:
        print(json.dumps({k: v for k, v in res.items() if isinstance(v, (int, float, str, bool))}, indent=2))
    return 0


def cmd_audit(args) -> int:
    from pgolf.data.paths import load_val
    from pgolf.eval.legality import audit
    from pgolf.eval.runner import EvalMode
    from pgolf.quant.export import load_round_trip
    EvalMode.parse(args.mode)  # an unknown name fails before the run loads
    cfg, artifact = _load_run(args.target, args.set)
    from pgolf.hw import pick_device
    device = pick_device(cfg.run.device)
    val = load_val(cfg, device)
    model = load_round_trip(artifact, cfg, device)
    from pgolf.runlog import RunLog
    progress = RunLog(None, stream=sys.stderr).line  # stdout carries the report alone
    report = audit(model, val.tokens, args.mode, cfg.eval, val.tables, device,
                   normalization=args.normalization, progress=progress)
    print(report.summary())
    return 0 if report.ok else 1


def cmd_info(args) -> int:
    import torch

    from pgolf.model.gpt import GPT, count_params
    cfg, warnings = _config_from_args(args)
    with torch.device("meta"):
        params = count_params(GPT(cfg.model))
    from pgolf.eval.runner import EvalMode
    mode = EvalMode.of(cfg.eval)
    precision = info_precision(cfg)
    info = {"preset": args.preset or "smoke", "params": params, "code_form": cfg.quant.code_form,
            "code_bytes": bundle_code_bytes(cfg), "eval_mode": mode.name, "eval_causal": mode.causal,
            "precision": precision, "config": config_to_dict(cfg), "warnings": warnings}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"preset: {info['preset']}\nparams: {params:,}\ncode bytes: {info['code_bytes']:,} ({cfg.quant.code_form})")
        verdict = ("causal" if mode.causal else "NON-CAUSAL: batch SLOT fits its delta on the targets it scores, "
                   "so the result is not a legal record score")
        print(f"eval mode: {mode.name} ({verdict})")
        print("precision here: " + " ".join(f"{k}={v}" for k, v in precision.items()))
        for sec, values in info["config"].items():
            print(f"[{sec}] " + " ".join(f"{k}={v}" for k, v in values.items()))
        for w in warnings:
            print(f"warning: {w}")
    return 0


def cmd_data(args) -> int:
    if args.data_cmd == "fineweb":
        from pgolf.data.fineweb import download_fineweb
        paths = download_fineweb(variant=args.variant, train_shards=args.train_shards, out_dir=args.out)
        print(f"{len(paths)} files ready under {args.out}")
    elif args.data_cmd == "inspect":
        from pgolf.data.fineweb import inspect_shard
        sp = None
        if args.tokenizer:
            import sentencepiece
            sp = sentencepiece.SentencePieceProcessor(model_file=args.tokenizer)
        print(inspect_shard(args.file, sp, n=args.n))
    elif args.data_cmd == "prepare":
        from pgolf.data.corpus import prepare_embedded_corpus
        info = prepare_embedded_corpus(args.cache_dir, tokenizer_path=args.tokenizer or "")
        print(json.dumps(info, indent=2))
    elif args.data_cmd == "tokenizer":
        from pgolf.data.tokenizer_train import resolve_text_source, train_tokenizer
        source = resolve_text_source(args.source, args.source_tokenizer or "", val_docs=args.val_docs)
        fallback = {"auto": None, "on": True, "off": False}[args.byte_fallback]
        info = train_tokenizer((d for split, d in source() if split == "train"), args.vocab_size, args.out,
                               byte_fallback=fallback, caseops=args.caseops, threads=args.threads,
                               max_docs=args.max_docs)
        print(json.dumps(info, indent=2))
    elif args.data_cmd == "retokenize":
        from pgolf.data.tokenizer_train import resolve_text_source, retokenize
        source = resolve_text_source(args.source, args.source_tokenizer or "", val_docs=args.val_docs)
        sidecar = {"auto": None, "on": True, "off": False}[args.sidecar]
        info = retokenize(source, args.tokenizer, args.out, caseops=args.caseops, sidecar=sidecar,
                          shard_tokens=args.shard_tokens)
        print(json.dumps(info, indent=2))
    return 0


def cmd_bundle(args) -> int:
    from pgolf.bundle import bundle_for_config, shipped_files, write_bundle
    cfg, _ = _config_from_args(args)
    form = "compressed" if args.compressed else "minified" if args.minify else cfg.quant.code_form
    files = shipped_files(cfg, form) if form != "plain" else {"train_gpt.py": bundle_for_config(cfg, args.preset or "smoke")}
    out = Path(args.out)
    for name, text in files.items():
        path = out if name == "train_gpt.py" else out.with_name(name)
        write_bundle(path, text)
        what = f"counted, {form}" if path == out else "readable source, ship it beside"
        print(f"wrote {path} ({len(text.encode('utf-8')):,} bytes, {what})")
    return 0


def cmd_bench(args) -> int:
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.bench_cmd == "eval":
        from pgolf.bench_eval import bench_eval, format_eval
        cfg, artifact = _load_run(args.target, args.set)
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        res = bench_eval(cfg, artifact, modes, log=print if args.verbose else None, run_audit=args.audit,
                         project_tokens=args.project_tokens, project_gpus=args.project_gpus,
                         warmup=None if args.warmup == "auto" else args.warmup == "on")
        text = format_eval(res)
    elif args.bench_cmd == "quant":
        from pgolf.bench_quant import bench_quant, bench_quant_config, format_quant
        cfg = bench_quant_config(args.target, args.set)
        res = bench_quant(cfg, args.target, args.variant or None, out=args.out,
                          log=(lambda line: print(line, file=sys.stderr)) if args.verbose else None)
        text = format_quant(res)
    else:
        from pgolf.bench import bench_artifact, bench_micro_batch, bench_throughput, format_artifact, format_throughput
        cfg, warnings = _config_from_args(args)
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        if args.bench_cmd == "throughput":
            if args.micro_batch_seqs:
                bench_micro_batch(cfg, args.micro_batch_seqs)
            res = bench_throughput(cfg, steps=args.steps, warmup=args.warmup, seed=args.seed, qat=args.qat,
                                   peak_tflops=args.peak_tflops, precision=args.precision)
            text = format_throughput(res)
        else:
            res = bench_artifact(cfg, args.preset or "smoke", sigma=args.sigma, emb_std=args.emb_std,
                                 seed=args.seed)
            text = format_artifact(res)
    print(json.dumps(res, indent=2) if args.json else text)
    return 0


def cmd_export(args) -> int:
    from pgolf.record import export_record, identity_warning, stopped_warning
    sub = export_record(args.run_dir, args.out, name=args.name, author=args.author,
                        minify=args.minify, compressed=args.compressed)
    for warning in (stopped_warning(sub), identity_warning(sub)):
        if warning:
            print(warning, file=sys.stderr)
    print(f"wrote {args.out}: val_bpb {sub['val_bpb']:.6f} ({sub['eval_mode']}, legal: {sub['legal']})")
    print(f"bytes: model {sub['bytes_model']:,} + code {sub['bytes_code']:,} = {sub['bytes_total']:,} "
          f"(limit {sub['bytes_limit']:,}, margin {sub['bytes_margin']:,})")
    return 0


def cmd_sample(args) -> int:
    from pgolf.sample import SampleOptions, sample_command
    sample_command(args.target, SampleOptions(args.prompt, args.tokens, args.temperature, args.top_k, args.seed,
                                              args.float_weights), args.set)
    return 0


def cmd_stats(args) -> int:
    from pgolf.stats import stats_for_runs, stats_report_text
    res = stats_for_runs(args.new_runs, args.against, args.against_value, metric=args.metric,
                         min_delta_nats=args.min_delta, alpha=args.alpha)
    print(json.dumps(res, indent=2) if args.json else stats_report_text(res))
    return 0


def cmd_plot(args) -> int:
    from pgolf.plot import plot_runs
    for path in plot_runs(args.runs, args.out):
        print(f"wrote {path}")
    return 0


def cmd_compare(args) -> int:
    from pgolf.compare import compare_rows, compare_text
    res = compare_rows(args.runs)
    print(json.dumps(res, indent=2) if args.json else compare_text(res))
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "audit": cmd_audit, "info": cmd_info, "data": cmd_data,
            "bundle": cmd_bundle, "bench": cmd_bench, "export": cmd_export, "stats": cmd_stats,
            "plot": cmd_plot, "compare": cmd_compare, "sample": cmd_sample}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.cmd](args)
    except PgolfError as e:
        # User-facing errors only: anything else is a bug and keeps its traceback.
        if os.environ.get("PGOLF_TRACEBACK"):
            raise
        print(f"pgolf {args.cmd}: error: {e}", file=sys.stderr)
        return 128 + e.signum if isinstance(e, RunInterrupted) else 2


if __name__ == "__main__":
    sys.exit(main())

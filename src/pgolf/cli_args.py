"""The command line's arguments: one sub-parser per `pgolf` command (cli.py runs them)."""

import argparse


def _add_config_args(p: argparse.ArgumentParser, default_preset: str | None = None) -> None:
    p.add_argument("--preset", default=default_preset, help="preset name (smoke, baseline, record_549, record_1128)")
    p.add_argument("--config", help="TOML file applied over the preset")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one field; repeatable; highest precedence")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pgolf", description="Train, compress and evaluate the best LM that fits in 16,000,000 bytes.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("train", help="train, export and evaluate a run")
    _add_config_args(p)
    p.add_argument("--out", help="run folder (default runs/<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run from its checkpoint")
    p = sub.add_parser("eval", help="re-evaluate a run folder or artifact")
    p.add_argument("target")
    p.add_argument("--set", action="append", default=[], help="override eval settings, e.g. eval.stride=64")
    p = sub.add_parser("audit", help="legality audit of an eval mode on a run folder or artifact")
    p.add_argument("target")
    p.add_argument("--mode", default="sliding",
                   help="plain|sliding|ttt|slot|causal-slot|ttt+slot|ttt+causal-slot|lora-ttt|phased-ttt")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--normalization", action="store_true",
                   help="also check one target's probabilities over the vocabulary sum to 1, which a scorer "
                        "reading its own target breaks (batch SLOT too, seen in float64); one eval per vocabulary id")
    p = sub.add_parser("info", help="resolved config and parameter count")
    _add_config_args(p)
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("data", help="datasets: download, inspect, prepare the embedded corpus, train tokenizers, re-tokenize")
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    d = dsub.add_parser("fineweb", help="download the challenge's FineWeb shards")
    d.add_argument("--variant", default="sp1024")
    d.add_argument("--train-shards", type=int, default=80)
    d.add_argument("--out", default="data")
    d = dsub.add_parser("inspect", help="show a shard's header and first tokens")
    d.add_argument("file")
    d.add_argument("--tokenizer")
    d.add_argument("-n", type=int, default=32)
    d = dsub.add_parser("prepare", help="prepare the embedded corpus")
    d.add_argument("--cache-dir", default="")
    d.add_argument("--tokenizer", help="tokenize with this SentencePiece model instead of training one")
    source_help = ("text sources: .txt files (one document each), .jsonl files (one {\"text\": ...} per "
                   "line), a folder of fineweb_{train,val}_*.bin shards (needs --source-tokenizer), or embedded")
    d = dsub.add_parser("tokenizer", help="train a SentencePiece BPE with the challenge's settings")
    d.add_argument("source", nargs="+", help=source_help + "; trains on the train split only")
    d.add_argument("--vocab-size", type=int, required=True, help="e.g. 1024, 4096, 8192")
    d.add_argument("--out", required=True, help="the .model file to write")
    d.add_argument("--caseops", action="store_true",
                   help="CaseOps-encode the text and reserve its 4 control symbols as ids 4-7")
    d.add_argument("--byte-fallback", choices=("auto", "on", "off"), default="auto",
                   help="auto: off for vocabulary 1024 (the challenge's model), on above")
    d.add_argument("--max-docs", type=int, default=0, help="train on at most this many documents (0 = all)")
    d.add_argument("--threads", type=int, default=2)
    d = dsub.add_parser("retokenize", help="tokenize documents into official shards (+ byte sidecars)")
    d.add_argument("source", nargs="+", help=source_help + "; splits are kept")
    d.add_argument("--tokenizer", required=True, help="the SentencePiece .model to tokenize with")
    d.add_argument("--out", required=True, help="an empty folder for the shards")
    d.add_argument("--caseops", action="store_true", help="CaseOps-encode each document first")
    d.add_argument("--sidecar", choices=("auto", "on", "off"), default="auto",
                   help="per-token original-byte files beside the val shards (auto: with --caseops)")
    d.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per train shard")
    for d, val_docs in ((dsub.choices["tokenizer"], 0), (dsub.choices["retokenize"], 50_000)):
        d.add_argument("--source-tokenizer", help="the .model that wrote a shard-folder source")
        d.add_argument("--val-docs", type=int, default=val_docs,
                       help=f"for text files: the first N documents are val (default {val_docs:,}; the "
                            "challenge's val set is its first 50,000)")
    p = sub.add_parser("bundle", help="generate the single-file train_gpt.py")
    _add_config_args(p)
    p.add_argument("--out", required=True)
    p.add_argument("--minify", action="store_true", help="write the minified form (quant.code_form=minified)")
    p.add_argument("--compressed", action="store_true",
                   help="write the self-extracting form, the readable file beside it (quant.code_form=compressed)")
    p = sub.add_parser("bench", help="benchmarks: training throughput, artifact budget, eval modes")
    bsub = p.add_subparsers(dest="bench_cmd", required=True)
    b = bsub.add_parser("throughput", help="time training steps on synthetic tokens")
    _add_config_args(b)
    b.add_argument("--steps", type=int, default=20, help="timed steps")
    b.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile, caches)")
    b.add_argument("--micro-batch-seqs", type=int, default=0,
                   help="sequences per micro-step (sets run.train_batch_tokens); 0 = from the config")
    b.add_argument("--qat", choices=("off", "on"), default="off",
                   help="time steps with late QAT off (most of a run) or on (its last stretch)")
    b.add_argument("--peak-tflops", type=float, default=0.0,
                   help="bf16 dense peak for MFU; 0 = from the device name (H100 SXM/PCIe, H200)")
    b.add_argument("--precision", choices=("auto", "bf16", "fp32", "both"), default=None,
                   help="run.low_precision for the timed steps; both = bf16 then fp32 and their ratio "
                        "(default: the config's, auto unless set)")
    b = bsub.add_parser("artifact", help="artifact bytes of filled weights through the real export path")
    _add_config_args(b, default_preset="record_1128")
    b.add_argument("--sigma", type=float, default=0.3, help="std of the filled block matrices")
    b.add_argument("--emb-std", type=float, default=0.05, help="std of the filled embedding tables")
    b = bsub.add_parser("eval", help="evaluate a finished run in several eval modes")
    b.add_argument("target", help="run folder or .ptz artifact")
    b.add_argument("--modes", default="plain,sliding,ttt,ttt+slot,ttt+causal-slot")
    b.add_argument("--set", action="append", default=[], help="override eval settings, e.g. eval.stride=64")
    b.add_argument("--verbose", action="store_true", help="print the evaluators' progress lines")
    b.add_argument("--audit", action="store_true", help="also run the legality audit of each mode")
    b.add_argument("--project-tokens", type=int, default=0, metavar="N",
                   help="also project each mode's seconds to N scored tokens (62021632 = the full val set)")
    b.add_argument("--project-gpus", type=int, default=1, metavar="G", help="... split over G GPUs")
    b.add_argument("--warmup", choices=("auto", "on", "off"), default="auto",
                   help="run each mode untimed on the slice's start first (auto: on a GPU or with compile)")
    b = bsub.add_parser("quant", help="bytes and bpb penalty of quantization policies on a trained run")
    b.add_argument("target", help="run folder (needs final_state.pt)")
    b.add_argument("--variant", action="append", default=[], metavar="NAME:field=value[,field=value]",
                   help="a QuantConfig variant, e.g. row:matrix_bits=6,matrix_method=gptq_lite,clip_search=row; "
                        "none = every method (GPTQ-lite, SDClip, full GPTQ, LQER, mixed widths, layouts)")
    b.add_argument("--set", action="append", default=[], help="override eval settings, e.g. eval.max_tokens=65536")
    b.add_argument("--out", default="", help="also write the rows as JSON here (e.g. bench/results/quant_RUN.json)")
    b.add_argument("--verbose", action="store_true", help="print each variant's row as it finishes")
    for b in bsub.choices.values():
        b.add_argument("--seed", type=int, default=0)
        b.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
        b.add_argument("--json", action="store_true")
    p = sub.add_parser("export", help="make a challenge record folder from a finished run")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="record folder to create (must not exist or be empty)")
    p.add_argument("--name", default="", help="record name for submission.json and the README")
    p.add_argument("--author", default="")
    p.add_argument("--minify", action="store_true", help="ship train_gpt.py without comments and docstrings")
    p.add_argument("--compressed", action="store_true",
                   help="ship the self-extracting LZMA train_gpt.py, with the readable source beside it")
    p = sub.add_parser("sample", help="generate text from a run folder or artifact, streamed to stdout")
    p.add_argument("target", help="run folder or .ptz artifact")
    p.add_argument("--prompt", default="", help="text to continue (default: a new document)")
    p.add_argument("--tokens", type=int, default=200, help="tokens to generate")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (argmax)")
    p.add_argument("--top-k", type=int, default=200, help="draw from the K most likely tokens; 0 = all")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same text")
    p.add_argument("--float", action="store_true", dest="float_weights",
                   help="use the float weights (final_state.pt) instead of the de-quantized artifact")
    p.add_argument("--set", action="append", default=[], help="override a field, e.g. data.tokenizer_path=FILE")
    p = sub.add_parser("stats", help="multi-seed significance test: do new runs beat old ones?")
    p.add_argument("new_runs", nargs="+", metavar="NEW_RUN", help="run or record folders (or metrics JSON files)")
    p.add_argument("--against", nargs="+", metavar="OLD_RUN", help="the runs to beat")
    p.add_argument("--against-value", type=float, metavar="VALUE", help="a published mean to beat (metric units)")
    p.add_argument("--metric", choices=("val_loss", "val_bpb"), default="val_loss")
    p.add_argument("--min-delta", type=float, default=0.005, help="required improvement in nats (default 0.005)")
    p.add_argument("--alpha", type=float, default=0.01, help="significance level (default 0.01)")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("plot", help="draw runs from their logs: curves.png and budget.png (needs pgolf[plot])")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders; several share one figure")
    p.add_argument("--out", help="curves PNG (budget PNG beside it as <stem>_budget.png); default: "
                                 "RUN/plots/ for one run, runs_curves.png for several")
    p = sub.add_parser("compare", help="one table of runs: differing config fields, bpb, bytes, times")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders")
    p.add_argument("--json", action="store_true")
    return ap

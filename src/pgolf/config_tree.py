"""The typed config tree: one dataclass per section (data, model, optim, schedule, quant, eval,
run), every field with a default, a type (enums as Literal) and a one-line doc. Loading,
validation and serialization live in config.py."""

from dataclasses import dataclass, field
from typing import Any, Literal


# The integer widths the quantizers and the artifact format implement (16 keeps fp16): whole
# matrices and embeddings, per-group overrides (0 = the category's width), LQER factors.
QuantBits = Literal[5, 6, 7, 8, 16]
GroupBits = Literal[0, 4, 5, 6, 7, 8, 16]
FactorBits = Literal[4, 5, 6, 7, 8]


def _f(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass
class DataConfig:
    path: str = _f("", "dataset folder with train/val shards; empty = the embedded corpus")
    train_pattern: str = _f("fineweb_train_*.bin", "glob of training shards inside data.path")
    val_pattern: str = _f("fineweb_val_*.bin", "glob of validation shards inside data.path")
    tokenizer_path: str = _f("", "SentencePiece .model file; empty = the dataset's own")
    cache_dir: str = _f("", "where the embedded corpus is prepared; empty = ~/.cache/pgolf")
    sampling: Literal["sequential", "coprime"] = _f(
        "sequential", "training order: sequential reads shards in turn; coprime visits seq_len+1 windows of "
                      "every shard once per epoch in a seeded coprime-stride order, batches mixing shards (#1058)")
    packing: Literal["rows", "stream"] = _f(
        "rows", "micro-batch shape: rows = [B, train_seq_len] rows; stream = one flat [1, tokens] row per "
                "micro-step, each shard read from its first BOS and never across its end, as #1855's "
                "DocumentPackingLoader (needs model.doc_mask; model.doc_max_len cuts long documents)")


@dataclass
class ModelConfig:
    arch: Literal["baseline", "record"] = _f("baseline", "baseline: per-layer weights; record: banks + record parts")
    vocab_size: int = _f(1024, "tokenizer vocabulary size (1024: the challenge's sp1024); checked against it")
    num_layers: int = _f(9, "transformer blocks")
    model_dim: int = _f(512, "residual width")
    num_heads: int = _f(8, "query heads")
    num_kv_heads: int = _f(4, "key/value heads (GQA)")
    mlp_mult: float = _f(2.0, "MLP hidden width as a multiple of model_dim")
    tie_embeddings: bool = _f(True, "share the token embedding with the output head")
    tied_embed_init_std: float = _f(0.005, "std of the normal init of embedding tables (the baseline's)")
    logit_softcap: float = _f(30.0, "logits = cap * tanh(z / cap), 30 as the baseline; 0 disables")
    rope_base: float = _f(10000.0, "RoPE base before NTK scaling")
    qk_gain_init: float = _f(1.5, "initial per-head query gain")
    unet_skips: bool = _f(True, "first half of blocks push outputs, second half pops them")
    # Record parts. None means "the default of model.arch" (see ARCH_DEFAULTS).
    leaky_slope: float | None = _f(None, "MLP activation leaky_relu(slope)^2; 0 = relu^2")
    rope_dims: int | None = _f(None, "rotate only the first rope_dims dims of each head; 0 = all")
    rope_train_len: int | None = _f(None, "NTK-scale the RoPE base as if trained at this length; 0 = off")
    bigram_vocab_size: int | None = _f(None, "BigramHash buckets; 0 disables")
    bigram_dim: int = _f(128, "BigramHash table width (128: records #549/#1128)")
    smear: bool | None = _f(None, "SmearGate: per-channel gate mixing x[t-1] into x[t]")
    xsa_last_n: int | None = _f(None, "exclusive self-attention on the last N blocks")
    ln_scale: bool | None = _f(None, "scale normed block inputs by 1/sqrt(layer+1)")
    ve_enabled: bool | None = _f(None, "value embeddings added to V on ve_layers")
    ve_dim: int = _f(128, "value-embedding table width (128: the records' VE128)")
    ve_layers: str = _f("-2,-1", "comma list of blocks with value embeddings (negative = from the end)")
    attn_backend: Literal["auto", "fa3", "sdpa", "math"] = _f(
        "auto", "auto = fa3 where importable on Hopper, else sdpa; math is the slow explicit path")
    compile: bool = _f(False, "torch.compile the training forward (and the eval forward)")
    embed_dtype: Literal["fp32", "bf16"] = _f(
        "fp32", "storage of tok_emb / bigram / VE tables in training; bf16 is what records "
                "#549/#1128 ran (their model is cast to bf16), fp32 keeps small updates")
    # ---- frontier switches; each is off by default ----
    bos_id: int = _f(1, "BOS token id (the challenge tokenizers' 1): where documents start, for the "
                        "SmearGate BOS fix and document-masked attention")
    num_loops: int = _f(0, "depth recurrence: extra passes over blocks loop_start..loop_end (#1344; #1855 "
                           "runs 2, i.e. three passes); 0 = off")
    loop_start: int = _f(3, "first looped block (#1855: 3)")
    loop_end: int = _f(5, "last looped block, inclusive (#1855: 5)")
    loop_enable_at: float = _f(0.0, "fraction of training after which the loop runs (#1855: 0.35; the "
                                    "cheap plain stack trains first); 0 = from the start")
    loop_untied_mlp: bool = _f(False, "repeated passes use MLP weights of their own instead of sharing the "
                                      "looped block's (more parameters, same attention)")
    parallel_start: int = _f(0, "parallel residual lanes from this block on: attention and MLP read separate "
                                "lanes, written back by a learned 2x2 routing (#1530; #1855: 8); 0 = off")
    parallel_final: Literal["mean", "attn", "mlp"] = _f(
        "mean", "hidden state after the parallel blocks: mean of the lanes (#1855), or one lane")
    skip_gates: bool = _f(False, "sigmoid-gated U-Net skips x <- lerp(w*skip, x, sigmoid(g)), g from 0 "
                                 "(in #1855's stack)")
    attn_gate: Literal["off", "out", "dense", "sparse"] = _f(
        "off", "per-head gate on the attention output: out = 2*sigmoid(W x[:gate_window]), neutral at "
               "init (#1667); dense = sigmoid(W x) over the full width (#1736); sparse = sigmoid(scale * "
               "W x[:gate_window]) (#1787, in #1855)")
    gate_window: int = _f(12, "leading residual dims read by the out/sparse attention gates and the input "
                              "SmearGate (#1855: 12, a 96-parameter gate per layer)")
    attn_gate_scale: float = _f(1.0, "logit scale of the sparse attention gate (#1855: 0.5, a softer gate)")
    attn_gate_init_std: float = _f(0.0, "normal init std of the attention gate weights; 0 = zeros")
    smear_kind: Literal["channel", "input"] = _f(
        "channel", "channel: per-channel gate after the embedding norm (#549/#1128); input: x_t += lam * "
                   "sigmoid(W x_t[:gate_window]) * x_{t-1} before the norm, lam from 0 (#1667)")
    smear_bos_fix: bool = _f(False, "no smear into a BOS position, so a document never sees the previous "
                                    "one's last token (#1855's fix)")
    doc_mask: bool = _f(False, "attention never crosses a BOS (document start): FA3 varlen where present, "
                               "a masked SDPA elsewhere; training and evaluation alike")
    rope_precision: Literal["fp64", "fp32", "bf16_freq"] = _f(
        "fp64", "RoPE tables: fp64 angles (pgolf, exact to the last bit); fp32 as #1855 builds them; bf16_freq "
                "also rounds the frequencies to bf16, as #1855 ran (its model cast to bf16 casts that buffer)")
    stream_dtype: Literal["fp32", "embed"] = _f(
        "fp32", "residual stream: fp32 from the embedding on (pgolf); embed = the table's dtype, so with "
                "embed_dtype bf16 the stream is bf16 as #1855 ran it (torch 2.9 autocast keeps rms_norm bf16)")
    init_bf16: bool = _f(False, "round every initial weight to bf16, as #1855's cast of its fresh model to bf16 "
                                "does (parallel_resid_lambdas start at 1.1015625); False keeps the fp32 init")
    doc_max_len: int = _f(0, "with doc_mask, attention also never crosses doc start + k*doc_max_len: a long "
                             "document is cut into pieces (#1855's stream batches: 2048); 0 = whole documents")
    fused_ce: Literal["auto", "on", "off"] = _f(
        "off", "training loss by the soft-capped CE Triton kernel (pgolf.kernels; #1855's): auto = on for CUDA "
               "with triton, on = always (eager math on a CPU), off = eager")
    fused_mlp: Literal["auto", "on", "off"] = _f(
        "off", "MLP up-projection + leaky_relu^2 in one Triton kernel, forward and backward: as model.fused_ce")


ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "baseline": dict(leaky_slope=0.0, rope_dims=0, rope_train_len=0, bigram_vocab_size=0,
                     smear=False, xsa_last_n=0, ln_scale=False, ve_enabled=False),
    "record": dict(leaky_slope=0.5, rope_dims=16, rope_train_len=1024, bigram_vocab_size=1536,
                   smear=True, xsa_last_n=4, ln_scale=True, ve_enabled=True),
}


@dataclass
class OptimConfig:
    matrix_lr: float = _f(0.04, "Muon learning rate for block matrices")
    scalar_lr: float = _f(0.04, "AdamW learning rate for scalars and small tensors")
    tied_embed_lr: float = _f(0.05, "AdamW learning rate for embedding tables (tied head)")
    embed_lr: float = _f(0.6, "AdamW learning rate for the embedding when untied")
    head_lr: float = _f(0.008, "AdamW learning rate for an untied output head")
    muon_momentum: float = _f(0.95, "final Muon momentum (the baseline's; records use 0.99)")
    muon_momentum_warmup_start: float = _f(0.85, "Muon momentum at step 0")
    muon_momentum_warmup_steps: int = _f(500, "steps to ramp Muon momentum to its final value")
    muon_backend_steps: int = _f(5, "Newton-Schulz iterations (5: enough for the quintic to converge)")
    muon_nesterov: bool = _f(True, "Nesterov momentum in Muon")
    muon_coeffs: Literal["quintic", "polar_express"] = _f(
        "quintic", "orthogonalization: the fixed quintic (the #1128 stack) or Polar Express per-iteration "
                   "coefficients (arXiv 2505.16932; the later records), closer to orthogonal in 5 steps")
    muon_row_norm: bool = _f(False, "MuonEq-R: row-normalize the momentum before orthogonalizing (later records)")
    muon_wd: float = _f(0.0, "decoupled weight decay of Muon matrices")
    adam_wd: float = _f(0.0, "decoupled weight decay of AdamW groups")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.95, "AdamW beta2")
    adam_eps: float = _f(1e-8, "AdamW epsilon")
    grad_clip_norm: float = _f(0.0, "clip the gradient norm; 0 disables")
    grad_clip_mode: Literal["local", "global"] = _f(
        "local", "local: clip each rank's gradient before reduction (reference); global: after")
    embed_wd: float | None = _f(
        None, "AdamW weight decay of the embedding tables; None = optim.adam_wd (#1855: EMBED_WD 0.085 on "
              "tok_emb beside adam_wd 0.02 on the scalars)")
    muon_pe_safety: float = _f(
        1.02, "Polar Express input divided by this x its Frobenius norm: 1.02 is the paper's safety factor "
              "(singular values safely below 1); #1855 divides by the plain norm (1.0)")
    muon_momentum_dtype: Literal["fp32", "bf16"] = _f(
        "fp32", "Muon momentum buffer, Nesterov blend and row normalization dtype: fp32 keeps small momentum "
                "contributions; bf16 is #1855's (buffer of the bf16 grads)")
    muon_ns_norm_dtype: Literal["fp32", "bf16"] = _f(
        "fp32", "dtype of the Newton-Schulz input norm and division: fp32 (a tiny grad never rounds to a zero "
                "scale); bf16 rounds the norm as #1855 does")
    muon_row_norm_eps: Literal["add", "clamp"] = _f(
        "add", "MuonEq-R denominator: row norm + 1e-7 (pgolf) or max(row norm, 1e-7) (#1855); they differ only "
               "in the last bits, and on near-zero rows")


@dataclass
class ScheduleConfig:
    warmup_steps: int = _f(20, "compile-priming steps, undone afterwards (weights, optimizer, data)")
    warmdown_iters: int = _f(1200, "length of the linear lr warmdown, in steps")
    warmdown_mode: Literal["auto", "time", "iters", "frac"] = _f(
        "auto", "auto: whichever of time and iters ends first (iters alone with no cap); time needs the cap; "
                "frac: the last schedule.warmdown_frac of training progress (#1855)")
    min_lr_mult: float = _f(0.0, "the warmdown ends at this fraction of the lr instead of 0 (#1855: 0.10)")
    wd_taper_start: float = _f(
        0.7, "training fraction (iterations or wall clock, whichever is further) where Muon's WD taper begins")
    wd_taper_final_mult: float = _f(
        1.0, "Muon WD ends at this multiple of optim.muon_wd (#1729: 0.5 from 0.7); 1.0 = off; AdamW's stays")
    momentum_cooldown_start: float = _f(
        1.0, "fraction of training where Muon momentum starts falling to momentum_cooldown_final; 1.0 = off")
    momentum_cooldown_final: float = _f(0.85, "Muon momentum at the end of training when the cooldown is on")
    ema_enabled: bool = _f(False, "keep an exponential moving average of the weights")
    ema_decay: float = _f(0.997, "EMA decay per step (0.997: the records' EMA)")
    swa_enabled: bool = _f(False, "average snapshots late in training")
    swa_every: int = _f(50, "steps between SWA snapshots (50: the records' tight SWA)")
    swa_threshold: float = _f(0.2, "take SWA snapshots once the lr multiplier is below this")
    export_weights: Literal["auto", "raw", "ema", "swa", "ema_swa"] = _f(
        "auto", "which weights get exported; auto = ema when EMA is on, else raw")
    warmdown_frac: float = _f(
        0.0, "warmdown_mode frac: the lr falls linearly to 0 over this last fraction of training "
             "(wall clock of the capped budget; #1855: WARMDOWN_FRAC 0.85); 0 = no warmdown")
    min_lr_form: Literal["lerp", "max"] = _f(
        "lerp", "how min_lr_mult floors the warmdown: lerp = floor + (1-floor)*m, reaching the floor at "
                "the end (pgolf); max = max(m, floor), same slope, floor held at the end (#1855's MIN_LR)")
    ema_form: Literal["lerp", "scale_add"] = _f(
        "lerp", "EMA update arithmetic: lerp (one rounding per step) or decay*shadow then + (1-decay)*param "
                "(#1855's two roundings); the same average to fp32 rounding")


@dataclass
class QuantConfig:
    matrix_bits: QuantBits = _f(8, "bits for attention/MLP matrices (5..8; 16 = keep fp16); records fit with 6")
    matrix_method: Literal["rowwise", "gptq_lite", "gptq"] = _f(
        "rowwise", "rowwise (fixed clip quantile), gptq_lite (round to nearest, clip by clip_rule) or "
                   "gptq (full GPTQ on calibration Hessians, #1019)")
    clip_search: Literal["matrix", "row"] = _f("matrix", "gptq_lite clip: one per matrix (reference) or per row")
    embed_bits: QuantBits = _f(8, "bits for embedding tables (16 = keep fp16)")
    small_numel: int = _f(65536, "tensors with at most this many elements stay fp16 (the baseline's cut)")
    compressor: Literal["zlib", "lzma", "zstd", "brotli", "pergroup"] = _f(
        "zlib", "zlib (baseline); lzma packs int6 smaller (records); zstd/brotli need their package; pergroup "
                "= #1855's: matrix codes by role, hot rows similarity-sorted, lrzip (ZPAQ) each, brotli the rest")
    level: int = _f(9, "compressor level: zlib/lzma 0..9, zstd 1..22, brotli 0..11")
    late_qat_threshold: float = _f(0.0, "fake-quantize matrices once the lr multiplier is below this; 0 = off")
    qat_scope: Literal["matrices", "reference"] = _f(
        "matrices", "what late QAT fake-quantizes: matrices = every block matrix on the artifact's "
                    "grid; reference = only bigram.proj / ve.proj, as records #549/#1128 ran")
    max_artifact_bytes: int = _f(16_000_000, "challenge limit on model + code bytes (decimal)")
    code_form: Literal["plain", "minified", "compressed"] = _f(
        "compressed", "counted train_gpt.py: compressed = minified + LZMA + base85 self-extracting, readable "
                      "file beside it (records #1394 on; ~4x fewer code bytes); plain = readable; minified = "
                      "no comments, docstrings, annotations")
    code_codec: Literal["lzma", "brotli"] = _f(
        "lzma", "code_form=compressed: lzma = our minifier, LZMA + base85 (records #1394 on); brotli = then "
                "python-minifier, brotli 11 + base85 (#1855's; the run needs the brotli package)")
    code_lean: bool = _f(
        False, "the generated train_gpt.py ships its config frozen (checked at `pgolf bundle`): code for branches "
               "that config never takes, config parsing, resume and signal handling are left out; the "
               "environment may set only DATA_PATH, TOKENIZER_PATH, RUN_ID, SEED and PGOLF_RUN_DEVICE")
    # ---- frontier compression: full GPTQ, SDClip, mixed widths, LQER, layouts ----
    clip_rule: Literal["quantile", "sdclip"] = _f(
        "quantile", "per-row clip of gptq_lite/gptq: quantile = search among |w| quantiles (GPTQ-lite); "
                    "sdclip = k x row std (#1394), which narrows the codes LZMA sees")
    clip_weighting: Literal["plain", "hessian"] = _f(
        "plain", "hessian: score quantile candidates / weight the SDClip std by the input Hessian's "
                 "diagonal (needs matrix_method=gptq); plain: unweighted")
    sdclip_k_matrix: float = _f(12.85, "SDClip k for block matrices (#1394's value)")
    sdclip_k_embed: float = _f(20.0, "SDClip k for embedding tables (#1394's value)")
    attn_bits: GroupBits = _f(0, "bits for attention matrices (4..8, 16 = fp16); 0 = quant.matrix_bits")
    mlp_bits: GroupBits = _f(0, "bits for MLP matrices (4..8, 16 = fp16); 0 = quant.matrix_bits")
    bigram_bits: GroupBits = _f(0, "bits for the BigramHash table (4..8, 16 = fp16); 0 = quant.embed_bits")
    ve_bits: GroupBits = _f(0, "bits for the value-embedding table (4..8, 16 = fp16); 0 = quant.embed_bits")
    gptq_embed: bool = _f(False, "also GPTQ the tied token embedding against its output-head Hessian")
    gptq_block_size: int = _f(128, "GPTQ columns per lazy-update block (speed only, same result in exact math)")
    gptq_damp: float = _f(0.01, "GPTQ damping: fraction of the mean Hessian diagonal added to it")
    gptq_act_order: bool = _f(True, "GPTQ quantizes columns by decreasing Hessian diagonal (act order)")
    gptq_reserve_seconds: float = _f(
        0.0, "training wall-clock seconds held back for calibration + GPTQ, which the challenge "
             "counts as training (the cap stops training this much earlier)")
    calib_source: Literal["train", "self"] = _f(
        "train", "GPTQ calibration tokens: train shards, or sequences the model samples itself (#1019); "
                 "validation tokens are never allowed")
    calib_seqs: int = _f(64, "calibration sequences (#1019: 64 x 2048)")
    calib_seq_len: int = _f(0, "calibration sequence length; 0 = run.train_seq_len")
    calib_temperature: float = _f(0.8, "sampling temperature of self-generated calibration (#1019)")
    calib_batch_seqs: int = _f(8, "calibration sequences per forward (memory only)")
    lqer_rank: int = _f(0, "LQER: rank of the int-factor correction of the quantization error; 0 = off "
                           "(#1855: 4)")
    lqer_top_k: int = _f(3, "LQER corrects this many tensors, those with the largest error (#1855: 3)")
    lqer_bits: FactorBits = _f(4, "bits of the LQER factors (4..8)")
    code_order: Literal["rows", "columns"] = _f(
        "rows", "integer codes stored row-major or transposed (columns) before compression")
    fp16_layout: Literal["plain", "shuffled"] = _f(
        "plain", "fp16 scales/tensors stored as is or byte-shuffled (all low bytes, then all high)")
    sdclip_k_attn: float = _f(0.0, "SDClip k for attention matrices; 0 = sdclip_k_matrix (#1855: 13.0)")
    sdclip_k_mlp: float = _f(0.0, "SDClip k for MLP matrices; 0 = sdclip_k_matrix (#1855: 11.5)")
    sdclip_std: Literal["biased", "unbiased"] = _f(
        "biased", "SDClip row std: biased (/n) or unbiased (/(n-1), #1855's torch.std, for its codes)")
    gptq_numerics: Literal["pgolf", "record"] = _f(
        "pgolf", "pgolf: float64 sweep, dead columns rounded from their weights; record: #1855's float32 "
                 "sweep, dead columns zeroed (pgolf.quant.gptq)")
    lqer_format: Literal["pgolf", "sym", "asym"] = _f(
        "pgolf", "LQER factor storage: pgolf, or #1855's sym (per-row) / asym (int2 A, grouped int4 B) "
                 "(pgolf.quant.lqer)")
    lqer_asym_group: int = _f(64, "LQER asym: B elements per fp16 scale (#1855: 64)")
    gate_int8: bool = _f(False, "attention-gate weights as int8 rows, not fp16 (#1855's GATED_ATTN_QUANT_GATE)")
    compressor_fallback: Literal["error", "brotli"] = _f(
        "error", "compressor=pergroup without the lrzip program: error = stop before training (apt-get install "
                 "lrzip); brotli = the same groups compressed with brotli instead")
    calib_windows: Literal["first", "shuffled"] = _f(
        "first", "calib_source=train windows: first = the stream's first calib_seqs x calib_seq_len tokens; "
                 "shuffled = #1855's rank-0 draw (shards accum_world apart, a random phase, windows in "
                 "random order, seed 0), calib_batches x (train_batch_tokens / accum_world) tokens")
    calib_batches: int = _f(16, "calib_windows=shuffled: batches drawn (#1855: GPTQ_CALIBRATION_BATCHES=16)")
    calib_attention: Literal["model", "dense"] = _f(
        "model", "calibration forward: model = as trained (document-masked with model.doc_mask); dense = "
                 "causal across documents, as #1855's calibration (forward without cu_seqlens)")


@dataclass
class EvalConfig:
    seq_len: int = _f(0, "evaluation window length; 0 = run.train_seq_len")
    batch_tokens: int = _f(524288, "tokens per validation batch, all ranks (the baseline's VAL_BATCH_SIZE)")
    stride: int = _f(0, "sliding-window stride; 0 = non-overlapping windows")
    batch_seqs: int = _f(32, "windows per sliding/TTT/SLOT batch")
    max_tokens: int = _f(0, "score only the first N validation tokens; 0 = all")
    ttt_enabled: bool = _f(False, "legal score-first test-time training")
    ttt_lr: float = _f(0.002, "TTT SGD learning rate, cosine over chunks (#549's TTT recipe, as below)")
    ttt_epochs: int = _f(3, "TTT passes over each scored chunk")
    ttt_chunk_tokens: int = _f(32768, "TTT chunk size in tokens")
    ttt_freeze_blocks: int = _f(0, "first K blocks are not trained by TTT")
    ttt_momentum: float = _f(0.9, "TTT SGD momentum")
    ttt_batch_seqs: int = _f(32, "sequences per TTT training step")
    ttt_grad_clip: float = _f(1.0, "TTT gradient clip norm")
    ttt_kind: Literal["global", "lora", "phased"] = _f(
        "global", "what ttt_enabled runs: global = score-first SGD of all weights per chunk (#549); lora = "
                  "per-document LoRA, reset at each BOS (#1530); phased = lora plus global SGD pauses on the "
                  "scored prefix, with the ttt_* SGD fields above (#1626; #1855: ttt_lr 0.001, ttt_epochs 1)")
    ttt_lora_rank: int = _f(80, "LoRA TTT adapter rank (#1855: 80, which beat 96 on all 3 seeds); 0 = no adapters")
    ttt_lora_alpha: float = _f(0.0, "adapter output scale alpha/rank, so the step size does not grow with the "
                                    "rank (#1767, #1855: 144); 0 = unscaled B@A")
    ttt_lora_lr: float = _f(1e-4, "LoRA TTT Adam learning rate (#1530..#1855)")
    ttt_lora_beta1: float = _f(0.0, "LoRA TTT Adam beta1 (#1855: 0, each chunk's gradient alone)")
    ttt_lora_beta2: float = _f(0.99, "LoRA TTT Adam beta2 (#1855: 0.99, faster than 0.999)")
    ttt_lora_wd: float = _f(0.5, "LoRA TTT decoupled weight decay (#1855: 0.5)")
    ttt_lora_chunk: int = _f(48, "tokens scored between two adapter updates (#1855: 48); at most seq_len")
    ttt_lora_steps: int = _f(1, "Adam steps on each scored chunk (#1855: 1)")
    ttt_lora_targets: str = _f("q,k,v,o,up,down", "comma list of adapted matrices: q k v o up down (block "
                                                  "matrices) and head (needs the model's head seam)")
    ttt_phased_prefix_docs: int = _f(2500, "phased TTT: documents after which the global phases end (#1855: "
                                           "2500, ~460 s of the 600 s eval budget)")
    ttt_phased_phases: int = _f(3, "phased TTT: global SGD pauses, evenly spread over the prefix documents "
                                   "(#1855: 3, after documents 833, 1666, 2500)")
    slot_mode: Literal["off", "batch", "causal"] = _f("off", "off, batch (published, NON-CAUSAL) or causal")
    slot_lr: float = _f(0.003, "SLOT AdamW learning rate (#1128's SLOT, as the fields below)")
    slot_steps: int = _f(5, "SLOT AdamW steps per batch")
    slot_wd: float = _f(1e-8, "SLOT AdamW weight decay")
    slot_eps: float = _f(1e-5, "SLOT AdamW epsilon")
    slot_bias: bool = _f(False, "causal SLOT also fits a per-window logit bias (a learned unigram cache "
                                "of the document so far)")
    slot_bias_lr: float = _f(0.01, "AdamW learning rate of the causal SLOT logit bias")
    slot_carry: bool = _f(False, "causal SLOT state persists across windows of a document, refitted "
                                 "only on scored targets and reset at BOS")
    slot_carry_steps: int = _f(2, "AdamW steps refitting the carried state on each batch's newly scored targets")
    slot_bos_id: int = _f(1, "token id starting a document (the challenge tokenizer's BOS): causal SLOT "
                             "fits and carries state within one document; -1 = ignore documents")
    audit: bool = _f(True, "run the legality audit on a small slice before the final number")
    audit_tokens: int = _f(2048, "validation tokens used by the audit")
    budget_seconds: float = _f(600.0, "evaluation time budget (the challenge's 10 min); warn when over")
    plain_whole_batches: bool = _f(False, "the final pre/post-quant plain evals score only each rank's whole "
                                          "batches of batch_tokens/(accum_world*seq_len) windows, dropping "
                                          "the rest as #1855's eval_val does (its own TODO says not to; up "
                                          "to 31 windows per rank), all windows where a rank would keep "
                                          "none; false scores every window")
    ttt_lora_method: Literal["per_doc", "record"] = _f(
        "per_doc", "how lora/phased TTT run: per_doc = one document at a time in stream order with weight-delta "
                   "adapters reset per document (causal); record = #1855's batches of length-sorted documents with "
                   "side-path adapters whose A carries over (its phases train on later-in-stream documents)")
    ttt_lora_warm_a: bool = _f(True, "record method: A keeps its trained values from batch to batch, only B and "
                                     "the optimizer restart (#1855's TTT_WARM_START_A=1); false = A redrawn")
    ttt_lora_batch: int = _f(64, "record method: documents scored together, one adapter set each (#1855: 64)")
    ttt_lora_eval_seq_len: int = _f(0, "record method: longest scoring window of a chunk; 0 = eval.seq_len "
                                       "(#1855: 2048)")
    ttt_lora_k: bool = _f(True, "record method: adapt the key projection (#1855: on)")
    ttt_lora_o: bool = _f(True, "record method: an output adapter from the block's normed input (#1855: on)")
    ttt_lora_mlp: bool = _f(True, "record method: an MLP side path from the MLP's normed input (#1855: on)")
    ttt_global_doc_mask: bool = _f(True, "record method: the global phases' packed rows attend within documents "
                                         "(and within eval.seq_len pieces of long ones), as #1855")


@dataclass
class RunConfig:
    run_id: str = _f("", "name of the run; empty = derived from time")
    out_dir: str = _f("", "run folder; empty = runs/<run_id>")
    seed: int = _f(1337, "global seed")
    iterations: int = _f(20000, "maximum optimizer steps")
    max_wallclock_seconds: float = _f(600.0, "training time cap, validation excluded (challenge: 10 min); 0 = none")
    train_batch_tokens: int = _f(524288, "tokens per optimizer step, all ranks and micro-steps; a multiple "
                                         "of accum_world x train_seq_len")
    train_seq_len: int = _f(1024, "training sequence length")
    accum_world: int = _f(8, "grad accumulation x world size, 8 as the reference on 8 GPUs, so fewer GPUs "
                             "take the same step; micro-steps = accum_world // world_size")
    val_loss_every: int = _f(1000, "validate every N steps; 0 = only at the end")
    train_log_every: int = _f(200, "log a step line every N steps")
    checkpoint_every: int = _f(
        -1, "write a resumable checkpoint every N steps; 0 = never; -1 = auto: every minute of "
            "training at most, and never more often than keeps checkpoint writes under 2% of it")
    device: Literal["auto", "cpu", "cuda"] = _f("auto", "auto = cuda when available, else cpu")
    collective_timeout_seconds: float = _f(
        600.0, "a collective waiting longer fails the rank with an error instead of hanging (a peer died)")
    trackers: str = _f("", "comma-separated trackers fed the log's scalars (tensorboard, wandb), for "
                           "dashboards beside log.txt; empty = none; never part of a bundled run")
    keep_checkpoints: bool = _f(False, "keep the resumable checkpoints once the run has finished (they "
                                       "only serve --resume; a finished run removes them)")
    low_precision: Literal["auto", "bf16", "fp32"] = _f(
        "auto", "Newton-Schulz, Muon reduction and bf16 tables in bf16 or fp32; auto = bf16 on CUDA and on "
                "CPUs with native bf16, fp32 elsewhere (emulated bf16 is ~40x slower)")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

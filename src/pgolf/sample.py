"""`pgolf sample`: text from a trained run, the de-quantized artifact (what is scored) or the
float weights, decoded with the run's tokenizer (CaseOps included) and streamed as it comes.

Generation re-runs the model on the growing context (no KV cache: the models are small and
the point is to see what they write), cropped to the eval context length the model is scored
with. One torch.Generator on the CPU draws every token, so a seed gives the same text on any
device for the same logits.
"""

import os
import sys
from dataclasses import dataclass
from typing import Callable, Iterator, TextIO

import torch

from pgolf.config_tree import Config
from pgolf.data.caseops import CASEOPS_ALLCAPS, CASEOPS_CAPNEXT, CASEOPS_ESC, CASEOPS_TITLE, tokenizer_has_caseops
from pgolf.data.paths import resolve_data_paths
from pgolf.data.tokenizer import load_tokenizer
from pgolf.data.tokenizer_train import encode_document
from pgolf.errors import PgolfError
from pgolf.hw import compute_autocast, pick_device
from pgolf.model.build import model_from_state
from pgolf.quant.export import load_round_trip
from pgolf.runfolder import RUN_ARTIFACT, RUN_FINAL_STATE, open_run, run_file


class SampleError(PgolfError, ValueError):
    """Sampling options or inputs that cannot be used (one line)."""


@dataclass
class SampleOptions:
    prompt: str = ""
    tokens: int = 200
    temperature: float = 0.8
    top_k: int = 200
    seed: int = 0
    float_weights: bool = False

    def check(self) -> None:
        if self.tokens <= 0:
            raise SampleError(f"--tokens {self.tokens}: must be at least 1")
        if not self.temperature >= 0:  # also refuses NaN
            raise SampleError(f"--temperature {self.temperature}: must be >= 0 (0 = greedy)")
        if self.top_k < 0:
            raise SampleError(f"--top-k {self.top_k}: must be >= 0 (0 = the whole vocabulary)")


def next_token(logits: torch.Tensor, temperature: float, top_k: int, generator: torch.Generator | None) -> int:
    """One token from the last position's logits: argmax at temperature 0, else a draw from
    softmax(logits / temperature) over the top_k largest (all when top_k is 0)."""
    logits = logits.float().cpu()
    if temperature == 0:
        return int(torch.argmax(logits))
    logits = logits / temperature
    if 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def generate(model: torch.nn.Module, ids: list[int], n: int, temperature: float = 0.0, top_k: int = 0,
             generator: torch.Generator | None = None, context: int = 0) -> Iterator[int]:
    """Yield n new token ids after `ids`, one at a time; each step runs the model on the last
    `context` tokens (all of them when context is 0)."""
    if not ids:
        raise SampleError("generation needs at least one context token (BOS)")
    device = next(model.parameters()).device
    seq = list(ids)
    for _ in range(n):
        window = seq[-context:] if context > 0 else seq
        x = torch.tensor([window], dtype=torch.long, device=device)
        with torch.inference_mode(), compute_autocast(device):
            logits = model.forward_logits(x)[0, -1]
        tok = next_token(logits, temperature, top_k, generator)
        seq.append(tok)
        yield tok


def caseops_text(text: str) -> str:
    """CaseOps decoding that forgives misplaced markers (a sampled model may write one where
    no letter follows): such a marker is dropped. On well-formed text it equals
    decode_caseops; each output character depends only on the input before it, so a
    prefix decodes to a prefix, which is what streaming needs."""
    out: list[str] = []
    escape, word_mode, allcaps, capnext, in_word = False, "", False, False, False
    for ch in text:
        if escape:
            out.append(ch)
            escape, word_mode, allcaps, capnext, in_word = False, "", False, False, False
        elif ch == CASEOPS_ESC:
            escape = True
        elif ch in (CASEOPS_TITLE, CASEOPS_ALLCAPS):
            word_mode = "title" if ch == CASEOPS_TITLE else "allcaps"
        elif ch == CASEOPS_CAPNEXT:
            capnext = True
        elif ("a" <= ch <= "z") or ("A" <= ch <= "Z"):
            if not in_word:
                allcaps, in_word = word_mode == "allcaps", True
            upper = bool(word_mode) or capnext or allcaps
            out.append(ch.upper() if upper else ch)
            word_mode, capnext = "", False
        else:
            out.append(ch)
            word_mode, allcaps, capnext, in_word = "", False, False, False
    return "".join(out)


class TextCodec:
    """The run's tokenizer as sampling uses it: prompt -> BOS + ids, ids -> text (CaseOps
    decoded when the tokenizer holds its markers; a BOS inside the ids starts a new line, as
    a new document)."""

    def __init__(self, sp, bos_id: int) -> None:
        self.sp, self.bos_id = sp, bos_id
        self.caseops = tokenizer_has_caseops(sp)

    def encode(self, prompt: str) -> list[int]:
        # The shards' own document encoding: BOS first, CaseOps applied when the tokenizer has it.
        ids = encode_document(self.sp, prompt, self.caseops)[0]
        return [self.bos_id] + ids[1:]

    def decode(self, ids: list[int]) -> str:
        docs, cur = [], []
        for i in ids:
            if i == self.bos_id:
                docs.append(cur)
                cur = []
            else:
                cur.append(int(i))
        docs.append(cur)
        if not docs[0]:  # a BOS first starts the first document, not a new line
            docs = docs[1:]
        texts = [self.sp.decode(d) for d in docs]
        return "\n".join(caseops_text(t) if self.caseops else t for t in texts)

    def pending_bytes(self, ids: list[int]) -> int:
        """How many byte-fallback pieces at the end of ids begin a UTF-8 character that the
        next pieces may complete (0 when the text so far is whole)."""
        tail: list[int] = []
        for i in reversed(ids[-3:]):
            if not self.sp.is_byte(int(i)):
                break
            tail.insert(0, int(self.sp.id_to_piece(int(i))[3:5], 16))
        for k in range(1, len(tail) + 1):
            b = tail[-k]
            if b & 0xC0 == 0x80:  # a continuation byte: look further back for its lead
                continue
            need = 2 if 0xC2 <= b <= 0xDF else 3 if 0xE0 <= b <= 0xEF else 4 if 0xF0 <= b <= 0xF4 else 1
            return k if need > k else 0
        return 0


def stream_text(codec: TextCodec, prompt_ids: list[int], new_ids: Iterator[int], write: Callable[[str], None]) -> str:
    """Write the text of the new tokens as they come; returns all of it. Byte-fallback pieces
    that start a character are held back until the pieces completing it arrive."""
    ids, shown = list(prompt_ids), ""
    base = codec.decode(ids)

    def show(upto: int) -> None:
        nonlocal shown
        full = codec.decode(ids[:upto])
        text = full[len(base):] if full.startswith(base) else full
        if text.startswith(shown) and len(text) > len(shown):
            write(text[len(shown):])
            shown = text

    for tok in new_ids:
        ids.append(tok)
        show(len(ids) - codec.pending_bytes(ids))
    show(len(ids))
    return shown


def load_sample_model(target: str, sets: list[str], float_weights: bool, note: Callable[[str], None]):
    """(config, model on its device, what was loaded) from a run folder or an artifact."""
    run = open_run(target, sets, needs=())
    for line in run.notes:
        note(f"note: {line}")
    cfg = run.config
    device = pick_device(cfg.run.device)
    if float_weights:
        if run.folder is None:
            raise SampleError(f"{target}: --float needs the run folder (its {RUN_FINAL_STATE}), not a lone artifact")
        path = run_file(run.folder, RUN_FINAL_STATE)
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - unpickling refusals and torn files alike
            raise SampleError(f"{path}: not a readable weights file ({type(e).__name__}); "
                              "re-run pgolf train to write it again") from None
        return cfg, model_from_state(cfg, sd, device), f"float weights {path}"
    if run.artifact is None:
        run_file(run.folder, RUN_ARTIFACT)  # the one-line error saying what writes it
    return cfg, load_round_trip(str(run.artifact), cfg, device), f"de-quantized artifact {run.artifact}"


def run_tokenizer(cfg: Config):
    path = cfg.data.tokenizer_path or resolve_data_paths(cfg)[2]
    return load_tokenizer(path, cfg.model.vocab_size)


def sample_command(target: str, opts: SampleOptions, sets: list[str] | tuple[str, ...] = (),
                   out: TextIO | None = None, err: TextIO | None = None) -> str:
    """`pgolf sample`: stream the continuation of opts.prompt to `out` (stdout); what was
    loaded goes to `err` (stderr). Returns the continuation."""
    out, err = out or sys.stdout, err or sys.stderr
    opts.check()

    def note(line: str) -> None:
        print(line, file=err)

    cfg, model, what = load_sample_model(target, list(sets), opts.float_weights, note)
    codec = TextCodec(run_tokenizer(cfg), cfg.model.bos_id)
    prompt_ids = codec.encode(opts.prompt)
    context = cfg.eval.seq_len
    mode = "greedy" if opts.temperature == 0 else f"temperature {opts.temperature:g}, top-k {opts.top_k or 'all'}"
    note(f"sample: {what}; {opts.tokens} tokens, {mode}, seed {opts.seed}, context {context}"
         + (", CaseOps tokenizer" if codec.caseops else ""))
    generator = torch.Generator().manual_seed(opts.seed)

    def write(s: str) -> None:
        out.write(s)
        out.flush()

    try:
        write(opts.prompt)
        text = stream_text(codec, prompt_ids, generate(model, prompt_ids, opts.tokens, opts.temperature,
                                                       opts.top_k, generator, context), write)
        write("\n")
    except BrokenPipeError:
        if out is not sys.stdout:
            raise
        # `pgolf sample ... | head`: the reader has what it wanted; the exit's flush must not fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ""
    return text

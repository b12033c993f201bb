"""Byte sidecars are verified before they score anything: against the manifest beside the
shards, and against the bytes the tokens' pieces spell (load_val -> check_sidecars)."""

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import sentencepiece
import torch

from pgolf.config import resolve_config
from pgolf.data.paths import load_val
from pgolf.data.shards import load_shard, write_shard
from pgolf.data.sidecar import SidecarBytes, SidecarError
from pgolf.data.tokenizer_train import resolve_text_source, retokenize, train_tokenizer

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
CASEOPS_DATA = SHARED / "datasets" / "fineweb_legal_sp8192_caseops"
CASEOPS_MODEL = SHARED / "tokenizers" / "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"
WORDS = ("The court held that a State may not deny any person within its jurisdiction the equal protection "
         "of the laws NASA USA iPhone McDonald river 1999").split()
VOCAB = 300


def documents(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(30, 80))) + "." for _ in range(n)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    docs = documents(120, seed=1)
    paths = {}
    for kind in ("caseops", "plain"):
        paths[kind] = str(root / f"{kind}.model")
        train_tokenizer(docs, VOCAB, paths[kind], caseops=kind == "caseops", byte_fallback=False)
    return paths


@pytest.fixture(scope="module")
def shard_sets(tmp_path_factory, models):
    """Retokenized sets kept pristine; each test copies the one it changes."""
    root = tmp_path_factory.mktemp("sets")
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in documents(60, seed=2)))
    source = resolve_text_source([str(root / "docs.jsonl")], val_docs=20)
    sets = {}
    for name, model, caseops, sidecar in (("caseops", "caseops", True, True), ("plain", "plain", False, False),
                                          ("identity", "plain", False, True)):
        sets[name] = (root / name, models[model])
        retokenize(source, models[model], str(root / name), caseops=caseops, sidecar=sidecar, log=lambda *_: None)
    return sets


def copy_set(shard_sets, name, tmp_path) -> tuple[Path, str]:
    folder, model = shard_sets[name]
    shutil.copytree(folder, tmp_path / name)
    return tmp_path / name, model


def val_of(folder: Path, model: str, seq_len: int = 32):
    vocab = sentencepiece.SentencePieceProcessor(model_file=str(model)).vocab_size()  # trained ones stop short
    cfg, _ = resolve_config("smoke", env={}, sets=[f"data.path={folder}", f"data.tokenizer_path={model}",
                                                   f"model.vocab_size={vocab}", f"eval.seq_len={seq_len}",
                                                   "eval.max_tokens=0"])
    return load_val(cfg, torch.device("cpu"))


def counts_of(folder: Path) -> np.ndarray:
    return np.asarray(load_shard(str(folder / "fineweb_val_bytes_000000.bin")), dtype=np.int64)


def tokens_of(folder: Path) -> np.ndarray:
    return np.asarray(load_shard(str(folder / "fineweb_val_000000.bin")), dtype=np.int64)


def forge(folder: Path, counts) -> None:
    write_shard(str(folder / "fineweb_val_bytes_000000.bin"), np.asarray(counts, dtype=np.int64))


def edit_manifest(folder: Path, edit) -> None:
    path = folder / "retokenize_manifest.json"
    man = json.loads(path.read_text())
    edit(man)
    path.write_text(json.dumps(man))


def permuted_text_counts(counts, tokens):
    # Totals and the markers' zeros kept, the counts moved to other tokens.
    text = np.flatnonzero(counts > 0)
    out = counts.copy()
    out[text] = np.random.default_rng(0).permutation(counts[text])
    return out


def few_inflated(counts, tokens):
    # 95 % of the counts right, the total far too high.
    out = counts.copy()
    out[np.flatnonzero(counts > 0)[::20]] += 40
    return out


# forgery -> (counts from the true ones, what the pieces check says without a manifest)
FORGERIES = {
    "all ones": (lambda c, t: np.ones_like(c), "is a CaseOps case marker but is worth 1 bytes"),
    "all zeros": (lambda c, t: np.zeros_like(c), "every count is 0"),
    "doubled": (lambda c, t: 2 * c, "of its counts equal the bytes their token spells"),
    "permuted": (permuted_text_counts, "of its counts equal the bytes their token spells"),
    "few inflated": (few_inflated, r"counts [\d,]+ bytes where its tokens spell [\d,]+ \(ratio"),
}


def test_retokenized_caseops_sidecars_pass_and_are_what_eval_charges(shard_sets, tmp_path):
    folder, model = copy_set(shard_sets, "caseops", tmp_path)
    val = val_of(folder, model)
    assert isinstance(val.tables, SidecarBytes)
    assert torch.equal(val.tables.bytes, torch.from_numpy(counts_of(folder)[:val.tokens.numel()]))
    man = json.loads((folder / "retokenize_manifest.json").read_text())
    assert man["sidecars"]["fineweb_val_bytes_000000.bin"]["bytes"] == int(counts_of(folder).sum())


def test_identity_sidecars_that_the_manifest_records_pass(shard_sets, tmp_path):
    # `retokenize --sidecar on` without CaseOps: the manifest vouches for the files.
    folder, model = copy_set(shard_sets, "identity", tmp_path)
    assert isinstance(val_of(folder, model).tables, SidecarBytes)


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
@pytest.mark.parametrize("manifest", [True, False])
def test_wrong_valued_sidecar_is_refused(shard_sets, tmp_path, forgery, manifest):
    folder, model = copy_set(shard_sets, "caseops", tmp_path)
    make, says = FORGERIES[forgery]
    forge(folder, make(counts_of(folder), tokens_of(folder)))
    if not manifest:
        (folder / "retokenize_manifest.json").unlink()
    with pytest.raises(SidecarError, match=r"sidecar .*fineweb_val_bytes_000000\.bin.*"
                                           + (r"manifest .*retokenize_manifest\.json" if manifest else says)):
        val_of(folder, model)


def test_case_markers_charged_as_text_are_refused(shard_sets, tmp_path):
    # What the tokenizer's own tables would charge a marker (3 bytes): the bpb ~9 % off.
    folder, model = copy_set(shard_sets, "caseops", tmp_path)
    counts, tokens = counts_of(folder), tokens_of(folder)
    counts[(tokens >= 4) & (tokens <= 7)] = 3
    forge(folder, counts)
    (folder / "retokenize_manifest.json").unlink()
    with pytest.raises(SidecarError, match="is a CaseOps case marker but is worth 3 bytes"):
        val_of(folder, model)


def test_a_few_counts_off_pass_the_pieces_but_not_the_manifest(shard_sets, tmp_path):
    # Within the plausibility bounds, only the manifest can tell: its sha256 does.
    folder, model = copy_set(shard_sets, "caseops", tmp_path)
    counts = counts_of(folder)
    counts[np.flatnonzero(counts > 2)[:3]] += 1
    forge(folder, counts)
    with pytest.raises(SidecarError, match=r"differs from the file manifest .*retokenize_manifest\.json records"):
        val_of(folder, model)
    (folder / "retokenize_manifest.json").unlink()
    val_of(folder, model)   # no manifest: plausible, so accepted


@pytest.mark.parametrize("field", ["counted_bytes", "tokens"])
def test_manifest_mismatch_names_sidecar_and_manifest(shard_sets, tmp_path, field):
    folder, model = copy_set(shard_sets, "caseops", tmp_path)

    def edit(man):
        del man["sidecars"]   # as a manifest from before per-file records: the split's totals decide
        man["splits"]["val"][field] += 1
    edit_manifest(folder, edit)
    with pytest.raises(SidecarError, match=r"fineweb_val_bytes_000000\.bin.*manifest .*retokenize_manifest\.json"):
        val_of(folder, model)


def test_stray_sidecar_beside_plain_shards_is_refused(shard_sets, tmp_path):
    folder, model = copy_set(shard_sets, "plain", tmp_path)
    plain = val_of(folder, model)
    # Even a sidecar whose counts are exactly the tables' is refused: nothing vouches for it.
    from pgolf.data.tokenizer import count_bytes
    tokens = torch.from_numpy(tokens_of(folder))
    per_target = count_bytes(tokens[:-1], tokens[1:], plain.tables)
    forge(folder, torch.cat((torch.zeros(1, dtype=torch.int64), per_target)).numpy() + 1)
    with pytest.raises(SidecarError, match="written without byte sidecars"):
        val_of(folder, model)
    (folder / "retokenize_manifest.json").unlink()
    with pytest.raises(SidecarError, match=r"not a CaseOps tokenizer, and no retokenize_manifest\.json"):
        val_of(folder, model)


def test_unlisted_sidecar_is_refused(shard_sets, tmp_path):
    folder, model = copy_set(shard_sets, "caseops", tmp_path)
    edit_manifest(folder, lambda man: man.update(sidecars={"fineweb_val_bytes_000009.bin": {}}))
    with pytest.raises(SidecarError, match="is not listed in manifest"):
        val_of(folder, model)


# The shared CaseOps data (the record #1855 pipeline's files, with its own manifest.json).

@pytest.fixture()
def caseops_copy(tmp_path):
    if not (CASEOPS_DATA / "fineweb_val_bytes_000000.bin").is_file() or not CASEOPS_MODEL.is_file():
        pytest.skip(f"shared CaseOps data absent: {CASEOPS_DATA.resolve()}")
    folder = tmp_path / "caseops"
    folder.mkdir()
    for name in ("fineweb_val_000000.bin", "fineweb_val_bytes_000000.bin", "manifest.json"):
        shutil.copy(CASEOPS_DATA / name, folder / name)
    return folder


def real_val(folder: Path):
    return val_of(folder, str(CASEOPS_MODEL), seq_len=2048)


@pytest.mark.parametrize("manifest", [True, False])
def test_shared_caseops_val_set_passes(caseops_copy, manifest):
    if not manifest:
        (caseops_copy / "manifest.json").unlink()
    assert real_val(caseops_copy).tables.total() == 1_915_175   # ../shared/data/README.md


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
@pytest.mark.parametrize("manifest", [True, False])
def test_shared_caseops_forgeries_are_refused(caseops_copy, forgery, manifest):
    # Unchecked, each was scored: all ones more than doubles a bpb, all zeros divides by almost nothing.
    make, says = FORGERIES[forgery]
    forge(caseops_copy, make(counts_of(caseops_copy), None))
    if not manifest:
        (caseops_copy / "manifest.json").unlink()
    with pytest.raises(SidecarError, match=r"sidecar .*fineweb_val_bytes_000000\.bin.*"
                                           + (r"manifest .*manifest\.json" if manifest else says)):
        real_val(caseops_copy)


def test_shared_caseops_manifest_total_mismatch(caseops_copy):
    path = caseops_copy / "manifest.json"
    man = json.loads(path.read_text())
    del man["files"]["fineweb_val_bytes_000000.bin"]["sha256"]
    man["splits"]["val"]["sidecar_bytes_total"] -= 1
    path.write_text(json.dumps(man))
    with pytest.raises(SidecarError, match=r"has 1,917,740 bytes, manifest .*manifest\.json records 1,917,739"):
        real_val(caseops_copy)


def test_stray_sidecar_beside_the_shared_sp1024_shards_is_refused(tmp_path):
    # Unchecked, such a stray file replaced the tokenizer's byte tables and moved the score.
    data, model = SHARED / "datasets" / "fineweb_legal_sp1024", SHARED / "tokenizers" / "fineweb_1024_bpe.model"
    if not (data / "fineweb_val_000000.bin").is_file() or not model.is_file():
        pytest.skip(f"shared sp1024 data absent: {data.resolve()}")
    for name in ("fineweb_val_000000.bin", "manifest.json"):
        shutil.copy(data / name, tmp_path / name)
    val_of(tmp_path, str(model), seq_len=1024)
    forge(tmp_path, np.full(tokens_of(tmp_path).size, 3))
    with pytest.raises(SidecarError, match=r"fineweb_val_bytes_000000\.bin lies beside shards of .*fineweb_1024_bpe"
                                           r"\.model, which is not a CaseOps tokenizer"):
        val_of(tmp_path, str(model), seq_len=1024)


def test_an_escaped_literal_marker_may_count_its_bytes(tmp_path, models):
    # Text that holds a marker character itself: ESC then the symbol, which is 3 bytes of the original.
    docs = documents(20, seed=3)
    docs[0] = "Literal \ue001 and \ue004 in the text. " + docs[0]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    out = tmp_path / "shards"
    retokenize(resolve_text_source([str(tmp_path / "docs.jsonl")], val_docs=5), models["caseops"], str(out),
               caseops=True, log=lambda *_: None)
    counts, tokens = counts_of(out), tokens_of(out)
    assert sorted(counts[(tokens >= 4) & (tokens <= 7) & (counts > 0)].tolist()) == [3, 3]
    (out / "retokenize_manifest.json").unlink()   # the pieces check alone decides
    assert val_of(out, models["caseops"]).tables.total() > 0


def test_tokens_whose_piece_hides_the_bytes_are_not_judged(tmp_path, models):
    # Characters the tokenizer lacks become <unk> (or byte pieces): the sidecar counts their
    # bytes, the piece spells none. Text full of them is still a true sidecar.
    docs = [" ".join(f"{w} ☃ж" for w in d.split()) for d in documents(20, seed=4)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    out = tmp_path / "shards"
    retokenize(resolve_text_source([str(tmp_path / "docs.jsonl")], val_docs=5), models["caseops"], str(out),
               caseops=True, log=lambda *_: None)
    tokens = tokens_of(out)
    sp = sentencepiece.SentencePieceProcessor(model_file=models["caseops"])
    assert np.count_nonzero(tokens == sp.unk_id()) > 0.2 * tokens.size
    (out / "retokenize_manifest.json").unlink()   # the pieces check alone decides
    assert val_of(out, models["caseops"]).tables.total() == int(counts_of(out)[1:val_of(out, models["caseops"]).tokens.numel()].sum())

"""Late QAT's grid against the export path itself (not against a hand-picked clip): where
GPTQ-lite's clip search keeps the row max, the artifact's round trip and the fake-quantized
forward weights are the same numbers."""

import torch

from pgolf.config_tree import QuantConfig
from pgolf.quant.artifact import pack_artifact, unpack_artifact
from pgolf.quant.fake_quant import fake_quant_ste
from pgolf.quant.quantizers import quant_scale_from_clip


def test_fake_quant_equals_the_gptq_lite_round_trip_when_the_search_keeps_the_max():
    g = torch.Generator().manual_seed(0)
    rows, cols, qmax = 64, 256, 31
    scale = quant_scale_from_clip(torch.rand(rows, generator=g) + 0.5, qmax)  # fp16-exact scales
    codes = torch.randint(-qmax, qmax + 1, (rows, cols), generator=g).float()
    codes[:, 0] = qmax  # every row reaches the grid's end: clipping it would cost the most
    w = codes * scale[:, None] + 1e-3 * scale[:, None] * torch.randn(rows, cols, generator=g)
    q = QuantConfig(matrix_bits=6, matrix_method="gptq_lite", clip_search="matrix", small_numel=0,
                    compressor="lzma", level=6)
    sd, _ = unpack_artifact(pack_artifact({"blocks.0.mlp.fc.weight": w}, q, "test"))
    exported = sd["blocks.0.mlp.fc.weight"]
    assert torch.equal(exported, codes * scale[:, None])  # the search kept the max: exact grid
    assert torch.equal(fake_quant_ste(w, 6), exported)


"""The explore page's embeddings tab: the model's distinct embedding tables, compact enough to
search offline in the page.

Each table (embeddings.tables: the one tied table, or source, target and output) goes in with
every row int8-quantised on its own scale, row ~ scale * int8, scale = the row's largest |value|
/ 127: one byte a weight, cosines within about 0.01 of the float table's. The page looks up a
typed word (or a clicked piece) as embeddings.neighbours does: the k rows nearest by cosine to
the mean of its pieces' rows, the special pieces and the query's own pieces left out. The JSON's
`embeddings`:
    vocabularies  the pieces by id: [joint] or [source, target]
    tables        [{name, vocabulary (its index), rows: base64 int8 (V, D),
                    scales: base64 float32 little-endian (V,)}]
    k             neighbours shown; specials: the ids never shown
"""

from __future__ import annotations

import base64

import numpy as np
from torch import Tensor

from mha.data.tokenizer import Tokenizer
from mha.inference.embeddings import tables
from mha.inference.export import vocabularies
from mha.model.transformer import Transformer

K = 10
INT8 = 127


def embedding_data(model: Transformer, tokenizer: Tokenizer) -> dict:
    """{"embeddings": ...} for the page (see the module docstring)."""
    source, target = vocabularies(tokenizer)
    pieces = [source] if tokenizer.joint else [source, target]
    side = {"tied": 0, "source": 0, "target": len(pieces) - 1, "output": len(pieces) - 1}
    return {"embeddings": {
        "vocabularies": pieces,
        "tables": [{"name": name, "vocabulary": side[name], **quantised(table)}
                   for name, table in tables(model).items()],
        "k": K, "specials": [Tokenizer.PAD, Tokenizer.UNK, Tokenizer.BOS, Tokenizer.EOS],
    }}


def quantised(table: Tensor) -> dict:
    """(V, D) float -> {"rows": base64 int8 (V, D), "scales": base64 float32 (V,)}."""
    values = table.detach().float().cpu().numpy()
    largest = np.abs(values).max(axis=1)  # (V,)
    scales = np.where(largest > 0, largest / INT8, 1.0).astype("<f4")  # PAD's row is all zeros
    rows = np.clip(np.rint(values / scales[:, None]), -INT8, INT8).astype(np.int8)  # (V, D)
    return {"rows": base64.b64encode(rows.tobytes()).decode("ascii"),
            "scales": base64.b64encode(scales.tobytes()).decode("ascii")}

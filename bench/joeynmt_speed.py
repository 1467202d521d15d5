"""JoeyNMT 2.3.0's transformer timed on the batches bench/train_speed.py saved (run by it).

Runs in a separate environment that has joeynmt installed (it pins its own dependencies):
    python -m venv /tmp/joey && /tmp/joey/bin/pip install torch==2.13.0 joeynmt==2.3.0 \
        importlib_metadata sentencepiece==0.2.0
    python bench/train_speed.py --joeynmt /tmp/joey/bin/python

Same sizes, same label-smoothed loss, same Adam, same batches (already length-bucketed, so this
is JoeyNMT's model at its best: its own pipeline adds padding). Prints seconds per update.
"""

from __future__ import annotations

import sys
import time
from types import SimpleNamespace

import torch
from joeynmt.model import build_model
from joeynmt.vocabulary import Vocabulary


def main() -> None:
    saved = torch.load(sys.argv[1])
    size, vocab_size, batches = saved["size"], saved["vocab"], saved["batches"]
    specials = SimpleNamespace(unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                               eos_token="</s>", sep_token=None, lang_tags=[], unk_id=0, pad_id=1,
                               bos_id=2, eos_id=3)  # JoeyNMT's order: mha's pad 0 and unk 1 swap
    vocab = Vocabulary([f"piece{i}" for i in range(vocab_size - 4)], specials)
    side = {"type": "transformer", "num_layers": size["layers"], "num_heads": size["heads"],
            "embeddings": {"embedding_dim": size["d_model"], "scale": True, "dropout": 0.1},
            "hidden_size": size["d_model"], "ff_size": size["d_ff"], "dropout": 0.1,
            "layer_norm": "pre"}
    torch.manual_seed(0)
    model = build_model({"initializer": "xavier_uniform", "embed_initializer": "xavier_uniform",
                         "bias_initializer": "zeros", "tied_embeddings": True, "tied_softmax": True,
                         "encoder": side, "decoder": dict(side)}, vocab, vocab)
    model.loss_function = ("crossentropy", 0.1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
    model.train()
    times = []
    swap = lambda ids: torch.where(ids <= 1, 1 - ids, ids)
    for i, batch in enumerate(batches):
        src, tgt_in, tgt_out = map(swap, batch)
        start = time.perf_counter()
        loss, *_ = model(return_type="loss", src=src, trg=tgt_out, trg_input=tgt_in,
                         src_mask=src.ne(1).unsqueeze(1), src_length=src.ne(1).sum(1),
                         trg_mask=tgt_in.ne(1).unsqueeze(1))
        (loss / tgt_out.ne(1).sum()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - start)
    print(sorted(times)[len(times) // 2])


if __name__ == "__main__":
    main()

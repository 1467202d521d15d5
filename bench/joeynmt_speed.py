"""JoeyNMT 2.3.0's transformer timed on what bench/train_speed.py saved (run by it).

Runs in a separate environment that has joeynmt installed (it pins its own dependencies):
    python -m venv /tmp/joey && /tmp/joey/bin/pip install torch==2.13.0 joeynmt==2.3.0 \
        importlib_metadata sentencepiece==0.2.0
    python bench/train_speed.py --joeynmt /tmp/joey/bin/python

Same sizes, same label-smoothed loss, same Adam, and two sets of batches:
- same_batches: mha's own (length-bucketed), so JoeyNMT's model at its best;
- own_batching: what JoeyNMT's training loop feeds it, its TokenBatchSampler over a random order
  of the same training pairs, batch_size 4096 of batch_type token (padding included, no bucketing).
Prints one JSON line: seconds per update for each, and the real tokens of its own batches.
"""

from __future__ import annotations

import json
import sys
import time
from types import SimpleNamespace

import torch
from joeynmt.datasets import TokenBatchSampler
from joeynmt.model import build_model
from joeynmt.vocabulary import Vocabulary

PAD = 1  # JoeyNMT's order: mha's pad 0 and unk 1 swap


class Pieces(torch.utils.data.Dataset):
    """What JoeyNMT's sampler reads: (None, source pieces, target pieces), without BOS/EOS."""

    def __init__(self, pairs) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i):
        src, tgt = self.pairs[i]  # mha's ids: src pieces + EOS, tgt BOS + pieces + EOS
        return None, src[:-1], tgt[1:-1]


def joey_batches(pairs: list, count: int) -> list:
    """The first `count` batches of JoeyNMT's training loop, padded as it pads them."""
    order = torch.utils.data.RandomSampler(
        Pieces(pairs), generator=torch.Generator().manual_seed(1))
    pad = lambda rows: torch.nn.utils.rnn.pad_sequence(  # mha's ids, mha's padding 0
        [torch.tensor(r) for r in rows], batch_first=True, padding_value=0)
    batches = []
    for indices in TokenBatchSampler(order, batch_size=4096, drop_last=False, seed=1):
        src, tgt = pad([pairs[i][0] for i in indices]), pad([pairs[i][1] for i in indices])
        batches.append((src, tgt[:, :-1], tgt[:, 1:]))
        if len(batches) == count:
            return batches
    return batches


def build(size: dict, vocab_size: int):
    specials = SimpleNamespace(unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                               eos_token="</s>", sep_token=None, lang_tags=[], unk_id=0, pad_id=PAD,
                               bos_id=2, eos_id=3)
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
    return model


def seconds_per_update(model, batches: list) -> float:
    """Median seconds per update after two warm-up updates."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
    model.train()
    times = []
    swap = lambda ids: torch.where(ids <= 1, 1 - ids, ids)
    for i, batch in enumerate(batches):
        src, tgt_in, tgt_out = map(swap, batch)
        start = time.perf_counter()
        loss, *_ = model(return_type="loss", src=src, trg=tgt_out, trg_input=tgt_in,
                         src_mask=src.ne(PAD).unsqueeze(1), src_length=src.ne(PAD).sum(1),
                         trg_mask=tgt_in.ne(PAD).unsqueeze(1))
        (loss / tgt_out.ne(PAD).sum()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    saved = torch.load(sys.argv[1], weights_only=True)
    own = joey_batches(saved["pairs"], saved["steps"] + 2)
    timed = own[2:]
    mean = lambda values: sum(values) / len(values)
    src_tokens, tgt_tokens = mean([int(s.ne(0).sum()) for s, _, _ in timed]), mean(
        [int(t.ne(0).sum()) for _, _, t in timed])
    padded = mean([s.numel() + t.numel() for s, _, t in timed])
    print(json.dumps({
        "same_batches": seconds_per_update(build(saved["size"], saved["vocab"]), saved["batches"]),
        "own_batching": {
            "seconds": seconds_per_update(build(saved["size"], saved["vocab"]), own),
            "src_tokens": src_tokens, "tgt_tokens": tgt_tokens,
            "src_len": mean([s.shape[1] for s, _, _ in timed]),
            "tgt_len": mean([t.shape[1] for _, _, t in timed]),
            "padding": 1 - (src_tokens + tgt_tokens) / padded}}))


if __name__ == "__main__":
    main()

"""Training speed: mha against torch.nn.Transformer on the same Multi30k batches, in one run.

For each model size: training tokens/s (source + target, padding excluded), seconds per update,
achieved GFLOP/s (the FLOPs that `mha info` counts, x3 for forward + backward) and MFU against the
matmul peaks this script measures first, fp32 and bf16. Every (model, precision) pair trains its
own copy of the same initial weights, and all of them take turns batch by batch. "mha compiled"
is mha's compiled training step (training/compiled.py, train.compile): its first update, which
compiles, is reported on a line of its own. Prints a markdown table.

    python bench/train_speed.py [--steps 8] [--precision fp32 bf16] [--joeynmt PYTHON]

--joeynmt names the Python of an environment with joeynmt 2.3.0 (see bench/joeynmt_speed.py):
its transformer is then timed on the same batches, in fp32, in the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from mha.configs.schema import load_config
from mha.data.batching import TokenBatches, collate
from mha.data.prepare import prepare
from mha.model import Transformer
from mha.model.info import training_flops
from mha.training.compiled import CompiledLoss
from mha.training.loss import summed_loss

SIZES = {  # name -> config overrides
    "multi30k_de_en preset": [],
    "reference 3+3, d256, h4, ff1024, 8k": ["data.vocab_size=8000", "model.d_model=256",
                                            "model.heads=4", "model.encoder_layers=3",
                                            "model.decoder_layers=3", "model.d_ff=1024"],
}


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of a square matmul, the best of a few."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


class TorchTransformer(nn.Module):
    """torch.nn.Transformer with the same embeddings, sizes and output layer as mha's."""

    def __init__(self, cfg, vocab: int, _tgt_vocab: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, cfg.d_model, padding_idx=0)
        self.body = nn.Transformer(cfg.d_model, cfg.heads, cfg.encoder_layers, cfg.decoder_layers,
                                   cfg.d_ff, cfg.dropout, batch_first=True,
                                   norm_first=cfg.norm == "pre")
        self.output = nn.Linear(cfg.d_model, vocab, bias=False)
        self.output.weight = self.embed.weight
        self.scale = math.sqrt(cfg.d_model)
        self.positions = Transformer(cfg, vocab, vocab).positions

    def forward(self, src, tgt_in, predict):
        embed = lambda ids: self.embed(ids) * self.scale + self.positions(ids.shape[1])
        causal = self.body.generate_square_subsequent_mask(tgt_in.shape[1], dtype=torch.bool)
        hidden = self.body(embed(src), embed(tgt_in), tgt_mask=causal, tgt_is_causal=True,
                           src_key_padding_mask=src.eq(0), memory_key_padding_mask=src.eq(0))
        return self.output(hidden[predict])  # (N, V): the same output layer and loss as mha's


def train_step(model: nn.Module, optimizer, batch, precision: str) -> float:
    """Seconds for one update, with mha's training loss (summed over real target tokens); a
    CompiledLoss stands in for summed_loss where `model.compiled_loss` holds one."""
    start = time.perf_counter()
    loss_of = getattr(model, "compiled_loss", None) or (
        lambda *batch: summed_loss(model, *batch, label_smoothing=0.1))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = loss_of(batch.src_ids, batch.tgt_in, batch.tgt_out)
    (loss / batch.tgt_tokens).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def time_side_by_side(models: dict[tuple[str, str], nn.Module], batches: list,
                      first: dict | None = None) -> dict:
    """Seconds per update of each (model, precision), median over the batches after two warm-up
    updates; `first` receives each one's first update (a compiled step's compile).

    The models take turns batch by batch, in alternating order, so a slow spell of this noisy
    machine slows them alike; the ratio of their medians is what the table's verdict quotes.
    """
    optimizers = {key: torch.optim.Adam(m.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
                  for key, m in models.items()}
    times = {key: [] for key in models}
    for i, batch in enumerate(batches):
        for key in (list(models) if i % 2 else list(reversed(models))):
            models[key].train()
            seconds = train_step(models[key], optimizers[key], batch, key[1])
            if i == 0 and first is not None:
                first[key] = seconds
            if i >= 2:
                times[key].append(seconds)
    return {key: sorted(t)[len(t) // 2] for key, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16, help="timed updates per model")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--joeynmt", metavar="PYTHON",
                        help="a Python that can import joeynmt 2.3.0")
    args = parser.parse_args()
    peaks = {"fp32": matmul_peak(torch.float32),
             "bf16": matmul_peak(torch.bfloat16, n=1024, repeats=2)}
    print(f"matmul peak on this machine: fp32 {peaks['fp32']:.0f} GFLOP/s, "
          f"bf16 {peaks['bf16']:.0f} GFLOP/s; {torch.get_num_threads()} threads; CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}\n")
    print("| model | implementation | precision | s/update | src+tgt tokens/s | GFLOP/s | "
          "MFU (fp32 peak) | MFU (bf16 peak) | padding |")
    print("|---|---|---|---|---|---|---|---|---|")
    ratios, compiles = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in SIZES.items():
            cfg = load_config("multi30k_de_en", [*overrides, f"run_dir={tmp}/{len(overrides)}",
                                                 "model.dropout=0.1"])
            prepared = prepare(cfg)
            train = prepared.splits["train"]
            src_ids, tgt_ids = train["src_ids"], train["tgt_ids"]
            order = TokenBatches([len(s) for s in src_ids], [len(t) for t in tgt_ids],
                                 cfg.train.batch_tokens, seed=1).epoch(0)[: args.steps + 2]
            batches = [collate([src_ids[i] for i in b], [tgt_ids[i] for i in b]) for b in order]
            timed = batches[2:]
            src_tokens = sum(b.src_tokens for b in timed) / len(timed)
            tgt_tokens = sum(b.tgt_tokens for b in timed) / len(timed)
            padded = sum(b.src_ids.numel() + b.tgt_out.numel() for b in timed) / len(timed)
            vocab = prepared.tokenizer.src_vocab_size
            flops = sum(training_flops(cfg.model, vocab, vocab, b.src_tokens, b.tgt_tokens,
                                       b.src_ids.shape[1], b.tgt_in.shape[1])
                        for b in timed) / len(timed)
            timings = {}  # (label, precision) -> (seconds per update, tokens, FLOPs, padding)
            same = (src_tokens + tgt_tokens, flops, 1 - (src_tokens + tgt_tokens) / padded)
            models = {}  # every (implementation, precision) from the same initial weights
            for precision in args.precision:
                for label, kind in (("mha", Transformer), ("mha compiled", Transformer),
                                    ("torch.nn.Transformer", TorchTransformer)):
                    torch.manual_seed(0)
                    models[label, precision] = kind(cfg.model, vocab, vocab)
                compiled = models["mha compiled", precision]
                compiled.compiled_loss = CompiledLoss(compiled, label_smoothing=0.1)
            first = {}
            for key, seconds in time_side_by_side(models, batches, first).items():
                timings[key] = (seconds, *same)
            compiles.append((name, {key: (first[key], timings[key][0]) for key in first
                                    if key[0] == "mha compiled"}))
            if args.joeynmt:
                own = joeynmt_timings(args.joeynmt, cfg, vocab, batches, train, args.steps,
                                      Path(tmp))
                timings["JoeyNMT 2.3.0, mha's batches", "fp32"] = (own["same_batches"], *same)
                joey = own["own_batching"]
                joey_flops = training_flops(cfg.model, vocab, vocab, joey["src_tokens"],
                                            joey["tgt_tokens"], joey["src_len"], joey["tgt_len"])
                timings["JoeyNMT 2.3.0, its own batching", "fp32"] = (
                    joey["seconds"], joey["src_tokens"] + joey["tgt_tokens"], joey_flops,
                    joey["padding"])
            for (label, precision), (seconds, tokens, work, padding) in timings.items():
                gflops = work / seconds / 1e9
                print(f"| {name} | {label} | {precision} | {seconds:.3f} | "
                      f"{tokens / seconds:,.0f} | {gflops:.0f} | "
                      f"{gflops / peaks['fp32']:.0%} | {gflops / peaks['bf16']:.0%} | "
                      f"{padding:.1%} |", flush=True)
            ratios.append((name, timings))
    print()
    for name, firsts in compiles:
        for (label, precision), (first, steady) in firsts.items():
            print(f"{name}: {label} {precision}: first update {first:.1f} s (compiling forward "
                  f"and backward) against {steady:.3f} s an update after it")
    for name, timings in ratios:
        for precision in args.precision:
            gain = timings["mha", precision][0] / timings["mha compiled", precision][0]
            print(f"{name}: mha compiled's {precision} update is {gain:.2f}x as fast as mha's")
        if "bf16" in args.precision and "fp32" in args.precision:
            for label in ("mha", "mha compiled", "torch.nn.Transformer"):
                gain = timings[label, "fp32"][0] / timings[label, "bf16"][0]
                print(f"{name}: {label}'s bf16 update is {gain:.2f}x as fast as its fp32 update")
        if "fp32" not in args.precision:
            continue
        seconds, tokens, *_ = timings["mha", "fp32"]
        for (label, precision), (other, other_tokens, *_) in timings.items():
            if label not in ("mha", "mha compiled") and precision == "fp32":
                print(f"{name}: mha trains {tokens / seconds / (other_tokens / other):.2f}x the "
                      f"tokens/s of {label} (fp32, mha on its own batches)")


def joeynmt_timings(python: str, cfg, vocab: int, batches: list, train, steps: int,
                    tmp: Path) -> dict:
    """JoeyNMT's transformer in its own environment: seconds per update on `batches`, and on
    batches its own TokenBatchSampler forms from the training pairs (4096 tokens, no bucketing)."""
    path = tmp / "batches.pt"
    m = cfg.model
    torch.save({"size": {"layers": m.encoder_layers, "heads": m.heads, "d_model": m.d_model,
                         "d_ff": m.d_ff}, "vocab": vocab, "steps": steps,
                "batches": [(b.src_ids, b.tgt_in, b.tgt_out) for b in batches],
                "pairs": list(zip(train["src_ids"], train["tgt_ids"]))}, path)
    script = Path(__file__).with_name("joeynmt_speed.py")
    result = subprocess.run([python, str(script), str(path)], check=False, capture_output=True,
                            text=True)
    if result.returncode:
        raise SystemExit(f"{script.name} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()

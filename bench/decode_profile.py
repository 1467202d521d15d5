"""Where a compiled greedy decoder step's time goes: torch.profiler's table of the operators.

The step is compiled as `mha eval` compiles it (inference/fast_decode.py: the weights frozen
from FROZEN_MIN_BATCH rows), except that inductor
is asked to name its generated kernels in the profile and to call them from Python (no C++
wrapper), so matmuls (aten::addmm, aten::bmm) and fused kernels (cpp_fused_...) show as rows.
Decodes the run's first --sentences test sentences at --batch, one torch thread.

    python bench/decode_profile.py RUN [--batch 1] [--sentences 100] [--rows 15]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from mha.data.prepare import load_prepared
from mha.data.tokenizer import Tokenizer
from mha.inference.fast_decode import FROZEN_MIN_BATCH, compiled_greedy
from mha.inference.run import load_model
from mha.inference.translate import _padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--sentences", type=int, default=100)
    parser.add_argument("--rows", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, tokenizer, _ = load_model(args.run, "best", "cpu", fused=False)
    torch._inductor.config.freezing = args.batch >= FROZEN_MIN_BATCH  # as CompiledGreedy does
    decoder, _ = compiled_greedy(model, bos=Tokenizer.BOS, eos=Tokenizer.EOS, cpp_wrapper=False,
                                 **{"cpp.enable_kernel_profile": True})
    lines = list(load_prepared(args.run).splits["test"]["src"])[:args.sentences]
    ids = sorted(tokenizer.encode_src(lines), key=len)
    batches = [_padded(ids[i:i + args.batch], model.pad_id)
               for i in range(0, len(ids), args.batch)]
    for batch in batches[:3]:  # warm-up
        decoder(batch, bos=Tokenizer.BOS, eos=Tokenizer.EOS)
    decoder.steps = 0
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in batches:
            decoder(batch, bos=Tokenizer.BOS, eos=Tokenizer.EOS)
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    print(f"{args.run}, batch {args.batch}, {len(lines)} sentences, {decoder.steps} decoder "
          f"steps, {total / decoder.steps / 1000:.3f} ms of profiled CPU time a step\n")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()

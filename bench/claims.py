"""Two of the learners' claims about attention, measured on a trained run (teacher forced on the
first --limit validation sentences):

1. "Attention only rotates the embeddings, without changing their magnitude." An attention row
   is a convex mixture of value vectors: per head, ‖Σ_j a_j v_j‖ / Σ_j a_j ‖v_j‖ (1 when
   the row looks at one position or at parallel values, less the more it mixes); and per
   attention module, ‖MultiHead(x)_i‖ / ‖x_i‖, its output norm over its query input's norm.
2. "Self-attention changes a word's vector only for that sentence." For the pieces that occur
   at least 5 times: the mean cosine between two occurrences' vectors, at the encoder's input
   (embedding * sqrt(d_model) + position) and at its output, against two different pieces'.

    python bench/claims.py RUN [--limit 300] [--results bench/results_claims.md]
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

from mha.data.tokenizer import Tokenizer
from mha.inference import checkpoint
from mha.inference.heads import loss_batches
from mha.inference.run import load_model
from mha.model.attention import AttentionRecorder, MultiHeadAttention
from mha.model.masks import padding_mask

KINDS = {"self_attn": "decoder", "cross_attn": "cross"}


def kind_of(name: str) -> str:
    return "encoder" if name.startswith("encoder") else KINDS[name.rsplit(".", 1)[1]]


@torch.no_grad()
def measure(model, batches) -> tuple[dict, dict, dict]:
    names = {m: n for n, m in model.named_modules() if isinstance(m, MultiHeadAttention)}
    values, module_ratio = {}, defaultdict(list)
    mixing = defaultdict(list)  # (kind, layer, head) -> ratios

    def keep_values(name):
        return lambda module, args, out: values.__setitem__(name, out)

    def keep_norms(module, args, output):
        module_ratio[names[module]].append((output[0].norm(dim=-1), args[0].norm(dim=-1)))

    handles = [m.w_v.register_forward_hook(keep_values(n)) for m, n in names.items()]
    handles += [m.register_forward_hook(keep_norms) for m in names]
    occurrences = defaultdict(list)  # piece -> [(input vector, output vector)]
    inputs = {}
    handles.append(model.encoder[0].register_forward_pre_hook(
        lambda module, args: inputs.__setitem__("x", args[0])))
    ratios = defaultdict(list)
    for src_ids, tgt_in, _ in batches:
        module_ratio.clear()
        with AttentionRecorder(model) as weights:
            model(src_ids, tgt_in)
        memory = model.encode(src_ids, padding_mask(src_ids, Tokenizer.PAD))  # (B, S, D)
        real = {"encoder": src_ids.ne(Tokenizer.PAD), "decoder": tgt_in.ne(Tokenizer.PAD),
                "cross": tgt_in.ne(Tokenizer.PAD)}
        for name, w in weights.items():  # (B, H, Tq, Tk)
            B, H, _, _ = w.shape
            v = values[name].view(B, -1, H, values[name].shape[-1] // H)  # (B, Tk, H, Dk)
            v = v.transpose(1, 2)  # (B, H, Tk, Dk)
            mixed = (w @ v).norm(dim=-1)  # (B, H, Tq)
            bound = w @ v.norm(dim=-1, keepdim=True)  # (B, H, Tq, 1)
            ratio = (mixed / bound.squeeze(-1).clamp_min(1e-12)).transpose(1, 2)  # (B, Tq, H)
            rows = ratio[real[kind_of(name)]]  # (rows, H)
            layer = int(name.split(".")[1])
            for h in range(H):
                mixing[kind_of(name), layer, h].append(rows[:, h])
        for name, pairs in module_ratio.items():
            for out_norm, in_norm in pairs:
                keep = real[kind_of(name)]
                ratios[name].append((out_norm / in_norm.clamp_min(1e-12))[keep])
        for b in range(src_ids.shape[0]):
            for s in range(src_ids.shape[1]):
                piece = int(src_ids[b, s])
                if piece not in (Tokenizer.PAD, Tokenizer.EOS):
                    occurrences[piece].append((inputs["x"][b, s], memory[b, s]))
    for handle in handles:
        handle.remove()
    mixing = {key: float(torch.cat(parts).mean()) for key, parts in mixing.items()}
    norms = {name: float(torch.cat(parts).mean()) for name, parts in ratios.items()}
    return mixing, norms, context_cosines(occurrences)


def context_cosines(occurrences: dict) -> dict:
    """Mean cosine of two occurrences of one piece, and of two different pieces, in and out."""
    frequent = {p: occ[:20] for p, occ in occurrences.items() if len(occ) >= 5}
    same, other = defaultdict(list), defaultdict(list)
    firsts = [occ[0] for occ in frequent.values()]
    for occ in frequent.values():
        for i, where in enumerate(("input", "output")):
            vectors = F.normalize(torch.stack([o[i] for o in occ]), dim=-1)
            cos = vectors @ vectors.T
            n = len(occ)
            same[where].append(float((cos.sum() - n) / (n * (n - 1))))
    for i, where in enumerate(("input", "output")):
        vectors = F.normalize(torch.stack([o[i] for o in firsts]), dim=-1)
        cos = vectors @ vectors.T
        n = len(firsts)
        other[where].append(float((cos.sum() - n) / (n * (n - 1))))
    return {"pieces": len(frequent),
            **{f"same_{w}": statistics.mean(same[w]) for w in same},
            **{f"different_{w}": other[w][0] for w in other}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--results", type=Path, default=Path("bench/results_claims.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, _, _ = load_model(args.run, "best", "cpu", fused=False)
    step = checkpoint.load(checkpoint.resolve(args.run, "best"))["step"]
    batches = loss_batches(args.run, "val", args.limit, 32, model.cfg.max_tokens,
                           torch.device("cpu"))
    mixing, norms, cosines = measure(model, batches)
    lines = [(f"Claims measured on {args.run.name} (best.pt, step {step}), teacher forced "
             f"on the first {args.limit} validation sentences. Command: "
             f"`python bench/claims.py {args.run}`."),
             "",
             ("| attention | mixing ratio ‖Σ a v‖ / Σ a ‖v‖: mean over heads (min-max) "
              "| output norm / input norm: mean over layers (min-max) |"),
             "|---|---|---|"]
    for kind in ("encoder", "decoder", "cross"):
        mix = [v for (k, _, _), v in mixing.items() if k == kind]
        out = [v for name, v in norms.items() if kind_of(name) == kind]
        lines.append(f"| {kind} | {statistics.mean(mix):.3f} ({min(mix):.3f}-{max(mix):.3f}) | "
                     f"{statistics.mean(out):.3f} ({min(out):.3f}-{max(out):.3f}) |")
    lines += ["", f"Pieces seen at least 5 times in those sentences: {cosines['pieces']}.", "",
              "| vectors | cosine, two occurrences of one piece | cosine, two different pieces |",
              "|---|---|---|",
              (f"| encoder input (embedding x sqrt(d) + position) | {cosines['same_input']:.3f} "
               f"| {cosines['different_input']:.3f} |"),
              (f"| encoder output | {cosines['same_output']:.3f} | "
               f"{cosines['different_output']:.3f} |")]
    args.results.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

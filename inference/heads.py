"""Do the heads differ? Each head's importance, and how many heads a model can lose (`mha heads`).

Michel et al. (2019), "Are Sixteen Heads Really Better than One?": remove one head at a time
(`MultiHeadAttention.head_mask`: its output is zero before W_O) and measure the validation loss
and greedy BLEU without it; beside that, their cheap estimate, |d loss / d mask| summed over the
validation batches, and the rank correlation between the two orders. Then the pruning curve: rank
every head once, across the three kinds, by its ablation result (BLEU drop, ties by loss rise),
remove them cumulatively in that order and score greedy BLEU after each removal.

Beside them, each head's roles and the entropy of its weights (inference/roles.py, after Voita et
al. 2019), from one more teacher-forced pass over the same batches, no head removed.

The loss is the plain cross-entropy per real (non-padding) target token, teacher-forced, without
the label smoothing training used. Legend: B batch, S source length, T target length, V vocab.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from mha.configs.schema import Config, ConfigError
from mha.data.batching import collate
from mha.data.tokenizer import Tokenizer
from mha.inference import checkpoint, reports
from mha.inference.evaluate import eval_set, score
from mha.inference.roles import THRESHOLD, Vocabulary, measure_roles, role_cell
from mha.inference.run import load_model
from mha.inference.translate import MhaEngine, translate_lines
from mha.model.attention import MultiHeadAttention
from mha.model.masks import padding_mask
from mha.model.transformer import Transformer

log = logging.getLogger(__name__)

KINDS = ("encoder", "decoder", "cross")  # encoder self-, decoder self-, encoder-decoder attention
DROPS = (0.5, 1.0)  # BLEU drops the pruning summary reports
Head = tuple[str, int, int]  # (kind, layer, head)
Batch = tuple[Tensor, Tensor, Tensor]  # src_ids (B, S), tgt_in (B, T), tgt_out (B, T)


def attentions(model: Transformer) -> dict[tuple[str, int], MultiHeadAttention]:
    """Every attention module of `model` by (kind, layer)."""
    found = {("encoder", i): layer.self_attn for i, layer in enumerate(model.encoder)}
    for i, layer in enumerate(model.decoder):
        found["decoder", i], found["cross", i] = layer.self_attn, layer.cross_attn
    return {key: found[key] for kind in KINDS for key in found if key[0] == kind}


def all_heads(model: Transformer) -> list[Head]:
    return [(kind, layer, h) for (kind, layer), attention in attentions(model).items()
            for h in range(attention.num_heads)]


def set_masks(model: Transformer, removed: Iterable[Head] = ()) -> None:
    """Remove heads `removed` (a mask of ones with zeros there); none removed: no masks at all."""
    removed = set(removed)
    for (kind, layer), attention in attentions(model).items():
        gone = [h for h in range(attention.num_heads) if (kind, layer, h) in removed]
        mask = None
        if gone:
            device = attention.w_o.weight.device
            mask = torch.ones(attention.num_heads, device=device)
            mask[gone] = 0.0
        attention.head_mask = mask


def loss_batches(run_dir: Path, split: str, limit: int | None, batch_size: int,
                 max_tokens: int, device: torch.device) -> list[Batch]:
    """The split's first `limit` sentence pairs as padded id batches, sorted by length."""
    from mha.data.prepare import load_prepared  # datasets is slow to import

    rows = load_prepared(run_dir).splits[split]
    src_ids, tgt_ids = rows["src_ids"][:limit], rows["tgt_ids"][:limit]
    order = sorted(range(len(src_ids)), key=lambda i: len(src_ids[i]))  # little padding
    batches = []
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size]
        batch = collate([src_ids[i][:max_tokens] for i in indices],
                        [tgt_ids[i][:max_tokens + 1] for i in indices])
        batches.append(tuple(x.to(device) for x in (batch.src_ids, batch.tgt_in, batch.tgt_out)))
    return batches


def summed_token_loss(model: Transformer, batch: Batch) -> tuple[Tensor, int]:
    """Teacher-forced cross-entropy of one batch, summed over its real target tokens, and N."""
    src_ids, tgt_in, tgt_out = batch
    real = tgt_out.ne(model.pad_id)  # (B, T)
    src_pad_mask = padding_mask(src_ids, model.pad_id)
    memory = model.encode(src_ids, src_pad_mask)  # (B, S, D)
    logits = model.logits(model.decode(tgt_in, memory, src_pad_mask)[real])  # (N, V)
    return F.cross_entropy(logits.float(), tgt_out[real], reduction="sum"), int(real.sum())


@torch.no_grad()
def val_loss(model: Transformer, batches: list[Batch]) -> float:
    """Mean cross-entropy per real target token over `batches`, with the masks now set."""
    total, tokens = 0.0, 0
    for batch in batches:
        loss, count = summed_token_loss(model, batch)
        total, tokens = total + loss.item(), tokens + count
    return total / max(tokens, 1)


@torch.no_grad()
def greedy_bleu(model: Transformer, tokenizer: Tokenizer, cfg: Config, sources: list[str],
                references: list[str]) -> float:
    """Greedy sacreBLEU (cased) with the masks now set; all-empty output scores 0."""
    engine = MhaEngine(model, tokenizer, cfg.decode)
    hypotheses = list(translate_lines(engine, sources, batch_size=cfg.decode.batch_size, beam=1))
    if not any(hypothesis.strip() for hypothesis in hypotheses):
        return 0.0
    return score(hypotheses, references)["bleu"]


def grad_importance(model: Transformer, batches: list[Batch]) -> dict[Head, float]:
    """Michel et al.'s estimate: per head, |d loss / d mask| summed over the batches, the masks
    all ones and requiring grad; the model's weights get no gradient and are not changed."""
    masks = {key: torch.ones(attention.num_heads, device=attention.w_o.weight.device,
                             requires_grad=True) for key, attention in attentions(model).items()}
    for key, attention in attentions(model).items():
        attention.head_mask = masks[key]
    frozen = [p for p in model.parameters() if p.requires_grad]
    for parameter in frozen:
        parameter.requires_grad_(False)
    totals = {key: torch.zeros(mask.shape, device=mask.device) for key, mask in masks.items()}
    try:
        with torch.enable_grad():
            for batch in batches:
                loss, tokens = summed_token_loss(model, batch)
                grads = torch.autograd.grad(loss / max(tokens, 1), list(masks.values()))
                for key, grad in zip(masks, grads):
                    totals[key] += grad.abs()
    finally:
        for parameter in frozen:
            parameter.requires_grad_(True)
        set_masks(model)
    return {(kind, layer, h): float(total[h]) for (kind, layer), total in totals.items()
            for h in range(total.numel())}


def ranks(values: list[float]) -> list[float]:
    """Rank of each value (1 = smallest), tied values sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    result = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start:end + 1]:
            result[i] = (start + end) / 2 + 1
        start = end + 1
    return result


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation: Pearson's on the ranks; None when either is constant."""
    ra, rb = ranks(a), ranks(b)
    n = len(ra)
    mean_a, mean_b = sum(ra) / n, sum(rb) / n
    cov = sum((x - mean_a) * (y - mean_b) for x, y in zip(ra, rb))
    var_a, var_b = sum((x - mean_a) ** 2 for x in ra), sum((y - mean_b) ** 2 for y in rb)
    return None if var_a == 0 or var_b == 0 else cov / (var_a * var_b) ** 0.5


def can_remove(curve: list[dict], baseline: float, drop: float) -> int:
    """How many heads go (in the curve's order) before BLEU first falls `drop` below baseline."""
    for removed, step in enumerate(curve):
        if step["bleu"] < baseline - drop:
            return removed - 1
    return len(curve) - 1


def measure_heads(run_dir: Path, split: str = "val", limit: int | None = None,
                  which: str = "best", device: str = "cpu") -> dict:
    """Ablate every head, estimate its gradient importance, and prune in the ablation order.

    Returns the report that `write_report` stores as RUN/heads.json (see the module docstring).
    Raises ConfigError for a limit below 1, DataError for a missing split, CheckpointError for a
    missing or unusable checkpoint.
    """
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1 sentence, got {limit}")
    sources, references, _ = eval_set(run_dir, split)  # fails fast, before the model loads
    sources, references = sources[:limit], references[:limit]
    model, tokenizer, cfg = load_model(run_dir, which, device)
    step = checkpoint.load(checkpoint.resolve(run_dir, which))["step"]
    target = model.output.weight.device
    batches = loss_batches(run_dir, split, limit, cfg.decode.batch_size, model.cfg.max_tokens,
                           target)

    def measure(removed: Iterable[Head]) -> tuple[float, float]:
        set_masks(model, removed)
        try:
            return (val_loss(model, batches),
                    greedy_bleu(model, tokenizer, cfg, sources, references))
        finally:
            set_masks(model)

    base_loss, base_bleu = measure(())
    roles = measure_roles(model, batches, Vocabulary.of_run(run_dir, tokenizer))  # no masks set
    records = []
    for head in all_heads(model):
        loss, bleu = measure([head])
        records.append({"kind": head[0], "layer": head[1], "head": head[2], "val_loss": loss,
                        "val_bleu": bleu, "bleu_drop": base_bleu - bleu,
                        "loss_rise": loss - base_loss, **roles[head]})
        log.debug("%s layer %d head %d: loss %.4f, BLEU %.2f", *head, loss, bleu)
    for record, value in zip(records, grad_importance(model, batches).values()):
        record["grad_importance"] = value
    report = {"split": split, "sentences": len(sources), "checkpoint": which,
              "checkpoint_step": step, "baseline": {"val_loss": base_loss, "val_bleu": base_bleu},
              "heads": records}
    return {**report, **pruning(records, base_bleu, lambda removed: measure(removed)[1])}


def pruning(records: list[dict], base_bleu: float, bleu_without) -> dict:
    """Rank heads by ablation (BLEU drop, then loss rise, most important first), remove the least
    important first, cumulatively; `bleu_without(heads)` scores each step. Also the Spearman
    correlation between the ablation and gradient rankings, and each record's rank (1 = most
    important)."""
    order = sorted(range(len(records)), key=lambda i: (records[i]["bleu_drop"],
                                                       records[i]["loss_rise"], i))
    for rank, i in enumerate(reversed(order), 1):
        records[i]["rank"] = rank
    curve = [{"kept": len(records), "bleu": base_bleu}]
    removed: list[Head] = []
    for i in order:
        removed.append((records[i]["kind"], records[i]["layer"], records[i]["head"]))
        curve.append({"kept": len(records) - len(removed), "bleu": bleu_without(removed)})
    ablation = [-r["rank"] for r in records]  # larger is more important, as grad_importance
    return {"pruning": curve,
            "can_remove": {str(drop): can_remove(curve, base_bleu, drop) for drop in DROPS},
            "spearman": spearman(ablation, [r["grad_importance"] for r in records])}


def write_report(run_dir: Path, report: dict) -> Path:
    """RUN/heads.json, written atomically."""
    return reports.write_report(Path(run_dir) / "heads.json", report)


def format_report(report: dict) -> str:
    """The table of heads and the pruning summary, as `mha heads` prints them."""
    base = report["baseline"]
    lines = [(f"{report['sentences']} {report['split']} sentences, checkpoint "
             f"{report['checkpoint']} (step {report['checkpoint_step']}): loss "
             f"{base['val_loss']:.4f}, greedy BLEU {base['val_bleu']:.2f} with every head"),
             (f"{'kind':<8} {'layer':>5} {'head':>4} {'loss':>8} {'BLEU':>6} {'drop':>6} "
             f"{'grad imp':>9} {'rank':>4} {'entropy':>7}  role (share)")]
    for r in report["heads"]:
        lines.append(f"{r['kind']:<8} {r['layer']:>5} {r['head']:>4} {r['val_loss']:>8.4f} "
                     f"{r['val_bleu']:>6.2f} {r['bleu_drop']:>6.2f} "
                     f"{r['grad_importance']:>9.4f} {r['rank']:>4} {r['entropy']:>7.3f}  "
                     f"{role_cell(r)}")
    lines.append(f"role: named where its share of queries reaches {THRESHOLD}, else (the largest "
                 "share); entropy in nats")
    rho = report["spearman"]
    lines.append("Spearman rank correlation, ablation vs gradient importance: "
                 + ("undefined (a constant ranking)" if rho is None else f"{rho:.2f}"))
    curve = ", ".join(f"{step['kept']}:{step['bleu']:.1f}" for step in report["pruning"])
    lines.append(f"pruning (heads kept: BLEU): {curve}")
    total = len(report["heads"])
    for drop, count in report["can_remove"].items():
        lines.append(f"{count} of {total} heads can go before BLEU drops by {drop}")
    return "\n".join(lines)

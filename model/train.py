"""Training: token batches, label-smoothed loss, Adam with warmup and inverse square root decay,
validation with greedy BLEU, checkpoints that lose nothing, exact resume, DDP under torchrun."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import signal
import time
from pathlib import Path

import pyarrow.compute as pc
import torch
from tqdm import tqdm

from mha.configs.schema import Config, ConfigError, dump, from_dict, parse_duration, to_dict
from mha.data.batching import TokenBatches, collate
from mha.data.prepare import Prepared, load_prepared, prepare
from mha.model import checkpoint
from mha.model.checkpoint import CheckpointError
from mha.model.distributed import Distributed
from mha.model.inference import pick_device
from mha.model.loss import summed_loss
from mha.model.monitor import Monitor
from mha.model.transformer import Transformer
from mha.model.validate import validate

log = logging.getLogger(__name__)
# keys that may change between a run and its resumption: budgets and reporting, not the maths
RESUMABLE_CHANGES = {"max_steps", "max_time", "patience", "eval_every", "log_every", "num_threads",
                     "device", "average_last"}


class TrainingError(Exception):
    """Training cannot go on (a NaN loss); the last good checkpoint is kept."""


@dataclasses.dataclass
class Progress:
    """Everything besides weights and optimiser that a resumed run needs."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # next batch of the epoch
    elapsed: float = 0.0  # seconds of training, validation included
    src_tokens: int = 0
    tgt_tokens: int = 0
    best_bleu: float = -1.0
    best_step: int = 0
    bad_validations: int = 0
    snapshots: list[int] = dataclasses.field(default_factory=list)  # steps kept for averaging


def inverse_sqrt(step: int, warmup: int) -> float:
    """Learning-rate factor: linear warmup to 1 over `warmup` updates, then sqrt(warmup / step)."""
    step = max(step, 1)
    return step / warmup if step < warmup else math.sqrt(max(warmup, 1) / step)


class StopSignal:
    """SIGINT and SIGTERM set a flag that the loop checks after each update.

    Installed explicitly: a job started in the background inherits SIGINT as ignored, and Python's
    KeyboardInterrupt would then never come.
    """

    def __init__(self) -> None:
        self.received: int | None = None

    def __enter__(self) -> None:
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum: int, frame) -> None:
        self.received = signum

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


@dataclasses.dataclass
class Trained:
    progress: Progress
    model: Transformer  # the final weights (best.pt may hold better ones)


def train(cfg: Config, resume: bool = False) -> Trained:
    """Train to the first of max_steps, max_time, patience or a signal."""
    dist = Distributed.from_env(cfg.train.device)
    try:
        trained = _train(cfg, resume, dist)
        dist.barrier()  # the other ranks wait while rank 0 validates and saves
        return trained
    finally:
        dist.close()


def _train(cfg: Config, resume: bool, dist: Distributed) -> Trained:
    t = cfg.train
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    device = dist.device or pick_device(t.device)
    if t.precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision fp16 needs CUDA; use bf16 or fp32 on the CPU")
    if t.precision == "bf16" and device.type == "cpu" and "AVX512" not in _cpu_capability():
        log.warning("train.precision bf16 on a CPU without AVX-512 (%s): bf16 matmuls are emulated "
                    "and far slower than fp32 here; bench/train_speed.py measures both",
                    _cpu_capability())
    run_dir = Path(cfg.run_dir)
    prepared = _prepare(cfg, dist)
    tokenizer = prepared.tokenizer
    torch.manual_seed(t.seed)
    random.seed(t.seed)
    model = Transformer(cfg.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr, betas=(0.9, 0.98), eps=1e-9,
                                 weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: inverse_sqrt(s, t.warmup_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=t.precision == "fp16")
    progress = Progress()
    last = run_dir / "checkpoints" / "last.pt"
    if resume:
        progress = _restore(checkpoint.load(last), cfg, model, optimizer, scheduler, scaler)
        log.info("resuming from %s at step %d", last, progress.step)
    elif last.exists():
        raise CheckpointError(f"{run_dir} already holds a run (checkpoints/last.pt): pass --resume "
                              "to continue it, or set another run_dir")
    if dist.is_main:
        checkpoint.atomic_write(run_dir / "config.yaml", lambda f: f.write(dump(cfg).encode()))
    train_set = prepared.splits["train"].select_columns(["src_ids", "tgt_ids"])
    lengths = [pc.list_value_length(train_set.data.column(c)).to_pylist() for c in ("src_ids", "tgt_ids")]
    batches = TokenBatches(*lengths, t.batch_tokens, t.seed)
    stream = batches.stream(progress.epoch, progress.position, dist.rank, dist.world_size)
    net = dist.wrap(model)
    monitor = Monitor(run_dir, progress.step if resume else None) if dist.is_main else None
    max_time = parse_duration(t.max_time) if t.max_time else math.inf
    autocast = torch.autocast(device.type, dtype=torch.float16 if t.precision == "fp16" else
                              torch.bfloat16, enabled=t.precision != "fp32")

    def save(path: Path, **extra) -> None:
        state = {"step": progress.step, "config": to_dict(cfg), "tokenizer": tokenizer.to_state(),
                 "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                 "progress": dataclasses.asdict(progress), "rng": _rng_state(), **extra}
        checkpoint.save(state, path)

    def run_validation() -> bool:
        """Validate, keep best.pt and last.pt; True when patience says stop."""
        result = validate(model, prepared, cfg, device, autocast)
        monitor.log({"step": progress.step, "val_loss": result.loss, "val_bleu": result.bleu,
                     "elapsed": round(progress.elapsed, 2)})
        monitor.plot()
        improved = result.bleu > progress.best_bleu
        if improved:
            progress.best_bleu, progress.best_step, progress.bad_validations = result.bleu, progress.step, 0
        else:
            progress.bad_validations += 1
        if t.average_last:
            _keep_snapshot(model, run_dir, progress, t.average_last)
        save(last)
        if improved:
            save(run_dir / "checkpoints" / "best.pt", val_bleu=result.bleu)
        bar.write(f"step {progress.step}: val_loss {result.loss:.3f}  val_bleu {result.bleu:.2f}"
                  f"  (best {progress.best_bleu:.2f} at step {progress.best_step})")
        return bool(t.patience) and progress.bad_validations >= t.patience

    if dist.is_main:
        log.info("%d process(es) on %s; %d parameters; %d training pairs in %d batches an epoch",
                 dist.world_size, device, sum(p.numel() for p in model.parameters()),
                 len(train_set), len(batches.epoch(progress.epoch)))
    bar = tqdm(total=t.max_steps, initial=progress.step, disable=not dist.is_main,
               dynamic_ncols=True, unit="step")
    reason, window_tokens, window_start = "max_steps", 0, time.perf_counter()
    stop = StopSignal()
    with stop:
        while progress.step < t.max_steps:
            started = time.perf_counter()
            model.train()
            loss_sum, tokens = torch.zeros((), device=device), torch.zeros(3, device=device)
            for micro in range(t.accumulate):
                progress.epoch, progress.position, indices = next(stream)
                rows = train_set[indices]  # one Arrow take: the corpus stays memory-mapped
                batch = collate(rows["src_ids"], rows["tgt_ids"])
                src, tgt_in, tgt_out = (x.to(device) for x in (batch.src_ids, batch.tgt_in, batch.tgt_out))
                sync = contextlib.nullcontext() if micro == t.accumulate - 1 else dist.no_sync(net)
                with sync:
                    with autocast:
                        loss = summed_loss(net, src, tgt_in, tgt_out, t.label_smoothing)
                    scaler.scale(loss).backward()
                loss_sum += loss.detach()
                tokens += torch.tensor([tgt_out.ne(0).sum(), src.ne(0).sum(), src.numel() + tgt_out.numel()],
                                       device=device)
            flag = torch.tensor([stop.received is not None], dtype=torch.float, device=device)
            loss_sum, tokens, flag = dist.sum(loss_sum, tokens, flag)
            step_loss = (loss_sum / tokens[0]).item()
            if not math.isfinite(step_loss):
                raise TrainingError(
                    f"loss became {step_loss} at step {progress.step + 1}; the last good checkpoint "
                    f"stays in {last.parent}; try a lower train.lr or train.precision=fp32")
            scaler.unscale_(optimizer)
            for p in model.parameters():  # gradients of the summed loss -> mean over all tokens
                if p.grad is not None:
                    p.grad.mul_(dist.world_size / tokens[0])
            if t.clip_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            progress.step += 1
            progress.elapsed += time.perf_counter() - started
            progress.tgt_tokens += int(tokens[0])
            progress.src_tokens += int(tokens[1])
            window_tokens += int(tokens[0] + tokens[1])
            lr = scheduler.get_last_lr()[0]
            if dist.is_main:
                bar.update(1)
                if progress.step % t.log_every == 0 or progress.step == 1:
                    speed = window_tokens / (time.perf_counter() - window_start)
                    window_tokens, window_start = 0, time.perf_counter()
                    budget = {} if math.isinf(max_time) else {
                        "time_left": f"{max(0.0, max_time - progress.elapsed) / 60:.1f}m"}
                    bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{speed:,.0f}",
                                    pad=f"{1 - (tokens[0] + tokens[1]) / tokens[2]:.0%}", **budget)
                    monitor.log({"step": progress.step, "loss": step_loss, "lr": lr,
                                 "src_tokens": progress.src_tokens, "tgt_tokens": progress.tgt_tokens,
                                 "elapsed": round(progress.elapsed, 2), "tokens_per_s": round(speed)})
            if flag.item():
                reason = f"signal {signal.Signals(stop.received or signal.SIGTERM).name}"
                break
            validating = progress.step % t.eval_every == 0
            if validating:
                started = time.perf_counter()
                stop_now = run_validation() if dist.is_main else False
                progress.elapsed += time.perf_counter() - started
                if dist.broadcast_flag(stop_now):
                    reason = f"patience ({t.patience} validations without a better BLEU)"
                    break
            if progress.elapsed >= max_time:
                reason = f"max_time {t.max_time}"
                break
        bar.close()
        if dist.is_main:
            if reason.startswith("signal"):
                save(last)
                log.info("stopped by %s at step %d; saved %s (continue with --resume)",
                         reason, progress.step, last)
            else:
                if progress.step % t.eval_every:
                    run_validation()
                if t.average_last and len(progress.snapshots) > 1:
                    _average(model, prepared, cfg, device, autocast, progress, monitor, save)
                log.info("stopped at step %d (%s); best validation BLEU %.2f at step %d",
                         progress.step, reason, progress.best_bleu, progress.best_step)
            monitor.close()
        if stop.received is not None:
            raise SystemExit(128 + stop.received)
    return Trained(progress, model)


def _cpu_capability() -> str:
    return torch.backends.cpu.get_cpu_capability()


def _prepare(cfg: Config, dist: Distributed) -> Prepared:
    """Rank 0 tokenizes when needed (reusing a matching cache); the other ranks then load it."""
    prepared = prepare(cfg) if dist.is_main else None
    dist.barrier()
    return prepared or load_prepared(cfg.run_dir)


def _restore(state: dict, cfg: Config, model, optimizer, scheduler, scaler) -> Progress:
    saved = from_dict(state["config"])
    differences = [
        f"{section}.{key} ({old!r} in the checkpoint, {new!r} now)"
        for section in ("data", "model", "train")
        for key, old in to_dict(saved)[section].items()
        if (new := to_dict(cfg)[section][key]) != old and key not in RESUMABLE_CHANGES
    ]
    if differences:
        raise CheckpointError("cannot resume: the config differs from the checkpoint's at "
                              + "; ".join(differences))
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        raise CheckpointError(f"cannot resume: checkpoint does not fit the model ({error})"[:300]) from None
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return Progress(**state["progress"])


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _keep_snapshot(model: Transformer, run_dir: Path, progress: Progress, keep: int) -> None:
    """Weights of the last `keep` validations, for checkpoint averaging."""
    folder = run_dir / "checkpoints"
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    checkpoint.atomic_write(folder / f"weights_{progress.step}.pt", lambda f: torch.save(weights, f))
    progress.snapshots.append(progress.step)
    for old in progress.snapshots[:-keep]:
        (folder / f"weights_{old}.pt").unlink(missing_ok=True)
    progress.snapshots = progress.snapshots[-keep:]


def _average(model, prepared, cfg, device, autocast, progress, monitor, save) -> None:
    """Average the kept snapshots; the average becomes best.pt when its BLEU is higher."""
    folder = Path(cfg.run_dir) / "checkpoints"
    snapshots = [torch.load(folder / f"weights_{s}.pt", map_location=device) for s in progress.snapshots]
    averaged = {k: sum(s[k].float() for s in snapshots).div(len(snapshots)).to(v.dtype)
                for k, v in snapshots[0].items()}
    final = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(averaged)
    result = validate(model, prepared, cfg, device, autocast)
    monitor.log({"step": progress.step, "averaged": len(snapshots), "averaged_val_loss": result.loss,
                 "averaged_val_bleu": result.bleu})
    log.info("average of the last %d validation checkpoints: val BLEU %.2f (best single %.2f)",
             len(snapshots), result.bleu, progress.best_bleu)
    if result.bleu > progress.best_bleu:
        progress.best_bleu = result.bleu
        save(folder / "best.pt", val_bleu=result.bleu, averaged=progress.snapshots)
    model.load_state_dict(final)

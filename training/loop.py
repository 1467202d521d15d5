"""Training: token batches, label-smoothed loss, Adam with warmup and inverse square root decay,
validation with greedy BLEU, checkpoints that lose nothing, exact resume, DDP under torchrun."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import time
from pathlib import Path

import torch

from mha.configs.schema import Config, dump, parse_duration, to_dict
from mha.data.prepare import load_prepared, prepare
from mha.data.runlock import run_lock
from mha.data.sampling import SubwordSampler
from mha.inference import checkpoint
from mha.inference.provenance import corpus_record, record_run
from mha.inference.run import pick_device
from mha.model.transformer import Transformer
from mha.training.distributed import Distributed
from mha.training.ema import EMA, validate_scored
from mha.training.loss import RealTokenLogits, summed_loss
from mha.training.monitor import Monitor
from mha.training.optimizer import Optimizer
from mha.training.precision import check_precision, settle
from mha.training.schedule import lr_factor, plan_decay
from mha.training.signals import StopSignal
from mha.training.state import (
    Progress,
    Update,
    averaged_snapshots,
    keep_snapshot,
    restore,
    rng_state,
    saved_state,
)
from mha.training.validate import validate

log = logging.getLogger(__name__)
TRAINING_FILES = ("config.yaml", "metrics.jsonl", "curves.png", "provenance.json")  # in run_dir


class TrainingError(Exception):
    """Training cannot go on (a NaN loss); the last good checkpoint is kept."""


@dataclasses.dataclass
class Trained:
    progress: Progress
    model: Transformer  # the final weights (best.pt may hold better ones)


def train(cfg: Config, resume: bool = False) -> Trained:
    """Train to the first of max_steps, max_time, patience or a signal."""
    dist = Distributed.from_env(cfg.train.device)
    lock = run_lock(cfg.run_dir, "train") if dist.is_main else contextlib.nullcontext()
    try:
        with lock:  # rank 0 holds the run folder for the job
            trainer = Trainer(cfg, resume, dist)
            try:
                return trainer.run()
            finally:  # also after an error: the bar ends its line before the error is printed
                if trainer.monitor is not None:
                    trainer.monitor.close()
    finally:
        dist.close()


class Trainer:
    """One run: `__init__` sets everything up, `run` repeats `update`, validates, finishes."""

    def __init__(self, cfg: Config, resume: bool, dist: Distributed) -> None:
        self.cfg, self.settings, self.dist, self.resumed = cfg, cfg.train, dist, resume
        if self.settings.num_threads:
            torch.set_num_threads(self.settings.num_threads)
        self.device = dist.device or pick_device(self.settings.device)
        check_precision(self.settings.precision, self.device)
        self.run_dir = Path(cfg.run_dir)
        self.last = self.run_dir / "checkpoints" / "last.pt"
        saved = saved_state(self.last, cfg, resume)  # refusals come before any write
        if dist.is_main:  # before anything writes: a killed write's temporary files go
            checkpoint.remove_leftovers(self.run_dir, TRAINING_FILES)
            checkpoint.remove_leftovers(self.last.parent)
        prepared = prepare(cfg) if dist.is_main else None  # rank 0 tokenizes when needed
        dist.barrier()
        self.prepared = prepared or load_prepared(cfg.run_dir)
        self.tokenizer = self.prepared.tokenizer
        self.progress = Progress()  # the schedule reads it; a resumed run replaces it
        self._build_model()
        self.progress = (restore(saved, self.model, self.optim, dist.rank, self.ema)
                         if saved else Progress())
        if dist.is_main:
            checkpoint.write(self.run_dir / "config.yaml", lambda f: f.write(dump(cfg).encode()))
        self.sampler = SubwordSampler.from_config(cfg, self.prepared)
        self.train_set = self.prepared.splits["train"].select_columns(self.sampler.columns)
        self.batches = self.sampler.token_batches(self.train_set)
        self.autocast = settle(self.settings, self.progress, self.model, self.train_set,
                               self.batches, self.device, dist)  # train.precision auto decides
        if dist.is_main:
            record_run(self.run_dir, self.progress.step, self.device,
                       self.progress.precision or self.settings.precision, corpus_record(cfg.data))
        self.stream = self.batches.stream(self.progress.epoch, self.progress.position, dist.rank,
                                          dist.world_size)
        self.ddp_model = dist.wrap(RealTokenLogits(self.model))  # DDP runs the whole forward
        budget = self.settings.max_time
        self.max_time = parse_duration(budget) if budget else math.inf
        self.monitor = (Monitor(self.run_dir, self.progress.step if resume else None,
                                self.settings, self.max_time) if dist.is_main else None)

    def _build_model(self) -> None:
        settings = self.settings
        torch.manual_seed(settings.seed)
        random.seed(settings.seed)
        self.model = Transformer(self.cfg.model, self.tokenizer.src_vocab_size,
                                 self.tokenizer.tgt_vocab_size).to(self.device)
        torch.manual_seed(settings.seed + self.dist.rank)  # same weights, a dropout stream each
        self.optim = Optimizer(self.model, settings, self.device,
                               lambda step: lr_factor(step, settings, self.progress))
        self.ema = EMA.attach(self.model, self.optim.adam, settings.ema_decay)  # None when 0

    def save(self, path: Path, **extra) -> None:
        state = {"step": self.progress.step, "config": to_dict(self.cfg),
                 "tokenizer": self.tokenizer.to_state(), "model": self.model.state_dict(),
                 **self.optim.state_dict(), "progress": dataclasses.asdict(self.progress),
                 "rng": self.rng_states, "ema": self.ema.state_dict() if self.ema else None,
                 **extra}
        checkpoint.save(state, path)

    def run(self) -> Trained:
        """Update until a budget, patience or a signal says stop; then validate and save."""
        settings, progress = self.settings, self.progress
        if self.dist.is_main:
            log.info("%d process(es) on %s; %d parameters; %d training pairs, %d batches an epoch",
                     self.dist.world_size, self.device,
                     sum(p.numel() for p in self.model.parameters()), len(self.train_set),
                     len(self.batches.epoch(progress.epoch)))
        self.clock = time.perf_counter()
        reason, stop = "max_steps", StopSignal()
        with stop:
            while progress.step < settings.max_steps:
                update = self.update(stop)
                self._report(update)
                if update.stop_requested:
                    reason = f"signal {stop.name}"
                    break
                if progress.step % settings.eval_every == 0 and self._timed_validation():
                    reason = f"patience ({settings.patience} validations without a better BLEU)"
                    break
                if budget_spent := self._budget_spent():
                    reason = budget_spent
                    break
            self.rng_states = self.dist.gather(rng_state())
            if self.dist.is_main:
                self.finish(reason)
            self.dist.barrier()  # the other ranks wait while rank 0 validates and saves
            if stop.received is not None:
                raise SystemExit(128 + stop.received)
        return Trained(progress, self.model)

    def update(self, stop: StopSignal) -> Update:
        """One optimiser update over `train.accumulate` batches (and every process)."""
        settings, device = self.settings, self.device
        self.model.train()
        loss_sum, tgt_tokens, src_tokens, slots = (torch.zeros((), device=device) for _ in range(4))
        for micro in range(settings.accumulate):
            self.progress.epoch, self.progress.position, indices = next(self.stream)
            rows = self.train_set[indices]  # one Arrow take: the corpus stays memory-mapped
            batch = self.sampler.collate(rows, self.progress.epoch, self.progress.position,
                                         self.dist.rank)
            src_ids, tgt_in, tgt_out = (x.to(device) for x in
                                        (batch.src_ids, batch.tgt_in, batch.tgt_out))
            last_micro = micro == settings.accumulate - 1
            with contextlib.nullcontext() if last_micro else self.dist.no_sync(self.ddp_model):
                with self.autocast:
                    loss = summed_loss(self.ddp_model, src_ids, tgt_in, tgt_out,
                                       settings.label_smoothing)
                self.optim.backward(loss)
            loss_sum += loss.detach()
            tgt_tokens += batch.tgt_tokens
            src_tokens += batch.src_tokens
            slots += batch.slots
        stop_votes = torch.tensor(float(stop.received is not None), device=device)
        sums, self.progress.elapsed = self.dist.agree(
            torch.stack([loss_sum, tgt_tokens, src_tokens, slots, stop_votes]), self._tick())
        loss_sum, tgt_tokens, src_tokens, slots, stop_votes = sums.unbind()
        step_loss = (loss_sum / tgt_tokens).item()
        self._refuse_non_finite("loss", step_loss)
        norm = self.optim.unscale(self.dist.world_size / tgt_tokens)
        if not self.optim.skips_non_finite:  # stop before a NaN or inf reaches the weights
            self._refuse_non_finite("the gradient norm", norm)
        self.optim.step()
        self.progress.step += 1
        self.progress.tgt_tokens += int(tgt_tokens)
        self.progress.src_tokens += int(src_tokens)
        return Update(step_loss, int(tgt_tokens), int(src_tokens), int(slots),
                      bool(stop_votes.item()))

    def _tick(self) -> float:
        """The elapsed time: the clock runs on between ticks, so validation and logging count."""
        now = time.perf_counter()
        elapsed, self.clock = self.progress.elapsed + now - self.clock, now
        return elapsed

    def _refuse_non_finite(self, what: str, value: float) -> None:
        if not math.isfinite(value):
            raise TrainingError(
                f"{what} became {value} at step {self.progress.step + 1}; the last good "
                f"checkpoint stays in {self.last.parent}; try a lower train.lr or "
                "train.precision=fp32")

    def _report(self, update: Update) -> None:
        if self.dist.is_main:
            self.monitor.report(self.progress, update, self.optim.lr)

    def _budget_spent(self) -> str | None:
        """Why the time budget stops the run, if it does (the same on every rank)."""
        if self.progress.elapsed >= self.max_time:
            return f"max_time {self.settings.max_time}"
        if 0 < self.progress.plan_end <= self.progress.step:
            return f"the {self.progress.plan_end} updates planned for max_time are done"
        return None

    def _timed_validation(self) -> bool:
        """Rank 0 validates and saves every rank's random state; all then agree on patience's
        verdict and on the clock, which counts the validation. True when patience says stop."""
        self.rng_states = self.dist.gather(rng_state())
        progress, started = self.progress, time.perf_counter()
        stop_now = self.dist.is_main and self.validate_and_save()
        progress.validation_seconds += time.perf_counter() - started
        stop_now, progress.elapsed, progress.validation_seconds = self.dist.broadcast(
            float(stop_now), self._tick(), progress.validation_seconds)
        plan_decay(self.settings, progress, self.max_time, self.dist)
        return bool(stop_now)

    def validate_and_save(self) -> bool:
        """Validate, keep best.pt and last.pt; True when patience says stop."""
        progress, settings = self.progress, self.settings
        result, scores, weights = validate_scored(self.ema, self.model, lambda model: validate(
            model, self.prepared, self.cfg, self.device, self.autocast))
        self.monitor.log({"step": progress.step, **scores, "elapsed": round(progress.elapsed, 2)})
        self.monitor.plot()
        improved = result.bleu > progress.best_bleu
        progress.bad_validations = 0 if improved else progress.bad_validations + 1
        if improved:
            progress.best_bleu, progress.best_step = result.bleu, progress.step
        dropped = (keep_snapshot(self.model, self.run_dir, progress, settings.average_last)
                   if settings.average_last else [])
        if improved:  # before last.pt: a kill between the two repeats this validation on resume
            self.save(self.run_dir / "checkpoints" / "best.pt", val_bleu=result.bleu, **weights)
        self.save(self.last)
        for path in dropped:  # last.pt no longer lists them
            path.unlink(missing_ok=True)
        raw = f" (raw weights {scores['raw_val_bleu']:.2f})" if self.ema else ""
        self.monitor.write(f"step {progress.step}: val_loss {result.loss:.3f}  val_bleu "
                           f"{result.bleu:.2f}{raw}  (best {progress.best_bleu:.2f} at step "
                           f"{progress.best_step})")
        return bool(settings.patience) and progress.bad_validations >= settings.patience

    def finish(self, reason: str) -> None:
        """Rank 0: save after a signal; otherwise a last validation and the averaged weights."""
        progress = self.progress
        if reason.startswith("signal"):
            self.save(self.last)
            log.info("stopped by %s at step %d; saved %s (continue with --resume)",
                     reason, progress.step, self.last)
        else:
            if progress.step % self.settings.eval_every:
                self.validate_and_save()
            if self.settings.average_last and len(progress.snapshots) > 1:
                self._average()
            log.info("stopped at step %d (%s); best validation BLEU %.2f at step %d",
                     progress.step, reason, progress.best_bleu, progress.best_step)

    def _average(self) -> None:
        """Average the kept snapshots; the average becomes best.pt when its BLEU is higher."""
        progress = self.progress
        final = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        averaged = averaged_snapshots(self.run_dir, progress.snapshots, self.device)
        self.model.load_state_dict(averaged)
        result = validate(self.model, self.prepared, self.cfg, self.device, self.autocast)
        self.monitor.log({"step": progress.step, "averaged": len(progress.snapshots),
                          "averaged_val_loss": result.loss, "averaged_val_bleu": result.bleu})
        log.info("average of the last %d validation checkpoints: val BLEU %.2f (best single %.2f)",
                 len(progress.snapshots), result.bleu, progress.best_bleu)
        if result.bleu > progress.best_bleu:
            progress.best_bleu = result.bleu
            self.save(self.run_dir / "checkpoints" / "best.pt", val_bleu=result.bleu,
                      averaged=progress.snapshots)
        self.model.load_state_dict(final)


"""Training as a recipe: set up by concern (device, data, model and optimiser, resume, precision,
monitoring), then repeat updates, validating every train.eval_every, until a budget, patience or
a signal says stop. Checkpoints lose nothing, a resumed run equals an uninterrupted one, and
under torchrun every rank trains while rank 0 alone writes."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import time
from pathlib import Path

import torch

from mha.configs.schema import Config, ConfigError, dump, parse_duration, to_dict
from mha.data.prepare import load_prepared, prepare
from mha.data.runlock import run_lock
from mha.data.sampling import SubwordSampler
from mha.inference import checkpoint
from mha.inference.provenance import corpus_record, record_run
from mha.inference.run import pick_device
from mha.model.transformer import Transformer
from mha.training.compiled import compile_decision, training_loss
from mha.training.distributed import Distributed
from mha.training.ema import EMA
from mha.training.init_from import Source, load_source, load_weights
from mha.training.keeping import Keeper, averaged_snapshots
from mha.training.loss import RealTokenLogits
from mha.training.monitor import Monitor
from mha.training.optimizer import Optimizer
from mha.training.precision import check_precision, decide_precision
from mha.training.schedule import lr_factor, plan_decay
from mha.training.signals import StopSignal
from mha.training.state import Progress, Update, restore, rng_state, saved_state
from mha.training.validate import validate, validate_scored
from mha.training.watch import Watch

log = logging.getLogger(__name__)


class TrainingError(Exception):
    """Training cannot go on (a NaN loss); the last good checkpoint is kept."""


@dataclasses.dataclass
class Trained:
    progress: Progress
    model: Transformer  # the final weights (best.pt may hold better ones)


def train(cfg: Config, resume: bool = False, init_from: str | None = None) -> Trained:
    """Train to the first of max_steps, max_time, patience or a signal; a new run may start from
    another run's weights and tokenizer (`init_from`: RUN[:CHECKPOINT], training/init_from.py)."""
    if init_from is not None and resume:
        raise ConfigError("--init-from starts a new run from another run's weights, --resume "
                          "continues this run from its own: give one of them")
    source = load_source(init_from, cfg) if init_from is not None else None  # before any write
    dist = Distributed.from_env(cfg.train.device)
    lock = run_lock(cfg.run_dir, "train") if dist.is_main else contextlib.nullcontext()
    try:
        with lock:  # rank 0 holds the run folder for the job
            trainer = Trainer(cfg, resume, dist, source)
            try:
                return trainer.run()
            finally:  # also after an error: the bar ends its line before the error is printed
                if trainer.monitor is not None:
                    trainer.monitor.close()
    finally:
        dist.close()


class Trainer:
    """One run: `__init__` sets it up concern by concern, `run` updates, validates, finishes."""

    def __init__(self, cfg: Config, resume: bool, dist: Distributed,
                 source: Source | None = None) -> None:
        self.cfg, self.settings, self.dist = cfg, cfg.train, dist
        self.device = self._setup_device()
        # a refusal comes before any write
        self.compiled, self.compile_why = compile_decision(cfg.train, dist.world_size)
        self.keeper = Keeper(Path(cfg.run_dir), self.settings.average_last, self._state)
        saved = saved_state(self.keeper.last, cfg, resume)  # refusals come before any write
        if dist.is_main:  # before anything writes
            self.keeper.remove_leftovers()
        tokenizer = source.tokenizer if source else None  # --init-from: the run's tokenizer
        prepared = prepare(cfg, tokenizer=tokenizer) if dist.is_main else None  # rank 0 only
        dist.barrier()
        self.prepared = prepared or load_prepared(cfg.run_dir)
        self.progress = Progress()  # the schedule reads it; a resumed run replaces it
        self.init_from = source.record() if source else (saved or {}).get("init_from")
        self._setup_model(source)
        if saved:
            self.progress = restore(saved, self.model, self.optim, dist.rank, self.ema)
        self._setup_data()
        self.autocast = decide_precision(self.settings, self.progress, self.model, self.train_set,
                                         self.batches, self.device, dist)
        self.ddp_model = dist.wrap(RealTokenLogits(self.model))  # DDP runs the whole forward
        self.loss = training_loss(self.ddp_model, self.model, self.settings, self.compiled)
        budget = self.settings.max_time
        self.max_time, self.monitor = parse_duration(budget) if budget else math.inf, None
        if dist.is_main:  # the run's records, once its precision is settled
            self._record_run()
            self.monitor = Monitor(self.keeper.run_dir, self.progress.step if resume else None,
                                   self.settings, self.max_time)
        self.watch = Watch(cfg.run_dir, self.prepared, self.settings.watch, cfg.model.max_tokens,
                           self.progress.step) if dist.is_main and self.settings.watch else None

    def _setup_device(self) -> torch.device:
        if self.settings.num_threads:
            torch.set_num_threads(self.settings.num_threads)
        device = self.dist.device or pick_device(self.settings.device)
        check_precision(self.settings.precision, device)
        return device

    def _setup_model(self, source: Source | None) -> None:
        """The model (the same weights on every rank: new, or a source run's), Adam with its
        schedule, the average."""
        settings = self.settings
        torch.manual_seed(settings.seed)
        random.seed(settings.seed)
        tokenizer = self.prepared.tokenizer
        self.model = Transformer(self.cfg.model, tokenizer.src_vocab_size,
                                 tokenizer.tgt_vocab_size).to(self.device)
        if source is not None:
            load_weights(self.model, source)
        torch.manual_seed(settings.seed + self.dist.rank)  # a dropout stream each
        self.optim = Optimizer(self.model, settings, self.device,
                               lambda step: lr_factor(step, settings, self.progress))
        self.ema = EMA.attach(self.model, self.optim.adam, settings.ema_decay)  # None when 0

    def _setup_data(self) -> None:
        """The training split as token batches: rank r of W reads batches r, r+W, ... of each
        epoch, from the run's epoch and position on, so a resumed run reads on exactly."""
        self.sampler = SubwordSampler.from_config(self.cfg, self.prepared)
        self.train_set = self.prepared.splits["train"].select_columns(self.sampler.columns)
        self.batches = self.sampler.token_batches(self.train_set)
        self.stream = self.batches.stream(self.progress.epoch, self.progress.position,
                                          self.dist.rank, self.dist.world_size)

    def _record_run(self) -> None:
        """Rank 0: the resolved config and where the run comes from, beside its checkpoints."""
        run_dir = self.keeper.run_dir
        checkpoint.write(run_dir / "config.yaml", lambda f: f.write(dump(self.cfg).encode()))
        record_run(run_dir, self.progress.step, self.device,
                   self.progress.precision or self.settings.precision, corpus_record(self.cfg.data),
                   init_from=None if self.progress.step else self.init_from)

    def _state(self) -> dict:
        """What a checkpoint holds; `restore` takes it back."""
        return {"step": self.progress.step, "config": to_dict(self.cfg),
                "tokenizer": self.prepared.tokenizer.to_state(), "model": self.model.state_dict(),
                **self.optim.state_dict(), "progress": dataclasses.asdict(self.progress),
                "rng": self.rng_states, "ema": self.ema.state_dict() if self.ema else None,
                "init_from": self.init_from}

    def run(self) -> Trained:
        """Update until a budget, patience or a signal says stop; then validate and save."""
        if self.dist.is_main:
            log.info("%d process(es) on %s; %d parameters; %d training pairs, %d batches an epoch"
                     "; train.compile %s", self.dist.world_size, self.device,
                     sum(p.numel() for p in self.model.parameters()), len(self.train_set),
                     len(self.batches.epoch(self.progress.epoch)), self.compile_why)
        self.clock, stop = time.perf_counter(), StopSignal()
        with stop:
            reason = self._train(stop)
            self.rng_states = self.dist.gather(rng_state())
            if self.dist.is_main:
                self.finish(reason)
            self.dist.barrier()  # the other ranks wait while rank 0 validates and saves
        if stop.received is not None:
            raise SystemExit(128 + stop.received)
        return Trained(self.progress, self.model)

    def _train(self, stop: StopSignal) -> str:
        """The loop: update, report, validate now and then; returns why it stopped."""
        settings, progress = self.settings, self.progress
        while progress.step < settings.max_steps:
            update = self.update(stop)
            if self.monitor is not None:
                self.monitor.report(progress, update, self.optim.lr)
            if update.stop_requested:
                return f"signal {stop.name}"
            if progress.step % settings.eval_every == 0 and self._timed_validation():
                return f"patience ({settings.patience} validations without a better BLEU)"
            if budget_spent := self._budget_spent():
                return budget_spent
        return "max_steps"

    def update(self, stop: StopSignal) -> Update:
        """One optimiser update over `train.accumulate` batches (and every process)."""
        settings, device = self.settings, self.device
        self.model.train()
        sums = torch.zeros(5, device=device)  # loss, target and source tokens, slots, stop votes
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
                    loss = self.loss(src_ids, tgt_in, tgt_out)
                self.optim.backward(loss)
            sums[0] += loss.detach()
            sums[1:4] += torch.tensor([batch.tgt_tokens, batch.src_tokens, batch.slots],
                                      device=device)
        sums[4] = float(stop.received is not None)
        sums, self.progress.elapsed = self.dist.sum_and_latest_clock(sums, self._tick())
        loss_sum, tgt_tokens, src_tokens, slots, stop_votes = sums.unbind()
        step_loss = (loss_sum / tgt_tokens).item()
        self._refuse_non_finite("loss", step_loss)
        norm = self.optim.scale_and_clip_gradients(self.dist.world_size / tgt_tokens)
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
                f"checkpoint stays in {self.keeper.folder}; try a lower train.lr or "
                "train.precision=fp32")

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
        stop_now = self.dist.is_main and self.validation()
        progress.validation_seconds += time.perf_counter() - started
        stop_now, progress.elapsed, progress.validation_seconds = self.dist.broadcast(
            float(stop_now), self._tick(), progress.validation_seconds)
        plan_decay(self.settings, progress, self.max_time, self.dist)
        return bool(stop_now)

    def validation(self) -> bool:
        """Rank 0: validate, log, keep the checkpoints; True when patience says stop."""
        progress, patience = self.progress, self.settings.patience
        result, scores, best = validate_scored(self.model, self.ema, self.prepared, self.cfg,
                                               self.device, self.autocast)
        improved = progress.record_validation(result.bleu)
        self.monitor.validated(progress, scores)
        if self.watch:  # before the checkpoints: a kill in between redoes this on resume
            self.watch.record(self.ema.model if self.ema else self.model, progress.step)
        self.keeper.keep(self.model, progress, improved, best)
        return bool(patience) and progress.bad_validations >= patience

    def finish(self, reason: str) -> None:
        """Rank 0: save after a signal; otherwise a last validation and the averaged weights."""
        progress = self.progress
        if reason.startswith("signal"):
            self.keeper.save(self.keeper.last)
            log.info("stopped by %s at step %d; saved %s (continue with --resume)",
                     reason, progress.step, self.keeper.last)
            return
        if progress.step % self.settings.eval_every:
            self.validation()
        if self.settings.average_last and len(progress.snapshots) > 1:
            self._average()
        log.info("stopped at step %d (%s); best validation BLEU %.2f at step %d",
                 progress.step, reason, progress.best_bleu, progress.best_step)

    def _average(self) -> None:
        """Average the kept snapshots; the average becomes best.pt when its BLEU is higher."""
        progress = self.progress
        final = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(averaged_snapshots(self.keeper.run_dir, progress.snapshots,
                                                      self.device))
        result = validate(self.model, self.prepared, self.cfg, self.device, self.autocast)
        self.monitor.averaged(progress, result)
        if result.bleu > progress.best_bleu:
            progress.best_bleu = result.bleu
            self.keeper.save(self.keeper.best, val_bleu=result.bleu, averaged=progress.snapshots)
        self.model.load_state_dict(final)

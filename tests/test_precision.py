"""train.precision auto: native bf16 detection, the timed probe, resume, and bf16 that learns."""

from __future__ import annotations

import json
import platform
import re
from pathlib import Path

import pytest
import torch
from helpers import completed, losses, tiny, write_config

from mha.configs.schema import load_config
from mha.data.batching import TokenBatches, collate
from mha.inference import checkpoint
from mha.model.transformer import Transformer
from mha.training import precision
from mha.training.distributed import Distributed
from mha.training.loop import train
from mha.training.loss import ChunkedCrossEntropy, summed_loss

CPU = torch.device("cpu")
def tiny_model_and_batches(count: int = 4):
    cfg = load_config("tiny", ["model.d_model=32", "model.heads=2", "model.d_ff=64"])
    torch.manual_seed(0)
    model = Transformer(cfg.model, 50, 50)
    batches = [collate(torch.randint(4, 50, (6, 7)).tolist(), torch.randint(4, 50, (6, 9)).tolist())
               for _ in range(count)]
    return model, batches


def native(monkeypatch, flags: set[str]) -> None:
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)


@pytest.mark.parametrize("faster", ["bf16", "fp32"])
def test_probe_never_picks_the_slower_one(monkeypatch, faster):
    native(monkeypatch, {"avx512f", "avx512_bf16"})
    slower = "fp32" if faster == "bf16" else "bf16"
    # one slow spell of the machine hits the faster format's second step: the median ignores it
    seconds = {faster: iter([9.0, 1.0, 5.0, 1.0, 1.0]), slower: iter([9.0, 2.0, 2.0, 2.0, 2.0])}
    monkeypatch.setattr(precision, "_timed_step",
                        lambda model, batch, fmt, smoothing, device: next(seconds[fmt]))
    model, batches = tiny_model_and_batches()
    assert precision.faster_precision(model, batches, 0.1, CPU, Distributed()) == faster


def test_auto_picks_fp32_without_native_bf16_and_times_nothing(monkeypatch):
    # torch calls such a CPU "AVX512"; without avx512_bf16 / amx_bf16 its bf16 is emulated
    native(monkeypatch, {"avx2", "avx512f", "avx512bw", "avx512_vnni"})

    def no_timing(*args):
        raise AssertionError("no probe without native bf16")

    monkeypatch.setattr(precision, "step_seconds", no_timing)
    model, batches = tiny_model_and_batches()
    assert not precision.native_bf16(CPU)
    assert precision.faster_precision(model, batches, 0.1, CPU, Distributed()) == "fp32"


def test_cpu_flags_come_from_proc_cpuinfo():
    cpuinfo = Path("/proc/cpuinfo")
    listed = re.search(r"^flags\s*:(.*)$", cpuinfo.read_text(), re.MULTILINE) if cpuinfo.exists() \
        else None  # x86 lists "flags"; other architectures name theirs otherwise
    assert precision.cpu_flags() == (set(listed[1].split()) if listed else set())
    if listed and platform.machine() == "x86_64":
        assert {"fpu", "sse2"} <= precision.cpu_flags()  # every x86-64 CPU has both


def test_the_probe_leaves_weights_gradients_and_random_stream_alone():
    model, batches = tiny_model_and_batches()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    seconds = precision.step_seconds(model, batches, 0.1, CPU)
    assert set(seconds) == {"fp32", "bf16"} and all(s > 0 for s in seconds.values())
    assert torch.equal(torch.get_rng_state(), rng)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert all(p.grad is None for p in model.parameters())


def test_resumed_run_keeps_the_stored_choice(tmp_path, small_corpus, monkeypatch):
    native(monkeypatch, {"avx512_bf16"})
    monkeypatch.setattr(precision, "step_seconds", lambda *a: {"bf16": 1.0, "fp32": 2.0})
    first = train(tiny(tmp_path, small_corpus, "train.precision=auto", "train.max_steps=5"))
    assert first.progress.precision == "bf16"
    assert checkpoint.load(tmp_path / "checkpoints" / "last.pt")["progress"]["precision"] == "bf16"
    # resumed on a machine where fp32 would win, or without native bf16: no new probe, still bf16
    native(monkeypatch, set())
    monkeypatch.setattr(precision, "step_seconds", lambda *a: {"bf16": 2.0, "fp32": 1.0})
    resumed = train(tiny(tmp_path, small_corpus, "train.precision=auto", "train.max_steps=7"),
                    resume=True)
    assert resumed.progress.precision == "bf16"


def test_auto_run_equals_a_run_of_the_chosen_precision(tmp_path, small_corpus, monkeypatch):
    # the probe really trains a copy (dropout draws and all); the run must not notice
    native(monkeypatch, {"avx512_bf16"})
    measured = precision.step_seconds
    monkeypatch.setattr(precision, "step_seconds",
                        lambda *a: {**measured(*a), "bf16": 2.0, "fp32": 1.0})
    auto = train(tiny(tmp_path / "auto", small_corpus, "train.precision=auto",
                      "train.max_steps=6"))
    assert auto.progress.precision == "fp32"
    plain = train(tiny(tmp_path / "fp32", small_corpus, "train.max_steps=6"))
    assert losses(tmp_path / "auto") == losses(tmp_path / "fp32")
    for (name, a), b in zip(auto.model.state_dict().items(), plain.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_bf16_on_cpu_stays_finite_and_learns():
    model, batches = tiny_model_and_batches(count=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    seen = []
    for _ in range(15):  # 30 updates
        for batch in batches:
            with precision.autocast("bf16", CPU):
                loss = summed_loss(model, batch.src_ids, batch.tgt_in, batch.tgt_out, 0.0)
            (loss / batch.tgt_tokens).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seen.append(loss.item() / batch.tgt_tokens)
    assert all(torch.isfinite(torch.tensor(seen)))
    assert sum(seen[-4:]) < 0.7 * sum(seen[:4]), (seen[:4], seen[-4:])  # ln 50 = 3.9 at first


@pytest.mark.parametrize("rows", [1, 300])  # one chunk, several chunks and a remainder
def test_chunked_loss_equals_cross_entropy_of_the_fp32_logits(rows):
    torch.manual_seed(0)
    logits = (torch.randn(rows, 50) * 4).bfloat16().requires_grad_()
    target = torch.randint(0, 50, (rows,))
    loss = ChunkedCrossEntropy.apply(logits, target, 0.1)
    loss.backward()
    reference_logits = logits.detach().float().requires_grad_()
    reference = torch.nn.functional.cross_entropy(reference_logits, target, reduction="sum",
                                                  label_smoothing=0.1)
    reference.backward()
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-4)
    assert logits.grad.dtype == torch.bfloat16
    torch.testing.assert_close(logits.grad.float(), reference_logits.grad, rtol=1e-2, atol=1e-3)


def test_chunked_loss_without_gradients_gives_the_same_loss():
    logits = (torch.randn(300, 50) * 4).bfloat16()
    target = torch.randint(0, 50, (300,))
    with torch.no_grad():
        loss = ChunkedCrossEntropy.apply(logits, target, 0.1)
    reference = torch.nn.functional.cross_entropy(logits.float(), target, reduction="sum",
                                                  label_smoothing=0.1)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-4)


def test_probe_batches_come_round_again_when_an_epoch_has_fewer():
    pairs = {"src_ids": [[5, 6, 2], [7, 2]], "tgt_ids": [[1, 8, 2], [1, 9, 9, 2]]}

    class Rows:  # what a datasets.Dataset answers to a list of indices
        def __getitem__(self, indices):
            return {column: [pairs[column][i] for i in indices] for column in pairs}

    one_batch = TokenBatches([3, 2], [3, 4], batch_tokens=100, seed=1)
    batches = precision.probe_batches(Rows(), one_batch, epoch=0)
    assert len(batches) == precision.PROBE_BATCHES
    assert all(b.src_ids.shape == (2, 3) and b.tgt_in.shape == (2, 3) for b in batches)


def test_two_processes_follow_rank_0s_choice(tmp_path, small_corpus):
    config = write_config(tiny(tmp_path / "run", small_corpus, "train.precision=auto",
                               "train.max_steps=5"), tmp_path / "c.yaml")
    stderr = completed(config, tmp_path)
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["precision"] == rank1["precision"] in ("fp32", "bf16")
    assert stderr.count("train.precision auto:") == 1  # rank 0 alone times and logs

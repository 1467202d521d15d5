"""`mha export`: write a trained model as a CTranslate2 model folder, built through its spec API.

CTranslate2 (OpenNMT's inference engine) loads a model from a specification: a tree of named
weights (`ctranslate2.specs.TransformerSpec`) and a config. mha's transformer maps onto it one
to one:

    mha                                    CTranslate2 spec
    src_embed, tgt_embed (times sqrt(D))   encoder.embeddings[0], decoder.embeddings
    positions: mha's own (P, D) table      encoder/decoder.position_encodings.encodings
    self_attn W_Q, W_K, W_V | W_O          self_attention.linear[0] = [W_Q; W_K; W_V] | linear[1]
    cross_attn W_Q | W_K, W_V | W_O        attention.linear[0] | linear[1] = [W_K; W_V] | linear[2]
    each Residual's LayerNorm              the sublayer's layer_norm (pre_norm says where)
    feed_forward W_1 | W_2                 ffn.linear_0 | ffn.linear_1
    encoder_norm, decoder_norm (pre-norm)  encoder.layer_norm, decoder.layer_norm
    output                                 decoder.projection

mha's table is written out even when sinusoidal: CTranslate2's own sinusoid puts all sines
before all cosines, mha interleaves them. The vocabularies list SentencePiece pieces in id
order, so CTranslate2's ids are mha's; the config appends </s> to the source and starts
decoding from <s>, as mha does.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from types import ModuleType

import numpy as np
import sentencepiece as spm
import torch
from torch import nn

from mha.configs.schema import Config, dump
from mha.data.tokenizer import Tokenizer
from mha.inference.checkpoint import resolve
from mha.inference.run import load_model
from mha.model.transformer import Transformer

ENGINES = ("ctranslate2",)
INSTALL = "pip install 'mha[export]'"
QUANTIZATIONS = {"float32": "float32", "int8": "int8", "int16": "int16", "bf16": "bfloat16"}
CONFIG_FILE = "mha.yaml"  # the run's resolved config: decode settings for `--engine ctranslate2`
DEFAULT_DIR = "ctranslate2"  # RUN/ctranslate2 unless --output says otherwise


class ExportError(Exception):
    """An export that cannot be done as asked; the message says why and what to do."""


def import_ctranslate2() -> ModuleType:
    """The ctranslate2 module, or ExportError saying how to install it (an optional extra)."""
    try:
        import ctranslate2
    except ImportError:
        raise ExportError(f"ctranslate2 is not installed; install it with: {INSTALL}") from None
    return ctranslate2


def export(
    run_dir: Path, *, to: str = "ctranslate2", output: Path | None = None,
    quantization: str = "float32", which: str = "best", force: bool = False,
) -> Path:
    """Write run_dir's checkpoint `which` as a CTranslate2 model folder; returns the folder.

    The folder holds model.bin, config.json, the vocabularies, the SentencePiece model(s),
    mha.yaml and README.md. It is built beside `output` and renamed into place, so a failure
    leaves nothing behind. Raises ExportError for an unknown engine, a missing ctranslate2, a
    quantization this CPU cannot run, or an output folder that exists and is not empty (without
    force); CheckpointError for a folder that is not a run.
    """
    if to not in ENGINES:
        raise ExportError(f"--to must be one of {', '.join(ENGINES)}, got {to!r}")
    ct2 = import_ctranslate2()
    weights = check_quantization(quantization, ct2)
    run_dir = Path(run_dir)
    model, tokenizer, cfg = load_model(run_dir, which, "cpu")
    output = Path(output) if output is not None else run_dir / DEFAULT_DIR
    check_output(output, force)
    spec = build_spec(model, tokenizer, ct2)
    spec.validate()
    spec.optimize(quantization=weights)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}."))
    try:
        spec.save(str(staging))
        tokenizer.save(staging)
        (staging / CONFIG_FILE).write_text(dump(cfg), encoding="utf-8")
        source = resolve(run_dir, which)
        (staging / "README.md").write_text(readme(cfg, tokenizer, source, quantization),
                                           encoding="utf-8")
        if output.is_dir():
            shutil.rmtree(output)  # empty, or --force
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


def check_quantization(name: str, ct2: ModuleType) -> str:
    """The CTranslate2 name of quantization `name`; ExportError unless this CPU can run it."""
    if name not in QUANTIZATIONS:
        raise ExportError(f"--quantization must be one of {', '.join(QUANTIZATIONS)}, got {name!r}")
    supported = ct2.get_supported_compute_types("cpu")
    if QUANTIZATIONS[name] not in supported:
        usable = [key for key, value in QUANTIZATIONS.items() if value in supported]
        raise ExportError(f"quantization {name} is not supported by CTranslate2 on this CPU "
                          f"(supported here: {', '.join(usable)})")
    return QUANTIZATIONS[name]


def check_output(output: Path, force: bool) -> None:
    """Refuse a file, or a folder with something in it unless force."""
    if output.exists() and not output.is_dir():
        raise ExportError(f"output {output} is a file, not a folder")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise ExportError(f"output folder {output} exists and is not empty "
                          "(pass --force to replace it, or choose --output)")


def build_spec(model: Transformer, tokenizer: Tokenizer, ct2: ModuleType):
    """A ctranslate2.specs.TransformerSpec holding the model's weights, vocabularies and config.

    Raises ExportError for a model setting the spec cannot express.
    """
    cfg = model.cfg
    activations = {"relu": ct2.specs.Activation.RELU, "gelu": ct2.specs.Activation.GELU}
    if cfg.activation not in activations:
        raise ExportError(f"model.activation {cfg.activation!r} has no CTranslate2 equivalent "
                          f"here (exportable: {', '.join(activations)})")
    if not cfg.attention_scale:
        raise ExportError("model.attention_scale is false: CTranslate2 always divides Q K^T by "
                          "sqrt(d_k) (exportable: a model trained with attention_scale true)")
    spec = ct2.specs.TransformerSpec.from_config(
        (cfg.encoder_layers, cfg.decoder_layers), cfg.heads, pre_norm=cfg.norm == "pre",
        activation=activations[cfg.activation])
    table = _array(model.positions(cfg.max_positions))  # (P, D), sinusoidal or learned
    _set_encoder(spec.encoder, model, table)
    _set_decoder(spec.decoder, model, table)
    source, target = vocabularies(tokenizer)
    spec.register_source_vocabulary(source)
    spec.register_target_vocabulary(target)
    config = spec.config
    config.unk_token, config.bos_token = target[Tokenizer.UNK], target[Tokenizer.BOS]
    config.eos_token = target[Tokenizer.EOS]
    config.decoder_start_token = target[Tokenizer.BOS]
    config.add_source_bos, config.add_source_eos = False, True
    config.layer_norm_epsilon = model.encoder[0].attn_block.norm.eps  # torch's 1e-5
    return spec


def vocabularies(tokenizer: Tokenizer) -> tuple[list[str], list[str]]:
    """(source, target) SentencePiece pieces in id order: piece i is id i."""
    state = tokenizer.to_state()
    protos = [state["src_model"], state["src_model"] if state["joint"] else state["tgt_model"]]
    pieces = []
    for proto in protos:
        processor = spm.SentencePieceProcessor(model_proto=proto)
        pieces.append([processor.id_to_piece(i) for i in range(processor.get_piece_size())])
    return pieces[0], pieces[1]


def _set_encoder(spec, model: Transformer, table: np.ndarray) -> None:
    spec.embeddings[0].weight = _array(model.src_embed.weight)  # scale_embeddings: times sqrt(D)
    spec.position_encodings.encodings = table
    if model.cfg.norm == "pre":
        _set_norm(spec.layer_norm, model.encoder_norm)
    for layer_spec, layer in zip(spec.layer, model.encoder):
        _set_attention(layer_spec.self_attention, layer.attn_block.norm, layer.self_attn)
        _set_feed_forward(layer_spec.ffn, layer)


def _set_decoder(spec, model: Transformer, table: np.ndarray) -> None:
    spec.embeddings.weight = _array(model.tgt_embed.weight)
    spec.position_encodings.encodings = table
    if model.cfg.norm == "pre":
        _set_norm(spec.layer_norm, model.decoder_norm)
    _set_linear(spec.projection, model.output)  # tied: the same array as the embeddings
    for layer_spec, layer in zip(spec.layer, model.decoder):
        _set_attention(layer_spec.self_attention, layer.self_block.norm, layer.self_attn)
        _set_attention(layer_spec.attention, layer.cross_block.norm, layer.cross_attn, cross=True)
        _set_feed_forward(layer_spec.ffn, layer)


def _set_attention(spec, norm: nn.LayerNorm, attn: nn.Module, cross: bool = False) -> None:
    """linear[0] = [W_Q; W_K; W_V] (self) or W_Q, linear[1] = [W_K; W_V] (cross); then W_O."""
    _set_norm(spec.layer_norm, norm)
    inputs = [[attn.w_q], [attn.w_k, attn.w_v]] if cross else [[attn.w_q, attn.w_k, attn.w_v]]
    for linear, layers in zip(spec.linear, [*inputs, [attn.w_o]]):
        _set_linear(linear, *layers)


def _set_feed_forward(spec, layer: nn.Module) -> None:
    _set_norm(spec.layer_norm, layer.ff_block.norm)
    _set_linear(spec.linear_0, layer.feed_forward.w_1)
    _set_linear(spec.linear_1, layer.feed_forward.w_2)


def _set_linear(spec, *layers: nn.Linear) -> None:
    """One CTranslate2 linear from mha projections that read the same input: [W_1; W_2; ...]."""
    spec.weight = _array(torch.cat([layer.weight for layer in layers]))  # (n * out, in)
    if layers[0].bias is not None:
        spec.bias = _array(torch.cat([layer.bias for layer in layers]))


def _set_norm(spec, norm: nn.LayerNorm) -> None:
    spec.gamma, spec.beta = _array(norm.weight), _array(norm.bias)


def _array(tensor: torch.Tensor) -> np.ndarray:
    """A float32 copy: quantizing the spec works in place and must not touch the model."""
    return tensor.detach().to(torch.float32).cpu().numpy().copy()


def readme(cfg: Config, tokenizer: Tokenizer, checkpoint: Path, quantization: str) -> str:
    """README.md for the exported folder: what it is, and a script that translates stdin."""
    src_file, tgt_file = (("spm.model", "spm.model") if tokenizer.joint
                          else ("src.model", "tgt.model"))
    a, b, cap = cfg.decode.max_len_a, cfg.decode.max_len_b, cfg.model.max_tokens
    return f"""# A {cfg.data.src_lang}->{cfg.data.tgt_lang} mha model for CTranslate2

Exported by `mha export` from `{checkpoint}`, weights {quantization}
({cfg.model.encoder_layers}+{cfg.model.decoder_layers} layers, d_model {cfg.model.d_model}).
Tokens are SentencePiece pieces ({src_file}, {tgt_file}); the model appends `</s>` to the
source itself and starts decoding from `<s>`. mha caps an output at a * S + b tokens, S the
source's pieces plus `</s>` (a = {a}, b = {b}), and at most {cap}; it may stop at once
(`min_decoding_length=0`).

With mha: `mha translate THIS_FOLDER --engine ctranslate2 "a sentence"`. Without it
(`pip install ctranslate2 sentencepiece`), run this from inside the folder, a sentence a line
on stdin:

```python
import sys

import ctranslate2
import sentencepiece as spm

source = spm.SentencePieceProcessor(model_file="{src_file}")
target = spm.SentencePieceProcessor(model_file="{tgt_file}")
translator = ctranslate2.Translator(".", device="cpu")
for line in sys.stdin:
    pieces = source.encode(line.strip(), out_type=str)
    limit = min(int({a} * (len(pieces) + 1) + {b}), {cap})
    result = translator.translate_batch([pieces], beam_size=1, min_decoding_length=0,
                                        max_decoding_length=limit)
    print(target.decode(result[0].hypotheses[0]))
```
"""

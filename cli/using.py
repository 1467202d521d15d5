"""Commands that use a trained model: translate, eval, explore, tune-decode, export."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated

import typer

from mha.cli import decoding as opt
from mha.cli import engines
from mha.cli.app import command, fail
from mha.cli.engines import MODEL, QuantizationOpt, check_engine, check_ensemble, open_engine

RunArg = Annotated[Path, typer.Argument(help="A run folder made by `mha train`.")]
CheckpointOpt = Annotated[str, typer.Option(
    "--checkpoint", help="best, last or a checkpoint path.", rich_help_panel=MODEL)]
DeviceOpt = Annotated[str, typer.Option(
    "--device", help="auto (cuda when available), cpu or cuda.", rich_help_panel=MODEL)]
BeamOpt = Annotated[int | None, typer.Option(
    "--beam", min=1, help="Beam size; 1 is greedy (default: the run's decode.beam).",
    rich_help_panel=opt.SEARCH)]
BatchOpt = Annotated[int | None, typer.Option(
    "--batch-size", min=1, help="Sentences per batch (default: the run's decode.batch_size).",
    rich_help_panel=MODEL)]
EnsembleOpt = Annotated[list[str] | None, typer.Option(
    "--ensemble", help="Decode together with this run folder or checkpoint file (repeatable): "
    "the members' log-probabilities are averaged at each step; they share RUN's tokenizer.",
    show_default=False, rich_help_panel=MODEL)]
EngineOpt = Annotated[str, typer.Option(
    "--engine", help="mha (its own decoder) or ctranslate2 (the model `mha export` wrote into "
    "RUN/ctranslate2; RUN may also be that folder).", rich_help_panel=MODEL)]


@command
def translate(
    run_dir: RunArg,
    texts: opt.TextsArg = None,
    input_file: opt.InputOpt = None,
    output_file: opt.OutputOpt = None,
    as_json: opt.JsonOpt = False,
    token_scores: opt.TokenScoresOpt = False,
    beam: BeamOpt = None,
    nbest: opt.NbestOpt = None,
    prefix: opt.PrefixOpt = None,
    no_cache: opt.NoCacheOpt = False,
    compile: opt.CompileOpt = None,
    sample: opt.SampleOpt = False,
    top_k: opt.TopKOpt = None,
    top_p: opt.TopPOpt = None,
    temperature: opt.TemperatureOpt = None,
    seed: opt.SeedOpt = None,
    which: CheckpointOpt = "best",
    batch_size: BatchOpt = None,
    device: DeviceOpt = "auto",
    engine: EngineOpt = "mha",
    quantization: QuantizationOpt = None,
    ensemble: EnsembleOpt = None,
    attention: opt.AttentionOpt = None,
    self_attention: opt.SelfAttentionOpt = False,
    alignments: opt.AlignmentsOpt = False,
    align_layer: opt.AlignLayerOpt = None,
    shift_att: opt.ShiftAttOpt = False,
) -> None:
    """Translate sentences from the arguments, a file or stdin: a line per line (N: --nbest)."""
    from mha.inference.translate import decode_chunks

    lines = _sources(texts, input_file, attention, self_attention, engine, no_cache, ensemble)
    opt.check_output_options(attention=attention is not None, nbest=nbest, as_json=as_json,
                             token_scores=token_scores, sample=sample, prefix=prefix)
    opt.check_alignments(alignments, align_layer, shift_att, engine, attention, ensemble)
    sampling = opt.sampling_of(sample, top_k, top_p, temperature, seed)
    translator, decode = open_engine(run_dir, engine, which, device, not no_cache, ensemble,
                                     quantization,
                                     *engines.compiling(compile, lines, alignments or token_scores))
    search = opt.search_of(beam, decode.beam, nbest, sampling)
    batch_size = batch_size or decode.batch_size
    align = opt.aligner_of(alignments, align_layer, shift_att, run_dir, translator, batch_size)
    chunks = opt.input_chunks(translator.tokenizer, lines, input_file, batch_size)
    if attention:  # decoded once, for the picture and the answer
        return _emit([_draw(translator.model, translator.tokenizer, texts[0], decode,
                            search.beam, attention, self_attention)], output_file)
    translations = decode_chunks(translator, chunks, search, batch_size=batch_size,
                                 prefix=prefix or "", token_scores=token_scores, align=align)
    _emit(opt.printed(translations, nbest=nbest, as_json=as_json), output_file)


def _sources(texts: list[str] | None, input_file: Path | None, attention: Path | None,
             self_attention: bool, engine: str = "mha", no_cache: bool = False,
             ensemble: list[str] | None = None) -> list[str] | None:
    """The sentences to translate: `texts`, or input_file's lines (read before the model loads),
    or None for stdin; fails for options that do not go with them or with the engine."""
    from mha.data.files import read_lines

    check_engine(engine, no_cache or attention is not None)
    check_ensemble(ensemble, engine, attention is not None)
    if texts and input_file:
        fail("give sentences as arguments or with --input FILE, not both")
    if (attention or self_attention) and (attention is None or len(texts or []) != 1):
        fail("--attention FILE.png draws one sentence: give exactly one TEXT "
             "(and --self-attention only with it)")
    return read_lines(input_file) if input_file else texts


def _draw(model, tokenizer, text: str, decode, beam: int, picture: Path,
          self_attention: bool) -> str:
    """Draw the sentence's attention into `picture`; returns its translation."""
    from mha.inference.pictures import attention_weights, plot_attention

    weights = attention_weights(model, tokenizer, text, decode, beam)
    plot_attention(weights, picture, self_attention=self_attention)
    return weights.translation


def _emit(lines, output_file: Path | None) -> None:
    """To stdout, flushed line by line (a pipe gets each answer as it is ready), or a file."""
    if output_file is None:
        for line in lines:
            typer.echo(line)
        return
    from mha.data.files import write_lines

    write_lines(output_file, lines)


@command
def explore(
    run_dir: RunArg,
    texts: Annotated[list[str] | None, typer.Argument(help="Sentences", show_default=False)] = None,
    input_file: Annotated[Path | None, typer.Option("--input", help="A sentence a line.")] = None,
    output_file: Annotated[Path | None, typer.Option(
        "--output", help="The page (default: RUN/explore.html).", show_default=False)] = None,
    beam: BeamOpt = None,
    which: CheckpointOpt = "best",
    device: DeviceOpt = "auto",
    history: Annotated[bool | None, typer.Option(
        "--history/--no-history", help="The training tab: the watched sentences' attention at "
        "every validation (default: when the run kept it, train.watch).",
        show_default=False)] = None,
) -> None:
    """Write one self-contained HTML page that shows every attention weight, step by step."""
    from mha.inference.explore import explore as write_page

    lines = _sources(texts, input_file, None, False) or []
    output = output_file or run_dir / "explore.html"
    write_page(run_dir, lines, output, which=which, beam=beam, device=device,
               name=str(input_file or "the arguments"), history=history)
    typer.echo(f"{output}: {len(lines)} of at most 100 sentences; open it in a browser")


@command
def eval(  # the command's name; shadows the builtin only inside this module
    run_dir: RunArg,
    split: Annotated[str, typer.Option(
        "--split", help="The run's prepared split to score: test or val.")] = "test",
    src_file: Annotated[Path | None, typer.Option(
        "--src-file", help="Score these sources instead of a split.")] = None,
    ref_file: Annotated[Path | None, typer.Option(
        "--ref-file", help="References for --src-file, line by line.")] = None,
    output_file: Annotated[Path | None, typer.Option(
        "--output", help="Hypotheses file (default: RUN/eval/SPLIT.greedy.hyp or .beamN.hyp).",
        show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    beam: BeamOpt = None,
    batch_size: BatchOpt = None,
    which: CheckpointOpt = "best",
    device: DeviceOpt = "auto",
    engine: EngineOpt = "mha",
    quantization: QuantizationOpt = None,
    ensemble: EnsembleOpt = None,
    compile: opt.CompileOpt = None,
    alignments: opt.EvalAlignmentsOpt = False,
    align_layer: opt.AlignLayerOpt = None,
    shift_att: opt.ShiftAttOpt = False,
) -> None:
    """Translate a test set; score it with sacreBLEU (BLEU cased, lowercased; chrF; signatures)."""
    from mha.inference.evaluate import evaluate
    from mha.inference.provenance import environment, read_run
    from mha.inference.run import pick_device
    from mha.inference.translate import warn_unknown_characters

    check_engine(engine, bool(ensemble))
    opt.check_alignments(alignments, align_layer, shift_att, engine, None, ensemble)
    sources, references, name = _eval_input(run_dir, engine, which, split, src_file, ref_file)
    translator, decode = open_engine(run_dir, engine, which, device, ensemble=ensemble,
                                     quantization=quantization,
                                     compile=False if alignments else compile,
                                     lines=len(sources))
    beam, batch_size = beam or decode.beam, batch_size or decode.batch_size
    align = opt.aligner_of(alignments, align_layer, shift_att, run_dir, translator, batch_size)
    warn_unknown_characters(translator.tokenizer, sources, str(src_file or f"the {split} split"))
    members = translator.model.sources if ensemble else None  # named in the JSON
    label = _decoding(beam, engine, members, quantization)
    result_path = run_dir / "eval" / f"{name}.{label}.json"
    hyp_path = output_file or result_path.with_suffix(".hyp")  # the JSON: read by `mha compare`
    provenance = {"eval": environment(pick_device(device)), "run": read_run(run_dir)}
    result = evaluate(translator, sources, references, batch_size=batch_size, beam=beam,
                      hyp_path=hyp_path, result_path=result_path, provenance=provenance,
                      ensemble=members, align=align, align_path=hyp_path.with_suffix(".align"))
    _report(as_json, result, hyp_path, result_path, align)


def _eval_input(run_dir: Path, engine: str, which: str, split: str, src_file: Path | None,
                ref_file: Path | None) -> tuple[list[str], list[str], str]:
    """eval_set's (sources, references, name) before the model loads, for decode.compile's
    count; a missing run or checkpoint is named first."""
    from mha.inference.checkpoint import resolve
    from mha.inference.evaluate import eval_set

    if engine == "mha":
        resolve(run_dir, which)
    return eval_set(run_dir, split, src_file, ref_file)


def _report(as_json: bool, result: dict, hyp_path: Path, result_path: Path, align) -> None:
    """`mha eval`'s answer: the JSON object, or the scores, their signatures and the files."""
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(f"{result['bleu_text']}\n  {result['signature']['bleu']}")
    typer.echo(f"{result['bleu_lc_text']} (lowercased)\n  {result['signature']['bleu_lc']}")
    typer.echo(f"{result['chrf_text']}\n  {result['signature']['chrf']}")
    compiled = (f" after compiling for {result['compile_seconds']:.1f} s"
                if result["compile_seconds"] else "")
    typer.echo(f"{result['sentences']} sentences in {result['seconds']:.1f} s{compiled} "
               f"({result['sentences_per_second']} sentences/s); hypotheses in {hyp_path}, "
               f"scores in {result_path}"
               + (f", word links in {hyp_path.with_suffix('.align')}" if align else ""))


def _decoding(beam: int, engine: str, members: list[dict] | None,
              quantization: str | None) -> str:
    """The result files' name for a decoding: greedy, beam5.ctranslate2, greedy.ensemble+b,
    greedy.int8."""
    from mha.inference.ensemble import ensemble_label

    return (("greedy" if beam == 1 else f"beam{beam}") + ("" if engine == "mha" else f".{engine}")
            + (f".{ensemble_label(members)}" if members else "")
            + (".int8" if quantization == "int8" else ""))


@command
def tune_decode(
    run_dir: RunArg,
    beams: Annotated[str, typer.Option(
        "--beams", help="Beam sizes to try, comma-separated; 1 is greedy.")] = "1,5",
    penalties: Annotated[str, typer.Option(
        "--penalties", help="Length penalties to try with each beam, comma-separated.")
    ] = "0.6,0.8,1.0,1.2,1.4",
    batch_size: BatchOpt = None,
    which: CheckpointOpt = "best",
    device: DeviceOpt = "auto",
) -> None:
    """Choose the beam size and length penalty on the val split (never the test split) and keep
    them in RUN/decode.yaml, which `mha eval` and `mha translate` then use."""
    from mha.inference.evaluate import eval_set
    from mha.inference.run import load_model
    from mha.inference.tune import choose, describe, format_table, parse_grid, save_choice, tune

    beam_sizes, length_penalties = parse_grid(beams, penalties)  # fails before the model loads
    sources, references, _ = eval_set(run_dir, "val")
    model, tokenizer, cfg = load_model(run_dir, which, device)
    trials = tune(model, tokenizer, sources, references, beams=beam_sizes,
                  penalties=length_penalties, decode_cfg=cfg.decode,
                  batch_size=batch_size or cfg.decode.batch_size)
    path = save_choice(run_dir, trials, which)
    typer.echo(f"val BLEU (cased) of {len(sources)} sentences:\n{format_table(trials)}")
    typer.echo(f"chose {describe(choose(trials))}: written to {path}")


@command
def export(
    run_dir: RunArg,
    to: Annotated[str, typer.Option("--to", help="The engine to export for: ctranslate2.")],
    output: Annotated[Path | None, typer.Option(
        "--output", help="The model folder to write (default: RUN/ctranslate2).",
        show_default=False)] = None,
    quantization: Annotated[str, typer.Option(
        "--quantization", help="Weights: float32, int8, int16 or bf16 (those CTranslate2 runs "
        "on this CPU).")] = "float32",
    which: CheckpointOpt = "best",
    force: Annotated[bool, typer.Option(
        "--force", help="Replace an output folder that is not empty.")] = False,
) -> None:
    """Write the model as a CTranslate2 model folder, with its tokenizer and a README."""
    from mha.data.runlock import run_lock
    from mha.inference.export import export as export_model

    into_run = run_dir.is_dir() and (output is None or run_dir.resolve() in
                                     output.resolve().parents)
    with run_lock(run_dir, "export") if into_run else contextlib.nullcontext():
        folder = export_model(run_dir, to=to, output=output, quantization=quantization,
                              which=which, force=force)
    typer.echo(f"wrote {folder} ({quantization} weights); {folder}/README.md shows how to use it, "
               f"or: mha translate {folder} --engine {to} \"a sentence\"")


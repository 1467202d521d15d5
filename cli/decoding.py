"""`mha translate`'s options (input and output, search, sampling, the attention picture): what
they allow together, where its lines come from and how each translation prints."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated

import typer

from mha.configs.schema import ConfigError
from mha.data.tokenizer import Tokenizer
from mha.inference.search import Search, Translation, json_line, nbest_lines
from mha.inference.translate import (
    CHUNK_BATCHES,
    chunked,
    warn_unknown_characters,
    warn_unknown_in_chunks,
)
from mha.inference.word_align import pharaoh
from mha.model.sample import Sampling

SEARCH, OUTPUT = "Search", "Input and output"
SAMPLING, PICTURE = "Sampling (instead of greedy or beam search)", "Attention picture"
ALIGN = "Word alignments"

TextsArg = Annotated[list[str] | None, typer.Argument(
    help="Sentences; without them, --input or stdin. A tab and a second column in a line is its "
    "--prefix.", show_default=False)]
InputOpt = Annotated[Path | None, typer.Option(
    "--input", help="Translate this file, a sentence a line.", rich_help_panel=OUTPUT)]
OutputOpt = Annotated[Path | None, typer.Option(
    "--output", help="Write here (atomically), not stdout.", rich_help_panel=OUTPUT)]
NoCacheOpt = Annotated[bool, typer.Option(
    "--no-cache", help="Greedy without the KV cache (same output, slower).",
    rich_help_panel=SEARCH)]
CompileOpt = Annotated[bool | None, typer.Option(
    "--compile/--no-compile", help="Greedy decoding compiled (torch.compile): faster a sentence, "
    "after compiling once, seconds to a minute (default: the run's decode.compile; auto: for 1000 "
    "or more input lines). Beam, sampling, prefixes, ensembles, alignments run eager.",
    rich_help_panel=SEARCH, show_default=False)]
AttentionOpt = Annotated[Path | None, typer.Option(
    "--attention", help="Draw the sentence's attention into this PNG.", rich_help_panel=PICTURE)]
SelfAttentionOpt = Annotated[bool, typer.Option(
    "--self-attention", help="With --attention, draw self-attention too.",
    rich_help_panel=PICTURE)]

NbestOpt = Annotated[int | None, typer.Option(
    "--nbest", help="Print the N best hypotheses per input, each `rank<TAB>score<TAB>"
    "log-probability<TAB>text` (needs a beam of N or more).", rich_help_panel=SEARCH,
    show_default=False)]
PrefixOpt = Annotated[str | None, typer.Option(
    "--prefix", help="Force the translation to start with this text and continue it (a line's "
    "own second, tab-separated column wins).", rich_help_panel=SEARCH, show_default=False)]
SampleOpt = Annotated[bool, typer.Option(
    "--sample", help="Draw each token from the model's distribution instead of taking the "
    "most probable.", rich_help_panel=SAMPLING)]
TopKOpt = Annotated[int | None, typer.Option(
    "--top-k", help="Draw among the K most probable tokens only (default: all).",
    rich_help_panel=SAMPLING, show_default=False)]
TopPOpt = Annotated[float | None, typer.Option(
    "--top-p", help="Draw among the fewest most probable tokens whose probability reaches P, "
    "in (0, 1] (default: 1).", rich_help_panel=SAMPLING, show_default=False)]
TemperatureOpt = Annotated[float | None, typer.Option(
    "--temperature", help="Above 0: below 1 sharper, above 1 flatter (default: 1).",
    rich_help_panel=SAMPLING, show_default=False)]
SeedOpt = Annotated[int | None, typer.Option(
    "--seed", help="The same seed and input give the same draws (default: 0).",
    rich_help_panel=SAMPLING, show_default=False)]
JsonOpt = Annotated[bool, typer.Option(
    "--json", help="One JSON object per input line: text, score, log_prob (and nbest, tokens).",
    rich_help_panel=OUTPUT)]
TokenScoresOpt = Annotated[bool, typer.Option(
    "--token-scores", help="With --json: each output subword's log-probability.",
    rich_help_panel=OUTPUT)]
AlignmentsOpt = Annotated[bool, typer.Option(
    "--alignments", help="After each output line a tab and its Pharaoh word links `i-j` (source "
    "word i, output word j, 0-based), from encoder-decoder attention (with --json: "
    "\"alignments\").", rich_help_panel=ALIGN)]
AlignLayerOpt = Annotated[int | None, typer.Option(
    "--align-layer", help="The decoder layer whose heads, averaged, give the links (default: the "
    "best layer `mha align` stored in the run, else the second-to-last).",
    rich_help_panel=ALIGN, show_default=False)]
EvalAlignmentsOpt = Annotated[bool, typer.Option(
    "--alignments", help="Also write each hypothesis's Pharaoh word links to RUN/eval/NAME.align "
    "(see `mha translate --alignments`).", rich_help_panel=ALIGN)]
ShiftAttOpt = Annotated[bool, typer.Option(
    "--shift-att", help="Shift-Att: link each output word by the step that reads it, not the "
    "one that predicts it.", rich_help_panel=ALIGN)]


def check_alignments(alignments: bool, layer: int | None, shift: bool, engine: str,
                     picture: Path | None, ensemble: list[str] | None) -> None:
    """ConfigError for alignment options that do not go together (before the model loads):
    --align-layer or --shift-att alone, --alignments with --attention's `picture`, --ensemble
    or another engine than mha's."""
    if not alignments and (layer is not None or shift):
        raise ConfigError("--align-layer and --shift-att choose how --alignments are read: "
                          "add --alignments")
    if not alignments:
        return
    if picture is not None:
        raise ConfigError("--alignments print links after each translation; --attention draws "
                          "one sentence's picture: give one of them")
    if ensemble:
        raise ConfigError("--alignments read one model's attention: leave out --ensemble")
    if engine != "mha":
        raise ConfigError(f"--alignments read one chosen layer's heads averaged; a model exported "
                          f"for --engine {engine} returns only the attention fixed at export (the "
                          f"last layer's first head): use --engine mha")


def aligner_of(alignments: bool, layer: int | None, shift: bool, run_dir: Path, engine,
               batch_size: int):
    """The Aligner the options ask for (None without --alignments); ConfigError for a layer
    the model lacks."""
    if not alignments:
        return None
    from mha.inference.align import default_layer
    from mha.inference.translation_links import Aligner, check_layer

    layers = len(engine.model.decoder)
    if layer is None:
        layer = default_layer(run_dir, layers)
    check_layer(layer, layers)
    return Aligner(engine.model, engine.tokenizer, layer, shift, batch_size)


def sampling_of(sample: bool, top_k: int | None, top_p: float | None,
                temperature: float | None, seed: int | None) -> Sampling | None:
    """The sampling the options ask for (None: no --sample); ConfigError for a bad value or a
    sampling option without --sample."""
    given = [name for name, value in (("--top-k", top_k), ("--top-p", top_p),
                                      ("--temperature", temperature), ("--seed", seed))
             if value is not None]
    if not sample:
        if given:
            raise ConfigError(f"{', '.join(given)} only shape --sample's draws: add --sample")
        return None
    sampling = Sampling(top_k=top_k, top_p=1.0 if top_p is None else top_p,
                        temperature=1.0 if temperature is None else temperature,
                        seed=seed or 0)
    Search(sampling=sampling)  # checks the values before the model loads
    return sampling


def search_of(beam: int | None, run_beam: int, nbest: int | None,
              sampling: Sampling | None) -> Search:
    """The search: --beam, else the run's decode.beam; with --sample, greedy's loop. Only an
    explicit --beam conflicts with --sample; the run's beam gives way, and says so."""
    if sampling is not None:
        if beam is not None and beam > 1:
            raise ConfigError(f"--sample draws one token at a time: it does not combine with "
                              f"--beam {beam} (leave --beam out)")
        if beam is None and run_beam > 1:
            typer.echo(f"the run's decode.beam ({run_beam}) gives way to --sample", err=True)
        beam = 1
    return Search(beam=beam or run_beam, nbest=1 if nbest is None else nbest, sampling=sampling)


def check_output_options(*, attention: bool, nbest: int | None, as_json: bool,
                         token_scores: bool, sample: bool, prefix: str | None) -> None:
    """ConfigError for output options that do not go together."""
    if token_scores and not as_json:
        raise ConfigError("--token-scores are printed in --json output: add --json")
    others = [name for name, given in (("--nbest", nbest is not None), ("--json", as_json),
                                       ("--sample", sample), ("--prefix", prefix is not None))
              if given]
    if attention and others:
        raise ConfigError(f"--attention draws one greedy or beam translation: not with "
                          f"{', '.join(others)}")


def input_chunks(tokenizer: Tokenizer, lines: list[str] | None, input_file: Path | None,
                 batch_size: int) -> Iterator[list[str]]:
    """Chunks of `lines` (named by input_file, else "the arguments", in the one warning about
    characters the tokenizer lacks), or of stdin as its lines arrive, a warning per chunk."""
    from mha.cli.stdin import stdin_chunks

    if lines is None:
        return warn_unknown_in_chunks(tokenizer, stdin_chunks(batch_size))
    warn_unknown_characters(tokenizer, lines, str(input_file or "the arguments"))
    return chunked(iter(lines), batch_size * CHUNK_BATCHES)


def printed(translations: Iterable[Translation], *, nbest: int | None,
            as_json: bool) -> Iterator[str]:
    """The lines to print: per translation its text, or its n-best lines, or one JSON object;
    with word links, a tab and the links after each text."""
    for translation in translations:
        aligned = translation.links is not None
        if as_json:
            yield json_line(translation, nbest=nbest is not None)
        elif nbest is not None:
            yield from nbest_lines(translation, nbest, alignments=aligned)
        elif aligned:
            best = translation.links[0] if translation.links else []  # none for a blank line
            yield f"{translation.text}\t{pharaoh(best)}"
        else:
            yield translation.text

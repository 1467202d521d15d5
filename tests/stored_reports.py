"""Stored reports built by hand for the page tests (RUN/align.json as `mha align` writes it) and
the texts the page shows for RUN/heads.json's records; heads.json itself: helpers.heads_report."""

from __future__ import annotations

import random


def align_report(layers: int, heads: int, best_layer: int, reference: str = "eflomal") -> dict:
    """An align.json as `mha align` writes it, every score different."""
    rng = random.Random(7)

    def methods() -> dict:
        return {m: {"aer": round(rng.random(), 4), "precision": round(rng.random(), 4),
                    "recall": round(rng.random(), 4)} for m in ("naive", "shift")}

    return {"split": "test", "sentences": 12, "checkpoint": "best", "checkpoint_step": 5,
            "reference": reference, "what": f"scores against {reference}", "sure_links": 40,
            "possible_links": 40,
            "layers": [{"layer": layer, "heads": [{"head": h, **methods()} for h in range(heads)],
                        "mean": methods()} for layer in range(layers)],
            "best": {"naive": {"layer": best_layer, "aer": 0.5}, "shift": None},
            "best_layer": best_layer}


def without_text(record: dict) -> str:
    def signed(value: float, digits: int) -> str:  # a minus sign, not a hyphen
        return ("\u2212" if value < 0 else "+") + f"{abs(value):.{digits}f}"

    return (f"without this head: val BLEU {record['val_bleu']:.2f} "
            f"({signed(-record['bleu_drop'], 2)}), loss {record['val_loss']:.4f} "
            f"({signed(record['loss_rise'], 4)})")

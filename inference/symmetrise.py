"""grow-diag-final-and: one alignment from the two directions of an aligner (Koehn et al. 2003,
as Moses and fast_align's atools do it; eflomal ships none).

Both directions are sets of (source i, target j) links. Start from their intersection; grow:
sweep the points in order (i, then j), and add any neighbour (the 8 around a point) that is in
the union and whose source or target word is still unaligned, until a sweep adds nothing; final-
and: add the links of the forward direction, then of the backward one, whose source and target
words are both still unaligned. A point added during a sweep is visited later in the same sweep
when it comes after the current point.
"""

from __future__ import annotations

Link = tuple[int, int]
NEIGHBOURS = ((-1, 0), (0, -1), (1, 0), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))


def grow_diag_final_and(forward: set[Link], backward: set[Link]) -> set[Link]:
    """The symmetrised links of one sentence pair."""
    alignment, union = forward & backward, forward | backward
    aligned_src, aligned_tgt = {i for i, _ in alignment}, {j for _, j in alignment}

    def add(i: int, j: int) -> None:
        alignment.add((i, j))
        aligned_src.add(i)
        aligned_tgt.add(j)

    grown = True
    while grown:
        grown = False
        for i in range(max((i for i, _ in union), default=-1) + 1):
            for j in range(max((j for _, j in union), default=-1) + 1):
                if (i, j) not in alignment:
                    continue
                for di, dj in NEIGHBOURS:
                    point = (i + di, j + dj)
                    if (point in union and point not in alignment
                            and (point[0] not in aligned_src or point[1] not in aligned_tgt)):
                        add(*point)
                        grown = True
    for direction in (forward, backward):  # final-and
        for i, j in sorted(direction):
            if i not in aligned_src and j not in aligned_tgt:
                add(i, j)
    return alignment

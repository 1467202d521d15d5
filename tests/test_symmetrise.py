"""grow-diag-final-and on a hand-worked example: the intersection, growth to neighbours in the
union (side and diagonal) while a word is unaligned, then final-and, forward links first."""

from mha.inference.symmetrise import grow_diag_final_and


def test_grow_diag_final_and_by_hand():
    forward = {(0, 0), (0, 1), (1, 1), (2, 1), (5, 5)}
    backward = {(0, 0), (1, 1), (1, 2), (2, 3), (4, 5)}
    # intersection {0-0, 1-1}; union adds 0-1, 2-1, 5-5, 1-2, 2-3, 4-5
    # grow, first sweep: at 0-0, neighbour 0-1 is in the union but source 0 and target 1 are
    #   both aligned: not added. At 1-1: 2-1 (source 2 unaligned) added, 1-2 (target 2
    #   unaligned) added. At 1-2 (added behind the sweep, visited next): diagonal 2-3 (target 3
    #   unaligned) added. At 2-1, 2-3: nothing new. Second sweep: nothing; stop.
    # final-and, forward first: 5-5 (source 5 and target 5 unaligned) added; backward: 4-5 not
    #   added (target 5 is aligned now), nor is 0-1 in forward (both aligned)
    assert grow_diag_final_and(forward, backward) == {(0, 0), (1, 1), (2, 1), (1, 2), (2, 3),
                                                      (5, 5)}
    # the other order would take 4-5 and refuse 5-5: the forward direction goes first
    assert (4, 5) in grow_diag_final_and(backward, forward)


def test_agreeing_directions_are_kept_as_they_are():
    links = {(0, 1), (1, 0), (2, 2)}
    assert grow_diag_final_and(links, set(links)) == links
    assert grow_diag_final_and(set(), set()) == set()


def test_growth_takes_only_union_points():
    # intersection {0-0}; 1-1 is a neighbour but in neither direction: never added; final-and
    # then adds 2-2 (forward) and refuses 2-0 (backward: target 0 is aligned)
    assert grow_diag_final_and({(0, 0), (2, 2)}, {(0, 0), (2, 0)}) == {(0, 0), (2, 2)}

"""Parsing user-written requests into canonical multi-indices."""

from __future__ import annotations

import numpy as np

from derivs.core._request import normalize_argnums, parse_index, request_key


def test_int_and_tuple_forms_are_sorted_coordinates():
    assert parse_index(3, (0,), False, api="t", allow_value=False) == ((0, 3),)
    assert parse_index((4, 0, 2), (0,), False, api="t", allow_value=False) == (
        (0, 0), (0, 2), (0, 4))
    assert parse_index([1, 1], (0,), False, api="t", allow_value=False) == ((0, 1), (0, 1))
    assert parse_index(np.int64(2), (0,), False, api="t", allow_value=False) == ((0, 2),)


def test_pairs_map_argnums_to_slots():
    argnums, is_tuple = normalize_argnums((2, 0), "t")
    assert (argnums, is_tuple) == ((2, 0), True)
    assert parse_index(((0, 5), (2, 1)), argnums, True, api="t", allow_value=False) == (
        (0, 1), (1, 5))


def test_value_request_and_keys():
    assert parse_index((), (0,), False, api="t", allow_value=True) == ()
    assert request_key([0, [1, 2]]) == (0, (1, 2))
    assert request_key(3) == 3

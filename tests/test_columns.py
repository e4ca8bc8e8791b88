"""Columns that grow at their end (quantrieve.index.columns): an add copies no old row, and no
version ever sees rows written for another."""

from __future__ import annotations

import numpy as np
import pytest

from quantrieve.index.columns import GrowingIds, append_ids, append_rows


def test_appends_write_into_one_buffer_and_old_versions_stay_as_they_were() -> None:
    first = np.arange(12, dtype=np.int64).reshape(6, 2)
    second = append_rows(first, [[100, 101]])
    third = append_rows(second, [[200, 201], [300, 301]])
    assert np.shares_memory(second, third)  # written into the spare end: no copy
    assert not np.shares_memory(first, second)  # a plain array is copied once
    assert third.tolist() == [*first.tolist(), [100, 101], [200, 201], [300, 301]]
    assert second.tolist() == [*first.tolist(), [100, 101]]  # untouched
    # a second version made from an old one gets its own buffer: the newer one keeps its rows
    branch = append_rows(second, [[-1, -1]])
    assert not np.shares_memory(branch, third)
    assert third[-2:].tolist() == [[200, 201], [300, 301]]
    assert branch.tolist() == [*second.tolist(), [-1, -1]]
    # the newest version still extends in place
    fourth = append_rows(third, np.zeros((0, 2)))
    assert np.shares_memory(fourth, third) and len(fourth) == 9


def test_outgrowing_a_buffer_copies_and_the_copy_has_room() -> None:
    column = np.zeros((0,), dtype=np.uint8)
    buffers = set()
    for i in range(5000):
        column = append_rows(column, [i % 256])
        buffers.add(column.__array_interface__["data"][0])
    assert column.tolist() == [i % 256 for i in range(5000)]
    # 1.25 times (and at least 1,024 spare rows): a handful of copies, not one per add
    assert len(buffers) <= 5


def test_rows_must_match_the_column() -> None:
    with pytest.raises(ValueError, match="do not extend"):
        append_rows(np.zeros((3, 4)), np.zeros((1, 5)))


def test_growing_ids_behave_like_a_list_of_their_own() -> None:
    first = ["a", "b"]
    second = append_ids(first, ["c"])
    third = append_ids(second, ["d", "e"])
    assert first == ["a", "b"]  # a plain list is copied, never extended
    assert list(second) == ["a", "b", "c"] and len(second) == 3
    assert third == ["a", "b", "c", "d", "e"]
    assert ["a", "b", "c", "d", "e"] == third  # noqa: SIM300 (the list's side of ==)
    assert second != third and second != "abc"
    assert third[-1] == "e" and third[1:4] == ["b", "c", "d"] and second[-1] == "c"
    assert second[::-1] == ["c", "b", "a"]
    with pytest.raises(IndexError):
        second[3]  # the shared list is longer, this version is not
    assert "".join(second) == "abc"
    branch = append_ids(second, ["x"])  # from an old version: a copy
    assert list(branch) == ["a", "b", "c", "x"] and list(third) == ["a", "b", "c", "d", "e"]
    assert isinstance(third, GrowingIds)

from __future__ import annotations

import numpy as np
import pytest

from itemsage.index.idmap import DuplicateIdError, IdMap, UnknownIdError


def test_labels_are_sequential_and_never_reused() -> None:
    m = IdMap()
    assert m.assign(["a", "b", "c"]).tolist() == [0, 1, 2]
    m.release(["b"])
    assert "b" not in m and len(m) == 2
    # "b" comes back with a new label; label 1 stays retired.
    assert m.assign(["d", "b"]).tolist() == [3, 4]
    assert m.lookup(["a", "b", "c", "d"]).tolist() == [0, 4, 2, 3]
    assert m.labels_to_ids(np.array([[4, 1, -1, 0], [2, 3, 99, -1]])) == [["b", "a"], ["c", "d"]]
    assert m.item_ids() == ["a", "c", "d", "b"]
    assert m.labels().tolist() == [0, 2, 3, 4]


def test_duplicates_in_batch_are_listed() -> None:
    with pytest.raises(DuplicateIdError, match=r"2 item id\(s\) repeated.*'x'.*'y'"):
        IdMap().assign(["x", "y", "x", "z", "y"])


def test_ids_already_present_are_rejected_without_change() -> None:
    m = IdMap()
    m.assign(["a", "b"])
    with pytest.raises(DuplicateIdError, match=r"already in the index: 'b'"):
        m.assign(["c", "b"])
    assert len(m) == 2 and "c" not in m and m.next_label == 2


def test_many_duplicates_are_summarised() -> None:
    ids = [f"i{j}" for j in range(20)]
    with pytest.raises(DuplicateIdError, match=r"20 item id\(s\).*\.\.\. \(20 in all\)"):
        IdMap().assign(ids + ids)


def test_unknown_ids_all_reported() -> None:
    m = IdMap()
    m.assign(["a"])
    with pytest.raises(UnknownIdError, match=r"2 item id\(s\) not in the index: 'q', 'r'"):
        m.release(["a", "q", "r"])
    assert "a" in m  # nothing released


@pytest.mark.parametrize("bad, err", [([1, 2], TypeError), (["ok", ""], ValueError), ([None], TypeError)])
def test_bad_ids(bad: list, err: type[Exception]) -> None:
    with pytest.raises(err):
        IdMap().assign(bad)


def test_round_trip_keeps_next_label() -> None:
    m = IdMap()
    m.assign(["a", "b", "c"])
    m.release(["c"])
    m2 = IdMap.from_dict(m.to_dict())
    assert m2.item_ids() == ["a", "b"] and m2.next_label == 3
    assert m2.assign(["e"]).tolist() == [3]


def test_from_dict_rejects_inconsistent_data() -> None:
    with pytest.raises(ValueError):
        IdMap.from_dict({"next_label": 1, "labels": [0, 5], "item_ids": ["a", "b"]})
    with pytest.raises(ValueError):
        IdMap.from_dict({"next_label": 3, "labels": [0], "item_ids": ["a", "b"]})


def test_unassign_last_rolls_back() -> None:
    m = IdMap()
    m.assign(["a"])
    m.assign(["b", "c"])
    m.unassign_last(2)
    assert m.item_ids() == ["a"] and m.next_label == 1 and "b" not in m

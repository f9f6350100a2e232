import numpy as np
import torch

from itemsage.eval.recall import RecallTable, ranks_of_targets


def test_ranks_match_brute_force():
    g = torch.Generator().manual_seed(0)
    items = torch.nn.functional.normalize(torch.randn(50, 8, generator=g), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(7, 8, generator=g), dim=1)
    targets = torch.randint(0, 50, (7,), generator=g)
    ranks = ranks_of_targets(queries, items, targets, chunk=3)
    for i in range(7):
        scores = (queries[i] @ items.T).tolist()
        expected = sum(1 for s in scores if s > scores[targets[i]])
        assert ranks[i].item() == expected


def test_excluded_item_is_not_a_candidate():
    items = torch.eye(3)
    queries = torch.tensor([[1.0, 0.5, 0.0]])
    # Item 0 is the closest; excluding it (a closeup query's own item) lifts the target to rank 0.
    assert ranks_of_targets(queries, items, torch.tensor([1])).item() == 1
    assert ranks_of_targets(queries, items, torch.tensor([1]), exclude=torch.tensor([0])).item() == 0


def test_ties_count_against_the_target():
    items = torch.ones(4, 2)
    assert ranks_of_targets(torch.ones(1, 2), items, torch.tensor([2])).item() == 3


def test_table_groups_by_task_and_surface():
    table = RecallTable(ks=(1, 2))
    tasks = ["search/click", "search/click", "search/save", "home/click"]
    table.add("m", tasks, torch.tensor([0, 5, 1, 0]))
    assert table.get("m", "search/click", 1) == 0.5
    assert table.get("m", "search/save", 2) == 1.0
    assert table.get("m", "search/all", 1) == 1 / 3
    assert table.rows[("m", "home/all")]["n"] == 1
    md = table.to_markdown(k=1)
    assert "| search/all | 3 | 0.333 |" in md


def test_cohort_rows_score_only_their_pairs():
    table = RecallTable(ks=(1,))
    tasks = ["search/click", "search/click", "search/save", "home/click"]
    seen = np.array([True, False, True, False])
    table.add("m", tasks, torch.tensor([0, 5, 3, 0]), cohorts={"seen": seen, "unseen": ~seen})
    assert table.get("m", "search/seen", 1) == 0.5 and table.rows[("m", "search/seen")]["n"] == 2
    assert table.get("m", "search/unseen", 1) == 0.0 and table.rows[("m", "search/unseen")]["n"] == 1
    assert table.get("m", "home/unseen", 1) == 1.0
    assert ("m", "home/seen") not in table.rows  # no seen home pair: no empty row
